"""mmgt.checkpoints: crafted files run no code through any entry point (generate, evaluate, init_from, resume),
``ckpt_path=last`` finds the newest loadable checkpoint, writes are atomic with the umask's permissions, and files
written before the format record existed still load."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import lightning as L
import pytest
import torch
from omegaconf import OmegaConf

from mmgt import checkpoints
from mmgt.errors import CheckpointError
from mmgt.lit.checkpoint_io import AtomicCheckpointIO
from mmgt.lit.smga import SMGAModule
from mmgt.lit.video import VideoModule
from mmgt.runner import resolve_ckpt_path
from tiny_configs import GEN_VIDEO_NET, SMGA_INFO, SMGA_NET, save_checkpoint, video_info

SMGA_NET, SMGA_INFO, VIDEO_NET, VIDEO_INFO = SMGA_NET, SMGA_INFO, GEN_VIDEO_NET, video_info()


class _Payload:
    """Unpickling this object creates a marker directory (stands for any code a pickle can run)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.makedirs, (str(self.marker),))


def _marker_target(marker: Path) -> dict:
    """A Hydra node that, if instantiated, creates the marker directory."""
    return {"_target_": "os.makedirs", "name": str(marker)}


@pytest.fixture(scope="module")
def modules() -> dict[str, L.LightningModule]:
    torch.manual_seed(0)
    return {"smga": SMGAModule(SMGA_NET, data_info=SMGA_INFO, sampling=dict(steps=2)),
            "video": VideoModule(VIDEO_NET, attention={"type": "mm_haa", "blocks": ["down"]}, substage="b",
                                 data_info=VIDEO_INFO)}


def _crafted_hparams(module: L.LightningModule, marker: Path, where: str) -> dict:
    hp = json.loads(json.dumps(dict(module.hparams), default=list))
    hp[where] = _marker_target(marker)
    return hp


@pytest.mark.parametrize("kind,where", [("smga", "loss"), ("smga", "metrics"), ("video", "metrics"),
                                        ("video", "attention")])
def test_crafted_ckpt_targets_build_nothing(modules, tmp_path, kind, where) -> None:
    from mmgt.inference import load_stage

    marker = tmp_path / "marker"
    path = save_checkpoint(modules[kind], tmp_path / "evil.ckpt", _crafted_hparams(modules[kind], marker, where))
    with pytest.raises(CheckpointError, match=r"evil\.ckpt.*os\.makedirs.*data"):
        load_stage(path, kind)
    assert not marker.exists()


def test_crafted_class_path_is_not_imported(modules, tmp_path) -> None:
    """`attention.module` names a class: a path outside mmgt's components is refused before any import."""
    from mmgt.inference import load_stage

    hp = json.loads(json.dumps(dict(modules["video"].hparams), default=list))
    hp["attention"]["module"] = "antigravity.Fly"  # importing `antigravity` alone runs code (opens a browser)
    path = save_checkpoint(modules["video"], tmp_path / "evil.ckpt", hp)
    with pytest.raises(CheckpointError, match=r"attention\.module.*antigravity"):
        load_stage(path, "video")
    assert "antigravity" not in __import__("sys").modules


def test_crafted_export_metadata_builds_nothing(modules, tmp_path) -> None:
    from safetensors.torch import save_file

    from mmgt.inference import load_stage

    marker = tmp_path / "marker"
    hp = _crafted_hparams(modules["smga"], marker, "loss")
    hp["loss"] = {"nested": [_marker_target(marker)]}  # anywhere in the tree
    state = {k: v.contiguous() for k, v in modules["smga"].net.state_dict().items()}
    path = tmp_path / "evil.safetensors"
    save_file(state, str(path), metadata={"format": checkpoints.EXPORT_FORMAT, "kind": "smga",
                                          "hparams": json.dumps(hp), "datamodule": "{}"})
    with pytest.raises(CheckpointError, match=r"loss\.nested\[0\]\._target_"):
        load_stage(path, "smga")
    assert not marker.exists()


