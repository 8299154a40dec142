"""PATS import: the intervals table (``cmu_intervals_df.csv``) + a folder of downloaded videos -> a corpus.

``python -m mmgt.prepare task=pats data.root=<out> pats.intervals_csv=<csv> pats.videos_dir=<videos>``
(settings: ``conf/pats/default.yaml``). Per interval:

1. find the source video by ``video_fn`` or by the YouTube id in ``video_link`` (see :class:`VideoIndex`);
2. cut ``[start, end)`` exactly and resample to constant 25 fps: output frame ``k`` shows the source frame
   on screen at ``start + k / fps`` (sample-and-hold, so any source rate, constant or variable, works);
3. square crop of side ``min(H, W)`` with a per-speaker horizontal placement (the S2G-MDDiffusion offsets by
   default), resize to ``size`` (512), at most ``max_seconds`` (15 s);
4. audio of the same span, mono, 16 kHz; optional split into fixed windows;
5. pose estimation (:mod:`mmgt.pose.estimators`) into ``keypoints.npy``;
6. each clip is written into a staging folder and renamed into ``clips/<clip_id>/`` with a ``.done`` marker
   (atomic per clip); the manifest is rebuilt at the end from the finished clips of the selected intervals.

Runs in a process pool with a progress bar and is resumable: an interval whose clips are all finished (with
the same processing settings) is not touched again, nor is one skipped earlier for a reason that can't change
without new settings. Skipped intervals are listed in ``skipped.csv`` with their reason: ``missing video``,
``too short``, ``no person detected``, ``decode error`` (or ``missing keypoints`` for the precomputed
estimator).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import math
import os
import re
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import numpy as np

from mmgt.data.corpus import SAMPLE_RATE, ClipRecord, write_clip, write_manifest
from mmgt.data.video_io import atomic_path, resample_audio

log = logging.getLogger(__name__)

SUBSET_SPEAKERS = ("chemistry", "oliver", "jon", "seth")  # the S2G-MDDiffusion / MMGT subset
# Left edge of the square crop as a fraction of the frame width (S2G-MDDiffusion's crop_videos.py); jon: right.
SUBSET_CROP: dict[str, float | str] = {"chemistry": 0.031, "oliver": 0.38, "seth": 0.395, "jon": "right"}
VIDEO_EXTS = (".mp4", ".mkv", ".webm", ".mov", ".avi", ".m4v", ".flv")
SKIP_REASONS = ("missing video", "too short", "no person detected", "decode error", "missing keypoints")
SKIPPED_CSV = "skipped.csv"
STATE_DIR = ".pats"
DONE = ".done"
_SPLIT_ALIASES = {"train": "train", "dev": "val", "val": "val", "valid": "val", "validation": "val", "test": "test"}


class PatsConfigError(ValueError):
    """Settings that can't work (missing CSV/folder, unknown key or value); names the config key."""


