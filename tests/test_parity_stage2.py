"""Stage 2 against the official MMGT code: ``net-*.pth`` conversion and the converted VideoNet's outputs.

Golden fixtures (``$MMGT_OFFICIAL_FIXTURES/stage2``, default ``<repo>/../shared/fixtures/mmgt_official``) hold a tiny
official Net's state dict, inputs and the official outputs. Every size, setting and shape is read from the
fixture's files, so the same tests run on other fixture sets (seeds, sizes, frame counts, resolutions).

Error measure: ``rel(a, ref) = max|a - ref| / max|ref|`` (the largest deviation relative to the output's scale),
required <= 1e-5; known convention mistakes move the outputs by 3e-3 .. 7e-2 on this measure's scale.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from mmgt.models.video import VideoSampler, make_scheduler
from mmgt.models.video.mmhaa import AudioAttention, OfficialAudioModule, audio_module_class
from mmgt.models.video.unet import FrameGroupNorm, set_motion_norm
from mmgt.official import ConversionError
from mmgt.official.stage2 import (
    build_converted,
    convert_net,
    convert_net_shapes,
    is_official_net,
    official_name,
    official_video_hparams,
)

ROOT = Path(os.environ.get("MMGT_OFFICIAL_FIXTURES", Path(__file__).resolve().parents[1] / ".." / "shared" /
                           "fixtures" / "mmgt_official"))
FX = ROOT / "stage2"
TOL = 1e-5
BRANCHES = ("full", "face", "lip")  # official branch order (attn2_0, attn2_1, attn2_2)
STAND_IN = {"image_encoder": {"type": "conv", "channels": [8]}}  # CLIP embeddings come from the fixture


def rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    return float((a.double() - ref.double()).abs().max() / ref.double().abs().max())


@pytest.fixture(scope="module")
def fx() -> dict:
    if not (FX / "net.pth").is_file():
        pytest.skip(f"official stage-2 fixtures not found at {FX} (set MMGT_OFFICIAL_FIXTURES)")
    from safetensors.torch import load_file

    return dict(cfg=json.loads((FX / "config.json").read_text()), i=load_file(str(FX / "inputs.safetensors")),
                o=load_file(str(FX / "outputs.safetensors")), s=load_file(str(FX / "schedules.safetensors")))


def audio_shape(cfg: dict) -> tuple[int, int, int]:
    a = cfg["audioproj_kwargs"]
    return int(a["seq_len"]), int(a["blocks"]), int(a["channels"])


@pytest.fixture(scope="module")
def conversion(fx: dict):
    torch.set_num_threads(1)
    cfg = fx["cfg"]
    heads = int(cfg["reference_unet_config"]["attention_head_dim"])  # SD naming: this is the number of heads
    mk = cfg["unet_additional_kwargs"]["motion_module_kwargs"]
    return convert_net(FX / "net.pth", heads=heads, norm_groups=int(cfg["denoising_unet_config"]["norm_num_groups"]),
                       motion_heads=int(mk["num_attention_heads"]), audio_shape=audio_shape(cfg))


@pytest.fixture(scope="module")
def net(conversion):
    return build_converted(conversion, video=STAND_IN)


def levels(inp: dict, prefix: str = "") -> int:
    return len([k for k in inp if k.startswith(f"{prefix}lip_mask.level")])


def train_masks(inp: dict) -> list[torch.Tensor]:
    """Official (B, F, 1, h, w) full / face / lip masks per level -> mmgt levels (B, K, F, h, w)."""
    return [torch.stack([inp[f"{n}_mask.level{lv}"][:, :, 0] for n in BRANCHES], 1) for lv in range(levels(inp))]


def module_for(net, official_module: str) -> torch.nn.Module:
    """The mmgt module whose tensors are exactly the official module's (via the converter's name mapping)."""
    best = None
    for name, mod in net.named_modules():
        keys = list(mod.state_dict())
        inside = name and keys and all(official_name(f"{name}.{k}").startswith(official_module + ".") for k in keys)
        if inside and (best is None or len(name) < len(best[0])):
            best = (name, mod)
    assert best is not None, f"no mmgt module for {official_module}"
    return best[1]


def frames_in(x: torch.Tensor) -> torch.Tensor:  # (B, C, F, h, w) -> (B·F, C, h, w), batch-major
    return x.transpose(1, 2).flatten(0, 1)


def frames_out(y: torch.Tensor, b: int) -> torch.Tensor:
    return y.view(b, -1, *y.shape[1:]).transpose(1, 2)


# ------------------------------------------------------------------------------------------------ conversion
def test_conversion_places_every_tensor_and_infers_the_fixture_config(fx: dict, conversion) -> None:
    cfg, keys = fx["cfg"], fx["cfg"]["net_state_dict_keys"]
    placed = {official_name(k) for k in conversion.state_dict}
    assert placed | set(conversion.unused) == set(keys)
    assert all(k.endswith("pos_encoder.pe") for k in conversion.unused)
    assert all(v.dtype == torch.float32 for v in conversion.state_dict.values())
    assert is_official_net(keys) and not is_official_net(conversion.state_dict)
    unet = conversion.config["video"]["unet"]
    assert unet["block_out_channels"] == cfg["denoising_unet_config"]["block_out_channels"]
    assert unet["layers_per_block"] == cfg["denoising_unet_config"]["layers_per_block"]
    assert unet["cross_attention_dim"] == cfg["denoising_unet_config"]["cross_attention_dim"]
    mk = cfg["unet_additional_kwargs"]["motion_module_kwargs"]
    assert unet["motion_max_seq_length"] == mk["temporal_position_encoding_max_len"]
    ap = conversion.config["video"]["audio_proj"]
    a = cfg["audioproj_kwargs"]
    assert (ap["hidden_dim"], ap["tokens"], ap["dim"]) == (a["intermediate_dim"], a["context_tokens"], a["output_dim"])
    assert conversion.config["video"]["pose_guider"]["channels"] == cfg["pose_guider_kwargs"]["block_out_channels"]


def test_full_size_key_list_converts_on_meta_device() -> None:
    path = ROOT / "keys" / "stage_2__process_2__net-32500.pth.json"
    if not path.is_file():
        pytest.skip(f"full-size key lists not found at {path}")
    listing = json.loads(path.read_text())
    conv = convert_net_shapes(listing["tensors"], source=path.name)
    assert len(conv.state_dict) + len(conv.unused) == listing["n_tensors"]
    assert all(v.device.type == "meta" for v in conv.state_dict.values())
    net = build_converted(conv, meta=True)  # every VideoNet tensor outside VAE / CLIP / unused head is filled
    assert net.denoising_unet.config.block_out_channels[0] == listing["tensors"]["denoising_unet.conv_in.weight"][0]
    hp = official_video_hparams(conv, weights_dir="/w")
    assert hp["sampling"]["beta_schedule"] == "linear" and hp["net"]["codec"]["path"] == "/w/sd-vae-ft-mse"


def test_wrong_files_are_refused(fx: dict, tmp_path: Path) -> None:
    keys = ROOT / "keys"
    for name in ("stage_2__process_1__denoising_unet-29580.pth.json", "stage_2__process_1__pose_guider-29580.pth.json"):
        if (keys / name).is_file():
            with pytest.raises(ConversionError, match="sub-stage A"):
                convert_net_shapes(json.loads((keys / name).read_text())["tensors"])
    smga = tmp_path / "audio2pose.pt"
    torch.save({"ema_state_dict": {"input_projection.weight": torch.zeros(2, 2)}, "epoch": 1}, smga)
    with pytest.raises(ConversionError, match="stage-1"):
        convert_net(smga)
    shapes = {k: v["shape"] for k, v in fx["cfg"]["net_state_dict_keys"].items()}
    gone = next(k for k in shapes if ".audio_modules." in k and "zero_conv_lip" in k)
    with pytest.raises(ConversionError, match=r"missing.*zero_conv_lip"):
        convert_net_shapes({k: v for k, v in shapes.items() if k != gone}, audio_shape=audio_shape(fx["cfg"]))
    with pytest.raises(ConversionError, match="no place.*extra"):
        convert_net_shapes({**shapes, "denoising_unet.extra.weight": [2]}, audio_shape=audio_shape(fx["cfg"]))
    with pytest.raises(ConversionError, match="audio_shape"):
        convert_net_shapes(shapes, audio_shape=(5, 12, 768 * 2))


# ------------------------------------------------------------------------------------------------ units
def test_pose_guider_and_audio_projection(fx: dict, net) -> None:
    i, o = fx["i"], fx["o"]
    with torch.no_grad():
        pose = net.pose_guider(frames_in(i["pose_vid"]))
        tokens = net.audio_proj(i["audio_emb"])
    assert rel(frames_out(pose, i["pose_vid"].shape[0]), o["pose_fea"]) <= TOL
    assert rel(tokens, o["audio_tokens"]) <= TOL


def test_motion_module_unit(fx: dict, net) -> None:
    x = fx["i"]["mm_unit_input"]
    mod = module_for(net, fx["cfg"]["mm_unit_module"])
    with torch.no_grad():
        y = frames_out(mod(frames_in(x), num_frames=x.shape[2]), x.shape[0])
    assert rel(y, fx["o"]["mm_unit_output"]) <= TOL


@pytest.mark.parametrize("scaled", [False, True])
def test_audio_module_unit(fx: dict, net, scaled: bool) -> None:
    i, o, cfg = fx["i"], fx["o"], fx["cfg"]
    x = i["audio_unit_input"]
    b, _, f, h, w = x.shape
    mod = module_for(net, cfg["audio_unit_module"])
    assert isinstance(mod, OfficialAudioModule)
    level = next(m for m in train_masks(i) if tuple(m.shape[-2:]) == (h, w))  # the block's resolution
    masks = level.transpose(1, 2).flatten(0, 1)  # (B·F, K, h, w)
    weights = cfg["motion_scale_train_cfg"] if scaled else None
    with torch.no_grad():
        y = frames_out(mod(frames_in(x), o["audio_tokens"].flatten(0, 1), masks, weights), b)
    assert rel(y, o["audio_unit_output_motion_scale" if scaled else "audio_unit_output"]) <= TOL


# ------------------------------------------------------------------------------------------------ Net forward
@pytest.mark.parametrize("case", ["pred_train", "pred_train_ckpt_motion_scale", "pred_uncond_audio",
                                  "pred_uncond_img", "pred_uncond_img_audio"])
def test_net_forward_paths(fx: dict, net, case: str) -> None:
    i, o, cfg = fx["i"], fx["o"], fx["cfg"]
    b = i["noisy_latents"].shape[0]
    no_ref = case in ("pred_uncond_img", "pred_uncond_img_audio")  # official: reference UNet skipped, CLIP kept
    drop_audio = torch.ones(b, dtype=torch.bool) if case.endswith("audio") else None
    weights = cfg["motion_scale_train_cfg"] if case == "pred_train_ckpt_motion_scale" else None
    with torch.no_grad():
        pred = net(i["noisy_latents"], i["timesteps"], None if no_ref else i["ref_image_latents"],
                   i["clip_image_embeds"], i["pose_vid"].transpose(1, 2), i["audio_emb"], train_masks(i), weights,
                   drop_audio=drop_audio)
    assert rel(pred, o[case]) <= TOL


def test_reference_bank_is_the_official_one(fx: dict, net) -> None:
    i, o = fx["i"], fx["o"]
    with torch.no_grad():
        bank = net.encode_reference(i["ref_image_latents"], i["clip_image_embeds"])
    names = [k for k in o if k.startswith("bank.")]
    assert len(names) == len(bank)
    for k in names:
        assert bank[k[len("bank."):] + ".attn1"].dtype == torch.float16
        assert rel(bank[k[len("bank."):] + ".attn1"], o[k]) <= TOL


def test_motion_only_unet(fx: dict, net) -> None:
    i = fx["i"]
    f = i["noisy_latents"].shape[2]
    net.ctx.reset()  # no bank, no pose features, no audio: the plain motion UNet
    with torch.no_grad():
        pred = net.denoising_unet(i["noisy_latents"], i["timesteps"],
                                  encoder_hidden_states=i["clip_image_embeds"].repeat_interleave(f, 0),
                                  return_dict=False)[0]
    assert rel(pred, fx["o"]["pred_motion_only"]) <= TOL


# ------------------------------------------------------------------------------------------------ loss, schedules
def scheduler(cfg: dict):
    sched = make_scheduler(num_train_timesteps=int(cfg.get("num_train_timesteps", 1000)),
                           beta_start=cfg["beta_start"], beta_end=cfg["beta_end"], beta_schedule=cfg["beta_schedule"])
    for k in ("steps_offset", "clip_sample", "rescale_betas_zero_snr", "timestep_spacing", "prediction_type"):
        assert sched.config[k] == cfg[k], k  # make_scheduler's fixed settings are the official ones
    return sched


@pytest.mark.parametrize("which", ["train", "val", "infer"])
def test_schedules(fx: dict, which: str) -> None:
    key = {"train": "train_noise_scheduler", "val": "val_noise_scheduler", "infer": "inference_scheduler"}[which]
    assert rel(scheduler(fx["cfg"][key]).alphas_cumprod, fx["s"][f"{which}_alphas_cumprod"]) <= TOL


def test_training_loss(fx: dict) -> None:
    from mmgt.lit.video import snr_weights

    i, o = fx["i"], fx["o"]
    sched = scheduler(fx["cfg"]["train_noise_scheduler"])
    noise = i["noise"] + 0.05 * i["noise_offset_term"]
    t = i["timesteps"]
    assert rel(sched.add_noise(i["latents_x0"], noise, t), i["noisy_latents"]) <= TOL
    target = sched.get_velocity(i["latents_x0"], noise, t)
    assert rel(target, o["v_target"]) <= TOL
    w = snr_weights(sched.alphas_cumprod, t, 5.0, plus_one=True)
    assert rel(w, o["min_snr_weight"]) <= TOL
    loss = ((o["pred_train"] - target).square().flatten(1).mean(1) * w).mean()
    assert rel(loss.reshape(1), o["loss"]) <= TOL


# ------------------------------------------------------------------------------------------------ pipeline
class _StubCodec(torch.nn.Module):
    """What the official pipeline's stubbed VAE returns (its latent mean), scaled like the SD VAE."""

    def __init__(self, mean: torch.Tensor, scale: float = 0.18215) -> None:
        super().__init__()
        self.mean, self.scale, self.factor, self.latent_channels = mean, scale, 8, mean.shape[1]

    def encode(self, images: torch.Tensor, sample: bool = False) -> torch.Tensor:
        return self.mean * self.scale

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return latents


