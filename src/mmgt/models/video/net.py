"""``VideoNet``: every stage-2 part behind one forward used identically in training and sampling.

Parts: latent codec (SD VAE or pixel-unshuffle), reference-image encoder (CLIP or small conv), reference UNet
(writer), denoising UNet with motion modules (reader), pose guider (added after the denoising ``conv_in``),
audio projection and MM-HAA audio modules (after the spatial transformer of the configured UNet blocks).

The diffusers UNets stay unmodified diffusers models (their state dicts keep the SD / AnimateDiff names): the
reference bank goes through attention processors, the pose features and the audio modules attach through
forward hooks on ``conv_in`` and on the spatial ``Transformer2DModel``s. All per-call inputs travel through one
:class:`~mmgt.models.video.reference.ForwardContext` that :meth:`VideoNet.forward` fills from its arguments.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from mmgt.models.video.audio_proj import AudioProjection
from mmgt.models.video.codec import build_codec
from mmgt.models.video.encoders import CLIPImageEncoder, build_image_encoder
from mmgt.models.video.mmhaa import MaskPyramid, as_weights, audio_module_class
from mmgt.models.video.pose_guider import PoseGuider
from mmgt.models.video.reference import ForwardContext, attach_reference
from mmgt.models.video.unet import build_denoising_unet, build_reference_unet

ATTENTION_TYPES = ("none", "cross", "haa", "mm_haa")
BLOCK_KINDS = ("down", "mid", "up")


def audio_blocks(unet: nn.Module, blocks: Sequence[str]) -> list[tuple[str, nn.Module, int]]:
    """(name, Transformer2DModel, layer input width) of the spatial attentions in the selected blocks.

    The layer input width is what MMGT sizes its audio module by: the block's input channels for layer 0 of a down
    block, the block's width otherwise.

    ``blocks`` entries: ``down`` / ``mid`` / ``up`` (every block of that kind that has attention) or a single
    block such as ``down.1`` / ``up.0``.
    """
    for b in blocks:
        if b.split(".")[0] not in BLOCK_KINDS:
            raise ValueError(f"attention.blocks entries must be down/mid/up[.i], got {b!r}")
    selected = []
    parts = [("down", i, blk) for i, blk in enumerate(unet.down_blocks)]
    parts += [("mid", 0, unet.mid_block)] if unet.mid_block is not None else []
    parts += [("up", i, blk) for i, blk in enumerate(unet.up_blocks)]
    for kind, i, blk in parts:
        if (kind in blocks or f"{kind}.{i}" in blocks) and hasattr(blk, "attentions"):
            prefix = "mid_block" if kind == "mid" else f"{kind}_blocks.{i}"
            for j, a in enumerate(blk.attentions):
                c_in = blk.resnets[0].in_channels if kind == "down" and j == 0 else a.config.in_channels
                selected.append((f"{prefix}.attentions.{j}", a, int(c_in)))
    return selected


class VideoNet(nn.Module):
    """Reference UNet + denoising UNet (motion modules) + pose guider + audio projection + MM-HAA.

    Args:
        cfg: the ``size.video`` block (``codec``, ``image_encoder``, ``unet``, ``pose_guider``, ``audio_proj``,
            ``audio_attention``, optional ``reference_bank_dtype``).
        audio_shape: (window, layers, dim) of one frame of ``audio_emb``; None only with ``attention_type="none"``.
        attention_type: ``none`` | ``cross`` | ``haa`` | ``mm_haa``.
        attention_blocks: which UNet blocks carry audio attention (see :func:`audio_blocks`).
        n_branches: number of region branches (``haa`` / ``mm_haa``); ``cross`` always has 1, ``none`` 0.
        attention_module: the audio-module class for every variant (``attention.module``: dotted class path or
            ``compact`` | ``official``; None = the compact :class:`~mmgt.models.video.mmhaa.AudioAttention`).
        load_weights: load the pretrained files named in ``cfg`` (False: random init, e.g. on the meta device).
        key: config path of ``cfg`` used in error messages.
    """

    def __init__(self, cfg: dict, audio_shape: Sequence[int] | None = None, attention_type: str = "mm_haa",
                 attention_blocks: Sequence[str] = ("down",), n_branches: int = 3, load_weights: bool = True,
                 key: str = "size.video", attention_module: str | type | None = None) -> None:
        super().__init__()
        if attention_type not in ATTENTION_TYPES:
            raise ValueError(f"attention.type must be one of {ATTENTION_TYPES}, got {attention_type!r}")
        self.ctx = ForwardContext()
        # MMGT copies the reference bank as float16 before the reader concatenates it (promoting back); keeping it
        # in the compute dtype (null) changes the prediction by ~3e-6 relative
        bank_dtype = cfg.get("reference_bank_dtype")
        if bank_dtype not in (None, "float16", "bfloat16", "float32"):
            raise ValueError(f"{key}.reference_bank_dtype must be null, float16, bfloat16 or float32, "
                             f"got {bank_dtype!r}")
        self.bank_dtype = None if bank_dtype is None else getattr(torch, bank_dtype)
        self.codec = build_codec(cfg["codec"], f"{key}.codec", load_weights)
        c_lat = self.codec.latent_channels
        ucfg = dict(cfg["unet"])
        self.reference_unet = build_reference_unet(ucfg, c_lat, f"{key}.unet", load_weights)
        self.denoising_unet = build_denoising_unet(ucfg, c_lat, f"{key}.unet", load_weights)
        if self.denoising_unet.config.in_channels != c_lat:
            raise ValueError(f"{key}.unet: UNet in_channels {self.denoising_unet.config.in_channels} != codec "
                             f"latent channels {c_lat}")
        c0 = self.denoising_unet.config.block_out_channels[0]
        cross_dim = int(self.denoising_unet.config.cross_attention_dim)
        pg = dict(cfg.get("pose_guider") or {})
        self.pose_guider = PoseGuider(c0, tuple(pg.get("channels", (16, 32, 96, 256))))
        if self.pose_guider.factor != self.codec.factor:
            raise ValueError(f"{key}.pose_guider.channels gives {self.pose_guider.factor}x downsampling but the codec "
                             f"downsamples {self.codec.factor}x (need len(channels) - 1 = log2(factor))")
        if pg.get("pretrained") and load_weights:
            self.pose_guider.load_controlnet(pg["pretrained"], f"{key}.pose_guider.pretrained")
        self.image_encoder = build_image_encoder(dict(cfg["image_encoder"]), cross_dim, f"{key}.image_encoder",
                                                 load_weights)
        self.reference_layers = attach_reference(self.reference_unet, self.denoising_unet, self.ctx)

        self.attention_type = attention_type
        self.n_branches = {"none": 0, "cross": 1}.get(attention_type, int(n_branches))
        self.audio_proj: AudioProjection | None = None
        self.audio_modules = nn.ModuleDict()
        self._hooks = [self.denoising_unet.conv_in.register_forward_hook(self._add_pose)]
        if attention_type != "none":
            if audio_shape is None:
                raise ValueError(f"attention.type={attention_type} needs the audio embedding shape (window, L, D)")
            ap = dict(cfg.get("audio_proj") or {})
            self.audio_proj = AudioProjection(*[int(s) for s in audio_shape], hidden_dim=int(ap.get("hidden_dim", 512)),
                                              tokens=int(ap.get("tokens", 32)), dim=int(ap.get("dim", cross_dim)))
            heads = int((cfg.get("audio_attention") or {}).get("heads", 8))
            module_cls = audio_module_class(attention_module)
            self.audio_module_class = module_cls
            groups = int(self.denoising_unet.config.norm_num_groups)
            targets = audio_blocks(self.denoising_unet, list(attention_blocks))
            if not targets:
                raise ValueError(f"attention.blocks={list(attention_blocks)} selects no UNet block with attention")
            for name, tr, c_in in targets:
                mod = module_cls.from_layer(tr.config.in_channels, c_in, self.audio_proj.dim, self.n_branches, heads,
                                            groups)
                self.audio_modules[name.replace(".", "_")] = mod
                self._hooks.append(tr.register_forward_hook(self._audio_hook(mod)))

    # ----------------------------------------------------------------------------------------------- hooks
    def _add_pose(self, module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
        pf = self.ctx.pose_features
        return output if pf is None else output + pf.to(output.dtype)

    def _audio_hook(self, mod: nn.Module):
        def hook(module: nn.Module, args: Any, output: Any) -> Any:
            ctx = self.ctx
            if ctx.audio_tokens is None:
                return output
            h = output[0] if isinstance(output, tuple) else output.sample
            masks = ctx.masks.at(h.shape[-2:]) if ctx.masks is not None else None
            h = mod(h, ctx.audio_tokens, masks, ctx.branch_weights)
            if isinstance(output, tuple):
                return (h,) + tuple(output[1:])
            output.sample = h
            return output
        return hook

    # ----------------------------------------------------------------------------------------------- parts
    @property
    def masked(self) -> bool:
        return self.attention_type == "mm_haa"

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
        """Run the reference UNet at t=0 and return its bank (layer name -> (B, S, C) normed tokens)."""
        ctx = self.ctx
        saved = ctx.bank
        ctx.bank, ctx.writing = {}, True
        try:
            t0 = torch.zeros(ref_latents.shape[0], device=ref_latents.device, dtype=torch.long)
            self.reference_unet(ref_latents, t0, encoder_hidden_states=ref_embed, return_dict=False)
            bank = ctx.bank
        finally:
            ctx.bank, ctx.writing = saved, False
        if set(bank) != set(self.reference_layers):
            raise RuntimeError(f"reference UNet wrote {len(bank)} of {len(self.reference_layers)} layers")
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
            masks: region masks (B, K, F, h', w') or a list of levels of that shape (``mm_haa`` only).
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
                    raise ValueError("attention.type=mm_haa needs region masks (B, K, F, h, w)")
                ctx.masks = MaskPyramid(masks)
                k = next(iter(ctx.masks.cache.values())).shape[1]
                if k != self.n_branches:
                    raise ValueError(f"masks have {k} branches, the model was built with {self.n_branches}")
            ctx.branch_weights = as_weights(branch_weights, self.n_branches, tokens)
        ehs = ehs.repeat_interleave(f, dim=0)
        return self.denoising_unet(noisy_latents, timesteps, encoder_hidden_states=ehs, return_dict=False)[0]

    # ----------------------------------------------------------------------------------------------- groups
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
        """Named groups that configs list as trainable (``model.trainable``). Names are relative to this net."""
        unused = {f"reference_unet.{n}" for n in self.unused_reference_parameters()}
        groups: dict[str, list[tuple[str, nn.Parameter]]] = {g: [] for g in (
            "denoising_unet", "motion_modules", "reference_unet", "pose_guider", "image_encoder", "audio_proj",
            "audio_modules")}
        for n, p in self.named_parameters():
            top = n.split(".")[0]
            if top == "denoising_unet":
                groups["motion_modules" if ".motion_modules." in n else "denoising_unet"].append((n, p))
            elif top == "reference_unet":
                if n not in unused:
                    groups["reference_unet"].append((n, p))
            elif top == "image_encoder":
                if not isinstance(self.image_encoder, CLIPImageEncoder):  # CLIP stays frozen by design
                    groups["image_encoder"].append((n, p))
            elif top in groups:
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

    def enable_gradient_checkpointing(self) -> None:
        self.reference_unet.enable_gradient_checkpointing()
        self.denoising_unet.enable_gradient_checkpointing()
