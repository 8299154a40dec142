"""The default stage-2 backbone: two diffusers UNets built from one small config dict (:class:`UNetBackbone`).

- reference UNet: ``UNet2DConditionModel`` (SD layout), run on the reference latent at t=0;
- denoising UNet: ``UNetMotionModel`` (the same 2D layout + AnimateDiff temporal transformers after every spatial
  layer and in the mid block), either built directly (random init, motion ``proj_out`` zeroed so the motion
  modules start as identities, as in AnimateDiff) or via ``UNetMotionModel.from_unet2d`` from local pretrained
  SD and ``MotionAdapter`` folders.

Config keys (``size.video.unet``): ``block_out_channels``, ``layers_per_block``, ``down_blocks`` (``cross`` or
``plain`` per level), ``heads``, ``cross_attention_dim``, ``norm_num_groups``, ``motion_heads``,
``motion_max_seq_length``, ``pretrained`` (SD UNet folder or null), ``motion_adapter`` (folder or null),
``motion_norm`` (``per_frame`` | ``across_frames`` | null, see :func:`set_motion_norm`).

The UNets stay unmodified diffusers models (their state dicts keep the SD / AnimateDiff names): the reference bank
goes through attention processors (:mod:`mmgt.models.video.reference`), pose features and audio modules attach
through forward hooks on ``conv_in`` and on the spatial ``Transformer2DModel`` layers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel
from diffusers.models.unets.unet_motion_model import AnimateDiffTransformer3D
from torch import nn

from mmgt.models.pretrained import check_complete
from mmgt.models.video.backbone import ROLE_GROUPS, Backbone, Site
from mmgt.models.video.reference import ForwardContext, attach_reference
from mmgt.models.video.weights import IncompleteWeightsError, load_pretrained

_DOWN = {"cross": "CrossAttnDownBlock2D", "plain": "DownBlock2D"}
_UP = {"cross": "CrossAttnUpBlock2D", "plain": "UpBlock2D"}

# SD-1.5 layout (what `size=full` uses; the published SD / sd-image-variations UNets have this config).
SD15_UNET = dict(block_out_channels=[320, 640, 1280, 1280], layers_per_block=2,
                 down_blocks=["cross", "cross", "cross", "plain"], heads=8, cross_attention_dim=768,
                 norm_num_groups=32, motion_heads=8, motion_max_seq_length=32)


UNET_KEYS = frozenset(("block_out_channels", "layers_per_block", "down_blocks", "heads", "cross_attention_dim",
                       "norm_num_groups", "motion_heads", "motion_max_seq_length", "motion_mid_block", "pretrained",
                       "variant", "motion_adapter", "motion_adapter_variant", "motion_norm"))
MOTION_NORMS = ("per_frame", "across_frames")
# size.video.unet key -> the MotionAdapter config field it must agree with (the adapter's config decides)
ADAPTER_FIELDS = {"motion_heads": "motion_num_attention_heads", "motion_max_seq_length": "motion_max_seq_length",
                  "motion_mid_block": "use_motion_mid_block", "layers_per_block": "motion_layers_per_block"}


def check_unet_config(cfg: dict, key: str = "size.video.unet") -> None:
    """Refuse unknown keys (a typo would otherwise silently fall back to a default)."""
    bad = sorted(set(cfg) - UNET_KEYS)
    if bad:
        raise ValueError(f"{key}: unknown key(s) {bad}; known: {sorted(UNET_KEYS)}")
    mode = cfg.get("motion_norm")
    if mode is not None and mode not in MOTION_NORMS:
        raise ValueError(f"{key}.motion_norm must be one of {MOTION_NORMS} or null, got {mode!r}")


def unet2d_config(cfg: dict, latent_channels: int) -> dict[str, Any]:
    """diffusers ``UNet2DConditionModel`` kwargs for our compact config."""
    kinds = list(cfg["down_blocks"])
    if len(kinds) != len(cfg["block_out_channels"]) or any(k not in _DOWN for k in kinds):
        raise ValueError(f"unet.down_blocks must list 'cross'/'plain' per level of block_out_channels, got {kinds}")
    return dict(
        in_channels=latent_channels, out_channels=latent_channels,
        down_block_types=tuple(_DOWN[k] for k in kinds), up_block_types=tuple(_UP[k] for k in reversed(kinds)),
        block_out_channels=tuple(cfg["block_out_channels"]), layers_per_block=int(cfg["layers_per_block"]),
        cross_attention_dim=int(cfg["cross_attention_dim"]), attention_head_dim=int(cfg["heads"]),
        norm_num_groups=int(cfg["norm_num_groups"]),
    )


def _same(a: Any, b: Any, n: int) -> bool:
    """Equal as per-block values (an int stands for the same value at each of the ``n`` levels)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return bool(a) == bool(b)
    def per_block(v: Any) -> list[int]:
        return [int(x) for x in v] if isinstance(v, (list, tuple)) else [int(v)] * n

    return per_block(a) == per_block(b)


