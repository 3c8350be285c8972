"""Trust flags on demo windows: how many clean windows are flagged, how many corrupted ones.

``python -m bench.trust_flags [--subjects 20] [--seconds 60] [--seed 2026] [--write]``

SYNTHETIC demo subjects (``heartgpt.data.demo``; seed 2026 is held out: the demo data the
models train on uses seed 0, and the thresholds in ``conf/trust/default.yaml`` were tuned on
seed 7) are synthesised at their native rate (ECG 500 Hz, PPG 125 Hz), corrupted there (or, for
drop-outs, NaN and bursts, in the model-rate windows), resampled to the model's rate (ECG 100
Hz, PPG 50 Hz) and cut into non-overlapping model windows (500 samples). Every window is judged
by :func:`heartgpt.data.signal_quality.recording_quality` with ``conf/trust/default.yaml``. The
rhythm measures (:mod:`heartgpt.data.rhythm`) of the clean recordings, alone, are scored for
separating the AF subjects from the others (AUROC, per recording and per window), and the
rhythm verdicts are counted. ``--write`` writes the tables to ``bench/TRUST_RESULTS.md``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from heartgpt.data.demo import NATIVE_RATE, draw_subjects, synthesize
from heartgpt.data.rhythm import find_beats, rhythm_measures, rhythm_verdict
from heartgpt.data.signal_quality import load_trust, recording_quality
from heartgpt.data.tokenizer import get_modality, resample

WINDOW = 500
OTHER = {"ecg": "ppg", "ppg": "ecg"}


def _wander(x: np.ndarray, fs: float, rng: np.random.Generator) -> np.ndarray:
    """Strong baseline wander: a 0.1-0.3 Hz sine of 1.5x the signal's 1-99 % range."""
    t = np.arange(x.size) / fs
    amp = 1.5 * np.subtract(*np.percentile(x, [99, 1]))
    return x + amp * np.sin(2 * np.pi * rng.uniform(0.1, 0.3) * t + rng.uniform(0, 6.3))


def _clip(x: np.ndarray, fs: float, rng: np.random.Generator) -> np.ndarray:
    """ADC saturation: everything above 60 % of the signal's 1-99.9 % range held there."""
    lo, hi = np.percentile(x, [1, 99.9])
    return np.minimum(x, lo + 0.6 * (hi - lo))


# Recording-level corruptions at the native rate: kind -> (f(x, fs, rng) -> (x, stated_rate)).
RECORDING: dict[str, Callable] = {
    "clean": lambda x, fs, rng: (x, fs),
    "white noise": lambda x, fs, rng: (rng.normal(0, x.std(), x.size), fs),
    "clipped": lambda x, fs, rng: (_clip(x, fs, rng), fs),
    "inverted": lambda x, fs, rng: (-x, fs),
    "twice its stated rate": lambda x, fs, rng: (x, fs / 2),  # really at 2x what is stated
    "half its stated rate": lambda x, fs, rng: (x, fs * 2),
    "baseline wander": lambda x, fs, rng: (_wander(x, fs, rng), fs),
}


