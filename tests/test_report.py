"""experiments/report.py: reads the TensorBoard runs of a multirun folder into a table and a plot."""

from __future__ import annotations

import csv
import importlib.util
import math
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def _report_module():
    spec = importlib.util.spec_from_file_location("report", REPO / "experiments" / "report.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _fake_sweep(root: Path) -> None:
    from torch.utils.tensorboard import SummaryWriter

    variants = [("loss=smga", "mask=boxes"), ("loss=smga", "mask=union"), ("loss=smga_no_face", "mask=boxes")]
    for job, (a, b) in enumerate(variants):
        run = root / str(job)
        (run / ".hydra").mkdir(parents=True)
        (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(["experiment=quickstart_smga", a, b]))
        w = SummaryWriter(run / "tensorboard")
        for step in (1, 5, 9):
            w.add_scalar("val/fgd_randproj", 10.0 * job + step, step)  # the logged key, as stage 1 logs it
            w.add_scalar("train/loss", 1.0 / step, step)
        w.close()


def test_report_table_and_plot(tmp_path: Path) -> None:
    report = _report_module()
    _fake_sweep(tmp_path)
    rows, metrics = report.collect(tmp_path)
    assert metrics == ["val/fgd_randproj"]  # train/ scalars are not results
    assert [r["variant"] for r in rows] == ["loss=smga mask=boxes", "loss=smga mask=union",
                                            "loss=smga_no_face mask=boxes"]
    assert [r["val/fgd_randproj"] for r in rows] == [9.0, 19.0, 29.0]  # the value at the last step
    assert report.main([str(tmp_path), "--metrics", "val/fgd_randproj", "train/loss"]) == 0
    with (tmp_path / "report.csv").open() as fh:
        table = list(csv.DictReader(fh))
    assert len(table) == 3 and float(table[2]["train/loss"]) == pytest.approx(1 / 9)
    assert "| 2 | loss=smga_no_face mask=boxes | 29 |" in (tmp_path / "report.md").read_text()
    png = (tmp_path / "report.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_a_tag_no_run_logged_is_reported_with_the_logged_ones(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    report = _report_module()
    _fake_sweep(tmp_path)
    rows, _ = report.collect(tmp_path, ["val/fgd"])  # the old README's key: stage 1 logs val/fgd_randproj
    assert all(math.isnan(r["val/fgd"]) for r in rows)
    err = capsys.readouterr().err
    assert "no run logged `val/fgd`" in err and "val/fgd_randproj" in err


def test_report_on_empty_folder_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _report_module().main([str(tmp_path)]) == 2
    assert "no Hydra job folders" in capsys.readouterr().err