class _StubEncoder(torch.nn.Module):
    def __init__(self, embeds: torch.Tensor) -> None:
        super().__init__()
        self.embeds = embeds

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.embeds


def test_pipeline_latents_per_step(fx: dict, conversion) -> None:
    i, o, cfg = fx["i"], fx["o"], fx["cfg"]
    net = build_converted(conversion, video=STAND_IN)
    net.codec = _StubCodec(i["pipe_vae_latent_mean"])
    net.image_encoder = _StubEncoder(i["clip_image_embeds"][:1])
    init = i["pipe_init_latents"]
    _, _, f, h, w = init.shape
    masks = []
    for lv in range(levels(i, "pipe_")):
        lip, face = i[f"pipe_lip_mask.level{lv}"], i[f"pipe_face_mask.level{lv}"]
        hl, wl = h >> lv, w >> lv
        assert lip.shape[-1] == hl * wl
        masks.append(torch.stack([1 + lip, face, lip]).view(1, 3, f, hl, wl))  # audio2vid: full = 1 + lips
    sched = scheduler(cfg["train_noise_scheduler"])  # the module's one schedule; sampling overrides the betas
    sampler = VideoSampler(net, sched, steps=int(cfg["pipe_steps"]), guidance=float(cfg["guidance_scale"]),
                           context_frames=f, context_overlap=0, eta=0.0,
                           beta_schedule=cfg["inference_scheduler"]["beta_schedule"])
    assert rel(sampler.scheduler.alphas_cumprod, fx["s"]["infer_alphas_cumprod"]) <= TOL
    pose = i["pipe_pose_images_uint8"].permute(0, 3, 1, 2)[None].float() / 255
    audio = i["audio_emb"][:1]
    with torch.no_grad():
        assert rel(net.audio_proj(audio), o["pipe_audio_tokens"]) <= TOL
    steps: list[torch.Tensor] = []
    sampler(torch.zeros(1, 3, h * 8, w * 8), pose, audio, masks, cfg["motion_scale_inference"], latents=init,
            on_step=lambda k, x: steps.append(x.clone()))
    assert torch.equal(sampler.scheduler.timesteps.long(), o["pipe_timesteps"])
    ref = o["pipe_latents_per_step"]
    assert len(steps) == ref.shape[0]
    for k, x in enumerate(steps):
        assert rel(x, ref[k]) <= TOL, f"step {k}"


