"""Generation outputs: where the files of one generation go and how they are written.

The video (H.264 mp4 muxed with the input audio), the optional pose video, side-by-side panel and keypoints are
written together through :func:`mmgt.data.video_io.atomic_path`: any failure leaves no output file at all. Corpus
clips can also place their ground truth beside, in the layout ``python -m mmgt.evaluate`` pairs by name.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmgt.data.corpus import FPS, SAMPLE_RATE
from mmgt.errors import GenerationError

log = logging.getLogger(__name__)
LOW_SPACE_MB = 100  # warn below this much free space on an output folder's disk


@dataclass(frozen=True)
class OutputPaths:
    """The files of one generation: ``video`` always, the others when asked for."""

    video: Path
    pose_video: Path | None = None
    side_by_side: Path | None = None
    keypoints: Path | None = None

    @classmethod
    def for_video(cls, out: str | Path, pose_video: bool | str | Path = False, side_by_side: bool | str | Path = False,
                  save_keypoints: bool = False) -> OutputPaths:
        """``pose_video`` / ``side_by_side``: True = ``<out stem>_pose.mp4`` / ``<out stem>_panel.mp4`` beside
        ``out``, or a path; ``save_keypoints``: ``<out stem>_keypoints.npy``."""
        out = Path(out)
        if out.suffix.lower() != ".mp4":
            raise GenerationError(f"out={out}: the output must be an .mp4 file")

        def extra(flag: bool | str | Path, suffix: str) -> Path | None:
            if not flag:
                return None
            return Path(flag) if isinstance(flag, str | Path) else out.with_name(out.stem + suffix)

        return cls(out, extra(pose_video, "_pose.mp4"), extra(side_by_side, "_panel.mp4"),
                   out.with_name(out.stem + "_keypoints.npy") if save_keypoints else None)


@dataclass
class GenerationResult:
    """What one :meth:`~mmgt.generation.pipeline.GesturePipeline.generate` call produced."""

    video: Path
    n_frames: int
    audio_seconds: float
    keypoints: np.ndarray  # (T, 134, 3) generated pixel keypoints of the output frames
    frames: np.ndarray  # (T, H, W, 3) uint8 generated frames (exact; the mp4 holds their H.264 encoding)
    pose_video: Path | None = None
    side_by_side: Path | None = None
    keypoints_file: Path | None = None
    seconds: dict[str, float] = field(default_factory=dict)  # wall time per stage

    @property
    def frames_per_second(self) -> float:
        """Generated frames per second of wall time (all stages, writing excluded)."""
        busy = sum(v for k, v in self.seconds.items() if k != "write")
        return self.n_frames / busy if busy > 0 else float("nan")


def check_writable(folder: str | Path, key: str) -> None:
    """Create ``folder`` if needed and write (then remove) a probe file in it, so that an output folder that cannot be
    written (permission denied, read-only disk, a file in the way) is one line naming it before any generation;
    little free space is warned about (a full disk later still leaves no partial file: atomic writes)."""
    folder = Path(folder).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".mmgt-write-test-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise GenerationError(f"cannot write to {folder} (config key `{key}`): {err.strerror or err}") from err
    free_mb = shutil.disk_usage(folder).free / 2**20
    if free_mb < LOW_SPACE_MB:
        log.warning("only %.0f MB free on the disk of %s (config key `%s`)", free_mb, folder, key)


def encoding_options(encoding: Mapping[str, Any] | None) -> dict[str, Any]:
    """The H.264 settings of the written videos (``crf`` 18, ``pix_fmt`` yuv420p unless given), checked before any
    work: an unknown key or value is one error naming the config key ``encoding``."""
    from mmgt.data.video_io import check_encoding

    enc = {"crf": 18, "pix_fmt": "yuv420p", **(encoding or {})}
    unknown = sorted(set(enc) - {"crf", "pix_fmt"})
    if unknown:
        raise GenerationError(f"encoding: unknown key(s) {', '.join(unknown)} (known: crf, pix_fmt)")
    try:
        check_encoding(enc["crf"], enc["pix_fmt"], "encoding (config key `encoding`)")
    except ValueError as err:
        raise GenerationError(str(err)) from err
    return enc


def mask_panel(masks: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """(K, T, h, w) masks -> (T, H, W, 3) uint8 for the side-by-side video (as the training logs show them)."""
    from mmgt.lit.video import mask_video

    rgb = mask_video(masks.float().cpu(), size)
    return (rgb.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def write_outputs(paths: Mapping[str, Path], videos: Mapping[str, np.ndarray], audio: np.ndarray,
                  keypoints: np.ndarray | None = None, keypoints_file: Path | None = None, crf: int = 18,
                  pix_fmt: str = "yuv420p") -> None:
    """Write every video (muxed with ``audio``; H.264 ``crf`` / ``pix_fmt``) and the keypoints together: all files
    appear, or none."""
    from mmgt.data.video_io import atomic_path, write_video

    with contextlib.ExitStack() as stack:
        tmps = {k: stack.enter_context(atomic_path(p)) for k, p in paths.items()}
        for k, frames in videos.items():
            write_video(tmps[k], frames, fps=FPS, audio=audio, sample_rate=SAMPLE_RATE, crf=crf, pix_fmt=pix_fmt)
        if keypoints is not None and keypoints_file is not None:
            tmp = stack.enter_context(atomic_path(keypoints_file))
            with tmp.open("wb") as fh:
                np.save(fh, keypoints.astype(np.float32))


def place_reference(reference_dir: str | Path, clip_id: str, video: Path, audio: Path, keypoints: np.ndarray) -> None:
    """Copy a clip's ground truth (``<clip_id>.mp4`` + ``.npy`` keypoints + ``.wav``) into ``reference_dir``;
    each file complete or absent (a full disk leaves no truncated file)."""
    from mmgt.data.video_io import atomic_path

    ref = Path(reference_dir)
    for src, suffix in ((video, ".mp4"), (audio, ".wav")):
        with atomic_path(ref / f"{clip_id}{suffix}") as tmp:
            shutil.copyfile(src, tmp)
    with atomic_path(ref / f"{clip_id}.npy") as tmp, tmp.open("wb") as fh:
        np.save(fh, keypoints)


__all__ = ["LOW_SPACE_MB", "GenerationResult", "OutputPaths", "check_writable", "encoding_options", "mask_panel",
           "place_reference", "write_outputs"]
