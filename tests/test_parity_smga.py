"""Stage 1 official parity: the released-checkpoint converter and the legacy switches against golden fixtures.

The fixtures (``$MMGT_OFFICIAL_FIXTURES``, default ``<repo>/../shared/fixtures/mmgt_official``) were produced by
the official MMGT code on tiny random models. Every size, seed-dependent value, step count and setting is read from
their ``smga/config.json`` and tensor shapes (a hidden set with other sizes is used for acceptance).
Error measure: max |ours - official| / max |official| over the whole tensor, tolerance 1e-5 (the fixture README:
a faithful float32 re-implementation agrees to ~1e-6, every known convention mistake is >= 6.8e-5).
Tests of the switches' own behaviour and of the converter's errors need no fixture (or only the weight file).
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from mmgt.losses.smga import SMGALoss
from mmgt.models.gesture_diffusion import GestureDiffusion
from mmgt.models.smga import Attention, GestureDecoder, GestureDecoderConfig, Rope, rope_tables, timestep_embedding
from mmgt.official import ConversionError
from mmgt.official.smga import build_converted, convert_smga, convert_smga_shapes
from mmgt.pose.layout import GROUPS, NUM_CHANNELS, NUM_KEYPOINTS

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(os.environ.get("MMGT_OFFICIAL_FIXTURES", REPO.parent / "shared" / "fixtures" / "mmgt_official"))
SMGA = FIXTURES / "smga"
TOL = 1e-5
WEIGHTS = ("n002", "default_init")  # audio2pose_tiny_<w>.pt -> outputs_<w>.safetensors (the fixture layout)


def rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    """max |ours - ref| / max |ref|."""
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    return float((ours.double() - ref.double()).abs().max() / ref.double().abs().max())


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"official MMGT fixtures not found at {path} (set MMGT_OFFICIAL_FIXTURES)")
    return path


def _load_st(name: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(_need(SMGA / name)))


@pytest.fixture(scope="module")
def fx() -> dict[str, Any]:
    cfg = json.loads(_need(SMGA / "config.json").read_text())
    return {"cfg": cfg, "inputs": _load_st("inputs.safetensors"), "schedule": _load_st("schedule.safetensors")}


def _heads(fx: dict[str, Any]) -> int:
    return int(fx["cfg"]["hyper_parameters"]["num_heads"])


def _poses(v: torch.Tensor) -> torch.Tensor:
    """Official flat pose vectors (..., K*C), interleaved per keypoint -> mmgt's (..., K, C)."""
    assert v.shape[-1] == NUM_KEYPOINTS * NUM_CHANNELS
    return v.reshape(*v.shape[:-1], NUM_KEYPOINTS, NUM_CHANNELS)


def _flat(v: torch.Tensor) -> torch.Tensor:
    return v.flatten(-2)


def _diffusion(fx: dict[str, Any]) -> GestureDiffusion:
    d = fx["cfg"]["diffusion"]
    assert d["schedule"] == "cosine" and not d["predict_epsilon"] and d["clip_denoised"]
    return GestureDiffusion(timesteps=d["n_timestep"], cond_drop_prob=d["cond_drop_prob"], clip_x0=True,
                            schedule_dtype="float32", time_grid="trunc")


_NETS: dict[str, GestureDecoder] = {}


def _net(fx: dict[str, Any], weights: str) -> GestureDecoder:
    if weights not in _NETS:
        _NETS[weights] = build_converted(convert_smga(_need(SMGA / f"audio2pose_tiny_{weights}.pt"), _heads(fx)))
    return _NETS[weights]


# ----------------------------------------------------------------------------------------------- conversion


def test_conversion_infers_the_fixture_network_and_drops_exactly_the_unused_tensors(fx: dict[str, Any]) -> None:
    hp = fx["cfg"]["hyper_parameters"]
    conv = convert_smga(SMGA / "audio2pose_tiny_n002.pt", _heads(fx))
    c = conv.config
    assert (c["width"], c["ff_size"], c["num_layers"], c["num_heads"], c["audio_dim"], c["max_len"]) == (
        hp["latent_dim"], hp["ff_size"], hp["num_layers"], hp["num_heads"], hp["cond_feature_dim"], hp["seq_len"])
    assert (c["rotary_style"], c["rotate_time_tokens"], c["time_embedding"], c["legacy_stack"], c["audio_norm"]) == (
        "input", True, "legacy", True, "none")
    assert sorted(conv.unused) == sorted(fx["cfg"]["unused_parameters_in_forward"])
    keys = fx["cfg"]["state_dict_keys"]
    n_params = sum(math.prod(v["shape"]) for k, v in keys.items() if k not in fx["cfg"]["buffers"])
    n_unused = sum(math.prod(keys[k]["shape"]) for k in conv.unused)
    assert sum(t.numel() for t in conv.state_dict.values()) == n_params - n_unused  # split in_proj loses nothing
    assert "dropped" in conv.report()


