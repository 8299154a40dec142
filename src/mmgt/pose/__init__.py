"""Pose toolkit: the 134-keypoint layout, normalisation, rendering and region masks.

Names are imported lazily so that light users (e.g. pose-estimation worker processes) don't pay for torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "FACE": "layout", "GROUPS": "layout", "HANDS": "layout", "LIPS": "layout", "NUM_KEYPOINTS": "layout",
    "POSE_DIM": "layout", "PoseNormalizer": "layout", "group_mask": "layout", "visibility": "layout",
    "MaskConfig": "masks", "RegionMaskBuilder": "masks",
    "render_pose": "render",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"mmgt.pose.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'mmgt.pose' has no attribute {name!r}")
