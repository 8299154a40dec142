"""Typed blocks of the stage modules' configs; their defaults live in the YAML under ``conf/`` and nowhere else.

Every block is a dataclass whose fields have no defaults. :meth:`Block.from_dict` refuses unknown keys (naming the
key path and the known keys) and takes a key the given block lacks from the block's YAML file
(:func:`yaml_block`): modules are also built directly (tests, notebooks) and from the stored settings of older
checkpoints, which may lack keys added since; the same YAML then decides the value as for a Hydra run.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from mmgt.utils.config import to_plain

B = TypeVar("B", bound="Block")


@functools.cache
def _load(rel: str) -> Any:
    from omegaconf import OmegaConf

    from mmgt.utils.paths import conf_dir

    return OmegaConf.load(Path(conf_dir()) / rel)


def yaml_block(rel: str, key: str | None = None) -> Any:
    """The plain (unresolved) node ``key`` of ``conf/<rel>`` (the whole file for None, its ``defaults`` list
    dropped); a fresh copy on each call."""
    from omegaconf import OmegaConf

    node = _load(rel)
    if key is not None:
        node = OmegaConf.select(node, key)
    out = OmegaConf.to_container(node, resolve=False) if OmegaConf.is_config(node) else node
    if isinstance(out, dict):
        out.pop("defaults", None)
    return copy.deepcopy(out)


class Block:
    """Base of the typed blocks: ``DEFAULTS`` = (file under ``conf/``, key of the block in it or None)."""

    DEFAULTS: ClassVar[tuple[str, str | None]]

    @classmethod
    def from_dict(cls: type[B], cfg: Mapping[str, Any] | None, key: str) -> B:
        """``cfg`` (dict, DictConfig or None) -> block; ``key`` is its config path, used in errors."""
        data = {str(k): v for k, v in (to_plain(cfg) or {}).items() if not str(k).startswith("_")}
        known = [f.name for f in fields(cls)]  # type: ignore[arg-type]
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ValueError(f"unknown key(s) {', '.join(f'{key}.{k}' for k in unknown)}; known: {', '.join(known)}")
        missing = [k for k in known if k not in data]
        if missing:
            defaults = yaml_block(*cls.DEFAULTS) or {}
            absent = [k for k in missing if k not in defaults]
            if absent:
                raise ValueError(f"{key}: no value for {absent} (nor in conf/{cls.DEFAULTS[0]})")
            data.update({k: defaults[k] for k in missing})
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]


# ------------------------------------------------------------------------------------------------- stage 1


@dataclass(frozen=True)
class EMAConfig(Block):
    """``model.ema`` of stage 1: ``decay``; ``warmup``: decay ``min(decay, (1+n)/(10+n))``."""

    DEFAULTS = ("model/smga.yaml", "ema")
    enabled: bool
    decay: float
    warmup: bool


@dataclass(frozen=True)
class PoseSamplingConfig(Block):
    """``model.sampling`` of stage 1: DDIM settings of generation and of the validation samples."""

    DEFAULTS = ("model/smga.yaml", "sampling")
    steps: int
    eta: float
    guidance: float
    overlap: int
    val_steps: int
    val_batches: int
    seed: int


@dataclass(frozen=True)
class PoseVideoConfig(Block):
    """``model.video`` of stage 1: the logged pose video (canvas ``size``, ``max_frames``, the drawn ``masks``)."""

    DEFAULTS = ("model/smga.yaml", "video")
    enabled: bool
    size: int
    max_frames: int
    masks: dict[str, Any]


# ------------------------------------------------------------------------------------------------- stage 2


@dataclass(frozen=True)
class VideoEMAConfig(Block):
    """``model.ema`` of stage 2; ``init_from_ema``: initialise from the averaged weights of ``init_from``."""

    DEFAULTS = ("model/video.yaml", "ema")
    enabled: bool
    decay: float
    warmup: bool
    init_from_ema: bool


@dataclass(frozen=True)
class VideoSamplingConfig(Block):
    """``model.sampling`` of stage 2 (``branch_weights`` / ``beta_schedule`` None: the training ones)."""

    DEFAULTS = ("model/video.yaml", "sampling")
    steps: int
    guidance: float
    context_frames: int
    context_overlap: int
    eta: float
    branch_weights: list[float] | None
    beta_schedule: str | None


@dataclass(frozen=True)
class ValidationConfig(Block):
    """``model.validation`` of stage 2: clips generated for ``max_batches`` batches, media of ``max_videos``."""

    DEFAULTS = ("model/video.yaml", "validation")
    max_batches: int
    max_videos: int
    log_media: bool
    seed: int


@dataclass(frozen=True)
class VideoLossConfig(Block):
    """The stage-2 ``loss`` group: min-SNR-γ (``snr_gamma`` None/0: off), noise offset, CFG dropout."""

    DEFAULTS = ("loss/video.yaml", None)
    name: str
    snr_gamma: float | None
    snr_plus_one: bool
    noise_offset: float
    drop_image: float
    drop_audio: float
    cfg_per_sample: bool


@dataclass(frozen=True)
class NoiseScheduleConfig(Block):
    """``model.scheduler`` of stage 2: the DDIM betas of training and sampling (``make_scheduler``)."""

    DEFAULTS = ("model/video.yaml", "scheduler")
    num_train_timesteps: int
    beta_start: float
    beta_end: float
    beta_schedule: str
    set_alpha_to_one: bool


__all__ = ["Block", "EMAConfig", "NoiseScheduleConfig", "PoseSamplingConfig", "PoseVideoConfig", "ValidationConfig",
           "VideoEMAConfig", "VideoLossConfig", "VideoSamplingConfig", "yaml_block"]
