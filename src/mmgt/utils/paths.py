"""Where the Hydra config tree lives (the repository's top-level ``conf/``)."""

from __future__ import annotations

import os
from pathlib import Path


def conf_dir() -> str:
    """Absolute path of ``conf/``: ``$MMGT_CONF_DIR`` if set, else the repository checkout's ``conf/``."""
    env = os.environ.get("MMGT_CONF_DIR")
    path = Path(env) if env else Path(__file__).resolve().parents[3] / "conf"
    if not (path / "train.yaml").exists():
        raise FileNotFoundError(f"Hydra config tree not found at {path} (set MMGT_CONF_DIR to the repo's conf/)")
    return str(path)


CONF_DIR = conf_dir()