class SkipInterval(Exception):  # noqa: N818 - a control-flow signal, not an error
    """Raised inside the per-interval job: the interval is reported in skipped.csv instead of written."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


# --------------------------------------------------------------------------------------------------- settings


@dataclass
class PatsSettings:
    """``conf/pats/default.yaml`` as a dataclass (the lead's ``task=pats`` adds ``output_root = data.root``)."""

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
    # source=h5: import PATS' own h5 features instead (stage 1 only, see mmgt.data.pats_h5)
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
            crop_offset(100, 50, value, f"pats.crop.{name}")  # raises on a bad value

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


# --------------------------------------------------------------------------------------------------- intervals


@dataclass(frozen=True)
class Interval:
    """One row of ``cmu_intervals_df.csv`` (times in seconds from the start of the video)."""

    speaker: str
    interval_id: str
    video_link: str
    video_fn: str
    start: float
    end: float
    dataset: str

    @property
    def key(self) -> str:
        return f"{self.speaker}-{self.interval_id}"


def parse_time(value: str | float) -> float:
    """Seconds from ``12.5``, ``"12.5"``, ``"0:01:02.5"`` / ``"01:02.5"`` (timedelta-like strings)."""
    if isinstance(value, int | float):
        return float(value)
    text = str(value).strip()
    if text.lower().startswith("0 days "):  # pandas Timedelta repr
        text = text[7:]
    try:
        return float(text)
    except ValueError:
        pass
    parts = text.split(":")
    if len(parts) in (2, 3):
        try:
            nums = [float(p) for p in parts]
        except ValueError:
            nums = None
        if nums is not None:
            sec = 0.0
            for p in nums:
                sec = sec * 60 + p
            return sec
    raise ValueError(f"cannot parse time {value!r}")


REQUIRED_COLUMNS = ("speaker", "interval_id", "video_link", "video_fn", "start_time", "end_time", "dataset")


def read_intervals(path: str | Path, speakers: list[str] | None = None) -> list[Interval]:
    """Rows of the PATS intervals CSV (optionally only ``speakers``); errors name the file and line."""
    path = Path(path)
    out = []
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        cols = [c.strip() for c in reader.fieldnames or []]
        missing = [c for c in REQUIRED_COLUMNS if c not in cols]
        if missing:
            raise PatsConfigError(f"{path}: intervals CSV lacks columns {missing} (has {cols})")
        wanted = set(speakers) if speakers else None
        for line, raw in enumerate(reader, start=2):
            row = {(k or "").strip(): (v or "").strip() for k, v in raw.items()}
            if wanted is not None and row["speaker"] not in wanted:
                continue
            try:
                start, end = parse_time(row["start_time"]), parse_time(row["end_time"])
            except ValueError as err:
                raise PatsConfigError(f"{path}:{line}: {err}") from err
            iid = row["interval_id"]
            if iid.endswith(".0") and iid[:-2].isdigit():  # written as float by pandas
                iid = iid[:-2]
            out.append(Interval(row["speaker"], iid, row["video_link"], row["video_fn"], start, end,
                                row["dataset"]))
    return out


def normalise_split(name: str) -> str | None:
    """``train``/``dev``/``test`` (PATS) -> the corpus splits ``train``/``val``/``test``; unknown -> None."""
    return _SPLIT_ALIASES.get(str(name).strip().lower())


def load_split_file(path: str | Path) -> dict[str, str]:
    """interval_id -> split from ``{"train": [ids], "test": [ids]}`` JSON (S2G-MDDiffusion's
    ``filtered_intervals.json``) or a CSV with ``interval_id,split`` columns."""
    path = Path(path)
    mapping: dict[str, str] = {}
    if path.suffix.lower() == ".json":
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            raise PatsConfigError(f"{path}: expected a JSON object {{split: [interval ids]}}")
        for split, ids in data.items():
            norm = normalise_split(split)
            if norm is None:
                raise PatsConfigError(f"{path}: unknown split {split!r}")
            for iid in ids:
                mapping[_id_str(iid)] = norm
        return mapping
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        if not {"interval_id", "split"} <= set(reader.fieldnames or []):
            raise PatsConfigError(f"{path}: split CSV needs columns interval_id,split")
        for row in reader:
            norm = normalise_split(row["split"])
            if norm is None:
                raise PatsConfigError(f"{path}: unknown split {row['split']!r}")
            mapping[_id_str(row["interval_id"])] = norm
    return mapping


def _id_str(iid: Any) -> str:
    s = str(iid).strip()
    return s[:-2] if s.endswith(".0") and s[:-2].isdigit() else s


def _basename(s: str) -> str:
    """The last path segment (PATS ``video_fn`` values may carry folders)."""
    return s.replace("\\", "/").rsplit("/", 1)[-1]


def video_ids(link: str) -> list[str]:
    """Candidate ids of a ``video_link``: the YouTube id (``?v=`` or youtu.be), else the last path segment and
    its last 4 characters (the naming S2G-MDDiffusion's downloader used for jon's non-YouTube links)."""
    link = (link or "").strip()
    if not link:
        return []
    url = urlparse(link)
    vid = parse_qs(url.query).get("v")
    if vid:
        return [vid[0]]
    if url.netloc.endswith("youtu.be") and url.path.strip("/"):
        return [url.path.strip("/").split("/")[0]]
    last = (url.path or link).rstrip("/").rsplit("/", 1)[-1]
    stem = Path(last).stem if last else ""
    return [c for c in dict.fromkeys([stem, stem[-4:], link[-4:]]) if c]


class VideoIndex:
    """All video files under ``videos_dir``; finds an interval's source by file name or video id.

    Lookup order: ``video_fn`` (as a relative path, then its base name anywhere below), then a file whose stem
    is a candidate id or ends with ``[id]`` / ``-id`` / ``_id`` (yt-dlp's default ``Title [id].ext`` naming).
    """

    def __init__(self, videos_dir: str | Path) -> None:
        self.root = Path(videos_dir)
        self.by_name: dict[str, Path] = {}
        self.by_stem: dict[str, Path] = {}
        for p in sorted(self.root.rglob("*")):
            if p.suffix.lower() in VIDEO_EXTS and p.is_file() and not p.name.startswith("."):
                self.by_name.setdefault(p.name, p)
                self.by_stem.setdefault(p.stem, p)
        self._suffix: dict[str, Path] = {}
        for stem, p in self.by_stem.items():
            m = re.search(r"(?:\[([^\]]+)\]|[-_ ]([A-Za-z0-9_-]{11}))$", stem)
            if m:
                self._suffix.setdefault(m.group(1) or m.group(2), p)

    def find(self, iv: Interval) -> Path | None:
        if iv.video_fn:
            for cand in (self.root / iv.video_fn, self.root / iv.speaker / iv.video_fn):
                if cand.is_file():
                    return cand
            name = _basename(iv.video_fn)
            if name in self.by_name:
                return self.by_name[name]
            stem = Path(name).stem
            if stem in self.by_stem:
                return self.by_stem[stem]
        for vid in video_ids(iv.video_link):
            if vid in self.by_stem:
                return self.by_stem[vid]
            if vid in self._suffix:
                return self._suffix[vid]
        return None


# --------------------------------------------------------------------------------------------------- media


def crop_offset(width: int, height: int, placement: float | str, key: str = "pats.crop") -> tuple[int, int, int]:
    """(x0, y0, side) of the square crop: side = min(W, H); a float places the left edge at that fraction of
    the width (clamped so the square fits), or ``left``/``center``/``right``. Portrait frames crop centred."""
    side = min(width, height)
    if isinstance(placement, str):
        if placement not in ("left", "center", "right"):
            raise PatsConfigError(f"{key}={placement!r}: expected a left-edge fraction or left|center|right")
        x0 = {"left": 0, "center": (width - side) // 2, "right": width - side}[placement]
    elif isinstance(placement, int | float) and not isinstance(placement, bool):
        x0 = int(round(float(placement) * width))
    else:
        raise PatsConfigError(f"{key}={placement!r}: expected a left-edge fraction or left|center|right")
    x0 = int(min(max(x0, 0), width - side))
    y0 = (height - side) // 2
    return x0, y0, side


def _crop_resize(image: np.ndarray, x0: int, y0: int, side: int, size: int) -> np.ndarray:
    from PIL import Image

    crop = image[y0:y0 + side, x0:x0 + side]
    if side == size:
        return np.ascontiguousarray(crop)
    # Pillow's LANCZOS resize is antialiased when shrinking (its kernel widens with the scale)
    return np.asarray(Image.fromarray(crop).resize((size, size), Image.Resampling.LANCZOS))


@dataclass
class CutVideo:
    frames: np.ndarray  # (T, size, size, 3) uint8
    source_frames: np.ndarray  # (T,) source frame index shown in each output frame
    source_fps: float
    width: int
    height: int
    crop: tuple[int, int, int]


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
                        prev[2] = _crop_resize(prev[1].to_ndarray(format="rgb24"), *box, size)
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
                        prev[2] = _crop_resize(prev[1].to_ndarray(format="rgb24"), *box, size)
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
    """Frame spans of the clips made from one interval: the whole interval, or fixed windows (remainder dropped)."""
    if window is None:
        return [(0, n_frames)]
    w, hop = window
    return [(s, s + w) for s in range(0, n_frames - w + 1, hop)]


def person_fraction(kp: np.ndarray, threshold: float = 0.3) -> float:
    """Fraction of frames where any body keypoint is detected (score > threshold)."""
    if len(kp) == 0:
        return 0.0
    return float((kp[:, :18, 2] > threshold).any(axis=1).mean())


# --------------------------------------------------------------------------------------------------- state


def _state(root: Path) -> Path:
    return root / STATE_DIR


def _marker(root: Path, key: str) -> Path:
    return _state(root) / "intervals" / f"{key}.json"


def _write_json(path: Path, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=1, sort_keys=True))


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def clip_finished(root: Path, rec: dict[str, Any], signature: str) -> bool:
    """A clip is finished when its three files and its ``.done`` marker (same settings signature) exist."""
    clip_dir = root / Path(rec["video"]).parent
    done = _read_json(clip_dir / DONE)
    if not done or done.get("signature") != signature:
        return False
    return all((root / rec[k]).is_file() for k in ("video", "audio", "keypoints"))


def interval_state(root: Path, key: str, signature: str) -> dict[str, Any] | None:
    """The interval's marker if its work can be reused with these settings, else None."""
    m = _read_json(_marker(root, key))
    if not m or m.get("signature") != signature:
        return None
    if m.get("status") == "done" and all(clip_finished(root, r, signature) for r in m.get("clips", [])):
        return m
    if m.get("status") == "skipped":
        return m
    return None


# --------------------------------------------------------------------------------------------------- the job


_ESTIMATOR: Any = None
_ESTIMATOR_CFG: dict[str, Any] | None = None


def _init_worker(estimator_cfg: dict[str, Any], threads: int | None) -> None:
    """Process-pool initializer: one estimator (e.g. two ONNX sessions) per worker, built once."""
    global _ESTIMATOR, _ESTIMATOR_CFG
    from mmgt.pose.estimators import build_estimator

    _ESTIMATOR_CFG = estimator_cfg
    _ESTIMATOR = build_estimator(estimator_cfg, threads=threads)


@dataclass
class IntervalResult:
    key: str
    status: str  # done | skipped | error
    clips: list[dict[str, Any]] = field(default_factory=list)
    reason: str = ""
    detail: str = ""
    seconds: float = 0.0


def process_interval(job: dict[str, Any]) -> IntervalResult:
    """Cut, crop, estimate and write one interval (runs in a worker). Skips become a result, never an exception."""
    t_start = time.perf_counter()
    iv = Interval(**job["interval"])
    try:
        clips = _process(job, iv)
        status, reason, detail = "done", "", ""
    except SkipInterval as skip:
        clips, status, reason, detail = [], "skipped", skip.reason, skip.detail
    except Exception as err:  # noqa: BLE001 - one bad interval must not stop a 5000-interval job
        clips, status, reason, detail = [], "error", type(err).__name__, str(err)
    root = Path(job["root"])
    if status != "error":  # errors are retried next run; done/skipped are remembered
        _write_json(_marker(root, iv.key), {"status": status, "signature": job["signature"], "clips": clips,
                                            "reason": reason, "detail": detail, "interval": asdict(iv)})
    return IntervalResult(iv.key, status, clips, reason, detail, time.perf_counter() - t_start)


def _process(job: dict[str, Any], iv: Interval) -> list[dict[str, Any]]:
    from mmgt.pose.estimators import CropTransform, EstimatorError, PoseContext

    root, fps, size = Path(job["root"]), int(job["fps"]), int(job["size"])
    min_frames, max_frames, window = job["min_frames"], job["max_frames"], job["window"]
    need = max(min_frames, window[0] if window else 0)
    if (iv.end - iv.start) * fps + 1e-6 < need:
        raise SkipInterval("too short", f"{iv.end - iv.start:.2f} s < {need / fps:.2f} s")
    video = Path(job["video"])
    try:
        cut = cut_video(video, iv.start, iv.end, fps, size, job["placement"], max_frames)
    except (ValueError, OSError) as err:
        raise SkipInterval("decode error", str(err)) from err
    n = len(cut.frames)
    if n == 0:
        raise SkipInterval("decode error", f"{video.name}: no frames in [{iv.start:.2f}, {iv.end:.2f}) s")
    if n < need:
        raise SkipInterval("too short", f"the video ends after {n} frames of the interval (< {need})")
    try:
        audio = cut_audio(video, iv.start, n / fps)
    except (ValueError, OSError) as err:
        raise SkipInterval("decode error", str(err)) from err
    x0, y0, side = cut.crop
    ctx = PoseContext(key=iv.key, interval_id=iv.interval_id, speaker=iv.speaker, video=video,
                      source_frames=cut.source_frames, transform=CropTransform(x0, y0, side, size))
    estimator = _ESTIMATOR
    if estimator is None or job["estimator"] != _ESTIMATOR_CFG:
        _init_worker(job["estimator"], job.get("threads"))
        estimator = _ESTIMATOR
    try:
        kp = np.asarray(estimator(cut.frames, ctx), np.float32)
    except EstimatorError as err:
        raise SkipInterval("missing keypoints" if "no precomputed" in str(err) else "decode error", str(err)) \
            from err
    frac = person_fraction(kp)
    if frac < job["min_person_fraction"]:
        raise SkipInterval("no person detected", f"a person in {frac:.0%} of the frames "
                                                 f"(< {job['min_person_fraction']:.0%})")
    records = []
    staging = _state(root) / "staging"
    for k, (a, b) in enumerate(window_spans(n, window)):
        clip_id = iv.key if window is None else f"{iv.key}_w{k:03d}"
        tmp_root = staging / f"{clip_id}.{os.getpid()}"
        shutil.rmtree(tmp_root, ignore_errors=True)
        rec = write_clip(tmp_root, clip_id, iv.speaker, job["split"], cut.frames[a:b],
                         audio[a * SAMPLE_RATE // fps:b * SAMPLE_RATE // fps], kp[a:b], fps=fps)
        rec_d = asdict(rec)
        _write_json(tmp_root / "clips" / clip_id / DONE,
                    {"signature": job["signature"], "record": rec_d, "interval": iv.interval_id,
                     "source": {"video": video.name, "start": iv.start + a / fps, "fps": cut.source_fps,
                                "size": [cut.width, cut.height], "crop": list(cut.crop)}})
        final = root / "clips" / clip_id
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp_root / "clips" / clip_id, final)
        shutil.rmtree(tmp_root, ignore_errors=True)
        records.append(rec_d)
    return records


# --------------------------------------------------------------------------------------------------- driver


@dataclass
class PatsReport:
    """What a run did: counts by outcome, the skip rows and the manifest size."""

    selected: int = 0
    processed: int = 0
    reused: int = 0
    skipped: list[dict[str, str]] = field(default_factory=list)
    errors: list[dict[str, str]] = field(default_factory=list)
    clips: int = 0
    manifest: str = ""

    @property
    def skip_counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for row in self.skipped:
            out[row["reason"]] = out.get(row["reason"], 0) + 1
        return out


def _skip_row(iv: Interval, reason: str, detail: str) -> dict[str, str]:
    return {"speaker": iv.speaker, "interval_id": iv.interval_id, "video_fn": iv.video_fn,
            "video_link": iv.video_link, "start_time": f"{iv.start:.3f}", "end_time": f"{iv.end:.3f}",
            "reason": reason, "detail": detail}


def _assign_val(records: list[ClipRecord], intervals: dict[str, str], per_speaker: int) -> list[ClipRecord]:
    """Speakers with no val clips get ``per_speaker`` train intervals moved to val (chosen by a hash of the
    interval id, so the choice doesn't depend on which other intervals happen to be present)."""
    if per_speaker <= 0:
        return records
    by_speaker: dict[str, set[str]] = {}
    has_val: set[str] = set()
    for r in records:
        if r.split == "val":
            has_val.add(r.speaker)
        elif r.split == "train":
            by_speaker.setdefault(r.speaker, set()).add(intervals[r.clip_id])
    moved: set[str] = set()
    for spk, ids in by_speaker.items():
        if spk in has_val or len(ids) <= per_speaker:
            continue
        moved |= set(sorted(ids, key=lambda i: hashlib.sha1(f"{spk}-{i}".encode()).hexdigest())[:per_speaker])
    from dataclasses import replace

    return [replace(r, split="val") if r.split == "train" and intervals[r.clip_id] in moved else r for r in records]


def _write_skipped(root: Path, rows: list[dict[str, str]]) -> Path:
    cols = ("speaker", "interval_id", "video_fn", "video_link", "start_time", "end_time", "reason", "detail")
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    for row in sorted(rows, key=lambda r: (r["speaker"], r["interval_id"])):
        w.writerow(row)
    path = root / SKIPPED_CSV
    with atomic_path(path) as tmp:
        tmp.write_text(buf.getvalue())
    return path


def run_pats(settings: PatsSettings | dict[str, Any]) -> PatsReport:
    """The whole import; returns a :class:`PatsReport` (see module docstring)."""
    s = settings if isinstance(settings, PatsSettings) else PatsSettings.from_dict(dict(settings))
    root = Path(s.output_root)
    root.mkdir(parents=True, exist_ok=True)
    from mmgt.pose.estimators import check_estimator_config

    check_estimator_config(s.estimator)
    intervals = read_intervals(s.intervals_csv, s.speakers)
    split_map = load_split_file(s.split_file) if s.split_file else None
    selected: list[tuple[Interval, str]] = []
    for iv in intervals:
        split = split_map.get(iv.interval_id) if split_map is not None else normalise_split(iv.dataset)
        if split is None:
            if split_map is None:
                log.warning("interval %s: unknown dataset split %r, ignored", iv.key, iv.dataset)
            continue
        selected.append((iv, split))
    if s.limit is not None:
        selected = selected[: int(s.limit)]
    keys = [iv.key for iv, _ in selected]
    if len(set(keys)) != len(keys):
        dup = sorted({k for k in keys if keys.count(k) > 1})
        raise PatsConfigError(f"{s.intervals_csv}: duplicate intervals {dup[:5]}")
    index = VideoIndex(s.videos_dir)
    report = PatsReport(selected=len(selected))
    workers = max(1, int(s.workers or os.cpu_count() or 1))
    threads = max(1, (os.cpu_count() or 1) // workers)
    jobs, done_markers = [], {}
    for iv, split in selected:
        sig = s.signature(iv.speaker)
        video = index.find(iv)
        if video is None:
            report.skipped.append(_skip_row(iv, "missing video",
                                            f"no {iv.video_fn or iv.video_link} under {s.videos_dir}"))
            continue
        state = interval_state(root, iv.key, sig) if s.resume else None
        if state is not None and not (state["status"] == "skipped" and s.retry_skipped):
            report.reused += 1
            if state["status"] == "skipped":
                report.skipped.append(_skip_row(iv, state["reason"], state["detail"]))
            else:
                done_markers[iv.key] = state
            continue
        jobs.append({"interval": asdict(iv), "split": split, "video": str(video), "root": str(root),
                     "signature": sig, "placement": s.placement(iv.speaker), "fps": s.fps, "size": s.size,
                     "min_frames": s.min_frames, "max_frames": s.max_frames, "window": s.window,
                     "min_person_fraction": s.min_person_fraction, "estimator": dict(s.estimator),
                     "threads": threads})
    from tqdm.auto import tqdm

    results: list[IntervalResult] = []
    bar = tqdm(total=len(jobs), desc=f"PATS -> {root}", unit="interval", disable=not s.progress or not jobs)
    if jobs and workers > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed

        with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=mp.get_context(s.mp_context),
                                 initializer=_init_worker, initargs=(dict(s.estimator), threads)) as pool:
            futures = [pool.submit(process_interval, job) for job in jobs]
            for fut in as_completed(futures):
                results.append(fut.result())
                bar.update(1)
    else:
        for job in jobs:
            results.append(process_interval(job))
            bar.update(1)
    bar.close()
    ivs = {iv.key: iv for iv, _ in selected}
    for res in results:
        iv = ivs[res.key]
        if res.status == "done":
            report.processed += 1
            done_markers[res.key] = {"clips": res.clips}
        elif res.status == "skipped":
            report.skipped.append(_skip_row(iv, res.reason, res.detail))
        else:
            report.errors.append(_skip_row(iv, "error", f"{res.reason}: {res.detail}"))
    # manifest = the finished clips of the selected intervals, with the splits of this run's split source
    split_of = {iv.key: split for iv, split in selected}
    records, interval_of = [], {}
    for key in (iv.key for iv, _ in selected):
        for r in (done_markers.get(key) or {}).get("clips", []):
            rec = ClipRecord(**{**r, "split": split_of[key]})
            records.append(rec)
            interval_of[rec.clip_id] = ivs[key].interval_id
    records = _assign_val(records, interval_of, s.val_per_speaker)
    report.clips = len(records)
    report.manifest = str(write_manifest(root, records)) if records else ""
    _write_skipped(root, report.skipped + report.errors)
    shutil.rmtree(_state(root) / "staging", ignore_errors=True)
    return report


def prepare_pats(cfg: dict[str, Any]) -> int:
    """Entry for ``python -m mmgt.prepare task=pats``: ``cfg`` = the ``pats`` settings + ``output_root``.

    Prints a summary; exit code 0 = a manifest was written and no interval failed unexpectedly,
    1 = no usable clip or some interval failed (listed in skipped.csv as ``error``), 2 = bad settings.
    """
    from mmgt.pose.estimators import check_estimator_config

    try:
        settings = PatsSettings.from_dict(dict(cfg))
        if settings.source == "h5":
            from mmgt.data.pats_h5 import import_pats_h5

            records = import_pats_h5(settings.h5_dir, settings.output_root, settings.intervals_csv,
                                     settings.speakers, settings.h5_audio_dir, settings.size,
                                     settings.h5_source_height, min_seconds=settings.min_seconds,
                                     val_per_speaker=settings.val_per_speaker, progress=settings.progress)
            print(f"{settings.output_root}: imported {len(records)} PATS h5 intervals (stage 1 only)")
            return 0 if records else 1
        check_estimator_config(settings.estimator)
    except (ValueError, FileNotFoundError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    report = run_pats(settings)
    counts = ", ".join(f"{n} {r}" for r, n in sorted(report.skip_counts.items())) or "none"
    root = Path(cfg.get("output_root"))
    print(f"{root}: {report.selected} intervals selected, {report.processed} processed, {report.reused} reused "
          f"from an earlier run; skipped: {counts}; {len(report.errors)} failed; manifest: {report.clips} clips"
          f"{'' if not report.skipped else f' (see {root / SKIPPED_CSV})'}")
    for row in report.errors[:10]:
        print(f"  failed {row['speaker']}-{row['interval_id']}: {row['detail']}", file=sys.stderr)
    return 0 if report.clips and not report.errors else 1
