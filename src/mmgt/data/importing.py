"""What every corpus importer needs around the media (:mod:`mmgt.data.media`): clips written whole or not at all,
finished work recognised on a rerun, one run at a time, a log of what was skipped and why.

A typical importer::

    store = ClipStore(root)                        # state under <root>/.import
    with store.run():                              # writer lock; leftovers of killed runs swept
        for item in items:
            try:
                ...                                # cut_video / cut_audio / keypoints, or raise SkipItem(reason)
                records.append(store.write(clip_id, speaker, split, frames, audio, kp, signature=sig))
            except SkipItem as skip:
                skipped.append({..., "reason": skip.reason, "detail": skip.detail})
        write_manifest(root, records)
        write_skip_log(root, skipped, columns)

A failed write (disk full, no permission) raises :class:`~mmgt.data.corpus.CorpusWriteError` naming the final
path (never the staging copy); ``python -m mmgt.prepare`` prints it as one line and exits 1.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from mmgt.data.corpus import ClipRecord, CorpusWriteError, naming_write_errors, sweep_leftovers, write_clip, writer_lock
from mmgt.data.video_io import FPS, atomic_path

SKIPPED_CSV = "skipped.csv"
DONE = ".done"
_SPLIT_ALIASES = {"train": "train", "dev": "val", "val": "val", "valid": "val", "validation": "val", "test": "test"}


class SkipItem(Exception):  # noqa: N818 - a control-flow signal, not an error
    """Raised while importing one source item: it goes to the skip log with its reason instead of the corpus."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


# --------------------------------------------------------------------------------------------------- checks, splits


def person_fraction(kp: np.ndarray, threshold: float = 0.3) -> float:
    """Fraction of frames where any body keypoint is detected (score > threshold)."""
    if len(kp) == 0:
        return 0.0
    return float((kp[:, :18, 2] > threshold).any(axis=1).mean())


def normalise_split(name: str) -> str | None:
    """``train``/``dev``/``test`` (as datasets name them) -> the corpus splits ``train``/``val``/``test``; else None."""
    return _SPLIT_ALIASES.get(str(name).strip().lower())


def assign_val(records: list[ClipRecord], group_of: dict[str, str], per_speaker: int) -> list[ClipRecord]:
    """Speakers with no val clips get ``per_speaker`` train groups (``group_of``: clip id -> source item, so the
    windows of one item stay together) moved to val, chosen by a hash of the group id: the choice doesn't depend on
    which other items happen to be present."""
    if per_speaker <= 0:
        return records
    by_speaker: dict[str, set[str]] = {}
    has_val: set[str] = set()
    for r in records:
        if r.split == "val":
            has_val.add(r.speaker)
        elif r.split == "train":
            by_speaker.setdefault(r.speaker, set()).add(group_of[r.clip_id])
    moved: set[str] = set()
    for spk, ids in by_speaker.items():
        if spk in has_val or len(ids) <= per_speaker:
            continue
        moved |= set(sorted(ids, key=lambda i: hashlib.sha1(f"{spk}-{i}".encode()).hexdigest())[:per_speaker])
    return [replace(r, split="val") if r.split == "train" and group_of[r.clip_id] in moved else r for r in records]


# --------------------------------------------------------------------------------------------------- files


def write_json(path: Path, obj: Any) -> None:
    """Atomic JSON write; a failure names ``path``."""
    with naming_write_errors(path), atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=1, sort_keys=True))


def read_json(path: Path) -> Any:
    """The JSON at ``path``, or None when it is missing or unreadable (then the work it describes is redone)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def write_skip_log(root: str | Path, rows: list[dict[str, str]], columns: Sequence[str], name: str = SKIPPED_CSV
                   ) -> Path:
    """``<root>/skipped.csv``: one row per skipped source item (``columns``, a ``reason`` among them), sorted by the
    columns in order so reruns give the same file."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    w.writeheader()
    for row in sorted(rows, key=lambda r: tuple(str(r.get(c, "")) for c in columns)):
        w.writerow(row)
    path = Path(root) / name
    with naming_write_errors(path), atomic_path(path) as tmp:
        tmp.write_text(buf.getvalue())
    return path


# --------------------------------------------------------------------------------------------------- clip store


