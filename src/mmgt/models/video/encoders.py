"""Reference-image embedding: one token that both UNets cross-attend to.

``full``: the frozen CLIP ViT-L/14 image encoder of sd-image-variations (``image_embeds``, 768-d) from a local
folder. ``tiny``: a small random-init conv encoder (trainable in sub-stage A) with the same interface.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mmgt.models.pretrained import as_dtype
from mmgt.models.video.weights import load_pretrained

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ConvImageEncoder(nn.Module):
    """Strided conv stack + global average pool + linear: (N,3,H,W) in [-1,1] -> (N, 1, dim)."""

    def __init__(self, dim: int, channels: tuple[int, ...] = (16, 32, 64)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for c in channels:
            layers += [nn.Conv2d(c_in, c, 3, stride=2, padding=1), nn.GroupNorm(min(8, c), c), nn.SiLU()]
            c_in = c
        self.features = nn.Sequential(*layers)
        self.proj = nn.Linear(c_in, dim)
        self.dim = dim

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.proj(self.features(images).mean(dim=(2, 3)))[:, None]


class CLIPImageEncoder(nn.Module):
    """Frozen ``CLIPVisionModelWithProjection``; resizes the short side to the model's input size (224 for
    ViT-L/14), centre-crops, CLIP-normalises."""

    def __init__(self, model: nn.Module, size: int | None = None) -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.size = int(size or model.config.image_size)  # 224 for ViT-L/14
        self.dim = int(model.config.projection_dim)
        self.register_buffer("mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> CLIPImageEncoder:
        super().train(mode)
        self.model.eval()
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = (images.float() + 1) / 2
        h, w = x.shape[-2:]
        s = self.size / min(h, w)
        x = F.interpolate(x, size=(max(self.size, round(h * s)), max(self.size, round(w * s))), mode="bicubic",
                          align_corners=False, antialias=True)
        top, left = (x.shape[-2] - self.size) // 2, (x.shape[-1] - self.size) // 2
        x = x[..., top:top + self.size, left:left + self.size]
        x = (x - self.mean) / self.std
        # the embedding in the images' dtype: a float16 / bfloat16 encoder stays an implementation detail
        return self.model(pixel_values=x.to(self.model.dtype)).image_embeds[:, None].to(images.dtype)


# ViT-L/14 layout of the sd-image-variations image encoder (for building without weights).
CLIP_L14_CONFIG = dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=16, num_hidden_layers=24,
                       image_size=224, patch_size=14, projection_dim=768, hidden_act="quick_gelu")


def build_image_encoder(cfg: dict, dim: int, key: str = "size.video.image_encoder",
                        load_weights: bool = True) -> nn.Module:
    """``{type: conv, channels}`` or ``{type: clip, path[, config, variant, dtype]}``; ``dim`` is the UNets'
    cross-attention width. The CLIP folder is loaded strictly (a missing tensor is an error) and built in ``dtype``
    (null: float32, whatever the file's dtype).

    Without weights the CLIP encoder is built from ``config`` (recorded with an export), else the ViT-L/14 layout."""
    kind = cfg.get("type", "conv")
    if kind == "conv":
        return ConvImageEncoder(dim, tuple(cfg.get("channels", (16, 32, 64))))
    if kind == "clip":
        from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

        if load_weights:
            model = load_pretrained(CLIPVisionModelWithProjection, cfg.get("path"), key=f"{key}.path",
                                    what="image_encoder", variant=cfg.get("variant"), dtype=cfg.get("dtype"))
        else:
            model = CLIPVisionModelWithProjection(CLIPVisionConfig(**dict(cfg.get("config") or CLIP_L14_CONFIG)))
            model = model.to(as_dtype(cfg.get("dtype"), f"{key}.dtype"))
        enc = CLIPImageEncoder(model)
        if enc.dim != dim:
            raise ValueError(f"{key}: CLIP projection_dim {enc.dim} != UNet cross_attention_dim {dim}")
        return enc
    raise ValueError(f"{key}.type must be 'conv' or 'clip', got {kind!r}")
