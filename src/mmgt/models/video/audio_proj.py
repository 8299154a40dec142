"""Audio projection: a per-frame window of wav2vec hidden states -> a few audio tokens for that frame.

(B, F, W, L, D) (W = 2w+1 frames around frame i, L layers, D dims) is flattened per frame and mapped by an MLP
to ``tokens`` × ``dim`` followed by LayerNorm, as Hallo's/MMGT's ``AudioProjModel`` (5·12·768 -> 512 -> 512 ->
32·768 at paper size). Each frame later attends only to its own tokens.
"""

from __future__ import annotations

import torch
from torch import nn


class AudioProjection(nn.Module):
    def __init__(self, window: int, layers: int, in_dim: int, hidden_dim: int = 512, tokens: int = 32,
                 dim: int = 768) -> None:
        super().__init__()
        self.in_shape = (window, layers, in_dim)
        self.tokens, self.dim = tokens, dim
        self.mlp = nn.Sequential(
            nn.Linear(window * layers * in_dim, hidden_dim), nn.ReLU(),
            nn.Linear(hidden_dim, hidden_dim), nn.ReLU(),
            nn.Linear(hidden_dim, tokens * dim),
        )
        self.norm = nn.LayerNorm(dim)

    def forward(self, audio_emb: torch.Tensor) -> torch.Tensor:
        """(B, F, W, L, D) -> (B, F, tokens, dim)."""
        if tuple(audio_emb.shape[-3:]) != self.in_shape:
            raise ValueError(f"audio_emb has trailing shape {tuple(audio_emb.shape[-3:])}, the audio projection "
                             f"expects (window, layers, dim) = {self.in_shape}")
        b, f = audio_emb.shape[:2]
        x = self.mlp(audio_emb.reshape(b, f, -1))
        return self.norm(x.view(b, f, self.tokens, self.dim))
