#!/usr/bin/env bash
# Regenerate the figures in docs/figures/ from the released checkpoints and example inputs.
# Run from the repository root: bash docs/figures/make_figures.sh
# Needs the shared folder ($HEARTGPT_SHARED, default ../shared). Takes about 3 minutes on 2 CPU
# cores (most of it exact-mode generation). Only the PNGs are kept.
set -euo pipefail
S="${HEARTGPT_SHARED:-../shared}"
W="$S/weights"
E="$S/example_inputs"
OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT
run() { echo "+ python -m heartgpt.$*"; python -m "heartgpt.$@" -o "$OUT"; }

# generation: PPG in exact mode, ECG in cached (KV) mode
run generate "$E/example_context_PPG.csv" -c "$W/PPGPT_500k_iters.zip" -n 500 -s 3 --seed 0
run generate "$E/example_context_ECG.csv" -c "$W/ECGPT_560k_iters.zip" -n 500 -s 3 --seed 0 \
    --mode cached
# AF screening: the 140-s PPG (stride 50 samples = 1 s) and the 5-s ECG AF example (one window)
run screen_af "$E/example_context_PPG_beat_detect_long_input.csv" -c "$W/PPGPT_AF_1k_iters.zip"
run screen_af "$E/example_context_ECG_AFib1.csv" -c "$W/ECGPT_AF_1k_iters.zip"
# beats: the first 30 s are plotted (all 140 s are analysed)
run detect_beats "$E/example_context_PPG_beat_detect_long_input.csv" \
    -c "$W/PPGPT_beat_5k_iters.zip"
# interpretability of the pre-trained models on their example contexts
for m in "ECG ECGPT_560k_iters" "PPG PPGPT_500k_iters"; do
    set -- $m
    run interpret attention "$E/example_context_$1.csv" -c "$W/$2.zip" --layers 0,7
    run interpret homonyms "$E/example_context_$1.csv" -c "$W/$2.zip"
done
run interpret shift "$E/example_context_ECG_AFib1.csv" -c "$W/ECGPT_AF_1k_iters.zip" \
    --base "$W/ECGPT_560k_iters.zip"
run interpret shift "$E/example_context_PPG_AFib.csv" -c "$W/PPGPT_AF_1k_iters.zip" \
    --base "$W/PPGPT_500k_iters.zip"

cp "$OUT"/*.png docs/figures/
ls -l docs/figures/*.png
