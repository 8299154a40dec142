"""The ``generate`` task: the ``python -m mmgt.generate`` config (``conf/generate.yaml``) turned into pipeline calls.

Three modes: one video from ``image`` + ``audio`` (+ ``keypoints``, or the ``estimator``: by default DWPose when its
files are at the configured paths), one corpus clip (``clip_id``), or every clip of a ``split`` (videos at the top of
``out``, pose/panel videos in subfolders, so ``python -m mmgt.evaluate`` pairs only the videos by name). The sampling
options are built once from the ``smga`` / ``video`` blocks (:meth:`~mmgt.generation.options.Sampling.from_config`).
Every input is decoded and checked before any network is loaded (:func:`check_inputs`: the image, the speech, the
initial pose; output folders written to once), so a bad file is one line within seconds; every generated video is
appended to ``generation.json`` in the run folder.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

import mmgt.generation.inputs as io
from mmgt.errors import GenerationError
from mmgt.generation.options import Sampling
from mmgt.generation.outputs import GenerationResult, check_writable, encoding_options
from mmgt.generation.pipeline import GesturePipeline

FLAGS = ("pose_video", "side_by_side", "save_keypoints", "progress")  # boolean keys of conf/generate.yaml


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
    image: np.ndarray | None = None  # decoded by check_inputs (None: the clip's frame 0)
    audio: np.ndarray | None = None  # decoded by check_inputs (None: the clip's audio)


def flags(c: Mapping[str, Any]) -> dict[str, bool]:
    """The boolean keys, strictly: ``side_by_side=ture`` is refused naming the key, not read as true."""
    from mmgt.utils.cli import strict_bool

    try:
        return {k: strict_bool(c.get(k), k) for k in FLAGS}
    except ValueError as err:
        raise GenerationError(str(err)) from None


def check_inputs(c: Mapping[str, Any], root: str | None) -> dict[str, Any]:
    """Decode and check the inputs of an image/audio or clip run before any network loads; returns them decoded
    (``image``, ``audio``, ``keypoints``: the initial pose, ``estimator``: None once it has run) for the pipeline.
    Split runs read each clip when it comes (the corpus is checked by ``mmgt.prepare task=validate``)."""
    min_peak = float(c.get("min_peak", 1e-4))
    if c.get("split"):
        return {}
    if not c.get("clip_id"):
        src = io.read_inputs(c["image"], c["audio"], c.get("keypoints"), c.get("estimator"), min_peak)
        return {"image": src.image, "audio": src.speech, "keypoints": src.pose, "estimator": None}
    clip = io.clip_inputs(root, c["clip_id"], frame0=not c.get("image"))
    audio = io.load_speech(c.get("audio") or clip.audio, min_peak)
    out: dict[str, Any] = {"audio": audio if c.get("audio") else None}
    if c.get("image"):
        if c.get("keypoints") is None and io.resolve_estimator(c.get("estimator")) is None:
            raise GenerationError(f"{io.no_pose_message(c.get('estimator'))} (image= replaces the frame of "
                                  f"clip_id={c['clip_id']}, so its pose must be given too)")
        image = io.read_image(c["image"])
        pose = io.initial_pose(image, c.get("keypoints"), c.get("estimator"), str(c["image"]))
        out.update(image=image, keypoints=pose, estimator=None)
    return out


def plan(c: Mapping[str, Any]) -> Plan:
    """The jobs of a (plain) config, its sampling options and input checks that need no network."""
    s, v = c.get("smga") or {}, c.get("video") or {}
    if not s.get("ckpt") or not v.get("ckpt"):
        raise GenerationError("set smga.ckpt=<stage-1 checkpoint> and video.ckpt=<stage-2 checkpoint> (.ckpt, run "
                              "folder or .safetensors export)")
    for block, blk in (("smga", s), ("video", v)):
        if not Path(str(blk["ckpt"])).expanduser().exists():
            raise GenerationError(f"{block}.ckpt={blk['ckpt']}: no such checkpoint file or run folder")
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
    f = flags(c)
    decoded = check_inputs(c, root)
    folders = {out_dir: "hydra.run.dir", **{j.out.parent: "out" for j in jobs}}
    for job in jobs:
        for key in ("pose_video", "side_by_side"):
            if f[key] and isinstance(getattr(job, key), Path):
                folders.setdefault(getattr(job, key).parent, "out")
    if c.get("reference_dir"):
        folders[Path(c["reference_dir"])] = "reference_dir"
    for folder, key in folders.items():
        check_writable(folder, key)
    options = dict(save_keypoints=f["save_keypoints"], seed=int(c.get("seed") or 0),
                   encoding=encoding_options(c.get("encoding")),
                   min_peak=float(c.get("min_peak", 1e-4)), keypoints=decoded.get("keypoints", c.get("keypoints")),
                   estimator=decoded.get("estimator", c.get("estimator")))
    return Plan(jobs, root, sampling, out_dir, options, decoded.get("image"), decoded.get("audio"))


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
    f = flags(c)
    pipe = GesturePipeline.from_checkpoints(
        s["ckpt"], v["ckpt"], smga_net=s.get("net"), video_net=v.get("net"), stage1_features=s.get("features"),
        stage2_features=v.get("features"), device=resolve_device(c.get("device")), progress=f["progress"])
    image = p.image if p.image is not None else c.get("image")
    audio = p.audio if p.audio is not None else c.get("audio")
    results = []
    for job in p.jobs:
        extras = {k: getattr(job, k) if f[k] else False for k in ("pose_video", "side_by_side")}
        if job.clip_id:
            res = pipe.generate_clip(p.root, job.clip_id, job.out, image=image, audio=audio,
                                     reference_dir=c.get("reference_dir"), sampling=p.sampling, **p.options,
                                     **extras)
        else:
            res = pipe.generate(image, audio, job.out, sampling=p.sampling, **p.options, **extras)
        results.append(res)
        append_report(p.out_dir / "generation.json", res)
        echo(f"{res.video}: {res.n_frames} frames ({res.audio_seconds:.2f} s of audio), "
             f"{res.frames_per_second:.1f} frames/s" + "".join(f", {q}" for q in (res.pose_video, res.side_by_side)
                                                               if q))
    return results


__all__ = ["FLAGS", "Job", "Plan", "append_report", "check_inputs", "flags", "plan", "resolve_device", "run"]
