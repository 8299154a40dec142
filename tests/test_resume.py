"""Exact resume (issue 17, item 4): a tiny run killed with SIGKILL at a random step and resumed with
``ckpt_path=last`` ends with exactly the weights, EMA and optimiser state of the uninterrupted run (bitwise, CPU),
for stage 1, video sub-stage A and 2-rank CPU DDP; plus fast unit tests of the resumable sampler/loader.

The end-to-end runs go through the real entry (:func:`mmgt.runner.train` with the composed experiment configs) in
subprocesses: this file is also the script they run (Lightning's ``ddp`` re-launches ``sys.argv`` per rank, and a
SIGKILLed process must not be pytest)::

    python tests/test_resume.py OUT [--kill-at STEP] [hydra overrides ...]

runs the training with ``paths.output_dir=OUT/run``, SIGKILLs every rank at the start of the optimiser step after
``STEP`` (checkpoints of earlier steps are on disk, that step's may not be) and otherwise saves ``OUT/final.ckpt``.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from mmgt.data.sampling import ResumableDataLoader, ResumableSampler, SeededItems
from mmgt.lit.resume import ResumableTraining

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------- subprocess script


class KillAt(L.Callback):
    """SIGKILL this process (no cleanup, no checkpoint) when ``step`` optimiser steps are done."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if trainer.global_step >= self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class SaveFinal(L.Callback):
    """Write ``path`` at the end of fitting (collective: every rank calls it, rank 0 writes)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        trainer.save_checkpoint(self.path)


def main(argv: list[str]) -> None:
    from hydra import compose, initialize_config_dir

    from mmgt.runner import train
    from mmgt.utils.paths import CONF_DIR

    out, args = Path(argv[0]), list(argv[1:])
    callbacks: list[L.Callback] = [SaveFinal(out / "final.ckpt")]
    if args[:1] == ["--kill-at"]:
        callbacks.append(KillAt(int(args[1])))
        args = args[2:]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[*args, f"paths.output_dir={out / 'run'}",
                                                      f"paths.root_dir={out}"])
    train(cfg, extra_callbacks=callbacks)


# ------------------------------------------------------------------------------------------- helpers


def _env() -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")
    for key in ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "RANK", "PL_GLOBAL_SEED"):
        env.pop(key, None)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(out: Path, overrides: list[str], kill_at: int | None = None) -> subprocess.Popen:
    cmd = [sys.executable, str(Path(__file__).resolve()), str(out)]
    if kill_at is not None:
        cmd += ["--kill-at", str(kill_at)]
    env = _env()
    if any(o.startswith("trainer=ddp") for o in overrides):
        env["MASTER_PORT"] = str(_free_port())
    return subprocess.Popen([*cmd, *overrides], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def _wait(proc: subprocess.Popen, killed: bool = False, timeout: float = 900) -> None:
    out, _ = proc.communicate(timeout=timeout)
    expected = -signal.SIGKILL if killed else 0
    assert proc.returncode == expected, out[-4000:]


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor training changes: weights, EMA (part of the state dict), optimiser state, the step."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    out = {f"state_dict.{k}": v for k, v in ckpt["state_dict"].items()}
    for i, opt in enumerate(ckpt["optimizer_states"]):
        for pid, st in opt["state"].items():
            out.update({f"optimizer{i}.{pid}.{k}": v for k, v in st.items() if torch.is_tensor(v)})
    out["global_step"] = torch.tensor(ckpt["global_step"])
    return out


def compare(a: Path, b: Path) -> tuple[list[str], float]:
    """Names of the tensors that differ between two checkpoints, and the relative L2 distance of their weights."""
    ta, tb = _tensors(a), _tensors(b)
    assert ta.keys() == tb.keys()
    differ = [k for k in ta if not torch.equal(ta[k], tb[k])]
    w = [k for k in ta if k.startswith("state_dict.") and ta[k].is_floating_point()]
    num = sum(float((ta[k].double() - tb[k].double()).square().sum()) for k in w)
    den = sum(float(ta[k].double().square().sum()) for k in w)
    return differ, (num / den) ** 0.5 if den else 0.0


def prepare(overrides: list[str]) -> None:
    """Build the feature cache in this process first: the runs below share the corpus and start concurrently."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from mmgt.utils.paths import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[*overrides, "paths.output_dir=unused"])
    instantiate(cfg.data).prepare_data()


