"""PATS import: the intervals table (``cmu_intervals_df.csv``) + a folder of downloaded videos -> a corpus.

``python -m mmgt.prepare task=pats data.root=<out> pats.intervals_csv=<csv> pats.videos_dir=<videos>``
(settings: ``conf/pats/default.yaml``). Per interval:

1. find the source video by ``video_fn`` or by the YouTube id in ``video_link`` (see
   :class:`~mmgt.data.pats.intervals.VideoIndex`);
2. cut ``[start, end)`` exactly and resample to constant 25 fps (:func:`mmgt.data.media.cut_video`);
3. square crop of side ``min(H, W)`` with a per-speaker horizontal placement (the S2G-MDDiffusion offsets by
   default), resize to ``size`` (512), at most ``max_seconds`` (15 s);
4. audio of the same span, mono, 16 kHz (:func:`mmgt.data.media.cut_audio`); optional split into fixed windows;
5. pose estimation (:mod:`mmgt.pose.estimators`) into ``keypoints.npy``;
6. each clip is written whole or not at all (:class:`mmgt.data.importing.ClipStore`: staged, renamed into
   ``clips/<clip_id>/`` with a ``.done`` marker); the manifest is rebuilt at the end from the finished clips of the
   selected intervals.

Runs in a process pool with a progress bar, under the corpus' writer lock, starting by sweeping what killed runs
left. Resumable: an interval whose clips are all finished (with the same processing settings) is not touched again,
nor is one skipped earlier for a reason that can't change without new settings. Skipped intervals are listed in
``skipped.csv`` with their reason: ``missing video``, ``too short``, ``no person detected``, ``decode error`` (or
``missing keypoints`` for the precomputed estimator). A failed write (disk full, no permission) stops the run with
a :class:`~mmgt.data.corpus.CorpusWriteError` naming the final file; a rerun resumes.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mmgt.data.corpus import SAMPLE_RATE, ClipRecord, CorpusWriteError, write_manifest
from mmgt.data.importing import (
    SKIPPED_CSV,
    ClipStore,
    SkipItem,
    assign_val,
    normalise_split,
    person_fraction,
    write_skip_log,
)
from mmgt.data.media import cut_audio, cut_video, window_spans
from mmgt.data.pats.h5 import import_pats_h5
from mmgt.data.pats.intervals import Interval, VideoIndex, load_split_file, read_intervals
from mmgt.data.pats.settings import STATE_DIR, PatsConfigError, PatsSettings

log = logging.getLogger(__name__)

SKIP_COLUMNS = ("speaker", "interval_id", "video_fn", "video_link", "start_time", "end_time", "reason", "detail")


def clip_store(root: str | Path) -> ClipStore:
    """Where a PATS run keeps its clips and per-interval state (``<root>/.pats/intervals/<key>.json``)."""
    return ClipStore(root, state=STATE_DIR, items="intervals")


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
    """Cut, crop, estimate and write one interval (runs in a worker). Skips become a result, never an exception;
    so do unexpected errors (retried next run), except a failed write, which ends the run."""
    t_start = time.perf_counter()
    iv = Interval(**job["interval"])
    try:
        clips = _process(job, iv)
        status, reason, detail = "done", "", ""
    except SkipItem as skip:
        clips, status, reason, detail = [], "skipped", skip.reason, skip.detail
    except CorpusWriteError:
        raise  # a full disk fails every interval after it: stop, naming the file
    except Exception as err:  # noqa: BLE001 - one bad interval must not stop a 5000-interval job
        clips, status, reason, detail = [], "error", type(err).__name__, str(err)
    if status != "error":  # errors are retried next run; done/skipped are remembered
        clip_store(job["root"]).remember(iv.key, job["signature"], status, clips, reason=reason, detail=detail,
                                         interval=asdict(iv))
    return IntervalResult(iv.key, status, clips, reason, detail, time.perf_counter() - t_start)


def _process(job: dict[str, Any], iv: Interval) -> list[dict[str, Any]]:
    from mmgt.pose.estimators import CropTransform, EstimatorError, PoseContext

    fps, size = int(job["fps"]), int(job["size"])
    min_frames, max_frames, window = job["min_frames"], job["max_frames"], job["window"]
    need = max(min_frames, window[0] if window else 0)
    if (iv.end - iv.start) * fps + 1e-6 < need:
        raise SkipItem("too short", f"{iv.end - iv.start:.2f} s < {need / fps:.2f} s")
    video = Path(job["video"])
    try:
        cut = cut_video(video, iv.start, iv.end, fps, size, job["placement"], max_frames)
    except (ValueError, OSError) as err:
        raise SkipItem("decode error", str(err)) from err
    n = len(cut.frames)
    if n == 0:
        raise SkipItem("decode error", f"{video.name}: no frames in [{iv.start:.2f}, {iv.end:.2f}) s")
    if n < need:
        raise SkipItem("too short", f"the video ends after {n} frames of the interval (< {need})")
    try:
        audio = cut_audio(video, iv.start, n / fps)
    except (ValueError, OSError) as err:
        raise SkipItem("decode error", str(err)) from err
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
        raise SkipItem("missing keypoints" if "no precomputed" in str(err) else "decode error", str(err)) from err
    frac = person_fraction(kp)
    if frac < job["min_person_fraction"]:
        raise SkipItem("no person detected", f"a person in {frac:.0%} of the frames "
                                             f"(< {job['min_person_fraction']:.0%})")
    store, records = clip_store(job["root"]), []
    for k, (a, b) in enumerate(window_spans(n, window)):
        clip_id = iv.key if window is None else f"{iv.key}_w{k:03d}"
        rec = store.write(clip_id, iv.speaker, job["split"], cut.frames[a:b],
                          audio[a * SAMPLE_RATE // fps:b * SAMPLE_RATE // fps], kp[a:b], fps=fps,
                          signature=job["signature"],
                          info={"interval": iv.interval_id,
                                "source": {"video": video.name, "start": iv.start + a / fps, "fps": cut.source_fps,
                                           "size": [cut.width, cut.height], "crop": list(cut.crop)}})
        records.append(asdict(rec))
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


def _select(s: PatsSettings) -> list[tuple[Interval, str]]:
    """The intervals of this run with their corpus split (from the split file, else the CSV's ``dataset``)."""
    split_map = load_split_file(s.split_file) if s.split_file else None
    selected: list[tuple[Interval, str]] = []
    for iv in read_intervals(s.intervals_csv, s.speakers):
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
    return selected


def _run_jobs(jobs: list[dict[str, Any]], s: PatsSettings, workers: int, threads: int, desc: str
              ) -> list[IntervalResult]:
    """Every job through :func:`process_interval`, in a process pool when ``workers > 1``. A failed write cancels
    the jobs not started yet (the finished intervals are remembered, so a rerun resumes)."""
    from tqdm.auto import tqdm

    results: list[IntervalResult] = []
    bar = tqdm(total=len(jobs), desc=desc, unit="interval", disable=not s.progress or not jobs)
    try:
        if jobs and workers > 1:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor, as_completed

            with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=mp.get_context(s.mp_context),
                                     initializer=_init_worker, initargs=(dict(s.estimator), threads)) as pool:
                futures = [pool.submit(process_interval, job) for job in jobs]
                try:
                    for fut in as_completed(futures):
                        results.append(fut.result())
                        bar.update(1)
                except BaseException:
                    pool.shutdown(wait=True, cancel_futures=True)
                    raise
        else:
            for job in jobs:
                results.append(process_interval(job))
                bar.update(1)
    finally:
        bar.close()
    return results


