"""Evaluation metrics (DESIGN §6): per-frame PSNR/SSIM/LPIPS, FVD (I3D), Sync-C/D (SyncNet), FID on frames
(optional), Fréchet distance.

All metrics are torchmetrics ``Metric`` s (exact under DDP). Feature-network weights are local files registered in
:mod:`mmgt.metrics.weights`; nothing is downloaded. ``MetricSuite`` is what the LightningModules and
``python -m mmgt.evaluate`` use.
"""

from mmgt.metrics.fid import FrechetInceptionDistance, build_fid_inception
from mmgt.metrics.frechet import FrechetMetric, feature_statistics, frechet_distance, frechet_distance_from_features
from mmgt.metrics.i3d import FrechetVideoDistance, InceptionI3d, build_i3d
from mmgt.metrics.suite import MetricSuite, VideoMetrics
from mmgt.metrics.syncnet import SyncNet, SyncScore, build_syncnet, mfcc, sync_scores
from mmgt.metrics.video import LPIPS, PSNR, SSIM, build_lpips
from mmgt.metrics.weights import REGISTRY, ChecksumMismatchError, MissingMetricWeightsError, WeightSpec

__all__ = [
    "LPIPS", "PSNR", "REGISTRY", "SSIM", "ChecksumMismatchError", "FrechetInceptionDistance", "FrechetMetric",
    "FrechetVideoDistance", "InceptionI3d", "MetricSuite", "MissingMetricWeightsError", "SyncNet", "SyncScore",
    "VideoMetrics", "WeightSpec", "build_fid_inception", "build_i3d", "build_lpips", "build_syncnet",
    "feature_statistics", "frechet_distance", "frechet_distance_from_features", "mfcc", "sync_scores",
]

try:  # stage-1 gesture metrics (FGD, diversity, beat alignment, keypoint errors) live in gesture.py
    from mmgt.metrics import gesture as _gesture

    _public = getattr(_gesture, "__all__", None) or [
        n for n, v in vars(_gesture).items()
        if isinstance(v, type) and v.__module__ == _gesture.__name__ and not n.startswith("_")]
    for _name in _public:
        globals()[_name] = getattr(_gesture, _name)
        __all__.append(_name)
except ModuleNotFoundError as _e:  # not written yet; any other import error is a real bug and propagates
    if _e.name != "mmgt.metrics.gesture":
        raise
