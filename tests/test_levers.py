"""Memory and speed levers of stage 2 (conf/model/video.yaml): each one switched on changes the result by no more than
its expected numerical effect — bf16 within a stated tolerance, gradient checkpointing exact, the plain and fused
attention paths equal to float rounding, channels-last and VAE slicing equal, the reference cache the same video with
one reference pass, sub-stage A without motion/audio modules the same sub-stage B at init, 8-bit AdamW still learning.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor, AttnProcessor2_0

from mmgt.lit.video import VideoModule
from mmgt.models.video.pipeline import VideoSampler, context_windows
from mmgt.models.video.reference import ReferenceProcessor
from test_video_lit import ADAMW_8BIT, HAS_BNB, make_batch, module, randomise_audio_branches
from tiny_configs import save_checkpoint

BNB_SKIP = "bitsandbytes is not installed (pip install 'mmgt[bnb]')"
# bf16 keeps 8 mantissa bits (relative rounding 2^-9 = 2e-3 per value); through the tiny nets' ~20 layers the
# prediction moves by ~5e-3 relative (measured); 2e-2 leaves room and still fails on a wrong dtype path (~1)
BF16_REL = 2e-2
# a generated clip compounds that rounding over the DDIM steps and the VAE decode (2 steps: ~2.2e-2 measured)
BF16_GEN_REL = 5e-2


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative L2 distance of ``a`` from the reference ``b``."""
    return float((a.float() - b.float()).norm() / b.float().norm())


def predict(m: VideoModule, batch: dict, drop_image: torch.Tensor | None = None, t: int = 500) -> torch.Tensor:
    """One network prediction on fixed noise and timestep (under the module's autocast)."""
    x, net = m._inputs(batch), m.net
    g = torch.Generator().manual_seed(1)
    lat = net.encode_frames(x["frames"])
    noise = torch.randn(lat.shape, generator=g)
    ts = torch.full((lat.shape[0],), t, dtype=torch.long)
    noisy = m.scheduler.add_noise(lat, noise, ts)
    with m._autocast():
        emb = net.embed_reference(x["ref"])
        out = net(noisy, ts, net.encode_frames(x["ref"]), emb, x["pose"], x["audio"], x["masks"], m.branch_weights,
                  drop_image=drop_image)
    return out.float()


def seeded_loss(m: VideoModule, batch: dict, seed: int = 0) -> torch.Tensor:
    torch.manual_seed(seed)  # the same noise, timesteps and CFG drops in every call
    return m.diffusion_loss(batch)[0]


# ------------------------------------------------------------------------------------------- frozen parts in bf16


def vae_clip_net(dtype: str | None = None) -> dict:
    """A tiny net with the full size's parts: diffusers AutoencoderKL and transformers CLIP (random init)."""
    from tiny_configs import VIDEO_NET

    vae = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=[8, 8], layers_per_block=1,
               down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2, norm_num_groups=4,
               sample_size=32)
    clip = dict(hidden_size=16, intermediate_size=32, num_attention_heads=2, num_hidden_layers=1, image_size=16,
                patch_size=8, projection_dim=16, hidden_act="quick_gelu")
    return {**VIDEO_NET, "codec": dict(type="vae", config=vae, scaling_factor=0.18215, factor=2, dtype=dtype),
            "image_encoder": dict(type="clip", config=clip, dtype=dtype), "pose_guider": dict(channels=[8, 16])}


