"""Window datasets over a processed corpus: stage-1 pose windows and stage-2 video windows.

Both stages cut the *same* clips into windows the same way, so a clip means the same thing to SMGA and to the
video model:

* a window of ``length`` frames starts at ``start >= 1``: frame ``start - 1`` is the conditioning pose of
  stage 1 (the original's 81-frame keypoint slice = 1 conditioning frame + 80 targets, no one-frame shift
  between audio and pose), and frame 0 is the stage-2 validation reference;
* training windows start at ``1 + k * stride + u`` with ``u`` drawn uniformly in ``[0, stride)`` at every
  access (the whole clip is covered across epochs, not just a fixed lattice); validation/test windows are
  deterministic, from frame 1, ``eval_stride`` apart (non-overlapping by default) so metrics are repeatable
  and identical whatever the number of workers;
* clips shorter than ``length + 1`` frames are skipped with a warning naming them (``.skipped``).

Audio frame ``i`` belongs to video frame ``i``: audio samples ``[i * HOP, (i + 1) * HOP)`` and feature row ``i``
(the extractors in :mod:`mmgt.data.audio_features` guarantee that row alignment).

A clip whose files cannot be read is reported once per process (``failed to load`` + the file path) and its
windows are served by other clips' windows instead, so one bad file never ends an epoch; the dataset length does
not change, so Lightning's ``DistributedSampler`` shards stay equal across ranks.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch.utils.data import Dataset

from mmgt.data.audio_features import window_indices
from mmgt.data.corpus import HOP, ClipRecord, Corpus
from mmgt.pose.conditioning import ConditionProcessor, normalise_frames, scale_keypoints
from mmgt.pose.layout import PoseNormalizer, visibility

log = logging.getLogger(__name__)

T = TypeVar("T")


class ClipLoadError(RuntimeError):
    """A clip file could not be read (or had the wrong shape); the message starts with the file path."""


def _read(path: Path, fn: Callable[[], T]) -> T:
    """Run a loader; turn any failure into a :class:`ClipLoadError` whose message names ``path``."""
    try:
        return fn()
    except ClipLoadError:
        raise
    except Exception as err:  # noqa: BLE001 - any decoder/IO failure of a clip file is a load failure
        msg = str(err)
        raise ClipLoadError(msg if str(path) in msg else f"{path}: {msg}") from err


def read_audio_slice(corpus: Corpus, rec: ClipRecord, start: int, count: int) -> np.ndarray:
    """Samples of frames ``[start, start + count)`` (``count * HOP``), zero-padded past the end of the file.

    Reads only the needed samples when the file is a 16 kHz mono wav (the corpus format); otherwise decodes the
    whole file through :meth:`Corpus.load_audio` (resampled).
    """
    import soundfile as sf

    path = corpus.path(rec, "audio")
    a, n = start * HOP, count * HOP

    def load() -> np.ndarray:
        try:
            info = sf.info(str(path))
            direct = info.samplerate == 16000 and info.channels == 1
        except Exception:  # noqa: BLE001 - not a soundfile container: fall back to the generic reader
            direct = False
        if direct:
            x, _ = sf.read(str(path), start=a, stop=a + n, dtype="float32", always_2d=False)
        else:
            x = corpus.load_audio(rec)[a:a + n]
        return np.asarray(x, dtype=np.float32)

    x = _read(path, load)
    if len(x) < n:
        x = np.pad(x, (0, n - len(x)))
    return x


def _load_cache(path: Path, rows: np.ndarray | slice, n_frames: int) -> np.ndarray:
    """Rows of a cached per-frame feature file (memory-mapped: only those rows are read)."""

    def load() -> np.ndarray:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
        if arr.shape[0] < n_frames:
            raise ValueError(f"feature cache has {arr.shape[0]} rows, the clip has {n_frames} frames (stale cache?)")
        return np.array(arr[rows], dtype=np.float32)

    return _read(path, load)


def _check_finite(item: dict[str, Any], clip_id: str) -> dict[str, Any]:
    """Refuse a window whose keypoints, features or frames hold NaN/inf (one such clip would turn every loss NaN
    from the first step): the clip is then skipped like an unreadable one, with its name in the warning."""
    for key, v in item.items():
        vals = v if isinstance(v, list | tuple) else [v]
        for x in vals:
            if torch.is_tensor(x) and x.is_floating_point() and not bool(torch.isfinite(x).all()):
                raise ClipLoadError(f"clip {clip_id}: `{key}` holds NaN/inf values")
    return item


class WindowDataset(Dataset):
    """Fixed-length windows over clips, with the skipping/replacement policy described in the module docstring.

    Subclasses implement :meth:`load_window` (clip index, start) -> item dict.
    """

    def __init__(self, corpus: Corpus, records: Sequence[ClipRecord], length: int, stride: int, *, train: bool,
                 speakers: Sequence[str], eval_stride: int | None = None, split: str = "") -> None:
        if length < 1 or stride < 1:
            raise ValueError(f"window length and stride must be >= 1, got length={length}, stride={stride}")
        self.corpus, self.length, self.stride, self.train = corpus, int(length), int(stride), bool(train)
        self.eval_stride = int(eval_stride) if eval_stride else max(self.stride, self.length)
        self.split = split
        self.speaker_index = {s: i for i, s in enumerate(speakers)}
        need = self.length + 1  # + the frame before the window (conditioning pose / val reference)
        self.records = [r for r in records if r.n_frames >= need]
        self.skipped = [r.clip_id for r in records if r.n_frames < need]
        if self.skipped:
            log.warning("%s split: skipping %d clip(s) shorter than %d frames (window %d + 1 conditioning frame): %s",
                        split or "?", len(self.skipped), need, self.length, ", ".join(self.skipped))
        step = self.stride if self.train else self.eval_stride
        self.windows: list[tuple[int, int]] = [
            (c, s) for c, rec in enumerate(self.records) for s in range(1, rec.n_frames - self.length + 1, step)
        ]
        self._bad: set[int] = set()  # clips that failed to load in this process

    def __len__(self) -> int:
        return len(self.windows)

    def window_start(self, index: int) -> tuple[int, int]:
        """(clip index, start frame) of window ``index``; training starts get a random offset within the stride."""
        clip, start = self.windows[index]
        if self.train and self.stride > 1:
            last = self.records[clip].n_frames - self.length
            start = min(start + int(torch.randint(self.stride, ())), last)
        return clip, start

    def __getitem__(self, index: int) -> dict[str, Any]:
        idx, tried = int(index), 0
        while True:
            clip, start = self.window_start(idx)
            if clip not in self._bad:
                try:
                    return _check_finite(self.load_window(clip, start), self.records[clip].clip_id)
                except ClipLoadError as err:
                    self._bad.add(clip)
                    log.warning("failed to load clip %s (%s); its windows are replaced by other clips' windows",
                                self.records[clip].clip_id, err)
            tried += 1
            idx = self._replacement(index, tried)

    def _replacement(self, index: int, tried: int) -> int:
        """Another window from a clip not known to be bad: random in training, the next one in evaluation."""
        good = [i for i, (c, _) in enumerate(self.windows) if c not in self._bad]
        if not good:
            raise RuntimeError(f"{self.split or '?'} split: no clip of this split could be loaded "
                               f"({len(self._bad)} failed, see the 'failed to load' warnings)")
        if self.train:
            return good[int(torch.randint(len(good), ()))]
        after = [i for i in good if i > index]
        return after[0] if after else good[0]

    def base_item(self, rec: ClipRecord, start: int) -> dict[str, Any]:
        """The fields both stages share: waveform, ids and indices."""
        return {
            "audio": torch.from_numpy(read_audio_slice(self.corpus, rec, start, self.length)),
            "clip_id": rec.clip_id,
            "start": int(start),
            "speaker": self.speaker_index[rec.speaker],
        }

    def load_window(self, clip: int, start: int) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError


class PoseWindowDataset(WindowDataset):
    """Stage-1 (SMGA) windows: per-frame audio features, conditioning pose, target poses and their visibility.

    Item: ``audio_feat (N, F)``, ``cond_pose (134, 3)`` (frame ``start - 1``), ``poses (N, 134, 3)`` normalised
    (x, y in [-1, 1], score kept), ``vis (N, 134)`` bool (legs hidden), ``audio (N * HOP,)``, ``clip_id``,
    ``start``, ``speaker``, ``frame_size (2,)`` = (H, W).
    """

    def __init__(self, corpus: Corpus, records: Sequence[ClipRecord], length: int, stride: int, *, train: bool,
                 speakers: Sequence[str], feature_paths: Mapping[str, Path], pose_margin: float = 0.5,
                 legacy_pose_norm: bool = False, eval_stride: int | None = None, split: str = "") -> None:
        super().__init__(corpus, records, length, stride, train=train, speakers=speakers, eval_stride=eval_stride,
                         split=split)
        self.feature_paths = dict(feature_paths)
        self.pose_margin, self.legacy_pose_norm = float(pose_margin), bool(legacy_pose_norm)

    def normalizer(self, rec: ClipRecord) -> PoseNormalizer:
        return PoseNormalizer(rec.width, rec.height, margin=self.pose_margin, legacy=self.legacy_pose_norm)

    def load_window(self, clip: int, start: int) -> dict[str, Any]:
        rec, n = self.records[clip], self.length
        kp_path = self.corpus.path(rec, "keypoints")
        kp = _read(kp_path, lambda: self.corpus.load_keypoints(rec))
        if kp.shape[0] < start + n:
            raise ClipLoadError(f"{kp_path}: {kp.shape[0]} keypoint frames, window needs [{start - 1}, {start + n})")
        feats = _load_cache(self.feature_paths[rec.clip_id], slice(start, start + n), rec.n_frames)
        norm = self.normalizer(rec)
        window = np.ascontiguousarray(kp[start - 1:start + n], dtype=np.float32)
        poses = torch.from_numpy(norm.normalize(window))
        item = self.base_item(rec, start)
        item.update({
            "audio_feat": torch.from_numpy(feats),
            "cond_pose": poses[0],
            "poses": poses[1:],
            "vis": torch.from_numpy(np.asarray(visibility(window[1:], drop_legs=True))),
            "frame_size": torch.tensor([rec.height, rec.width], dtype=torch.int64),
        })
        return item


class FrameCache:
    """Decoded clips kept in memory up to ``budget_mb``: a clip is decoded once, whole, and every later window of it
    is a slice. Why: on small corpora (the synthetic one, a few PATS speakers at 64-128 px) video decoding is most of
    the data time (~70 % of a stage-2 item at 16 px); re-decoding a window costs a container open and a seek each
    time. Clips are admitted while they fit and never evicted, so a corpus larger than the budget does not thrash:
    the clips beyond it are read window by window as before. Each loader worker holds its own cache."""

    def __init__(self, budget_mb: float) -> None:
        self.budget = int(float(budget_mb) * 2**20)
        self.used = 0
        self.clips: dict[str, np.ndarray] = {}

    def frames(self, corpus: Corpus, rec: ClipRecord, start: int, count: int) -> np.ndarray:
        """Frames ``[start, start + count)`` of ``rec``'s video, from memory when the clip is (or can be) held."""
        path = corpus.path(rec, "video")
        key = str(path)
        clip = self.clips.get(key)
        if clip is None and self.used + rec.n_frames * rec.height * rec.width * 3 <= self.budget:
            clip = _read(path, lambda: corpus.load_video(rec))
            self.clips[key] = clip
            self.used += clip.nbytes
        if clip is None:
            return _read(path, lambda: corpus.load_video(rec, start, count))
        out = clip[start:start + count]
        if out.shape[0] != count:
            raise ClipLoadError(f"{path}: decoded {clip.shape[0]} frames, window needs [{start}, {start + count})")
        return out


