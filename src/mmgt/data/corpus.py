"""The processed-corpus format: ``manifest.csv`` + per-clip ``video.mp4``, ``audio.wav``,
``keypoints.npy`` and optional feature caches. One reader and one writer used by every producer
(synthetic generator, PATS import) and consumer (validator, DataModule, evaluation).
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import io
import logging
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from mmgt.data.video_io import FPS, SAMPLE_RATE, atomic_path, read_audio, read_video, write_audio, write_video
from mmgt.data.video_io import HOP as HOP  # re-exported: corpus users align audio and frames with it

log = logging.getLogger(__name__)

MANIFEST = "manifest.csv"
SPLITS = ("train", "val", "test")


class CorpusError(RuntimeError):
    """A corpus that can't be used as is (missing manifest, bad row, unknown clip)."""


class CorpusWriteError(CorpusError):
    """A corpus file that could not be written (disk full, no permission). The message names the *final* path
    (not the temp file the OS error was about) and the cause; nothing was left under that name."""


@contextlib.contextmanager
def naming_write_errors(path: str | Path) -> Iterator[None]:
    """Turn an OS-level write failure inside the block into a :class:`CorpusWriteError` naming ``path``.

    Why: the writers go through temp files, so the raw ``OSError`` names a ``.video.x8k2….mp4`` that no longer
    exists; the user needs the file the corpus wanted and why it failed. soundfile reports a failed write as its
    own ``SoundFileError`` (a RuntimeError), so it counts too."""
    try:
        yield
    except CorpusWriteError:
        raise
    except OSError as err:
        cause = f"{err.strerror} [Errno {err.errno}]" if err.strerror else str(err) or type(err).__name__
        raise CorpusWriteError(f"{path}: cannot write ({cause})") from err
    except RuntimeError as err:
        import soundfile as sf

        if not isinstance(err, sf.SoundFileError):
            raise
        raise CorpusWriteError(f"{path}: cannot write ({err})") from err


@dataclass(frozen=True)
class ClipRecord:
    """One manifest row. File paths are relative to the corpus root."""

    clip_id: str
    speaker: str
    split: str
    fps: float
    n_frames: int
    width: int
    height: int
    video: str
    audio: str
    keypoints: str

    @property
    def duration(self) -> float:
        return self.n_frames / self.fps


MANIFEST_COLUMNS = tuple(f.name for f in fields(ClipRecord))
_TYPES = {"fps": float, "n_frames": int, "width": int, "height": int}


def read_manifest(root: str | Path) -> list[ClipRecord]:
    """Parse ``<root>/manifest.csv``; errors name the file, the line and the fault."""
    path = Path(root) / MANIFEST
    if not path.exists():
        raise CorpusError(f"{path}: manifest not found (build a corpus with `python -m mmgt.prepare task=synthetic "
                          f"data.root={root}` or task=pats)")
    records = []
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        missing = set(MANIFEST_COLUMNS) - set(reader.fieldnames or [])
        if missing:
            raise CorpusError(f"{path}: manifest lacks columns {sorted(missing)}")
        for line, row in enumerate(reader, start=2):
            try:
                values = {k: _TYPES.get(k, str)(row[k]) for k in MANIFEST_COLUMNS}
            except (TypeError, ValueError) as err:
                raise CorpusError(f"{path}:{line}: bad manifest row ({err})") from err
            records.append(ClipRecord(**values))
    return records


def write_manifest(root: str | Path, records: list[ClipRecord]) -> Path:
    """Write the manifest atomically, sorted by (split, speaker, clip_id) for stable diffs."""
    path = Path(root) / MANIFEST
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=MANIFEST_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for rec in sorted(records, key=lambda r: (r.split, r.speaker, r.clip_id)):
        writer.writerow(asdict(rec))
    with naming_write_errors(path), atomic_path(path) as tmp:
        tmp.write_text(buf.getvalue())
    return path


def clip_record(clip_id: str, speaker: str, split: str, n_frames: int, width: int, height: int,
                fps: float = FPS) -> ClipRecord:
    """The manifest row of a clip stored at the standard place ``clips/<clip_id>/`` (what :func:`write_clip`
    writes), without touching its files: writers that keep finished clips on a rerun list them with it."""
    rel = Path("clips") / clip_id
    return ClipRecord(clip_id=clip_id, speaker=speaker, split=split, fps=float(fps), n_frames=int(n_frames),
                      width=int(width), height=int(height), video=str(rel / "video.mp4"),
                      audio=str(rel / "audio.wav"), keypoints=str(rel / "keypoints.npy"))