def test_converter_reads_the_ema_weights_not_the_training_weights(fx: dict[str, Any]) -> None:
    raw = torch.load(SMGA / "audio2pose_tiny_n002.pt", map_location="cpu", weights_only=True)
    conv = convert_smga(raw, _heads(fx))
    assert torch.equal(conv.state_dict["final.weight"], raw["ema_state_dict"]["final_layer.weight"])
    assert not torch.equal(conv.state_dict["final.weight"], raw["model_state_dict"]["final_layer.weight"])


def test_full_size_key_list_converts_on_the_meta_device() -> None:
    """The released file's 473 tensors (name -> shape, no weights): every one placed, split or dropped, every
    mmgt parameter filled with the right shape, on the meta device."""
    listing = json.loads(_need(FIXTURES / "keys" / "stage_1__audio2pose_best_model.pt__ema_state_dict.json")
                         .read_text())
    tensors = listing["tensors"]
    assert len(tensors) == listing["n_tensors"]
    conv = convert_smga_shapes(tensors)  # the released model has 8 heads (not visible in shapes): the default
    assert sorted(conv.unused) == sorted(listing["unused_parameters_in_forward"])
    assert all(t.device.type == "meta" for t in conv.state_dict.values())
    assert sum(t.numel() for t in conv.state_dict.values()) == (listing["n_parameters"]
                                                               - listing["n_unused_parameter_elements"])
    assert conv.config["width"] == tensors["input_projection.weight"][0]
    assert conv.config["max_len"] == tensors["null_cond_embed"][1]
    with torch.device("meta"):
        net = GestureDecoder(GestureDecoderConfig.from_dict(conv.config))
    result = net.load_state_dict(conv.state_dict, strict=True, assign=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert all(p.device.type == "meta" for p in net.parameters())
    # one tensor short: refused, naming it
    gone = [k for k in tensors if k.endswith("body_cross_attn.in_proj_bias")][-1]
    short = {k: v for k, v in tensors.items() if k != gone}
    with pytest.raises(ConversionError, match=re.escape(gone)):
        convert_smga_shapes(short)


def test_wrong_kind_and_truncated_files_are_refused(tmp_path: Path, fx: dict[str, Any]) -> None:
    src = SMGA / "audio2pose_tiny_n002.pt"
    ema = torch.load(src, map_location="cpu", weights_only=True)["ema_state_dict"]
    stage2 = tmp_path / "denoising_unet.pth"  # a stage-2 state dict
    torch.save({"conv_in.weight": torch.zeros(4, 4, 3, 3), "conv_in.bias": torch.zeros(4)}, stage2)
    with pytest.raises(ConversionError, match=r"denoising_unet\.pth: not an MMGT stage-1"):
        convert_smga(stage2)
    train_only = tmp_path / "train_only.pt"
    torch.save({"model_state_dict": dict(ema), "epoch": 1}, train_only)
    with pytest.raises(ConversionError, match="no 'ema_state_dict'"):
        convert_smga(train_only)
    cut = tmp_path / "cut.pt"  # a truncated download
    data = src.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ConversionError, match=r"cut\.pt: cannot be read"):
        convert_smga(cut)
    missing = dict(ema)
    first = [k for k in ema if k.endswith("face_cross_attn.in_proj_weight")][-1]
    del missing[first], missing["final_layer.bias"]
    part = tmp_path / "part.pt"
    torch.save({"ema_state_dict": missing}, part)
    with pytest.raises(ConversionError, match=rf"part\.pt: not a complete .*2 tensors missing.*{re.escape(first)}"):
        convert_smga(part, _heads(fx))
    extra = tmp_path / "extra.pt"
    torch.save({"ema_state_dict": {**ema, "seqTransDecoder.stack.0.gate.weight": torch.zeros(3)}}, extra)
    with pytest.raises(ConversionError, match=r"does not know.*gate\.weight"):
        convert_smga(extra, _heads(fx))
    with pytest.raises(ConversionError, match="file not found"):
        convert_smga(tmp_path / "absent.pt")


# ----------------------------------------------------------------------------------------------- forward parity