def _flat(w: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Sensor drop-out: 30-60 % of the window held at one value."""
    w = w.copy()
    n = int(rng.uniform(0.3, 0.6) * w.size)
    s = int(rng.integers(0, w.size - n))
    w[s : s + n] = w[s]
    return w


def _nan(w: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    w = w.copy()
    w[rng.choice(w.size, 3, replace=False)] = np.nan
    return w


def _burst(w: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Motion burst: the window 10x larger than the recording's others."""
    return w * 10.0


WINDOWED: dict[str, Callable] = {"flat (drop-out)": _flat, "NaN samples": _nan,
                                 "amplitude burst": _burst}


def windows_of(x: np.ndarray, rate_in: float, rate: float) -> np.ndarray:
    x = resample(x, rate_in, rate)
    k = x.size // WINDOW
    return x[: k * WINDOW].reshape(k, WINDOW)


def judged_kinds(modality: str) -> list[str]:
    """The corruption kinds a ``modality`` model's windows are judged on."""
    kinds = list(RECORDING) + list(WINDOWED) + [f"{OTHER[modality].upper()} into this model"]
    return [k for k in kinds if not (k == "inverted" and modality == "ecg")]


def kind_windows(modality: str, kind: str, recs: dict, seed: int) -> list[np.ndarray]:
    """Per recording, the model-rate windows of ``kind`` (recs: modality -> recordings)."""
    rate = get_modality(modality).sample_rate
    rng = np.random.default_rng([seed, len(kind), sum(map(ord, kind))])
    out = []
    if kind.endswith("into this model"):
        for r in recs[OTHER[modality]]:
            out.append(windows_of(r.signal, r.sample_rate, rate))
        return out
    for r in recs[modality]:
        if kind in RECORDING:
            x, stated = RECORDING[kind](r.signal, r.sample_rate, rng)
            out.append(windows_of(x, stated, rate))
        else:
            w = windows_of(r.signal, r.sample_rate, rate)
            bad = np.stack([WINDOWED[kind](row, rng) for row in w])
            if kind == "amplitude burst":  # one burst window among clean ones
                i = int(rng.integers(len(w)))
                w = w.copy()
                w[i] = bad[i]
                out.append((w, i))
                continue
            out.append(bad)
    return out


def flag_table(settings, recs: dict, seed: int) -> tuple[list[dict], dict]:
    """Rows (modality, kind, windows, flagged, fraction, top reasons) and ms/window."""
    rows, cost = [], {}
    for modality in ("ppg", "ecg"):
        rate = get_modality(modality).sample_rate
        for kind in judged_kinds(modality):
            n = flagged = 0
            reasons: dict[str, int] = {}
            t0 = time.perf_counter()
            for item in kind_windows(modality, kind, recs, seed):
                w, only = item if isinstance(item, tuple) else (item, None)
                q = recording_quality(w, rate, modality, settings)
                sel = [only] if only is not None else range(len(q))
                for i in sel:
                    n += 1
                    flagged += q[i].unreliable
                    for reason in filter(None, q[i].reason.split("; ")):
                        reasons[reason] = reasons.get(reason, 0) + 1
                if kind == "clean":
                    cost[modality] = (time.perf_counter() - t0, cost.get(modality, (0, 0))[1]
                                      + len(q))
            top = ", ".join(f"{k} {v}" for k, v in sorted(reasons.items(), key=lambda kv: -kv[1])[:3])
            rows.append(dict(modality=modality, kind=kind, windows=n, flagged=flagged,
                             fraction=flagged / max(n, 1), reasons=top))
            print(f"{modality:3s} {kind:28s} {n:5d} {flagged / max(n, 1):7.1%}  {top}", flush=True)
    return rows, {m: 1000 * t / k for m, (t, k) in cost.items()}


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Mann-Whitney AUROC (NaN scores dropped)."""
    from sklearn.metrics import roc_auc_score

    ok = np.isfinite(scores)
    return float(roc_auc_score(labels[ok], scores[ok])) if len(set(labels[ok])) == 2 else np.nan


def rhythm_table(settings, recs: dict) -> tuple[list[dict], dict]:
    """AUROC of each measure, per recording and per window, and the verdict counts."""
    rows, cost = [], {}
    for modality in ("ppg", "ecg"):
        rate = get_modality(modality).sample_rate
        per_rec, per_win, lab_rec, lab_win, verdicts = [], [], [], [], {}
        t_win = n_win = 0
        for r in recs[modality]:
            x = resample(r.signal, r.sample_rate, rate)
            m = rhythm_measures(find_beats(x, rate, modality), rate, settings.rhythm)
            per_rec.append(m.as_dict())
            lab_rec.append(r.label)
            key = (int(r.label), rhythm_verdict(m, settings.rhythm))
            verdicts[key] = verdicts.get(key, 0) + 1
            for w in windows_of(r.signal, r.sample_rate, rate):
                t0 = time.perf_counter()
                mw = rhythm_measures(find_beats(w, rate, modality), rate, settings.rhythm)
                t_win += time.perf_counter() - t0
                n_win += 1
                per_win.append(mw.as_dict())
                lab_win.append(r.label)
        cost[modality] = 1000 * t_win / n_win
        for measure in ("cv", "nrmssd", "pnn50", "cosen"):
            a_rec = auroc(np.array(lab_rec), np.array([d[measure] for d in per_rec]))
            a_win = auroc(np.array(lab_win), np.array([d[measure] for d in per_win]))
            rows.append(dict(modality=modality, measure=measure, recordings=len(per_rec),
                             auroc_recording=a_rec, windows=len(per_win), auroc_window=a_win))
            print(f"{modality:3s} {measure:7s} AUROC recordings {a_rec:.3f} ({len(per_rec)}), "
                  f"windows {a_win:.3f} ({len(per_win)})", flush=True)
        print(f"{modality} verdicts (label, verdict): {verdicts}", flush=True)
        rows.append(dict(modality=modality, measure="verdicts", verdicts={
            f"{'AF' if k[0] else 'non-AF'} -> {k[1]}": v for k, v in sorted(verdicts.items())}))
    return rows, cost


def markdown(args: argparse.Namespace, flags: list[dict], rhythm: list[dict], cost: dict) -> str:
    lines = [
        "# Trust flags on demo windows (`python -m bench.trust_flags --write`)", "",
        f"Written by `python -m bench.trust_flags --subjects {args.subjects} --seconds "
        f"{args.seconds:g} --seed {args.seed} --write` on {time.strftime('%Y-%m-%d')}. Do not "
        "edit: rerun. SYNTHETIC demo subjects (held-out seed; thresholds tuned on seed 7), "
        "thresholds from `conf/trust/default.yaml`. Targets: clean windows flagged <= 5 %, "
        "each corruption >= 95 %.", "",
        "## Windows flagged unreliable", "",
        "| model | windows | count | flagged | target | met | most frequent reasons |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in flags:
        target = "<= 5 %" if r["kind"] == "clean" else ">= 95 %"
        met = r["fraction"] <= 0.05 if r["kind"] == "clean" else r["fraction"] >= 0.95
        lines.append(f"| {r['modality'].upper()} | {r['kind']} | {r['windows']} | "
                     f"{100 * r['fraction']:.1f} % | {target} | {'met' if met else '**missed**'} "
                     f"| {r['reasons']} |")
    lines += ["", "## Rhythm measures alone: AF subjects against the others (AUROC)", "",
              "| model | measure | recordings | AUROC per recording | windows | AUROC per window |",
              "|---|---|---|---|---|---|"]
    for r in rhythm:
        if r["measure"] == "verdicts":
            continue
        lines.append(f"| {r['modality'].upper()} | {r['measure']} | {r['recordings']} | "
                     f"{r['auroc_recording']:.3f} | {r['windows']} | {r['auroc_window']:.3f} |")
    lines += [""] + [f"- {r['modality'].upper()} recording verdicts: " + ", ".join(
        f"{k}: {v}" for k, v in r["verdicts"].items()) for r in rhythm if r["measure"] == "verdicts"]
    lines += ["", "## Cost (ms per model window, this machine, one process)", "",
              "| piece | PPG (500 samples, 50 Hz) | ECG (500 samples, 100 Hz) |", "|---|---|---|",
              f"| signal quality (beats found by neurokit2) | {cost['quality_ppg']:.1f} | "
              f"{cost['quality_ecg']:.1f} |",
              f"| rhythm measures (beats found by neurokit2) | {cost['rhythm_ppg']:.1f} | "
              f"{cost['rhythm_ecg']:.1f} |", "",
              "## What the misses mean", "",
              "- A recording at twice or half its stated rate changes only the time scale. The "
              "demo's PPG pulse shape scales with the beat period, so only the heart rate and the "
              "power above 8 Hz are left to tell, and both overlap the clean range (slowed PPG "
              "62 bpm median, sped 132 bpm: plausible hearts). ECG's QRS width is "
              "physiologically fixed, so the sharp-power share catches twice the rate on ECG "
              "(QRS twice as wide) but only part of half the rate. The rest needs the model's "
              "own OOD score (next-token loss), not a quality index.",
              "- ECG clipped at 60 % of its range: at the model's 100 Hz the clipped R peak is a "
              "2-4-sample plateau, smoothed by the anti-alias filter; kurtosis catches part.",
              "- Cost: measured while other jobs shared the 2 cores; neurokit2's cleaning, peak "
              "finding and templatematch are most of it.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--subjects", type=int, default=20, help="per modality (half AF)")
    p.add_argument("--seconds", type=float, default=60.0, help="per recording")
    p.add_argument("--seed", type=int, default=2026, help="demo subjects' seed (0: training)")
    p.add_argument("--trust", default="default", help="conf/trust/<name>.yaml or a path")
    p.add_argument("--write", action="store_true", help="write bench/TRUST_RESULTS.md")
    args = p.parse_args(argv)
    settings = load_trust(args.trust)
    recs = {m: [synthesize(s, m, args.seconds) for s in draw_subjects(m, args.subjects, args.seed)]
            for m in NATIVE_RATE}
    flags, qcost = flag_table(settings, recs, args.seed)
    rhythm, rcost = rhythm_table(settings, recs)
    cost = {f"quality_{m}": v for m, v in qcost.items()} | {f"rhythm_{m}": v for m, v in rcost.items()}
    print("ms/window: " + ", ".join(f"{k} {v:.1f}" for k, v in cost.items()))
    if args.write:
        path = Path(__file__).resolve().parent / "TRUST_RESULTS.md"
        path.write_text(markdown(args, flags, rhythm, cost))
        print(f"wrote {path}")
    return {"flags": flags, "rhythm": rhythm, "cost_ms": cost}


if __name__ == "__main__":
    main()
