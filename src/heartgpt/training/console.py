"""What ``python -m heartgpt.train`` prints: known library noise silenced, nothing else.

Each filter matches one exact, known message; other warnings and log records pass through.
"""

from __future__ import annotations

import logging
import warnings

# Lightning's messages (logger lightning.pytorch.utilities.rank_zero) that tell a user nothing.
NOISY_LIGHTNING_MESSAGES = (
    "💡 Tip: For seamless cloud logging",  # an advertisement for litlogger, every run
    "TPU available: False",  # "GPU available: ..." stays
)
# Warnings raised once per process from library internals, not from anything a user controls.
NOISY_WARNINGS = (
    # lightning/pytorch/utilities/_pytree.py with torch >= 2.9: Lightning's to fix
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
)


class DropMessages(logging.Filter):
    """Drop the records whose message starts with one of ``prefixes``."""

    def __init__(self, prefixes: tuple[str, ...]) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefixes)


def quiet_known_noise() -> None:
    """Install the filters (idempotent)."""
    for pattern in NOISY_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, DropMessages) for f in logger.filters):
        logger.addFilter(DropMessages(NOISY_LIGHTNING_MESSAGES))
