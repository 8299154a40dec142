"""Released stage-2 checkpoints -> mmgt :class:`~mmgt.models.video.VideoNet` weights.

:func:`convert_net`: the Net file (``process_2/net-*.pth``, the official ``Net.state_dict()``) with four prefixes:
``reference_unet.`` (MMGT's 2-D UNet copy, without ``conv_norm_out`` / ``conv_out``), ``denoising_unet.`` (the
inflated 3-D UNet with AnimateDiff ``motion_modules`` and MM-HAA ``audio_modules``), ``pose_guider.`` and
``audioproj.``. :func:`convert_stage_a`: the sub-stage A files (``process_1/*.pth``, one bare part each) -> a partial
state dict to start sub-stage B from. Names go through :func:`mmgt.official.names.official_name` (one mapping for
both); parameters are cast to float32.

The network size is read from tensor shapes; what shapes do not show (attention heads, GroupNorm groups, the audio
window (window, layers, dim)) are arguments with the released values. Strict: every official tensor is placed (or,
for the second positional table of each motion block, checked equal to the first and listed as unused), every mmgt
tensor is filled except those that come from other files (VAE, CLIP image encoder) or that the official network does
not have (the reference UNet's output head, never read); anything else is a :class:`~mmgt.official.ConversionError`
naming the file and the first offending keys.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from mmgt.official import Conversion, ConversionError, missing_keys_error, read_official
from mmgt.official.names import BRANCHES, EXTERNAL, PREFIXES, official_name

WHAT = "MMGT stage-2 Net checkpoint (net-*.pth: reference_unet., denoising_unet., pose_guider., audioproj.)"
# released values that tensor shapes do not show
RELEASED_HEADS = 8
RELEASED_GROUPS = 32
RELEASED_AUDIO_SHAPE = (5, 12, 768)  # wav2vec window (i-2..i+2), 12 hidden layers, 768 dims
RELEASED_MOTION_LEN = 32  # motion modules' temporal_position_encoding_max_len (not in sub-stage A files)
STAND_IN_ENCODER = {"type": "conv", "channels": [8]}


def _count(keys: Sequence[str], prefix: str) -> int:
    idx = {int(m.group(1)) for k in keys if (m := re.match(rf"{re.escape(prefix)}\.(\d+)\.", k))}
    return max(idx) + 1 if idx else 0


def _shape(shapes: Mapping[str, Sequence[int]], key: str, source: str, what: str = WHAT) -> tuple[int, ...]:
    if key not in shapes:
        raise missing_keys_error(source, what, [key])
    return tuple(int(s) for s in shapes[key])


def _unet_config(shapes: Mapping[str, Sequence[int]], source: str, prefix: str, heads: int, norm_groups: int,
                 motion_heads: int, motion_max_seq_length: int, what: str = WHAT) -> dict[str, Any]:
    """The ``size.video.unet`` block of the SD-layout UNet under ``prefix`` (either official UNet: the Net's
    denoising / reference UNet or a sub-stage A file); the motion settings are passed, shapes do not show them."""
    keys = list(shapes)
    n_down = _count(keys, prefix + "down_blocks")
    if n_down == 0:
        raise missing_keys_error(source, what, [prefix + "down_blocks.0.resnets.0.conv1.weight"])
    widths = [_shape(shapes, f"{prefix}down_blocks.{i}.resnets.0.conv1.weight", source, what)[0]
              for i in range(n_down)]
    kinds = ["cross" if any(k.startswith(f"{prefix}down_blocks.{i}.attentions.") for k in keys) else "plain"
             for i in range(n_down)]
    if "cross" not in kinds:
        raise ConversionError(f"{source}: the UNet has no cross-attention block")
    first = kinds.index("cross")
    cross_dim = _shape(shapes, f"{prefix}down_blocks.{first}.attentions.0.transformer_blocks.0.attn2.to_k.weight",
                       source, what)[1]
    return dict(block_out_channels=widths, layers_per_block=_count(keys, prefix + "down_blocks.0.resnets"),
                down_blocks=kinds, heads=int(heads), cross_attention_dim=int(cross_dim),
                norm_num_groups=int(norm_groups), motion_heads=int(motion_heads),
                motion_max_seq_length=int(motion_max_seq_length), pretrained=None, motion_adapter=None,
                motion_norm="per_frame")


def _pose_guider_channels(shapes: Mapping[str, Sequence[int]], source: str, what: str = WHAT) -> list[int]:
    """``size.video.pose_guider.channels`` of the official pose guider (names under ``pose_guider.``)."""
    n_pg = _count(list(shapes), "pose_guider.blocks")
    pg = [_shape(shapes, "pose_guider.conv_in.weight", source, what)[0]]
    return pg + [_shape(shapes, f"pose_guider.blocks.{2 * i + 1}.weight", source, what)[0] for i in range(n_pg // 2)]


def _video_block(unet: Mapping[str, Any] | None, pose_channels: Sequence[int] | None) -> dict[str, Any]:
    """``size.video`` with the SD-1.5 codec / CLIP image encoder (no paths) around the converted parts."""
    factor = 2 ** (len(pose_channels) - 1) if pose_channels else 8
    video: dict[str, Any] = dict(codec=dict(type="vae", path=None, scaling_factor=0.18215, factor=factor),
                                 image_encoder=dict(type="clip", path=None), reference_bank_dtype="float16")
    if unet is not None:
        video["unet"] = dict(unet)
    if pose_channels is not None:
        video["pose_guider"] = dict(channels=list(pose_channels), pretrained=None)
    return video


def infer_config(shapes: Mapping[str, Sequence[int]], source: str = "state dict", heads: int = RELEASED_HEADS,
                 norm_groups: int = RELEASED_GROUPS, motion_heads: int = RELEASED_HEADS,
                 audio_shape: Sequence[int] = RELEASED_AUDIO_SHAPE) -> dict[str, Any]:
    """mmgt config of an official Net state dict: ``video`` (the ``size.video`` block; codec / image encoder at
    their SD-1.5 defaults without paths), ``attention`` (the ``attention`` group), ``audio_embed_shape`` and
    ``num_branches`` (what the DataModule's ``info()`` normally provides)."""
    keys = list(shapes)
    d = "denoising_unet."
    if _count(keys, d + "down_blocks") == 0:
        raise missing_keys_error(source, WHAT, [d + "down_blocks.0.resnets.0.conv1.weight"])
    pe = [k for k in keys if k.startswith(d) and k.endswith("pos_encoder.pe")]
    if not pe:
        raise ConversionError(f"{source}: no motion modules (denoising_unet.*.motion_modules.*); a sub-stage A "
                              "denoising UNet is not a stage-2 Net")
    unet = _unet_config(shapes, source, d, heads, norm_groups, motion_heads, _shape(shapes, pe[0], source)[1])
    widths, kinds = unet["block_out_channels"], unet["down_blocks"]
    latent = _shape(shapes, d + "conv_in.weight", source)[1]
    pg = _pose_guider_channels(shapes, source)
    if _shape(shapes, "pose_guider.conv_out.weight", source)[0] != widths[0]:
        raise ConversionError(f"{source}: pose guider output {shapes['pose_guider.conv_out.weight'][0]} channels "
                              f"!= the UNet's first width {widths[0]}")
    in_dim, hidden = _shape(shapes, "audioproj.proj1.weight", source)[::-1]
    dim = _shape(shapes, "audioproj.norm.weight", source)[0]
    tokens = _shape(shapes, "audioproj.proj3.weight", source)[0] // dim
    audio_shape = [int(s) for s in audio_shape]
    if len(audio_shape) != 3 or audio_shape[0] * audio_shape[1] * audio_shape[2] != in_dim:
        raise ConversionError(f"{source}: audioproj.proj1 takes {in_dim} features, which audio_shape={audio_shape} "
                              "(window, layers, dim) does not give; pass the audio feature shape it was trained on")
    audio_keys = [k for k in keys if ".audio_modules." in k]
    where = sorted({m.group(1) for k in audio_keys if (m := re.match(rf"{d}(\w+?(?:\.\d+)?)\.audio_modules\.", k))})
    if not where:
        raise ConversionError(f"{source}: no audio modules (denoising_unet.*.audio_modules.*)")
    cross_down = [f"down_blocks.{i}" for i, k in enumerate(kinds) if k == "cross"]
    blocks = ["down"] if where == cross_down else [w.replace("_blocks", "").replace("mid_block", "mid")
                                                   for w in where]
    n_branches = len({m.group(1) for k in audio_keys if (m := re.search(r"\.attn2_(\d+)\.", k))})
    if n_branches != len(BRANCHES):
        raise ConversionError(f"{source}: audio modules with {n_branches} cross-attention branches, MMGT's block has "
                              f"{len(BRANCHES)} ({', '.join(BRANCHES)})")
    video = _video_block(unet, pg)
    video.update(audio_proj=dict(hidden_dim=int(hidden), tokens=int(tokens), dim=int(dim)),
                 audio_attention=dict(heads=int(heads)))
    attention = dict(type="mm_haa", module="mmgt.models.video.mmhaa.OfficialAudioModule", blocks=blocks,
                     branch_weights=None, n_branches=n_branches)
    return dict(video=video, attention=attention, audio_embed_shape=audio_shape, num_branches=n_branches,
                latent_channels=int(latent))


def is_official_net(keys: Sequence[str] | Mapping[str, Any]) -> bool:
    """True for an official Net state dict (``audioproj.`` / ``temporal_transformer`` names), False for mmgt's own
    VideoNet names, e.g. to let ``init_from`` accept a released ``net-*.pth`` through :func:`convert_net`."""
    names = [str(k) for k in keys]
    return any(k.startswith("audioproj.") for k in names) or any(".temporal_transformer." in k for k in names)


def _select_state(obj: Mapping[str, Any], source: str) -> Mapping[str, Any]:
    """The Net state dict of a released file; other MMGT files are refused with what they are."""
    if "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    keys = [str(k) for k in obj]
    if any(k.startswith("denoising_unet.") for k in keys):
        return obj
    if "ema_state_dict" in obj or "model_state_dict" in obj:
        raise ConversionError(f"{source}: this is the stage-1 SMGA checkpoint (audio2pose .pt with "
                              "'ema_state_dict'), not a stage-2 Net; convert it with mmgt.official.smga")
    if any(k.startswith(("down_blocks.", "conv_in.", "blocks.")) for k in keys):
        raise ConversionError(f"{source}: a bare UNet / pose-guider state dict (sub-stage A file, "
                              "stage_2/process_1/*.pth), not the stage-2 Net (stage_2/process_2/net-*.pth)")
    raise ConversionError(f"{source}: not an {WHAT} (first keys: {', '.join(sorted(keys)[:6])})")


def _build_meta(cfg: Mapping[str, Any]):
    from mmgt.models.video import VideoNet

    att = cfg["attention"]
    video = {**cfg["video"], "image_encoder": STAND_IN_ENCODER}  # external part: its size does not matter here
    with torch.device("meta"):
        return VideoNet(video, cfg["audio_embed_shape"], att["type"], att["blocks"], att["n_branches"],
                        load_weights=False, attention_module=att["module"])


def _take(t: torch.Tensor) -> torch.Tensor:
    """A converted tensor: float32 (the released files keep some parts in float16), detached from the file."""
    t = t.detach().to(torch.float32) if t.is_floating_point() else t.detach()
    return t if t.device.type == "meta" else t.clone()


def _check_tensors(state: Mapping[str, Any], source: str) -> None:
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ConversionError(f"{source}: entries that are not tensors: {', '.join(map(str, bad[:5]))}")


def _convert_state(state: Mapping[str, Any], source: str, **sizes: Any) -> Conversion:
    _check_tensors(state, source)
    foreign = [k for k in state if not str(k).startswith(PREFIXES)]
    if foreign:
        raise ConversionError(f"{source}: {len(foreign)} tensors outside {PREFIXES}, first: "
                              f"{', '.join(foreign[:5])}")
    cfg = infer_config({k: tuple(v.shape) for k, v in state.items()}, source, **sizes)
    try:
        ref = _build_meta(cfg).state_dict()
    except ValueError as err:
        raise ConversionError(f"{source}: inferred config is not a valid mmgt VideoNet ({err})") from err
    plan = {k: official_name(k) for k in ref if not k.startswith(EXTERNAL)}
    missing = [o for o in plan.values() if o not in state]
    if missing:
        raise missing_keys_error(source, WHAT, missing)
    out: dict[str, torch.Tensor] = {}
    for name, off in plan.items():
        t = state[off]
        if tuple(t.shape) != tuple(ref[name].shape):
            raise ConversionError(f"{source}: {off} {tuple(t.shape)} does not fit mmgt's {name} "
                                  f"{tuple(ref[name].shape)}")
        out[name] = _take(t)
    placed = set(plan.values())
    dup = [k for k in state if k not in placed and re.search(r"attention_blocks\.[1-9]\d*\.pos_encoder\.pe$", k)]
    for k in dup:  # diffusers' block holds one positional table for both temporal attentions
        first = re.sub(r"attention_blocks\.\d+\.", "attention_blocks.0.", k)
        a, b = state[k], state[first]
        if a.shape != b.shape or (a.device.type != "meta" and not torch.equal(a.float(), b.float())):
            raise ConversionError(f"{source}: {k} differs from {first}; mmgt's motion block shares one table")
    unplaced = sorted(set(state) - placed - set(dup))
    if unplaced:
        raise ConversionError(f"{source}: {len(unplaced)} official tensors have no place in mmgt's VideoNet, "
                              f"first: {', '.join(unplaced[:5])}")
    return Conversion(state_dict=out, config=cfg, unused=sorted(dup), source=source)


def convert_net(path_or_state: str | Path | Mapping[str, Any], heads: int = RELEASED_HEADS,
                norm_groups: int = RELEASED_GROUPS, motion_heads: int = RELEASED_HEADS,
                audio_shape: Sequence[int] = RELEASED_AUDIO_SHAPE) -> Conversion:
    """Official ``net-*.pth`` (path, loaded dict or bare state dict) -> VideoNet weights (float32) and config.

    ``heads`` / ``norm_groups`` / ``motion_heads`` / ``audio_shape`` are not visible in shapes (released: 8, 32, 8,
    (5, 12, 768)). Build the network with :func:`build_converted`; a VideoModule with
    :func:`official_video_hparams`. ``Conversion.unused``: the second positional table of each motion block (equal
    to the first, which is kept)."""
    if isinstance(path_or_state, (str, Path)):
        source = str(path_or_state)
        obj = read_official(path_or_state, WHAT)
    else:
        source, obj = "state dict", path_or_state
    return _convert_state(_select_state(obj, source), source, heads=heads, norm_groups=norm_groups,
                          motion_heads=motion_heads, audio_shape=audio_shape)


def convert_net_shapes(shapes: Mapping[str, Sequence[int]], source: str = "key list", **sizes: Any) -> Conversion:
    """Convert a name -> shape list (e.g. the full-size key list of ``net-32500.pth``) on the meta device, no
    weights: checks that the strict rules place every tensor at full size."""
    state = {k: torch.empty(tuple(int(s) for s in v), device="meta") for k, v in shapes.items()}
    return _convert_state(_select_state(state, source), source, **sizes)


# sub-stage A files (stage_2/process_1/*.pth): bare state dicts of one Net part each; keyword = VideoNet part = the
# Net prefix the naming tables map it under
STAGE_A = {
    "reference_unet": "MMGT sub-stage A reference UNet (process_1/reference_unet-*.pth: 2-D UNet, no conv_out)",
    "denoising_unet": "MMGT sub-stage A denoising UNet (process_1/denoising_unet-*.pth: 2-D UNet, no motion or "
                      "audio modules)",
    "pose_guider": "MMGT sub-stage A pose guider (process_1/pose_guider-*.pth)",
}
_A_KINDS = {"net": "the stage-2 Net (process_2/net-*.pth; convert it with convert_net)",
            "stage1": "the stage-1 SMGA checkpoint (convert it with mmgt.official.smga)",
            "motion": "a UNet with motion / audio modules (a stage-2 Net part, not a sub-stage A file)",
            "reference_unet": "a UNet without conv_norm_out / conv_out: the reference UNet (pass it as "
                              "reference_unet=) or a truncated file",
            "denoising_unet": "a UNet with conv_out: the denoising UNet (pass it as denoising_unet=)",
            "pose_guider": "a pose guider (pass it as pose_guider=)"}


def _stage_a_kind(keys: Sequence[str]) -> str | None:
    """Which MMGT file a bare state dict's names say it is (None: none of them)."""
    if any(k.startswith(PREFIXES) for k in keys):
        return "net"
    if any(k in ("ema_state_dict", "model_state_dict") for k in keys):
        return "stage1"
    if any(".motion_modules." in k or ".audio_modules." in k for k in keys):
        return "motion"
    if any(k.startswith("down_blocks.") for k in keys):
        return "denoising_unet" if any(k.startswith("conv_out.") for k in keys) else "reference_unet"
    if any(k.startswith("blocks.") for k in keys) and "conv_in.weight" in keys:
        return "pose_guider"
    return None


def _stage_a_state(part: str, obj: Mapping[str, Any], source: str) -> dict[str, Any]:
    """The file's tensors under their Net names (``<part>.<name>``); files of another kind are refused."""
    if "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    keys = [str(k) for k in obj]
    kind = _stage_a_kind(keys)
    if kind != part:
        what = _A_KINDS[kind] if kind else f"none of MMGT's files (first keys: {', '.join(sorted(keys)[:6])})"
        raise ConversionError(f"{source}: this is {what}, not the {STAGE_A[part]}")
    _check_tensors(obj, source)
    return {f"{part}.{k}": v for k, v in obj.items()}


def _stage_a_modules(states: Mapping[str, Mapping[str, Any]], sources: Mapping[str, str],
                     heads: int = RELEASED_HEADS, norm_groups: int = RELEASED_GROUPS,
                     motion_heads: int = RELEASED_HEADS, motion_max_seq_length: int = RELEASED_MOTION_LEN):
    """Config of the given parts and the mmgt modules they fill, built on the meta device."""
    from mmgt.models.video import PoseGuider
    from mmgt.models.video.unet import build_denoising_unet, build_reference_unet

    shapes = {p: {k: tuple(v.shape) for k, v in st.items()} for p, st in states.items()}
    unets = {p: _unet_config(shapes[p], sources[p], f"{p}.", heads, norm_groups, motion_heads,
                             motion_max_seq_length, STAGE_A[p]) for p in ("reference_unet", "denoising_unet")
             if p in states}
    latent = {p: _shape(shapes[p], f"{p}.conv_in.weight", sources[p], STAGE_A[p])[1] for p in unets}
    if len(unets) == 2 and (unets["reference_unet"] != unets["denoising_unet"] or len(set(latent.values())) > 1):
        raise ConversionError(f"{sources['reference_unet']} and {sources['denoising_unet']}: the two UNets have "
                              "different layouts (MMGT's reference UNet is a copy of the denoising UNet)")
    unet = next(iter(unets.values()), None)
    pg = None
    if "pose_guider" in states:
        src = sources["pose_guider"]
        pg = _pose_guider_channels(shapes["pose_guider"], src, STAGE_A["pose_guider"])
        c0 = _shape(shapes["pose_guider"], "pose_guider.conv_out.weight", src, STAGE_A["pose_guider"])[0]
        if unet is not None and c0 != unet["block_out_channels"][0]:
            raise ConversionError(f"{src}: pose guider output {c0} channels != the UNet's first width "
                                  f"{unet['block_out_channels'][0]}")
    builders = {"reference_unet": lambda: build_reference_unet(unet, latent["reference_unet"]),
                "denoising_unet": lambda: build_denoising_unet(unet, latent["denoising_unet"]),
                "pose_guider": lambda: PoseGuider(c0, tuple(pg))}
    try:
        with torch.device("meta"):
            modules = {p: builders[p]() for p in states}
    except ValueError as err:
        raise ConversionError(f"{', '.join(sources.values())}: inferred config is not a valid mmgt VideoNet part "
                              f"({err})") from err
    config = dict(video=_video_block(unet, pg), parts=list(states),
                  latent_channels=next(iter(latent.values()), None))
    return config, modules


def _convert_stage_a(objs: Mapping[str, tuple[Mapping[str, Any], str]], **sizes: Any) -> Conversion:
    if not objs:
        raise ConversionError("nothing to convert: give reference_unet=, denoising_unet= and/or pose_guider= "
                              "(the stage_2/process_1/*.pth files)")
    states = {p: _stage_a_state(p, obj, src) for p, (obj, src) in objs.items()}
    sources = {p: src for p, (_, src) in objs.items()}
    config, modules = _stage_a_modules(states, sources, **sizes)
    out: dict[str, torch.Tensor] = {}
    for part, module in modules.items():
        src, state, what = sources[part], states[part], STAGE_A[part]
        # every mmgt tensor of the part but those the sub-stage A Net does not have (motion modules: sub-stage B)
        ref = module.state_dict()
        plan = {n: official_name(n) for n in (f"{part}.{k}" for k in ref)
                if not n.startswith(EXTERNAL) and ".motion_modules." not in n}
        missing = [o[len(part) + 1:] for o in plan.values() if o not in state]
        if missing:
            raise missing_keys_error(src, what, missing)
        for name, off in plan.items():
            t, want = state[off], tuple(ref[name[len(part) + 1:]].shape)
            if tuple(t.shape) != want:
                raise ConversionError(f"{src}: {off[len(part) + 1:]} {tuple(t.shape)} does not fit mmgt's {name} "
                                      f"{want}")
            out[name] = _take(t)
        unplaced = sorted(k[len(part) + 1:] for k in set(state) - set(plan.values()))
        if unplaced:
            raise ConversionError(f"{src}: {len(unplaced)} tensors have no place in mmgt's {part}, first: "
                                  f"{', '.join(unplaced[:5])}")
    return Conversion(state_dict=out, config=config, source=", ".join(sources.values()))


def convert_stage_a(reference_unet: str | Path | Mapping[str, Any] | None = None,
                    denoising_unet: str | Path | Mapping[str, Any] | None = None,
                    pose_guider: str | Path | Mapping[str, Any] | None = None, heads: int = RELEASED_HEADS,
                    norm_groups: int = RELEASED_GROUPS, motion_heads: int = RELEASED_HEADS,
                    motion_max_seq_length: int = RELEASED_MOTION_LEN) -> Conversion:
    """Official sub-stage A files (``stage_2/process_1/{reference_unet,denoising_unet,pose_guider}-*.pth``; path,
    loaded dict or bare state dict; any subset) -> a *partial* VideoNet state dict (float32, mmgt names through the
    same tables as :func:`convert_net`) to start sub-stage B from the official stage A: write it with
    :func:`write_converted` and set ``model.init_from`` to that file. The motion modules (AnimateDiff's, loaded at
    build time from ``unet.motion_adapter``), audio modules and audio projection are not in these files and keep
    their build-time values.

    Strict per file: every tensor placed, every mmgt tensor of the part filled (the reference UNet's output head
    excepted, as in :func:`convert_net`), a file of another kind refused naming it. ``Conversion.config``: ``video``
    (``size.video`` blocks of the given parts; the motion settings are the arguments), ``parts``,
    ``latent_channels``."""
    objs = {}
    for part, given in (("reference_unet", reference_unet), ("denoising_unet", denoising_unet),
                        ("pose_guider", pose_guider)):
        if isinstance(given, (str, Path)):
            objs[part] = (read_official(given, STAGE_A[part]), str(given))
        elif given is not None:
            objs[part] = (given, f"{part} state dict")
    return _convert_stage_a(objs, heads=heads, norm_groups=norm_groups, motion_heads=motion_heads,
                            motion_max_seq_length=motion_max_seq_length)


def convert_stage_a_shapes(reference_unet: Mapping[str, Sequence[int]] | None = None,
                           denoising_unet: Mapping[str, Sequence[int]] | None = None,
                           pose_guider: Mapping[str, Sequence[int]] | None = None,
                           sources: Mapping[str, str] | None = None, **sizes: Any) -> Conversion:
    """:func:`convert_stage_a` of name -> shape lists (e.g. the full-size key lists of the released files) on the
    meta device, no weights; ``sources`` names each list in errors (default ``<part> key list``)."""
    objs = {}
    for part, shapes in (("reference_unet", reference_unet), ("denoising_unet", denoising_unet),
                         ("pose_guider", pose_guider)):
        if shapes is not None:
            state = {k: torch.empty(tuple(int(s) for s in v), device="meta") for k, v in shapes.items()}
            objs[part] = (state, (sources or {}).get(part, f"{part} key list"))
    return _convert_stage_a(objs, **sizes)


def write_converted(conv: Conversion, path: str | Path) -> Path:
    """Write a conversion's state dict as a plain ``.safetensors`` state dict (what ``model.init_from`` reads through
    :func:`mmgt.checkpoints.net_state`), atomically; the source and config go into the metadata."""
    import json

    from safetensors.torch import save_file

    from mmgt.data.video_io import atomic_path

    if any(t.device.type == "meta" for t in conv.state_dict.values()):
        raise ConversionError(f"{conv.source}: a shapes-only conversion (meta device) has no weights to write")
    out = Path(path)
    meta = {"format": "mmgt.official.converted", "source": conv.source, "config": json.dumps(conv.config)}
    with atomic_path(out) as tmp:
        save_file({k: v.contiguous() for k, v in conv.state_dict.items()}, str(tmp), metadata=meta)
    return out


def build_converted(conv: Conversion, video: Mapping[str, Any] | None = None, load_weights: bool = False,
                    meta: bool = False):
    """A VideoNet with the converted weights loaded (eval mode, as the official sampler).

    ``video``: overrides of the ``size.video`` block (e.g. the codec / image encoder with local paths, or small
    stand-ins in tests); ``load_weights``: load those pretrained parts from their files. Every tensor of the net
    is filled by the conversion except the external parts (codec, image encoder) and the reference UNet's unused
    output head.
    """
    from mmgt.models.video import VideoNet

    cfg = {**conv.config["video"], **dict(video or {})}
    att = conv.config["attention"]
    ctx = torch.device("meta") if meta else torch.device("cpu")
    with ctx:
        net = VideoNet(cfg, conv.config["audio_embed_shape"], att["type"], att["blocks"], att["n_branches"],
                       load_weights=load_weights, attention_module=att["module"])
    missing, unexpected = net.load_state_dict(conv.state_dict, strict=False, assign=meta)
    left = [k for k in missing if not k.startswith(EXTERNAL)]
    if left or unexpected:
        raise ConversionError(f"{conv.source}: converted weights do not fit the VideoNet built from their config "
                              f"(unfilled {left[:5]}, unexpected {unexpected[:5]})")
    return net.eval()


def official_video_hparams(conv: Conversion, weights_dir: str | None = None) -> dict[str, Any]:
    """The VideoModule settings under which mmgt computes the official MMGT stage 2 with the converted net.

    Keys: ``net`` (``size.video``; codec / CLIP paths under ``weights_dir`` if given), ``attention``,
    ``scheduler`` (training: scaled_linear betas), ``sampling`` (inference: linear betas, 30 DDIM steps, eta 0,
    guidance 3.5, branch weights [1, 1, 2], 12-frame windows with overlap 4), ``loss`` (min-SNR-5 on SNR + 1,
    noise offset 0.05, image / audio dropout 0.1 / 0.05 per batch), ``data_info`` (audio window shape, branch
    count) and ``mask_branches`` (official routing: training full <- hands, inference full <- 1 + lips).
    """
    video = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in conv.config["video"].items()}
    if weights_dir:
        video["codec"]["path"] = f"{weights_dir}/sd-vae-ft-mse"
        video["image_encoder"]["path"] = f"{weights_dir}/sd-image-variations-diffusers/image_encoder"
    n = conv.config["num_branches"]
    return dict(
        net=video,
        attention={**conv.config["attention"], "branch_weights": [1.0] * n},
        scheduler=dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                       set_alpha_to_one=True),
        sampling=dict(steps=30, guidance=3.5, context_frames=12, context_overlap=4, eta=0.0,
                      branch_weights=[1.0, 1.0, 2.0], beta_schedule="linear"),
        loss=dict(snr_gamma=5.0, snr_plus_one=True, noise_offset=0.05, drop_image=0.1, drop_audio=0.05,
                  cfg_per_sample=False),
        data_info=dict(audio_embed_shape=list(conv.config["audio_embed_shape"]), num_branches=n),
        mask_branches=dict(train={"full": "hands", "face": "face", "lips": "lips"},
                           inference={"full": "1 + lips", "face": "face", "lips": "lips"}),
    )
