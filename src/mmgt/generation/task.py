"""The ``generate`` task: the ``python -m mmgt.generate`` config (``conf/generate.yaml``) turned into pipeline calls.

Three modes: one video from ``image`` + ``audio`` (+ ``keypoints`` or an ``estimator``), one corpus clip
(``clip_id``), or every clip of a ``split`` (videos at the top of ``out``, pose/panel videos in subfolders, so
``python -m mmgt.evaluate`` pairs only the videos by name). The sampling options are built once from the ``smga`` /
``video`` blocks (:meth:`~mmgt.generation.options.Sampling.from_config`); cheap input checks run before any network
is loaded, and every generated video is appended to ``generation.json`` in the run folder.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mmgt.errors import GenerationError
from mmgt.generation.options import Sampling
from mmgt.generation.outputs import GenerationResult
from mmgt.generation.pipeline import GesturePipeline


def resolve_device(name: str | None) -> torch.device:
    """``auto`` (or None): CUDA when available, else the CPU."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(str(name))


@dataclass
class Job:
    """One video to generate: a corpus clip or the configured image + audio, and where its files go."""

    out: Path
    clip_id: str | None = None
    pose_video: Path | bool = True  # True: beside the video
    side_by_side: Path | bool = True


@dataclass
class Plan:
    """What one run generates (the jobs) and with what (corpus root, sampling options, common keywords)."""

    jobs: list[Job]
    root: str | None
    sampling: Sampling
    out_dir: Path
    options: dict[str, Any] = field(default_factory=dict)  # other generate() keywords common to every job


def plan(c: Mapping[str, Any]) -> Plan:
    """The jobs of a (plain) config, its sampling options and input checks that need no network."""
    s, v = c.get("smga") or {}, c.get("video") or {}
    if not s.get("ckpt") or not v.get("ckpt"):
        raise GenerationError("set smga.ckpt=<stage-1 checkpoint> and video.ckpt=<stage-2 checkpoint> (.ckpt, run "
                              "folder or .safetensors export)")
    sampling = Sampling.from_config(c)
    out_dir = Path(c.get("output_dir") or ".")
    root = (c.get("data") or {}).get("root")
    if c.get("split"):
        from mmgt.data.corpus import Corpus, CorpusError

        try:
            records = Corpus(root).split(c["split"])
        except CorpusError as err:
            raise GenerationError(f"split={c['split']}: {err}") from err
        if not records:
            raise GenerationError(f"split={c['split']}: no clips of that split in {root}")
        records = records[: c["limit"]] if c.get("limit") else records
        folder = Path(c.get("out") or out_dir / "videos")
        # pose/panel videos go to subfolders: the top level holds only the videos `mmgt.evaluate` pairs by name
        jobs = [Job(folder / f"{r.clip_id}.mp4", r.clip_id, folder / "pose" / f"{r.clip_id}_pose.mp4",
                    folder / "panel" / f"{r.clip_id}_panel.mp4") for r in records]
    else:
        if not c.get("clip_id") and not (c.get("image") and c.get("audio")):
            raise GenerationError("give image=<still image> and audio=<speech file> (plus keypoints= or an "
                                  "estimator), or clip_id=<corpus clip> with data.root, or split=<name>")
        stem = Path(c.get("audio") or c.get("clip_id")).stem
        jobs = [Job(Path(c.get("out") or out_dir / f"{stem}.mp4"), c.get("clip_id"))]
    for path_key in ("image", "audio", "keypoints"):
        if c.get(path_key) and not Path(c[path_key]).expanduser().is_file():
            raise GenerationError(f"{path_key} file not found: {c[path_key]} (config key `{path_key}`)")
    options = dict(save_keypoints=bool(c.get("save_keypoints")), seed=int(c.get("seed") or 0),
                   min_peak=float(c.get("min_peak", 1e-4)), keypoints=c.get("keypoints"),
                   estimator=c.get("estimator"))
    return Plan(jobs, root, sampling, out_dir, options)


def append_report(path: Path, res: GenerationResult) -> None:
    """One JSON list per run folder: what was generated and how fast (read by the quickstart summary)."""
    from mmgt.data.video_io import atomic_path

    rows = json.loads(path.read_text()) if path.exists() else []
    rows.append({"video": str(res.video), "n_frames": res.n_frames, "audio_seconds": res.audio_seconds,
                 "frames_per_second": res.frames_per_second, "seconds": res.seconds,
                 "pose_video": str(res.pose_video) if res.pose_video else None,
                 "side_by_side": str(res.side_by_side) if res.side_by_side else None})
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(rows, indent=2))


def run(cfg: Any, echo: Callable[[str], None] = print) -> list[GenerationResult]:
    """``python -m mmgt.generate``: one video (``image``/``audio``/``clip_id``) or every clip of ``split``."""
    from mmgt.utils.config import to_plain

    c = to_plain(cfg)
    p = plan(c)
    s, v = c["smga"], c["video"]
    pipe = GesturePipeline.from_checkpoints(
        s["ckpt"], v["ckpt"], smga_net=s.get("net"), video_net=v.get("net"), stage1_features=s.get("features"),
        stage2_features=v.get("features"), device=resolve_device(c.get("device")), progress=bool(c.get("progress")))
    results = []
    for job in p.jobs:
        extras = {k: getattr(job, k) if c.get(k) else False for k in ("pose_video", "side_by_side")}
        if job.clip_id:
            res = pipe.generate_clip(p.root, job.clip_id, job.out, image=c.get("image"), audio=c.get("audio"),
                                     reference_dir=c.get("reference_dir"), sampling=p.sampling, **p.options,
                                     **extras)
        else:
            res = pipe.generate(c["image"], c["audio"], job.out, sampling=p.sampling, **p.options, **extras)
        results.append(res)
        append_report(p.out_dir / "generation.json", res)
        echo(f"{res.video}: {res.n_frames} frames ({res.audio_seconds:.2f} s of audio), "
             f"{res.frames_per_second:.1f} frames/s" + "".join(f", {q}" for q in (res.pose_video, res.side_by_side)
                                                               if q))
    return results


__all__ = ["Job", "Plan", "append_report", "plan", "resolve_device", "run"]
