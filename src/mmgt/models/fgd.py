"""The motion autoencoder behind FGD (Fréchet Gesture Distance): a feature space for pose sequences learnt on a corpus.

FGD (Yoon et al., "Speech Gesture Generation from the Trimodal Context of Text, Audio, and Speaker Identity", 2020;
also GENEA and DiffGesture) is the Fréchet distance between Gaussians fitted to the latent codes of real and
generated pose sequences, where the encoder is the encoder half of a convolutional sequence autoencoder trained on
the dataset's motion. This module is that autoencoder for mmgt's 2-D whole-body keypoints:

* **Encoder** (per part, the published layout): Conv1d(in→32, k3) → Conv1d(32→64, k3) → Conv1d(64→64, k4, stride 2)
  (each + BatchNorm + LeakyReLU 0.2) → Conv1d(64→32, k3) → flatten → Linear→256 → Linear→128 (each + BatchNorm +
  LeakyReLU) → Linear→``latent_dim``. Documented differences: any window length (the flattened size follows the
  length; the published code fixes 34 frames); LeakyReLU slope 0.2 in the linear head too (the published head passes
  ``True`` as the slope, i.e. slope 1 — no non-linearity); 2-D keypoints instead of 3-D direction vectors; the
  input is standardised per channel by running corpus statistics (a BatchNorm without affine parameters; the
  published code subtracts the dataset's mean pose) and, with ``velocity`` (default), the frame-to-frame
  differences are appended as channels. Trained as ``experiment=fgd_encoder`` (300 steps) on 180 clips of the
  synthetic corpus (3 speakers), frame-shuffled held-out motion scores 5.7-27x the FGD of held-out real motion
  (120 other clips) over six training seeds, a frozen pose 24-245x (without the velocity channels 4.6-134x and
  19-825x). The corpus must be large: trained on 18 clips the encoder fits them, and held-out real clips score an
  FGD as large as shuffled ones. Time reversal is no probe there (0.5-4.7x): its gesture strokes are nearly
  symmetric in time.
* **Decoder** (per part): Linear→64 (128 for windows > 34 frames) → Linear→4·length, reshaped to 4 × length →
  ConvTranspose1d(4→32, k3) → ConvTranspose1d(32→32, k3) → Conv1d(32→32, k3) → Conv1d(32→out, k3).
* **Visibility-aware parts.** The pose is split into body (OpenPose-18 without knees and ankles), hands and face,
  each with its own encoder, so the 68 face points do not outweigh the 14 body points; the code is the parts'
  codes concatenated (``parts`` order). Points the stage-1 loss never supervises — knees, ankles and feet — are
  not inputs at all. Per point the input is (x, y) relative to the part's anchor (body: the neck, or where it is not
  visible the centroid of the visible body points; each hand and the face: the centroid of their visible points, so
  a hand's code is its shape, its place is in the body's wrists), multiplied by the point's visibility, plus the
  visibility itself; a point invisible in the ground truth at a frame therefore contributes nothing there, for
  generated and real sequences alike.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import nn

from mmgt.pose.layout import BODY, FACE, LEFT_HAND, LEG_POINTS, RIGHT_HAND

NECK = 1
UPPER_BODY = tuple(i for i in BODY if i not in LEG_POINTS)
# part -> [(keypoint indices, anchor index or None = centroid of the visible points)]
PART_GROUPS: dict[str, tuple[tuple[tuple[int, ...], int | None], ...]] = {
    "body": ((UPPER_BODY, NECK),),
    "hands": ((LEFT_HAND, None), (RIGHT_HAND, None)),
    "face": ((FACE, None),),
}
PART_POINTS: dict[str, tuple[int, ...]] = {p: tuple(i for idx, _ in g for i in idx) for p, g in PART_GROUPS.items()}
#: every keypoint any part reads (legs and feet are not among them)
USED_POINTS: tuple[int, ...] = tuple(sorted({i for pts in PART_POINTS.values() for i in pts}))


def part_inputs(poses: torch.Tensor, vis: torch.Tensor | None = None,
                parts: Sequence[str] = tuple(PART_GROUPS)) -> dict[str, torch.Tensor]:
    """(B, N, K, >=2) normalised poses (+ optional (B, N, K) bool visibility; default all visible) -> per part
    (B, N, 3·P) float32: x, y relative to the part's anchor, zeroed where invisible, then the visibility."""
    if poses.ndim != 4 or poses.shape[-1] < 2:
        raise ValueError(f"poses must be (B, N, K, >=2), got {tuple(poses.shape)}")
    xy = poses[..., :2].float()
    v = torch.ones(xy.shape[:-1], dtype=torch.bool, device=xy.device) if vis is None else vis.to(torch.bool)
    if v.shape != xy.shape[:-1]:
        raise ValueError(f"vis must be (B, N, K) = {tuple(xy.shape[:-1])}, got {tuple(v.shape)}")
    out: dict[str, torch.Tensor] = {}
    for part in parts:
        if part not in PART_GROUPS:
            raise ValueError(f"unknown pose part {part!r}; known: {sorted(PART_GROUPS)}")
        chunks = []
        for idx, anchor in PART_GROUPS[part]:
            p, m = xy[:, :, list(idx)], v[:, :, list(idx)].float()[..., None]
            centre = (p * m).sum(2, keepdim=True) / m.sum(2, keepdim=True).clamp(min=1.0)
            if anchor is not None:  # the anchor point where it is visible, else the visible points' centroid
                seen = v[:, :, anchor:anchor + 1, None]
                centre = torch.where(seen, xy[:, :, anchor:anchor + 1], centre)
            chunks.append(torch.cat([(p - centre) * m, m], dim=-1))
        out[part] = torch.cat(chunks, dim=2).flatten(2)
    return out


