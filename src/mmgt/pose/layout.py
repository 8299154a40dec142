"""The 134-keypoint DWPose whole-body layout and the pose normalisation used by both stages.

Layout (COCO-WholeBody 133 points + a synthetic neck, body re-ordered to OpenPose-18):

====================  =========  ==============================================
group                 indices    notes
====================  =========  ==============================================
body (OpenPose-18)    0-17       0 nose, 1 neck, 2-4 R arm, 5-7 L arm, 8-13 legs,
                                 14/15 eyes, 16/17 ears
feet                  18-23      never drawn
face (iBUG-68)        24-91      jaw 24-40, brows 41-50, nose 51-59, eyes 60-71
lips                  72-91      subset of face
left hand             92-112
right hand            113-133
====================  =========  ==============================================

Keypoints are stored as ``(T, 134, 3)`` float32 arrays of pixel ``x, y`` in the stored video plus a
detector score. Normalisation maps pixel coordinates to ``[-1, 1]``; the score channel is kept as a
visibility value in ``[0, 1]`` and is *not* normalised (the original normalised it too, which we
reproduce only under ``legacy=True``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch stays optional here: pose-estimation workers import this module
    import torch

NUM_KEYPOINTS = 134
NUM_CHANNELS = 3
POSE_DIM = NUM_KEYPOINTS * NUM_CHANNELS  # 402, the flat per-frame vector of the original

BODY = tuple(range(0, 18))
FEET = tuple(range(18, 24))
FACE = tuple(range(24, 92))
LIPS = tuple(range(72, 92))
LEFT_HAND = tuple(range(92, 113))
RIGHT_HAND = tuple(range(113, 134))
HANDS = LEFT_HAND + RIGHT_HAND
LEGS = (8, 9, 10, 11, 12, 13)  # hips kept visible by default; knees/ankles dropped (see LEG_POINTS)
LEG_POINTS = (9, 10, 12, 13)  # knees and ankles, dropped from rendering/training by a visibility flag

# Named groups used by losses, metrics and region masks.
GROUPS: dict[str, tuple[int, ...]] = {
    "body": BODY,
    "feet": FEET,
    "face": FACE,
    "lips": LIPS,
    "left_hand": LEFT_HAND,
    "right_hand": RIGHT_HAND,
    "hands": HANDS,
    "all": tuple(range(NUM_KEYPOINTS)),
}

# OpenPose-18 limbs (pairs of body indices) in drawing order, and their colours (RGB).
BODY_LIMBS = (
    (1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10),
    (1, 11), (11, 12), (12, 13), (1, 0), (0, 14), (14, 16), (0, 15), (15, 17),
)
BODY_COLORS = (
    (255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0),
    (0, 255, 0), (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255),
    (0, 0, 255), (85, 0, 255), (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85),
)
# 21-point hand skeleton (wrist 0, four joints per finger), relative to the hand's first index.
HAND_EDGES = (
    (0, 1), (1, 2), (2, 3), (3, 4), (0, 5), (5, 6), (6, 7), (7, 8), (0, 9), (9, 10),
    (10, 11), (11, 12), (0, 13), (13, 14), (14, 15), (15, 16), (0, 17), (17, 18), (18, 19), (19, 20),
)

# Score below which a keypoint counts as invisible (the original's threshold).
VISIBILITY_THRESHOLD = 0.3

# Legacy constants of the original code: pixel coords in [-200, 800] -> [-1, 1] for 512-px frames,
# applied to all three channels (scores included).
LEGACY_LOW = -200.0
LEGACY_HIGH = 800.0


@dataclass(frozen=True)
class PoseNormalizer:
    """Affine map between pixel keypoints and the network's ``[-1, 1]`` space.

    By default a frame of size ``(width, height)`` is mapped so that ``[-margin*S, (1+margin)*S]``
    becomes ``[-1, 1]`` with ``S = max(width, height)``; margin 0.5 reproduces the original's
    −200/800 range for a 512-px frame almost exactly (−256/768) while staying resolution-independent.
    ``legacy=True`` uses the original's literal constants (−200, 800) on all channels, scores too.
    """

    width: int = 512
    height: int = 512
    margin: float = 0.5
    legacy: bool = False

    @property
    def bounds(self) -> tuple[float, float]:
        if self.legacy:
            return LEGACY_LOW, LEGACY_HIGH
        size = float(max(self.width, self.height))
        return -self.margin * size, (1.0 + self.margin) * size

    def normalize(self, kp):  # type: ignore[no-untyped-def]
        """Pixel ``(..., 134, 3)`` -> normalised; works on numpy arrays and torch tensors."""
        lo, hi = self.bounds
        out = kp.copy() if isinstance(kp, np.ndarray) else kp.clone()
        chans = slice(0, 3) if self.legacy else slice(0, 2)
        out[..., chans] = 2.0 * (kp[..., chans] - lo) / (hi - lo) - 1.0
        return out

    def denormalize(self, kp):  # type: ignore[no-untyped-def]
        """Inverse of :meth:`normalize`."""
        lo, hi = self.bounds
        out = kp.copy() if isinstance(kp, np.ndarray) else kp.clone()
        chans = slice(0, 3) if self.legacy else slice(0, 2)
        out[..., chans] = (kp[..., chans] + 1.0) / 2.0 * (hi - lo) + lo
        return out


def visibility(kp: np.ndarray | torch.Tensor, drop_legs: bool = True,
               threshold: float = VISIBILITY_THRESHOLD) -> np.ndarray | torch.Tensor:
    """Boolean ``(..., 134)`` visibility from scores; legs are hidden by flag, never by zeroing coords."""
    vis = kp[..., 2] >= threshold
    if drop_legs:
        vis = vis.copy() if isinstance(vis, np.ndarray) else vis.clone()
        vis[..., list(LEG_POINTS)] = False
    return vis


def group_mask(names: tuple[str, ...] | list[str]) -> np.ndarray:
    """Boolean (134,) selector for the union of named groups."""
    sel = np.zeros(NUM_KEYPOINTS, dtype=bool)
    for name in names:
        if name not in GROUPS:
            raise KeyError(f"unknown keypoint group {name!r}; known: {sorted(GROUPS)}")
        sel[list(GROUPS[name])] = True
    return sel


def mouth_opening(kp: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """Per-frame vertical lip gap ``(...,)``: mean inner-lip distance, in the keypoints' units.

    Inner lips in iBUG-68 are points 60-67 (here 84-91); upper 61-63 face lower 67-65.
    """
    upper = kp[..., [85, 86, 87], 1]
    lower = kp[..., [91, 90, 89], 1]
    return (lower - upper).mean(-1)