class VideoWindowDataset(WindowDataset):
    """Stage-2 windows: N consecutive frames, their pose images and region masks, a reference frame, audio windows.

    Item: ``frames (N, 3, H, W)`` in [-1, 1], ``pose_images (N, 3, H, W)`` in [0, 1], ``masks (K, N, h, w)`` at the
    mask config's one size (the model resizes them), ``ref_frame (3, H, W)`` in [-1, 1] (a random
    frame of the clip in training, frame 0 otherwise), ``audio_emb (N, 2r+1, L, D)`` (cached wav2vec hidden states
    of frames ``i-r .. i+r``, clamped at the clip ends), ``keypoints (N, 134, 3)`` pixels of the served size,
    ``audio (N * HOP,)``, ``clip_id``, ``start``, ``speaker``, ``frame_size (2,)``.
    """

    def __init__(self, corpus: Corpus, records: Sequence[ClipRecord], length: int, stride: int, *, train: bool,
                 speakers: Sequence[str], feature_paths: Mapping[str, Path], image_size: tuple[int, int] | None,
                 conditions: ConditionProcessor, audio_context: int = 2, eval_stride: int | None = None,
                 split: str = "", frame_cache_mb: float = 0.0) -> None:
        super().__init__(corpus, records, length, stride, train=train, speakers=speakers, eval_stride=eval_stride,
                         split=split)
        self.frame_cache = FrameCache(frame_cache_mb)
        self.feature_paths = dict(feature_paths)
        self.image_size = tuple(int(v) for v in image_size) if image_size is not None else None
        self.conditions, self.audio_context = conditions, int(audio_context)

    def out_size(self, rec: ClipRecord) -> tuple[int, int]:
        return self.image_size if self.image_size is not None else (rec.height, rec.width)

    def load_window(self, clip: int, start: int) -> dict[str, Any]:
        rec, n = self.records[clip], self.length
        h, w = self.out_size(rec)
        kp_path = self.corpus.path(rec, "keypoints")
        kp = _read(kp_path, lambda: self.corpus.load_keypoints(rec))
        if kp.shape[0] < start + n:
            raise ClipLoadError(f"{kp_path}: {kp.shape[0]} keypoint frames, window needs [{start}, {start + n})")
        frames = self.frame_cache.frames(self.corpus, rec, start, n)  # n frames, or a ClipLoadError naming the file
        ref_idx = int(torch.randint(rec.n_frames, ())) if self.train else 0
        if start <= ref_idx < start + n:
            ref = frames[ref_idx - start:ref_idx - start + 1]
        else:
            ref = self.frame_cache.frames(self.corpus, rec, ref_idx, 1)
        idx = window_indices(start, n, rec.n_frames, self.audio_context)
        emb = _load_cache(self.feature_paths[rec.clip_id], idx, rec.n_frames)

        keypoints = scale_keypoints(kp[start:start + n], (rec.height, rec.width), (h, w))
        item = self.base_item(rec, start)
        item.update(self.conditions(keypoints, (h, w)))
        item.update({
            "frames": normalise_frames(frames, (h, w)),
            "ref_frame": normalise_frames(ref, (h, w))[0],
            "audio_emb": torch.from_numpy(emb),
            "keypoints": torch.from_numpy(keypoints),
            "frame_size": torch.tensor([h, w], dtype=torch.int64),
        })
        return item


def collate_windows(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack tensors, keep strings as lists, ints/bools/floats -> tensors."""
    if not items:
        raise ValueError("collate_windows: empty batch")
    out: dict[str, Any] = {}
    for key, first in items[0].items():
        vals = [it[key] for it in items]
        if isinstance(first, torch.Tensor):
            out[key] = torch.stack(vals)
        elif isinstance(first, bool):
            out[key] = torch.tensor(vals, dtype=torch.bool)
        elif isinstance(first, int):
            out[key] = torch.tensor(vals, dtype=torch.int64)
        elif isinstance(first, float):
            out[key] = torch.tensor(vals, dtype=torch.float32)
        else:
            out[key] = list(vals)
    return out
