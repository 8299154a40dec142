"""Pose toolkit: the 134-keypoint layout, normalisation, rendering and region masks."""

from mmgt.pose.layout import (
    FACE,
    GROUPS,
    HANDS,
    LIPS,
    NUM_KEYPOINTS,
    POSE_DIM,
    PoseNormalizer,
    group_mask,
    visibility,
)
from mmgt.pose.masks import MaskConfig, RegionMaskBuilder, mask_pyramid, pyramid_sizes
from mmgt.pose.render import render_pose

__all__ = [
    "FACE", "GROUPS", "HANDS", "LIPS", "NUM_KEYPOINTS", "POSE_DIM", "PoseNormalizer", "group_mask", "visibility",
    "MaskConfig", "RegionMaskBuilder", "mask_pyramid", "pyramid_sizes", "render_pose",
]
