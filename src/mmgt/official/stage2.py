"""Released stage-2 checkpoint (MMGT ``net-*.pth``, the official ``Net.state_dict()``) -> mmgt
:class:`~mmgt.models.video.VideoNet`.

The official file holds four prefixes: ``reference_unet.`` (MMGT's 2-D UNet copy, without ``conv_norm_out`` /
``conv_out``), ``denoising_unet.`` (the inflated 3-D UNet with AnimateDiff ``motion_modules`` and MM-HAA
``audio_modules``), ``pose_guider.`` and ``audioproj.``. The UNet layouts are SD's, so every UNet tensor keeps its
name in diffusers' ``UNet2DConditionModel`` / ``UNetMotionModel``; the AnimateDiff temporal transformers are renamed
(``temporal_transformer.`` dropped, ``attention_blocks.0/1`` -> ``attn1/attn2``, ``norms.0/1`` -> ``norm1/norm2``,
``ff_norm`` -> ``norm3``, the two equal ``pos_encoder.pe`` tables -> the block's one ``pos_embed.pe``), the audio
modules become :class:`~mmgt.models.video.mmhaa.OfficialAudioModule` s, the pose guider diffusers'
``ControlNetConditioningEmbedding`` and the audio projection mmgt's MLP. Parameters are cast to float32.

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

WHAT = "MMGT stage-2 Net checkpoint (net-*.pth: reference_unet., denoising_unet., pose_guider., audioproj.)"
PREFIXES = ("reference_unet.", "denoising_unet.", "pose_guider.", "audioproj.")
# released values that tensor shapes do not show
RELEASED_HEADS = 8
RELEASED_GROUPS = 32
RELEASED_AUDIO_SHAPE = (5, 12, 768)  # wav2vec window (i-2..i+2), 12 hidden layers, 768 dims
# mmgt tensors the official file cannot fill: frozen parts loaded from their own files, and the reference UNet's
# output head, which MMGT's copy of the UNet does not have and the forward never reads
EXTERNAL = ("codec.", "image_encoder.", "reference_unet.conv_norm_out.", "reference_unet.conv_out.")
STAND_IN_ENCODER = {"type": "conv", "channels": [8]}
BRANCHES = ("full", "face", "lip")  # official zero-conv names, in branch order (attn2_0, attn2_1, attn2_2)

# mmgt motion-module sub-name prefix -> official (below ``temporal_transformer.``), per transformer block
_MOTION = {"attn1.": "attention_blocks.0.", "attn2.": "attention_blocks.1.", "norm1.": "norms.0.",
           "norm2.": "norms.1.", "norm3.": "ff_norm.", "pos_embed.pe": "attention_blocks.0.pos_encoder.pe"}
# mmgt OfficialAudioModule sub-name prefix -> official
_AUDIO = {**{f"{n}.": f"transformer_blocks.0.{n}." for n in ("norm1", "attn1", "norm2", "norm3", "ff")},
          **{f"attn.{k}.": f"transformer_blocks.0.attn2_{k}." for k in range(len(BRANCHES))},
          **{f"proj.{k}.": f"transformer_blocks.0.zero_conv_{b}." for k, b in enumerate(BRANCHES)}}
_AUDIO_PROJ = {"mlp.0.": "proj1.", "mlp.2.": "proj2.", "mlp.4.": "proj3.", "norm.": "norm."}


def _sub(name: str, table: Mapping[str, str]) -> str:
    for a, o in table.items():
        if name.startswith(a):
            return o + name[len(a):]
    return name


def official_name(name: str) -> str:
    """The official ``Net.state_dict()`` name of an mmgt ``VideoNet`` tensor (the converter's one mapping)."""
    m = re.match(r"denoising_unet\.(.+\.motion_modules\.\d+)\.(.+)$", name)
    if m:
        sub = m.group(2)
        t = re.match(r"(transformer_blocks\.\d+\.)(.+)$", sub)
        if t:
            sub = t.group(1) + _sub(t.group(2), _MOTION)
        return f"denoising_unet.{m.group(1)}.temporal_transformer.{sub}"
    m = re.match(r"audio_modules\.(down_blocks|up_blocks|mid_block)_(?:(\d+)_)?attentions_(\d+)\.(.+)$", name)
    if m:
        blk = m.group(1) + (f".{m.group(2)}" if m.group(2) is not None else "")
        return f"denoising_unet.{blk}.audio_modules.{m.group(3)}.{_sub(m.group(4), _AUDIO)}"
    if name.startswith("pose_guider.embed."):
        return "pose_guider." + name[len("pose_guider.embed."):]
    if name.startswith("audio_proj."):
        return "audioproj." + _sub(name[len("audio_proj."):], _AUDIO_PROJ)
    return name


def _count(keys: Sequence[str], prefix: str) -> int:
    idx = {int(m.group(1)) for k in keys if (m := re.match(rf"{re.escape(prefix)}\.(\d+)\.", k))}
    return max(idx) + 1 if idx else 0


def _shape(shapes: Mapping[str, Sequence[int]], key: str, source: str) -> tuple[int, ...]:
    if key not in shapes:
        raise missing_keys_error(source, WHAT, [key])
    return tuple(int(s) for s in shapes[key])


def infer_config(shapes: Mapping[str, Sequence[int]], source: str = "state dict", heads: int = RELEASED_HEADS,
                 norm_groups: int = RELEASED_GROUPS, motion_heads: int = RELEASED_HEADS,
                 audio_shape: Sequence[int] = RELEASED_AUDIO_SHAPE) -> dict[str, Any]:
    """mmgt config of an official Net state dict: ``video`` (the ``size.video`` block; codec / image encoder at
    their SD-1.5 defaults without paths), ``attention`` (the ``attention`` group), ``audio_embed_shape`` and
    ``num_branches`` (what the DataModule's ``info()`` normally provides)."""
    keys = list(shapes)
    d = "denoising_unet."
    n_down = _count(keys, d + "down_blocks")
    if n_down == 0:
        raise missing_keys_error(source, WHAT, [d + "down_blocks.0.resnets.0.conv1.weight"])
    widths = [_shape(shapes, f"{d}down_blocks.{i}.resnets.0.conv1.weight", source)[0] for i in range(n_down)]
    kinds = ["cross" if any(k.startswith(f"{d}down_blocks.{i}.attentions.") for k in keys) else "plain"
             for i in range(n_down)]
    if "cross" not in kinds:
        raise ConversionError(f"{source}: the denoising UNet has no cross-attention block")
    first = kinds.index("cross")
    cross_dim = _shape(shapes, f"{d}down_blocks.{first}.attentions.0.transformer_blocks.0.attn2.to_k.weight",
                       source)[1]
    pe = [k for k in keys if k.startswith(d) and k.endswith("pos_encoder.pe")]
    if not pe:
        raise ConversionError(f"{source}: no motion modules (denoising_unet.*.motion_modules.*); a sub-stage A "
                              "denoising UNet is not a stage-2 Net")
    unet = dict(block_out_channels=widths, layers_per_block=_count(keys, d + "down_blocks.0.resnets"),
                down_blocks=kinds, heads=int(heads), cross_attention_dim=int(cross_dim),
                norm_num_groups=int(norm_groups), motion_heads=int(motion_heads),
                motion_max_seq_length=_shape(shapes, pe[0], source)[1], pretrained=None, motion_adapter=None,
                motion_norm="per_frame")
    latent = _shape(shapes, d + "conv_in.weight", source)[1]
    n_pg = _count(keys, "pose_guider.blocks")
    pg = [_shape(shapes, "pose_guider.conv_in.weight", source)[0]]
    pg += [_shape(shapes, f"pose_guider.blocks.{2 * i + 1}.weight", source)[0] for i in range(n_pg // 2)]
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
    video = dict(codec=dict(type="vae", path=None, scaling_factor=0.18215, factor=2 ** (len(pg) - 1)),
                 image_encoder=dict(type="clip", path=None), unet=unet,
                 pose_guider=dict(channels=pg, pretrained=None),
                 audio_proj=dict(hidden_dim=int(hidden), tokens=int(tokens), dim=int(dim)),
                 audio_attention=dict(heads=int(heads)), reference_bank_dtype="float16")
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


def _convert_state(state: Mapping[str, Any], source: str, **sizes: Any) -> Conversion:
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ConversionError(f"{source}: entries that are not tensors: {', '.join(map(str, bad[:5]))}")
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
        t = t.detach().to(torch.float32) if t.is_floating_point() else t.detach()
        out[name] = t if t.device.type == "meta" else t.clone()
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
