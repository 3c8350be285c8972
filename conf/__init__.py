"""heartgpt's Hydra config tree: ``conf/`` in the repository, installed as ``heartgpt.conf``.

Entry points compose it with ``config_path="pkg://heartgpt.conf"`` (the same from an editable
install, a wheel or a source checkout); :data:`CONF_DIR` is the folder on disk.
"""

from pathlib import Path

CONF_DIR = Path(__file__).resolve().parent

# The tree's own resolvers (${cwd:}, ${latest_ckpt:}) must exist whenever it is composed:
# Hydra imports this package to read it, from any entry point or test.
import heartgpt.training.resolvers  # noqa: E402,F401
