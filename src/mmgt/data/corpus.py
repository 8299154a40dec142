"""The processed-corpus format (DESIGN §4): ``manifest.csv`` + per-clip ``video.mp4``, ``audio.wav``,
``keypoints.npy`` and optional feature caches. One reader and one writer used by every producer
(synthetic generator, PATS import) and consumer (validator, DataModule, evaluation).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from mmgt.data.video_io import FPS, SAMPLE_RATE, atomic_path, read_audio, read_video, write_audio, write_video
from mmgt.data.video_io import HOP as HOP  # re-exported: corpus users align audio and frames with it

MANIFEST = "manifest.csv"
SPLITS = ("train", "val", "test")


class CorpusError(RuntimeError):
    """A corpus that can't be used as is (missing manifest, bad row, unknown clip)."""


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
    with atomic_path(path) as tmp:
        tmp.write_text(buf.getvalue())
    return path


def write_clip(root: str | Path, clip_id: str, speaker: str, split: str, frames: np.ndarray, audio: np.ndarray,
               keypoints: np.ndarray, fps: int = FPS) -> ClipRecord:
    """Write one clip's files under ``clips/<clip_id>/`` (each atomically) and return its manifest row.

    ``audio`` is 16 kHz mono; it is padded/trimmed to exactly ``n_frames * 640`` samples so that audio and
    video durations agree by construction.
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
    rel = Path("clips") / clip_id
    write_video(root / rel / "video.mp4", frames, fps=fps)
    write_audio(root / rel / "audio.wav", audio)
    with atomic_path(root / rel / "keypoints.npy") as tmp, tmp.open("wb") as fh:
        np.save(fh, keypoints)
    return ClipRecord(clip_id=clip_id, speaker=speaker, split=split, fps=float(fps), n_frames=t, width=w, height=h,
                      video=str(rel / "video.mp4"), audio=str(rel / "audio.wav"),
                      keypoints=str(rel / "keypoints.npy"))


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
