"""LSE-C / LSE-D: SyncNet confidence and distance on face tracks of the *generated* video, the standard pipeline.

This is joonson/syncnet_python's ``run_pipeline.py`` + ``run_syncnet.py`` as Wav2Lip's LSE scripts run them (and the
papers after Wav2Lip report as LSE-C / LSE-D), on the frames in memory:

1. **Detection** (:mod:`mmgt.metrics.s3fd`): S3FD on every frame (RGB, 8-bit values), at ``facedet_scale`` 0.25,
   detections above ``conf_threshold`` 0.9.
2. **Tracking** (:func:`track_faces`, the published ``track_shot``): greedy; a track starts at the first unused
   face (frames in order, faces by decreasing score) and takes, frame by frame, the first unused face whose IoU
   with the track's last face is > ``iou_threshold`` 0.5, while the frame gap to that face is ≤ ``num_failed_det``
   25; repeated until no face is left. A track is kept when it has **more than** ``min_track`` (100) detections and
   the mean width or mean height of its boxes (linearly interpolated over the missed frames) is **more than**
   ``min_face_size`` (100) px of the input frames. The whole clip is one shot (the published script also cuts at
   scene changes, which a generated clip has none of), scored only when it has ≥ ``min_track`` frames.
3. **Crop** (:func:`smooth_track`, :func:`crop_track`, the published ``crop_video``): box centre x, y and half-size
   s = max(w, h)/2 median-filtered over 13 frames (``scipy.signal.medfilt``, zero-padded ends, as published); frame
   padded with grey 110 by ``int(s·(1+2·crop_scale))``, the crop rows ``[y−s, y+s·(1+2·cs))`` and columns
   ``[x−s·(1+cs), x+s·(1+cs))`` (padded coordinates truncated to integers; ``crop_scale`` 0.4), resized to 224²
   (bilinear without antialiasing, rounded to 8 bit: ``cv2.resize``), BGR.
4. **SyncNet** (:mod:`mmgt.metrics.syncnet`): the track's crops with the audio of the track's frames
   (``[first, last + 1)`` · 640 samples), ``SyncNetInstance.evaluate``: offsets ±``vshift`` 15; LSE-D = the minimum
   over offsets of the mean window distance, LSE-C = median − minimum.
5. **Averaging**: plainly over all scored tracks of the set (a clip with two qualifying faces contributes two).

Logged as ``lse_c``, ``lse_d`` and ``lse_num_tracks`` with published SyncNet and S3FD weight files (random-init
nets: ``_randinit``; a detector passed in code: ``_customdet``); a setting other than the published one shows in the
name (``lse_t50_*`` for ``min_track`` 50, ``_f<px>`` face size, ``_v<k>`` vshift, ``_s<x>`` detector scale,
``_cs<x>`` crop scale, ``_ct<x>`` detector threshold, ``_iou<x>``, ``_g<n>`` allowed gap, ``_k<n>`` smoothing). When
no track of the set qualifies (clips of ≤ ``min_track`` frames, no or small faces) nothing is logged: the protocol
was not met. Clips shorter than ``min_track + 1`` frames cannot hold a track and skip detection altogether.

What differs from running the published scripts on a video file: no re-encoding (the scripts read the video back as
JPEG frames and write the crops as XVID before SyncNet sees them), no audio resampling (the audio is taken as
16 kHz aligned with 25 fps frames), and the cv2 bilinear resizes agree to ±1 grey level (cv2 uses fixed-point
weights). At the same settings the numbers are comparable with published LSE-C/D (Wav2Lip and the syncnet_python
evaluations of talking-head / co-speech video papers), subject to those encoding differences.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

import mmgt.metrics.weights as W
from mmgt.data.video_io import HOP, SAMPLE_RATE
from mmgt.metrics.base import SuiteMetric
from mmgt.metrics.s3fd import S3FD, build_s3fd
from mmgt.metrics.syncnet import CROP, SyncNet, build_syncnet, min_sync_frames, sync_scores, window_embeddings
from mmgt.metrics.video import ensure_device, to_unit

#: the published run_pipeline / run_syncnet settings; any other value renames the logged metric
PUBLISHED: dict[str, float] = {"min_track": 100, "min_face_size": 100, "vshift": 15, "facedet_scale": 0.25,
                               "crop_scale": 0.4, "conf_threshold": 0.9, "iou_threshold": 0.5, "num_failed_det": 25,
                               "smooth_kernel": 13}
_TAGS = {"min_track": "t", "min_face_size": "f", "vshift": "v", "facedet_scale": "s", "crop_scale": "cs",
         "conf_threshold": "ct", "iou_threshold": "iou", "num_failed_det": "g", "smooth_kernel": "k"}
PAD_VALUE = 110.0


@dataclass
class FaceTrack:
    """A face track: frame indices (consecutive) and x0, y0, x1, y1 boxes (interpolated over missed frames)."""

    frames: np.ndarray
    boxes: np.ndarray


@dataclass
class TrackingResult:
    tracks: list[FaceTrack] = field(default_factory=list)
    too_short: int = 0   # tracks with ≤ min_track detections
    too_small: int = 0   # long enough, faces ≤ min_face_size


def track_faces(detections: Sequence[np.ndarray], *, iou_threshold: float = 0.5, num_failed_det: int = 25,
                min_track: int = 100, min_face_size: float = 100.0) -> TrackingResult:
    """Greedy IoU tracks over per-frame detections ``(n_t, ≥4)`` (x0, y0, x1, y1[, score], faces in the order to try:
    decreasing score), as the published ``track_shot``.

    A track takes at most one face per frame: the published loop may compare a later face of the same frame with
    the face it just took, but two detections of one frame overlap by IoU ≤ 0.1 after the detector's NMS, so that
    comparison never passes the 0.5 threshold.
    """
    from scipy.interpolate import interp1d
    from torchvision.ops import box_iou

    dets = [np.asarray(d, dtype=np.float64) for d in detections]
    dets = [d.reshape(0, 4) if d.size == 0 else d[:, :4] for d in dets]
    unused = [np.ones(len(d), dtype=bool) for d in dets]
    result = TrackingResult()
    while True:
        frames: list[int] = []
        boxes: list[np.ndarray] = []
        for t, (d, free) in enumerate(zip(dets, unused, strict=True)):
            cand = np.flatnonzero(free)
            if not len(cand):
                continue
            if not frames:
                j = int(cand[0])
            elif t - frames[-1] <= num_failed_det:
                iou = box_iou(torch.from_numpy(d[cand]), torch.from_numpy(boxes[-1][None]))[:, 0].numpy()
                hits = cand[iou > iou_threshold]
                if not len(hits):
                    continue
                j = int(hits[0])
            else:
                break
            frames.append(t)
            boxes.append(d[j])
            free[j] = False
        if not frames:
            return result
        if len(frames) <= min_track:
            result.too_short += 1
            continue
        f, b = np.asarray(frames), np.stack(boxes)
        span = np.arange(f[0], f[-1] + 1)
        interp = np.stack([interp1d(f, b[:, k])(span) for k in range(4)], axis=1)
        if max(np.mean(interp[:, 2] - interp[:, 0]), np.mean(interp[:, 3] - interp[:, 1])) > min_face_size:
            result.tracks.append(FaceTrack(span, interp))
        else:
            result.too_small += 1


def smooth_track(boxes: np.ndarray, kernel: int = 13) -> np.ndarray:
    """``(n, 3)`` crop centre x, y and half-size s of ``(n, 4)`` boxes, each median-filtered over ``kernel`` frames
    (``scipy.signal.medfilt``: zero-padded at the ends, as published)."""
    from scipy.signal import medfilt

    b = np.asarray(boxes, dtype=np.float64)
    s = np.maximum(b[:, 3] - b[:, 1], b[:, 2] - b[:, 0]) / 2
    x, y = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
    with warnings.catch_warnings():  # a track shorter than the kernel (non-standard min_track): zero padding intended
        warnings.filterwarnings("ignore", message="kernel_size exceeds volume extent")
        return np.stack([medfilt(v, kernel_size=kernel) for v in (x, y, s)], axis=1)


def crop_box(x: float, y: float, s: float, crop_scale: float = 0.4) -> tuple[int, int, int, int]:
    """Rows ``[r0, r1)`` and columns ``[c0, c1)`` of the published crop in *unpadded* frame coordinates (the padded
    frame's integer-truncated slice, shifted back by the padding)."""
    pad = int(s * (1 + 2 * crop_scale))
    my, mx = y + pad, x + pad
    r0, r1 = int(my - s), int(my + s * (1 + 2 * crop_scale))
    c0, c1 = int(mx - s * (1 + crop_scale)), int(mx + s * (1 + crop_scale))
    return r0 - pad, r1 - pad, c0 - pad, c1 - pad


def crop_track(frames: Tensor, centres: np.ndarray, crop_scale: float = 0.4) -> Tensor:
    """``(n, 3, 224, 224)`` crops of ``(n, 3, H, W)`` 8-bit-valued frames at smoothed ``(n, 3)`` x, y, s: the frame
    padded with grey 110, the :func:`crop_box` slice, resized to 224² as ``cv2.resize`` (bilinear, no antialiasing,
    rounded to 8 bit)."""
    n, c, h, w = frames.shape
    out = torch.empty(n, c, CROP, CROP, device=frames.device)
    for i, (x, y, s) in enumerate(np.asarray(centres, dtype=np.float64)):
        pad = int(s * (1 + 2 * crop_scale))
        r0, r1, c0, c1 = crop_box(x, y, s, crop_scale)
        # numpy slicing of the padded frame clips the slice to it
        r0, r1 = max(r0, -pad), min(r1, h + pad)
        c0, c1 = max(c0, -pad), min(c1, w + pad)
        if r1 <= r0 or c1 <= c0:
            raise ValueError(f"empty face crop at track frame {i} (centre {x:.1f}, {y:.1f}, half-size {s:.1f})")
        face = torch.full((c, r1 - r0, c1 - c0), PAD_VALUE, device=frames.device)
        ir0, ir1, ic0, ic1 = max(r0, 0), min(r1, h), max(c0, 0), min(c1, w)
        if ir1 > ir0 and ic1 > ic0:
            face[:, ir0 - r0: ir1 - r0, ic0 - c0: ic1 - c0] = frames[i, :, ir0:ir1, ic0:ic1].float()
        out[i] = F.interpolate(face[None], size=(CROP, CROP), mode="bilinear", align_corners=False,
                               antialias=False)[0]
    return torch.floor(out + 0.5).clamp_(0, 255)


class LipSyncError(SuiteMetric):
    """LSE-C / LSE-D of generated videos with their audio, the standard pipeline (module docstring), averaged over
    face tracks (DDP: float64 sums).

    ``update(video (B,T,C,H,W), audio (B, S) 16 kHz)``. Settings: the published ``run_pipeline`` / ``run_syncnet``
    values by default (:data:`PUBLISHED`); others rename. ``detector``: a callable ``(N,3,H,W) RGB 0–255 ->`` list
    of ``(n, 5)`` detections standing in for S3FD (tests; renames to ``_customdet``).
    """

    full_state_update = False
    is_differentiable = False
    name = "lse"
    inputs = ("generated", "audio")
    settings = ("input_range", "allow_random_weights", "verify_checksums", "checksums")
    weights_key = "syncnet"

    def __init__(self, syncnet_path: str | Path | None = None, *, s3fd: str | Path | None = None,
                 allow_random_weights: bool = False, verify_checksums: bool = True,
                 checksums: Mapping[str, str] | None = None, input_range: tuple[float, float] = (-1.0, 1.0),
                 min_track: int = 100, min_face_size: float = 100.0, vshift: int = 15, facedet_scale: float = 0.25,
                 crop_scale: float = 0.4, conf_threshold: float = 0.9, iou_threshold: float = 0.5,
                 num_failed_det: int = 25, smooth_kernel: int = 13, frames_per_batch: int = 32,
                 windows_per_batch: int = 32, detector: Callable[[Tensor], list[np.ndarray]] | None = None,
                 **kwargs: Any) -> None:
        self.opts = {"min_track": int(min_track), "min_face_size": float(min_face_size), "vshift": int(vshift),
                     "facedet_scale": float(facedet_scale), "crop_scale": float(crop_scale),
                     "conf_threshold": float(conf_threshold), "iou_threshold": float(iou_threshold),
                     "num_failed_det": int(num_failed_det), "smooth_kernel": int(smooth_kernel)}
        if self.opts["smooth_kernel"] < 1 or self.opts["smooth_kernel"] % 2 == 0:
            raise ValueError(f"metrics.lse.smooth_kernel={smooth_kernel}: the median filter needs an odd size")
        if self.opts["min_track"] + 1 < min_sync_frames(self.opts["vshift"]):
            raise ValueError(f"metrics.lse: tracks of {self.opts['min_track'] + 1} frames (min_track + 1) are too "
                             f"short for the offset search over ±{vshift} (needs {min_sync_frames(vshift)} frames "
                             "so that every offset compares at least half of its windows against real audio): "
                             "raise min_track or lower vshift")
        super().__init__(**kwargs)
        checksums = dict(checksums or {})
        net, sync_rand = build_syncnet(syncnet_path, allow_random_weights=allow_random_weights,
                                       verify_checksums=verify_checksums, checksum=checksums.get("syncnet"))
        self.__dict__["_net"] = net  # out of the module tree: not in checkpoints, not seen by DDP
        sync_file = None if sync_rand else W.resolve("syncnet", syncnet_path, verify_checksum=False)
        self.files = {"syncnet": W.file_record("syncnet", sync_file, verified=verify_checksums,
                                               expected_sha256=checksums.get("syncnet"))}
        det_rand = False
        self.custom_detector = detector is not None
        if detector is None:
            det_net, det_rand = build_s3fd(s3fd, allow_random_weights=allow_random_weights,
                                           verify_checksums=verify_checksums, checksum=checksums.get("s3fd"))
            detector = S3FD(det_net, scale=facedet_scale, conf_threshold=conf_threshold,
                            frames_per_batch=frames_per_batch).detect
            det_file = None if det_rand else W.resolve("s3fd", s3fd, verify_checksum=False)
            self.files["s3fd"] = W.file_record("s3fd", det_file, verified=verify_checksums,
                                               expected_sha256=checksums.get("s3fd"))
        else:
            self.files["s3fd"] = {"weights": None, "weights_sha256": None, "weights_status": "custom detector"}
        self.__dict__["_detector"] = detector
        self.randinit = sync_rand or det_rand
        self.name_suffix = ("_customdet" if self.custom_detector else "") + ("_randinit" if self.randinit else "")
        self.input_range = tuple(input_range)
        self.windows_per_batch = int(windows_per_batch)
        for n in ("conf_sum", "dist_sum", "offset_sum"):
            self.add_state(n, torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        for n in ("tracks", "clips", "short_clips", "clips_without_track", "short_tracks", "small_tracks",
                  "short_audio_tracks", "detections", "frames"):
            self.add_state(n, torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.last_counts: dict[str, int] = {}
        self.input_size: tuple[int, int] | None = None
        self.last_per_clip: list[tuple[float, float]] = []
        self._warned_short = False

    # ------------------------------------------------------------------------------------------- one clip
    def _frames(self, video: Tensor) -> Tensor:
        """``(T, 3, H, W)`` in the input convention -> 8-bit RGB values (what the published scripts read)."""
        if video.dtype == torch.uint8:
            return video
        return torch.floor(to_unit(video, self.input_range) * 255.0 + 0.5).to(torch.uint8)

    @torch.no_grad()
    def clip_scores(self, video: Tensor, audio: Tensor | np.ndarray) -> tuple[list[tuple[int, float, float]],
                                                                               dict[str, int]]:
        """``[(offset, lse_c, lse_d)]`` per qualifying track of one clip ``(T, C, H, W)`` and its counts."""
        frames = self._frames(video)
        audio = audio.detach().cpu().numpy() if isinstance(audio, Tensor) else np.asarray(audio)
        dets = self.__dict__["_detector"](frames)
        if len(dets) != frames.shape[0]:
            raise ValueError(f"lse: the detector returned {len(dets)} frame results for {frames.shape[0]} frames")
        o = self.opts
        res = track_faces(dets, iou_threshold=o["iou_threshold"], num_failed_det=o["num_failed_det"],
                          min_track=o["min_track"], min_face_size=o["min_face_size"])
        counts = {"detections": sum(len(d) for d in dets), "short_tracks": res.too_short,
                  "small_tracks": res.too_small, "short_audio_tracks": 0}
        net: SyncNet = ensure_device(self.__dict__["_net"], frames.device)
        scores = []
        bgr = frames.flip(1)  # RGB -> BGR, as cv2 reads the frames SyncNet sees
        for tr in res.tracks:
            seg = audio[tr.frames[0] * HOP: (tr.frames[-1] + 1) * HOP]
            if min(len(tr.frames), len(seg) // HOP) < min_sync_frames(o["vshift"]):
                counts["short_audio_tracks"] += 1
                continue
            crops = crop_track(bgr[torch.from_numpy(tr.frames).to(frames.device)],
                               smooth_track(tr.boxes, o["smooth_kernel"]), o["crop_scale"])
            v_emb, a_emb = window_embeddings(net, crops, seg, self.windows_per_batch)
            scores.append(sync_scores(v_emb, a_emb, o["vshift"]))
        return scores, counts

    def update(self, video: Tensor, audio: Tensor | np.ndarray) -> None:
        if video.ndim != 5 or video.shape[2] != 3:
            raise ValueError(f"lse: video must be (B,T,3,H,W), got {tuple(video.shape)}")
        self.input_size = (int(video.shape[-2]), int(video.shape[-1]))
        self.last_per_clip = []
        for b in range(video.shape[0]):
            self.clips += 1
            self.frames += int(video.shape[1])
            if video.shape[1] <= self.opts["min_track"]:  # a track needs more than min_track detections
                self.short_clips += 1
                if not self._warned_short:
                    warnings.warn(f"lse: clips of {video.shape[1]} frames cannot hold a face track of more than "
                                  f"{self.opts['min_track']} frames (min_track); not scored", stacklevel=2)
                    self._warned_short = True
                continue
            scores, counts = self.clip_scores(video[b], audio[b])
            for k, v in counts.items():
                setattr(self, k, getattr(self, k) + v)
            if not scores:
                self.clips_without_track += 1
                continue
            for offset, conf, dist in scores:
                self.conf_sum += conf
                self.dist_sum += dist
                self.offset_sum += offset
                self.tracks += 1
            self.last_per_clip.append((float(np.mean([s[1] for s in scores])), float(np.mean([s[2] for s in scores]))))

    def _counts(self) -> dict[str, int]:
        return {k: int(getattr(self, k)) for k in (
            "tracks", "clips", "short_clips", "clips_without_track", "short_tracks", "small_tracks",
            "short_audio_tracks", "detections", "frames")}

    def compute(self) -> dict[str, Tensor]:
        self.last_counts = self._counts()
        if int(self.tracks) == 0:
            nan = torch.tensor(math.nan, dtype=torch.float64)
            return {"c": nan, "d": nan, "offset": nan, "num_tracks": torch.tensor(0.0, dtype=torch.float64)}
        n = self.tracks.double()
        return {"c": self.conf_sum / n, "d": self.dist_sum / n, "offset": self.offset_sum / n, "num_tracks": n}

    # ------------------------------------------------------------------------------------------- names, card
    def _prefix(self) -> str:
        tags = "".join(f"_{_TAGS[k]}{v:g}" for k, v in self.opts.items() if v != PUBLISHED[k])
        return self.name + tags

    def names(self) -> list[str]:
        p = self._prefix()
        return [f"{p}_c{self.name_suffix}", f"{p}_d{self.name_suffix}", f"{p}_num_tracks"]

    def results(self) -> dict[str, float]:
        v = self.compute()  # sets last_counts (synchronised)
        if not self.last_counts.get("tracks"):
            return {}
        return dict(zip(self.names(), (float(v[k]) for k in ("c", "d", "num_tracks")), strict=True))

    def per_clip(self) -> dict[str, list[float]]:
        rows = self.last_per_clip  # (mean lse_c, mean lse_d) over each scored clip's tracks
        if not rows:
            return {}
        c, d = self.names()[:2]
        return {c: [r[0] for r in rows], d: [r[1] for r in rows]}

    def protocol(self) -> dict[str, Any]:
        return {**super().protocol(),
                "variant": "syncnet_python run_pipeline + run_syncnet (Wav2Lip LSE-C/D): S3FD on the generated "
                           "video, IoU tracks, median-smoothed boxes, padded 224² crops, SyncNet per track",
                "settings": dict(self.opts), "published_settings": dict(PUBLISHED),
                "standard_settings": all(v == PUBLISHED[k] for k, v in self.opts.items()),
                "detector": "custom (code)" if self.custom_detector else "S3FD",
                "fps": 25, "audio_rate": SAMPLE_RATE,
                "input_resolution": list(self.input_size) if self.input_size else None,
                "mean_offset": float(self.offset_sum / self.tracks) if int(self.tracks) else None,
                "files": {k: dict(v) for k, v in self.files.items()},
                "comparable_with": "published LSE-C/LSE-D (Wav2Lip, syncnet_python) at the same settings; differences: "
                                   "no JPEG/XVID re-encoding, no scene-cut detection (one clip = one shot)",
                **self._counts()}
