"""MM-HAA: motion-masked hierarchical audio attention.

In a UNet block with feature map ``h`` (N = B·F frames, C channels, size hh×ww):

    h <- h + sum_k  w_k · P_k( CrossAttn_k(LN(h), audio_tokens) ⊙ m_k )

with K branches (e.g. full/body, face, lips, hands), ``m_k`` the branch's region mask at this block's
resolution, ``P_k`` a zero-initialised 1×1 convolution and ``w_k`` per-branch weights passed explicitly on
every call (training and sampling use the same code; there is no other path). Every frame attends only to
its own audio tokens. The feature map keeps its (hh, ww) shape throughout, so non-square latents work.

Compared with Hallo/MMGT's ``AudioTemporalBasicTransformerBlock`` we keep only the defining operation (no
extra self-attention / feed-forward / proj_in/out around it): with the zero-initialised projections the
module is an exact identity at init, so inserting it into a trained image UNet changes nothing until trained.

Ablations use the same module: ``cross`` = one branch with no mask, ``haa`` = K branches with masks of ones
(``masks=None``), ``mm_haa`` = K branches with region masks.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention
from torch import nn


def as_weights(branch_weights: Sequence[float] | torch.Tensor | None, k: int, like: torch.Tensor) -> torch.Tensor:
    """Branch weights as a (K,) tensor on ``like``'s device/dtype; None means all ones."""
    if branch_weights is None:
        return torch.ones(k, device=like.device, dtype=like.dtype)
    w = torch.as_tensor(branch_weights, device=like.device, dtype=like.dtype).reshape(-1)
    if w.numel() != k:
        raise ValueError(f"branch_weights has {w.numel()} values but the audio attention has {k} branches")
    return w


class AudioAttention(nn.Module):
    """K audio cross-attention branches with region masks, zero-initialised 1×1 projections and explicit weights."""

    def __init__(self, channels: int, audio_dim: int, n_branches: int, heads: int = 8) -> None:
        super().__init__()
        if channels % heads:
            raise ValueError(f"audio attention: {channels} channels are not divisible by {heads} heads")
        self.n_branches = n_branches
        self.norm = nn.LayerNorm(channels)
        self.attn = nn.ModuleList(
            Attention(query_dim=channels, cross_attention_dim=audio_dim, heads=heads, dim_head=channels // heads)
            for _ in range(n_branches))
        self.proj = nn.ModuleList(nn.Conv2d(channels, channels, 1) for _ in range(n_branches))
        for p in self.proj:
            nn.init.zeros_(p.weight)
            nn.init.zeros_(p.bias)

    def forward(self, hidden: torch.Tensor, audio: torch.Tensor, masks: torch.Tensor | None = None,
                branch_weights: Sequence[float] | torch.Tensor | None = None) -> torch.Tensor:
        """hidden (N, C, hh, ww); audio (N, T, D); masks (N, K, hh, ww) / (N, K, hh·ww) or None (= ones).

        Returns the updated feature map (N, C, hh, ww).
        """
        n, c, hh, ww = hidden.shape
        if audio.shape[0] != n:
            raise ValueError(f"audio tokens for {audio.shape[0]} frames, feature map has {n}")
        if masks is not None and (masks.shape[0] != n or masks.shape[1] != self.n_branches
                                  or masks[0, 0].numel() != hh * ww):
            raise ValueError(f"masks {tuple(masks.shape)} do not fit {self.n_branches} branches at {hh}x{ww} "
                             f"for {n} frames")
        w = as_weights(branch_weights, self.n_branches, hidden)
        q = self.norm(hidden.flatten(2).transpose(1, 2))  # (N, hh·ww, C)
        audio = audio.to(q.dtype)
        out = hidden
        for k in range(self.n_branches):
            a = self.attn[k](q, encoder_hidden_states=audio)
            if masks is not None:
                a = a * masks[:, k].reshape(n, hh * ww, 1).to(a.dtype)
            a = a.transpose(1, 2).reshape(n, c, hh, ww)
            out = out + w[k] * self.proj[k](a)
        return out


def resize_masks(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N, K, h, w) -> (N, K, *size): area average when shrinking by whole factors, else bilinear (antialiased)."""
    if tuple(masks.shape[-2:]) == tuple(size):
        return masks
    h, w = masks.shape[-2:]
    if h % size[0] == 0 and w % size[1] == 0:
        return F.adaptive_avg_pool2d(masks, size)
    return F.interpolate(masks, size=size, mode="bilinear", align_corners=False, antialias=True)


class MaskPyramid:
    """Region masks per frame at every resolution the UNet asks for (exact level if given, else resized).

    ``levels``: one tensor (B, K, F, h, w) or a list of them (the data's ``mask_pyramid``); frames are flattened
    to B·F in the UNet's order (batch-major).
    """

    def __init__(self, levels: torch.Tensor | Sequence[torch.Tensor]) -> None:
        levels = [levels] if torch.is_tensor(levels) else list(levels)
        if not levels or any(m.ndim != 5 for m in levels):
            raise ValueError("masks must be (B, K, F, h, w) tensors (one or a list of levels)")
        self.cache: dict[tuple[int, int], torch.Tensor] = {}
        for m in levels:
            b, k, f, h, w = m.shape
            self.cache[(h, w)] = m.permute(0, 2, 1, 3, 4).reshape(b * f, k, h, w)
        self.finest = max(self.cache, key=lambda s: s[0] * s[1])

    def at(self, size: tuple[int, int]) -> torch.Tensor:
        size = (int(size[0]), int(size[1]))
        if size not in self.cache:
            larger = [s for s in self.cache if s[0] >= size[0] and s[1] >= size[1]]
            src = min(larger, key=lambda s: s[0] * s[1]) if larger else self.finest
            self.cache[size] = resize_masks(self.cache[src], size)
        return self.cache[size]
