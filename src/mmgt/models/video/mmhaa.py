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

:class:`OfficialAudioModule` is MMGT's own block (GroupNorm, 1×1 proj_in, self-attention, the K masked
cross-attentions with zero convs, GEGLU feed-forward, proj_out, residual), the variant that released MMGT weights
need (``conf/attention/mm_haa_official.yaml``). Both variants share the constructor :meth:`from_layer` and the
forward signature, so ``attention.module`` picks either for every ablation.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.models.attention import FeedForward
from diffusers.models.attention_processor import Attention
from torch import nn

from mmgt.models.video.components import component_class


def as_weights(branch_weights: Sequence[float] | torch.Tensor | None, k: int, like: torch.Tensor) -> torch.Tensor:
    """Branch weights as a (K,) tensor on ``like``'s device/dtype; None means all ones."""
    if branch_weights is None:
        return torch.ones(k, device=like.device, dtype=like.dtype)
    w = torch.as_tensor(branch_weights, device=like.device, dtype=like.dtype).reshape(-1)
    if w.numel() != k:
        raise ValueError(f"branch_weights has {w.numel()} values but the audio attention has {k} branches")
    return w


def check_inputs(hidden: torch.Tensor, audio: torch.Tensor, masks: torch.Tensor | None, k: int) -> None:
    """The shapes every audio block needs: one audio token set per frame, masks of K branches at the map's size."""
    n, _, hh, ww = hidden.shape
    if audio.shape[0] != n:
        raise ValueError(f"audio tokens for {audio.shape[0]} frames, feature map has {n}")
    if masks is not None and (masks.shape[0] != n or masks.shape[1] != k or masks[0, 0].numel() != hh * ww):
        raise ValueError(f"masks {tuple(masks.shape)} do not fit {k} branches at {hh}x{ww} for {n} frames")


