"""Inference: applying trained models to recordings -- generation, AF screening, beat detection,
interpretability -- and the figures of their results.

The command-line tools (``python -m heartgpt.generate``, ``screen_af``, ``detect_beats``,
``interpret``) are thin front ends over these modules; the browser app uses them too.
"""