def test_pickle_payloads_refused_even_when_the_environment_allows_them(modules, tmp_path, monkeypatch) -> None:
    """Every reader forces weights_only: generation, init_from, Lightning resume and run-folder resolution."""
    from mmgt.inference import load_stage

    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    marker = tmp_path / "marker"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": modules["video"].state_dict(), "hyper_parameters": dict(modules["video"].hparams),
                "payload": _Payload(marker)}, path)
    with pytest.raises(CheckpointError, match="weights_only=True"):
        load_stage(path, "video")
    with pytest.raises(CheckpointError, match="weights_only=True"):
        VideoModule(VIDEO_NET, attention={"type": "mm_haa", "blocks": ["down"]}, substage="b",
                    data_info=VIDEO_INFO, init_from=str(path))
    with pytest.raises(CheckpointError, match="weights_only=True"):
        AtomicCheckpointIO().load_checkpoint(path)
    (tmp_path / "checkpoints").mkdir()
    os.replace(path, tmp_path / "checkpoints" / "last.ckpt")
    with pytest.raises(CheckpointError, match="none of the 1 checkpoints"):
        resolve_ckpt_path("last", tmp_path)
    assert not marker.exists()


def test_resume_through_the_trainer_runs_no_pickle(tmp_path, monkeypatch) -> None:
    """Lightning's own resume path goes through AtomicCheckpointIO (what mmgt.runner.train installs)."""
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    marker = tmp_path / "marker"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": _Payload(marker), "global_step": 1}, path)
    from lightning.pytorch.demos.boring_classes import BoringModel

    model = BoringModel()
    trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, plugins=[AtomicCheckpointIO()])
    with pytest.raises(CheckpointError, match="weights_only=True"):
        trainer.fit(model, ckpt_path=str(path))
    assert not marker.exists()


def test_evaluate_refuses_crafted_datamodule_settings(modules, tmp_path) -> None:
    from mmgt.evaluate import evaluate_checkpoint

    marker = tmp_path / "marker"
    dm = {"root": str(tmp_path), "stage": "video", "mask": _marker_target(marker)}
    path = save_checkpoint(modules["video"], tmp_path / "video.ckpt", datamodule=dm)
    cfg = OmegaConf.create({"ckpt_path": str(path), "split": "test", "metrics": {}, "max_batches": 1,
                            "paths": {"output_dir": str(tmp_path / "out")}, "device": "cpu", "tensorboard": False})
    assert evaluate_checkpoint(cfg) == 1
    assert not marker.exists() and not (tmp_path / "out" / "metrics.json").exists()


def test_last_is_the_newest_loadable_checkpoint(modules, tmp_path, caplog) -> None:
    d = tmp_path / "checkpoints"
    d.mkdir()
    save_checkpoint(modules["smga"], d / "last.ckpt", global_step=20)  # stale: a moved run wrote last-v1.ckpt after it
    save_checkpoint(modules["smga"], d / "step-0000030.ckpt", global_step=30)
    save_checkpoint(modules["smga"], d / "last-v1.ckpt", global_step=40)
    assert resolve_ckpt_path("last", tmp_path) == str(d / "last-v1.ckpt")
    (d / "last-v1.ckpt").write_bytes(b"")  # killed during the write on another filesystem: 0 bytes
    with caplog.at_level("WARNING"):
        assert resolve_ckpt_path("last", tmp_path) == str(d / "step-0000030.ckpt")
    assert "last-v1.ckpt" in caplog.text
    assert checkpoints.resolve(tmp_path) == d / "step-0000030.ckpt"  # a run folder, as generate/evaluate take it
    assert resolve_ckpt_path("last", tmp_path / "fresh") is None


