"""The video metric suite the LightningModules and ``mmgt.evaluate`` call: one ``update``, one ``compute``.

Names say the protocol: ``psnr, ssim, lpips, fvd_<protocol>, fvd_<protocol>_num_clips`` (``fvd_videogpt`` by
default, :mod:`mmgt.metrics.i3d`), the keypoint-crop lip-sync monitor ``kpsync_conf, kpsync_dist, kpsync_offset,
kpsync_num_clips`` (not LSE-C/D: :mod:`mmgt.metrics.syncnet`) (+ ``fid, fid_num_frames`` when FID is enabled, and
``lse_c, lse_d, lse_num_tracks`` — the standard S3FD-track LSE-C/D of :mod:`mmgt.metrics.lse` — when enabled); a
metric whose feature network is random-init gets ``_randinit`` (``lpips_randinit``, ``fvd_videogpt_randinit`` ...),
non-standard settings their own suffix (``_r<size>``, ``_<n>f``, ``_eps..``). A metric whose protocol no clip met
(videos shorter than FVD's clips, or than the sync monitor's offset search) logs nothing. Each metric declares its
names and inputs (:class:`~mmgt.metrics.base.SuiteMetric`); every member has sum/cat states, so ``compute`` is
exact under DDP; feature networks live outside the module tree (no checkpoint bloat, invisible to DDP).
:meth:`~mmgt.metrics.base.Suite.protocol_card` says what each number is. More metrics: a config entry with
``_target_`` (see ``conf/metrics``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
from torch import Tensor

from mmgt.metrics.base import Builtin, Suite
from mmgt.metrics.fid import FrechetInceptionDistance
from mmgt.metrics.i3d import FrechetVideoDistance
from mmgt.metrics.lse import LipSyncError
from mmgt.metrics.syncnet import SyncScore
from mmgt.metrics.video import LPIPS, PSNR, SSIM


class MetricSuite(Suite):
    """PSNR, SSIM, LPIPS, FVD, Sync-C/D (and optionally FID) over batches of generated vs reference videos
    ``(B,T,C,H,W)``, plus any configured metric.

    Args:
        weights: ``{"i3d": path, "syncnet": path, "alexnet": path, "inception": path}`` (config
            ``metrics.weights``; ``inception`` only for FID).
        allow_random_weights: random-init feature nets when a file is missing (tests/quickstart); names get
            ``_randinit``. Otherwise a missing file raises ``MissingMetricWeightsError`` at construction.
        verify_checksums: check files against the published checksums of :mod:`mmgt.metrics.weights`.
        checksums: ``{weights key: sha256}`` of your own files (checked instead of the published checksums and
            recorded as ``user-declared`` in the protocol card).
        input_range: value range of float videos (uint8 videos are always [0, 255]).
        entries: ``psnr, ssim, lpips, fvd, sync`` (on unless set to false), ``fid`` (off unless asked for: an
            Inception pass per frame is the suite's most expensive part), ``lse`` (off unless asked for; on in
            ``conf/metrics/default.yaml``; needs ``s3fd=<sfd_face.pth>``): ``True``/``False`` or kwargs of the metric
            class (``enabled: false`` off); any other key: a metric named by ``_target_``
            (:class:`~mmgt.metrics.base.Suite`).
    """

    arguments: ClassVar[tuple[str, ...]] = ("audio", "keypoints", "boxes")
    builtins: ClassVar[Mapping[str, Builtin]] = {
        "psnr": Builtin(PSNR), "ssim": Builtin(SSIM), "lpips": Builtin(LPIPS), "fvd": Builtin(FrechetVideoDistance),
        "sync": Builtin(SyncScore), "fid": Builtin(FrechetInceptionDistance, enabled=False),
        "lse": Builtin(LipSyncError, enabled=False),
    }

    def __init__(self, weights: Mapping[str, Any] | None = None, *, allow_random_weights: bool = False,
                 verify_checksums: bool = True, input_range: tuple[float, float] | list[float] = (-1.0, 1.0),
                 checksums: Mapping[str, str] | None = None, **entries: Any) -> None:
        super().__init__(entries, {"allow_random_weights": allow_random_weights, "verify_checksums": verify_checksums,
                                   "input_range": tuple(input_range), "checksums": dict(checksums or {})}, weights)

    def update(self, generated: Tensor, reference: Tensor | None = None,  # type: ignore[override]
               audio: Tensor | np.ndarray | None = None, keypoints: Tensor | np.ndarray | None = None,
               boxes: Tensor | np.ndarray | None = None) -> None:
        """Add a batch. ``audio`` (B, S) 16 kHz aligned with the frames (25 fps); ``keypoints`` (B,T,134,3) in
        pixels of these frames (the driving pose) or face ``boxes`` (B,T,4) locate the mouth for the keypoint-crop
        sync monitor."""
        super().update(generated, reference, audio=audio, keypoints=keypoints, boxes=boxes)


VideoMetrics = MetricSuite
