"""PATS (Ahuja et al. 2020) -> the corpus format: ``python -m mmgt.prepare task=pats`` (``conf/pats/default.yaml``).

* :mod:`~mmgt.data.pats.settings`: the settings, checked before any work;
* :mod:`~mmgt.data.pats.intervals`: the intervals table, split files, finding each interval's video;
* :mod:`~mmgt.data.pats.importer`: the resumable, parallel import (cut, crop, audio, pose, atomic clips);
* :mod:`~mmgt.data.pats.h5`: PATS' own processed h5 features instead of videos (stage 1 only);
* :mod:`~mmgt.data.pats.download`: optional yt-dlp helper for the source videos.

The media code they use (cuts, crops, audio, the clip store, the skip log) is dataset-neutral:
:mod:`mmgt.data.media` and :mod:`mmgt.data.importing`.
"""

from mmgt.data.importing import DONE, SKIPPED_CSV, normalise_split, person_fraction
from mmgt.data.media import VIDEO_EXTS, CutVideo, crop_offset, cut_audio, cut_video, window_spans
from mmgt.data.pats.importer import IntervalResult, PatsReport, prepare_pats, prepare_task, process_interval, run_pats
from mmgt.data.pats.intervals import (
    REQUIRED_COLUMNS,
    Interval,
    VideoIndex,
    load_split_file,
    parse_time,
    read_intervals,
    video_ids,
)
from mmgt.data.pats.settings import SKIP_REASONS, STATE_DIR, SUBSET_CROP, SUBSET_SPEAKERS, PatsConfigError, PatsSettings

__all__ = [
    "DONE", "REQUIRED_COLUMNS", "SKIPPED_CSV", "SKIP_REASONS", "STATE_DIR", "SUBSET_CROP", "SUBSET_SPEAKERS",
    "VIDEO_EXTS", "CutVideo", "Interval", "IntervalResult", "PatsConfigError", "PatsReport", "PatsSettings",
    "VideoIndex", "crop_offset", "cut_audio", "cut_video", "load_split_file", "normalise_split", "parse_time",
    "person_fraction", "prepare_pats", "prepare_task", "process_interval", "read_intervals", "run_pats", "video_ids",
    "window_spans",
]
