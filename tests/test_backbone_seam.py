"""Stage-2 seams: the backbone interface (the UNets by default; a toy conv backbone from a size preset) and attention
variants as classes named in ``conf/attention``; checkpoints written before the seam load unchanged; class paths
from configs and stored settings are checked before anything is imported.

A new attention variant takes a module + a YAML + a test (``models/video/audio_bias.py``, ``attention/audio_bias``,
here); a new backbone a module + a size preset + a test (``models/video/conv_backbone.py``, ``size/tiny_conv``,
here), without touching data or attention configs.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import pytest
import torch

from mmgt.lit.video import VideoModule
from mmgt.models.video import VideoNet
from mmgt.models.video.attention import (
    CrossAudioAttention,
    HierarchicalAudioAttention,
    MotionMaskedAudioAttention,
    NoAudioAttention,
    variant_class,
)
from mmgt.models.video.audio_bias import AudioBiasAttention, GatedAudioBias
from mmgt.models.video.conv_backbone import ConvBackbone
from mmgt.models.video.mmhaa import OfficialAudioModule
from mmgt.models.video.unet import UNetBackbone
from tiny_configs import VIDEO_NET

INFO = dict(audio_embed_shape=[5, 2, 8], num_branches=3, frame_size=[32, 32], fps=25.0)
OFFICIAL = "mmgt.models.video.mmhaa.OfficialAudioModule"
# Recorded with the code before the backbone seam (commit 0ecdc43): VideoModule(VIDEO_NET, attention={type: mm_haa,
# blocks: [down], module}, substage b, EMA on): sha256 of the state-dict names in order, and of the trainable
# parameter names in order (optimiser states are stored by position, EMA buffers by these names).
PRE_SEAM_NET = dict(  # tiny_configs.VIDEO_NET as recorded
    codec=dict(type="pixel", factor=4), image_encoder=dict(type="conv", channels=[8, 16]),
    unet=dict(block_out_channels=[16, 32], layers_per_block=1, down_blocks=["cross", "cross"], heads=2,
              cross_attention_dim=16, norm_num_groups=8, motion_heads=2),
    pose_guider=dict(channels=[8, 8, 16]), audio_proj=dict(hidden_dim=32, tokens=3, dim=16),
    audio_attention=dict(heads=2),
)
BEFORE_SEAM = {
    None: (1074, "c74b3bf391986a5361d5cc4da35ba77f80e70a5b67bf0cfdf5fbae2bdc5da074",
           236, "2383fcd7abdcb6be574d9d9f53703d260f34a4b3889a43b0c89eab9864ac694e"),
    OFFICIAL: (1150, "02101d7bb61e1ed997495abe5edef486b155b1c6e5d1e08d846107202ea70d5f",
               274, "0089396c25118d1eeb6cccd94b31c74c1729cad2579dd5fcd466eb6288c7084e"),
}


def names_hash(names) -> str:
    return hashlib.sha256("\n".join(names).encode()).hexdigest()


def make_batch(b: int = 2, n: int = 3, seed: int = 0) -> dict:
    """A random stage-2 batch of 32x32 frames (16x16 latents with the tiny pixel codec), masks at one size."""
    g = torch.Generator().manual_seed(seed)
    masks = torch.rand(b, 3, n, 16, 16, generator=g)
    return dict(frames=torch.rand(b, n, 3, 32, 32, generator=g) * 2 - 1,
                pose_images=torch.rand(b, n, 3, 32, 32, generator=g), masks=masks,
                ref_frame=torch.rand(b, 3, 32, 32, generator=g) * 2 - 1,
                audio_emb=torch.randn(b, n, 5, 2, 8, generator=g))


def compose(*overrides: str):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from mmgt.utils.paths import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose("train", overrides=["experiment=video_stage_a", "model.metrics=null",
                                                 "model.sampling.steps=2", *overrides])


def from_config(*overrides: str, seed: int = 0, **kw) -> VideoModule:
    """The VideoModule that ``mmgt.train`` builds for these overrides."""
    from hydra.utils import instantiate

    cfg = compose(*overrides)
    torch.manual_seed(seed)
    return instantiate(cfg.model, data_info=INFO, _recursive_=False, **kw)


def fit_one_step(m: VideoModule, out: Path, frames: int) -> dict:
    """One optimiser step and one validation pass (which samples through VideoSampler) with Lightning."""
    import lightning as L

    class Data(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 2

        def __getitem__(self, i: int) -> dict:
            b = make_batch(1, frames, seed=i)
            return {k: v[0] for k, v in b.items()}

    dl = lambda: torch.utils.data.DataLoader(Data(), batch_size=2)  # noqa: E731
    trainer = L.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=1,
                        num_sanity_val_steps=0, default_root_dir=str(out))
    trainer.fit(m, dl(), dl())
    trainer.save_checkpoint(out / "last.ckpt")
    return {k: float(v) for k, v in trainer.callback_metrics.items()}


# ----------------------------------------------------------------------------------------------- old checkpoints


@pytest.mark.parametrize("module", [None, OFFICIAL])
def test_state_dict_names_and_order_as_before_the_seam(module: str | None) -> None:
    att = {"type": "mm_haa", "blocks": ["down"], "module": module}
    m = VideoModule(PRE_SEAM_NET, attention=att, substage="b", data_info=INFO, ema={"enabled": True})
    n_keys, keys_hash, n_train, train_hash = BEFORE_SEAM[module]
    keys = list(m.state_dict())
    assert (len(keys), names_hash(keys)) == (n_keys, keys_hash)
    assert (len(m.trainable_names), names_hash(m.trainable_names)) == (n_train, train_hash)
    assert {"denoising_unet.conv_in.weight", "reference_unet.conv_in.weight",
            "audio_modules.down_blocks_0_attentions_0.attn.0.to_q.weight"} <= set(m.net.state_dict())
    assert isinstance(m.net.backbone, UNetBackbone) and "backbone" not in dict(m.net.named_children())


def test_old_style_attention_config_and_checkpoint_load_into_the_configured_classes(tmp_path: Path) -> None:
    """A checkpoint whose stored attention names only ``type`` (every checkpoint before the seam) rebuilds the same
    network; its state dict loads strictly into the module built from ``conf/attention/mm_haa.yaml``."""
    from mmgt import checkpoints

    old = VideoModule(VIDEO_NET, attention={"type": "mm_haa", "blocks": ["down"]}, substage="b", data_info=INFO,
                      sampling={"steps": 2, "guidance": 2.0, "context_frames": 4, "context_overlap": 1})
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():  # make the audio path matter
        for mod in old.net.audio_modules.values():
            for p in mod.proj:
                p.weight.copy_(torch.randn(p.weight.shape, generator=g) * 0.3)
    new = from_config("attention=mm_haa", "size=tiny", "model.substage=b")
    assert type(new.net.audio_modules) is MotionMaskedAudioAttention and new.hparams.attention["_target_"]
    new_from_old = VideoModule(VIDEO_NET, attention=dict(new.hparams.attention), substage="b", data_info=INFO)
    new_from_old.load_state_dict(old.state_dict(), strict=True)
    path = tmp_path / "old.ckpt"
    torch.save({"state_dict": old.state_dict(), "hyper_parameters": dict(old.hparams)}, path)
    rebuilt = checkpoints.build_module(checkpoints.read(path), "video")
    assert rebuilt.net.attention_type == "mm_haa" and type(rebuilt.net.audio_modules) is MotionMaskedAudioAttention
    batch = make_batch(b=1, n=2)
    gen = lambda m: m.generate(batch, generator=torch.Generator().manual_seed(0))  # noqa: E731
    torch.testing.assert_close(gen(rebuilt), gen(old.eval()), rtol=0, atol=0)


# ----------------------------------------------------------------------------------------------- attention variants


@pytest.mark.parametrize(("name", "cls", "legacy"), [
    ("none", NoAudioAttention, {"type": "none"}),
    ("cross", CrossAudioAttention, {"type": "cross", "blocks": ["down"]}),
    ("haa", HierarchicalAudioAttention, {"type": "haa", "blocks": ["down"]}),
    ("mm_haa", MotionMaskedAudioAttention, {"type": "mm_haa", "blocks": ["down"]}),
    ("mm_haa_official", MotionMaskedAudioAttention, {"type": "mm_haa", "blocks": ["down"], "module": OFFICIAL}),
])
def test_attention_yaml_names_its_class_and_the_type_alias_builds_the_same_net(name: str, cls: type,
                                                                              legacy: dict) -> None:
    cfg = compose(f"attention={name}", "model.substage=b")
    assert cfg.attention["_target_"] == f"{cls.__module__}.{cls.__name__}"
    assert variant_class(cfg.attention)[0] is cls and variant_class(legacy)[0] is cls
    configured = from_config(f"attention={name}", "model.substage=b")
    torch.manual_seed(0)
    old = VideoModule(configured.hparams.net, attention=legacy, substage="b", data_info=INFO)
    a, b = configured.net.state_dict(), old.net.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert configured.net.attention_type == cls.alias == old.net.attention_type
    if name == "mm_haa_official":
        assert all(isinstance(m, OfficialAudioModule) for m in configured.net.audio_modules.values())


def test_attention_config_errors_name_the_key() -> None:
    base = {"_target_": "mmgt.models.video.attention.MotionMaskedAudioAttention", "blocks": ["down"]}
    with pytest.raises(ValueError, match="attention.type='haa' does not name"):
        VideoNet(VIDEO_NET, (5, 2, 8), {**base, "type": "haa"})
    with pytest.raises(ValueError, match="attention: .*blokcs"):
        VideoNet(VIDEO_NET, (5, 2, 8), {**base, "blokcs": ["down"]})
    with pytest.raises(ValueError, match="attention.type must be one of"):
        VideoNet(VIDEO_NET, (5, 2, 8), {"type": "mmhaa"})
    with pytest.raises(ValueError, match="branch_weights has 2 values"):
        VideoNet(VIDEO_NET, (5, 2, 8), {**base, "branch_weights": [1.0, 1.0]}, mask_branches=3)
    with pytest.raises(ValueError, match="selects no attention site"):  # the tiny UNet has two down blocks
        VideoNet(VIDEO_NET, (5, 2, 8), {**base, "blocks": ["down.7"]}, mask_branches=3)


def test_class_paths_from_configs_are_checked_before_import() -> None:
    """Only mmgt component classes of the expected kind are built; other paths are refused without importing."""
    from mmgt import checkpoints
    from mmgt.errors import CheckpointError

    for bad in ("torch.nn.Linear", "evil_pkg_xyz.Variant", "mmgt.models.video.attention.variant_class"):
        with pytest.raises(ValueError, match=r"attention\._target_"):
            VideoNet(VIDEO_NET, (5, 2, 8), {"_target_": bad})
        with pytest.raises(ValueError, match=r"size\.video\.backbone\._target_"):
            VideoNet({**VIDEO_NET, "unet": None, "backbone": {"_target_": bad}}, None, {"type": "none"})
        with pytest.raises(CheckpointError):
            checkpoints.check_stored_config({"net": {"backbone": {"_target_": bad}}}, "x.ckpt")
    assert "evil_pkg_xyz" not in sys.modules
    with pytest.raises(ValueError, match="not an audio attention variant"):  # an mmgt module, but not a variant
        VideoNet(VIDEO_NET, (5, 2, 8), {"_target_": "mmgt.models.video.unet.UNetBackbone"})
    with pytest.raises(ValueError, match="not an audio-module class"):
        VideoNet(VIDEO_NET, (5, 2, 8), {"type": "cross", "module": "os.system"})
    for stored in ("mmgt.models.video.audio_bias.AudioBiasAttention", "mmgt.models.video.conv_backbone.ConvBackbone"):
        checkpoints.check_stored_config({"attention": {"_target_": stored}}, "x.ckpt")  # mmgt components: allowed


# ----------------------------------------------------------------------------------------------- a new variant


def test_toy_attention_variant_from_config_trains_and_samples(tmp_path: Path) -> None:
    """``attention=audio_bias``: a gated per-channel audio bias at the UNet's down blocks, built only from config."""
    m = from_config("attention=audio_bias", "model.substage=b", "model.optim.lr=0.05",
                    "model.lr_scheduler.warmup_steps=0")
    net = m.net
    assert type(net.audio_modules) is AudioBiasAttention and net.attention_type == "audio_bias" and net.masked
    assert len(net.audio_modules) == 2 and all(isinstance(b, GatedAudioBias) for b in net.audio_modules.values())
    assert set(m.trainable_names) >= {n for n, _ in net.named_parameters() if n.startswith("audio_modules.")}
    batch = make_batch()
    silent = {k: v for k, v in batch.items() if k != "audio_emb"}
    gen = lambda b: m.generate(b, generator=torch.Generator().manual_seed(0))  # noqa: E731
    torch.testing.assert_close(gen(batch), gen(silent), rtol=0, atol=0)  # zero gates: no effect at init
    metrics = fit_one_step(m, tmp_path, frames=3)
    assert {"val/psnr", "val/loss"} <= set(metrics) and all(torch.isfinite(torch.tensor(v)) for v in metrics.values())
    assert all(float(b.gate.detach().abs().max()) > 0 for b in net.audio_modules.values())  # trained: the gates opened
    assert (gen(batch) - gen(silent)).abs().max() > 1e-5  # the audio now moves the samples
    no_masks = {**batch, "masks": torch.zeros_like(batch["masks"])}
    torch.testing.assert_close(gen(no_masks), gen(silent))  # region masks gate the bias


