"""Lean stage-2 checkpoints (mmgt.lit.lean): frozen parts with a source (pretrained folders written by diffusers /
transformers, ``model.init_from``) are not saved, are rebuilt on load to the same weights and outputs, and a changed
source is an error naming it; full checkpoints keep loading; ``save_last: link`` and finite ``save_top_k`` work."""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L
import pytest
import torch

from mmgt import checkpoints
from mmgt.errors import CheckpointError
from mmgt.lit.checkpoint_io import AtomicCheckpointIO
from mmgt.lit.video import VideoModule
from tiny_configs import VIDEO_NET

INFO = dict(audio_embed_shape=[5, 2, 8], num_branches=3, frame_size=[16, 24], fps=25.0)
K, H, W = 3, 16, 24
SAMPLING = {"steps": 2, "guidance": 2.0, "context_frames": 2, "context_overlap": 1}


def _vae(path: Path, seed: int) -> Path:
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    AutoencoderKL(latent_channels=4, block_out_channels=[8, 8, 8], layers_per_block=1,
                  down_block_types=["DownEncoderBlock2D"] * 3, up_block_types=["UpDecoderBlock2D"] * 3,
                  norm_num_groups=4, sample_size=16).save_pretrained(path)
    return path


def _clip(path: Path, seed: int) -> Path:
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    CLIPVisionModelWithProjection(CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_attention_heads=2,
                                                   num_hidden_layers=1, image_size=32, patch_size=16,
                                                   projection_dim=16)).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("pretrained")
    return {"vae": _vae(d / "vae", 1), "clip": _clip(d / "clip", 2)}


def _net(folders: dict[str, Path]) -> dict:
    return {**VIDEO_NET, "codec": {"type": "vae", "path": str(folders["vae"]), "scaling_factor": 0.18215},
            "image_encoder": {"type": "clip", "path": str(folders["clip"])}}


def _module(net: dict, substage: str, seed: int = 0, **kw) -> VideoModule:
    torch.manual_seed(seed)
    return VideoModule(net, attention={"type": "mm_haa", "blocks": ["down"]}, substage=substage, data_info=INFO,
                       sampling=SAMPLING, optim={"lr": 1e-3}, **kw)


def _checkpoint(module: VideoModule, lean: bool = True) -> dict:
    ckpt = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
            "pytorch-lightning_version": L.__version__, "global_step": 3,
            "datamodule_hyper_parameters": {"stage1_features": {}, "stage2_features": {}}}
    if lean:
        module.on_save_checkpoint(ckpt)
    else:  # what mmgt wrote before lean checkpoints: every tensor
        checkpoints.stamp(ckpt, "video", substage=module.substage)
    return ckpt


def _save(module: VideoModule, path: Path, lean: bool = True) -> Path:
    torch.save(_checkpoint(module, lean), path)
    return path


