"""Strict loading of pretrained folders (tiny random models saved with the libraries' own ``save_pretrained``):
a missing / extra / unreadable tensor stops the run naming the folder, known extras pass, dtype and variant are
honoured, the motion-module layout comes from the adapter's config."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL, MotionAdapter, UNet2DConditionModel, UNetMotionModel
from safetensors.torch import load_file, save_file

from mmgt.models.pretrained import IncompleteWeightsError, MissingWeightsError, load_pretrained
from mmgt.models.video.codec import build_codec
from mmgt.models.video.encoders import build_image_encoder
from mmgt.models.video.unet import build_denoising_unet, build_reference_unet, unet2d_config

UNET = dict(block_out_channels=[16, 32], layers_per_block=1, down_blocks=["cross", "cross"], heads=2,
            cross_attention_dim=16, norm_num_groups=8, motion_heads=None, motion_max_seq_length=None,
            motion_norm="across_frames")


def _vae(**kw) -> AutoencoderKL:
    torch.manual_seed(0)
    return AutoencoderKL(block_out_channels=[8, 8], layers_per_block=1, down_block_types=["DownEncoderBlock2D"] * 2,
                         up_block_types=["UpDecoderBlock2D"] * 2, norm_num_groups=4, latent_channels=4, **kw)


def _edit(file: Path, drop: str | None = None, add: str | None = None) -> None:
    sd = load_file(str(file))
    if drop is not None:
        del sd[drop]
    if add is not None:
        sd[add] = torch.zeros(3)
    save_file(sd, str(file), metadata={"format": "pt"})


def _adapter(mid: bool, seq: int = 16) -> MotionAdapter:
    torch.manual_seed(1)
    ad = MotionAdapter(block_out_channels=(16, 32), motion_layers_per_block=1, motion_norm_num_groups=8,
                       motion_num_attention_heads=2, motion_max_seq_length=seq, use_motion_mid_block=mid)
    for p in ad.parameters():  # non-zero proj_out too, so a copied module is told from a fresh one
        p.data.normal_(0, 0.02)
    return ad


def test_missing_tensor_names_folder_key_and_tensor(tmp_path: Path) -> None:
    _vae().save_pretrained(tmp_path / "vae")
    _edit(tmp_path / "vae" / "diffusion_pytorch_model.safetensors", drop="decoder.conv_out.weight")
    with pytest.raises(IncompleteWeightsError) as err:
        build_codec(dict(type="vae", path=str(tmp_path / "vae")))
    msg = str(err.value)
    assert str(tmp_path / "vae") in msg and "size.video.codec.path" in msg and "decoder.conv_out.weight" in msg


def test_unknown_extra_tensor_is_refused(tmp_path: Path) -> None:
    _vae().save_pretrained(tmp_path / "vae")
    _edit(tmp_path / "vae" / "diffusion_pytorch_model.safetensors", add="encoder.surplus.weight")
    with pytest.raises(IncompleteWeightsError, match=r"encoder\.surplus\.weight"):
        load_pretrained(AutoencoderKL, tmp_path / "vae", key="k", what="vae")


def test_truncated_file_names_the_folder(tmp_path: Path) -> None:
    _vae().save_pretrained(tmp_path / "vae")
    f = tmp_path / "vae" / "diffusion_pytorch_model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(IncompleteWeightsError) as err:
        load_pretrained(AutoencoderKL, tmp_path / "vae", key="size.video.codec.path", what="vae")
    assert str(tmp_path / "vae") in str(err.value) and "diffusion_pytorch_model.safetensors" in str(err.value)


def test_complete_folder_loads_exactly(tmp_path: Path) -> None:
    vae = _vae()
    vae.save_pretrained(tmp_path / "vae")
    codec = build_codec(dict(type="vae", path=str(tmp_path / "vae")))
    for k, v in vae.state_dict().items():
        assert torch.equal(codec.vae.state_dict()[k], v), k


def test_variant_loads_fp16_only_folder_as_float32(tmp_path: Path) -> None:
    vae = _vae()
    vae.to(torch.float16).save_pretrained(tmp_path / "vae", variant="fp16")
    assert not (tmp_path / "vae" / "diffusion_pytorch_model.safetensors").exists()
    with pytest.raises(IncompleteWeightsError, match="vae"):  # no plain weight file: says which folder
        build_codec(dict(type="vae", path=str(tmp_path / "vae")))
    codec = build_codec(dict(type="vae", path=str(tmp_path / "vae"), variant="fp16"))
    assert codec.vae.dtype == torch.float32
    w = codec.vae.state_dict()["decoder.conv_out.weight"]
    assert torch.equal(w, vae.state_dict()["decoder.conv_out.weight"].float())
    z = codec.encode(torch.rand(1, 3, 16, 16) * 2 - 1)
    assert z.dtype == torch.float32 and codec.decode(z).dtype == torch.float32


def test_fp16_clip_encoder_loads_and_runs_in_float32(tmp_path: Path) -> None:
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    cfg = CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_attention_heads=2, num_hidden_layers=1,
                           image_size=32, patch_size=16, projection_dim=16)
    CLIPVisionModelWithProjection(cfg).half().save_pretrained(tmp_path / "clip")
    enc = build_image_encoder(dict(type="clip", path=str(tmp_path / "clip")), 16)
    assert enc.model.dtype == torch.float32
    out = enc(torch.rand(2, 3, 40, 48) * 2 - 1)  # crashed with "expected scalar type" when loaded as fp16
    assert out.shape == (2, 1, 16) and out.dtype == torch.float32
    half = build_image_encoder(dict(type="clip", path=str(tmp_path / "clip"), dtype="float16"), 16)
    assert half.model.dtype == torch.float16


def test_missing_unet_tensor_names_the_unet_folder(tmp_path: Path) -> None:
    UNet2DConditionModel(**unet2d_config(UNET, 4)).save_pretrained(tmp_path / "unet")
    _edit(tmp_path / "unet" / "diffusion_pytorch_model.safetensors", drop="up_blocks.0.resnets.0.conv1.weight")
    with pytest.raises(IncompleteWeightsError) as err:
        build_reference_unet(dict(UNET, pretrained=str(tmp_path / "unet")), 4)
    assert "size.video.unet.pretrained" in str(err.value) and "up_blocks.0.resnets.0.conv1.weight" in str(err.value)


@pytest.mark.parametrize("mid", [True, False])
def test_inflated_unet_equals_diffusers_from_unet2d(tmp_path: Path, mid: bool) -> None:
    """SD UNet + AnimateDiff adapter (with or without a mid-block module), built on meta and assigned, computes what
    diffusers' own ``from_unet2d`` copy computes; the layout (mid block, sequence length) is the adapter's."""
    torch.manual_seed(0)
    unet2d = UNet2DConditionModel(**unet2d_config(UNET, 4))
    unet2d.save_pretrained(tmp_path / "unet")
    adapter = _adapter(mid)
    adapter.save_pretrained(tmp_path / "adapter")
    cfg = dict(UNET, pretrained=str(tmp_path / "unet"), motion_adapter=str(tmp_path / "adapter"))
    unet = build_denoising_unet(cfg, 4)
    ref = UNetMotionModel.from_unet2d(unet2d, adapter)
    assert unet.config.use_motion_mid_block is mid and unet.config.motion_max_seq_length == 16
    assert hasattr(unet.mid_block, "motion_modules") is mid
    assert not any(t.is_meta for t in [*unet.parameters(), *unet.buffers()])
    x, t, ctx = torch.randn(1, 4, 3, 8, 8), torch.tensor([10]), torch.randn(3, 1, 16)
    with torch.no_grad():
        assert torch.equal(unet(x, t, ctx).sample, ref(x, t, ctx).sample)


def test_adapter_without_mid_block_on_a_random_unet(tmp_path: Path) -> None:
    """No pretrained SD UNet (``pretrained: null``) but an adapter without a mid-block module: builds, and every
    motion tensor is the adapter's (the hard-coded mid block crashed here)."""
    adapter = _adapter(mid=False)
    adapter.save_pretrained(tmp_path / "adapter")
    unet = build_denoising_unet(dict(UNET, motion_adapter=str(tmp_path / "adapter")), 4)
    assert not hasattr(unet.mid_block, "motion_modules")
    own = unet.state_dict()
    for k, v in adapter.state_dict().items():
        assert torch.equal(own[k], v), k


