"""Config helpers shared by LightningModules and entry points."""

from __future__ import annotations

from typing import Any


def to_plain(obj: Any) -> Any:
    """Turn OmegaConf containers into plain dicts/lists (resolved) and leave everything else alone.

    LightningModules store their config in ``hparams``; keeping it plain means checkpoints hold only
    primitive types and load with ``torch.load(weights_only=True)``.
    """
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf
    except ImportError:  # pragma: no cover
        return obj
    if isinstance(obj, DictConfig | ListConfig):
        return OmegaConf.to_container(obj, resolve=True)
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(to_plain(v) for v in obj)
    return obj


def instantiate_partial(cfg: dict | None, **kwargs: Any) -> Any:
    """Instantiate a plain-dict Hydra node (``_target_`` [+ ``_partial_``]) with extra kwargs; None -> None.

    Arguments arrive as plain lists/dicts (``_convert_="all"``): an OmegaConf ``ListConfig`` (e.g. Adan's ``betas``)
    would otherwise land in the optimiser state and make the checkpoint unloadable with ``weights_only=True``."""
    if cfg is None:
        return None
    from hydra.utils import instantiate

    return instantiate({"_convert_": "all", **dict(cfg)}, **kwargs)