def test_frozen_parts_in_bf16_stay_within_bf16_tolerance() -> None:
    """frozen_dtype=bf16 (sub-stage B: spatial UNets, pose guider, image encoder frozen) with bf16 autocast: the
    prediction within BF16_REL of float32, as close as autocast alone; trainable parameters stay float32 and get
    float32 gradients."""
    batch = make_batch(b=2, n=2)
    ref = module("b")
    fp32 = predict(ref, batch)
    auto = predict(module("b", autocast="bf16"), batch)
    m = module("b", autocast="bf16", frozen_dtype="bf16")
    frozen = [p for p in m.net.parameters() if not p.requires_grad]
    assert frozen and all(p.dtype == torch.bfloat16 for p in frozen)
    assert all(p.dtype == torch.float32 for _, p in m._trainable_params())
    out = predict(m, batch)
    assert 0 < rel(out, fp32) < BF16_REL
    assert rel(out, fp32) < 2 * rel(auto, fp32) + 1e-3  # no worse than autocast's own rounding
    m.train()
    seeded_loss(m, batch).backward()
    grads = [p.grad for _, p in m._trainable_params()]
    assert all(g is not None and g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)
    with pytest.raises(ValueError, match="needs model.autocast"):
        module("b", frozen_dtype="bf16")
    with pytest.raises(ValueError, match="frozen_dtype"):
        module("b", autocast="bf16", frozen_dtype="fp8")


def test_vae_and_clip_in_bf16_train_and_generate_within_tolerance() -> None:
    """The full size's frozen VAE and CLIP built in bf16 (size.video.*.dtype) with the rest frozen in bf16: training
    loss within BF16_REL and a generated clip within BF16_GEN_REL of the float32 network with the same weights."""
    batch = make_batch(b=1, n=2)
    batch = {**batch, "masks": batch["masks"].repeat_interleave(2, -1).repeat_interleave(2, -2)}  # codec factor 2
    kw = dict(sampling={"steps": 2, "guidance": 2.0, "context_frames": 2, "context_overlap": 1})
    torch.manual_seed(0)
    m32 = VideoModule(vae_clip_net(), attention={"type": "mm_haa", "blocks": ["down"]}, substage="b",
                      load_weights=False, data_info=module("b").hparams.data_info, **kw)
    torch.manual_seed(0)
    m16 = VideoModule(vae_clip_net("bfloat16"), attention={"type": "mm_haa", "blocks": ["down"]}, substage="b",
                      load_weights=False, data_info=module("b").hparams.data_info, autocast="bf16",
                      frozen_dtype="bf16", **kw)
    m16.load_state_dict(m32.state_dict())  # the same values (rounded to bf16 where frozen)
    assert m16.net.codec.vae.dtype == torch.bfloat16 and m16.net.image_encoder.model.dtype == torch.bfloat16
    m32.train(), m16.train()
    l32, l16 = seeded_loss(m32, batch), seeded_loss(m16, batch)
    assert abs(float(l16) - float(l32)) < BF16_REL * float(l32)
    m32.eval(), m16.eval()
    g32 = m32.generate(batch, generator=torch.Generator().manual_seed(0))
    g16 = m16.generate(batch, generator=torch.Generator().manual_seed(0))
    assert g16.dtype == torch.float32 and g16.shape == g32.shape
    assert rel(g16, g32) < BF16_GEN_REL


# ---------------------------------------------------------------------------------------------- attention


def test_plain_attention_equals_sdpa() -> None:
    """attention_processor=plain (diffusers' matmul + softmax) gives the fused path's prediction to float rounding,
    including the reference readers' masked path (one sample's image condition dropped) and the audio attention."""
    batch = make_batch(b=2, n=2)
    drop = torch.tensor([True, False])
    out = {}
    for kind in ("sdpa", "plain"):
        m = module("b", attention_processor=kind)
        randomise_audio_branches(m)
        attn = [a for a in m.net.modules() if isinstance(a, Attention)]
        ref = [a.processor for a in attn if isinstance(a.processor, ReferenceProcessor)]
        other = [a.processor for a in attn if not isinstance(a.processor, ReferenceProcessor)]
        assert ref and other and all(p.kind == kind for p in ref)
        assert all(type(p) is (AttnProcessor2_0 if kind == "sdpa" else AttnProcessor) for p in other)
        out[kind] = predict(m, batch, drop_image=drop)
    torch.testing.assert_close(out["plain"], out["sdpa"], rtol=1e-5, atol=1e-5)
    assert rel(out["plain"], out["sdpa"]) > 0 or torch.equal(out["plain"], out["sdpa"])
    with pytest.raises(ValueError, match="attention_processor"):
        module("b", attention_processor="flash")


