"""Reference attention through diffusers attention processors (no forward monkey-patching).

The reference UNet runs on the reference image latent at t=0; a :class:`ReferenceWriteProcessor` on each of
its spatial self-attention layers (``...attentions.i.transformer_blocks.j.attn1``) stores that layer's input
(already ``norm1``-ed by the transformer block) in a shared bank. The denoising UNet carries a
:class:`ReferenceReadProcessor` on the layer of the same name: its queries are its own tokens, its keys/values
are its own tokens concatenated with the bank entry repeated over the frames. Samples whose image condition is
dropped (CFG) mask the reference tokens out, which is exactly plain self-attention for them.

:class:`ForwardContext` is the one object through which :class:`~mmgt.models.video.net.VideoNet` hands the
per-call conditioning (reference bank, pose features, audio tokens, masks, branch weights) to the processors
and hooks inside the diffusers UNets. ``VideoNet.forward`` fills it at the start of every call; it is kept until
the next call so that gradient-checkpoint recomputation in backward sees the same values.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, AttnProcessor, AttnProcessor2_0
from torch import nn

# how attention scores are computed (``model.attention_processor``): ``sdpa`` = torch's fused
# scaled_dot_product_attention (diffusers' AttnProcessor2_0, its default), ``plain`` = diffusers' AttnProcessor
# (explicit matmul + softmax: the reference the fused kernels are checked against, and the fallback for a backend
# whose fused attention misbehaves)
ATTENTION_PROCESSORS = ("sdpa", "plain")


def base_processor(kind: str = "sdpa") -> AttnProcessor | AttnProcessor2_0:
    """diffusers' processor of an attention kind (see :data:`ATTENTION_PROCESSORS`)."""
    if kind not in ATTENTION_PROCESSORS:
        raise ValueError(f"model.attention_processor must be one of {ATTENTION_PROCESSORS}, got {kind!r}")
    return AttnProcessor2_0() if kind == "sdpa" else AttnProcessor()


@dataclass
class ForwardContext:
    bank: dict[str, torch.Tensor] = field(default_factory=dict)  # layer name -> (B, S_ref, C)
    writing: bool = False  # True only while the reference UNet runs
    ref_keep: torch.Tensor | None = None  # (B,) bool; False = image condition dropped for that sample
    num_frames: int = 1
    pose_features: torch.Tensor | None = None  # (B·F, C0, h, w), added after conv_in
    audio_tokens: torch.Tensor | None = None  # (B·F, T, D)
    masks: object | None = None  # MaskPyramid or None (= masks of ones)
    branch_weights: torch.Tensor | None = None  # (K,)

    def reset(self) -> None:
        self.bank, self.writing, self.ref_keep, self.num_frames = {}, False, None, 1
        self.pose_features = self.audio_tokens = self.masks = self.branch_weights = None


def _check_plain(attn: Attention, name: str) -> None:
    """Reference attention re-implements SD's plain self-attention only; refuse anything fancier."""
    fancy = [a for a in ("spatial_norm", "group_norm", "norm_q", "norm_k", "norm_cross") if getattr(attn, a, None)]
    if fancy or attn.residual_connection or attn.rescale_output_factor != 1.0:
        raise ValueError(f"{name}: reference attention supports plain self-attention only (found {fancy})")


class ReferenceProcessor:
    """A processor of the reference pairing: its layer's ``name`` in the bank, the shared ``ctx`` and how it
    attends (``kind``: ``sdpa`` | ``plain``, :data:`ATTENTION_PROCESSORS`)."""

    def __init__(self, name: str, ctx: ForwardContext, kind: str = "sdpa") -> None:
        self.name, self.ctx = name, ctx
        self.set_kind(kind)

    def set_kind(self, kind: str) -> None:
        self.kind, self.base = kind, base_processor(kind)


class ReferenceWriteProcessor(ReferenceProcessor):
    """Stores the (normed) self-attention input in ``ctx.bank[name]`` while writing, then attends as usual."""

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None) -> torch.Tensor:
        if self.ctx.writing and encoder_hidden_states is None:
            self.ctx.bank[self.name] = hidden_states
        return self.base(attn, hidden_states, encoder_hidden_states, attention_mask, temb)