def write_clip(root: str | Path, clip_id: str, speaker: str, split: str, frames: np.ndarray, audio: np.ndarray,
               keypoints: np.ndarray, fps: int = FPS, crf: int = 18, pix_fmt: str = "yuv420p") -> ClipRecord:
    """Write one clip's files under ``clips/<clip_id>/`` (each atomically) and return its manifest row.
    ``crf`` / ``pix_fmt``: the video's H.264 quality and chroma format (:func:`mmgt.data.video_io.write_video`).

    ``audio`` is 16 kHz mono; it is padded/trimmed to exactly ``n_frames * 640`` samples so that audio and
    video durations agree by construction. A failed write raises :class:`CorpusWriteError` naming the file.
    """
    root = Path(root)
    frames = np.asarray(frames)
    keypoints = np.asarray(keypoints, dtype=np.float32)
    t, h, w = frames.shape[:3]
    if keypoints.shape != (t, 134, 3):
        raise ValueError(f"clip {clip_id}: keypoints must be ({t}, 134, 3), got {keypoints.shape}")
    n_samples = round(t * SAMPLE_RATE / fps)
    audio = np.asarray(audio, dtype=np.float32)[:n_samples]
    audio = np.pad(audio, (0, n_samples - len(audio)))
    rec = clip_record(clip_id, speaker, split, t, w, h, fps)
    with naming_write_errors(root / rec.video):
        write_video(root / rec.video, frames, fps=fps, crf=crf, pix_fmt=pix_fmt)
    with naming_write_errors(root / rec.audio):
        write_audio(root / rec.audio, audio)
    with naming_write_errors(root / rec.keypoints), atomic_path(root / rec.keypoints) as tmp, tmp.open("wb") as fh:
        np.save(fh, keypoints)
    return rec


class Corpus:
    """Read access to a processed corpus: records by id/split, file paths, loaders and cache paths."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.records = read_manifest(self.root)
        self._by_id = {r.clip_id: r for r in self.records}

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[ClipRecord]:
        return iter(self.records)

    def __contains__(self, clip_id: object) -> bool:
        return clip_id in self._by_id

    def __getitem__(self, clip_id: str) -> ClipRecord:
        try:
            return self._by_id[clip_id]
        except KeyError:
            raise CorpusError(f"{self.root / MANIFEST}: no clip {clip_id!r}") from None

    def split(self, name: str) -> list[ClipRecord]:
        return [r for r in self.records if r.split == name]

    @property
    def speakers(self) -> list[str]:
        return sorted({r.speaker for r in self.records})

    def path(self, rec: ClipRecord, kind: str) -> Path:
        """Absolute path of a clip file: kind is ``video``, ``audio`` or ``keypoints``."""
        if kind not in ("video", "audio", "keypoints"):
            raise ValueError(f"unknown clip file kind {kind!r}")
        return self.root / getattr(rec, kind)

    def cache_path(self, rec: ClipRecord, signature: str) -> Path:
        """Where a cached feature with this signature lives (beside the clip's files)."""
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in signature)
        return self.root / Path(rec.keypoints).parent / f"cache_{safe}.npy"

    def load_keypoints(self, rec: ClipRecord) -> np.ndarray:
        """(T, 134, 3) float32 pixel keypoints. Never unpickles (allow_pickle=False)."""
        path = self.path(rec, "keypoints")
        try:
            kp = np.load(path, allow_pickle=False)
        except Exception as err:
            raise ValueError(f"{path}: cannot load keypoints ({err})") from err
        if kp.ndim != 3 or kp.shape[1:] != (134, 3):
            raise ValueError(f"{path}: keypoints have shape {kp.shape}, expected (T, 134, 3)")
        return kp.astype(np.float32, copy=False)

    def load_audio(self, rec: ClipRecord) -> np.ndarray:
        """16 kHz mono float32 audio of the clip."""
        return read_audio(self.path(rec, "audio"), SAMPLE_RATE)

    def load_video(self, rec: ClipRecord, start: int = 0, count: int | None = None) -> np.ndarray:
        """(T, H, W, 3) uint8 frames ``[start, start + count)``."""
        return read_video(self.path(rec, "video"), start, count)


