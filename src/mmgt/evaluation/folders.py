"""Mode (a) of ``python -m mmgt.evaluate generated=<dir> reference=<dir>``: the metric suite over two folders of mp4s.

Videos are matched by file name. Differences are handled explicitly and reported: different frame counts are
truncated to the shorter video, a generated video of another size is resized (bilinear, antialiased) to the
reference size, and names present in only one folder are listed and fail the run unless ``allow_missing=true``.
Audio for the sync monitor: the generated mp4's track, else ``<name>.wav`` beside it, else the reference's; mouth
location: ``<name><keypoints_ext>`` keypoints beside the reference or generated video. The suite's protocol card
(what each number is, weight files and checksums, clip counts) goes into ``metrics.json`` and TensorBoard.

``baselines`` are scored beside the generated videos by the same suite, against the same ground truth:
``copy_reference`` (the reference's first frame repeated: a generator must beat it to have followed the motion) and
``ground_truth`` (the reference itself: e.g. its own sync score). They are printed as columns of the table and
stored under ``baselines`` in ``metrics.json``.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from omegaconf import DictConfig, OmegaConf

from mmgt.data.video_io import HOP
from mmgt.evaluation.reports import print_table, write_per_video, write_reports

if TYPE_CHECKING:
    import torch

log = logging.getLogger("mmgt.evaluate")


@dataclass
class Pairing:
    pairs: list[tuple[str, Path, Path]] = field(default_factory=list)
    only_generated: list[str] = field(default_factory=list)
    only_reference: list[str] = field(default_factory=list)


def match_folders(generated: str | Path, reference: str | Path) -> Pairing:
    """Pair ``*.mp4`` files of two folders by stem (sorted)."""
    gdir, rdir = Path(generated), Path(reference)
    for d, key in ((gdir, "generated"), (rdir, "reference")):
        if not d.is_dir():
            raise FileNotFoundError(f"`{key}={d}` is not a folder")
    gen = {p.stem: p for p in sorted(gdir.glob("*.mp4"))}
    ref = {p.stem: p for p in sorted(rdir.glob("*.mp4"))}
    return Pairing(pairs=[(s, gen[s], ref[s]) for s in sorted(gen.keys() & ref.keys())],
                   only_generated=sorted(gen.keys() - ref.keys()), only_reference=sorted(ref.keys() - gen.keys()))


def find_audio(name: str, gen: Path, ref: Path) -> tuple[np.ndarray | None, str]:
    """16 kHz mono audio for a pair: generated mp4, <name>.wav beside it, then the reference's mp4 / wav."""
    from mmgt.data.video_io import probe_video, read_audio

    candidates = ((gen, True), (gen.with_suffix(".wav"), False), (ref, True), (ref.with_suffix(".wav"), False))
    for path, is_video in candidates:
        if not path.exists() or (is_video and not probe_video(path).has_audio):
            continue
        return read_audio(path, sample_rate=16000), str(path)
    return None, ""


def find_keypoints(name: str, gen: Path, ref: Path, ext: str) -> np.ndarray | None:
    for path in (ref.with_suffix(ext), gen.with_suffix(ext)):
        if path.exists():
            return np.load(path).astype(np.float32)
    return None


def load_pair(name: str, gen: Path, ref: Path, ext: str, notes: list[str]):
    """Tensors (1,T,3,H,W) uint8 of both videos, aligned audio (1,T*640) or None, keypoints (1,T,134,3) or None."""
    import torch

    from mmgt.data.video_io import probe_video, read_video
    from mmgt.metrics.video import resize_video

    g, r = read_video(gen), read_video(ref)
    for path in (gen, ref):
        fps = probe_video(path).fps
        if abs(fps - 25.0) > 0.01:
            notes.append(f"{name}: {path} is {fps:g} fps; the protocol assumes 25 fps (SyncNet windows, FVD clips)")
    if len(g) != len(r):
        notes.append(f"{name}: {len(g)} generated vs {len(r)} reference frames: truncated to {min(len(g), len(r))}")
    t = min(len(g), len(r))
    gt = torch.from_numpy(g[:t]).permute(0, 3, 1, 2)[None]
    rt = torch.from_numpy(r[:t]).permute(0, 3, 1, 2)[None]
    if gt.shape[-2:] != rt.shape[-2:]:
        notes.append(f"{name}: generated {tuple(gt.shape[-2:])} resized to the reference size {tuple(rt.shape[-2:])}")
        gt = resize_video(gt, tuple(rt.shape[-2:]))
    audio, _ = find_audio(name, gen, ref)
    if audio is not None:
        need = t * HOP
        audio = np.pad(audio[:need], (0, max(0, need - len(audio))))[None]
    else:
        notes.append(f"{name}: no audio (mp4 track or .wav): the sync monitor skipped for this pair")
    kp = find_keypoints(name, gen, ref, ext)
    if kp is not None:
        if len(kp) < t:
            notes.append(f"{name}: keypoints cover {len(kp)} of {t} frames: last pose repeated")
            kp = np.concatenate([kp, np.repeat(kp[-1:], t - len(kp), 0)])
        kp = kp[:t][None]
    return gt, rt, audio, kp


