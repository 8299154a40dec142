"""Source media -> corpus frames and audio, for any dataset importer (PATS is one user).

* :func:`cut_video`: the exact ``[start, end)`` span of a source video at a constant rate (25 fps): output frame
  ``k`` shows the source frame on screen at ``start + k / fps`` (sample-and-hold, so any source rate, constant or
  variable, works), square-cropped and resized while decoding; it records which source frame each output frame
  shows (:attr:`CutVideo.source_frames`), so per-source-frame keypoints can be picked in sync;
* :func:`crop_offset` / :func:`crop_resize`: the square crop of side ``min(H, W)`` with a horizontal placement;
* :func:`cut_audio`: the same span of the first audio stream of any container PyAV reads (wav, mp3, m4a, mp4),
  mono, 16 kHz;
* :func:`find_videos`, :func:`window_spans`: the video files of a folder, fixed windows over a cut.

Keypoints given in source pixels go through the same crop with :class:`mmgt.pose.estimators.CropTransform`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mmgt.data.video_io import SAMPLE_RATE, resample_audio

VIDEO_EXTS = (".mp4", ".mkv", ".webm", ".mov", ".avi", ".m4v", ".flv")
PLACEMENTS = ("left", "center", "right")


def find_videos(folder: str | Path) -> list[Path]:
    """Every video file under ``folder`` (by extension, hidden files left out), sorted."""
    return [p for p in sorted(Path(folder).rglob("*"))
            if p.suffix.lower() in VIDEO_EXTS and p.is_file() and not p.name.startswith(".")]


def crop_offset(width: int, height: int, placement: float | str, key: str = "crop") -> tuple[int, int, int]:
    """(x0, y0, side) of the square crop: side = min(W, H); a float places the left edge at that fraction of
    the width (clamped so the square fits), or ``left``/``center``/``right``. Portrait frames crop centred.

    A bad ``placement`` raises ValueError naming the config ``key`` it came from."""
    side = min(width, height)
    if isinstance(placement, str):
        if placement not in PLACEMENTS:
            raise ValueError(f"{key}={placement!r}: expected a left-edge fraction or left|center|right")
        x0 = {"left": 0, "center": (width - side) // 2, "right": width - side}[placement]
    elif isinstance(placement, int | float) and not isinstance(placement, bool):
        x0 = int(round(float(placement) * width))
    else:
        raise ValueError(f"{key}={placement!r}: expected a left-edge fraction or left|center|right")
    x0 = int(min(max(x0, 0), width - side))
    y0 = (height - side) // 2
    return x0, y0, side


def crop_resize(image: np.ndarray, x0: int, y0: int, side: int, size: int) -> np.ndarray:
    """The ``side`` square at ``(x0, y0)`` of an (H, W, 3) uint8 image, resized to ``size`` x ``size``."""
    from PIL import Image

    crop = image[y0:y0 + side, x0:x0 + side]
    if side == size:
        return np.ascontiguousarray(crop)
    # Pillow's LANCZOS resize is antialiased when shrinking (its kernel widens with the scale)
    return np.asarray(Image.fromarray(crop).resize((size, size), Image.Resampling.LANCZOS))


@dataclass
class CutVideo:
    """A cut: the frames, which source frame each one shows, and the source geometry the crop refers to."""

    frames: np.ndarray  # (T, size, size, 3) uint8
    source_frames: np.ndarray  # (T,) source frame index shown in each output frame
    source_fps: float
    width: int
    height: int
    crop: tuple[int, int, int]  # (x0, y0, side) in source pixels


def cut_video(path: str | Path, start: float, end: float, fps: int, size: int, placement: float | str,
              max_frames: int | None = None) -> CutVideo:
    """Decode ``[start, end)`` at constant ``fps``, cropping/resizing each used frame as it is decoded (so a
    15-s HD interval never sits in memory uncropped). Raises ValueError on undecodable input."""
    import av

    n_out = int(math.floor((end - start) * fps + 1e-6))
    if max_frames is not None:
        n_out = min(n_out, max_frames)
    times = start + np.arange(max(n_out, 0)) / fps
    eps = 1e-3
    frames: list[np.ndarray] = []
    src_idx: list[int] = []
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ValueError(f"{path}: no video stream")
            vs = container.streams.video[0]
            vs.thread_type = "AUTO"
            src_fps = float(vs.average_rate or vs.guessed_rate or 0) or 25.0
            t0 = (container.start_time or 0) / 1e6
            width, height = vs.codec_context.width, vs.codec_context.height
            box = crop_offset(width, height, placement)
            if start > 0.5:
                container.seek(int((start + t0) / vs.time_base), stream=vs, backward=True, any_frame=False)
            prev = None  # (time, frame, cached processed array)
            k = 0
            last_t = None
            for frame in container.decode(vs):
                if frame.pts is None:
                    continue
                ft = float(frame.pts * vs.time_base) - t0
                last_t = ft
                while k < n_out and times[k] < ft - eps:
                    if prev is None:  # nothing decoded before the first wanted instant: use this frame
                        break
                    if prev[2] is None:
                        prev[2] = crop_resize(prev[1].to_ndarray(format="rgb24"), *box, size)
                    frames.append(prev[2])
                    src_idx.append(int(round(prev[0] * src_fps)))
                    k += 1
                if k >= n_out:
                    break
                prev = [ft, frame, None]
            # the last decoded frame stays on screen for one source frame interval
            if prev is not None and last_t is not None:
                end_t = prev[0] + 1.0 / src_fps
                while k < n_out and times[k] < end_t - eps:
                    if prev[2] is None:
                        prev[2] = crop_resize(prev[1].to_ndarray(format="rgb24"), *box, size)
                    frames.append(prev[2])
                    src_idx.append(int(round(prev[0] * src_fps)))
                    k += 1
    except av.error.FFmpegError as err:
        raise ValueError(f"{path}: cannot decode video ({err})") from err
    out = np.stack(frames) if frames else np.zeros((0, size, size, 3), np.uint8)
    return CutVideo(out, np.asarray(src_idx, np.int64), src_fps, width, height, box)


def _mono(frame: Any) -> np.ndarray:
    arr = frame.to_ndarray()
    if arr.dtype.kind in "iu":
        arr = arr.astype(np.float32) / float(np.iinfo(arr.dtype).max)
    if frame.format.is_planar:
        return arr.mean(axis=0).astype(np.float32)
    return arr.reshape(-1, len(frame.layout.channels)).mean(axis=1).astype(np.float32)


def cut_audio(path: str | Path, start: float, duration: float, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Mono ``sample_rate`` audio of ``[start, start + duration)`` from a container's first audio stream."""
    import av

    margin = 0.1  # resample a little more than needed so the filter's edges fall outside the clip
    lo, hi = max(0.0, start - margin), start + duration + margin
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise ValueError(f"{path}: no audio stream")
            st = container.streams.audio[0]
            sr = int(st.codec_context.sample_rate or st.rate)
            t0 = (container.start_time or 0) / 1e6
            if lo > 1.0:
                container.seek(int((lo - 0.5 + t0) / st.time_base), stream=st, backward=True, any_frame=False)
            chunks, first_t, pos = [], None, None
            for frame in container.decode(st):
                arr = _mono(frame)
                ft = float(frame.pts * st.time_base) - t0 if frame.pts is not None else pos
                if ft is None:
                    ft = 0.0
                if first_t is None:
                    first_t = ft
                chunks.append(arr)
                pos = ft + len(arr) / sr
                if pos >= hi:
                    break
    except av.error.FFmpegError as err:
        raise ValueError(f"{path}: cannot decode audio ({err})") from err
    if not chunks:
        raise ValueError(f"{path}: no audio decoded after {start:.2f} s")
    x = np.concatenate(chunks)
    a = int(round((lo - first_t) * sr))
    b = int(round((hi - first_t) * sr))
    seg = np.zeros(b - a, np.float32)
    src_a, src_b = max(a, 0), min(b, len(x))
    if src_b > src_a:
        seg[src_a - a:src_b - a] = x[src_a:src_b]
    seg = resample_audio(seg, sr, sample_rate)
    off = int(round((start - lo) * sample_rate))
    n = int(round(duration * sample_rate))
    out = seg[off:off + n]
    return np.pad(out, (0, n - len(out))).astype(np.float32)


def window_spans(n_frames: int, window: tuple[int, int] | None) -> list[tuple[int, int]]:
    """Frame spans of the clips made from one cut: the whole cut, or fixed ``(length, hop)`` windows (remainder
    dropped)."""
    if window is None:
        return [(0, n_frames)]
    w, hop = window
    return [(s, s + w) for s in range(0, n_frames - w + 1, hop)]
