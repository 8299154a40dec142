"""The generation API under its earlier import path: ``from mmgt.inference import GesturePipeline, ...``.

The code lives in :mod:`mmgt.generation` (inputs, options, pipeline, outputs, the ``generate`` task); this module
only re-exports it so existing imports keep working.
"""

from __future__ import annotations

from mmgt import checkpoints
from mmgt.errors import GenerationError
from mmgt.generation.inputs import (
    IMAGE_SUFFIXES,
    VIDEO_SUFFIXES,
    check_person,
    fit_image,
    load_keypoints,
    load_speech,
    n_frames_for,
    read_image,
)
from mmgt.generation.options import PoseSampling, Sampling, VideoSampling
from mmgt.generation.outputs import GenerationResult, write_outputs
from mmgt.generation.pipeline import GestureOutput, GesturePipeline, LoadedStage, load_stage
from mmgt.generation.task import resolve_device, run
from mmgt.pose.conditioning import CropResize

FrameTransform = CropResize  # the earlier name of the image/keypoint crop + resize
centre_crop_transform = CropResize.centre
export_safetensors = checkpoints.export_safetensors

__all__ = ["IMAGE_SUFFIXES", "VIDEO_SUFFIXES", "FrameTransform", "GenerationError", "GenerationResult",
           "GestureOutput", "GesturePipeline", "LoadedStage", "PoseSampling", "Sampling", "VideoSampling",
           "centre_crop_transform", "check_person", "export_safetensors", "fit_image", "load_keypoints",
           "load_speech", "load_stage", "n_frames_for", "read_image", "resolve_device", "run", "write_outputs"]
