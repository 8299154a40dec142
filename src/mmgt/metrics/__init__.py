"""Evaluation metrics: per-frame PSNR/SSIM/LPIPS, FVD (I3D) under named published protocols, the keypoint-crop
lip-sync monitor (SyncNet; ``kpsync_*``, not LSE-C/D), LSE-C/D by the standard pipeline (S3FD face tracks on the
generated video; ``lse_*``), FID on frames (optional), Fréchet distance, and the stage-1
gesture metrics (keypoint L2, FGD-style distance, diversity, beat alignment). Every suite writes a protocol card
(:meth:`Suite.protocol_card`) saying what each number is.

All metrics are torchmetrics ``Metric`` s (exact under DDP). Feature-network weights are local files registered in
:mod:`mmgt.metrics.weights`; nothing is downloaded. Metrics are grouped in suites built from ``conf/metrics``
(:func:`build_suite`): ``MetricSuite`` for videos (the LightningModules and ``python -m mmgt.evaluate``),
``GestureSuite`` for poses; each member declares its inputs and logged names (:class:`SuiteMetric`).
"""

from mmgt.metrics.base import Builtin, Suite, SuiteMetric, build_suite
from mmgt.metrics.fid import FrechetInceptionDistance, build_fid_inception
from mmgt.metrics.frechet import FrechetMetric, feature_statistics, frechet_distance, frechet_distance_from_features
from mmgt.metrics.gesture import (
    BeatAlignment,
    FrechetGestureDistance,
    GestureDiversity,
    GestureMetrics,
    GestureSuite,
    KeypointL2,
)
from mmgt.metrics.i3d import PROTOCOLS, FrechetVideoDistance, FVDProtocol, InceptionI3d, build_i3d
from mmgt.metrics.lse import LipSyncError
from mmgt.metrics.s3fd import S3FD, S3FDNet, build_s3fd
from mmgt.metrics.suite import MetricSuite, VideoMetrics
from mmgt.metrics.syncnet import SyncNet, SyncScore, build_syncnet, mfcc, sync_scores
from mmgt.metrics.video import LPIPS, PSNR, SSIM, build_lpips
from mmgt.metrics.weights import REGISTRY, ChecksumMismatchError, MissingMetricWeightsError, WeightSpec

__all__ = [
    "LPIPS", "PROTOCOLS", "PSNR", "REGISTRY", "SSIM", "BeatAlignment", "Builtin", "ChecksumMismatchError",
    "FVDProtocol",
    "FrechetGestureDistance", "FrechetInceptionDistance", "FrechetMetric", "FrechetVideoDistance", "GestureDiversity",
    "GestureMetrics", "GestureSuite", "InceptionI3d", "KeypointL2", "LipSyncError", "MetricSuite",
    "MissingMetricWeightsError", "S3FD", "S3FDNet", "Suite", "SuiteMetric", "SyncNet", "SyncScore", "VideoMetrics",
    "WeightSpec", "build_fid_inception", "build_i3d", "build_lpips", "build_s3fd", "build_suite", "build_syncnet",
    "feature_statistics", "frechet_distance", "frechet_distance_from_features", "mfcc", "sync_scores",
]