def test_yaml_conflicting_with_adapter_is_refused(tmp_path: Path) -> None:
    _adapter(mid=False).save_pretrained(tmp_path / "adapter")
    for key, value in [("motion_max_seq_length", 32), ("motion_mid_block", True)]:
        with pytest.raises(ValueError, match=rf"size\.video\.unet\.{key}"):
            build_denoising_unet(dict(UNET, motion_adapter=str(tmp_path / "adapter"), **{key: value}), 4)


def test_yaml_motion_mid_block_false_without_adapter() -> None:
    """A checkpoint of an adapter without mid block is rebuilt from its recorded YAML alone (no adapter folder)."""
    unet = build_denoising_unet(dict(UNET, motion_adapter="/not/needed", motion_mid_block=False), 4,
                                load_weights=False)
    assert not hasattr(unet.mid_block, "motion_modules")


def test_incomplete_adapter_names_the_adapter_folder(tmp_path: Path) -> None:
    _adapter(mid=True).save_pretrained(tmp_path / "adapter")
    name = "mid_block.motion_modules.0.proj_in.weight"
    _edit(tmp_path / "adapter" / "diffusion_pytorch_model.safetensors", drop=name)
    with pytest.raises(IncompleteWeightsError) as err:
        build_denoising_unet(dict(UNET, motion_adapter=str(tmp_path / "adapter")), 4)
    assert str(tmp_path / "adapter") in str(err.value) and name in str(err.value)


def test_empty_path_is_a_missing_weights_error() -> None:
    with pytest.raises(MissingWeightsError, match="size.video.codec.path"):
        build_codec(dict(type="vae", path=None))


def _controlnet_file(tmp_path: Path) -> Path:
    from diffusers.models.controlnets.controlnet import ControlNetConditioningEmbedding

    torch.manual_seed(0)
    emb = ControlNetConditioningEmbedding(16, 3, (8, 8, 16))
    f = tmp_path / "controlnet" / "diffusion_pytorch_model.safetensors"
    f.parent.mkdir()
    save_file({f"controlnet_cond_embedding.{k}": v.contiguous() for k, v in emb.state_dict().items()}, str(f))
    return f


def test_controlnet_missing_or_truncated_names_the_file(tmp_path: Path) -> None:
    from mmgt.models.video.pose_guider import PoseGuider

    f = _controlnet_file(tmp_path)
    PoseGuider(16, (8, 8, 16)).load_controlnet(str(f.parent))  # complete: loads
    _edit(f, drop="controlnet_cond_embedding.blocks.1.weight")
    with pytest.raises(ValueError, match=r"blocks\.1\.weight") as err:
        PoseGuider(16, (8, 8, 16)).load_controlnet(str(f.parent))
    assert str(f) in str(err.value)
    f.write_bytes(f.read_bytes()[:100])
    with pytest.raises(IncompleteWeightsError, match="truncated") as err:
        PoseGuider(16, (8, 8, 16)).load_controlnet(str(f.parent))
    assert str(f) in str(err.value)