# --------------------------------------------------------------------------------------- gradient checkpointing


@pytest.mark.parametrize(("substage", "parts"), [("a", True), ("a", ["reference_unet"]), ("b", ["denoising_unet"])])
def test_gradient_checkpointing_is_exact(substage: str, parts) -> None:
    """Checkpointing the named UNets recomputes their layers in backward (a resnet on the gradient path runs twice
    per step) and leaves the loss and every gradient equal (1e-6) to the run without it."""
    batch = make_batch(b=2, n=2)
    names = ["denoising_unet", "reference_unet"] if parts is True else parts
    runs = {}
    for on in (False, True):
        m = module(substage, gradient_checkpointing=parts if on else False).train()
        for n in ("denoising_unet", "reference_unet"):
            assert getattr(m.net, n).is_gradient_checkpointing == (on and n in names)
        calls = []
        unet = m.net.denoising_unet if "denoising_unet" in names else m.net.reference_unet
        # a pre-hook: the recomputation stops early, once every tensor backward needs is back (no post-hook call)
        unet.up_blocks[-1].resnets[0].register_forward_pre_hook(lambda *a, c=calls: c.append(1))  # on the gradient path
        loss = seeded_loss(m, batch)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in m._trainable_params() if p.grad is not None}
        runs[on] = (loss.detach(), grads, len(calls))
    (l0, g0, c0), (l1, g1, c1) = runs[False], runs[True]
    assert (c0, c1) == (1, 2)
    torch.testing.assert_close(l1, l0, rtol=1e-6, atol=1e-6)
    assert g0.keys() == g1.keys() and g0
    for n in g0:
        torch.testing.assert_close(g1[n], g0[n], rtol=1e-6, atol=1e-6, msg=n)
    with pytest.raises(ValueError, match="unknown UNet"):
        module("a", gradient_checkpointing=["pose_guider"])


# ------------------------------------------------------------------------------------------------ 8-bit AdamW

BNB_OPTIM = {**ADAMW_8BIT, "lr": 1e-3}


def fit(m: VideoModule, batch: dict, steps: int) -> list[float]:
    """Train on one batch with fixed noise (a deterministic objective); the loss after each step."""
    opt = m.configure_optimizers()
    opt = opt["optimizer"] if isinstance(opt, dict) else opt
    m.train()
    out = []
    for _ in range(steps):
        loss = seeded_loss(m, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        out.append(float(loss))
    return out


@pytest.mark.skipif(not HAS_BNB, reason=BNB_SKIP)
def test_8bit_adamw_learns_like_adamw(tmp_path: Path) -> None:
    """model.optim._target_=bitsandbytes.optim.AdamW8bit: 8-bit state for the large tensors, the tiny sub-stage A
    fits a batch about as well as torch's AdamW, and its state reloads with weights_only=True."""
    import bitsandbytes as bnb

    batch = make_batch(b=2, n=1)
    ref = fit(module("a", optim={**BNB_OPTIM, "_target_": "torch.optim.AdamW"}), batch, 40)
    m = module("a", optim=BNB_OPTIM)
    assert isinstance(m.configure_optimizers(), bnb.optim.AdamW8bit)
    got = fit(m, batch, 40)
    assert got[0] == pytest.approx(ref[0])  # the same start
    assert got[-1] < 0.5 * got[0] and ref[-1] < 0.5 * ref[0]
    assert abs(got[-1] - ref[-1]) < 0.25 * ref[-1]
    opt2 = m.configure_optimizers()
    fit_opt = [p for _, p in m._trainable_params()]
    loss = seeded_loss(m, batch)
    loss.backward()
    opt2.step()
    big = max(fit_opt, key=lambda p: p.numel())
    assert opt2.state[big]["state1"].dtype == torch.uint8  # 8-bit moments
    torch.save(opt2.state_dict(), tmp_path / "opt.pt")
    state = torch.load(tmp_path / "opt.pt", weights_only=True)
    opt2.load_state_dict(state)


def test_missing_optimizer_package_is_named(monkeypatch) -> None:
    """Without bitsandbytes the 8-bit switch stops at build time with the package and the install line."""
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "bitsandbytes" else real(name, *a))
    with pytest.raises(ImportError, match=r"bitsandbytes.*mmgt\[bnb\]"):
        module("b", optim=BNB_OPTIM)


