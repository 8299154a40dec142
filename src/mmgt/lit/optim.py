"""Optimiser and LR schedule of both stages: ``_partial_`` Hydra nodes (``model.optim``; stage 1
``model.scheduler``, stage 2 ``model.lr_scheduler``) built by one helper, :func:`configure_optimizers`."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from mmgt.utils.config import instantiate_partial, to_plain

# the flat stage-2 ``optim`` block of checkpoints written before the `_partial_` nodes (AdamW + WarmupCosine)
LEGACY_OPTIM_KEYS = ("lr", "weight_decay", "betas", "eps")
LEGACY_SCHEDULE_KEYS = ("warmup_steps", "schedule", "total_steps", "min_lr_ratio")


class WarmupCosine(torch.optim.lr_scheduler.LambdaLR):
    """Linear warm-up over ``warmup_steps``, then constant (``schedule: constant``) or a cosine decay to
    ``min_lr_ratio * lr`` at ``total_steps`` (``schedule: cosine``; short runs end sharper). The factor is a closure,
    so the state dict holds only the step, as the stage-2 checkpoints written before this class."""

    def __init__(self, optimizer: torch.optim.Optimizer, warmup_steps: int, schedule: str, total_steps: int | None,
                 min_lr_ratio: float, last_epoch: int = -1) -> None:
        if schedule not in ("constant", "cosine"):
            raise ValueError(f"lr_scheduler.schedule={schedule!r}: expected 'constant' or 'cosine'")
        if schedule == "cosine" and not total_steps:
            raise ValueError("lr_scheduler.total_steps is needed by schedule=cosine")
        warm, floor = int(warmup_steps), float(min_lr_ratio)
        total = max(1, int(total_steps)) if schedule == "cosine" else 1  # type: ignore[arg-type]

        def factor(step: int) -> float:
            f = min(1.0, (step + 1) / warm) if warm > 0 else 1.0
            if schedule == "cosine":
                f *= floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))
            return f

        super().__init__(optimizer, factor, last_epoch)


def legacy_video_optim(optim: Mapping[str, Any], defaults_optim: Mapping[str, Any],
                       defaults_schedule: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A flat stage-2 ``optim`` block (no ``_target_``: older checkpoints, ``optim={"lr": ...}``) -> the AdamW and
    :class:`WarmupCosine` nodes it meant; keys it lacks come from the given (YAML) nodes."""
    unknown = sorted(set(optim) - set(LEGACY_OPTIM_KEYS) - set(LEGACY_SCHEDULE_KEYS))
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join(f'model.optim.{k}' for k in unknown)} of a model.optim block "
                         f"without _target_; known: {', '.join(LEGACY_OPTIM_KEYS + LEGACY_SCHEDULE_KEYS)}")
    opt = {"_target_": "torch.optim.AdamW", "_partial_": True}
    opt.update({k: optim.get(k, defaults_optim.get(k)) for k in LEGACY_OPTIM_KEYS})
    sched = {"_target_": f"{__name__}.WarmupCosine", "_partial_": True, "interval": "step"}
    sched.update({k: optim.get(k, defaults_schedule.get(k)) for k in LEGACY_SCHEDULE_KEYS})
    return opt, sched


# optimiser packages that are optional extras of mmgt: top-level module -> (pip name, extra)
OPTIONAL_PACKAGES = {"bitsandbytes": ("bitsandbytes", "bnb")}


def require_target(node: Mapping[str, Any], key: str = "model.optim") -> None:
    """Refuse a node whose ``_target_`` lives in a package that is not installed, with the install line (e.g.
    ``bitsandbytes.optim.AdamW8bit``: the 8-bit AdamW of the original, ``pip install 'mmgt[bnb]'``)."""
    import importlib.util

    target = str(node.get("_target_") or "")
    top = target.split(".")[0]
    if not top or importlib.util.find_spec(top) is not None:
        return
    pip, extra = OPTIONAL_PACKAGES.get(top, (top, None))
    how = f"pip install 'mmgt[{extra}]' (or pip install {pip})" if extra else f"pip install {pip}"
    raise ImportError(f"{key}._target_={target} needs the package {pip!r}, which is not installed: {how}")


def configure_optimizers(params: Iterable[torch.nn.Parameter], optim: Mapping[str, Any],
                         scheduler: Mapping[str, Any] | None) -> Any:
    """What ``LightningModule.configure_optimizers`` returns: ``optim`` called with ``params=``, and when given the
    ``scheduler`` node called with ``optimizer=`` (its ``interval``, step|epoch, is Lightning's: default step)."""
    require_target(optim)
    opt = instantiate_partial(to_plain(dict(optim)))(params=list(params))
    if not scheduler:
        return opt
    cfg = to_plain(dict(scheduler))
    interval = cfg.pop("interval", "step")
    return {"optimizer": opt, "lr_scheduler": {"scheduler": instantiate_partial(cfg)(optimizer=opt),
                                               "interval": interval}}


__all__ = ["LEGACY_OPTIM_KEYS", "LEGACY_SCHEDULE_KEYS", "OPTIONAL_PACKAGES", "WarmupCosine", "configure_optimizers",
           "legacy_video_optim", "require_target"]