@pytest.mark.parametrize("weights", WEIGHTS)
def test_converted_forward_matches_the_official(fx: dict[str, Any], weights: str) -> None:
    out = _load_st(f"outputs_{weights}.safetensors")
    inp = fx["inputs"]
    b = inp["x_t"].shape[0]
    net = _net(fx, weights)
    args = (_poses(inp["x_t"]), inp["timesteps"], inp["cond_embed"], _poses(inp["cond_frame"]))
    masks = {"out_keep_all": torch.zeros(b, dtype=torch.bool), "out_drop_all": torch.ones(b, dtype=torch.bool),
             "out_mixed": inp["keep_mask_mixed"] == 0}
    errs = {}
    with torch.no_grad():
        for key, drop in masks.items():
            errs[key] = rel_err(_flat(net(*args, drop_audio=drop)), out[key])
        w = float(fx["cfg"]["diffusion"]["guidance_weight"])
        errs["guided"] = rel_err(_flat(_diffusion(fx).predict_x0(net, *args[:3], args[3], w)), out["guided"])
    assert max(errs.values()) <= TOL, errs


def test_model_predictions_ddim_and_loss_match_the_official(fx: dict[str, Any]) -> None:
    out = _load_st("outputs_n002.safetensors")
    inp, d = fx["inputs"], fx["cfg"]["diffusion"]
    net, diff = _net(fx, "n002"), _diffusion(fx)
    errs = {}
    with torch.no_grad():
        eps, x0 = diff.model_predictions(net, _poses(inp["x_t"]), inp["timesteps"], inp["cond_embed"],
                                         _poses(inp["cond_frame"]), float(d["guidance_weight"]))
        errs["pred_noise"], errs["x_start_clipped"] = rel_err(_flat(eps), out["pred_noise"]), \
            rel_err(_flat(x0), out["x_start_clipped"])
        errs["x_t"] = rel_err(diff.q_sample(inp["x0"], inp["timesteps"], inp["noise"]), inp["x_t"])

        steps = int(d["ddim_steps_in_fixture"])
        assert [list(p) for p in diff.ddim_timesteps(steps)] == d["ddim_time_pairs"]
        x_init = _poses(inp["ddim_x_init"])
        sample = diff.ddim_sample(net, inp["ddim_cond_embed"], _poses(inp["ddim_cond_frame"]), tuple(x_init.shape),
                                  steps=steps, eta=float(d["ddim_eta"]), guidance=float(d["guidance_weight"]),
                                  noise=x_init, step_noise=_poses(inp["ddim_step_noise"]))
        errs["ddim_sample"] = rel_err(_flat(sample), out["ddim_sample"])

        x0_true = _poses(inp["x0"])
        pred, _ = diff.training_pair(net, x0_true, inp["cond_embed"], _poses(inp["cond_frame"]), t=inp["timesteps"],
                                     noise=_poses(inp["loss_noise"]), drop_audio=inp["loss_keep_mask"] == 0)
        loss = SMGALoss(reduction="all")
        terms = loss(pred, x0_true, torch.ones(pred.shape[:-1], dtype=torch.bool))
        w = loss.term_weights()
        ours = torch.stack([w[k] * terms[k] for k in ("pos", "vel", "acc", "face_pos", "face_vel", "face_acc")])
        errs["loss_terms"] = rel_err(ours, out["loss_terms"])
        errs["loss_total"] = rel_err(terms["loss"].reshape(1), out["loss_total"])
    assert max(errs.values()) <= TOL, errs


def test_schedule_matches_the_official(fx: dict[str, Any]) -> None:
    diff = _diffusion(fx)
    assert diff.alphas_cumprod.dtype == torch.float32
    assert rel_err(diff.betas, fx["schedule"]["betas"]) <= TOL
    assert rel_err(diff.alphas_cumprod, fx["schedule"]["alphas_cumprod"]) <= TOL


# ----------------------------------------------------------------------------------------------- the switches


def test_legacy_time_embedding_uses_half_minus_one() -> None:
    dim, half = 16, 8
    t = torch.tensor([0, 3, 700])
    std, leg = timestep_embedding(t, dim), timestep_embedding(t, dim, legacy=True)
    for emb, denom in ((std, half), (leg, half - 1)):
        f = torch.exp(-math.log(1e4) * torch.arange(half, dtype=torch.float64) / denom)
        ang = t.double()[:, None] * f[None]
        assert torch.allclose(emb.double(), torch.cat([ang.sin(), ang.cos()], -1), atol=1e-4)
    assert torch.equal(std[:, 0], leg[:, 0])  # f_0 = 1 in both
    assert (std - leg).abs().max() > 0.1