# ------------------------------------------------------------------------------------------------ options
def test_per_frame_motion_norm_differs_from_cross_frame() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 8, 3, 4, 5) * torch.linspace(0.5, 3, 3).view(1, 1, 3, 1, 1)  # frames of different scale
    norm = FrameGroupNorm(4, 8)
    per_frame = torch.stack([torch.nn.functional.group_norm(x[:, :, j], 4, eps=norm.eps) for j in range(3)], 2)
    torch.testing.assert_close(norm(x), per_frame)
    assert (norm(x) - torch.nn.functional.group_norm(x, 4, eps=norm.eps)).abs().max() > 0.1
    from diffusers.models.unets.unet_motion_model import AnimateDiffTransformer3D

    mm = AnimateDiffTransformer3D(num_attention_heads=2, attention_head_dim=4, in_channels=8, norm_num_groups=4,
                                  positional_embeddings="sinusoidal", num_positional_embeddings=8)
    holder = torch.nn.ModuleDict({"m": mm})
    h = x.transpose(1, 2).flatten(0, 1)
    with torch.no_grad():
        across = mm(h, num_frames=3)
        set_motion_norm(holder, "per_frame")
        assert isinstance(mm.norm, FrameGroupNorm) and "norm.weight" in mm.state_dict()
        assert (mm(h, num_frames=3) - across).abs().max() > 1e-3
        set_motion_norm(holder, "across_frames")
        torch.testing.assert_close(mm(h, num_frames=3), across)


