"""Audio as a gated per-channel bias (``conf/attention/audio_bias.yaml``): an ablation with no attention over the
audio tokens, and the smallest example of a new attention variant (an audio block + a variant class + a YAML).

Per site, with K branches: ``h <- h + sum_k w_k · tanh(g_k) · m_k ⊙ W_k(mean_t audio)`` - each branch maps the
frame's mean audio token to one bias per channel, gated by a zero-initialised scalar ``g_k`` (identity at init,
as the attention blocks) and by its region mask ``m_k``. It asks whether the model needs to attend to the audio or
whether a per-frame summary is enough.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mmgt.models.video.attention import MotionMaskedAudioAttention
from mmgt.models.video.mmhaa import as_weights, check_inputs


class GatedAudioBias(nn.Module):
    """The audio block: same constructor (:meth:`from_layer`) and forward as the attention blocks."""

    @classmethod
    def from_layer(cls, channels: int, in_channels: int, audio_dim: int, n_branches: int, heads: int,
                   norm_groups: int) -> GatedAudioBias:  # noqa: ARG003 - shared constructor of the audio blocks
        return cls(channels, audio_dim, n_branches)

    def __init__(self, channels: int, audio_dim: int, n_branches: int) -> None:
        super().__init__()
        self.n_branches = n_branches
        self.proj = nn.ModuleList(nn.Linear(audio_dim, channels) for _ in range(n_branches))
        self.gate = nn.Parameter(torch.zeros(n_branches))

    def forward(self, hidden: torch.Tensor, audio: torch.Tensor, masks: torch.Tensor | None = None,
                branch_weights: Sequence[float] | torch.Tensor | None = None) -> torch.Tensor:
        """hidden (N, C, hh, ww); audio (N, T, D); masks (N, K, hh, ww) / (N, K, hh·ww) or None (= ones)."""
        n, c, hh, ww = hidden.shape
        check_inputs(hidden, audio, masks, self.n_branches)
        w = as_weights(branch_weights, self.n_branches, hidden) * torch.tanh(self.gate).to(hidden.dtype)
        summary = audio.to(hidden.dtype).mean(1)  # (N, D)
        out = hidden
        for k in range(self.n_branches):
            bias = (w[k] * self.proj[k](summary))[:, :, None, None]  # (N, C, 1, 1)
            if masks is not None:
                bias = bias * masks[:, k].reshape(n, 1, hh, ww).to(hidden.dtype)
            out = out + bias
        return out


class AudioBiasAttention(MotionMaskedAudioAttention):
    """MM-HAA's structure (one branch per mask branch, gated by the region masks) with :class:`GatedAudioBias`."""

    alias, default_module = "audio_bias", GatedAudioBias
