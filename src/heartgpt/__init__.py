"""heartgpt: GPT-style foundation models of heart time-series (ECG and PPG)."""

__version__ = "0.1.0"