# ----------------------------------------------------------------------------------------------- a new backbone


def test_toy_backbone_from_size_preset_stage_a_then_b(tmp_path: Path) -> None:
    """``size=tiny_conv``: the conv backbone trains sub-stage A, hands over to sub-stage B with MM-HAA (the attention
    and data configs unchanged) and samples; its checkpoint rebuilds from the stored settings."""
    from mmgt import checkpoints

    a = from_config("size=tiny_conv")
    assert isinstance(a.net.backbone, ConvBackbone)
    names = list(a.net.state_dict())
    assert {"denoiser.conv_in.weight", "reference.0.weight"} <= set(names)
    assert not any(n.startswith(("denoising_unet.", "reference_unet.", "backbone.")) for n in names)
    groups = a.net.parameter_groups()
    assert all(n.startswith("denoiser.temporal.") for n, _ in groups["motion_modules"]) and groups["motion_modules"]
    assert all(n.startswith("reference.") for n, _ in groups["reference_unet"]) and groups["reference_unet"]
    assert set(a.hparams.trainable) == {"denoising_unet", "reference_unet", "pose_guider", "image_encoder"}
    metrics = fit_one_step(a, tmp_path / "a", frames=1)
    assert "val/psnr" in metrics and "val/psnr_copy_ref" in metrics

    b = from_config("size=tiny_conv", "model.substage=b", f"model.init_from={tmp_path / 'a' / 'last.ckpt'}")
    assert torch.equal(b.net.denoiser.conv_in.weight, a.net.denoiser.conv_in.weight)  # handed over from stage A
    assert list(b.net.audio_modules) == ["blocks_down"] and b.net.masked  # attention=mm_haa, blocks [down]
    frozen = {n: p.detach().clone() for n, p in b.net.named_parameters() if not p.requires_grad}
    before = {n: p.detach().clone() for n, p in b.net.named_parameters() if p.requires_grad}
    fit_one_step(b, tmp_path / "b", frames=3)
    assert all(torch.equal(p, frozen[n]) for n, p in b.net.named_parameters() if n in frozen)
    moved = [n for n, p in b.net.named_parameters() if n in before and not torch.equal(p, before[n])]
    assert any(n.startswith("denoiser.temporal.") for n in moved) and any(n.startswith("audio_") for n in moved)

    rebuilt = checkpoints.build_module(checkpoints.read(tmp_path / "b" / "last.ckpt"), "video")
    assert isinstance(rebuilt.net.backbone, ConvBackbone)
    batch = make_batch(b=1, n=3)
    out = rebuilt.generate(batch, generator=torch.Generator().manual_seed(0))
    assert out.shape == (1, 3, 3, 32, 32) and torch.isfinite(out).all()