def test_official_audio_block_shapes_and_zero_init() -> None:
    torch.manual_seed(0)
    cls = audio_module_class("mmgt.models.video.mmhaa.OfficialAudioModule")
    assert cls is OfficialAudioModule and audio_module_class(None) is AudioAttention
    mod = cls.from_layer(32, 16, audio_dim=6, n_branches=3, heads=4, norm_groups=8)  # layer 0: inner = input width
    assert mod.proj_in.weight.shape == (16, 32, 1, 1) and mod.proj_out.weight.shape == (32, 16, 1, 1)
    h, a = torch.randn(4, 32, 3, 5), torch.randn(4, 2, 6)  # non-square map
    with torch.no_grad():
        base = mod(h, a, None, None)
        assert base.shape == h.shape and (base - h).abs().max() > 1e-3  # not an identity (as MMGT)
        torch.testing.assert_close(mod(h, torch.randn(4, 2, 6), None, [1.0, 2.0, 3.0]), base)  # audio inert at init
        for p in mod.proj:
            torch.nn.init.normal_(p.weight, std=0.3)
        masks = torch.zeros(4, 3, 3, 5)
        torch.testing.assert_close(mod(h, a, masks, None), mod(h, torch.randn(4, 2, 6), masks, None))
        assert (mod(h, a, None, [1.0, 1.0, 2.0]) - mod(h, a, None, None)).abs().max() > 1e-4
    with pytest.raises(ValueError, match="not an audio-module class"):
        audio_module_class("torch.nn.Linear")


def test_linear_betas_for_sampling() -> None:
    train = make_scheduler()
    sampler = VideoSampler(None, train, beta_schedule="linear")  # type: ignore[arg-type]
    lin = make_scheduler(beta_schedule="linear")
    torch.testing.assert_close(sampler.scheduler.alphas_cumprod, lin.alphas_cumprod)
    assert (sampler.scheduler.alphas_cumprod - train.alphas_cumprod).abs().max() > 1e-2
    assert VideoSampler(None, train).scheduler.config.beta_schedule == "scaled_linear"  # type: ignore[arg-type]