class ReferenceReadProcessor(ReferenceProcessor):
    """Self-attention whose keys/values also include the reference tokens of the same layer."""

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None) -> torch.Tensor:
        ref = self.ctx.bank.get(self.name)
        keep = self.ctx.ref_keep
        # A batch whose every sample dropped the image still goes through the masked path below (reference tokens
        # masked out = plain self-attention): the reference UNet stays in the autograd graph with zero gradients,
        # which DDP needs (a skipped branch would leave its parameters without gradients and stop the run).
        if ref is None or encoder_hidden_states is not None or attention_mask is not None:
            return self.base(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        n, s, _ = hidden_states.shape
        rep = self.ctx.num_frames
        if n != ref.shape[0] * rep:
            raise ValueError(f"{self.name}: {n} frames != {ref.shape[0]} reference samples x {rep} frames")
        kv = torch.cat([hidden_states, ref.to(hidden_states.dtype).repeat_interleave(rep, dim=0)], dim=1)
        mask = None
        if keep is not None and not bool(keep.all()):
            mask = torch.ones(n, 1, 1, kv.shape[1], dtype=torch.bool, device=kv.device)
            mask[:, 0, 0, s:] = keep.to(kv.device).repeat_interleave(rep)[:, None]
        q, k, v = attn.to_q(hidden_states), attn.to_k(kv), attn.to_v(kv)
        if self.kind == "sdpa":
            heads = attn.heads
            q, k, v = (t.view(n, t.shape[1], heads, -1).transpose(1, 2) for t in (q, k, v))
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            out = out.transpose(1, 2).reshape(n, s, -1).to(q.dtype)
        else:  # diffusers' AttnProcessor path: heads folded into the batch, an additive mask
            bias = None
            if mask is not None:
                bias = torch.zeros(mask.shape, dtype=q.dtype, device=q.device)
                bias.masked_fill_(~mask, torch.finfo(q.dtype).min)
                bias = bias.expand(n, attn.heads, 1, kv.shape[1]).reshape(n * attn.heads, 1, kv.shape[1])
            q, k, v = attn.head_to_batch_dim(q), attn.head_to_batch_dim(k), attn.head_to_batch_dim(v)
            out = attn.batch_to_head_dim(torch.bmm(attn.get_attention_scores(q, k, bias), v))
        return attn.to_out[1](attn.to_out[0](out))


def spatial_self_attention(unet: nn.Module) -> dict[str, Attention]:
    """Name -> module of every spatial self-attention (``attn1`` inside ``attentions``; not motion modules)."""
    return {name: m for name, m in unet.named_modules()
            if isinstance(m, Attention) and name.endswith(".attn1") and ".attentions." in name}


def set_attention_processor(module: nn.Module, kind: str = "sdpa") -> int:
    """Compute every diffusers attention inside ``module`` the ``kind`` way (``sdpa`` | ``plain``); the reference
    writers/readers keep their role. Returns the number of attention layers set."""
    base_processor(kind)  # refuses unknown kinds
    n = 0
    for m in module.modules():
        if isinstance(m, Attention):
            proc = m.processor
            if isinstance(proc, ReferenceProcessor):
                proc.set_kind(kind)
            else:
                m.set_processor(base_processor(kind))
            n += 1
    return n


def attach_reference(reference_unet: nn.Module, denoising_unet: nn.Module, ctx: ForwardContext) -> list[str]:
    """Install writer processors on the reference UNet and reader processors on the denoising UNet."""
    writers, readers = spatial_self_attention(reference_unet), spatial_self_attention(denoising_unet)
    if set(writers) != set(readers):
        raise ValueError(f"reference and denoising UNets differ in spatial attention layers: "
                         f"{sorted(set(writers) ^ set(readers))[:4]} ...")
    for name, m in writers.items():
        _check_plain(m, name)
        m.set_processor(ReferenceWriteProcessor(name, ctx))
    for name, m in readers.items():
        _check_plain(m, name)
        m.set_processor(ReferenceReadProcessor(name, ctx))
    return sorted(writers)
