"""Evaluation reports: ``metrics.json`` + ``metrics.csv`` (+ ``per_video.csv``, TensorBoard scalars under ``eval/``)
in the run folder, each written atomically, and a table on stdout.

Every report carries the suite's protocol card (:meth:`mmgt.metrics.Suite.protocol_card`): per metric its name,
variant, weight file and sha256 (with ``published`` / ``user-declared`` / ``unverified`` / ``random-init``), the
numbers of clips/frames scored and skipped, and the resolution: in ``metrics.json`` under ``protocol`` and in
TensorBoard as hparams (flattened ``<metric>/<field>``, the metrics as the hparams' metrics), so a number is never
read without what it is.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any


def flat_card(card: dict[str, dict[str, Any]]) -> dict[str, str | int | float | bool]:
    """A protocol card as TensorBoard hparams: ``{"<key>/<field>": scalar}`` (lists and None as text)."""
    out: dict[str, str | int | float | bool] = {}
    for key, fields in card.items():
        for name, value in fields.items():
            if isinstance(value, bool | int | float | str):
                out[f"{key}/{name}"] = value
            else:
                out[f"{key}/{name}"] = json.dumps(value)
    return out


def write_reports(out_dir: Path, metrics: dict[str, float], info: dict[str, Any], tensorboard: bool,
                  protocol: dict[str, dict[str, Any]] | None = None, tb_scalars: bool = True) -> None:
    """``metrics.json`` (metrics, ``protocol`` card and ``info``; non-finite values as null), ``metrics.csv``,
    TensorBoard scalars (``tb_scalars``; off when a Lightning logger wrote them) and the card as hparams."""
    from mmgt.data.video_io import atomic_path

    clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()}
    with atomic_path(out_dir / "metrics.json") as tmp:
        tmp.write_text(json.dumps({"metrics": clean, "protocol": protocol or {}, **info}, indent=2))
    with atomic_path(out_dir / "metrics.csv") as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["metric", "value"])
        for k, v in metrics.items():
            w.writerow([k, v])
    if tensorboard:
        from torch.utils.tensorboard import SummaryWriter

        finite = {f"eval/{k}": float(v) for k, v in metrics.items() if math.isfinite(v)}
        with SummaryWriter(str(out_dir / "tensorboard")) as writer:
            if protocol:  # the card as hparams in this run folder (run_name "."); it also writes the scalars given
                writer.add_hparams(flat_card(protocol), finite if tb_scalars else {}, run_name=".")
            elif tb_scalars:
                for k, v in finite.items():
                    writer.add_scalar(k, v, 0)
            if tb_scalars:
                writer.add_text("eval/pairs", ", ".join(info.get("pairs", [])), 0)


def write_per_video(path: Path, rows: list[dict[str, Any]]) -> None:
    """One row per video pair: frames and the per-video metrics (FVD is a set-level metric: not here)."""
    from mmgt.data.video_io import atomic_path

    columns = list(dict.fromkeys(k for row in rows for k in row))
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        w.writerows(rows)


def print_table(metrics: dict[str, float], n_pairs: int,
                baselines: dict[str, dict[str, float]] | None = None) -> None:
    """The metrics, one row each, with a column per baseline scored by the same suite (``copy_reference``,
    ``ground_truth``); a caption says when numbers come from random-init feature networks."""
    from rich.console import Console
    from rich.table import Table

    baselines = baselines or {}

    def fmt(k: str, v: float | None) -> str:
        if v is None:
            return "-"
        return str(v) if not math.isfinite(v) else f"{int(v)}" if "_num_" in k else f"{v:.4f}"

    caption = None
    if any("randinit" in k for k in metrics):
        caption = ("*_randinit: computed with random-init feature networks (no published weights): comparable only "
                   "with each other, not with published numbers")
    table = Table(title=f"mmgt.evaluate — {n_pairs} video pairs", caption=caption)
    table.add_column("metric")
    table.add_column("generated", justify="right")
    for name in baselines:
        table.add_column(name.replace("_", " "), justify="right")
    for k, v in metrics.items():
        table.add_row(k, fmt(k, v), *(fmt(k, b.get(k)) for b in baselines.values()))
    Console(width=max(100, 30 + 14 * (1 + len(baselines)))).print(table)


__all__ = ["flat_card", "print_table", "write_per_video", "write_reports"]
