"""The settings of a PATS import (``conf/pats/default.yaml``), checked before any work starts."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmgt.data.media import crop_offset

SUBSET_SPEAKERS = ("chemistry", "oliver", "jon", "seth")  # the S2G-MDDiffusion / MMGT subset
# Left edge of the square crop as a fraction of the frame width (S2G-MDDiffusion's crop_videos.py); jon: right.
SUBSET_CROP: dict[str, float | str] = {"chemistry": 0.031, "oliver": 0.38, "seth": 0.395, "jon": "right"}
SKIP_REASONS = ("missing video", "too short", "no person detected", "decode error", "missing keypoints")
STATE_DIR = ".pats"


class PatsConfigError(ValueError):
    """Settings that can't work (missing CSV/folder, unknown key or value); names the config key."""


@dataclass
class PatsSettings:
    """``conf/pats/default.yaml`` as a dataclass (``task=pats`` adds ``output_root = data.root``)."""

    intervals_csv: str | None = None
    videos_dir: str | None = None
    output_root: str | None = None
    speakers: list[str] | None = field(default_factory=lambda: list(SUBSET_SPEAKERS))
    split_file: str | None = None
    crop: dict[str, Any] = field(default_factory=lambda: {"default": "center", **SUBSET_CROP})
    size: int = 512
    fps: int = 25
    max_seconds: float | None = 15.0
    min_seconds: float = 3.24
    window_seconds: float | None = None
    window_hop_seconds: float | None = None
    val_per_speaker: int = 2
    min_person_fraction: float = 0.5
    estimator: dict[str, Any] = field(default_factory=lambda: {"name": "dwpose"})
    workers: int | None = 1
    resume: bool = True
    retry_skipped: bool = False
    progress: bool = True
    limit: int | None = None
    mp_context: str = "spawn"
    crf: int = 18
    # source=h5: import PATS' own h5 features instead (stage 1 only, see mmgt.data.pats.h5)
    source: str = "videos"
    h5_dir: str | None = None
    h5_audio_dir: str | None = None
    h5_source_height: float = 720.0

    @classmethod
    def from_dict(cls, cfg: dict[str, Any]) -> PatsSettings:
        names = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(cfg) - names)
        if unknown:
            raise PatsConfigError(f"unknown pats settings {unknown}; known: {sorted(names)}")
        nullable = {"intervals_csv", "videos_dir", "output_root", "speakers", "split_file", "max_seconds",
                    "window_seconds", "window_hop_seconds", "workers", "limit", "h5_dir", "h5_audio_dir"}
        s = cls(**{k: v for k, v in cfg.items() if v is not None or k in nullable})
        s.check()
        return s

    def check(self) -> None:
        if self.source not in ("videos", "h5"):
            raise PatsConfigError(f"pats.source={self.source!r}: expected videos | h5")
        if self.source == "h5":
            if not self.output_root or not self.h5_dir:
                raise PatsConfigError("pats.source=h5 needs `pats.h5_dir` (PATS processed/ folder) and `data.root`")
            return
        for key in ("intervals_csv", "videos_dir", "output_root"):
            if not getattr(self, key):
                what = "data.root" if key == "output_root" else f"pats.{key}"
                raise PatsConfigError(f"task=pats needs `{what}`")
        if not Path(self.intervals_csv).is_file():
            raise FileNotFoundError(f"{self.intervals_csv}: intervals CSV not found (config key pats.intervals_csv; "
                                    f"cmu_intervals_df.csv from the PATS release)")
        if not Path(self.videos_dir).is_dir():
            raise FileNotFoundError(f"{self.videos_dir}: videos folder not found (config key pats.videos_dir)")
        if self.split_file and not Path(self.split_file).is_file():
            raise FileNotFoundError(f"{self.split_file}: split file not found (config key pats.split_file)")
        if self.size < 16 or self.size % 2:
            raise PatsConfigError(f"pats.size={self.size}: needs an even size >= 16 (H.264)")
        if self.fps <= 0 or self.min_seconds < 0:
            raise PatsConfigError(f"pats.fps={self.fps}, pats.min_seconds={self.min_seconds}: must be positive")
        if self.window_seconds is not None and self.window_seconds * self.fps < 1:
            raise PatsConfigError(f"pats.window_seconds={self.window_seconds}: shorter than one frame")
        for name, value in self.crop.items():
            try:
                crop_offset(100, 50, value, f"pats.crop.{name}")
            except ValueError as err:
                raise PatsConfigError(str(err)) from None

    @property
    def max_frames(self) -> int | None:
        return None if self.max_seconds is None else int(math.floor(self.max_seconds * self.fps + 1e-6))

    @property
    def min_frames(self) -> int:
        return max(1, int(math.ceil(self.min_seconds * self.fps - 1e-6)))

    @property
    def window(self) -> tuple[int, int] | None:
        if self.window_seconds is None:
            return None
        w = int(round(self.window_seconds * self.fps))
        hop = int(round((self.window_hop_seconds or self.window_seconds) * self.fps))
        return w, max(1, hop)

    def placement(self, speaker: str) -> float | str:
        return self.crop.get(speaker, self.crop.get("default", "center"))

    def signature(self, speaker: str) -> str:
        """Hash of everything that changes an interval's output; finished work is reused only if it matches."""
        from mmgt.pose.estimators import estimator_signature

        est = estimator_signature(self.estimator)
        sig = dict(size=self.size, fps=self.fps, max_frames=self.max_frames, min_frames=self.min_frames,
                   window=self.window, crop=self.placement(speaker), estimator=est,
                   min_person_fraction=self.min_person_fraction, crf=self.crf)
        return hashlib.sha1(json.dumps(sig, sort_keys=True, default=str).encode()).hexdigest()[:16]
