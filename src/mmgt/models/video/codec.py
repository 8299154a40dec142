"""Image <-> latent codecs behind one interface.

``full`` size uses the frozen SD VAE (diffusers ``AutoencoderKL`` from a local folder); ``tiny`` size uses
:class:`PixelCodec`, an exactly invertible pixel-unshuffle, so CPU runs train on real pictures without any
pretrained autoencoder (the diffusion then happens in pixel space, folded into channels).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mmgt.models.pretrained import as_dtype
from mmgt.models.video.weights import load_pretrained


class PixelCodec(nn.Module):
    """Pixel-unshuffle by ``factor``: (N,3,H,W) in [-1,1] -> (N, 3·factor², H/factor, W/factor), exact inverse.

    ``scale`` multiplies the latents (a power of two keeps the round trip bit-exact).
    """

    def __init__(self, factor: int = 4, scale: float = 1.0, in_channels: int = 3) -> None:
        super().__init__()
        if factor < 1:
            raise ValueError(f"PixelCodec factor must be >= 1, got {factor}")
        self.factor = int(factor)
        self.scale = float(scale)
        self.latent_channels = in_channels * self.factor**2

    def encode(self, images: torch.Tensor, sample: bool = False) -> torch.Tensor:  # noqa: ARG002 (interface)
        h, w = images.shape[-2:]
        if h % self.factor or w % self.factor:
            raise ValueError(f"frame size {h}x{w} is not divisible by the codec factor {self.factor}")
        return F.pixel_unshuffle(images, self.factor) * self.scale

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(latents / self.scale, self.factor)


class VAECodec(nn.Module):
    """Frozen diffusers ``AutoencoderKL``; latents scaled by the VAE's ``scaling_factor`` (0.18215 for SD)."""

    def __init__(self, vae: nn.Module, scaling_factor: float | None = None) -> None:
        super().__init__()
        self.vae = vae.eval().requires_grad_(False)
        self.scale = float(scaling_factor or getattr(vae.config, "scaling_factor", 0.18215))
        self.factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.latent_channels = int(vae.config.latent_channels)

    def train(self, mode: bool = True) -> VAECodec:  # the VAE is never trained
        super().train(mode)
        self.vae.eval()
        return self

    def encode(self, images: torch.Tensor, sample: bool = False) -> torch.Tensor:
        """Latents in the images' dtype (a float16 / bfloat16 VAE stays an implementation detail)."""
        dist = self.vae.encode(images.to(self.vae.dtype)).latent_dist
        z = dist.sample() if sample else dist.mean
        return (z * self.scale).to(images.dtype)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latents.to(self.vae.dtype) / self.scale).sample.clamp(-1, 1).to(latents.dtype)

    def set_memory(self, slicing: bool = False, tiling: bool = False) -> None:
        """diffusers' memory switches of the VAE: ``slicing`` encodes/decodes one image of a batch at a time (the
        same result, a smaller peak: a 12-frame window at 512² decodes 12 images at once otherwise); ``tiling`` splits
        frames larger than the VAE's tile size (its config's ``sample_size``: 512 px for SD) into overlapping tiles
        blended at the seams (frames no larger than a tile are untouched)."""
        vae = self.vae
        if slicing:
            vae.enable_slicing()
        else:
            vae.disable_slicing()
        if tiling:
            vae.enable_tiling()
        else:
            vae.disable_tiling()


# SD-1.5 VAE layout (used to build it without weights, e.g. on the meta device).
SD_VAE_CONFIG: dict[str, Any] = dict(
    in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32,
    sample_size=512, scaling_factor=0.18215,
)


def build_codec(cfg: dict, key: str = "size.video.codec", load_weights: bool = True) -> nn.Module:
    """``{type: pixel, factor, scale}`` or ``{type: vae, path, scaling_factor[, config, variant, dtype]}`` -> codec.

    The VAE folder is loaded strictly (:func:`~mmgt.models.pretrained.load_pretrained`: a missing tensor is an
    error), from the ``variant`` weight files (``fp16`` for fp16-only folders), built in ``dtype`` (null: float32).
    Without weights (``load_weights=False``: the weights come from a checkpoint) the VAE is built from ``config``
    (the architecture recorded with an export), else the SD-1.5 layout."""
    kind = cfg.get("type", "pixel")
    if kind == "pixel":
        return PixelCodec(factor=int(cfg.get("factor", 4)), scale=float(cfg.get("scale", 1.0)))
    if kind == "vae":
        from diffusers import AutoencoderKL

        if not load_weights:
            vae = AutoencoderKL(**dict(cfg.get("config") or SD_VAE_CONFIG))
            return VAECodec(vae.to(as_dtype(cfg.get("dtype"), f"{key}.dtype")), cfg.get("scaling_factor"))
        vae = load_pretrained(AutoencoderKL, cfg.get("path"), key=f"{key}.path", what="vae", variant=cfg.get("variant"),
                              dtype=cfg.get("dtype"))
        return VAECodec(vae, cfg.get("scaling_factor"))
    raise ValueError(f"{key}.type must be 'pixel' or 'vae', got {kind!r}")