def kill_and_resume(tmp: Path, overrides: list[str], kills: list[int]) -> tuple[list[str], float]:
    """Uninterrupted run vs the same run SIGKILLed after each of ``kills`` steps in turn, each time resumed with
    ``ckpt_path=last`` (the uninterrupted run goes alongside the first kill)."""
    prepare(overrides)
    ref = _start(tmp / "ref", overrides)
    for i, step in enumerate(kills):
        _wait(_start(tmp / "cut", [*overrides, *(["ckpt_path=last"] if i else [])], kill_at=step), killed=True)
        assert not (tmp / "cut" / "final.ckpt").exists()
        assert list((tmp / "cut" / "run" / "checkpoints").glob("*.ckpt")), "the killed run wrote no checkpoint"
    _wait(_start(tmp / "cut", [*overrides, "ckpt_path=last"]))
    _wait(ref)
    return compare(tmp / "ref" / "final.ckpt", tmp / "cut" / "final.ckpt")


def _common(corpus: Path, steps: int, every: int) -> list[str]:
    """No validation, no progress bar, a checkpoint every ``every`` steps (the kill lands between them)."""
    return [f"data.root={corpus}", "data.synthetic.generate_if_missing=false", "data.progress=false",
            f"trainer.max_steps={steps}", "++trainer.limit_val_batches=0", "trainer.val_check_interval=null",
            "trainer.check_val_every_n_epoch=null", "trainer.log_every_n_steps=1", "trainer.enable_progress_bar=false",
            "trainer.enable_model_summary=false", "logger=csv", "~callbacks.progress_bar", "~callbacks.lr_monitor",
            f"callbacks.model_checkpoint.every_n_train_steps={every}"]


# tiny stage 1: 16-frame windows, batches of 4: 6 batches per epoch on the session corpus (24 windows)
SMGA = ["experiment=quickstart_smga", "data.window=16", "data.stride=16", "data.batch_size=4",
        "model.video.enabled=false", "size.smga.width=32", "size.smga.ff_size=64", "size.smga.num_layers=1"]
# tiny sub-stage A: 32 px frames, batches of 4: 8 batches per epoch (30 windows)
VIDEO = ["experiment=video_stage_a", "data.stride=16", "data.batch_size=4", "model.lr_scheduler.warmup_steps=2"]


# ------------------------------------------------------------------------------------------- unit tests


class Noisy(Dataset):
    """Items drawn from all three global generators, as the window datasets draw offsets and replacements."""

    def __len__(self) -> int:
        return 23

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"i": torch.tensor(i), "t": torch.rand(2), "n": torch.tensor(np.random.rand()),
                "p": torch.tensor(random.random())}


def _loader(world: int = 1, rank: int = 0, workers: int = 0, seed: int = 7) -> ResumableDataLoader:
    ds = Noisy()
    return ResumableDataLoader(SeededItems(ds), sampler=ResumableSampler(ds, world, rank, seed=seed), batch_size=4,
                               num_workers=workers, persistent_workers=workers > 0)


def _epoch(loader: ResumableDataLoader, epoch: int, stop: int | None = None) -> list[dict[str, torch.Tensor]]:
    loader.sampler.set_epoch(epoch)  # what Lightning's fit loop does at every epoch start
    it, out = iter(loader), []
    for batch in it:
        out.append(batch)
        if len(out) == stop:
            break
    return out


def _same(a: list[dict[str, torch.Tensor]], b: list[dict[str, torch.Tensor]]) -> bool:
    return len(a) == len(b) and all(torch.equal(x[k], y[k]) for x, y in zip(a, b) for k in x)


def test_sampler_shards_like_distributed_sampler() -> None:
    """Same windows per rank and epoch as torch's DistributedSampler (seed + epoch), padding included."""
    from torch.utils.data import DistributedSampler

    ds = Noisy()
    for world, rank, epoch in ((1, 0, 0), (2, 1, 3), (3, 2, 1)):
        ours, ref = ResumableSampler(ds, world, rank, seed=5), DistributedSampler(ds, world, rank, seed=5)
        ours.set_epoch(epoch)
        ref.set_epoch(epoch)
        assert [i for i, _ in ours] == list(ref) and len(ours) == len(ref)
    assert isinstance(ours, DistributedSampler)  # Lightning leaves it in place under DDP


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_resumes_mid_epoch_bitwise(workers: int) -> None:
    """State taken after k batches of epoch 1 (workers have prefetched more): a new loader serves exactly the rest
    of that epoch, with the same random draws, and the following epoch unchanged."""
    ref = _loader(workers=workers)
    full = [_epoch(ref, e) for e in range(3)]
    assert len(full[1]) == 6 and not _same(full[0], full[1])
    cut = _loader(workers=workers)
    _epoch(cut, 0)
    _epoch(cut, 1, stop=2)
    state = cut.state_dict()
    assert (state["epoch"], state["batches"]) == (1, 2)
    new = _loader(workers=workers, seed=999)  # the checkpoint's seed wins
    new.load_state_dict(state)
    assert new.state_dict() == state
    assert _same(_epoch(new, 1), full[1][2:])
    assert new.state_dict()["batches"] == 6
    assert _same(_epoch(new, 2), full[2])


