"""Stage-2 network parts: MM-HAA semantics, reference attention, codec, variants, paper-size layout."""

from __future__ import annotations

import pytest
import torch

from mmgt.models.video import (
    AudioAttention,
    MaskPyramid,
    MissingWeightsError,
    PixelCodec,
    VideoNet,
    VideoSampler,
    context_windows,
    make_scheduler,
)
from mmgt.models.video.unet import SD15_UNET
from tiny_configs import VIDEO_NET

TINY = VIDEO_NET
AUDIO = (5, 2, 8)  # window, layers, dim
B, F, H, W = 2, 3, 32, 48  # non-square frames -> 8x12 latents



def build(attention: str = "mm_haa", blocks=("down", "mid", "up"), k: int = 3, seed: int = 0,
          module: str | None = None) -> VideoNet:
    torch.manual_seed(seed)
    return VideoNet(TINY, AUDIO, attention, blocks, k, attention_module=module)


def inputs(k: int = 3, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.rand(*s, generator=g)  # noqa: E731
    return dict(noisy_latents=torch.randn(B, 48, F, H // 4, W // 4, generator=g), timesteps=torch.tensor([3, 700]),
                ref_latents=torch.randn(B, 48, H // 4, W // 4, generator=g),
                ref_embed=torch.randn(B, 1, 16, generator=g),
                pose_images=r(B, F, 3, H, W), audio_emb=torch.randn(B, F, *AUDIO, generator=g),
                masks=r(B, k, F, H // 4, W // 4))


def randomise_branches(net: VideoNet, only: list[int] | None = None) -> None:
    """Give the zero-initialised branch projections random weights (as training would)."""
    g = torch.Generator().manual_seed(7)
    for mod in net.audio_modules.values():
        for i, p in enumerate(mod.proj):
            if only is None or i in only:
                p.weight.data = torch.randn(p.weight.shape, generator=g) * 0.2


def test_pixel_codec_is_exactly_invertible() -> None:
    codec = PixelCodec(factor=4)
    x = torch.rand(2, 3, 32, 48) * 2 - 1
    z = codec.encode(x)
    assert z.shape == (2, 48, 8, 12)
    assert torch.equal(codec.decode(z), x)
    with pytest.raises(ValueError, match="divisible"):
        codec.encode(torch.zeros(1, 3, 30, 32))


def test_audio_attention_module_zero_init_linear_weights_and_masks() -> None:
    torch.manual_seed(0)
    mod = AudioAttention(16, 8, n_branches=2, heads=2)
    h, a = torch.randn(4, 16, 5, 7), torch.randn(4, 3, 8)  # non-square 5x7 map
    assert torch.equal(mod(h, a, None, [1.0, 1.0]), h)  # zero-initialised projections: exact identity
    for p in mod.proj:
        torch.nn.init.normal_(p.weight, std=0.3)
    d1 = mod(h, a, None, [1.0, 0.0]) - h
    d2 = mod(h, a, None, [2.5, 0.0]) - h
    assert d1.abs().max() > 1e-3
    torch.testing.assert_close(d2, 2.5 * d1)  # weights scale the branch output
    masks = torch.ones(4, 2, 5, 7)
    masks[:, 1] = 0
    torch.testing.assert_close(mod(h, a, masks, [1.0, 3.0]), mod(h, a, None, [1.0, 0.0]))  # zero mask = no branch
    with pytest.raises(ValueError, match="branches"):
        mod(h, a, None, [1.0, 1.0, 1.0])


def test_zero_initialised_branches_leave_unet_output_unchanged() -> None:
    net = build()
    x = inputs()
    with torch.no_grad():
        base = net(**{**x, "audio_emb": None})  # audio modules skipped
        full = net(**x, branch_weights=[1.0, 2.0, 3.0])
        assert torch.equal(full, base)
        for k in range(3):  # each zero branch alone is still a no-op once the others are trained
            randomise_branches(net, only=[j for j in range(3) if j != k])
            w = [1.0, 1.0, 1.0]
            with_k = net(**x, branch_weights=w)
            w[k] = 0.0
            torch.testing.assert_close(with_k, net(**x, branch_weights=w))
            for mod in net.audio_modules.values():
                for p in mod.proj:
                    p.weight.data.zero_()


def test_zero_mask_removes_branch_and_weights_scale() -> None:
    net = build()
    randomise_branches(net)
    x = inputs()
    with torch.no_grad():
        ref = net(**x, branch_weights=[1.0, 1.0, 1.0])
        for k in range(3):
            m = x["masks"].clone()
            m[:, k] = 0
            w = [1.0, 1.0, 1.0]
            w[k] = 0.0
            masked = net(**{**x, "masks": m}, branch_weights=[1.0, 1.0, 1.0])
            torch.testing.assert_close(masked, net(**x, branch_weights=w))
            assert (masked - ref).abs().max() > 1e-5  # the branch did contribute before
        zero = net(**x, branch_weights=[0.0, 0.0, 0.0])
        torch.testing.assert_close(zero, net(**{**x, "audio_emb": None}))
        assert (net(**x, branch_weights=[2.0, 1.0, 1.0]) - ref).abs().max() > 1e-5


def test_sampler_applies_branch_weights() -> None:
    net = build().eval()
    randomise_branches(net)
    x = inputs()
    sampler = VideoSampler(net, make_scheduler(), steps=2, guidance=2.0, context_frames=2, context_overlap=1)
    ref_frame = torch.rand(B, 3, H, W) * 2 - 1
    run = lambda **kw: sampler(ref_frame, x["pose_images"], x["audio_emb"], x["masks"],  # noqa: E731
                               generator=torch.Generator().manual_seed(0), **kw)
    silent = sampler(ref_frame, x["pose_images"], None, None, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(run(branch_weights=[0.0, 0.0, 0.0]), silent)
    assert (run(branch_weights=[1.0, 2.0, 3.0]) - silent).abs().max() > 1e-4
    assert silent.shape == (B, F, 3, H, W)


def test_reference_attention_and_image_dropout() -> None:
    net = build("none")
    x = inputs()
    with torch.no_grad():
        a = net(**x)
        other = {**x, "ref_latents": x["ref_latents"] + 1.0}
        assert (net(**other) - a).abs().max() > 1e-4  # the reference is read
        drop = torch.tensor([True, False])
        d1 = net(**x, drop_image=drop)
        d2 = net(**other, drop_image=drop)
        torch.testing.assert_close(d1[0], d2[0])  # dropped sample ignores the reference entirely
        assert (d1[1] - d2[1]).abs().max() > 1e-4
        # precomputed bank == computing it in forward
        bank = net.encode_reference(x["ref_latents"], x["ref_embed"])
        torch.testing.assert_close(net(**{**x, "ref_latents": None}, reference=bank), a)


def test_pose_guider_starts_at_zero() -> None:
    net = build("none")
    x = inputs()
    with torch.no_grad():
        assert torch.equal(net(**x), net(**{**x, "pose_images": torch.rand_like(x["pose_images"])}))


OFFICIAL = "mmgt.models.video.mmhaa.OfficialAudioModule"


@pytest.mark.parametrize(("attention", "module"), [("none", None), ("cross", None), ("haa", None), ("mm_haa", None),
                                                   ("cross", OFFICIAL), ("haa", OFFICIAL), ("mm_haa", OFFICIAL)])
def test_attention_variants_build_and_train_a_step(attention: str, module: str | None) -> None:
    net = build(attention, blocks=("down",), module=module)
    n_mod = {"none": 0}.get(attention, 2)  # tiny: 2 down blocks with attention, 1 layer each
    assert len(net.audio_modules) == n_mod
    if module is not None:  # MMGT's block sizes layer 0 by the block's input width (16 -> 32 in down block 1)
        widths = [m.proj_in.weight.shape[:2] for m in net.audio_modules.values()]
        assert widths == [(16, 16), (16, 32)]
    k = {"none": 0, "cross": 1}.get(attention, 3)
    assert all(len(m.attn) == k for m in net.audio_modules.values())
    trainable = ["motion_modules", "audio_proj", "audio_modules"] if attention != "none" else ["motion_modules"]
    net.set_trainable(trainable)
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.1)
    x = inputs(k=max(k, 1))
    out = net(**{**x, "masks": x["masks"] if attention == "mm_haa" else None})
    assert out.shape == x["noisy_latents"].shape
    out.square().mean().backward()
    opt.step()
    if attention != "none":
        # the zero projections get gradients and move, so the audio path becomes active
        assert any(m.proj[0].weight.abs().sum() > 0 for m in net.audio_modules.values())


def test_unet_config_refuses_unknown_keys_and_motion_norm_default() -> None:
    from mmgt.models.video.unet import FrameGroupNorm, motion_norm_mode

    with pytest.raises(ValueError, match="unknown key"):
        VideoNet({**TINY, "unet": {**TINY["unet"], "motion_nrom": "per_frame"}}, None, "none", [], 0)
    with pytest.raises(ValueError, match="motion_norm"):
        VideoNet({**TINY, "unet": {**TINY["unet"], "motion_norm": "frames"}}, None, "none", [], 0)
    assert motion_norm_mode({"motion_adapter": "/x"}) == "per_frame"  # AnimateDiff weights: their convention
    assert motion_norm_mode({"motion_adapter": None}) == "across_frames"  # random init: diffusers' module as is
    net = VideoNet({**TINY, "unet": {**TINY["unet"], "motion_norm": "per_frame"}}, None, "none", [], 0)
    norms = [m.norm for n, m in net.denoising_unet.named_modules() if n.endswith(("motion_modules.0",))]
    assert norms and all(isinstance(m, FrameGroupNorm) for m in norms)
    assert not any(isinstance(m, FrameGroupNorm) for m in build("none").modules())


def test_mm_haa_requires_masks_and_resizes_them_per_resolution() -> None:
    net = build()
    x = inputs()
    with pytest.raises(ValueError, match="masks"):
        net(**{**x, "masks": None})
    m = torch.rand(1, 2, 3, 8, 12)
    pyr = MaskPyramid(m)
    frames = m.permute(0, 2, 1, 3, 4).reshape(3, 2, 8, 12)
    assert torch.equal(pyr.at((8, 12)), frames)  # the given size as it is
    # area: each cell is the mean of the block it covers (computed independently by reshaping)
    torch.testing.assert_close(pyr.at((4, 6)), frames.reshape(3, 2, 4, 2, 6, 2).mean((3, 5)))
    torch.testing.assert_close(pyr.at((2, 3)), frames.reshape(3, 2, 2, 4, 3, 4).mean((3, 5)))
    assert pyr.at((16, 24)).shape == (3, 2, 16, 24)  # growing: bilinear
    exact = MaskPyramid([m, torch.zeros(1, 2, 3, 4, 6)])  # exact levels (the original's own pyramid) win
    assert (exact.at((4, 6)) == 0).all()
    with pytest.raises(ValueError, match="resize mode"):
        MaskPyramid(m, "nearest")


def test_pil_mask_resize_is_the_originals_torchvision_resize() -> None:
    """resize="pil": what the original's dataset did to its uint8 masks (torchvision Resize on PIL + ToTensor), for
    8-bit levels and for its "1 + lips" masks (values in [1, 2]), shrinking and growing, non-square."""
    from PIL import Image
    from torchvision import transforms

    g = torch.Generator().manual_seed(0)
    u8 = torch.randint(0, 256, (2, 3, 4, 20, 20), generator=g, dtype=torch.uint8)
    u8[:, 0] = 0  # an empty mask stays empty
    masks = u8.float() / 255
    masks[:, 1] += 1.0  # a "1 + lips" branch
    pyr = MaskPyramid(masks, "pil")
    for size in ((10, 10), (5, 5), (7, 13), (32, 24)):
        tf = transforms.Compose([transforms.Resize(size), transforms.ToTensor()])
        want = torch.stack([tf(Image.fromarray(f.numpy()))[0] for f in u8.permute(0, 2, 1, 3, 4).reshape(-1, 20, 20)])
        want = want.reshape(8, 3, *size)
        want[:, 1] += 1.0
        torch.testing.assert_close(pyr.at(size), want, rtol=0, atol=1e-6)


def test_stage_groups_and_trainable() -> None:
    net = build()
    names = net.set_trainable(["motion_modules", "audio_proj", "audio_modules"])
    assert names and all(n.startswith(("audio_", "denoising_unet")) for n in names)
    assert all(".motion_modules." in n for n in names if n.startswith("denoising_unet"))
    assert not any(p.requires_grad for p in net.reference_unet.parameters())
    with pytest.raises(ValueError, match="unknown trainable"):
        net.set_trainable(["vae"])


def test_context_windows_cover_all_frames() -> None:
    assert context_windows(5, 12, 4) == [list(range(5))]
    wins = context_windows(20, 12, 4)
    assert wins[0][0] == 0 and wins[-1][-1] == 19 and all(len(w) == 12 for w in wins)
    assert set(sum(wins, [])) == set(range(20))
    assert len(context_windows(28, 12, 4)) == 3 and len(context_windows(30, 12, 4)) == 4


def test_full_size_builds_on_meta_with_sd15_layout() -> None:
    cfg = dict(codec=dict(type="vae"), image_encoder=dict(type="clip"), unet=dict(SD15_UNET),
               pose_guider=dict(channels=[16, 32, 96, 256]), audio_proj=dict(hidden_dim=512, tokens=32, dim=768),
               audio_attention=dict(heads=8))
    with torch.device("meta"):
        net = VideoNet(cfg, (5, 12, 768), "mm_haa", ["down"], 3, load_weights=False)
    assert net.denoising_unet.config.block_out_channels == (320, 640, 1280, 1280)
    assert sum(p.numel() for p in net.reference_unet.parameters()) == 859_520_964  # SD-1.5 UNet
    assert len(net.audio_modules) == 6  # 3 cross-attn down blocks x 2 layers, as MMGT
    assert net.codec.factor == 8 and net.codec.latent_channels == 4
    assert all(p.device.type == "meta" for p in net.parameters())


def test_missing_pretrained_file_names_file_and_key(tmp_path) -> None:
    cfg = dict(TINY, codec=dict(type="vae", path=str(tmp_path / "sd-vae-ft-mse")))
    with pytest.raises(MissingWeightsError, match=r"size\.video\.codec\.path.*|sd-vae-ft-mse"):
        VideoNet(cfg, AUDIO, "mm_haa", ["down"], 3)
    cfg = dict(TINY, unet=dict(TINY["unet"], pretrained=str(tmp_path / "unet")))
    with pytest.raises(MissingWeightsError) as err:
        VideoNet(cfg, AUDIO, "mm_haa", ["down"], 3)
    assert "size.video.unet.pretrained" in str(err.value) and str(tmp_path / "unet") in str(err.value)


def test_sampler_with_oracle_denoiser_recovers_target() -> None:
    """With the exact v of a known target, DDIM (zero-SNR, trailing, same schedule as training) + CFG + overlapping
    context windows reconstruct the target: sampling and the training parameterisation agree."""
    net = build("none").eval()
    sched = make_scheduler()
    f = 7
    z0 = torch.randn(1, 48, f, H // 4, W // 4, generator=torch.Generator().manual_seed(3)).clamp(-1, 1)
    pose = torch.arange(f, dtype=torch.float32).view(1, f, 1, 1, 1).expand(1, f, 3, H, W) / 100  # encodes frame idx
    acp = sched.alphas_cumprod

    def oracle(x, t, ref_latents, ref_embed, pose_images, *args, **kwargs):
        idx = (pose_images[:, :, 0, 0, 0] * 100).round().long()[0]
        target = z0[:, :, idx].expand_as(x)
        a = acp[t].view(-1, 1, 1, 1, 1).to(x.dtype)
        eps = (x - a.sqrt() * target) / (1 - a).sqrt().clamp_min(1e-6)
        return a.sqrt() * eps - (1 - a).sqrt() * target

    net.forward = oracle
    sampler = VideoSampler(net, sched, steps=8, guidance=3.0, context_frames=4, context_overlap=2)
    out = sampler(torch.zeros(1, 3, H, W), pose, None, None, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, net.decode_latents(z0), atol=1e-4, rtol=0)


def test_all_dropped_images_keep_reference_unet_in_graph() -> None:
    """Every sample drops the image: output equals plain self-attention, yet the reference UNet still gets (zero)
    gradients, so DDP never sees parameters that took no part in the loss."""
    net = build("none")
    net.set_trainable(["reference_unet", "denoising_unet"])
    x = inputs()
    drop = torch.tensor([True, True])
    out = net(**x, drop_image=drop)
    with torch.no_grad():
        other = net(**{**x, "ref_latents": x["ref_latents"] + 1.0}, drop_image=drop)
    torch.testing.assert_close(out, other)
    out.square().mean().backward()
    used = [p for n, p in net.reference_unet.named_parameters() if p.requires_grad]
    assert used and all(p.grad is not None for p in used)
    assert all(float(p.grad.abs().max()) == 0.0 for p in used)
