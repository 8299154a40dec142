"""A tiny convolutional stage-2 backbone (``conf/size/tiny_conv.yaml``): the template for a new backbone and a fast
stand-in in tests, not a model of the paper.

Per frame: ``conv_in`` (the input site) -> + bias from the timestep, the reference-image token and the reference
bank -> residual conv blocks ``down`` (latent size), ``mid`` (half size), ``up`` (latent size, with the skip of
``down``), the attention sites, each followed by a zero-initialised temporal conv over the window's frames
(identity at init, like AnimateDiff's motion modules) -> ``conv_out``. The reference path (``reference``) encodes
the reference latent into tokens written to the bank as ``reference``; the denoiser reads their mean, hidden for
samples whose image condition is dropped.

Parameter groups by role: ``denoising_unet`` = the denoiser without its temporal convs, ``motion_modules`` = the
temporal convs, ``reference_unet`` = the reference path; the sub-stage defaults therefore work unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from diffusers.models.embeddings import get_timestep_embedding
from torch import nn
from torch.utils.checkpoint import checkpoint

from mmgt.models.video.backbone import ROLE_GROUPS, Backbone, Site
from mmgt.models.video.reference import ForwardContext

SITES = ("down", "mid", "up")


class ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, groups: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(groups, c_in)
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + self.conv(F.silu(self.norm(x)))


class TemporalConv(nn.Module):
    """(B·F, C, h, w) -> the same plus a conv over the F frames of each sample; zero at init."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(channels, channels, 3, padding=1)
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)

    def forward(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        n, c, h, w = x.shape
        t = x.view(n // frames, frames, c, h, w).permute(0, 3, 4, 2, 1).reshape(-1, c, frames)
        t = self.conv(t).view(n // frames, h, w, c, frames).permute(0, 4, 3, 1, 2).reshape(n, c, h, w)
        return x + t


class ConvDenoiser(nn.Module):
    def __init__(self, latent_channels: int, width: int, context_dim: int, groups: int) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(latent_channels, width, 3, padding=1)
        self.time = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.context = nn.Linear(context_dim, width)
        self.read = nn.Linear(width, width)
        self.blocks = nn.ModuleDict({"down": ResBlock(width, width, groups), "mid": ResBlock(width, width, groups),
                                     "up": ResBlock(2 * width, width, groups)})
        self.downsample = nn.Conv2d(width, width, 3, stride=2, padding=1)
        self.temporal = nn.ModuleDict({s: TemporalConv(width) for s in SITES})
        self.norm_out = nn.GroupNorm(groups, width)
        self.conv_out = nn.Conv2d(width, latent_channels, 3, padding=1)


class ConvBackbone(Backbone):
    """Keyword arguments (``size.video.backbone``): ``width``, ``context_dim`` (reference-token width, the image
    encoder's output), ``norm_groups``. Attention sites ``down``, ``mid``, ``up`` (the UNet's block vocabulary, so
    the attention configs apply unchanged; ``down.0`` / ``mid.0`` / ``up.0`` name them singly)."""

    def __init__(self, ctx: ForwardContext, latent_channels: int, load_weights: bool = True,  # noqa: ARG002
                 key: str = "size.video.backbone", width: int = 32, context_dim: int = 32,
                 norm_groups: int = 8) -> None:
        super().__init__(ctx)
        if width % norm_groups:
            raise ValueError(f"{key}: width {width} is not divisible by norm_groups {norm_groups}")
        self.latent_channels, self.context_dim, self.width = latent_channels, context_dim, width
        self.norm_groups = norm_groups
        self.denoiser = ConvDenoiser(latent_channels, width, context_dim, norm_groups)
        self.reference = nn.Sequential(nn.Conv2d(latent_channels, width, 3, padding=1), nn.SiLU(),
                                       nn.Conv2d(width, width, 3, padding=1))
        self.reference_layers = ["reference"]
        self.checkpointing = False

    def input_site(self) -> Site:
        return Site("conv_in", self.denoiser.conv_in, self.width, self.latent_channels, self.norm_groups)

    def attention_sites(self, blocks: Sequence[str]) -> list[Site]:
        names = {f"{s}.0" for s in SITES} | set(SITES)
        bad = [b for b in blocks if b not in names]
        if bad:
            raise ValueError(f"attention.blocks entries for {type(self).__name__} must be down/mid/up[.0], got {bad}")
        chosen = [s for s in SITES if s in blocks or f"{s}.0" in blocks]
        return [Site(f"blocks.{s}", self.denoiser.blocks[s], self.width, 2 * self.width if s == "up" else self.width,
                     self.norm_groups) for s in chosen]

    def parameter_groups(self) -> dict[str, list[tuple[str, nn.Parameter]]]:
        groups: dict[str, list[tuple[str, nn.Parameter]]] = {g: [] for g in ROLE_GROUPS}
        for n, p in self.named_parameters():
            role = ("reference_unet" if n.startswith("reference.") else
                    "motion_modules" if n.startswith("denoiser.temporal.") else "denoising_unet")
            groups[role].append((n, p))
        return groups

    def enable_gradient_checkpointing(self) -> None:
        self.checkpointing = True

    def run_reference(self, ref_latents: torch.Tensor, context: torch.Tensor) -> None:
        if self.ctx.writing:
            self.ctx.bank["reference"] = self.reference(ref_latents).flatten(2).transpose(1, 2)  # (B, h·w, C)

    def _block(self, name: str, x: torch.Tensor, frames: int) -> torch.Tensor:
        d = self.denoiser
        if self.checkpointing and self.training:
            x = checkpoint(d.blocks[name], x, use_reentrant=False)
        else:
            x = d.blocks[name](x)
        return d.temporal[name](x, frames)

    def forward(self, latents: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, c, f, h, w = latents.shape
        if h % 2 or w % 2:
            raise ValueError(f"{type(self).__name__} needs even latent sizes, got {h}x{w}")
        d, ctx = self.denoiser, self.ctx
        x = d.conv_in(latents.transpose(1, 2).reshape(b * f, c, h, w))
        emb = d.time(get_timestep_embedding(timesteps, self.width).to(x.dtype)) + d.context(context[:, 0])
        ref = ctx.bank.get("reference")
        if ref is not None:
            r = d.read(ref.to(x.dtype).mean(1))
            emb = emb + (r if ctx.ref_keep is None else r * ctx.ref_keep.to(r.dtype)[:, None])
        x = x + emb.repeat_interleave(f, dim=0)[:, :, None, None]
        skip = self._block("down", x, f)
        x = self._block("mid", d.downsample(skip), f)
        x = self._block("up", torch.cat([F.interpolate(x, size=(h, w), mode="nearest"), skip], 1), f)
        out = d.conv_out(F.silu(d.norm_out(x)))
        return out.view(b, f, c, h, w).transpose(1, 2)
