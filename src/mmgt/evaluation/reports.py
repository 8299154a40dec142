"""Evaluation reports: ``metrics.json`` + ``metrics.csv`` (+ ``per_video.csv``, TensorBoard scalars under ``eval/``)
in the run folder, each written atomically, and a table on stdout."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any


def write_reports(out_dir: Path, metrics: dict[str, float], info: dict[str, Any], tensorboard: bool) -> None:
    """``metrics.json`` (metrics + ``info``; non-finite values as null), ``metrics.csv``, TensorBoard scalars."""
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


def write_per_video(path: Path, rows: list[dict[str, Any]]) -> None:
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


__all__ = ["print_table", "write_per_video", "write_reports"]
