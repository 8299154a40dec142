"""``notebooks/quickstart.ipynb`` runs end to end on the CPU (fast setting).

nbclient/jupyter are not dependencies, so the code cells are executed in order in one namespace, as a kernel would,
with matplotlib's non-interactive backend. ``python tests/test_notebook.py [--full]`` does the same and stores the
printed output and figures in the notebook, so it shows pictures where it is viewed (e.g. on GitHub).
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import sys
import time
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"


def code_cells(nb: dict) -> list[str]:
    return ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]


def execute(nb: dict, capture: bool = False) -> dict:
    """Run the code cells in order in one namespace; with ``capture``, store stdout and figures as cell outputs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns: dict = {"__name__": "__main__"}
    count = 0
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        count += 1
        src = "".join(cell["source"])
        buf, start = io.StringIO(), time.perf_counter()
        with contextlib.redirect_stdout(buf) if capture else contextlib.nullcontext():
            try:
                exec(compile(src, f"<notebook cell {count}>", "exec"), ns)  # noqa: S102 - our own notebook
            except Exception as err:
                raise AssertionError(f"notebook cell {count} failed: {type(err).__name__}: {err}\n{src}") from err
        print(f"notebook cell {count}: {time.perf_counter() - start:.1f} s", file=sys.stderr)
        if capture:
            outputs = []
            if buf.getvalue():
                outputs.append({"output_type": "stream", "name": "stdout",
                                "text": buf.getvalue().splitlines(keepends=True)})
            for num in plt.get_fignums():
                png = io.BytesIO()
                plt.figure(num).savefig(png, format="png", dpi=72, bbox_inches="tight")
                outputs.append({"output_type": "display_data", "metadata": {},
                                "data": {"image/png": base64.b64encode(png.getvalue()).decode(),
                                         "text/plain": ["<Figure>"]}})
            cell["outputs"], cell["execution_count"] = outputs, count
        plt.close("all")
    return ns


def test_notebook_is_valid_json_with_the_chain() -> None:
    nb = json.loads(NOTEBOOK.read_text())
    assert nb["nbformat"] == 4
    src = "\n".join(code_cells(nb))
    for needle in ("generate_corpus", "experiment=quickstart_smga", "experiment=video_stage_a",
                   "experiment=quickstart_video", "GesturePipeline", "evaluate_folders", "MMGT_NOTEBOOK_FAST"):
        assert needle in src, needle


@pytest.mark.slow
def test_notebook_executes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setenv("MMGT_NOTEBOOK_FAST", "1")
    monkeypatch.setenv("MMGT_NOTEBOOK_DIR", str(tmp_path))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    threads = torch.get_num_threads()
    try:
        ns = execute(json.loads(NOTEBOOK.read_text()))
    finally:
        torch.set_num_threads(threads)
    res, test = ns["res"], ns["test"]
    assert res.n_frames == test.n_frames and res.video.exists() and res.side_by_side.exists()
    assert ns["info"].has_audio
    assert {"psnr", "ssim"} <= set(ns["scores"])
    assert (tmp_path / "smga" / "checkpoints" / "last.ckpt").exists()
    assert list((tmp_path / "video_b" / "tensorboard").glob("events.*"))


if __name__ == "__main__":  # render outputs into the notebook
    os.environ.setdefault("MMGT_NOTEBOOK_FAST", "0" if "--full" in sys.argv else "1")
    book = json.loads(NOTEBOOK.read_text())
    execute(book, capture=True)
    NOTEBOOK.write_text(json.dumps(book, indent=1) + "\n")
    print(f"wrote outputs into {NOTEBOOK}")