def _batch(n: int = 2, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return dict(frames=torch.rand(1, n, 3, H, W, generator=g) * 2 - 1,
                pose_images=torch.rand(1, n, 3, H, W, generator=g),
                masks=torch.rand(1, K, n, H // 4, W // 4, generator=g),
                ref_frame=torch.rand(1, 3, H, W, generator=g) * 2 - 1,
                audio_emb=torch.randn(1, n, 5, 2, 8, generator=g))


def _trained_b(folders: dict[str, Path], tmp: Path) -> tuple[VideoModule, Path]:
    """Stage A (frozen VAE + CLIP from folders), saved lean; stage B initialised from it, trainables perturbed."""
    a = _module(_net(folders), "a")
    with torch.no_grad():
        for _, p in a._trainable_params():
            p.add_(0.01 * torch.randn_like(p))
    path_a = _save(a, tmp / "a.ckpt")
    b = _module(_net(folders), "b", seed=1, init_from=str(path_a))
    with torch.no_grad():
        for _, p in b._trainable_params():
            p.add_(0.05 * torch.randn_like(p))
    return b, path_a


def _generate(m: VideoModule) -> torch.Tensor:
    return m.generate(_batch(), generator=torch.Generator().manual_seed(5))


def test_lean_checkpoint_holds_no_frozen_parts_and_reloads_to_the_same_outputs(folders, tmp_path) -> None:
    b, path_a = _trained_b(folders, tmp_path)
    raw_a = torch.load(path_a, weights_only=True)
    assert not any(k.startswith(("net.codec.", "net.image_encoder.")) for k in raw_a["state_dict"])
    assert any(".motion_modules." in k for k in raw_a["state_dict"])  # random-init frozen: no source, kept

    path_b = _save(b, tmp_path / "b.ckpt")
    raw = torch.load(path_b, weights_only=True)
    trainable = {f"net.{n}" for n in b.trainable_names}
    kept = [k for k in raw["state_dict"] if k.startswith("net.")]
    assert kept and set(kept) <= trainable  # only what trains; the stage-A image model and VAE/CLIP are not saved
    sources = raw["mmgt"]["lean"]["sources"]
    assert sources["init_from"]["path"] == str(path_a.resolve())
    assert sources["codec.path"]["path"] == str(folders["vae"]) and "image_encoder.path" in sources
    assert any(k.startswith("net.reference_unet.") for k in sources["init_from"]["keys"])

    rebuilt = checkpoints.build_module(checkpoints.read(path_b), "video")
    own = b.state_dict()
    assert set(rebuilt.state_dict()) == set(own)
    assert all(torch.equal(v, own[k]) for k, v in rebuilt.state_dict().items())
    b.eval()
    assert torch.equal(_generate(rebuilt), _generate(b))

    # Lightning's resume: a module built from the same config fills the gaps itself (checksums checked)
    fresh = _module(_net(folders), "b", seed=7, init_from=str(path_a))
    ckpt = checkpoints.load_torch(path_b)
    fresh.on_load_checkpoint(ckpt)
    fresh.load_state_dict(ckpt["state_dict"], strict=True)
    assert all(torch.equal(v, own[k]) for k, v in fresh.state_dict().items())


def test_full_checkpoints_still_load(tmp_path) -> None:
    """Files written before lean checkpoints (every tensor, no record) load through read/build_module and resume."""
    a = _module(VIDEO_NET, "a")
    path_a = _save(a, tmp_path / "a.ckpt", lean=False)
    b = _module(VIDEO_NET, "b", seed=1, init_from=str(path_a))
    path = _save(b, tmp_path / "full.ckpt", lean=False)
    raw = torch.load(path, weights_only=True)
    assert any(k.startswith("net.reference_unet.") for k in raw["state_dict"]) and "lean" not in raw["mmgt"]
    rebuilt = checkpoints.build_module(checkpoints.read(path), "video")
    b.eval()
    assert torch.equal(_generate(rebuilt), _generate(b))
    fresh = _module(VIDEO_NET, "b", seed=3)
    fresh.on_load_checkpoint(raw)  # no record: nothing to fill
    fresh.load_state_dict(raw["state_dict"], strict=True)
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in fresh.state_dict().items())
    # the same module saved lean is a fraction of the size (the stage-A image model is not repeated)
    assert os.path.getsize(path) > 1.5 * os.path.getsize(_save(b, tmp_path / "lean.ckpt"))


def test_changed_sources_are_named(folders, tmp_path) -> None:
    vae, clip = _vae(tmp_path / "vae", 1), _clip(tmp_path / "clip", 2)  # own copies, changed below
    net = {**_net(folders), "codec": {"type": "vae", "path": str(vae)}, "image_encoder": {"type": "clip",
                                                                                       "path": str(clip)}}
    b = _module(net, "b", seed=1, init_from=str(_save(_module(net, "a"), tmp_path / "a.ckpt")))
    path = _save(b, tmp_path / "b.ckpt")
    checkpoints.build_module(checkpoints.read(path), "video")  # unchanged: loads

    _vae(vae, 99)  # same files and sizes, other weights
    with pytest.raises(CheckpointError, match=r"codec\.path"):
        checkpoints.build_module(checkpoints.read(path), "video")
    fresh = _module(net, "b", seed=1, init_from=str(tmp_path / "a.ckpt"))
    with pytest.raises(CheckpointError, match="vae"):
        fresh.on_load_checkpoint(checkpoints.load_torch(path))
    # the folder moved / was restored elsewhere: `<key>.net` overrides point at it
    ok = checkpoints.build_module(checkpoints.read(path), "video", net={"codec": {"path": str(folders["vae"])}})
    assert torch.equal(ok.net.codec.vae.encoder.conv_in.weight, b.net.codec.vae.encoder.conv_in.weight)

    torch.save(_checkpoint(_module(net, "a", seed=5)), tmp_path / "a.ckpt")  # stage A overwritten
    with pytest.raises(CheckpointError, match="model.init_from"):
        checkpoints.build_module(checkpoints.read(path), "video", net={"codec": {"path": str(folders["vae"])}})
    os.remove(tmp_path / "a.ckpt")
    with pytest.raises(CheckpointError, match="does not exist"):
        checkpoints.build_module(checkpoints.read(path), "video", net={"codec": {"path": str(folders["vae"])}})


def test_save_last_link_and_finite_top_k(tmp_path) -> None:
    """The paper presets' checkpoint settings: last.ckpt links the newest step file, older ones beyond k go."""
    from hydra.utils import instantiate
    from lightning.pytorch.demos.boring_classes import BoringModel

    from mmgt.runner import resolve_ckpt_path, save_final_checkpoint

    node = {"_target_": "lightning.pytorch.callbacks.ModelCheckpoint", "dirpath": str(tmp_path / "checkpoints"),
            "filename": "step-{step:07d}", "auto_insert_metric_name": False, "save_last": "link", "save_top_k": 2,
            "monitor": "step", "mode": "max", "every_n_train_steps": 2}
    cb = instantiate(node)
    trainer = L.Trainer(max_steps=7, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, callbacks=[cb], plugins=[AtomicCheckpointIO()])
    trainer.fit(BoringModel())
    d = tmp_path / "checkpoints"
    steps = sorted(f.name for f in d.glob("step-*.ckpt"))
    assert steps == ["step-0000004.ckpt", "step-0000006.ckpt"]
    last = d / "last.ckpt"
    assert last.is_symlink() and last.resolve() == (d / steps[-1]).resolve()
    assert checkpoints.read(d).global_step == 6 and resolve_ckpt_path("last", tmp_path)
    save_final_checkpoint(trainer)  # the final step 7 replaces the link by a file, the step file stays intact
    assert not last.is_symlink() and checkpoints.read(last).global_step == 7
    assert checkpoints.read(d / steps[-1]).global_step == 6


@pytest.mark.parametrize("experiment", ["smga_pats", "video_stage_a_pats", "video_stage_b_pats"])
def test_paper_presets_keep_finitely_many_checkpoints(experiment, tmp_path) -> None:
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from mmgt.utils.paths import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment={experiment}", f"paths.root_dir={tmp_path}",
                                          f"paths.output_dir={tmp_path}"])
    mc = cfg.callbacks.model_checkpoint
    assert mc.save_last == "link" and 0 < mc.save_top_k < 20
    instantiate(mc)  # a valid ModelCheckpoint (finite top-k needs a monitored quantity)