def copy_reference(reference: torch.Tensor) -> torch.Tensor:
    """(B, T, 3, H, W) -> the first frame repeated: what a generator that ignores pose and audio would give."""
    return reference[:, :1].expand_as(reference).contiguous()


BASELINES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    # scored like a generated video, against the same ground truth (the yardsticks a number needs)
    "copy_reference": copy_reference,  # repeat frame 0: beating it means the motion was followed
    "ground_truth": lambda reference: reference,  # the ground truth itself: its own sync / FVD floor
}


def evaluate_folders(cfg: DictConfig) -> int:
    """Mode (a). Returns the process exit code."""
    import torch
    from tqdm import tqdm

    from mmgt.metrics import MetricSuite, build_suite

    pairing = match_folders(cfg.generated, cfg.reference)
    if pairing.only_generated or pairing.only_reference:
        msg = (f"unmatched videos — only in generated: {pairing.only_generated or '-'}; "
               f"only in reference: {pairing.only_reference or '-'}")
        if not cfg.allow_missing:
            log.error("%s (set allow_missing=true to evaluate the matched pairs only)", msg)
            return 1
        log.warning(msg)
    if not pairing.pairs:
        log.error("no matching *.mp4 names in %s and %s", cfg.generated, cfg.reference)
        return 1
    device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available()
                          else "cpu" if cfg.device == "auto" else cfg.device)
    suite = build_suite(cfg.metrics, MetricSuite).to(device)
    wanted = list(cfg.get("baselines") or [])
    unknown = [b for b in wanted if b not in BASELINES]
    if unknown:
        raise ValueError(f"evaluate.baselines: unknown {unknown}; known: {list(BASELINES)}")
    # copies of the fresh suite: its networks are read and checksummed once, not once per baseline
    baselines = {b: copy.deepcopy(suite) for b in wanted}
    notes: list[str] = []
    rows: list[dict] = []
    for name, gen, ref in tqdm(pairing.pairs, desc="evaluate", unit="video"):
        before = len(notes)
        g, r, audio, kp = load_pair(name, gen, ref, cfg.keypoints_ext, notes)
        for note in notes[before:]:
            log.warning(note)
        suite.update(g.to(device), r.to(device), audio=audio, keypoints=kp)
        rows.append({"video": name, "frames": g.shape[1],
                     **{k: v[0] for k, v in suite.last_per_clip().items() if v}})
        for b, base in baselines.items():
            base.update(BASELINES[b](r).to(device), r.to(device), audio=audio, keypoints=kp)
    metrics = suite.compute()
    base_metrics = {b: base.compute() for b, base in baselines.items()}
    out_dir = Path(cfg.paths.output_dir)
    info = {"pairs": [p[0] for p in pairing.pairs], "only_generated": pairing.only_generated,
            "only_reference": pairing.only_reference, "notes": notes, "generated": str(cfg.generated),
            "reference": str(cfg.reference), "metrics_config": OmegaConf.to_container(cfg.metrics, resolve=True),
            "baselines": {b: {k: (v if math.isfinite(v) else None) for k, v in m.items()}
                          for b, m in base_metrics.items()}}
    write_reports(out_dir, metrics, info, bool(cfg.tensorboard), protocol=suite.last_card)
    write_per_video(out_dir / "per_video.csv", rows)
    print_table(metrics, len(pairing.pairs), base_metrics)
    log.info("wrote %s and %s", out_dir / "metrics.json", out_dir / "metrics.csv")
    return 0


__all__ = ["Pairing", "evaluate_folders", "find_audio", "find_keypoints", "load_pair", "match_folders"]