def _block(cin: int, cout: int, downsample: bool = False) -> nn.Sequential:
    k, s = (4, 2) if downsample else (3, 1)
    return nn.Sequential(nn.Conv1d(cin, cout, k, s), nn.BatchNorm1d(cout), nn.LeakyReLU(0.2, inplace=True))


def encoder_time_steps(length: int) -> int:
    """Frames left after the encoder's convolutions (k3, k3, k4/s2, k3, no padding)."""
    return (length - 4 - 4) // 2 + 1 - 2


class ConvPoseEncoder(nn.Module):
    """(B, N, in_dim) -> (B, latent_dim): the published FGD encoder layout, input standardised (module docstring)."""

    def __init__(self, length: int, in_dim: int, latent_dim: int, velocity: bool = True) -> None:
        super().__init__()
        steps = encoder_time_steps(length)
        if steps < 1:
            raise ValueError(f"FGD encoder: a window of {length} frames is too short (at least 12 frames)")
        self.velocity = velocity
        width = 2 * in_dim if velocity else in_dim
        self.norm = nn.BatchNorm1d(width, affine=False)
        self.net = nn.Sequential(_block(width, 32), _block(32, 64), _block(64, 64, downsample=True),
                                 nn.Conv1d(64, 32, 3))
        self.out = nn.Sequential(nn.Linear(32 * steps, 256), nn.BatchNorm1d(256), nn.LeakyReLU(0.2, inplace=True),
                                 nn.Linear(256, 128), nn.BatchNorm1d(128), nn.LeakyReLU(0.2, inplace=True),
                                 nn.Linear(128, latent_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.velocity:
            x = torch.cat([x, torch.diff(x, dim=1, prepend=x[:, :1])], dim=-1)
        return self.out(self.net(self.norm(x.transpose(1, 2))).flatten(1))


class ConvPoseDecoder(nn.Module):
    """(B, latent_dim) -> (B, N, out_dim): the published FGD decoder layout (module docstring)."""

    def __init__(self, length: int, out_dim: int, latent_dim: int) -> None:
        super().__init__()
        hidden = 64 if length <= 34 else 128
        self.length = length
        self.pre = nn.Sequential(nn.Linear(latent_dim, hidden), nn.BatchNorm1d(hidden), nn.LeakyReLU(0.2, inplace=True),
                                 nn.Linear(hidden, 4 * length))
        self.net = nn.Sequential(nn.ConvTranspose1d(4, 32, 3), nn.BatchNorm1d(32), nn.LeakyReLU(0.2, inplace=True),
                                 nn.ConvTranspose1d(32, 32, 3), nn.BatchNorm1d(32), nn.LeakyReLU(0.2, inplace=True),
                                 nn.Conv1d(32, 32, 3), nn.Conv1d(32, out_dim, 3))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(self.pre(z).view(z.shape[0], 4, self.length)).transpose(1, 2)


@dataclass
class MotionAutoencoderConfig:
    """Architecture (``model.net`` in conf/model/fgd_encoder.yaml; ``length`` defaults to the data's window)."""

    length: int = 32
    latent_dim: int = 32  # per part
    parts: tuple[str, ...] = ("body", "hands", "face")
    velocity: bool = True  # frame-to-frame differences as extra encoder input channels

    @classmethod
    def from_dict(cls, cfg: Mapping[str, Any] | None) -> MotionAutoencoderConfig:
        """Plain mapping -> config; unknown keys or parts are an error, ``_``-keys (Hydra) are ignored."""
        data = {str(k): v for k, v in dict(cfg or {}).items() if not str(k).startswith("_")}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown FGD encoder net keys {unknown}; known: {sorted(known)}")
        if "parts" in data:
            data["parts"] = tuple(str(p) for p in data["parts"])
            bad = [p for p in data["parts"] if p not in PART_GROUPS]
            if bad or not data["parts"]:
                raise ValueError(f"FGD encoder parts {list(data['parts'])}: expected a non-empty subset of "
                                 f"{list(PART_GROUPS)}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return {"length": int(self.length), "latent_dim": int(self.latent_dim), "parts": list(self.parts),
                "velocity": bool(self.velocity)}


class MotionAutoencoder(nn.Module):
    """One conv sequence autoencoder per pose part; :meth:`encode` gives the FGD features."""

    def __init__(self, cfg: MotionAutoencoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        dims = {p: 3 * len(PART_POINTS[p]) for p in cfg.parts}
        self.encoders = nn.ModuleDict({p: ConvPoseEncoder(cfg.length, dims[p], cfg.latent_dim, cfg.velocity)
                                       for p in cfg.parts})
        self.decoders = nn.ModuleDict({p: ConvPoseDecoder(cfg.length, dims[p], cfg.latent_dim) for p in cfg.parts})

    @property
    def feature_dim(self) -> int:
        return self.cfg.latent_dim * len(self.cfg.parts)

    def part_slices(self) -> dict[str, slice]:
        """Where each part's code sits in :meth:`encode`'s output."""
        d = self.cfg.latent_dim
        return {p: slice(i * d, (i + 1) * d) for i, p in enumerate(self.cfg.parts)}

    def inputs(self, poses: torch.Tensor, vis: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """:func:`part_inputs` of windows of exactly ``cfg.length`` frames."""
        if poses.ndim != 4 or poses.shape[1] != self.cfg.length:
            raise ValueError(f"FGD encoder takes (B, {self.cfg.length}, K, >=2) windows, got {tuple(poses.shape)}")
        return part_inputs(poses, vis, self.cfg.parts)

    def encode(self, poses: torch.Tensor, vis: torch.Tensor | None = None) -> torch.Tensor:
        """(B, length, K, >=2) poses -> (B, latent_dim · parts) codes."""
        x = self.inputs(poses, vis)
        return torch.cat([self.encoders[p](x[p]) for p in self.cfg.parts], dim=1)

    def forward(self, poses: torch.Tensor, vis: torch.Tensor | None = None
                ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], torch.Tensor]:
        """-> (part inputs, part reconstructions, codes)."""
        x = self.inputs(poses, vis)
        z = {p: self.encoders[p](x[p]) for p in self.cfg.parts}
        recon = {p: self.decoders[p](z[p]) for p in self.cfg.parts}
        return x, recon, torch.cat([z[p] for p in self.cfg.parts], dim=1)


__all__ = ["PART_GROUPS", "PART_POINTS", "USED_POINTS", "ConvPoseDecoder", "ConvPoseEncoder", "MotionAutoencoder",
           "MotionAutoencoderConfig", "encoder_time_steps", "part_inputs"]