def test_kind_and_version_are_recorded_and_old_files_still_load(modules, tmp_path) -> None:
    new = checkpoints.read(save_checkpoint(modules["video"], tmp_path / "new.ckpt"))
    assert (new.kind, new.version) == ("video", checkpoints.FORMAT_VERSION)
    # a file by the previous rules: no `mmgt` record, kind known only from the hyper-parameter keys
    old_path = tmp_path / "old.ckpt"
    torch.save({"state_dict": modules["smga"].state_dict(), "hyper_parameters": dict(modules["smga"].hparams),
                "mmgt_video_stage": None}, old_path)
    old = checkpoints.read(old_path)
    assert (old.kind, old.version) == ("smga", 0)
    module = checkpoints.build_module(old, "smga")
    ema = modules["smga"].ema.module.state_dict()
    assert module.ema is None and all(torch.equal(v, ema[k]) for k, v in module.net.state_dict().items())


def test_non_finite_weights_are_refused(modules, tmp_path) -> None:
    sd = {k: v.clone() for k, v in modules["smga"].state_dict().items()}
    first = next(k for k, v in sd.items() if k.startswith("ema.") and v.is_floating_point())
    sd[first][...] = float("nan")
    path = tmp_path / "nan.ckpt"
    torch.save({"state_dict": sd, "hyper_parameters": dict(modules["smga"].hparams)}, path)
    with pytest.raises(CheckpointError, match="NaN/inf"):
        checkpoints.build_module(checkpoints.read(path), "smga")


def test_atomic_checkpoint_io_keeps_old_file_and_umask(tmp_path, monkeypatch) -> None:
    io = AtomicCheckpointIO()
    target = tmp_path / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}, "global_step": 1}, target)
    old = os.umask(0o022)
    try:
        io.save_checkpoint({"state_dict": {"w": torch.ones(3)}, "global_step": 2}, target)
    finally:
        os.umask(old)
    assert target.stat().st_mode & 0o777 == 0o644  # mkstemp alone gives 0600
    real_save = torch.save

    def disk_full(obj, f, *a, **k):  # type: ignore[no-untyped-def]
        real_save(obj, f, *a, **k)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match="No space"):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}, "global_step": 3}, target)
    assert io.load_checkpoint(target)["global_step"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # no temp file left behind


def test_non_finite_guard_skips_steps_and_stops(tmp_path, caplog) -> None:
    """lr=1e10 makes the weights overflow: the guard skips those steps, names the batch's clips, stops after N in
    a row, and no checkpoint with NaN is written (the last good one stays)."""
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.demos.boring_classes import BoringModel, RandomDataset
    from torch.utils.data import DataLoader

    from mmgt.callbacks.guard import NonFiniteGuard

    class Clips(RandomDataset):
        def __getitem__(self, i):  # type: ignore[no-untyped-def]
            return {"x": self.data[i], "clip_id": f"clip{i}"}

    class Model(BoringModel):
        def __init__(self, poison_from: int) -> None:
            super().__init__()
            self.poison_from = poison_from

        def training_step(self, batch, batch_idx):  # type: ignore[no-untyped-def]
            loss = self.layer(batch["x"]).sum()
            return loss * float("nan") if self.global_step >= self.poison_from else loss

        def train_dataloader(self):  # type: ignore[no-untyped-def]
            return DataLoader(Clips(32, 64), batch_size=2)

    guard = NonFiniteGuard(max_consecutive=3)
    ckpt = ModelCheckpoint(dirpath=tmp_path, filename="step-{step}", every_n_train_steps=1, save_top_k=-1)
    model = Model(poison_from=2)
    trainer = L.Trainer(max_steps=20, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[guard, ckpt], plugins=[AtomicCheckpointIO()])
    with caplog.at_level("WARNING"), pytest.raises(RuntimeError, match="3 optimiser steps in a row"):
        trainer.fit(model)
    assert guard.skipped == 3
    assert "clip4, clip5" in caplog.text  # the first poisoned batch (step 2) is named
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())
    for f in tmp_path.glob("*.ckpt"):
        assert not checkpoints.non_finite(AtomicCheckpointIO().load_checkpoint(f)["state_dict"])