def run_pats(settings: PatsSettings | dict[str, Any]) -> PatsReport:
    """The whole import; returns a :class:`PatsReport` (see module docstring)."""
    s = settings if isinstance(settings, PatsSettings) else PatsSettings.from_dict(dict(settings))
    root = Path(s.output_root)
    from mmgt.pose.estimators import check_estimator_config

    check_estimator_config(s.estimator)
    selected = _select(s)
    index = VideoIndex(s.videos_dir)
    report = PatsReport(selected=len(selected))
    workers = max(1, int(s.workers or os.cpu_count() or 1))
    threads = max(1, (os.cpu_count() or 1) // workers)
    store = clip_store(root)
    with store.run():
        jobs, done_markers = [], {}
        for iv, split in selected:
            sig = s.signature(iv.speaker)
            video = index.find(iv)
            if video is None:
                report.skipped.append(_skip_row(iv, "missing video",
                                                f"no {iv.video_fn or iv.video_link} under {s.videos_dir}"))
                continue
            state = store.recall(iv.key, sig) if s.resume else None
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
        ivs = {iv.key: iv for iv, _ in selected}
        for res in _run_jobs(jobs, s, workers, threads, f"PATS -> {root}"):
            iv = ivs[res.key]
            if res.status == "done":
                report.processed += 1
                done_markers[res.key] = {"clips": res.clips}
            elif res.status == "skipped":
                report.skipped.append(_skip_row(iv, res.reason, res.detail))
            else:
                report.errors.append(_skip_row(iv, "error", f"{res.reason}: {res.detail}"))
        # manifest = the finished clips of the selected intervals, with the splits of this run's split source
        records, interval_of = [], {}
        for iv, split in selected:
            for r in (done_markers.get(iv.key) or {}).get("clips", []):
                rec = ClipRecord(**{**r, "split": split})
                records.append(rec)
                interval_of[rec.clip_id] = iv.interval_id
        records = assign_val(records, interval_of, s.val_per_speaker)
        report.clips = len(records)
        report.manifest = str(write_manifest(root, records)) if records else ""
        write_skip_log(root, report.skipped + report.errors, SKIP_COLUMNS)
    return report


def prepare_pats(cfg: dict[str, Any]) -> int:
    """``cfg`` = the ``pats`` settings + ``output_root``: the import, with a printed summary.

    Exit code 0 = a manifest was written and no interval failed unexpectedly, 1 = no usable clip or some interval
    failed (listed in skipped.csv as ``error``), 2 = bad settings. A failed write raises
    :class:`~mmgt.data.corpus.CorpusWriteError` (``python -m mmgt.prepare`` prints it as one line, exit 1).
    """
    from mmgt.pose.estimators import check_estimator_config

    try:
        settings = PatsSettings.from_dict(dict(cfg))
        if settings.source == "h5":
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


def prepare_task(settings: dict[str, Any], root: Path, *, workers: int | None = None, progress: bool = True) -> int:
    """``python -m mmgt.prepare task=pats`` (the importer named in ``conf/task/pats.yaml``): ``settings`` = the
    ``pats`` config node, ``root`` = ``data.root``; the top-level ``workers`` wins over ``pats.workers``."""
    cfg = dict(settings, output_root=str(root), progress=bool(progress))
    if workers is not None:
        cfg["workers"] = int(workers)
    return prepare_pats(cfg)