def test_rotary_pairs_interleaved_vs_half_split() -> None:
    dim, pos = 8, 5
    cos_i, sin_i = rope_tables(pos + 1, dim, 1e4, torch.device("cpu"), torch.float32, interleaved=True)
    cos_h, sin_h = rope_tables(pos + 1, dim, 1e4, torch.device("cpu"), torch.float32)
    x = torch.zeros(1, pos + 1, dim)
    x[0, pos, 2], x[0, pos, 3] = 1.0, 2.0  # pair 1: columns (2, 3) interleaved, (1, 5) half-split
    ang = pos * 1e4 ** (-2 / dim)
    a = Rope(cos_i, sin_i, interleaved=True).rotate(x, pos + 1)[0, pos]
    ref = torch.zeros(dim)
    ref[2], ref[3] = math.cos(ang) - 2 * math.sin(ang), 2 * math.cos(ang) + math.sin(ang)
    assert torch.allclose(a, ref, atol=1e-6)
    h = Rope(cos_h, sin_h).rotate(x, pos + 1)[0, pos]
    assert not torch.allclose(h, ref, atol=1e-3)  # the half-split convention pairs other columns
    assert torch.equal(Rope(cos_i, sin_i, interleaved=True).rotate(x, pos)[0, pos], x[0, pos])  # beyond n: as is


def test_input_rotary_attention_is_mha_on_rotated_query_and_key_inputs() -> None:
    """rotary_style='input': nn.MultiheadAttention(rot(x), rot(mem), mem) with the packed in_proj = [q; kv]."""
    torch.manual_seed(0)
    dim, heads, n, m = 16, 4, 5, 7
    att = Attention(dim, heads, 0.0).eval()
    mha = nn.MultiheadAttention(dim, heads, batch_first=True).eval()
    with torch.no_grad():
        mha.in_proj_weight.copy_(torch.cat([att.q.weight, att.kv.weight]))
        mha.in_proj_bias.copy_(torch.cat([att.q.bias, att.kv.bias]))
        mha.out_proj.weight.copy_(att.out.weight)
        mha.out_proj.bias.copy_(att.out.bias)
    cos, sin = rope_tables(m, dim, 1e4, torch.device("cpu"), torch.float32, interleaved=True)
    rope = Rope(cos, sin, interleaved=True, on_input=True)
    x, mem = torch.randn(2, n, dim), torch.randn(2, m, dim)
    with torch.no_grad():
        ref = mha(rope.rotate(x, n), rope.rotate(mem, m), mem, need_weights=False)[0]
        assert torch.allclose(att(x, mem, rope, mem_rot=m), ref, atol=1e-6)
        ref_sa = mha(rope.rotate(x, n), rope.rotate(x, n), x, need_weights=False)[0]
        assert torch.allclose(att(x, rope=rope), ref_sa, atol=1e-6)
        # rotating the last two memory tokens (the time tokens) or not matters
        assert not torch.allclose(att(x, mem, rope, mem_rot=m - 2), ref, atol=1e-4)


def test_official_switches_change_the_network_function() -> None:
    torch.manual_seed(0)
    base = {"width": 32, "ff_size": 64, "num_layers": 2, "num_heads": 4, "audio_layers": 1, "dropout": 0.0,
            "audio_dim": 10, "max_len": 12, "audio_norm": "none"}
    ref = GestureDecoder(base).eval()
    x, t = torch.randn(2, 12, NUM_KEYPOINTS, NUM_CHANNELS), torch.tensor([3, 800])
    audio, cond = torch.randn(2, 12, 10), torch.randn(2, NUM_KEYPOINTS, NUM_CHANNELS)
    with torch.no_grad():
        y = ref(x, t, audio, cond)
        for switch in ({"rotary_style": "input"}, {"rotate_time_tokens": True}, {"time_embedding": "legacy"}):
            net = GestureDecoder({**base, **switch}).eval()
            net.load_state_dict(ref.state_dict())  # same parameters in every mode
            assert rel_err(net(x, t, audio, cond), y) > 1e-3, switch
    with pytest.raises(ValueError, match="rotary_style"):
        GestureDecoderConfig.from_dict({"rotary_style": "per_token"})
    with pytest.raises(ValueError, match="time_embedding"):
        GestureDecoderConfig.from_dict({"time_embedding": "new"})
    GestureDecoderConfig.from_dict({"width": 36, "num_heads": 4, "rotary_style": "input"})  # odd head size is fine


