"""``python -m mmgt.evaluate generated=<dir> reference=<dir>``: the metric suite over two folders of mp4s.

Videos are matched by file name. Differences are handled explicitly and reported: different frame counts are
truncated to the shorter video, a generated video of another size is resized (bilinear, antialiased) to the
reference size, and names present in only one folder are listed and fail the run unless ``allow_missing=true``.
Results: a table on stdout, ``metrics.json``, ``metrics.csv`` and ``per_video.csv`` in the run folder,
TensorBoard scalars under ``eval/``.

Mode (b), ``python -m mmgt.evaluate ckpt_path=<stage-2 .ckpt or run folder> split=test``: the checkpoint's own
DataModule settings (recorded in the checkpoint; ``data_root`` may point elsewhere) serve the split, the video
module generates every window with its recorded sampling settings and the same suite scores them (the module's
test loop, so the numbers are those a training run logs under ``test/``).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import hydra
import numpy as np
from omegaconf import DictConfig, OmegaConf

from mmgt.data.video_io import HOP
from mmgt.utils.paths import CONF_DIR

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
            notes.append(f"{name}: {path} is {fps:g} fps; the protocol assumes 25 fps (Sync-C/D windows)")
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
        notes.append(f"{name}: no audio (mp4 track or .wav): Sync-C/D skipped for this pair")
    kp = find_keypoints(name, gen, ref, ext)
    if kp is not None:
        if len(kp) < t:
            notes.append(f"{name}: keypoints cover {len(kp)} of {t} frames: last pose repeated")
            kp = np.concatenate([kp, np.repeat(kp[-1:], t - len(kp), 0)])
        kp = kp[:t][None]
    return gt, rt, audio, kp


def write_reports(out_dir: Path, metrics: dict[str, float], info: dict, tensorboard: bool) -> None:
    from mmgt.data.video_io import atomic_path

    clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()}
    with atomic_path(out_dir / "metrics.json") as tmp:
        tmp.write_text(json.dumps({"metrics": clean, **info}, indent=2))
    with atomic_path(out_dir / "metrics.csv") as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["metric", "value"])
        for k, v in metrics.items():
            w.writerow([k, v])
    if tensorboard:
        from torch.utils.tensorboard import SummaryWriter

        with SummaryWriter(str(out_dir / "tensorboard")) as writer:
            for k, v in metrics.items():
                if math.isfinite(v):
                    writer.add_scalar(f"eval/{k}", v, 0)
            writer.add_text("eval/pairs", ", ".join(info.get("pairs", [])), 0)


def write_per_video(path: Path, rows: list[dict]) -> None:
    """One row per video pair: frames and the per-video metrics (FVD is a set-level metric: not here)."""
    from mmgt.data.video_io import atomic_path

    columns = list(dict.fromkeys(k for row in rows for k in row))
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        w.writerows(rows)


def print_table(metrics: dict[str, float], n_pairs: int) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"mmgt.evaluate — {n_pairs} video pairs")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in metrics.items():
        text = str(v) if not math.isfinite(v) else f"{int(v)}" if "_num_" in k else f"{v:.4f}"
        table.add_row(k, text)
    Console().print(table)


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
    metrics = suite.compute()
    out_dir = Path(cfg.paths.output_dir)
    info = {"pairs": [p[0] for p in pairing.pairs], "only_generated": pairing.only_generated,
            "only_reference": pairing.only_reference, "notes": notes, "generated": str(cfg.generated),
            "reference": str(cfg.reference), "metrics_config": OmegaConf.to_container(cfg.metrics, resolve=True)}
    write_reports(out_dir, metrics, info, bool(cfg.tensorboard))
    write_per_video(out_dir / "per_video.csv", rows)
    print_table(metrics, len(pairing.pairs))
    log.info("wrote %s and %s", out_dir / "metrics.json", out_dir / "metrics.csv")
    return 0


def evaluate_checkpoint(cfg: DictConfig) -> int:
    """Mode (b): a stage-2 checkpoint scored on a split of its DataModule. Returns the process exit code."""
    import lightning as L
    import torch
    from lightning.pytorch.loggers import TensorBoardLogger

    from mmgt import checkpoints
    from mmgt.data.datamodule import PATSDataModule
    from mmgt.errors import CheckpointError

    try:
        ckpt = checkpoints.read(cfg.ckpt_path, "ckpt_path")
        if ckpt.kind != "video" or ckpt.format != "ckpt":
            raise CheckpointError(f"{ckpt.path} is {ckpt.describe()} ({ckpt.format}); mode (b) needs a stage-2 "
                                  "Lightning checkpoint written by `mmgt.train`")
        dm_hp = dict(ckpt.datamodule)
        if not dm_hp:
            raise CheckpointError(f"{ckpt.path} records no DataModule settings (not written by `mmgt.train`?)")
        checkpoints.check_stored_config(dm_hp, ckpt.path, "datamodule_hyper_parameters")
        split = str(cfg.get("split") or "test")
        if split not in ("val", "test"):
            raise ValueError(f"split={split}: expected val or test")
        validation = {**(ckpt.hparams.get("validation") or {}), "log_media": False,
                      "max_batches": int(cfg.max_batches) if cfg.get("max_batches") else 10**9}
        # the metric suite comes from this command's config (trusted), never from the file
        ckpt.hparams.update(validation=validation, metrics=OmegaConf.to_container(cfg.metrics, resolve=True))
        model = checkpoints.build_module(ckpt, "video", key="ckpt_path")
    except (CheckpointError, ValueError) as err:
        log.error("%s", err)
        return 1
    path = ckpt.path
    del ckpt
    if cfg.get("data_root"):
        dm_hp["root"] = str(cfg.data_root)
    dm = PATSDataModule(**{**dm_hp, "progress": bool(cfg.get("progress", True))})
    out_dir = Path(cfg.paths.output_dir)
    accel = "gpu" if cfg.device in ("auto", "cuda") and torch.cuda.is_available() else "cpu"
    logger = TensorBoardLogger(str(out_dir), name="tensorboard", version="") if cfg.tensorboard else False
    trainer = L.Trainer(accelerator=accel, devices=1, logger=logger, enable_checkpointing=False,
                        enable_model_summary=False)
    run = trainer.test if split == "test" else trainer.validate
    (results,) = run(model, datamodule=dm, verbose=False)
    prefix = f"{split}/"
    metrics = {k[len(prefix):]: float(v) for k, v in results.items() if k.startswith(prefix) and k != f"{split}/loss"}
    n = len(dm.datasets[split]) if split in getattr(dm, "datasets", {}) else 0
    if cfg.get("max_batches"):  # windows actually generated and scored
        n = min(n, int(cfg.max_batches) * int(dm_hp.get("val_batch_size") or dm_hp.get("batch_size") or 1))
    info = {"checkpoint": str(path), "split": split, "windows": n, "data_root": dm_hp.get("root"),
            "metrics_config": OmegaConf.to_container(cfg.metrics, resolve=True)}
    write_reports(out_dir, metrics, info, tensorboard=False)
    print_table(metrics, n)
    log.info("wrote %s and %s", out_dir / "metrics.json", out_dir / "metrics.csv")
    return 0


@hydra.main(config_path=CONF_DIR, config_name="evaluate", version_base="1.3")
def main(cfg: DictConfig) -> None:
    if cfg.get("ckpt_path"):
        code = evaluate_checkpoint(cfg)
        if code:
            sys.exit(code)
        return
    if not (cfg.get("generated") and cfg.get("reference")):
        sys.exit("mmgt.evaluate: set generated=<folder of mp4s> and reference=<folder of mp4s>")
    code = evaluate_folders(cfg)
    if code:
        sys.exit(code)


if __name__ == "__main__":
    main()
