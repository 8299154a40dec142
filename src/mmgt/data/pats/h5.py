"""Import of the original PATS h5 features (``processed/<speaker>/<interval_id>.h5``) for stage-1-only work.

PATS ships OpenPose keypoints (52 joints: neck, arms, nose, eyes, 2 x 21 hand points) at 15 fps, relative to
the neck, plus log-mel spectrograms; not the videos. This module turns them into the corpus format so stage 1
can train on them without downloading anything else:

* pose ``[x0..x51, y0..y51]`` + confidences -> the 134-point layout where a joint exists (body points of
  OpenPose-18, both hands), score 0 elsewhere (legs, feet, face); neck placed at ``neck`` (fractions of the
  frame) and scaled by ``size / source_height``; resampled 15 -> 25 fps (linear where both neighbours are
  visible, nearest otherwise); the manifest stores the new fps (25);
* ``audio/log_mel_400`` (64 mels at 100 Hz) averaged into 25-fps frames and saved as the clip cache
  ``pats_log_mel_400`` (``Corpus.cache_path(rec, "pats_log_mel_400")``);
* ``audio.wav`` from PATS' raw audio (``raw/<speaker>_cropped/<interval_id>.mp3``) when ``audio_dir`` is given,
  else silence (then only the cached log-mel carries the speech);
* ``video.mp4`` is the rendered skeleton (a stand-in so the corpus validates; not for stage 2).

Needs ``h5py`` (optional dependency); without it :func:`import_pats_h5` raises an ImportError saying so.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from mmgt.data.corpus import (
    FPS,
    SAMPLE_RATE,
    ClipRecord,
    naming_write_errors,
    sweep_leftovers,
    write_clip,
    write_manifest,
    writer_lock,
)
from mmgt.data.importing import assign_val, normalise_split
from mmgt.data.pats.intervals import read_intervals
from mmgt.data.video_io import atomic_path, read_audio

log = logging.getLogger(__name__)

PATS_FPS = 15
N_JOINTS = 52
LOG_MEL_KEY = "audio/log_mel_400"
LOG_MEL_RATE = 100.0  # 16 kHz, hop 160
CACHE_SIGNATURE = "pats_log_mel_400"
# PATS joint index -> 134-layout index (OpenPose-18 body: 0 nose, 1 neck, 2-4 right arm, 5-7 left arm,
# 14/15 eyes; left hand 92-112, right hand 113-133; PATS hands are wrist-root + 4 x 5 finger joints like ours)
PATS_TO_134: dict[int, int] = {0: 1, 1: 2, 2: 3, 3: 4, 4: 5, 5: 6, 6: 7, 7: 0, 8: 14, 9: 15,
                               **{10 + i: 92 + i for i in range(21)}, **{31 + i: 113 + i for i in range(21)}}


def _h5py() -> Any:
    try:
        import h5py
    except ImportError as err:
        raise ImportError("the PATS h5 import needs h5py, an optional dependency (pip install h5py)") from err
    return h5py


def pats_pose_to_134(pose: np.ndarray, confidence: np.ndarray | None, size: int, source_height: float = 720.0,
                     neck: tuple[float, float] = (0.5, 0.3)) -> np.ndarray:
    """(T, 104) neck-relative ``[x..., y...]`` (+ (T, 52) confidences) -> (T, 134, 3) pixels of a ``size`` frame."""
    pose = np.asarray(pose, np.float32)
    if pose.ndim != 2 or pose.shape[1] != 2 * N_JOINTS:
        raise ValueError(f"PATS pose must be (T, {2 * N_JOINTS}), got {pose.shape}")
    t = len(pose)
    xy = pose.reshape(t, 2, N_JOINTS).transpose(0, 2, 1)  # (T, 52, 2)
    conf = np.ones((t, N_JOINTS), np.float32) if confidence is None else np.asarray(confidence, np.float32)
    conf = conf.reshape(t, N_JOINTS)
    scale = size / float(source_height)
    out = np.zeros((t, 134, 3), np.float32)
    src = np.array(list(PATS_TO_134), dtype=np.int64)
    dst = np.array(list(PATS_TO_134.values()), dtype=np.int64)
    out[:, dst, 0] = neck[0] * size + xy[:, src, 0] * scale
    out[:, dst, 1] = neck[1] * size + xy[:, src, 1] * scale
    out[:, dst, 2] = conf[:, src]
    return out


def resample_pose(kp: np.ndarray, fps_in: float = PATS_FPS, fps_out: float = FPS, threshold: float = 0.3
                  ) -> np.ndarray:
    """Resample (T, K, 3) keypoints in time: linear where both neighbours are visible, else the nearest frame."""
    kp = np.asarray(kp, np.float32)
    t_in = len(kp)
    n_out = int(math.floor(t_in / fps_in * fps_out + 1e-6))
    pos = np.arange(n_out) * (fps_in / fps_out)
    i0 = np.clip(np.floor(pos).astype(np.int64), 0, t_in - 1)
    i1 = np.clip(i0 + 1, 0, t_in - 1)
    w = (pos - i0)[:, None, None].astype(np.float32)
    a, b = kp[i0], kp[i1]
    lin = a * (1 - w) + b * w
    lin[..., 2] = np.minimum(a[..., 2], b[..., 2])
    near = np.where((w >= 0.5), b, a)
    both = (a[..., 2] > threshold) & (b[..., 2] > threshold)
    return np.where(both[..., None], lin, near).astype(np.float32)


def frame_features(feat: np.ndarray, rate_in: float, n_frames: int, fps: float = FPS) -> np.ndarray:
    """(Ta, F) features at ``rate_in`` Hz -> (n_frames, F): mean of the bins inside each video frame."""
    feat = np.asarray(feat, np.float32)
    out = np.zeros((n_frames, feat.shape[1]), np.float32)
    per = rate_in / fps
    for k in range(n_frames):
        a = min(int(math.floor(k * per)), len(feat) - 1)
        b = max(a + 1, min(int(math.floor((k + 1) * per)), len(feat)))
        out[k] = feat[a:b].mean(axis=0)
    return out


def read_pats_h5(path: str | Path) -> dict[str, np.ndarray]:
    """``pose`` (T, 104), ``confidence`` (T, 52) or absent, ``log_mel`` (Ta, 64) or absent."""
    h5py = _h5py()
    out: dict[str, np.ndarray] = {}
    with h5py.File(str(path), "r") as f:
        if "pose/data" not in f:
            raise ValueError(f"{path}: no pose/data in this PATS h5 file")
        out["pose"] = np.asarray(f["pose/data"], np.float32)
        if "pose/confidence" in f:
            out["confidence"] = np.asarray(f["pose/confidence"], np.float32)
        if LOG_MEL_KEY in f:
            out["log_mel"] = np.asarray(f[LOG_MEL_KEY], np.float32)
    return out


def _find_audio(audio_dir: Path | None, speaker: str, interval_id: str) -> Path | None:
    if audio_dir is None:
        return None
    for folder in (audio_dir / f"{speaker}_cropped", audio_dir / speaker, audio_dir):
        for ext in (".mp3", ".wav", ".m4a", ".flac"):
            p = folder / f"{interval_id}{ext}"
            if p.is_file():
                return p
    return None


def import_pats_h5(processed_dir: str | Path, output_root: str | Path, intervals_csv: str | Path | None = None,
                   speakers: list[str] | None = None, audio_dir: str | Path | None = None, size: int = 256,
                   source_height: float = 720.0, neck: tuple[float, float] = (0.5, 0.3),
                   min_seconds: float = 0.0, val_per_speaker: int = 2, progress: bool = True) -> list[ClipRecord]:
    """Write a stage-1 corpus at ``output_root`` from ``processed/<speaker>/<interval_id>.h5``; returns records.

    Splits come from the intervals CSV's ``dataset`` column (train/dev/test) when given, else every interval
    is ``train``; speakers without a val split get ``val_per_speaker`` intervals moved there. Runs under the
    corpus' writer lock and starts by sweeping what killed runs left; a failed write raises
    :class:`~mmgt.data.corpus.CorpusWriteError` naming the file.
    """
    _h5py()
    processed_dir, root = Path(processed_dir), Path(output_root)
    audio_root = Path(audio_dir) if audio_dir else None
    if not processed_dir.is_dir():
        raise FileNotFoundError(f"{processed_dir}: PATS processed folder not found (config key pats.h5_dir)")
    splits = {}
    if intervals_csv:
        splits = {(iv.speaker, iv.interval_id): normalise_split(iv.dataset)
                  for iv in read_intervals(intervals_csv, speakers)}
    files = sorted(p for p in processed_dir.glob("*/*.h5") if not speakers or p.parent.name in speakers)
    with writer_lock(root):
        sweep_leftovers(root)
        records, interval_of = _write_clips(files, root, splits, audio_root, size, source_height, neck, min_seconds,
                                            progress)
        records = assign_val(records, interval_of, val_per_speaker)
        if records:
            write_manifest(root, records)
        else:
            log.warning("%s: no PATS h5 intervals imported", processed_dir)
    return records


def _write_clips(files: list[Path], root: Path, splits: dict[tuple[str, str], str | None], audio_root: Path | None,
                 size: int, source_height: float, neck: tuple[float, float], min_seconds: float, progress: bool
                 ) -> tuple[list[ClipRecord], dict[str, str]]:
    """One clip per h5 file that has a split and is long enough (skeleton video, audio, keypoints, log-mel cache);
    returns the records and each clip's interval id."""
    from tqdm.auto import tqdm

    from mmgt.pose.render import render_pose

    records, interval_of = [], {}
    for path in tqdm(files, desc=f"PATS h5 -> {root}", unit="interval", disable=not progress):
        speaker, iid = path.parent.name, path.stem
        split = splits.get((speaker, iid), "train" if not splits else None)
        if split is None:
            continue
        data = read_pats_h5(path)
        kp = resample_pose(pats_pose_to_134(data["pose"], data.get("confidence"), size, source_height, neck))
        n = len(kp)
        if n == 0 or n < min_seconds * FPS:
            continue
        audio_path = _find_audio(audio_root, speaker, iid)
        audio = read_audio(audio_path, SAMPLE_RATE) if audio_path else np.zeros(n * SAMPLE_RATE // FPS, np.float32)
        frames = render_pose(kp, size, size)
        clip_id = f"{speaker}-{iid}"
        rec = write_clip(root, clip_id, speaker, split, frames, audio, kp, fps=FPS)
        if "log_mel" in data:
            # the path Corpus(root).cache_path(rec, CACHE_SIGNATURE) resolves to
            cache = root / Path(rec.keypoints).parent / f"cache_{CACHE_SIGNATURE}.npy"
            with naming_write_errors(cache), atomic_path(cache) as tmp, tmp.open("wb") as fh:
                np.save(fh, frame_features(data["log_mel"], LOG_MEL_RATE, n))
        records.append(rec)
        interval_of[clip_id] = iid
    return records, interval_of
