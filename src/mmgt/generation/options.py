"""Typed sampling options of generation: one object per stage, built once from the ``smga`` / ``video`` blocks of
``conf/generate.yaml`` (or in Python), passed as objects to :class:`~mmgt.generation.pipeline.GesturePipeline`.

A field left ``None`` means "the checkpoint's value": :meth:`PoseSampling.over` / :meth:`VideoSampling.over` is the
one place where a request is merged with the settings recorded in a checkpoint. Unknown keys are refused where the
options are built, so a misspelt setting can never be silently ignored.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, ClassVar, TypeVar

from mmgt.errors import GenerationError

_O = TypeVar("_O", bound="_StageOptions")

# keys of the `smga` / `video` blocks that say how to load a stage, not how to sample it
LOAD_KEYS = ("ckpt", "net", "features")


@dataclass(frozen=True)
class _StageOptions:
    """Shared behaviour of the per-stage options: parse a mapping, merge over the recorded settings."""

    REQUIRED: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @classmethod
    def from_dict(cls: type[_O], values: Mapping[str, Any] | None, where: str = "") -> _O:
        """Options from a mapping of field names (``None`` values kept: the checkpoint's); unknown keys refused."""
        values = dict(values or {})
        bad = sorted(k for k in values if k not in cls.names())
        if bad:
            raise GenerationError(f"{where or cls.__name__}: unknown sampling setting(s) {bad}; known: "
                                  f"{list(cls.names())}")
        return cls(**values)

    def over(self: _O, recorded: _O) -> _O:
        """These options where stated, the ``recorded`` ones (a checkpoint's) elsewhere."""
        return replace(recorded, **{f.name: getattr(self, f.name) for f in fields(self)
                                    if getattr(self, f.name) is not None})

    def check_complete(self, what: str) -> None:
        """Settings a sampler cannot run without must be stated (the pipeline's defaults)."""
        missing = [k for k in self.REQUIRED if getattr(self, k) is None]
        if missing:
            raise GenerationError(f"{what}: no value for {missing}")


def _int(x: Any) -> int | None:
    return None if x is None else int(x)


def _float(x: Any) -> float | None:
    return None if x is None else float(x)


@dataclass(frozen=True)
class PoseSampling(_StageOptions):
    """Stage 1 (SMGA) DDIM sampling: ``steps``, audio CFG ``guidance``, ``eta`` (0 = deterministic DDIM) and the
    frames consecutive windows of long audio share (``overlap``, cross-faded)."""

    REQUIRED: ClassVar[tuple[str, ...]] = ("steps", "guidance", "eta", "overlap")

    steps: int | None = None
    guidance: float | None = None
    eta: float | None = None
    overlap: int | None = None

    def __post_init__(self) -> None:
        for name, conv in (("steps", _int), ("guidance", _float), ("eta", _float), ("overlap", _int)):
            object.__setattr__(self, name, conv(getattr(self, name)))


@dataclass(frozen=True)
class VideoSampling(_StageOptions):
    """Stage 2 (video diffusion) DDIM sampling: ``steps``, CFG ``guidance`` (reference image + audio dropped
    together), ``eta``, context windows of ``context_frames`` frames overlapping by ``context_overlap``, the MM-HAA
    ``branch_weights`` (in the mask config's branch order) and the ``beta_schedule`` to sample with.

    In a checkpoint's settings ``branch_weights=None`` means the weights the network trained with and
    ``beta_schedule=None`` the training betas.
    """

    REQUIRED: ClassVar[tuple[str, ...]] = ("steps", "guidance", "eta", "context_frames", "context_overlap")

    steps: int | None = None
    guidance: float | None = None
    eta: float | None = None
    context_frames: int | None = None
    context_overlap: int | None = None
    branch_weights: tuple[float, ...] | None = None
    beta_schedule: str | None = None

    def __post_init__(self) -> None:
        for name, conv in (("steps", _int), ("guidance", _float), ("eta", _float), ("context_frames", _int),
                           ("context_overlap", _int)):
            object.__setattr__(self, name, conv(getattr(self, name)))
        bw = self.branch_weights
        object.__setattr__(self, "branch_weights", None if bw is None else tuple(float(v) for v in bw))
        if self.beta_schedule is not None:
            object.__setattr__(self, "beta_schedule", str(self.beta_schedule))

    def sampler_kwargs(self) -> dict[str, Any]:
        """The :class:`~mmgt.models.video.VideoSampler` arguments (branch weights go to its call)."""
        return {"steps": self.steps, "guidance": self.guidance, "context_frames": self.context_frames,
                "context_overlap": self.context_overlap, "eta": self.eta, "beta_schedule": self.beta_schedule}


# flat keyword names of the earlier ``GesturePipeline.generate(pose_steps=..., steps=...)`` (the quickstart
# notebook passes them): name -> (stage, field)
FLAT_NAMES: dict[str, tuple[str, str]] = {
    **{f"pose_{k}": ("pose", k) for k in ("steps", "guidance", "eta", "overlap")},
    **{k: ("video", k) for k in ("steps", "guidance", "eta", "context_frames", "context_overlap", "branch_weights")},
}


@dataclass(frozen=True)
class Sampling:
    """The sampling options of both stages of one generation."""

    pose: PoseSampling = field(default_factory=PoseSampling)
    video: VideoSampling = field(default_factory=VideoSampling)

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> Sampling:
        """From the generate config's ``smga`` and ``video`` blocks: every key that is not a loading key
        (``ckpt``, ``net``, ``features``) must be a sampling setting of that stage."""
        parts = {}
        for block, stage, opt in (("smga", "pose", PoseSampling), ("video", "video", VideoSampling)):
            values = {k: v for k, v in dict(cfg.get(block) or {}).items() if k not in LOAD_KEYS}
            parts[stage] = opt.from_dict(values, where=f"config block `{block}`")
        return cls(**parts)

    def with_flat(self, flat: Mapping[str, Any]) -> Sampling:
        """These options with the earlier flat keywords (``pose_steps``, ``steps``, ``branch_weights``, ...) applied;
        an unknown name is a ``TypeError``, as for any unexpected keyword argument."""
        bad = sorted(k for k in flat if k not in FLAT_NAMES)
        if bad:
            raise TypeError(f"unexpected keyword argument(s) {bad}; sampling options are Sampling(pose=PoseSampling("
                            "...), video=VideoSampling(...))")
        over: dict[str, dict[str, Any]] = {"pose": {}, "video": {}}
        for k, v in flat.items():
            if v is not None:
                stage, name = FLAT_NAMES[k]
                over[stage][name] = v
        return Sampling(replace(self.pose, **over["pose"]), replace(self.video, **over["video"]))


__all__ = ["FLAT_NAMES", "LOAD_KEYS", "PoseSampling", "Sampling", "VideoSampling"]
