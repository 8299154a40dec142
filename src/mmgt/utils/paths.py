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


def _help(config_name: str) -> str:
    from mmgt.utils.cli import help_template

    return help_template(config_name)


def register_resolvers() -> None:
    """``${mmgt.cwd:}``: the launch directory. Used instead of ``${hydra:runtime.cwd}``, which cannot be resolved
    where Hydra computes ``hydra.sweep.dir`` for ``-m`` runs (no HydraConfig yet) nor in ``compose()``.
    ``${mmgt.help:<app>}``: the ``--help`` text of ``python -m mmgt.<app>`` (``hydra.help.template``)."""
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("mmgt.cwd"):
        OmegaConf.register_new_resolver("mmgt.cwd", os.getcwd)
    if not OmegaConf.has_resolver("mmgt.help"):
        OmegaConf.register_new_resolver("mmgt.help", _help)


CONF_DIR = conf_dir()
register_resolvers()