# ------------------------------------------------------------------------------------------ writer runs

TEMP_NAME = re.compile(r"^\.(?P<stem>.+)\.[a-z0-9_]{8}(?P<suffix>\.[^.]+)?$")
"""The names :func:`~mmgt.data.video_io.atomic_path` gives its temp files (``.<stem>.<8 chars of mkstemp's
alphabet><suffix>`` beside the target). One that outlives its writer means the writer was killed mid-file."""
BUILD_TAGS = ("new", "old")  # <root>.new-<pid>: a replacement being built; <root>.old-<pid>: the one it replaces


def build_folder(root: str | Path, tag: str) -> Path:
    """``<root>.<tag>-<pid>``: where this process builds a replacement corpus (``new``) or parks the old one."""
    if tag not in BUILD_TAGS:
        raise ValueError(f"build folder tag must be one of {BUILD_TAGS}, got {tag!r}")
    root = Path(root)
    return root.with_name(f"{root.name}.{tag}-{os.getpid()}")


def _build_folders(root: Path, tag: str | None = None) -> list[Path]:
    pattern = re.compile(rf"^{re.escape(root.name)}\.({'|'.join(BUILD_TAGS) if tag is None else tag})-\d+$")
    if not root.parent.is_dir():
        return []
    return sorted(p for p in root.parent.iterdir() if pattern.match(p.name) and p.is_dir())


def leftovers(root: str | Path) -> list[Path]:
    """What interrupted writers left: temp files under ``root`` and sibling build folders. None is ever part of the
    corpus (the manifest names final files only), so they are safe to delete when no writer is running."""
    root = Path(root)
    temps = [p for p in root.rglob(".*") if TEMP_NAME.match(p.name) and p.is_file()] if root.is_dir() else []
    return sorted(temps) + _build_folders(root)


def _finish_swap(root: Path) -> None:
    """A kill between the two renames of :func:`swap_in` leaves no ``root`` but complete sibling folders (a build
    holds a manifest only once it is complete): put the new one in place, else the old one back."""
    if root.exists():
        return
    for tag in BUILD_TAGS:
        done = [p for p in _build_folders(root, tag) if (p / MANIFEST).exists()]
        if done:
            pick = max(done, key=lambda p: (p / MANIFEST).stat().st_mtime_ns)
            log.warning("%s is missing after an interrupted swap: restoring it from %s", root, pick)
            with naming_write_errors(root):
                os.replace(pick, root)
            return


@contextlib.contextmanager
def writer_lock(root: str | Path) -> Iterator[Path]:
    """Hold the writer lock of ``root`` (``.<root name>.lock`` beside it) for the block.

    Why: sweeping deletes temp files and build folders, which is only safe while no other writer is making them; a
    second writer (another ``prepare``, the rank 0 of another node on a shared filesystem) waits for the first
    instead of racing it."""
    root = Path(root)
    lock = root.parent / f".{root.name}.lock"
    with naming_write_errors(lock):
        root.parent.mkdir(parents=True, exist_ok=True)
        fh = open(lock, "a")  # noqa: SIM115 - held for the whole block
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.warning("another writer is working on %s: waiting for it to finish", root)
            fcntl.flock(fh, fcntl.LOCK_EX)
        yield root


def sweep_leftovers(root: str | Path) -> list[Path]:
    """Finish an interrupted swap and delete every :func:`leftovers` of ``root`` (call it under
    :func:`writer_lock`, at the start of a writer run); returns what was removed."""
    root = Path(root)
    _finish_swap(root)
    removed = leftovers(root)
    for path in removed:
        log.warning("removing %s, left by an interrupted writer", path)
        with naming_write_errors(path):
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
    return removed


def swap_in(build: str | Path, root: str | Path) -> None:
    """Replace the corpus at ``root`` by the complete one at ``build``: the old one is moved aside, ``build`` renamed
    onto ``root``, then the old one deleted. Until the first rename readers see the old corpus intact; a kill
    between the renames is repaired by the next :func:`sweep_leftovers`."""
    build, root = Path(build), Path(root)
    old = build_folder(root, "old")
    with naming_write_errors(root):
        if root.exists():
            os.replace(root, old)
        try:
            os.replace(build, root)
        except OSError:
            if old.exists():
                os.replace(old, root)
            raise
    shutil.rmtree(old, ignore_errors=True)
