"""Data loading vs step consumption: does the DataModule keep a tiny training step fed?

    python experiments/bench/data.py [--root DIR] [--steps N]

For each stage (smga, video) it measures, in one run on this machine: windows/s of the train DataLoader with 0
and 2 workers, and windows/s consumed by the tiny model's training step (forward + backward + optimizer step on
a cached batch). Ratio > 1 means loading is faster than training (no stall).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch


def _compose(experiment: str, root: Path, overrides: list[str]):
    from hydra import compose, initialize_config_dir

    from mmgt.utils.paths import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=[f"experiment={experiment}", f"data.root={root}",
                                                       f"paths.root_dir={root.parent}", "data.progress=false",
                                                       f"paths.output_dir={root.parent / 'bench_run'}",
                                                       *overrides])


def loader_rate(dm, workers: int, batches: int) -> float:
    """Windows/s of the train loader (first batch excluded: worker start-up)."""
    dm.hparams.num_workers = workers
    dm.num_workers = workers
    loader = dm.train_dataloader()
    it = iter(loader)
    next(it)
    t, n = time.perf_counter(), 0
    for _ in range(batches):
        try:
            batch = next(it)
        except StopIteration:
            it = iter(loader)
            batch = next(it)
        n += len(batch["clip_id"])
    return n / (time.perf_counter() - t)


def step_rate(model, batch, steps: int) -> float:
    """Windows/s consumed by training_step + backward + optimizer step on one cached batch."""
    opt = model.configure_optimizers()
    opt = opt["optimizer"] if isinstance(opt, dict) else (opt[0][0] if isinstance(opt, tuple) else opt)
    if isinstance(opt, list):
        opt = opt[0]
    model.train()
    model.log = lambda *a, **k: None  # outside a Trainer
    model.log_dict = lambda *a, **k: None

    def one() -> None:
        loss = model.training_step(batch, 0)
        loss = loss["loss"] if isinstance(loss, dict) else loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    one()
    t = time.perf_counter()
    for _ in range(steps):
        one()
    return steps * len(batch["clip_id"]) / (time.perf_counter() - t)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=None, help="synthetic corpus (default: a temp one)")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batches", type=int, default=10)
    args = parser.parse_args()
    from hydra.utils import instantiate

    torch.set_num_threads(max(1, torch.get_num_threads()))
    with tempfile.TemporaryDirectory() as tmp:
        root = args.root or Path(tmp) / "synthetic"
        print(f"{'stage':8s} {'load w0':>10s} {'load w2':>10s} {'step':>10s} {'ratio w0':>9s} {'ratio w2':>9s}"
              "   (windows/s)")
        for stage, experiment, extra in (("smga", "quickstart_smga", []),
                                         ("video", "quickstart_video", ["model.init_from=null"])):
            cfg = _compose(experiment, root, extra)
            dm = instantiate(cfg.data)
            dm.prepare_data()
            dm.setup("fit")
            w0 = loader_rate(dm, 0, args.batches)
            w2 = loader_rate(dm, 2, args.batches)
            model = instantiate(cfg.model, data_info=dm.info(), _recursive_=False)
            batch = next(iter(dm.train_dataloader()))
            s = step_rate(model, batch, args.steps)
            print(f"{stage:8s} {w0:10.1f} {w2:10.1f} {s:10.1f} {w0 / s:9.2f} {w2 / s:9.2f}")


if __name__ == "__main__":
    main()
