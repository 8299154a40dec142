"""SMGA gesture decoder: audio features + initial pose + noisy pose sequence -> clean pose sequence (x0).

A re-implementation of MMGT's ``GestureDecoder`` as a plain ``nn.Module``:

* **spatial split**: the pose (N, 134, 3) is split by a face mask (keypoints 24-91) into a face and a body
  stream; the initial pose is split the same way and concatenated to every frame; one shared input
  projection maps both to the model width (as the original code; the paper's separate encoders are
  ``shared_input_proj=False``).
* **audio encoder**: per-frame features -> Linear -> ``audio_layers`` pre-norm transformer layers -> tokens;
  a pooled audio vector joins the time embedding. Classifier-free guidance drops the audio per sample and
  replaces it with learned null embeddings (chosen with ``torch.where`` so they always take part in the
  graph: no ``find_unused_parameters`` needed under DDP).
* **time**: sinusoidal -> MLP; the FiLM vector is ``time + pooled audio``; two extra time tokens join the
  cross-attention memory ``[audio tokens | time tokens]``.
* **decoder layers** (pre-norm): per stream own self-attention and audio cross-attention, each followed by its
  own FiLM; then the streams are summed and one shared feed-forward (with FiLM) is applied.
* **rotary positions**: true per-head RoPE on queries and keys after the projections (the original rotated the
  512-d layer input before ``nn.MultiheadAttention``'s projections, an EDGE quirk: ``rotary_style="input"``);
  pose frame i and audio token i share position i, so "same time" is a relative offset of 0 at any sequence
  length.

Switches that reproduce the official function exactly (set by :func:`mmgt.official.smga.convert_smga`; the
defaults are this project's choices): ``rotary_style="input"``, ``rotate_time_tokens=True``,
``time_embedding="legacy"``, ``legacy_stack=True``, ``audio_norm="none"``.

Fixes relative to the original, each explained where it lives:

* stack bug: the original fed the merged output to the *face* stream only and the layer-0 body projection
  to the body stream of every later layer. Here both streams of layer k+1 start from layer k's merged output;
  ``legacy_stack=True`` reproduces the original wiring. Unused per-layer modules are not created.
* one-frame shift is a data matter: the DataModule gives ``cond_pose`` = frame start-1 and ``poses`` =
  frames start..start+N-1, aligned with the audio rows.

``split_streams=False`` is the ablation without the face/body split: one stream over the whole pose.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mmgt.pose.layout import FACE, NUM_CHANNELS, NUM_KEYPOINTS


@dataclass
class GestureDecoderConfig:
    """Network hyper-parameters (``size.smga`` in conf/size/*.yaml). Defaults = the paper's full size."""

    audio_dim: int = 66  # per-frame audio feature size (filled from the DataModule's ``audio_feature_dim``)
    num_keypoints: int = NUM_KEYPOINTS
    channels: int = NUM_CHANNELS  # x, y, score
    width: int = 512
    ff_size: int = 1024
    num_layers: int = 8
    num_heads: int = 8
    audio_layers: int = 2
    dropout: float = 0.1
    audio_norm: str = "batch"  # "batch": standardise each feature (running stats, as BatchNorm) | "none"
    max_len: int = 80  # length of the learned null-audio embedding (the training window); longer is sampled in windows
    time_tokens: int = 2
    rotary: bool = True
    rope_theta: float = 10000.0
    # "head": per-head RoPE on projected queries/keys, half-split pairs | "input": the official (EDGE) rotation of
    # the whole D-dim attention inputs (query and key inputs, interleaved pairs) before the in-projection
    rotary_style: str = "head"
    rotate_time_tokens: bool = False  # the official also rotates the 2 time tokens of the memory (positions N, N+1)
    # "standard": frequencies exp(-i ln(1e4) / (D/2)) | "legacy": the official exp(-i ln(1e4) / (D/2 - 1))
    time_embedding: str = "standard"
    split_streams: bool = True
    shared_input_proj: bool = True
    legacy_stack: bool = False

    @classmethod
    def from_dict(cls, cfg: Mapping[str, Any] | None) -> GestureDecoderConfig:
        """Plain dict (or DictConfig) -> config; unknown keys are an error, ``_``-keys (Hydra) are ignored."""
        if cfg is None:
            return cls()
        if not isinstance(cfg, Mapping):
            from omegaconf import OmegaConf

            cfg = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
        data = {str(k): v for k, v in dict(cfg).items() if not str(k).startswith("_")}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown SMGA net keys {unknown}; known: {sorted(known)}")
        out = cls(**data)
        if out.rotary_style not in ("head", "input"):
            raise ValueError(f"net.rotary_style must be 'head' or 'input', got {out.rotary_style!r}")
        if out.time_embedding not in ("standard", "legacy"):
            raise ValueError(f"net.time_embedding must be 'standard' or 'legacy', got {out.time_embedding!r}")
        rot_dim = out.width // out.num_heads if out.rotary_style == "head" else out.width
        if out.width % out.num_heads or rot_dim % 2:
            raise ValueError(f"width {out.width} must split into {out.num_heads} heads (rotary dim {rot_dim} even)")
        return out

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ----------------------------------------------------------------------------------------------- building blocks


@dataclass(frozen=True, eq=False)
class Rope:
    """cos/sin tables ``(n, dim)`` of positions 0..n-1 and where/how they rotate (see :class:`Attention`).

    ``on_input``: rotate the D-dim attention inputs (query input, key input) before the projections, as the
    official EDGE-style code; otherwise the projected per-head queries/keys. ``interleaved``: pairs (2i, 2i+1)
    (official) instead of (i, i + dim/2)."""

    cos: torch.Tensor
    sin: torch.Tensor
    interleaved: bool = False
    on_input: bool = False

    def rotate(self, x: torch.Tensor, n: int) -> torch.Tensor:
        """Rotate the first ``n`` positions of ``x`` (..., m, dim) (positions 0..n-1); the rest stay as they are."""
        cos, sin = self.cos[:n], self.sin[:n]
        head, tail = x[..., :n, :], x[..., n:, :]
        if self.interleaved:
            pairs = head.unflatten(-1, (-1, 2))
            turned = torch.stack([-pairs[..., 1], pairs[..., 0]], dim=-1).flatten(-2)
            rot = head * cos + turned * sin
        else:
            rot = apply_rope(head, cos, sin)
        return rot if tail.shape[-2] == 0 else torch.cat([rot, tail], dim=-2)


def rope_tables(n: int, dim: int, theta: float, device: torch.device, dtype: torch.dtype, interleaved: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables ``(n, dim)`` for rotary embeddings of positions 0..n-1; pair i turns by pos * theta^(-2i/dim)
    (``interleaved``: columns 2i, 2i+1 belong to pair i; else columns i and i + dim/2)."""
    inv = 1.0 / (theta ** (torch.arange(0, dim, 2, device=device, dtype=torch.float32) / dim))
    ang = torch.arange(n, device=device, dtype=torch.float32)[:, None] * inv[None]
    ang = ang.repeat_interleave(2, dim=-1) if interleaved else torch.cat([ang, ang], dim=-1)
    return ang.cos().to(dtype), ang.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` (B, H, n, d) by position tables ``(n, d)`` (half-split pairs)."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


class Attention(nn.Module):
    """Multi-head attention (SDPA) with optional RoPE on the queries and the first ``mem_rot`` keys."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mem: torch.Tensor | None = None, rope: Rope | None = None,
                mem_rot: int | None = None) -> torch.Tensor:
        """``x`` (B, n, D) attends to ``mem`` (B, m, D) (``x`` itself if None). With ``rope`` (tables for at least
        max(n, mem_rot) positions), queries get positions 0..n-1 and the first ``mem_rot`` keys 0..mem_rot-1
        (all keys if None); the remaining keys stay unrotated. Values are never rotated."""
        b, n, d = x.shape
        mem = x if mem is None else mem
        m, h = mem.shape[1], self.heads
        r = m if mem_rot is None else mem_rot
        if rope is not None and rope.on_input:
            # official: rotate the inputs of the query and key projections; values read the unrotated memory
            wk, wv = self.kv.weight.chunk(2, dim=0)
            bk, bv = self.kv.bias.chunk(2, dim=0)
            q = self.q(rope.rotate(x, n)).view(b, n, h, d // h).transpose(1, 2)
            k = F.linear(rope.rotate(mem, r), wk, bk).view(b, m, h, d // h).transpose(1, 2)
            v = F.linear(mem, wv, bv).view(b, m, h, d // h).transpose(1, 2)
        else:
            q = self.q(x).view(b, n, h, d // h).transpose(1, 2)
            k, v = self.kv(mem).view(b, m, 2, h, d // h).permute(2, 0, 3, 1, 4)
            if rope is not None:
                q, k = rope.rotate(q, n), rope.rotate(k, r)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.out(y.transpose(1, 2).reshape(b, n, d))


class FiLM(nn.Module):
    """``(1 + gamma) * y + beta`` with ``(gamma, beta) = Linear(Mish(t))``, broadcast over time."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Sequential(nn.Mish(), nn.Linear(dim, 2 * dim))

    def forward(self, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.proj(t)[:, None].chunk(2, dim=-1)
        return (1 + gamma) * y + beta


def feed_forward(dim: int, hidden: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim))


class EncoderLayer(nn.Module):
    """Pre-norm transformer encoder layer with rotary self-attention (the audio encoder)."""

    def __init__(self, dim: int, heads: int, ff: int, dropout: float) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, dropout)
        self.ff = feed_forward(dim, ff, dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, rope: Rope | None) -> torch.Tensor:
        x = x + self.drop(self.attn(self.norm1(x), rope=rope))
        return x + self.drop(self.ff(self.norm2(x)))


class StreamBlock(nn.Module):
    """One stream's half of a decoder layer: FiLM'd self-attention then FiLM'd audio cross-attention."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.norm_self, self.norm_cross = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.self_attn = Attention(dim, heads, dropout)
        self.cross_attn = Attention(dim, heads, dropout)
        self.film_self, self.film_cross = FiLM(dim), FiLM(dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor, mem: torch.Tensor, t: torch.Tensor,
                rope: Rope | None, mem_rot: int) -> torch.Tensor:
        h = h + self.drop(self.film_self(self.self_attn(self.norm_self(h), rope=rope), t))
        return h + self.drop(self.film_cross(self.cross_attn(self.norm_cross(h), mem, rope, mem_rot), t))


class DecoderLayer(nn.Module):
    """Face and body stream blocks, summed, then one shared FiLM'd feed-forward (``split=False``: one stream)."""

    def __init__(self, dim: int, heads: int, ff: int, dropout: float, split: bool) -> None:
        super().__init__()
        self.face = StreamBlock(dim, heads, dropout) if split else None
        self.body = StreamBlock(dim, heads, dropout)
        self.norm_ff = nn.LayerNorm(dim)
        self.ff = feed_forward(dim, ff, dropout)
        self.film_ff = FiLM(dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, h_face: torch.Tensor | None, h_body: torch.Tensor, mem: torch.Tensor, t: torch.Tensor,
                rope: Rope | None, mem_rot: int) -> torch.Tensor:
        m = self.body(h_body, mem, t, rope, mem_rot)
        if self.face is not None:
            m = m + self.face(h_face, mem, t, rope, mem_rot)
        return m + self.drop(self.film_ff(self.ff(self.norm_ff(m)), t))


def timestep_embedding(t: torch.Tensor, dim: int, legacy: bool = False) -> torch.Tensor:
    """Sinusoidal embedding ``(B, dim)`` = [sin(t f_i), cos(t f_i)] of (possibly fractional) diffusion steps.

    ``legacy``: the official frequencies f_i = exp(-i ln(1e4) / (dim/2 - 1)), computed in the official order
    (the angles reach ~1e3 rad, so even a 1-ulp different frequency shows at 1e-5)."""
    half = dim // 2
    if legacy:
        freqs = torch.exp(torch.arange(half, device=t.device) * -(math.log(10000.0) / (half - 1)))
    else:
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    ang = t.float()[:, None] * freqs[None]
    return torch.cat([ang.sin(), ang.cos()], dim=-1)


# ----------------------------------------------------------------------------------------------- the network


class GestureDecoder(nn.Module):
    """x0-predicting denoiser: ``forward(x_t, t, audio, cond_pose, drop_audio) -> x0_hat`` (B, N, 134, 3)."""

    def __init__(self, cfg: GestureDecoderConfig | Mapping[str, Any] | None = None, **overrides: Any) -> None:
        super().__init__()
        if not isinstance(cfg, GestureDecoderConfig):
            cfg = GestureDecoderConfig.from_dict({**dict(cfg or {}), **overrides})
        elif overrides:
            cfg = GestureDecoderConfig.from_dict({**cfg.to_dict(), **overrides})
        self.cfg = cfg
        d, k, c = cfg.width, cfg.num_keypoints, cfg.channels
        pose_dim = k * c
        face = torch.zeros(k, 1)
        face[list(FACE)] = 1.0
        self.register_buffer("face_mask", face, persistent=False)

        n_proj = 1 if (cfg.shared_input_proj or not cfg.split_streams) else 2
        self.input_proj = nn.ModuleList([nn.Linear(2 * pose_dim, d) for _ in range(n_proj)])

        if cfg.audio_norm not in ("batch", "none"):
            raise ValueError(f"net.audio_norm must be 'batch' or 'none', got {cfg.audio_norm!r}")
        # raw features mix scales (log-mel around -7, rms around 0.05): standardise per feature, keeping loudness
        # (a per-frame LayerNorm would remove exactly the loudness the mouth follows)
        self.audio_norm = nn.BatchNorm1d(cfg.audio_dim, affine=False) if cfg.audio_norm == "batch" else None
        self.audio_in = nn.Linear(cfg.audio_dim, d)
        self.audio_encoder = nn.ModuleList(
            [EncoderLayer(d, cfg.num_heads, cfg.ff_size, cfg.dropout) for _ in range(cfg.audio_layers)])
        self.null_audio = nn.Parameter(torch.randn(1, cfg.max_len, d) * 0.02)
        self.audio_pool = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d))
        self.null_pooled = nn.Parameter(torch.randn(1, d) * 0.02)

        self.time_mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.Mish())
        self.time_film = nn.Linear(4 * d, d)
        self.time_tokens = nn.Linear(4 * d, cfg.time_tokens * d)
        self.mem_norm = nn.LayerNorm(d)

        self.layers = nn.ModuleList([DecoderLayer(d, cfg.num_heads, cfg.ff_size, cfg.dropout, cfg.split_streams)
                                     for _ in range(cfg.num_layers)])
        self.final = nn.Linear(d, pose_dim)

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> GestureDecoder:
        """Build from a plain dict (``size.smga`` block); the usual way Lightning modules create it."""
        return cls(GestureDecoderConfig.from_dict(cfg))

    def _rope(self, n: int, x: torch.Tensor) -> Rope | None:
        if not self.cfg.rotary:
            return None
        official = self.cfg.rotary_style == "input"
        dim = self.cfg.width if official else self.cfg.width // self.cfg.num_heads
        cos, sin = rope_tables(n, dim, self.cfg.rope_theta, x.device, x.dtype, interleaved=official)
        return Rope(cos, sin, interleaved=official, on_input=official)

    def encode_audio(self, audio: torch.Tensor, drop_audio: torch.Tensor | None,
                     rope: Rope | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, N, F) features -> tokens (B, N, D) and pooled (B, D), with null embeddings where ``drop_audio``."""
        b, n, _ = audio.shape
        if n > self.cfg.max_len:
            raise ValueError(f"audio window of {n} frames exceeds max_len={self.cfg.max_len}; sample in windows "
                             "(GestureDiffusion.sample) or raise net.max_len")
        if self.audio_norm is not None:
            audio = self.audio_norm(audio.reshape(b * n, -1)).view(b, n, -1)
        tok = self.audio_in(audio)
        for layer in self.audio_encoder:
            tok = layer(tok, rope)
        pooled = self.audio_pool(tok.mean(1))
        if drop_audio is not None:
            drop = drop_audio.to(torch.bool).view(b, 1)
            tok = torch.where(drop[..., None], self.null_audio[:, :n].to(tok.dtype), tok)
            pooled = torch.where(drop, self.null_pooled.to(pooled.dtype), pooled)
        return tok, pooled

    def forward(self, x: torch.Tensor, t: torch.Tensor, audio: torch.Tensor, cond_pose: torch.Tensor,
                drop_audio: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` noisy poses (B, N, K, C), ``t`` steps (B,), ``audio`` (B, N, F), ``cond_pose`` (B, K, C),
        ``drop_audio`` bool (B,) (True = unconditional). Returns predicted clean poses (B, N, K, C)."""
        b, n, k, c = x.shape
        if audio.shape[:2] != (b, n):
            raise ValueError(f"audio {tuple(audio.shape)} does not match poses {tuple(x.shape)} in (B, N)")
        cond = cond_pose[:, None].expand(b, n, k, c)
        rope = self._rope(n + self.cfg.time_tokens, x)

        def embed(mask: torch.Tensor | None, i: int) -> torch.Tensor:
            xs, cs = (x, cond) if mask is None else (x * mask, cond * mask)
            return self.input_proj[i](torch.cat([xs.reshape(b, n, k * c), cs.reshape(b, n, k * c)], dim=-1))

        if self.cfg.split_streams:
            proj_face = 0 if len(self.input_proj) == 1 else 1
            h_face, h_body = embed(self.face_mask, proj_face), embed(1.0 - self.face_mask, 0)
        else:
            h_face, h_body = None, embed(None, 0)

        tok, pooled = self.encode_audio(audio, drop_audio, rope)
        t_hidden = self.time_mlp(timestep_embedding(t, self.cfg.width, self.cfg.time_embedding == "legacy"))
        t_vec = self.time_film(t_hidden) + pooled
        t_tok = self.time_tokens(t_hidden).view(b, self.cfg.time_tokens, self.cfg.width)
        mem = self.mem_norm(torch.cat([tok, t_tok], dim=1))

        mem_rot = n + self.cfg.time_tokens if self.cfg.rotate_time_tokens else n
        body0 = h_body
        for layer in self.layers:
            m = layer(h_face, h_body, mem, t_vec, rope, mem_rot)
            if self.cfg.legacy_stack and self.cfg.split_streams:
                h_face, h_body = m, body0  # the original: body stream always re-reads the layer-0 projection
            else:
                h_face, h_body = (m if self.cfg.split_streams else None), m
        return self.final(m).view(b, n, k, c)


def build_gesture_decoder(cfg: Mapping[str, Any], **overrides: Any) -> GestureDecoder:
    """Plain dict -> ``GestureDecoder`` (``overrides`` e.g. ``audio_dim`` from the DataModule take precedence)."""
    return GestureDecoder(cfg, **overrides)
