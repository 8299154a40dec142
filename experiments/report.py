"""Ablation report: final metrics of every run of a Hydra multirun folder as Markdown, CSV and a bar plot.

    python experiments/report.py outputs/train/multiruns/<time> [--metrics val/fgd_randproj val/l2_face] [--out DIR]

Each job folder of the sweep (``<sweep>/<n>/``) holds ``.hydra/overrides.yaml`` (the overrides that define
the variant) and ``tensorboard/`` events; the report takes the value of each scalar at its last logged step.
``--metrics`` takes the logged tags as they are (names carry their protocol: ``val/fgd_randproj``,
``test/fvd_videogpt``); a tag no run logged is reported on stderr with the closest logged tags.
"""

from __future__ import annotations

import argparse
import csv
import difflib
import math
import sys
from pathlib import Path

import yaml


def find_runs(sweep_dir: Path) -> list[Path]:
    """Job folders of a multirun (those with Hydra's overrides file), in job order."""
    runs = [p.parent.parent for p in sweep_dir.glob("**/.hydra/overrides.yaml")]
    return sorted(runs, key=lambda p: (len(p.parts), int(p.name) if p.name.isdigit() else 0, str(p)))


def final_scalars(run_dir: Path) -> dict[str, float]:
    """The last value of every scalar tag in the run's TensorBoard events (all event files merged)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, tuple[int, float]] = {}
    for events in sorted(run_dir.glob("**/events.out.tfevents.*")):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags().get("scalars", []):
            last = acc.Scalars(tag)[-1]
            if tag not in out or last.step >= out[tag][0]:
                out[tag] = (last.step, float(last.value))
    return {tag: value for tag, (_, value) in out.items()}


def variant_name(overrides: list[str], common: set[str]) -> str:
    """Overrides that differ between jobs (the ones shared by all jobs say nothing about the variant)."""
    own = [o for o in overrides if o not in common]
    return " ".join(own) if own else "(base)"


def collect(sweep_dir: Path, metrics: list[str] | None = None) -> tuple[list[dict[str, object]], list[str]]:
    """One row per job: job, variant, overrides and the chosen metrics (default: every val/ and test/ scalar)."""
    runs = find_runs(sweep_dir)
    if not runs:
        raise FileNotFoundError(f"{sweep_dir}: no Hydra job folders (.hydra/overrides.yaml) found")
    overrides = {r: yaml.safe_load((r / ".hydra" / "overrides.yaml").read_text()) or [] for r in runs}
    common = set.intersection(*(set(o) for o in overrides.values())) if len(runs) > 1 else set()
    scalars = {r: final_scalars(r) for r in runs}
    logged = sorted({t for s in scalars.values() for t in s})
    if metrics is None:
        metrics = [t for t in logged if t.startswith(("val/", "test/"))]
    for m in metrics:
        if m not in logged:
            near = difflib.get_close_matches(m, logged, n=3, cutoff=0.5) or [t for t in logged if t.startswith(m)]
            print(f"warning: no run logged `{m}`" + (f" (logged: {', '.join(near)})" if near else ""),
                  file=sys.stderr)
    rows = []
    for r in runs:
        row: dict[str, object] = {"job": str(r.relative_to(sweep_dir)), "variant": variant_name(overrides[r], common),
                                  "overrides": " ".join(overrides[r])}
        row.update({m: scalars[r].get(m, math.nan) for m in metrics})
        rows.append(row)
    return rows, metrics


def _fmt(v: object) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def write_report(rows: list[dict[str, object]], metrics: list[str], out_dir: Path, title: str) -> dict[str, Path]:
    """report.md, report.csv and report.png in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"md": out_dir / "report.md", "csv": out_dir / "report.csv", "png": out_dir / "report.png"}
    cols = ["job", "variant", *metrics]
    lines = [f"# {title}", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt(r[c]) for c in cols) + " |" for r in rows]
    paths["md"].write_text("\n".join(lines) + "\n")
    with paths["csv"].open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["job", "variant", "overrides", *metrics])
        writer.writeheader()
        writer.writerows(rows)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = max(1, len(metrics))
    fig, axes = plt.subplots(1, n, figsize=(max(4, 3.2 * n), 3.6), squeeze=False)
    labels = [str(r["variant"]).replace(" ", "\n") for r in rows]
    for ax, m in zip(axes[0], metrics or ["(no metrics)"], strict=False):
        values = [float(r.get(m, math.nan)) for r in rows]
        ax.bar(range(len(rows)), values, color=plt.cm.tab10.colors[: len(rows)] if len(rows) <= 10 else None)
        ax.set_xticks(range(len(rows)), labels, fontsize=6)
        ax.set_title(m, fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(paths["png"], dpi=120)
    plt.close(fig)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path, help="a Hydra multirun folder (hydra.sweep.dir)")
    parser.add_argument("--metrics", nargs="*", default=None, help="scalar tags (default: all val/ and test/ tags)")
    parser.add_argument("--out", type=Path, default=None, help="where to write report.* (default: the sweep folder)")
    parser.add_argument("--title", default=None)
    args = parser.parse_args(argv)
    try:
        rows, metrics = collect(args.sweep_dir, args.metrics)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    paths = write_report(rows, metrics, args.out or args.sweep_dir, args.title or f"Ablation: {args.sweep_dir.name}")
    print(paths["md"].read_text())
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