def motion_settings(cfg: dict, adapter_config: Any = None, key: str = "size.video.unet",
                    source: str = "the motion adapter") -> dict[str, Any]:
    """``UNetMotionModel`` motion kwargs. With a loaded ``MotionAdapter`` its config decides (heads, sequence
    length, mid block, layers); a YAML value that disagrees is refused, so the recorded config always describes the
    built network (a checkpoint rebuilt without the adapter folder gets the same architecture). Without an adapter:
    ``motion_heads`` (null: ``heads``), ``motion_max_seq_length`` (null: 32), ``motion_mid_block`` (null: true)."""
    own = dict(motion_heads=cfg.get("motion_heads"), motion_max_seq_length=cfg.get("motion_max_seq_length"),
               motion_mid_block=cfg.get("motion_mid_block"), layers_per_block=cfg.get("layers_per_block"))
    if adapter_config is not None:
        a = dict(adapter_config)
        if a.get("conv_in_channels"):
            raise ValueError(f"{source}: a PIA adapter (conv_in_channels={a['conv_in_channels']}) is not supported")
        n = len(cfg["block_out_channels"])
        if len(a["block_out_channels"]) != n or not _same(a["block_out_channels"], cfg["block_out_channels"], n):
            raise ValueError(f"{source}: block_out_channels {list(a['block_out_channels'])} != "
                             f"{key}.block_out_channels {list(cfg['block_out_channels'])}")
        for ours, theirs in ADAPTER_FIELDS.items():
            if own[ours] is not None and not _same(own[ours], a[theirs], n):
                raise ValueError(f"{key}.{ours}={own[ours]!r} but {source} has {theirs}={a[theirs]!r}; set "
                                 f"{key}.{ours}={a[theirs]!r} (the adapter's config decides)")
            own[ours] = a[theirs]
        layers = dict(temporal_transformer_layers_per_block=a.get("motion_transformer_layers_per_block", 1),
                      temporal_transformer_layers_per_mid_block=a.get("motion_transformer_layers_per_mid_block", 1))
    else:
        layers = dict(temporal_transformer_layers_per_block=1, temporal_transformer_layers_per_mid_block=1)
    return dict(
        motion_num_attention_heads=int(own["motion_heads"] if own["motion_heads"] is not None else cfg["heads"]),
        motion_max_seq_length=int(32 if own["motion_max_seq_length"] is None else own["motion_max_seq_length"]),
        use_motion_mid_block=bool(True if own["motion_mid_block"] is None else own["motion_mid_block"]),
        **layers,
    )


def motion_config(cfg: dict, latent_channels: int, motion: dict[str, Any] | None = None) -> dict[str, Any]:
    """diffusers ``UNetMotionModel`` kwargs for the same layout plus motion modules (``motion``: from
    :func:`motion_settings`, by default the YAML's)."""
    c2 = unet2d_config(cfg, latent_channels)
    return dict(
        in_channels=c2["in_channels"], out_channels=c2["out_channels"],
        down_block_types=tuple(t.replace("2D", "Motion") for t in c2["down_block_types"]),
        up_block_types=tuple(t.replace("2D", "Motion") for t in c2["up_block_types"]),
        block_out_channels=c2["block_out_channels"], layers_per_block=c2["layers_per_block"],
        cross_attention_dim=c2["cross_attention_dim"], num_attention_heads=int(cfg["heads"]),
        norm_num_groups=c2["norm_num_groups"], **(motion if motion is not None else motion_settings(cfg)),
    )


def zero_motion_outputs(unet: UNetMotionModel) -> None:
    """Zero every motion module's ``proj_out`` so the temporal layers start as identities."""
    for name, m in unet.named_modules():
        if name.endswith("motion_modules") and isinstance(m, nn.ModuleList):
            for mm in m:
                nn.init.zeros_(mm.proj_out.weight)
                nn.init.zeros_(mm.proj_out.bias)


