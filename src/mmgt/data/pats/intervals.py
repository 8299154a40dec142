"""The PATS intervals table (``cmu_intervals_df.csv``), split files, and where each interval's source video is."""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

from mmgt.data.importing import normalise_split
from mmgt.data.media import find_videos
from mmgt.data.pats.settings import PatsConfigError

REQUIRED_COLUMNS = ("speaker", "interval_id", "video_link", "video_fn", "start_time", "end_time", "dataset")


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


def _id_str(iid: Any) -> str:
    """Interval ids as text (pandas writes them as floats: ``103842.0``)."""
    s = str(iid).strip()
    return s[:-2] if s.endswith(".0") and s[:-2].isdigit() else s


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
            out.append(Interval(row["speaker"], _id_str(row["interval_id"]), row["video_link"], row["video_fn"],
                                start, end, row["dataset"]))
    return out


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
        for p in find_videos(self.root):
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
