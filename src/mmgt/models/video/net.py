"""``VideoNet``: every stage-2 part behind one forward used identically in training and sampling.

Parts: latent codec (SD VAE or pixel-unshuffle), reference-image encoder (CLIP or small conv), the backbone
(:class:`~mmgt.models.video.backbone.Backbone`; by default the reference UNet + denoising UNet with motion modules of
:class:`~mmgt.models.video.unet.UNetBackbone`), pose guider (added at the backbone's input site), audio projection and
the audio attention variant (:mod:`mmgt.models.video.attention`: audio modules at the backbone's attention sites).

VideoNet knows nothing of the backbone's architecture: it asks the backbone for its sites and hooks the pose features
and the audio modules there. All per-call inputs travel through one
:class:`~mmgt.models.video.reference.ForwardContext` that :meth:`VideoNet.forward` fills from its arguments.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from mmgt.models.video.attention import AudioAttentionVariant, build_attention, variant_class
from mmgt.models.video.audio_proj import AudioProjection
from mmgt.models.video.backbone import ROLE_GROUPS, Backbone, build_backbone
from mmgt.models.video.codec import build_codec
from mmgt.models.video.encoders import CLIPImageEncoder, build_image_encoder
from mmgt.models.video.mmhaa import MASK_RESIZE, MaskPyramid, as_weights
from mmgt.models.video.pose_guider import PoseGuider
from mmgt.models.video.reference import ForwardContext, set_attention_processor

NET_KEYS = frozenset(("codec", "image_encoder", "unet", "backbone", "pose_guider", "audio_proj", "audio_attention",
                      "reference_bank_dtype"))
OWN_PARTS = ("codec", "pose_guider", "image_encoder", "audio_proj", "audio_modules")


class VideoNet(nn.Module):
    """Codec + image encoder + backbone + pose guider + audio projection + audio attention variant.

    Args:
        cfg: the ``size.video`` block (``codec``, ``image_encoder``, ``unet`` or ``backbone``, ``pose_guider``,
            ``audio_proj``, ``audio_attention``, optional ``reference_bank_dtype``); unknown keys are refused.
        audio_shape: (window, layers, dim) of one frame of ``audio_emb``; only needed by variants that use audio.
        attention: the ``attention`` config (``_target_`` or ``type``, ``module``, ``blocks``, ``n_branches``,
            ``branch_weights``), or its ``type`` alone as a string, with the older keyword form
            ``attention_blocks`` (default ``[down]``), ``n_branches`` (default 3) and ``attention_module``.
        mask_branches: the data's region-mask branch count: the one statement of the branch count (``n_branches``
            is only for files that state their own, e.g. converted official weights).
        mask_resize: how the data's one-size masks are brought to each attention resolution (``area`` | ``pil``,
            :func:`~mmgt.models.video.mmhaa.resize_masks`; the mask config's ``resize``).
        load_weights: load the pretrained files named in ``cfg`` (False: random init, e.g. on the meta device).
        key: config path of ``cfg`` used in error messages.
        temporal: False builds an image model: a backbone without temporal layers and no audio projection or audio
            modules (sub-stage A uses neither: identity motion modules and skipped audio modules would only take
            memory and checkpoint space); a temporal net initialised from it starts with identity motion modules
            and zero-output audio modules, the same function.
    """

    def __init__(self, cfg: Mapping[str, Any], audio_shape: Sequence[int] | None = None,
                 attention: str | Mapping[str, Any] | None = "mm_haa", attention_blocks: Sequence[str] | None = None,
                 n_branches: int | None = None, load_weights: bool = True, key: str = "size.video",
                 attention_module: str | type | None = None, mask_branches: int | None = None,
                 mask_resize: str = "area", temporal: bool = True) -> None:
        super().__init__()
        unknown = sorted(set(cfg) - NET_KEYS)
        if unknown:
            raise ValueError(f"{key}: unknown key(s) {unknown}; known: {sorted(NET_KEYS)}")
        if attention is None or isinstance(attention, str):
            attention = dict(type=attention or "none", blocks=list(attention_blocks or ("down",)),
                             n_branches=n_branches, module=attention_module)
        elif (attention_blocks, n_branches, attention_module) != (None, None, None):
            raise ValueError("VideoNet: with an attention config, give blocks / n_branches / module inside it")
        variant, settings = variant_class(attention)
        self.temporal = bool(temporal)
        if not self.temporal:  # an image model: no audio modules (settings of the configured variant unused)
            variant, settings = variant_class(None)
        if mask_resize not in MASK_RESIZE:
            raise ValueError(f"mask resize mode must be one of {MASK_RESIZE}, got {mask_resize!r}")
        self.mask_resize = mask_resize
        self.ctx = ForwardContext()
        # MMGT copies the reference bank as float16 before the reader concatenates it (promoting back); keeping it
        # in the compute dtype (null) changes the prediction by ~3e-6 relative
        bank_dtype = cfg.get("reference_bank_dtype")
        if bank_dtype not in (None, "float16", "bfloat16", "float32"):
            raise ValueError(f"{key}.reference_bank_dtype must be null, float16, bfloat16 or float32, "
                             f"got {bank_dtype!r}")
        self.bank_dtype = None if bank_dtype is None else getattr(torch, bank_dtype)
        self.codec = build_codec(cfg["codec"], f"{key}.codec", load_weights)
        backbone = build_backbone(cfg, self.ctx, self.codec.latent_channels, load_weights, key, temporal=temporal)
        self._adopt(backbone)
        site = backbone.input_site()
        pg = dict(cfg.get("pose_guider") or {})
        self.pose_guider = PoseGuider(site.channels, tuple(pg.get("channels", (16, 32, 96, 256))))
        if self.pose_guider.factor != self.codec.factor:
            raise ValueError(f"{key}.pose_guider.channels gives {self.pose_guider.factor}x downsampling but the codec "
                             f"downsamples {self.codec.factor}x (need len(channels) - 1 = log2(factor))")
        if pg.get("pretrained") and load_weights:
            self.pose_guider.load_controlnet(pg["pretrained"], f"{key}.pose_guider.pretrained")
        cross_dim = backbone.context_dim
        self.image_encoder = build_image_encoder(dict(cfg["image_encoder"]), cross_dim, f"{key}.image_encoder",
                                                 load_weights)
        self._hooks = [backbone.attach(site, self._add_pose)]

        # audio_modules is registered before audio_proj (and filled after it, the order of initialisation): the
        # parameter order of earlier checkpoints (optimiser states are stored by position)
        self.add_module("audio_modules", None)
        self.audio_proj: AudioProjection | None = None
        if variant.uses_audio:
            if audio_shape is None:
                raise ValueError(f"attention.type={variant.alias or variant.__name__} needs the audio embedding "
                                 "shape (window, L, D)")
            ap = dict(cfg.get("audio_proj") or {})
            self.audio_proj = AudioProjection(*[int(s) for s in audio_shape], hidden_dim=int(ap.get("hidden_dim", 512)),
                                              tokens=int(ap.get("tokens", 32)), dim=int(ap.get("dim", cross_dim)))
        heads = int((cfg.get("audio_attention") or {}).get("heads", 8))
        audio_dim = self.audio_proj.dim if self.audio_proj is not None else 0
        self.audio_modules: AudioAttentionVariant = build_attention(variant, settings, backbone, audio_dim, heads,
                                                                    mask_branches)
        for s in self.audio_modules.sites:
            self._hooks.append(backbone.attach(s, self._audio_fn(s.key)))

    def _adopt(self, backbone: Backbone) -> None:
        """Hold the backbone outside the module tree and its children as this net's own parts: the state-dict names
        stay the parts' names (``denoising_unet.*``, ...), as in checkpoints written before the backbone seam."""
        own = [n for n, _ in backbone.named_parameters(recurse=False)] + \
              [n for n, _ in backbone.named_buffers(recurse=False)]
        if own:
            raise ValueError(f"{type(backbone).__name__}: keep weights in child modules, not on the backbone itself "
                             f"({own[:3]})")
        clash = [n for n, _ in backbone.named_children() if n in OWN_PARTS or hasattr(type(self), n)]
        if clash:
            raise ValueError(f"{type(backbone).__name__}: child module names {clash} clash with VideoNet's parts")
        object.__setattr__(self, "_backbone", backbone)
        for name, child in backbone.named_children():
            self.add_module(name, child)

    @property
    def backbone(self) -> Backbone:
        return self.__dict__["_backbone"]

    def train(self, mode: bool = True) -> VideoNet:
        super().train(mode)
        self.backbone.training = mode  # outside the module tree: its children follow super().train
        return self

    # ----------------------------------------------------------------------------------------------- hooks
    def _add_pose(self, h: torch.Tensor) -> torch.Tensor:
        pf = self.ctx.pose_features
        return h if pf is None else h + pf.to(h.dtype)

    def _audio_fn(self, key: str):
        def fn(h: torch.Tensor) -> torch.Tensor:
            ctx = self.ctx
            if ctx.audio_tokens is None:
                return h
            masks = ctx.masks.at(h.shape[-2:]) if ctx.masks is not None else None
            return self.audio_modules.site_forward(key, h, ctx.audio_tokens, masks, ctx.branch_weights)
        return fn

    # ----------------------------------------------------------------------------------------------- parts
    @property
    def masked(self) -> bool:
        """Region masks gate the audio branches (the batch must carry them)."""
        return self.audio_modules.masked

    @property
    def n_branches(self) -> int:
        return self.audio_modules.n_branches

    @property
    def attention_type(self) -> str:
        """The attention variant's alias (``none`` | ``cross`` | ``haa`` | ``mm_haa``) or class name."""
        return self.audio_modules.alias or type(self.audio_modules).__name__

    @property
    def reference_layers(self) -> list[str]:
        return self.backbone.reference_layers

    @torch.no_grad()
    def encode_frames(self, frames: torch.Tensor, sample: bool = False) -> torch.Tensor:
        """(B, F, 3, H, W) in [-1, 1] -> latents (B, C, F, h, w) (the UNet's layout); (B, 3, H, W) -> (B, C, h, w)."""
        if frames.ndim == 4:
            return self.codec.encode(frames, sample=sample)
        b, f = frames.shape[:2]
        z = self.codec.encode(frames.flatten(0, 1), sample=sample)
        return z.view(b, f, *z.shape[1:]).transpose(1, 2)

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, C, F, h, w) -> (B, F, 3, H, W) in [-1, 1]."""
        b, _, f = latents.shape[:3]
        x = self.codec.decode(latents.transpose(1, 2).flatten(0, 1))
        return x.view(b, f, *x.shape[1:]).clamp(-1, 1)

    def embed_reference(self, ref_frame: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, 1, D) token for the UNets' cross-attention."""
        return self.image_encoder(ref_frame)

    def encode_reference(self, ref_latents: torch.Tensor, ref_embed: torch.Tensor) -> dict[str, torch.Tensor]:
        """Run the backbone's reference path and return its bank (layer name -> (B, S, C) tokens)."""
        ctx = self.ctx
        saved = ctx.bank
        ctx.bank, ctx.writing = {}, True
        try:
            self.backbone.run_reference(ref_latents, ref_embed)
            bank = ctx.bank
        finally:
            ctx.bank, ctx.writing = saved, False
        if set(bank) != set(self.reference_layers):
            raise RuntimeError(f"reference path wrote {len(bank)} of {len(self.reference_layers)} layers")
        if self.bank_dtype is not None:
            bank = {k: v.to(self.bank_dtype) for k, v in bank.items()}
        return bank

    # ----------------------------------------------------------------------------------------------- forward
    def forward(self, noisy_latents: torch.Tensor, timesteps: torch.Tensor, ref_latents: torch.Tensor | None,
                ref_embed: torch.Tensor, pose_images: torch.Tensor, audio_emb: torch.Tensor | None = None,
                masks: torch.Tensor | Sequence[torch.Tensor] | None = None,
                branch_weights: Sequence[float] | torch.Tensor | None = None,
                drop_image: torch.Tensor | None = None, drop_audio: torch.Tensor | None = None,
                reference: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Predict v for ``noisy_latents`` (B, C, F, h, w) at ``timesteps`` (B,).

        Args:
            ref_latents: (B, C, h, w) reference latents (ignored when ``reference`` is given).
            ref_embed: (B, 1, D) reference-image token (:meth:`embed_reference`).
            pose_images: (B, F, 3, H, W) rendered pose in [0, 1].
            audio_emb: (B, F, W, L, D) wav2vec window per frame (None: no audio, the audio modules are skipped).
            masks: region masks (B, K, F, h', w') or a list of levels of that shape (variants that are ``masked``,
                e.g. ``mm_haa``; resized to every attention site's resolution).
            branch_weights: (K,) per-branch weights of MM-HAA (None: ones).
            drop_image / drop_audio: (B,) bool, per-sample classifier-free-guidance dropout: a dropped image
                zeroes the reference token and hides the reference bank; dropped audio zeroes the audio tokens.
            reference: precomputed :meth:`encode_reference` bank (sampling reuses it over steps).
        """
        b, _, f, h, w = noisy_latents.shape
        ctx = self.ctx
        ctx.reset()
        keep = None if drop_image is None else ~drop_image.to(torch.bool).reshape(b)
        if ref_embed.ndim == 2:
            ref_embed = ref_embed[:, None]
        if reference is None and ref_latents is not None:
            reference = self.encode_reference(ref_latents, ref_embed)
        ctx.bank = reference or {}
        ctx.ref_keep, ctx.num_frames = keep, f
        for name, r in ctx.bank.items():
            if r.shape[0] != b:
                raise ValueError(f"reference bank {name} holds {r.shape[0]} samples, batch has {b}")
        ehs = ref_embed if keep is None else ref_embed * keep[:, None, None].to(ref_embed.dtype)
        pose = pose_images.flatten(0, 1)
        pf = self.pose_guider(pose.to(ehs.dtype))
        if tuple(pf.shape[-2:]) != (h, w):
            raise ValueError(f"pose images {tuple(pose.shape[-2:])} give {tuple(pf.shape[-2:])} features, latents are "
                             f"{h}x{w}")
        ctx.pose_features = pf
        if self.audio_proj is not None and audio_emb is not None:
            tokens = self.audio_proj(audio_emb)  # (B, F, T, D)
            if drop_audio is not None:
                tokens = tokens * (~drop_audio.to(torch.bool)).reshape(b, 1, 1, 1).to(tokens.dtype)
            ctx.audio_tokens = tokens.flatten(0, 1)
            if self.masked:
                if masks is None:
                    raise ValueError(f"attention.type={self.attention_type} needs region masks (B, K, F, h, w)")
                ctx.masks = MaskPyramid(masks, self.mask_resize)
                k = next(iter(ctx.masks.cache.values())).shape[1]
                if k != self.n_branches:
                    raise ValueError(f"masks have {k} branches, the model was built with {self.n_branches}")
            ctx.branch_weights = as_weights(branch_weights, self.n_branches, tokens)
        return self.backbone(noisy_latents, timesteps, ehs)

    # ----------------------------------------------------------------------------------------------- groups
    def parameter_groups(self) -> dict[str, list[tuple[str, nn.Parameter]]]:
        """Named groups that configs list as trainable (``model.trainable``): the backbone's (at least the roles
        ``denoising_unet``, ``motion_modules``, ``reference_unet``) and this net's parts. Names are relative to this
        net."""
        groups: dict[str, list[tuple[str, nn.Parameter]]] = {g: [] for g in ROLE_GROUPS}
        groups.update(self.backbone.parameter_groups())
        own = ("pose_guider", "image_encoder", "audio_proj", "audio_modules")
        clash = [g for g in own if g in groups]
        if clash:
            raise ValueError(f"{type(self.backbone).__name__} parameter groups {clash} clash with VideoNet's parts")
        groups.update({g: [] for g in own})
        for n, p in self.named_parameters():
            top = n.split(".")[0]
            if top == "image_encoder":
                if not isinstance(self.image_encoder, CLIPImageEncoder):  # CLIP stays frozen by design
                    groups["image_encoder"].append((n, p))
            elif top in own:
                groups[top].append((n, p))
        return groups

    def set_trainable(self, names: Sequence[str]) -> list[str]:
        """Freeze everything, then unfreeze the named groups; returns the trainable parameter names."""
        groups = self.parameter_groups()
        bad = [g for g in names if g not in groups]
        if bad:
            raise ValueError(f"unknown trainable group(s) {bad}; choose from {sorted(groups)}")
        self.requires_grad_(False)
        out = []
        for g in names:
            for n, p in groups[g]:
                p.requires_grad_(True)
                out.append(n)
        return out

    def enable_gradient_checkpointing(self, parts: Sequence[str] | None = None) -> None:
        """Checkpoint the backbone's activations; ``parts``: only these children (UNet: ``denoising_unet`` /
        ``reference_unet``; None: all)."""
        if parts is None:
            self.backbone.enable_gradient_checkpointing()
        else:
            self.backbone.enable_gradient_checkpointing(list(parts))

    def set_attention_processor(self, kind: str = "sdpa") -> int:
        """Every diffusers attention of the net (UNets, motion and audio modules) computed ``sdpa`` (torch's fused
        kernel, diffusers' default) or ``plain`` (matmul + softmax); returns how many layers were set."""
        return set_attention_processor(self, kind)