def test_toy_backbone_reference_pairing_dropout_and_checkpointing() -> None:
    m = from_config("size=tiny_conv", "model.substage=b")
    net = m.net
    with torch.no_grad():  # give the zero-initialised temporal convs, pose guider and audio branches some weight
        for n, p in net.named_parameters():
            if n.startswith(("denoiser.temporal.", "pose_guider.embed.conv_out", "audio_modules.")):
                p.add_(0.05 * torch.randn_like(p))
    x = m._inputs(make_batch())
    lat = net.encode_frames(x["frames"])
    ref = net.encode_frames(x["ref"])
    emb = net.embed_reference(x["ref"])
    t = torch.tensor([10, 900])
    run = lambda r, **kw: net(lat, t, r, emb, x["pose"], x["audio"], x["masks"], **kw)  # noqa: E731
    with torch.no_grad():
        base = run(ref)
        assert (run(ref + 1.0) - base).abs().max() > 1e-5  # the reference bank is read
        drop = torch.tensor([True, False])
        torch.testing.assert_close(run(ref, drop_image=drop)[0], run(ref + 1.0, drop_image=drop)[0])
        assert (net(lat, t, ref, emb, x["pose"], None, None) - base).abs().max() > 1e-5  # audio reaches the sites
        assert (net(lat, t, ref, emb, torch.rand_like(x["pose"]), x["audio"], x["masks"]) - base).abs().max() > 1e-5
    assert net.reference_layers == ["reference"]

    def loss_and_grads() -> tuple[torch.Tensor, list[torch.Tensor]]:
        net.zero_grad()
        out = run(ref)
        out.square().mean().backward()
        return out.detach(), [p.grad.clone() for _, p in m._trainable_params()]

    net.train()
    plain = loss_and_grads()
    net.enable_gradient_checkpointing()
    ckpt = loss_and_grads()
    torch.testing.assert_close(ckpt[0], plain[0], rtol=0, atol=0)
    for g1, g2 in zip(ckpt[1], plain[1]):
        torch.testing.assert_close(g1, g2)


