"""``ConditionProcessor``: keypoints + frame size -> the stage-2 conditions, one implementation for the training
dataset and the generation pipeline (so generation can never drift from training).

What it derives: pose images ``(T, 3, H, W)`` in [0, 1] (:func:`mmgt.pose.render.render_pose` with the configured
drawing style), region masks at one size (:class:`mmgt.pose.masks.RegionMaskBuilder`), and
normalised frames ``(T, 3, H, W)`` in [-1, 1]. Keypoints are pixel ``x, y`` of the frame they are drawn on, in the
pixel-corner convention (pixel ``i`` covers ``[i, i + 1)``, its centre is ``i + 0.5``): :func:`scale_keypoints` maps
them between frame sizes (``x * W_new / W_old``, the map the frames' resize applies to their edges) and
:class:`CropResize` through a crop of whole pixels followed by such a resize, so pixels and keypoints move together.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mmgt.pose.masks import RegionMaskBuilder
from mmgt.pose.render import STYLES, render_pose

RENDER_KEYS = ("style", "legacy_hand_colors", "drop_legs", "threshold")


def scale_keypoints(kp: np.ndarray, src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> np.ndarray:
    """Pixel keypoints of a ``src_hw`` frame -> pixels of the same frame resized to ``dst_hw`` (float32 copy)."""
    out = np.array(kp, dtype=np.float32)
    out[..., 0] *= dst_hw[1] / float(src_hw[1])
    out[..., 1] *= dst_hw[0] / float(src_hw[0])
    return out


@dataclass(frozen=True)
class CropResize:
    """Crop ``[x0, x0 + width) x [y0, y0 + height)`` (whole pixels) of a frame, then resize it to ``size`` (H, W).

    The crop is stated in whole pixels because that is what the image crop takes: keypoints shifted by the same
    integer offset and scaled like :func:`scale_keypoints` stay on the pixels they marked.
    """

    x0: int
    y0: int
    width: int
    height: int
    size: tuple[int, int]

    @classmethod
    def centre(cls, src_hw: tuple[int, int], size: tuple[int, int]) -> CropResize:
        """The largest centred crop of a ``src_hw`` frame with the aspect ratio of ``size`` (rounded to pixels)."""
        h0, w0 = int(src_hw[0]), int(src_hw[1])
        h, w = int(size[0]), int(size[1])
        if w0 * h > h0 * w:  # too wide: crop the width
            cw, ch = h0 * w / h, float(h0)
        else:
            cw, ch = float(w0), w0 * h / w
        return cls(int(round((w0 - cw) / 2.0)), int(round((h0 - ch) / 2.0)), int(round(cw)), int(round(ch)), (h, w))

    def keypoints(self, kp: np.ndarray) -> np.ndarray:
        """Pixel keypoints ``(..., 3)`` of the source frame -> pixels of the output frame (float32 copy)."""
        out = np.array(kp, dtype=np.float32, copy=True)
        out[..., 0] -= self.x0
        out[..., 1] -= self.y0
        return scale_keypoints(out, (self.height, self.width), self.size)

    def image(self, image: np.ndarray) -> np.ndarray:
        """(H0, W0, 3) uint8 -> (H, W, 3) uint8: the crop, resized bilinearly with antialiasing (as the frames of the
        training data are resized) and rounded."""
        crop = image[self.y0:self.y0 + self.height, self.x0:self.x0 + self.width]
        t = torch.from_numpy(np.array(crop, copy=True)).permute(2, 0, 1)[None].float()
        if tuple(t.shape[-2:]) != tuple(self.size):
            t = F.interpolate(t, size=tuple(self.size), mode="bilinear", antialias=True, align_corners=False)
        return t.round().clamp(0, 255).to(torch.uint8)[0].permute(1, 2, 0).numpy()


def normalise_frames(frames: np.ndarray | torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """uint8 ``(T, h, w, 3)`` -> float ``(T, 3, H, W)`` in [-1, 1], bilinear with antialiasing when resized."""
    x = torch.as_tensor(np.ascontiguousarray(frames))
    t = x.permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)
    if tuple(t.shape[-2:]) != tuple(size):
        t = F.interpolate(t, size=tuple(size), mode="bilinear", antialias=True, align_corners=False).clamp_(-1.0, 1.0)
    return t


class ConditionProcessor:
    """Pose images and region masks of pixel keypoints, as both the dataset and the pipeline need them.

    Args:
        mask: a :class:`~mmgt.pose.masks.MaskConfig`, its dict, or a built :class:`RegionMaskBuilder`. Masks are
            built at the one size the mask config states (:meth:`MaskConfig.mask_size`); the video model resizes
            them to its attention resolutions.
        render: :func:`render_pose` settings (``style``: ``mmgt`` | ``official``, ``legacy_hand_colors``,
            ``drop_legs``, ``threshold``); unknown keys are refused.
    """

    def __init__(self, mask: Any = None, render: Mapping[str, Any] | None = None) -> None:
        self.mask_builder = mask if isinstance(mask, RegionMaskBuilder) else RegionMaskBuilder(mask)
        self.render = {k: v for k, v in dict(render or {}).items() if v is not None}
        bad = [k for k in self.render if k not in RENDER_KEYS]
        if bad:
            raise ValueError(f"pose_render: unknown key(s) {bad}; known: {list(RENDER_KEYS)}")
        if self.render.get("style", "mmgt") not in STYLES:
            raise ValueError(f"pose_render.style must be one of {STYLES}, got {self.render['style']!r}")

    @classmethod
    def from_info(cls, info: Mapping[str, Any]) -> ConditionProcessor:
        """The processor a video model was trained with, from the DataModule ``info()`` it recorded.

        Files written before masks were delivered at one size recorded no ``mask.cell``: their masks were built at
        the latent grid, ``latent_downsample`` pixels per cell.
        """
        mask = dict(info.get("mask") or {})
        if "cell" not in mask and info.get("latent_downsample"):
            mask["cell"] = int(info["latent_downsample"])
        return cls(mask, info.get("pose_render"))

    @property
    def num_branches(self) -> int:
        return self.mask_builder.num_branches

    def pose_images(self, keypoints: np.ndarray, frame_hw: tuple[int, int]) -> torch.Tensor:
        """(T, 134, 3) pixel keypoints of ``frame_hw`` frames -> (T, 3, H, W) pose images in [0, 1]."""
        h, w = frame_hw
        return torch.from_numpy(render_pose(keypoints, h, w, **self.render)).permute(0, 3, 1, 2).float().div_(255.0)

    def masks(self, keypoints: np.ndarray, frame_hw: tuple[int, int]) -> torch.Tensor:
        """``(K, T, h, w)`` region masks at the mask config's size."""
        return self.mask_builder(keypoints, (int(frame_hw[0]), int(frame_hw[1]))).float()

    def __call__(self, keypoints: np.ndarray, frame_hw: tuple[int, int]) -> dict[str, Any]:
        """Every condition of a window: ``pose_images`` and ``masks`` (float tensors)."""
        return {"pose_images": self.pose_images(keypoints, frame_hw), "masks": self.masks(keypoints, frame_hw)}


__all__ = ["RENDER_KEYS", "ConditionProcessor", "CropResize", "normalise_frames", "scale_keypoints"]