# ---------------------------------------------------------------------------------- sub-stage A without temporal


def test_stage_a_without_motion_and_audio_modules(tmp_path: Path) -> None:
    """stage_a_temporal=false: the sub-stage-A net is the same image model without motion/audio tensors (same
    prediction), its checkpoint holds none, and sub-stage B initialised from it equals sub-stage B initialised from
    today's sub-stage A (every shared tensor equal, the same prediction: identity motion modules, zero audio)."""
    old = module("a")
    new = module("a", stage_a_temporal=False)
    own, theirs = new.net.state_dict(), old.net.state_dict()
    temporal = [k for k in theirs if ".motion_modules." in k or k.startswith(("audio_modules.", "audio_proj."))]
    assert temporal and set(own) == set(theirs) - set(temporal)
    new.net.load_state_dict({k: theirs[k] for k in own})
    one = make_batch(b=2, n=1)
    torch.testing.assert_close(predict(new, one), predict(old, one), rtol=1e-5, atol=1e-6)

    a_old = save_checkpoint(old, tmp_path / "a_old.ckpt")
    a_new = save_checkpoint(new, tmp_path / "a_new.ckpt")
    sd = torch.load(a_new, weights_only=True)["state_dict"]
    assert not [k for k in sd if ".motion_modules." in k or ".audio_" in k]
    assert sum(v.numel() for v in sd.values()) < sum(v.numel() for v in old.state_dict().values())

    b_old, b_new = module("b", seed=1, init_from=str(a_old)), module("b", seed=1, init_from=str(a_new))
    so, sn = b_old.net.state_dict(), b_new.net.state_dict()
    assert so.keys() == sn.keys()
    for k in so:
        if k not in temporal:
            assert torch.equal(so[k], sn[k]), k
    batch = make_batch(b=2, n=3)
    torch.testing.assert_close(predict(b_new, batch), predict(b_old, batch), rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------------------- memory format, VAE


def test_channels_last_equals_contiguous() -> None:
    """channels_last=true: conv weights in channels-last format (kept through an ``assign=True`` load, as the
    checkpoint readers do), the same prediction and gradients to float rounding."""
    batch = make_batch(b=2, n=2)
    a, b = module("b"), module("b", channels_last=True)
    convs = [mod.weight for mod in b.net.modules() if isinstance(mod, torch.nn.Conv2d)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs if w.shape[-1] > 1)
    torch.testing.assert_close(predict(b, batch), predict(a, batch), rtol=1e-5, atol=1e-5)
    a.train(), b.train()
    seeded_loss(a, batch).backward()
    seeded_loss(b, batch).backward()
    for (n, p), (_, q) in zip(a._trainable_params(), b._trainable_params(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-6, msg=n)
    b.load_state_dict({k: v.contiguous() for k, v in a.state_dict().items()}, assign=True)
    conv = next(mod.weight for mod in b.net.modules() if isinstance(mod, torch.nn.Conv2d) and mod.weight.shape[-1] > 1)
    assert conv.is_contiguous(memory_format=torch.channels_last)


def test_vae_slicing_and_tiling() -> None:
    """vae_slicing: encode/decode one image at a time, equal to the batched VAE; vae_tiling leaves frames no larger
    than the VAE's tile (its sample_size: 512 px for SD, so a no-op at the paper's 512²) untouched. Larger frames are
    tiled and blended at the seams, an approximation whose size depends on the VAE (not asserted: random weights)."""
    torch.manual_seed(0)
    kw = dict(attention={"type": "mm_haa", "blocks": ["down"]}, substage="b", load_weights=False,
              data_info=module("b").hparams.data_info)
    plain = VideoModule(vae_clip_net(), **kw)
    sliced = VideoModule(vae_clip_net(), vae_slicing=True, vae_tiling=True, **kw)
    sliced.load_state_dict(plain.state_dict())
    assert sliced.net.codec.vae.use_slicing and sliced.net.codec.vae.use_tiling
    frames = torch.rand(2, 3, 3, 32, 32) * 2 - 1
    z = plain.net.encode_frames(frames)
    torch.testing.assert_close(sliced.net.encode_frames(frames), z, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(sliced.net.decode_latents(z), plain.net.decode_latents(z), rtol=1e-5, atol=1e-6)
    vae = sliced.net.codec.vae  # tiles of 16 px (2 x 2 tiles with 25 % overlap on a 32-px frame)
    vae.tile_sample_min_size, vae.tile_latent_min_size = 16, 8
    tiled = sliced.net.decode_latents(z)
    whole = plain.net.decode_latents(z)
    assert tiled.shape == whole.shape and torch.isfinite(tiled).all() and not torch.equal(tiled, whole)
    with pytest.raises(ValueError, match="need a VAE codec"):
        module("b", vae_slicing=True)


# ----------------------------------------------------------------------------------------- reference cache


def test_reference_features_are_computed_once_per_clip() -> None:
    """The sampler runs the reference UNet once per clip (one CFG batch) and reuses the bank over every step and
    context window: the same video as recomputing it in every forward, with steps x windows times fewer passes."""
    m = module("b").eval()
    randomise_audio_branches(m)
    batch = make_batch(b=1, n=5)
    calls: list[int] = []
    m.net.reference_unet.register_forward_pre_hook(lambda mod, args: calls.append(int(args[0].shape[0])))
    x = m._inputs(batch)
    videos, counts = {}, {}
    for cache in (True, False):
        calls.clear()
        s = VideoSampler(m.net, m.scheduler, steps=3, guidance=2.0, context_frames=3, context_overlap=1,
                         cache_reference=cache)
        videos[cache] = s(x["ref"], x["pose"], x["audio"], x["masks"], generator=torch.Generator().manual_seed(0))
        counts[cache] = list(calls)
    windows = len(context_windows(5, 3, 1))
    assert windows > 1
    assert counts[True] == [2]  # once, on the conditional + unconditional batch
    assert counts[False] == [2] * (3 * windows)
    assert torch.equal(videos[True], videos[False])


# ------------------------------------------------------------------------------------------------ compile


@pytest.mark.slow
def test_compile_builds_and_trains_one_step() -> None:
    """compile: the backbone's UNets are compiled in place (state-dict names unchanged) and one training step runs
    with the same loss as eager (to float rounding). TorchDynamo traces the networks (forward and backward through
    AOTAutograd) with the ``aot_eager`` backend: the inductor backend of ``compile: true`` would spend minutes
    generating C++ on a 2-core CPU without exercising more of mmgt."""
    batch = make_batch(b=1, n=2)
    eager = module("b").train()
    with pytest.raises(ValueError, match="model.compile"):
        module("b", compile={"backend": "aot_eager", "bogus": 1})
    try:
        m = module("b", compile={"backend": "aot_eager"}).train()
        loss = seeded_loss(m, batch)
        loss.backward()
    except Exception as err:  # noqa: BLE001 - no working compiler backend here
        pytest.skip(f"torch.compile does not run on this machine: {type(err).__name__}: {str(err)[:200]}")
    assert m.net.state_dict().keys() == eager.net.state_dict().keys()
    torch.testing.assert_close(loss, seeded_loss(eager, batch), rtol=1e-4, atol=1e-5)
    assert all(p.grad is not None for _, p in m._trainable_params())