def test_backbone_config_errors() -> None:
    conv = {"_target_": "mmgt.models.video.conv_backbone.ConvBackbone", "width": 32, "context_dim": 16}
    with pytest.raises(ValueError, match="either `backbone` or `unet`"):
        VideoNet({**VIDEO_NET, "backbone": conv}, None, {"type": "none"})
    with pytest.raises(ValueError, match=r"size\.video\.backbone: .*widht"):
        VideoNet({**VIDEO_NET, "unet": None, "backbone": {**conv, "widht": 8}}, None, {"type": "none"})
    with pytest.raises(ValueError, match="set by VideoNet"):
        VideoNet({**VIDEO_NET, "unet": None, "backbone": {**conv, "latent_channels": 4}}, None, {"type": "none"})
    with pytest.raises(ValueError, match=r"size\.video: unknown key\(s\) \['backbnoe'\]"):
        VideoNet({**VIDEO_NET, "backbnoe": conv}, None, {"type": "none"})
    with pytest.raises(ValueError, match="must be down/mid/up"):
        VideoNet({**VIDEO_NET, "unet": None, "backbone": conv}, (5, 2, 8), {"type": "cross", "blocks": ["left"]})
    net = VideoNet({**VIDEO_NET, "unet": None, "backbone": conv}, (5, 2, 8), {"type": "haa", "blocks": ["mid", "up"]},
                   mask_branches=2)
    assert list(net.audio_modules) == ["blocks_mid", "blocks_up"] and net.n_branches == 2 and not net.masked
    assert net.eval().backbone.training is False and net.train().backbone.training is True
    net.double()  # conversions (dtype, device) reach the backbone, which holds the same child modules
    assert net.backbone.denoiser is net.denoiser and net.backbone.denoiser.conv_in.weight.dtype == torch.float64