class _Windows(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> dict:
        return {k: v[0] for k, v in _batch(2, seed=i).items()}


def test_lean_sub_stage_b_resumes_through_lightning(tmp_path) -> None:
    """Lightning saves sub-stage B lean (ModelCheckpoint) and resumes it (ckpt_path) with its strict load."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    path_a = _save(_module(VIDEO_NET, "a"), tmp_path / "a.ckpt")

    def fit(steps: int, ckpt_path: str | None = None) -> VideoModule:
        m = _module(VIDEO_NET, "b", seed=1, init_from=str(path_a))
        cb = ModelCheckpoint(dirpath=tmp_path / "ck", filename="step-{step}", every_n_train_steps=2, save_last=True)
        trainer = L.Trainer(max_steps=steps, logger=False, enable_progress_bar=False, enable_model_summary=False,
                            limit_val_batches=0, callbacks=[cb], plugins=[AtomicCheckpointIO()], accelerator="cpu")
        trainer.fit(m, torch.utils.data.DataLoader(_Windows(), batch_size=2), ckpt_path=ckpt_path)
        return m

    first = fit(2)
    raw = torch.load(tmp_path / "ck" / "last.ckpt", weights_only=True)
    assert raw["mmgt"]["lean"]["sources"]["init_from"]["keys"]
    assert {k for k in raw["state_dict"] if k.startswith("net.")} <= {f"net.{n}" for n in first.trainable_names}
    resumed = fit(3, str(tmp_path / "ck" / "last.ckpt"))
    assert resumed.trainer.global_step == 3
    moved = [n for n, p in resumed.net.named_parameters() if p.requires_grad and
             not torch.equal(p, first.net.get_parameter(n))]
    assert moved  # it trained on from the restored state ...
    frozen = [n for n, p in resumed.net.named_parameters() if not p.requires_grad]
    assert all(torch.equal(resumed.net.get_parameter(n), first.net.get_parameter(n)) for n in frozen)  # ... A kept


def test_frozen_motion_modules_from_an_adapter_folder_are_rebuilt(tmp_path) -> None:
    """Sub-stage A with a pretrained SD-layout UNet folder and an AnimateDiff adapter folder (diffusers writes both):
    the frozen motion modules come from the adapter and are left out; the trained UNets are saved."""
    from diffusers import MotionAdapter, UNet2DConditionModel

    from mmgt.models.video.unet import unet2d_config

    unet = dict(VIDEO_NET["unet"], motion_max_seq_length=32)
    torch.manual_seed(3)
    UNet2DConditionModel(**unet2d_config(unet, 48)).save_pretrained(tmp_path / "unet")
    MotionAdapter(block_out_channels=tuple(unet["block_out_channels"]), motion_layers_per_block=1,
                  motion_num_attention_heads=2, motion_norm_num_groups=8, motion_max_seq_length=32,
                  use_motion_mid_block=True).save_pretrained(tmp_path / "adapter")
    net = {**VIDEO_NET, "unet": {**unet, "pretrained": str(tmp_path / "unet"),
                                 "motion_adapter": str(tmp_path / "adapter")}}
    a = _module(net, "a")
    raw = _checkpoint(a)
    sources = raw["mmgt"]["lean"]["sources"]
    assert set(sources) == {"unet.motion_adapter"}  # the partly trained UNets are not a source
    assert all(".motion_modules." in k for k in sources["unet.motion_adapter"]["keys"])
    assert not any(".motion_modules." in k for k in raw["state_dict"])
    torch.save(raw, tmp_path / "a.ckpt")
    rebuilt = checkpoints.build_module(checkpoints.read(tmp_path / "a.ckpt"), "video")
    own = a.state_dict()
    assert all(torch.equal(v, own[k]) for k, v in rebuilt.state_dict().items())