def test_float32_schedule_and_truncated_grid() -> None:
    f64, f32 = GestureDiffusion(), GestureDiffusion(schedule_dtype="float32", time_grid="trunc")
    assert f64.alphas_cumprod.dtype == torch.float64 and f32.alphas_cumprod.dtype == torch.float32
    assert torch.equal(f32.alphas_cumprod, torch.cumprod(1 - f64.betas.float(), 0))
    torch.manual_seed(0)
    x0, eps = torch.rand(3, 4, 6) * 2 - 1, torch.randn(3, 4, 6)
    for t_val in (0, 500, 990):  # both forms recover ε; near t = 0 they differ through float32 cancellation
        t = torch.full((3,), t_val)
        x = f32.q_sample(x0, t, eps)
        for diff in (f64, f32):
            assert rel_err(diff.eps_from_x0(x, t, x0), eps) < 2e-2
    t0 = torch.zeros(3, dtype=torch.long)
    x = f32.q_sample(x0, t0, eps)
    assert rel_err(f64.eps_from_x0(x, t0, x0), f32.eps_from_x0(x, t0, x0)) > 1e-5
    for steps in (6, 7, 50):
        grid = torch.linspace(-1, 999, steps + 1)
        assert [p[0] for p in f32.ddim_timesteps(steps)] == grid.long().flip(0)[:-1].tolist()
        assert [p[0] for p in f64.ddim_timesteps(steps)] == grid.round().long().flip(0)[:-1].tolist()
    assert f32.ddim_timesteps(50) == f64.ddim_timesteps(50) and f32.ddim_timesteps(6) != f64.ddim_timesteps(6)
    with pytest.raises(ValueError, match="schedule_dtype"):
        GestureDiffusion(schedule_dtype="half")


def test_injected_ddim_noise_replays_the_generator() -> None:
    class Fake(nn.Module):
        def forward(self, x, t, audio, cond, drop_audio=None):  # noqa: ANN001, ANN201
            return 0.5 * x + cond[:, None] + audio[..., :1, None]

    diff = GestureDiffusion()
    shape = (2, 3, NUM_KEYPOINTS, NUM_CHANNELS)
    audio, cond = torch.rand(2, 3, 4) * 0.1, torch.zeros(2, NUM_KEYPOINTS, NUM_CHANNELS)
    steps = 4
    g = torch.Generator().manual_seed(7)
    drawn = diff.ddim_sample(Fake(), audio, cond, shape, steps=steps, generator=g)
    g = torch.Generator().manual_seed(7)
    x_t = torch.randn(shape, generator=g)
    zs = torch.stack([torch.randn(shape, generator=g) for _ in range(steps - 1)])
    replay = diff.ddim_sample(Fake(), audio, cond, shape, steps=steps, noise=x_t, step_noise=zs)
    assert torch.equal(drawn, replay)
    other = diff.ddim_sample(Fake(), audio, cond, shape, steps=steps, noise=x_t, step_noise=-zs)
    assert not torch.allclose(other, replay, atol=1e-3)
    with pytest.raises(ValueError, match="step_noise"):
        diff.ddim_sample(Fake(), audio, cond, shape, steps=steps, noise=x_t, step_noise=zs[:1])


def test_official_loss_reduction_is_plain_means_over_flat_vectors() -> None:
    torch.manual_seed(0)
    pred, target = torch.randn(2, 6, NUM_KEYPOINTS, NUM_CHANNELS), torch.randn(2, 6, NUM_KEYPOINTS, NUM_CHANNELS)
    vis = torch.rand(2, 6, NUM_KEYPOINTS) > 0.5  # ignored by the official means
    loss = SMGALoss(reduction="all")
    terms = loss(pred, target, vis, cond_pose=target[:, 0])  # no anchor either
    p, g = pred.flatten(2), target.flatten(2)
    face = torch.tensor([NUM_CHANNELS * k + c for k in GROUPS["face"] for c in range(NUM_CHANNELS)])

    def three(a: torch.Tensor, b: torch.Tensor) -> list[torch.Tensor]:
        va, vb = a[:, 1:] - a[:, :-1], b[:, 1:] - b[:, :-1]
        return [(a - b).pow(2).mean(), (va - vb).pow(2).mean(),
                ((va[:, 1:] - va[:, :-1]) - (vb[:, 1:] - vb[:, :-1])).pow(2).mean()]

    ref = three(p, g) + [3 * v for v in three(p[..., face], g[..., face])]
    ours = [terms[k] for k in ("pos", "vel", "acc")] + [3 * terms[f"face_{k}"] for k in ("pos", "vel", "acc")]
    assert torch.allclose(torch.stack(ours), torch.stack(ref), rtol=1e-5)
    assert torch.allclose(terms["loss"], sum(ref), rtol=1e-5)
    assert loss.term_weights()["score"] == 0.0 and SMGALoss().term_weights()["score"] == 1.0
    assert not torch.allclose(SMGALoss()(pred, target, vis, target[:, 0])["loss"], terms["loss"], rtol=1e-2)
