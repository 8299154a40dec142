"""Pose guider: rendered pose images -> features added to the denoising UNet's ``conv_in`` output.

This is exactly ControlNet's conditioning embedding (conv 3->c0, pairs of [c_i->c_i, c_i->c_{i+1} stride 2]
with SiLU, zero-initialised conv_out), so we use diffusers' ``ControlNetConditioningEmbedding`` and can
initialise it from a local ControlNet-openpose file as the original does. The number of stride-2 convs
(``len(channels) - 1``) must match the codec's downsampling factor.
"""

from __future__ import annotations

import torch
from diffusers.models.controlnets.controlnet import ControlNetConditioningEmbedding
from torch import nn

from mmgt.models.video.weights import load_state_dict_file, require

PREFIX = "controlnet_cond_embedding."


class PoseGuider(nn.Module):
    """(N, 3, H, W) pose image in [0, 1] -> (N, out_channels, H/2^k, W/2^k), zero at init."""

    def __init__(self, out_channels: int, channels: tuple[int, ...] = (16, 32, 96, 256)) -> None:
        super().__init__()
        self.embed = ControlNetConditioningEmbedding(out_channels, 3, tuple(channels))
        self.factor = 2 ** (len(channels) - 1)

    def forward(self, pose: torch.Tensor) -> torch.Tensor:
        return self.embed(pose)

    def load_controlnet(self, path: str, key: str = "size.video.pose_guider.pretrained") -> None:
        """Copy ``controlnet_cond_embedding.*`` (all but ``conv_out``, which stays zero) from a ControlNet file."""
        p = require(path, key, "pose_guider")
        if p.is_dir():
            p = require(p / "diffusion_pytorch_model.safetensors", key, "pose_guider")
        sd = {k[len(PREFIX):]: v for k, v in load_state_dict_file(p).items()
              if k.startswith(PREFIX) and not k.startswith(PREFIX + "conv_out")}
        if not sd:
            raise ValueError(f"{p} (config key `{key}`) has no `{PREFIX}*` tensors: not a ControlNet checkpoint")
        missing, unexpected = self.embed.load_state_dict(sd, strict=False)
        bad = [m for m in missing if not m.startswith("conv_out")]
        if bad or unexpected:
            raise ValueError(f"{p} (config key `{key}`): pose-guider shapes do not match: missing {bad}, "
                             f"unexpected {unexpected}")
