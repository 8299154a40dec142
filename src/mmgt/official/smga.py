"""Released stage-1 checkpoint (MMGT ``audio2pose`` ``.pt``) -> mmgt :class:`~mmgt.models.smga.GestureDecoder`.

The official file is a dict with ``ema_state_dict`` (what the official sampler loads), ``model_state_dict`` (the
raw training weights, *not* what was released for inference), ``optimizer_state_dict`` and ``epoch``. The
converter reads ``ema_state_dict``, infers the network size from tensor shapes (heads are not visible in shapes:
``num_heads``, 8 in the released model), sets every switch that makes mmgt compute the official function
(EDGE-style rotary on the attention inputs incl. the time tokens, legacy timestep frequencies, the stack wiring
quirk, no audio standardisation), unpacks ``nn.MultiheadAttention``'s packed ``in_proj`` into mmgt's ``q`` / ``kv``
and drops the per-layer modules the official forward never reads (``Conversion.unused``). Strict: every official
tensor is copied, split, checked (the rotary frequency buffers, recomputed by mmgt) or listed as unused, and every
mmgt tensor is filled with the right shape; anything else is a :class:`~mmgt.official.ConversionError`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from mmgt.models.smga import GestureDecoder, GestureDecoderConfig
from mmgt.official import Conversion, ConversionError, missing_keys_error, read_official

WHAT = "MMGT stage-1 SMGA checkpoint (audio2pose .pt with 'ema_state_dict')"
RELEASED_HEADS = 8

# switches of GestureDecoderConfig under which mmgt computes the official function
OFFICIAL_SWITCHES: dict[str, Any] = {
    "rotary": True, "rotary_style": "input", "rotate_time_tokens": True, "rope_theta": 10000.0,
    "time_embedding": "legacy", "legacy_stack": True, "audio_norm": "none", "split_streams": True,
    "shared_input_proj": True,
}

# official name -> mmgt name for tensors copied as they are (``{i}``: encoder layer, ``{l}``: decoder layer)
_TOP = {
    "null_cond_embed": "null_audio", "null_cond_hidden": "null_pooled",
    "time_mlp.1.weight": "time_mlp.0.weight", "time_mlp.1.bias": "time_mlp.0.bias",
    "to_time_cond.0.weight": "time_film.weight", "to_time_cond.0.bias": "time_film.bias",
    "to_time_tokens.0.weight": "time_tokens.weight", "to_time_tokens.0.bias": "time_tokens.bias",
    "norm_cond.weight": "mem_norm.weight", "norm_cond.bias": "mem_norm.bias",
    "input_projection.weight": "input_proj.0.weight", "input_projection.bias": "input_proj.0.bias",
    "cond_projection.weight": "audio_in.weight", "cond_projection.bias": "audio_in.bias",
    "final_layer.weight": "final.weight", "final_layer.bias": "final.bias",
    **{f"non_attn_cond_projection.{j}.{p}": f"audio_pool.{j}.{p}" for j in (0, 1, 3) for p in ("weight", "bias")},
}
_ENC = {"linear1": "ff.0", "linear2": "ff.3", "norm1": "norm1", "norm2": "norm2"}
_ENC_ATTN = {"self_attn": "attn"}
_DEC = {"linear1": "ff.0", "linear2": "ff.3", "norm_final": "norm_ff", "film_final.block.1": "film_ff.proj.1",
        **{f"norm_{s}_1": f"{s}.norm_self" for s in ("face", "body")},
        **{f"norm_{s}_2": f"{s}.norm_cross" for s in ("face", "body")},
        **{f"film_{s}_1.block.1": f"{s}.film_self.proj.1" for s in ("face", "body")},
        **{f"film_{s}_2.block.1": f"{s}.film_cross.proj.1" for s in ("face", "body")}}
_DEC_ATTN = {f"{s}_{a}_attn": f"{s}.{a}_attn" for s in ("face", "body") for a in ("self", "cross")}
# per decoder layer, never read by the official forward
_DEC_UNUSED = ("self_attn.in_proj_weight", "self_attn.in_proj_bias", "self_attn.out_proj.weight",
               "self_attn.out_proj.bias", *(f"norm_{s}_3.{p}" for s in ("face", "body") for p in ("weight", "bias")),
               *(f"film_{s}_3.block.1.{p}" for s in ("face", "body") for p in ("weight", "bias")))


def _layer_count(keys: Sequence[str], prefix: str) -> int:
    idx = {int(m.group(1)) for k in keys if (m := re.match(rf"{re.escape(prefix)}\.(\d+)\.", k))}
    return max(idx) + 1 if idx else 0


def _attn_names(official: str, mmgt: str) -> dict[str, tuple[str, ...]]:
    """Official ``nn.MultiheadAttention`` tensors -> the mmgt tensors they fill (packed in_proj -> q, kv)."""
    return {f"{official}.in_proj_weight": (f"{mmgt}.q.weight", f"{mmgt}.kv.weight"),
            f"{official}.in_proj_bias": (f"{mmgt}.q.bias", f"{mmgt}.kv.bias"),
            f"{official}.out_proj.weight": (f"{mmgt}.out.weight",),
            f"{official}.out_proj.bias": (f"{mmgt}.out.bias",)}


def _plan(enc_layers: int, dec_layers: int) -> tuple[dict[str, tuple[str, ...]], list[str], list[str]]:
    """(official -> mmgt targets, unused official names, rotary buffer names) for a network of this depth."""
    plan: dict[str, tuple[str, ...]] = {k: (v,) for k, v in _TOP.items()}
    unused: list[str] = []
    rotary = ["rotary.freqs"]
    for i in range(enc_layers):
        o, m = f"cond_encoder.{i}", f"audio_encoder.{i}"
        for a, b in _ENC.items():
            plan.update({f"{o}.{a}.{p}": (f"{m}.{b}.{p}",) for p in ("weight", "bias")})
        for a, b in _ENC_ATTN.items():
            plan.update(_attn_names(f"{o}.{a}", f"{m}.{b}"))
        rotary.append(f"{o}.rotary.freqs")
    for j in range(dec_layers):
        o, m = f"seqTransDecoder.stack.{j}", f"layers.{j}"
        for a, b in _DEC.items():
            plan.update({f"{o}.{a}.{p}": (f"{m}.{b}.{p}",) for p in ("weight", "bias")})
        for a, b in _DEC_ATTN.items():
            plan.update(_attn_names(f"{o}.{a}", f"{m}.{b}"))
        unused += [f"{o}.{name}" for name in _DEC_UNUSED]
        rotary.append(f"{o}.rotary.freqs")
    return plan, unused, rotary


def _select_state(obj: Mapping[str, Any], source: str) -> Mapping[str, Any]:
    """The ``ema_state_dict`` of a released file (or a bare state dict with official stage-1 names)."""
    if "ema_state_dict" in obj:
        state = obj["ema_state_dict"]
        if not isinstance(state, Mapping):
            raise ConversionError(f"{source}: 'ema_state_dict' is a {type(state).__name__}, not a state dict")
        return state
    if "input_projection.weight" in obj or "seqTransDecoder.stack.0.linear1.weight" in obj:
        return obj  # a bare official GestureDecoder state dict
    if "model_state_dict" in obj:
        raise ConversionError(f"{source}: has 'model_state_dict' but no 'ema_state_dict'; the official sampler "
                              "uses the EMA weights, so this is not the released stage-1 file")
    shown = ", ".join(sorted(map(str, obj))[:6])
    raise ConversionError(f"{source}: not an {WHAT} (top-level keys: {shown}; a stage-2 file holds UNet, pose "
                          "guider or Net weights instead)")


def infer_config(shapes: Mapping[str, Sequence[int]], source: str = "state dict",
                 num_heads: int = RELEASED_HEADS) -> dict[str, Any]:
    """mmgt net config (``size.smga`` keys) of an official state dict, from its tensor shapes plus ``num_heads``."""
    need = ["input_projection.weight", "cond_projection.weight", "null_cond_embed", "to_time_tokens.0.weight",
            "seqTransDecoder.stack.0.linear1.weight", "final_layer.weight"]
    missing = [k for k in need if k not in shapes]
    if missing:
        raise missing_keys_error(source, WHAT, missing)
    width, in_dim = (int(v) for v in shapes["input_projection.weight"])
    pose_dim = int(shapes["final_layer.weight"][0])
    if in_dim != 2 * pose_dim:
        raise ConversionError(f"{source}: input_projection takes {in_dim} features, expected 2 x {pose_dim}")
    ref = GestureDecoderConfig()
    if pose_dim != ref.num_keypoints * ref.channels:
        raise ConversionError(f"{source}: pose vector of {pose_dim} values, mmgt's layout has "
                              f"{ref.num_keypoints} x {ref.channels}")
    keys = list(shapes)
    ff = int(shapes["seqTransDecoder.stack.0.linear1.weight"][0])
    enc_ff = shapes.get("cond_encoder.0.linear1.weight")
    if enc_ff is not None and int(enc_ff[0]) != ff:
        raise ConversionError(f"{source}: audio-encoder FF size {enc_ff[0]} differs from the decoder's {ff}; "
                              "mmgt uses one ff_size")
    return {
        "audio_dim": int(shapes["cond_projection.weight"][1]), "width": width, "ff_size": ff,
        "num_layers": _layer_count(keys, "seqTransDecoder.stack"), "num_heads": int(num_heads),
        "audio_layers": _layer_count(keys, "cond_encoder"), "dropout": 0.1,
        "max_len": int(shapes["null_cond_embed"][1]),
        "time_tokens": int(shapes["to_time_tokens.0.weight"][0]) // width, **OFFICIAL_SWITCHES,
    }


def _convert_state(state: Mapping[str, Any], source: str, num_heads: int) -> Conversion:
    """The shared core: real tensors or meta tensors alike (shape checks build the net on the meta device)."""
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ConversionError(f"{source}: entries that are not tensors: {', '.join(map(str, bad[:5]))}")
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    cfg = infer_config(shapes, source, num_heads)
    plan, unused, rotary = _plan(cfg["audio_layers"], cfg["num_layers"])
    missing = [k for k in [*plan, *unused] if k not in state]
    if missing:
        raise missing_keys_error(source, WHAT, missing)
    unknown = sorted(set(state) - set(plan) - set(unused) - set(rotary))
    if unknown:
        raise ConversionError(f"{source}: {len(unknown)} tensors this converter does not know, first: "
                              f"{', '.join(unknown[:5])}")
    try:
        net_cfg = GestureDecoderConfig.from_dict(cfg)
    except ValueError as err:
        raise ConversionError(f"{source}: inferred config {cfg} is not a valid mmgt network ({err})") from err
    with torch.device("meta"):
        ref = GestureDecoder(net_cfg).state_dict()

    out: dict[str, torch.Tensor] = {}
    for name, targets in plan.items():
        t = state[name]
        parts = (t,) if len(targets) == 1 else (t[:cfg["width"]], t[cfg["width"]:])  # in_proj rows: q | k, v
        for target, part in zip(targets, parts):
            if target not in ref:
                raise ConversionError(f"{source}: {name} maps to {target}, which mmgt's network lacks")
            if tuple(part.shape) != tuple(ref[target].shape):
                raise ConversionError(f"{source}: {name} {tuple(t.shape)} does not fit mmgt's {target} "
                                      f"{tuple(ref[target].shape)}")
            out[target] = part.detach().clone() if part.device.type != "meta" else part
    unfilled = sorted(set(ref) - set(out))
    if unfilled:
        raise ConversionError(f"{source}: mmgt tensors left unfilled: {', '.join(unfilled[:5])}")
    _check_rotary(state, rotary, net_cfg, source)
    return Conversion(state_dict=out, config=net_cfg.to_dict(), unused=[k for k in unused if k in state],
                      source=source)


def _check_rotary(state: Mapping[str, torch.Tensor], names: Sequence[str], cfg: GestureDecoderConfig,
                  source: str) -> None:
    """The official rotary buffers (one shared module, saved under every holder) must be the frequencies mmgt
    recomputes, theta^(-2i/D); they are not stored in mmgt's state dict."""
    dim = cfg.width
    expect = 1.0 / (cfg.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    for name in names:
        t = state.get(name)
        if t is None:
            continue  # a non-persistent buffer in some saves: nothing to check
        if tuple(t.shape) != tuple(expect.shape):
            raise ConversionError(f"{source}: {name} {tuple(t.shape)}, expected {tuple(expect.shape)} (D/2)")
        if t.device.type != "meta" and not torch.allclose(t.float().cpu(), expect, rtol=1e-6, atol=0):
            raise ConversionError(f"{source}: {name} are not the rotary frequencies 10000^(-2i/{dim})")


def convert_smga(path_or_state: str | Path | Mapping[str, Any], num_heads: int = RELEASED_HEADS) -> Conversion:
    """Official stage-1 file (or its loaded dict / bare state dict) -> mmgt GestureDecoder weights and config.

    ``num_heads`` cannot be read from shapes: 8 for the released model. Load the result with
    :func:`build_converted`."""
    if isinstance(path_or_state, (str, Path)):
        source = str(path_or_state)
        obj = read_official(path_or_state, WHAT)
    else:
        source, obj = "state dict", path_or_state
    return _convert_state(_select_state(obj, source), source, num_heads)


def convert_smga_shapes(shapes: Mapping[str, Sequence[int]], num_heads: int = RELEASED_HEADS,
                        source: str = "key list") -> Conversion:
    """Convert a key -> shape list (e.g. the full-size key list of the released file) without any weights: every
    tensor becomes a meta tensor, so the strict rules check that nothing is left unplaced at full size."""
    state = {k: torch.empty(tuple(int(s) for s in v), device="meta") for k, v in shapes.items()}
    return _convert_state(state, source, num_heads)


def build_converted(conv: Conversion) -> GestureDecoder:
    """A GestureDecoder with the converted weights loaded strictly, in eval mode (as the official sampler)."""
    net = GestureDecoder(GestureDecoderConfig.from_dict(conv.config))
    net.load_state_dict(conv.state_dict, strict=True)
    return net.eval()
