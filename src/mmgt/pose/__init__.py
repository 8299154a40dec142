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

__all__ = [
    "FACE", "GROUPS", "HANDS", "LIPS", "NUM_KEYPOINTS", "POSE_DIM", "PoseNormalizer", "group_mask", "visibility",
]
