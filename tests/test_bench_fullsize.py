"""experiments/bench/fullsize.py --smoke: the paper-size bench's code path runs end to end on CPU at a small size and
reports every figure (generation, both sub-stages under each lever, matmul peak, host RSS of save/load/generate)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mmgt.models.video.pipeline import context_windows

BENCH = Path(__file__).resolve().parents[1] / "experiments" / "bench" / "fullsize.py"


@pytest.mark.slow
def test_fullsize_bench_smoke_reports_every_figure(tmp_path) -> None:
    out = tmp_path / "bench.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "MMGT_BENCH_TMP": str(tmp_path)}
    res = subprocess.run([sys.executable, str(BENCH), "--smoke", "--json", str(out)], capture_output=True, text=True,
                         env=env, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["device"] == "cpu" and r["peak"]["tflops"] > 0

    g = r["generate"]
    windows = context_windows(g["frames"], *g["context"])
    assert g["unet_forwards"] == len(windows) * g["steps"]  # one forward per window and step ...
    assert g["forward_batch"] == 2  # ... with both CFG branches batched
    assert g["s_per_frame"] > 0 and g["achieved_tflops"] > 0

    rows = r["train"]
    assert [(x["substage"], x["lever"]) for x in rows] == [(s, lv) for s in "ab" for lv in
                                                           ("fp32", "+bf16 autocast", "+gradient checkpointing",
                                                            "+frozen parts bf16")]
    assert all(x["ms_per_step"] > 0 and x["achieved_tflops"] > 0 and not x.get("error") for x in rows)

    host = {x["task"]: x for x in r["host"]}
    assert set(host) == {"save", "save_stock", "load", "load_copy", "generate"}
    assert all(math.isfinite(x["ratio"]) and x["ratio"] > 0 for x in host.values())
    for line in ("[peak]", "[generate]", "[train]", "[host] load: mmap"):
        assert line in res.stdout