def masked_branch_sum(attn: nn.ModuleList, proj: nn.ModuleList, q: torch.Tensor, audio: torch.Tensor,
                      masks: torch.Tensor | None, w: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """sum_k w_k · P_k(CrossAttn_k(q, audio) ⊙ m_k) as a (N, C, hh, ww) map; q is (N, hh·ww, C)."""
    n, s, c = q.shape
    audio = audio.to(q.dtype)
    out = None
    for k in range(len(attn)):
        a = attn[k](q, encoder_hidden_states=audio)
        if masks is not None:
            a = a * masks[:, k].reshape(n, s, 1).to(a.dtype)
        a = w[k] * proj[k](a.transpose(1, 2).reshape(n, c, *size))
        out = a if out is None else out + a
    return out


class AudioAttention(nn.Module):
    """K audio cross-attention branches with region masks, zero-initialised 1×1 projections and explicit weights."""

    @classmethod
    def from_layer(cls, channels: int, in_channels: int, audio_dim: int, n_branches: int, heads: int,
                   norm_groups: int) -> AudioAttention:  # noqa: ARG003 - shared constructor of the variants
        """The module for one UNet layer (``channels`` wide feature map, ``in_channels`` = that layer's input)."""
        return cls(channels, audio_dim, n_branches, heads)

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
        check_inputs(hidden, audio, masks, self.n_branches)
        w = as_weights(branch_weights, self.n_branches, hidden)
        q = self.norm(hidden.flatten(2).transpose(1, 2))  # (N, hh·ww, C)
        return hidden + masked_branch_sum(self.attn, self.proj, q, audio, masks, w, (hh, ww))


class OfficialAudioModule(nn.Module):
    """MMGT's audio module (its ``Transformer3DModel`` around ``AudioTemporalBasicTransformerBlock``), per frame:

    GroupNorm -> 1×1 proj_in (C -> inner) -> x += SelfAttn(LN1(x)) -> x += sum_k w_k · Z_k(CrossAttn_k(LN2(x),
    audio) ⊙ m_k) -> x += FF(LN3(x)) (GEGLU) -> 1×1 proj_out (inner -> C) -> + input.

    ``inner = heads · (in_channels // heads)``: MMGT sizes layer 0 of a block by the block's *input* width. Only the
    branch convs ``Z_k`` start at zero (as in MMGT), so unlike :class:`AudioAttention` the module is not an identity
    at init (self-attention, feed-forward and proj_out act on the features), but the audio has no effect until
    trained.
    """

    def __init__(self, channels: int, inner: int, audio_dim: int, n_branches: int, heads: int = 8,
                 norm_groups: int = 32) -> None:
        super().__init__()
        if inner % heads:
            raise ValueError(f"official audio module: inner width {inner} is not divisible by {heads} heads")
        self.n_branches = n_branches
        d = inner // heads
        self.norm = nn.GroupNorm(norm_groups, channels, eps=1e-6)
        self.proj_in = nn.Conv2d(channels, inner, 1)
        self.norm1 = nn.LayerNorm(inner)
        self.attn1 = Attention(query_dim=inner, heads=heads, dim_head=d)
        self.norm2 = nn.LayerNorm(inner)
        self.attn = nn.ModuleList(Attention(query_dim=inner, cross_attention_dim=audio_dim, heads=heads, dim_head=d)
                                  for _ in range(n_branches))
        self.proj = nn.ModuleList(nn.Conv2d(inner, inner, 1) for _ in range(n_branches))
        for p in self.proj:
            nn.init.zeros_(p.weight)
            nn.init.zeros_(p.bias)
        self.norm3 = nn.LayerNorm(inner)
        self.ff = FeedForward(inner, activation_fn="geglu")
        self.proj_out = nn.Conv2d(inner, channels, 1)

    @classmethod
    def from_layer(cls, channels: int, in_channels: int, audio_dim: int, n_branches: int, heads: int,
                   norm_groups: int) -> OfficialAudioModule:
        return cls(channels, heads * (in_channels // heads), audio_dim, n_branches, heads, norm_groups)

    def forward(self, hidden: torch.Tensor, audio: torch.Tensor, masks: torch.Tensor | None = None,
                branch_weights: Sequence[float] | torch.Tensor | None = None) -> torch.Tensor:
        """hidden (N, C, hh, ww); audio (N, T, D); masks (N, K, hh, ww) / (N, K, hh·ww) or None (= ones)."""
        n, _, hh, ww = hidden.shape
        check_inputs(hidden, audio, masks, self.n_branches)
        w = as_weights(branch_weights, self.n_branches, hidden)
        x = self.proj_in(self.norm(hidden))
        inner = x.shape[1]
        x = x.flatten(2).transpose(1, 2)  # (N, hh·ww, inner)
        x = x + self.attn1(self.norm1(x))
        br = masked_branch_sum(self.attn, self.proj, self.norm2(x), audio, masks, w, (hh, ww))
        x = x + br.flatten(2).transpose(1, 2)
        x = x + self.ff(self.norm3(x))
        return hidden + self.proj_out(x.transpose(1, 2).reshape(n, inner, hh, ww))


AUDIO_MODULES = {"compact": AudioAttention, "official": OfficialAudioModule}


def audio_module_class(name: str | type | None) -> type:
    """``attention.module``: a class, a dotted class path (checked by the stored-config rule before import, see
    :func:`~mmgt.models.video.components.component_class`) or a short name (``compact`` | ``official``); None = the
    compact :class:`AudioAttention`. The class must provide ``from_layer`` and the shared forward."""
    if name is None:
        return AudioAttention
    if isinstance(name, str) and name in AUDIO_MODULES:
        return AUDIO_MODULES[name]
    cls = component_class(name, nn.Module, "attention.module", "an audio-module class")
    if not hasattr(cls, "from_layer"):
        raise ValueError(f"attention.module={name!r} is not an audio-module class with from_layer(); use one of "
                         f"{sorted(AUDIO_MODULES)} or a dotted class path")
    return cls


MASK_RESIZE = ("area", "pil")


def pil_resize(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``(..., h, w)`` masks -> ``size`` by Pillow's BILINEAR resize of their 8-bit images, divided by 255.

    The original MMGT resized its uint8 soft masks with PIL (torchvision ``Resize`` + ``ToTensor``); Pillow's
    fixed-point two-pass filter is not reproduced by any torch mode to the grey level, so Pillow itself runs (on the
    CPU; masks are small). Values are taken as an integer offset (the per-mask floor of the minimum, e.g. 1 for the
    original's "1 + lips" masks) plus 8-bit levels ``/ 255``.
    """
    from PIL import Image

    size = (int(size[0]), int(size[1]))
    if tuple(masks.shape[-2:]) == size:
        return masks
    lead, (h, w) = masks.shape[:-2], masks.shape[-2:]
    x = masks.detach().reshape(-1, h, w).double().cpu()
    offset = torch.floor(x.amin(dim=(-2, -1), keepdim=True))
    levels = torch.round((x - offset) * 255).clamp_(0, 255).to(torch.uint8).numpy()
    out = np.stack([np.asarray(Image.fromarray(m).resize((size[1], size[0]), Image.BILINEAR)) for m in levels])
    y = torch.from_numpy(out).double() / 255 + offset
    return y.reshape(*lead, *size).to(device=masks.device, dtype=masks.dtype)


def resize_masks(masks: torch.Tensor, size: tuple[int, int], mode: str = "area") -> torch.Tensor:
    """``(..., h, w)`` region masks -> ``(..., *size)`` for one attention resolution.

    ``area``: area average when shrinking (a latent cell's mask is the mean over the pixels it covers), bilinear
    (half-pixel centres) when growing; ``pil``: Pillow's 8-bit bilinear resize (:func:`pil_resize`), the original's.
    """
    if mode not in MASK_RESIZE:
        raise ValueError(f"mask resize mode must be one of {MASK_RESIZE}, got {mode!r}")
    size = (int(size[0]), int(size[1]))
    if tuple(masks.shape[-2:]) == size:
        return masks
    if mode == "pil":
        return pil_resize(masks, size)
    lead, (h, w) = masks.shape[:-2], masks.shape[-2:]
    x = masks.reshape(-1, 1, h, w)
    if size[0] <= h and size[1] <= w:
        y = F.interpolate(x, size=size, mode="area")
    else:
        y = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    return y.reshape(*lead, *size)


class MaskPyramid:
    """Region masks per frame at every resolution the backbone asks for, resized from the one size the data gives.

    ``levels``: one tensor (B, K, F, h, w) — what the data delivers — or a list of such tensors at several sizes
    (exact levels, e.g. the original's own pyramid in parity tests); a size not given is resized from the finest
    with ``resize`` (:func:`resize_masks`). Frames are flattened to B·F in the backbone's order (batch-major).
    """

    def __init__(self, levels: torch.Tensor | Sequence[torch.Tensor], resize: str = "area") -> None:
        levels = [levels] if torch.is_tensor(levels) else list(levels)
        if not levels or any(m.ndim != 5 for m in levels):
            raise ValueError("masks must be (B, K, F, h, w) tensors (one or a list of levels)")
        if resize not in MASK_RESIZE:
            raise ValueError(f"mask resize mode must be one of {MASK_RESIZE}, got {resize!r}")
        self.resize = resize
        self.cache: dict[tuple[int, int], torch.Tensor] = {}
        for m in levels:
            b, k, f, h, w = m.shape
            self.cache[(h, w)] = m.permute(0, 2, 1, 3, 4).reshape(b * f, k, h, w)
        self.finest = max(self.cache, key=lambda s: s[0] * s[1])

    def at(self, size: tuple[int, int]) -> torch.Tensor:
        size = (int(size[0]), int(size[1]))
        if size not in self.cache:
            self.cache[size] = resize_masks(self.cache[self.finest], size, self.resize)
        return self.cache[size]