class FrameGroupNorm(nn.GroupNorm):
    """GroupNorm whose statistics are taken per frame of a (B, C, F, H, W) input, as AnimateDiff and MMGT compute
    them (diffusers' ``AnimateDiffTransformer3D`` pools them over all frames of the window). Same parameters."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5:
            return super().forward(x)
        b, c, f, h, w = x.shape
        y = super().forward(x.transpose(1, 2).reshape(b * f, c, h, w))
        return y.reshape(b, f, c, h, w).transpose(1, 2)


def set_motion_norm(unet: nn.Module, mode: str) -> None:
    """Make every motion module's input GroupNorm ``per_frame`` (AnimateDiff/MMGT) or ``across_frames`` (diffusers).

    Weights trained with one convention compute a different function under the other (measured on MMGT's motion
    module: 1-5 % output change; the full net's prediction moves by 7 %), so AnimateDiff / MMGT weights need
    ``per_frame``. The module is swapped in place and keeps its ``weight`` / ``bias`` parameters (and names).
    """
    if mode not in MOTION_NORMS:
        raise ValueError(f"motion_norm must be one of {MOTION_NORMS}, got {mode!r}")
    cls = FrameGroupNorm if mode == "per_frame" else nn.GroupNorm
    for m in unet.modules():
        if isinstance(m, AnimateDiffTransformer3D) and type(m.norm) is not cls:
            old = m.norm
            new = cls(old.num_groups, old.num_channels, eps=old.eps, affine=old.affine, device="meta")
            if old.affine:
                new.weight, new.bias = old.weight, old.bias
            m.norm = new


def motion_norm_mode(cfg: dict) -> str:
    """The configured ``motion_norm``; null means ``per_frame`` when AnimateDiff weights are loaded (the convention
    they were trained with), else ``across_frames`` (diffusers' module as is)."""
    return cfg.get("motion_norm") or ("per_frame" if cfg.get("motion_adapter") else "across_frames")


def build_reference_unet(cfg: dict, latent_channels: int, key: str = "size.video.unet",
                         load_weights: bool = True) -> UNet2DConditionModel:
    """The SD UNet folder ``pretrained`` loaded strictly (``variant``: its weight files' variant), else random init."""
    if cfg.get("pretrained") and load_weights:
        return load_pretrained(UNet2DConditionModel, cfg["pretrained"], key=f"{key}.pretrained", what="unet",
                               variant=cfg.get("variant"))
    return UNet2DConditionModel(**unet2d_config(cfg, latent_channels))


def random_adapter(unet2d_cfg: Any, motion: dict[str, Any]) -> MotionAdapter:
    """Random-init motion modules for a UNet of config ``unet2d_cfg`` (what an absent AnimateDiff adapter means)."""
    return MotionAdapter(block_out_channels=tuple(unet2d_cfg["block_out_channels"]),
                         motion_layers_per_block=unet2d_cfg["layers_per_block"],
                         motion_transformer_layers_per_block=motion["temporal_transformer_layers_per_block"],
                         motion_transformer_layers_per_mid_block=motion["temporal_transformer_layers_per_mid_block"],
                         motion_num_attention_heads=motion["motion_num_attention_heads"],
                         motion_norm_num_groups=unet2d_cfg["norm_num_groups"],
                         motion_max_seq_length=motion["motion_max_seq_length"],
                         use_motion_mid_block=motion["use_motion_mid_block"])


def inflate(unet2d: UNet2DConditionModel, adapter: MotionAdapter, motion: dict[str, Any],
            source: str = "the UNet and motion adapter") -> UNetMotionModel:
    """``UNetMotionModel`` = the 2D UNet's tensors + the adapter's motion modules, without a copy: the motion UNet is
    built on the meta device (accelerate, buffers real) with diffusers' 2D -> motion config mapping, then takes the
    tensors themselves (``assign=True``); a strict load, so every tensor is accounted for. ``unet2d`` and
    ``adapter`` share their storage with the result and must not be used afterwards."""
    from accelerate import init_empty_weights

    with init_empty_weights():
        config = UNetMotionModel.from_unet2d(unet2d, None, load_weights=False).config
        unet = UNetMotionModel.from_config(config, **motion)
    state = {**unet2d.state_dict(), **adapter.state_dict()}
    try:
        unet.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as err:
        raise IncompleteWeightsError(f"{source}: do not fill UNetMotionModel exactly: {err}") from err
    check_complete(unet, {}, source)
    return unet


def load_motion_modules(unet: UNetMotionModel, adapter: MotionAdapter, source: str) -> None:
    """Copy every motion module of ``adapter`` into ``unet``; any motion tensor on one side only is an error."""
    own = {k for k in unet.state_dict() if ".motion_modules." in k}
    state = adapter.state_dict()
    check_complete(unet, dict(missing_keys=own - set(state), unexpected_keys=set(state) - own), source)
    unet.load_state_dict(state, strict=False)


def build_denoising_unet(cfg: dict, latent_channels: int, key: str = "size.video.unet",
                         load_weights: bool = True) -> UNetMotionModel:
    """The motion UNet: the pretrained SD UNet inflated with the ``motion_adapter``'s modules (both strict, their
    ``variant`` / ``motion_adapter_variant`` weight files), or built from the YAML; motion modules without an adapter
    start as identities (``proj_out`` zeroed, as AnimateDiff)."""
    check_unet_config(cfg, key)
    adapter = None
    if cfg.get("motion_adapter") and load_weights:
        adapter = load_pretrained(MotionAdapter, cfg["motion_adapter"], key=f"{key}.motion_adapter",
                                  what="motion_adapter", variant=cfg.get("motion_adapter_variant"))
    source = f"motion adapter folder {cfg.get('motion_adapter')} (config key `{key}.motion_adapter`)"
    motion = motion_settings(cfg, adapter.config if adapter is not None else None, key, source)
    if cfg.get("pretrained") and load_weights:
        unet2d = build_reference_unet(cfg, latent_channels, key)
        motion_src = source if adapter is not None else "random-init motion modules"
        unet = inflate(unet2d, adapter if adapter is not None else random_adapter(unet2d.config, motion), motion,
                       f"UNet folder {cfg['pretrained']} (config key `{key}.pretrained`) + {motion_src}")
    else:
        unet = UNetMotionModel(**motion_config(cfg, latent_channels, motion))
        if adapter is not None:
            load_motion_modules(unet, adapter, source)
    if adapter is None:
        zero_motion_outputs(unet)
    set_motion_norm(unet, motion_norm_mode(cfg))
    return unet


BLOCK_KINDS = ("down", "mid", "up")
CHECKPOINTABLE = ("denoising_unet", "reference_unet")  # model.gradient_checkpointing: [<these>]


class UNetBackbone(Backbone):
    """Reference UNet (``UNet2DConditionModel``, writes the bank at t=0) + denoising UNet with motion modules
    (``UNetMotionModel``, reads it): MMGT's / AnimateDiff's layout. Keyword arguments: the ``size.video.unet`` keys.

    Attention sites are the spatial ``Transformer2DModel`` layers of the blocks named by ``attention.blocks``:
    ``down`` / ``mid`` / ``up`` (every block of that kind with attention) or single blocks such as ``down.1``.

    ``temporal=False`` builds the denoising UNet as a plain ``UNet2DConditionModel`` (no motion modules: the frames
    of a window are denoised independently, which is what identity motion modules compute); its state-dict names
    are those of the motion UNet's spatial layers, so a sub-stage-B net (``temporal=True``) initialised from it
    takes every tensor and starts its motion modules as identities.
    """

    def __init__(self, ctx: ForwardContext, latent_channels: int, load_weights: bool = True,
                 key: str = "size.video.unet", temporal: bool = True, **unet: Any) -> None:
        super().__init__(ctx)
        self.temporal = bool(temporal)
        self.reference_unet = build_reference_unet(unet, latent_channels, key, load_weights)
        if self.temporal:
            self.denoising_unet = build_denoising_unet(unet, latent_channels, key, load_weights)
        else:  # an image model (sub-stage A without motion modules): the SD UNet alone, inflated at sub-stage B
            check_unet_config(unet, key)
            self.denoising_unet = build_reference_unet(unet, latent_channels, key, load_weights)
        if self.denoising_unet.config.in_channels != latent_channels:
            raise ValueError(f"{key}: UNet in_channels {self.denoising_unet.config.in_channels} != codec "
                             f"latent channels {latent_channels}")
        self.latent_channels = int(latent_channels)
        self.context_dim = int(self.denoising_unet.config.cross_attention_dim)
        self.norm_groups = int(self.denoising_unet.config.norm_num_groups)
        self.reference_layers = attach_reference(self.reference_unet, self.denoising_unet, ctx)

    def forward(self, latents: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, c, f, h, w = latents.shape
        ehs = context.repeat_interleave(f, dim=0)  # one token per frame (B·F, 1, D)
        if self.temporal:
            return self.denoising_unet(latents, timesteps, encoder_hidden_states=ehs, return_dict=False)[0]
        x = latents.transpose(1, 2).reshape(b * f, c, h, w)  # frames into the batch, as the motion UNet does
        out = self.denoising_unet(x, timesteps.repeat_interleave(f), encoder_hidden_states=ehs, return_dict=False)[0]
        return out.reshape(b, f, *out.shape[1:]).transpose(1, 2)

    def run_reference(self, ref_latents: torch.Tensor, context: torch.Tensor) -> None:
        t0 = torch.zeros(ref_latents.shape[0], device=ref_latents.device, dtype=torch.long)
        self.reference_unet(ref_latents, t0, encoder_hidden_states=context, return_dict=False)

    def input_site(self) -> Site:
        c0 = int(self.denoising_unet.config.block_out_channels[0])
        return Site("conv_in", self.denoising_unet.conv_in, c0, self.latent_channels, self.norm_groups)

    def attention_sites(self, blocks: Sequence[str]) -> list[Site]:
        """The spatial attentions of the selected blocks; ``in_channels`` is the block's input width for layer 0 of
        a down block and the block's width otherwise (what MMGT sizes its audio module by)."""
        for b in blocks:
            if b.split(".")[0] not in BLOCK_KINDS:
                raise ValueError(f"attention.blocks entries must be down/mid/up[.i], got {b!r}")
        unet = self.denoising_unet
        parts = [("down", i, blk) for i, blk in enumerate(unet.down_blocks)]
        parts += [("mid", 0, unet.mid_block)] if unet.mid_block is not None else []
        parts += [("up", i, blk) for i, blk in enumerate(unet.up_blocks)]
        sites = []
        for kind, i, blk in parts:
            if (kind in blocks or f"{kind}.{i}" in blocks) and hasattr(blk, "attentions"):
                prefix = "mid_block" if kind == "mid" else f"{kind}_blocks.{i}"
                for j, a in enumerate(blk.attentions):
                    c_in = blk.resnets[0].in_channels if kind == "down" and j == 0 else a.config.in_channels
                    sites.append(Site(f"{prefix}.attentions.{j}", a, int(a.config.in_channels), int(c_in),
                                      self.norm_groups))
        return sites

    def unused_reference_parameters(self) -> list[str]:
        """Reference-UNet parameters that cannot influence any bank entry (its output head and the layers after the
        last written self-attention input); kept frozen so DDP never sees parameters without gradients."""
        ref = self.reference_unet
        names = [n for n, _ in ref.named_parameters() if n.startswith(("conv_norm_out.", "conv_out."))]
        last = len(ref.up_blocks) - 1
        blk = ref.up_blocks[last]
        if hasattr(blk, "attentions"):
            a = len(blk.attentions) - 1
            t = len(blk.attentions[a].transformer_blocks) - 1
            pre = f"up_blocks.{last}.attentions.{a}."
            tails = (pre + "proj_out.",) + tuple(f"{pre}transformer_blocks.{t}.{s}."
                                                 for s in ("attn1", "norm2", "attn2", "norm3", "ff"))
            names += [n for n, _ in ref.named_parameters() if n.startswith(tails)]
        return names

    def parameter_groups(self) -> dict[str, list[tuple[str, nn.Parameter]]]:
        unused = {f"reference_unet.{n}" for n in self.unused_reference_parameters()}
        groups: dict[str, list[tuple[str, nn.Parameter]]] = {g: [] for g in ROLE_GROUPS}
        for n, p in self.named_parameters():
            if n.startswith("denoising_unet."):
                groups["motion_modules" if ".motion_modules." in n else "denoising_unet"].append((n, p))
            elif n not in unused:
                groups["reference_unet"].append((n, p))
        return groups

    def enable_gradient_checkpointing(self, parts: Sequence[str] | None = None) -> None:
        """Recompute the activations of the named UNets (``denoising_unet`` / ``reference_unet``; None: both) in
        backward (diffusers' per-block checkpointing, active in training mode only)."""
        names = CHECKPOINTABLE if parts is None else tuple(parts)
        bad = [p for p in names if p not in CHECKPOINTABLE]
        if bad:
            raise ValueError(f"model.gradient_checkpointing: unknown UNet(s) {bad}; choose from {list(CHECKPOINTABLE)}")
        for name in names:
            getattr(self, name).enable_gradient_checkpointing()