def test_loader_state_across_world_sizes() -> None:
    """Written by 2 ranks after 2 batches each, resumed in 1 process: the rest of the epoch, every window once."""
    ranks = [_loader(world=2, rank=r) for r in range(2)]
    served = [int(i) for r in ranks for b in _epoch(r, 0, stop=2) for i in b["i"]]
    one = _loader()
    one.load_state_dict(ranks[0].state_dict())
    rest = [int(i) for b in _epoch(one, 0) for i in b["i"]]
    assert sorted(served + rest) == list(range(23))
    assert len(_epoch(one, 1)) == 6  # next epoch: the whole dataset again


class _Tiny(ResumableTraining, L.LightningModule):
    """Linear model whose loss is NaN at the given optimiser steps; records EMA updates and random draws."""

    def __init__(self, poison: tuple[int, ...] = ()) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(2, 1)
        self.poison = set(poison)
        self.ema_steps: list[int] = []
        self.draws: list[float] = []

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        self.draws.append(float(torch.rand(())))
        loss = self.lin(batch).square().mean()
        return loss * float("nan") if self.global_step in self.poison else loss

    def update_ema(self) -> None:
        self.ema_steps.append(self.global_step)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(torch.randn(12, 2), batch_size=2)


class _SeesEMA(L.Callback):
    """What a ModelCheckpoint in ``on_train_batch_end`` would write: the EMA updates done by then."""

    def __init__(self) -> None:
        self.seen: list[list[int]] = []

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self.seen.append(list(pl_module.ema_steps))


def _fit(module: _Tiny, **kw: Any) -> _SeesEMA:
    from mmgt.callbacks.guard import NonFiniteGuard

    seen = _SeesEMA()
    trainer = L.Trainer(accelerator="cpu", max_steps=4, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[NonFiniteGuard(), seen],
                        **kw)
    trainer.fit(module)
    return seen


def test_ema_updated_after_each_real_optimiser_step_before_the_checkpoint_hooks() -> None:
    m = _Tiny(poison=(1,))
    seen = _fit(m, accumulate_grad_batches=2)
    # 8 batches, 4 optimiser steps (global step 0..3 while they run); the one with NaN gradients leaves it alone
    assert m.ema_steps == [0, 2, 3]
    assert seen.seen == [[], [0], [0], [0], [0], [0, 2], [0, 2], [0, 2, 3]]


def test_step_randomness_depends_on_seed_epoch_and_batch_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PL_GLOBAL_SEED", "3")
    a, b = _Tiny(), _Tiny()
    _fit(a)
    torch.rand(100)  # other draws between runs (validation, data loading, a resumed process's start-up) do not count
    _fit(b)
    assert a.draws == b.draws and len(set(a.draws)) == 4
    monkeypatch.setenv("PL_GLOBAL_SEED", "4")
    c = _Tiny()
    _fit(c)
    assert c.draws != a.draws


# ------------------------------------------------------------------------------------------- kill -9 and resume


def _kill_steps(name: str, steps: int, n: int = 1) -> list[int]:
    """``n`` increasing steps after which the run is killed: random (seeded by the test), so they land on and
    between checkpoints, mid-epoch and at epoch ends."""
    return sorted(random.Random(name).sample(range(1, steps), n))


def _check(differ: list[str], rel: float, kills: list[int]) -> None:
    assert differ == [], f"killed after steps {kills}: {len(differ)} tensors differ (rel L2 {rel:.2e}): {differ[:6]}"


@pytest.mark.slow
def test_smga_kill_and_resume_is_bitwise(synthetic_corpus: Path, tmp_path: Path) -> None:
    """Killed twice (the second time while resumed), 6 batches per epoch, a checkpoint every 3 steps."""
    kills = _kill_steps("smga", 12, 2)
    _check(*kill_and_resume(tmp_path, [*SMGA, *_common(synthetic_corpus, 12, 3)], kills), kills)


@pytest.mark.slow
def test_video_stage_a_kill_and_resume_is_bitwise(synthetic_corpus: Path, tmp_path: Path) -> None:
    kills = _kill_steps("video_stage_a", 10)
    _check(*kill_and_resume(tmp_path, [*VIDEO, *_common(synthetic_corpus, 10, 3)], kills), kills)


@pytest.mark.slow
def test_ddp_two_ranks_kill_and_resume_is_bitwise(synthetic_corpus: Path, tmp_path: Path) -> None:
    """2 CPU ranks (gloo), 3 batches per rank and epoch: both ranks are SIGKILLed, then resumed with 2 ranks."""
    kills = _kill_steps("ddp", 8)
    overrides = [*SMGA, *_common(synthetic_corpus, 8, 2), "trainer=ddp_cpu", "trainer.devices=2"]
    _check(*kill_and_resume(tmp_path, overrides, kills), kills)


if __name__ == "__main__":
    main(sys.argv[1:])
