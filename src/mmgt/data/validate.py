"""Corpus validator behind ``python -m mmgt.prepare task=validate``: checks every clip against the data
contract (mmgt.data.corpus) and reports one line per fault, naming the file, so a broken corpus is caught before
hours of training rather than by a crash in a DataLoader worker.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmgt.data.corpus import HOP, MANIFEST, SPLITS, ClipRecord, Corpus, CorpusError, leftovers
from mmgt.data.video_io import FPS, SAMPLE_RATE, probe_video

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Fault:
    """One problem: the file it concerns and what is wrong with it."""

    path: Path
    message: str
    fatal: bool = True

    def __str__(self) -> str:
        return f"{'ERROR' if self.fatal else 'WARNING'} {self.path}: {self.message}"


def check_clip(corpus: Corpus | str | Path, rec: ClipRecord, fps: float = FPS, sample_rate: int = SAMPLE_RATE,
               frame_tolerance: int = 1) -> list[Fault]:
    """All faults of one clip (empty list = good). Decodes the whole video to count frames honestly.

    ``corpus`` may be just the corpus root: writers check a clip they may keep before any manifest lists it."""
    faults: list[Fault] = []
    root = corpus.root if isinstance(corpus, Corpus) else Path(corpus)
    video, audio, kp_path = (root / getattr(rec, k) for k in ("video", "audio", "keypoints"))
    if abs(rec.fps - fps) > 1e-3:
        faults.append(Fault(root / MANIFEST, f"clip {rec.clip_id}: manifest fps {rec.fps} != {fps}"))
    # keypoints
    n_kp = None
    if not kp_path.exists():
        faults.append(Fault(kp_path, "missing"))
    else:
        try:
            kp = np.load(kp_path, allow_pickle=False)
        except Exception as err:  # noqa: BLE001 - any unreadable file is a fault to report
            faults.append(Fault(kp_path, f"unreadable ({type(err).__name__}: {err})"))
        else:
            if kp.ndim != 3 or kp.shape[1:] != (134, 3):
                faults.append(Fault(kp_path, f"shape {kp.shape}, expected (T, 134, 3)"))
            else:
                n_kp = kp.shape[0]
                if kp.dtype != np.float32:
                    faults.append(Fault(kp_path, f"dtype {kp.dtype}, expected float32"))
                bad = ~np.isfinite(kp)
                if bad.any():
                    frames = np.unique(np.nonzero(bad)[0])
                    faults.append(Fault(kp_path, f"{int(bad.sum())} NaN/inf values in frames {frames[:5].tolist()}"
                                                 f"{'...' if len(frames) > 5 else ''}"))
                if n_kp != rec.n_frames:
                    faults.append(Fault(kp_path, f"{n_kp} keypoint frames, manifest says {rec.n_frames}"))
    # video
    if not video.exists():
        faults.append(Fault(video, "missing"))
    else:
        try:
            info = probe_video(video)
            import av

            with av.open(str(video)) as container:
                decoded = sum(1 for _ in container.decode(video=0))
        except Exception as err:  # noqa: BLE001
            faults.append(Fault(video, f"not decodable ({type(err).__name__}: {err})"))
        else:
            if abs(info.fps - fps) > 1e-2:
                faults.append(Fault(video, f"{info.fps:.3f} fps, expected {fps}"))
            if decoded != rec.n_frames:
                faults.append(Fault(video, f"{decoded} frames decoded, manifest says {rec.n_frames}"))
            if n_kp is not None and n_kp == rec.n_frames and decoded != n_kp:
                faults.append(Fault(video, f"{decoded} frames but {n_kp} keypoint frames in {kp_path.name}"))
            if (info.width, info.height) != (rec.width, rec.height):
                faults.append(Fault(video, f"size {info.width}x{info.height}, manifest says {rec.width}x{rec.height}"))
    # audio
    if not audio.exists():
        faults.append(Fault(audio, "missing"))
    else:
        try:
            import soundfile as sf

            ainfo = sf.info(str(audio))
        except Exception as err:  # noqa: BLE001
            faults.append(Fault(audio, f"unreadable ({type(err).__name__}: {err})"))
        else:
            if ainfo.samplerate != sample_rate:
                faults.append(Fault(audio, f"sample rate {ainfo.samplerate} Hz, expected {sample_rate}"))
            if ainfo.channels != 1:
                faults.append(Fault(audio, f"{ainfo.channels} channels, expected mono"))
            seconds, want = ainfo.frames / ainfo.samplerate, rec.n_frames / fps
            if abs(seconds - want) > frame_tolerance / fps:
                faults.append(Fault(audio, f"{seconds:.3f} s of audio for {rec.n_frames} frames ({want:.3f} s)"))
    return faults


def leftover_faults(root: str | Path) -> list[Fault]:
    """A warning per temp file or build folder an interrupted writer left (:func:`mmgt.data.corpus.leftovers`).

    Warnings, not errors: the manifest only ever names final files, each complete (written atomically), so the
    corpus trains correctly with them around; they only take disk space and say that a writer was killed (or is
    running right now). The next writer run on the corpus removes them."""
    return [Fault(p, f"{'build folder' if p.is_dir() else 'temp file'} left by an interrupted writer (the next "
                     "`prepare` run removes it, or delete it)", fatal=False) for p in leftovers(root)]


def validate_corpus(root: str | Path, workers: int | None = None, progress: bool = True,
                    required_splits: tuple[str, ...] = ("train", "val")) -> list[Fault]:
    """Every fault of the corpus at ``root``: manifest-level first, then per clip (in manifest order), then the
    leftovers of interrupted writers."""
    root = Path(root)
    left = leftover_faults(root)
    try:
        corpus = Corpus(root)
    except CorpusError as err:
        return [Fault(root / MANIFEST, str(err).split(": ", 1)[-1]), *left]
    manifest = root / MANIFEST
    faults: list[Fault] = []
    if not corpus.records:
        return [Fault(manifest, "no clips"), *left]
    for clip_id, n in Counter(r.clip_id for r in corpus.records).items():
        if n > 1:
            faults.append(Fault(manifest, f"duplicate clip_id {clip_id!r} ({n} rows)"))
    splits = Counter(r.split for r in corpus.records)
    for name in sorted(set(splits) - set(SPLITS)):
        faults.append(Fault(manifest, f"unknown split {name!r} ({splits[name]} clips); expected one of {SPLITS}"))
    for name in SPLITS:
        if not splits.get(name):
            faults.append(Fault(manifest, f"split {name!r} is empty", fatal=name in required_splits))
    from tqdm.auto import tqdm

    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:
        results = pool.map(lambda r: check_clip(corpus, r), corpus.records)
        for clip_faults in tqdm(results, total=len(corpus.records), desc=f"validating {root}", unit="clip",
                                disable=not progress):
            faults.extend(clip_faults)
    return faults + left


def report(root: str | Path, faults: list[Fault], n_clips: int | None = None) -> int:
    """Print one line per fault and a summary; the exit code is 1 if any fault is fatal."""
    for f in faults:
        print(str(f), flush=True)
    fatal = sum(f.fatal for f in faults)
    what = f"{n_clips} clips, " if n_clips is not None else ""
    print(f"{root}: {what}{fatal} error(s), {len(faults) - fatal} warning(s)"
          f" -> {'FAILED' if fatal else 'OK'} (contract: 25 fps H.264, 16 kHz mono, (T,134,3) float32, "
          f"{HOP} samples/frame)")
    return 1 if fatal else 0