def test_final_step_is_saved_after_fit(tmp_path) -> None:
    """A run whose checkpoint callback saves every 3 steps still ends with last.ckpt at its final step (the
    quickstart lost its last 100 SMGA steps before)."""
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.demos.boring_classes import BoringModel

    from mmgt.runner import save_final_checkpoint

    cb = ModelCheckpoint(dirpath=tmp_path, filename="step-{step}", every_n_train_steps=3, save_last=True)
    trainer = L.Trainer(max_steps=5, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, callbacks=[cb], plugins=[AtomicCheckpointIO()])
    trainer.fit(BoringModel())
    assert checkpoints.read(tmp_path / "last.ckpt").global_step == 3
    save_final_checkpoint(trainer)
    assert checkpoints.read(tmp_path / "last.ckpt").global_step == 5


def test_sub_stage_b_without_init_is_refused(tmp_path) -> None:
    """`experiment=video_stage_b` with no stage-A checkpoint used to train from a random image model, exit 0."""
    from hydra import compose, initialize_config_dir

    from mmgt.runner import check_recipe
    from mmgt.utils.paths import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=video_stage_b", f"paths.root_dir={tmp_path}"])
        ok = compose("train", overrides=["experiment=video_stage_b", "require_init=false"])
        given = compose("train", overrides=["experiment=video_stage_b", "model.init_from=a.ckpt"])
    with pytest.raises(ValueError, match="model.init_from is empty for sub-stage B"):
        check_recipe(cfg)
    check_recipe(ok)
    check_recipe(given)


def test_optimiser_state_from_a_list_setting_loads_weights_only(tmp_path) -> None:
    """experiment=smga_pats gives timm's Adan `betas` as a list: its state must stay plain (weights_only loads)."""
    from mmgt.utils.config import instantiate_partial

    lin = torch.nn.Linear(3, 2)
    opt = instantiate_partial({"_target_": "timm.optim.Adan", "_partial_": True, "lr": 1e-3,
                               "betas": [0.98, 0.92, 0.99]})(params=lin.parameters())
    lin(torch.randn(4, 3)).sum().backward()
    opt.step()
    torch.save({"state_dict": lin.state_dict(), "optimizer_states": [opt.state_dict()]}, tmp_path / "o.ckpt")
    assert checkpoints.load_torch(tmp_path / "o.ckpt")["optimizer_states"][0]["param_groups"][0]["betas"]


def test_rebuilt_video_module_keeps_its_noise_schedule(tmp_path) -> None:
    """Stage 2's `scheduler` is the noise schedule: a checkpoint trained with other betas samples with them."""
    video = VideoModule(VIDEO_NET, attention={"type": "mm_haa", "blocks": ["down"]}, substage="b",
                        data_info=VIDEO_INFO, scheduler={"beta_end": 0.02})
    module = checkpoints.build_module(checkpoints.read(save_checkpoint(video, tmp_path / "v.ckpt")), "video")
    assert torch.equal(module.alphas_cumprod, video.alphas_cumprod)
    assert module.hparams.scheduler["beta_end"] == 0.02


def test_float16_export_loads_into_the_modules_own_dtypes(tmp_path) -> None:
    """An export whose weights were stored in float16 (the shipped quickstart pair) is rebuilt with the float32
    parameters the module is built with: the meta-device load assigns the file's tensors, and a half weight beside
    float activations would stop the first forward ("mat1 and mat2 must have the same dtype")."""
    torch.manual_seed(0)
    smga = SMGAModule(SMGA_NET, data_info=SMGA_INFO)
    net = copy.deepcopy(smga.net).half()
    half = net.state_dict()
    path = checkpoints.write_export(net, "smga", smga.hparams, {}, tmp_path / "smga_fp16.safetensors")
    module = checkpoints.build_module(checkpoints.read(path), "smga")
    dtypes = {t.dtype for t in module.net.state_dict().values() if t.is_floating_point()}
    assert dtypes == {torch.float32}
    for k, v in module.net.state_dict().items():  # the values are the float16 ones, widened
        assert torch.equal(v, half[k].to(v.dtype)), k