class ClipStore:
    """The clips of an importer at ``root``, each written whole or not at all, and its per-item progress.

    A clip is built under ``<root>/<state>/staging/`` and renamed onto ``clips/<clip_id>/`` with a ``.done`` marker
    holding the settings ``signature`` (a hash of whatever changes the output): a kill leaves either the old clip or
    the new one, and a rerun with the same settings reuses it. Source items (an interval, a file) remember their
    outcome under ``<root>/<state>/<items>/<key>.json`` (:meth:`remember` / :meth:`recall`), so skipped ones are not
    decoded again either."""

    def __init__(self, root: str | Path, state: str = ".import", items: str = "items") -> None:
        self.root = Path(root)
        self.state = self.root / state
        self.items = self.state / items
        self.staging = self.state / "staging"

    @contextlib.contextmanager
    def run(self) -> Iterator[ClipStore]:
        """One writer run: holds the corpus' writer lock and starts by sweeping what killed runs left (temp files,
        build folders, staging copies); staging is cleared again at the end."""
        with writer_lock(self.root):
            sweep_leftovers(self.root)  # before mkdir: it may first have to finish an interrupted swap onto root
            with naming_write_errors(self.root):
                self.root.mkdir(parents=True, exist_ok=True)
            self.clear_staging()
            yield self
            self.clear_staging()

    def clear_staging(self) -> None:
        if self.staging.exists():
            with naming_write_errors(self.staging):
                shutil.rmtree(self.staging)

    def clip_dir(self, clip_id: str) -> Path:
        return self.root / "clips" / clip_id

    def write(self, clip_id: str, speaker: str, split: str, frames: np.ndarray, audio: np.ndarray,
              keypoints: np.ndarray, fps: int = FPS, signature: str = "", info: dict[str, Any] | None = None
              ) -> ClipRecord:
        """Write one clip (:func:`mmgt.data.corpus.write_clip`) and its ``.done`` marker (``info``: anything worth
        keeping about where it came from, stored in the marker), then swap it in; returns its manifest row."""
        tmp_root = self.staging / f"{clip_id}.{os.getpid()}"
        final = self.clip_dir(clip_id)
        try:
            try:
                shutil.rmtree(tmp_root, ignore_errors=True)
                rec = write_clip(tmp_root, clip_id, speaker, split, frames, audio, keypoints, fps=fps)
                write_json(tmp_root / "clips" / clip_id / DONE,
                           {**(info or {}), "signature": signature, "record": asdict(rec)})
            except CorpusWriteError as err:  # the staging copy mirrors the final layout: name the final file
                raise CorpusWriteError(str(err).replace(str(tmp_root), str(self.root), 1)) from err.__cause__
            with naming_write_errors(final):
                final.parent.mkdir(parents=True, exist_ok=True)
                if final.exists():
                    shutil.rmtree(final)
                os.replace(tmp_root / "clips" / clip_id, final)
        finally:
            shutil.rmtree(tmp_root, ignore_errors=True)  # a full disk gets its space back
        return rec

    def finished(self, clip_id: str, signature: str) -> ClipRecord | None:
        """The clip's manifest row when its three files and its ``.done`` marker (same signature) exist, else None."""
        done = read_json(self.clip_dir(clip_id) / DONE)
        if not isinstance(done, dict) or done.get("signature") != signature or "record" not in done:
            return None
        try:
            rec = ClipRecord(**done["record"])
        except TypeError:
            return None
        return rec if all((self.root / getattr(rec, k)).is_file() for k in ("video", "audio", "keypoints")) else None

    def remember(self, key: str, signature: str, status: str, clips: list[dict[str, Any]] | None = None,
                 **info: Any) -> None:
        """Record an item's outcome (``done`` with its clips' manifest rows, or ``skipped`` with reason/detail)."""
        write_json(self.items / f"{key}.json", {"status": status, "signature": signature, "clips": clips or [],
                                                **info})

    def recall(self, key: str, signature: str) -> dict[str, Any] | None:
        """The item's record if its work can be reused with these settings: skipped, or done with every clip
        finished; else None (never seen, other settings, or a clip missing)."""
        m = read_json(self.items / f"{key}.json")
        if not isinstance(m, dict) or m.get("signature") != signature:
            return None
        if m.get("status") == "done" and all(self.finished(r["clip_id"], signature) for r in m.get("clips", [])):
            return m
        return m if m.get("status") == "skipped" else None
