"""SyncNet (Chung & Zisserman 2016) and the keypoint-crop lip-sync monitor (``kpsync_*``).

The scoring follows joonson/syncnet_python ``SyncNetInstance.evaluate`` as used by Wav2Lip's LSE scripts, but the
mouth crop does **not** come from the standard pipeline (S3FD face detection on the *generated* video, IOU tracks
of ≥ 100 frames with faces ≥ 100 px), so the numbers are not LSE-C/LSE-D and are logged under their own name:
``kpsync_conf`` (the published "confidence", median − min), ``kpsync_dist`` (the minimum mean distance),
``kpsync_offset``, with ``kpsync_num_clips`` beside them. A validation monitor, comparable only with itself.

* 25 fps video, 16 kHz audio. Audio -> MFCC as ``python_speech_features.mfcc`` with its defaults (13 coefficients,
  25 ms rectangular windows, 10 ms hop = 100 Hz, 26 mel filters, nfft 512, pre-emphasis 0.97, lifter 22, log
  energy as c0) on int16-scaled samples — reimplemented in numpy below (that package is not a dependency).
* Crops: syncnet_python's square around the face box (``crop_scale`` 0.4, extra room below the face for the
  mouth, grey-110 padding) resized to 224². Here the box comes from the 68 face keypoints of ``mmgt.pose.layout``
  of the *driving pose* (their bounding box; a lips-based estimate when the face points are not visible), or from a
  given face box, smoothed over time with a 13-frame median filter (edge-replicated). Frames go in as raw 0–255
  BGR floats, like the cv2 frames of the original.
* ``min_length = min(T, ⌊len(audio)/640⌋)``; windows ``i = 0 .. min_length−6`` (the original's ``lastframe =
  min_length − 5``): 5 frames vs MFCC columns ``4i .. 4i+20``; 1024-d embeddings from both streams.
* Per offset ``k ∈ [−vshift, vshift]`` the mean over windows of the Euclidean distance between video embedding
  ``i`` and audio embedding ``i+k`` (zero-padded): dist = min over offsets, conf = median − min, offset = vshift −
  argmin.
* **Minimum length**: a clip is scored only when every offset compares at least half of its windows against real
  audio: ``min_length − 5 ≥ 2·vshift`` windows, i.e. ``min_frames = 2·vshift + 5`` frames (35 at the published
  vshift 15, 1.4 s; 11 at vshift 3). Shorter clips are skipped (counted in the protocol card), never padded; when
  no clip qualifies nothing is logged. (On 12-frame clips at vshift 15, 18 of the 31 offsets would compare only
  against padding.) A vshift other than 15 renames to ``kpsync_v<k>_*``.
* Clips are averaged plainly.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

import mmgt.metrics.weights as W
from mmgt.data.video_io import HOP, SAMPLE_RATE
from mmgt.metrics.base import SuiteMetric
from mmgt.metrics.i3d import he_init
from mmgt.metrics.video import ensure_device, to_unit

WINDOW = 5  # video frames per SyncNet window (0.2 s)
CROP = 224


class SyncNet(nn.Module):
    """The SyncNet ``S`` network with the parameter names of the published ``syncnet_v2.model``."""

    def __init__(self, embed_dim: int = 1024):
        super().__init__()
        bn, relu = nn.BatchNorm2d, nn.ReLU
        self.netcnnaud = nn.Sequential(
            nn.Conv2d(1, 64, 3, 1, 1), bn(64), relu(inplace=True), nn.MaxPool2d(1, 1),
            nn.Conv2d(64, 192, 3, 1, 1), bn(192), relu(inplace=True), nn.MaxPool2d(3, (1, 2)),
            nn.Conv2d(192, 384, 3, padding=1), bn(384), relu(inplace=True),
            nn.Conv2d(384, 256, 3, padding=1), bn(256), relu(inplace=True),
            nn.Conv2d(256, 256, 3, padding=1), bn(256), relu(inplace=True), nn.MaxPool2d(3, 2),
            nn.Conv2d(256, 512, (5, 4), padding=0), bn(512), relu(),
        )
        self.netfcaud = nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), relu(), nn.Linear(512, embed_dim))
        self.netfclip = nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), relu(), nn.Linear(512, embed_dim))
        bn3 = nn.BatchNorm3d
        self.netcnnlip = nn.Sequential(
            nn.Conv3d(3, 96, (5, 7, 7), (1, 2, 2), 0), bn3(96), relu(inplace=True),
            nn.MaxPool3d((1, 3, 3), (1, 2, 2)),
            nn.Conv3d(96, 256, (1, 5, 5), (1, 2, 2), (0, 1, 1)), bn3(256), relu(inplace=True),
            nn.MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1)),
            nn.Conv3d(256, 256, (1, 3, 3), padding=(0, 1, 1)), bn3(256), relu(inplace=True),
            nn.Conv3d(256, 256, (1, 3, 3), padding=(0, 1, 1)), bn3(256), relu(inplace=True),
            nn.Conv3d(256, 256, (1, 3, 3), padding=(0, 1, 1)), bn3(256), relu(inplace=True),
            nn.MaxPool3d((1, 3, 3), (1, 2, 2)),
            nn.Conv3d(256, 512, (1, 6, 6), padding=0), bn3(512), relu(inplace=True),
        )

    def forward_aud(self, x: Tensor) -> Tensor:
        """``(N, 1, 13, 20)`` MFCC windows -> ``(N, embed_dim)``."""
        return self.netfcaud(self.netcnnaud(x).flatten(1))

    def forward_lip(self, x: Tensor) -> Tensor:
        """``(N, 3, 5, 224, 224)`` BGR 0–255 crops -> ``(N, embed_dim)``."""
        return self.netfclip(self.netcnnlip(x).flatten(1))

    def forward_lip_sliding(self, clip: Tensor) -> Tensor:
        """Embeddings of every 5-frame window of one clip ``(3, T, 224, 224)`` -> ``(T-4, embed_dim)``.

        Only the first conv of ``netcnnlip`` spans time (kernel 5, no temporal padding); every later layer has
        temporal kernel 1. Running the trunk once over the clip therefore gives exactly the per-window outputs
        (the same FLOPs) in one batched call, without stacked copies of overlapping windows.
        """
        feats = self.netcnnlip(clip[None].contiguous(memory_format=torch.channels_last_3d))  # (1, 512, T-4, 1, 1)
        return self.netfclip(feats[0, :, :, 0, 0].transpose(0, 1))


def build_syncnet(path: str | Path | None, *, allow_random_weights: bool = False,
                  verify_checksums: bool = True, checksum: str | None = None) -> tuple[SyncNet, bool]:
    """SyncNet in eval mode from ``metrics.weights.syncnet``; ``(net, randinit)``."""
    if allow_random_weights and not W.available("syncnet", path):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return _fast(he_init(SyncNet())), True
    p = W.resolve("syncnet", path, verify_checksum=verify_checksums, expected_sha256=checksum)
    net = SyncNet()
    sd = torch.load(p, map_location="cpu", weights_only=True)
    sd = {k.removeprefix("__S__."): v for k, v in sd.get("state_dict", sd).items()}
    missing, unexpected = net.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise KeyError(f"{p} is not a SyncNet state dict: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return _fast(net), False


def _fast(net: SyncNet) -> SyncNet:
    """Eval mode, no grads, BatchNorm folded into the preceding conv/linear, channels-last 3-D lip trunk (~1.3x
    faster on CPU); the same function up to float32 round-off."""
    net = net.eval().requires_grad_(False)
    for seq in (net.netcnnaud, net.netfcaud, net.netfclip, net.netcnnlip):
        fold_batchnorm_(seq)
    net.netcnnlip.to(memory_format=torch.channels_last_3d)
    return net


_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@torch.no_grad()
def fold_batchnorm_(seq: nn.Sequential) -> nn.Sequential:
    """Fold each eval BatchNorm that directly follows a conv/linear into it (torch's ``fuse_*_bn_eval``), leaving
    ``nn.Identity`` in its place (inference only)."""
    for i in range(1, len(seq)):
        layer, bn = seq[i - 1], seq[i]
        if not isinstance(bn, _BN):
            continue
        if isinstance(layer, nn.Linear):
            seq[i - 1] = fuse_linear_bn_eval(layer, bn)
        elif isinstance(layer, nn.Conv1d | nn.Conv2d | nn.Conv3d):
            seq[i - 1] = fuse_conv_bn_eval(layer, bn)
        else:
            continue
        seq[i] = nn.Identity()
    return seq


# ---------------------------------------------------------------- audio
def _mel_filterbank(nfilt: int, nfft: int, sr: int) -> np.ndarray:
    hz2mel = lambda hz: 2595 * np.log10(1 + hz / 700.0)  # noqa: E731
    mel2hz = lambda mel: 700 * (10 ** (mel / 2595.0) - 1)  # noqa: E731
    bins = np.floor((nfft + 1) * mel2hz(np.linspace(hz2mel(0), hz2mel(sr / 2), nfilt + 2)) / sr)
    fb = np.zeros((nfilt, nfft // 2 + 1))
    for j in range(nfilt):
        for i in range(int(bins[j]), int(bins[j + 1])):
            fb[j, i] = (i - bins[j]) / (bins[j + 1] - bins[j])
        for i in range(int(bins[j + 1]), int(bins[j + 2])):
            fb[j, i] = (bins[j + 2] - i) / (bins[j + 2] - bins[j + 1])
    return fb


def mfcc(audio: np.ndarray | Tensor, sample_rate: int = SAMPLE_RATE, numcep: int = 13) -> np.ndarray:
    """``(numcep, n_frames)`` MFCC at 100 Hz, numerically as ``python_speech_features.mfcc(audio, sr)``.

    Float audio is taken as [−1, 1] and scaled to int16 units (the original reads int16 wav samples).
    """
    from scipy.fft import dct

    x = audio.detach().cpu().numpy() if isinstance(audio, Tensor) else np.asarray(audio)
    x = x.astype(np.float64) * (1.0 if np.issubdtype(x.dtype, np.integer) else 32768.0)
    win, step, nfft = int(round(0.025 * sample_rate)), int(round(0.01 * sample_rate)), 512
    x = np.append(x[:1], x[1:] - 0.97 * x[:-1])
    n = 1 if len(x) <= win else 1 + int(math.ceil((len(x) - win) / step))
    x = np.concatenate([x, np.zeros((n - 1) * step + win - len(x))])
    frames = x[np.arange(win)[None, :] + step * np.arange(n)[:, None]]
    pspec = np.abs(np.fft.rfft(frames, nfft)) ** 2 / nfft
    energy = pspec.sum(1)
    energy = np.where(energy == 0, np.finfo(float).eps, energy)
    feat = pspec @ _mel_filterbank(26, nfft, sample_rate).T
    feat = np.log(np.where(feat == 0, np.finfo(float).eps, feat))
    feat = dct(feat, type=2, axis=1, norm="ortho")[:, :numcep]
    feat = feat * (1 + 11.0 * np.sin(np.pi * np.arange(numcep) / 22))
    feat[:, 0] = np.log(energy)
    return feat.T.astype(np.float32)


# ---------------------------------------------------------------- offsets
def offset_distances(video_emb: Tensor, audio_emb: Tensor, vshift: int = 15) -> Tensor:
    """``(n, 2·vshift+1)`` distances between video embedding i and audio embedding i+k−vshift (zero padded),
    exactly ``torch.nn.functional.pairwise_distance`` (eps 1e-6) as in the published ``calc_pdist``."""
    win = 2 * vshift + 1
    padded = F.pad(audio_emb, (0, 0, vshift, vshift))
    windows = padded.unfold(0, win, 1).transpose(1, 2)  # (n, win, D)
    return (video_emb[:, None, :] - windows + 1e-6).norm(dim=-1)


def sync_scores(video_emb: Tensor, audio_emb: Tensor, vshift: int = 15) -> tuple[int, float, float]:
    """``(offset, sync_c, sync_d)`` of one clip from its per-window embeddings."""
    mdist = offset_distances(video_emb.float(), audio_emb.float(), vshift).mean(dim=0)
    minval, minidx = torch.min(mdist, 0)
    return vshift - int(minidx), float(torch.median(mdist) - minval), float(minval)


# ---------------------------------------------------------------- crops
def _fill_and_smooth(values: np.ndarray, kernel: int = 13) -> np.ndarray:
    """Fill NaN frames from the nearest valid frame, then a median filter over time (edges replicated)."""
    from scipy.ndimage import median_filter

    valid = ~np.isnan(values[:, 0])
    idx = np.where(valid)[0]
    nearest = idx[np.abs(np.arange(len(values))[:, None] - idx[None, :]).argmin(1)]
    filled = values[nearest]
    k = min(kernel, len(values) if len(values) % 2 else len(values) - 1)
    return median_filter(filled, size=(max(k, 1), 1), mode="nearest")


def face_track(keypoints: np.ndarray | Tensor, threshold: float = 0.3) -> np.ndarray | None:
    """``(T, 3)`` face centre x, y and half-size s (pixels) from ``(T, 134, 3)`` keypoints, or None if no frame
    shows the face. Face box = bbox of the visible face points; without them, an estimate from the lips."""
    from mmgt.pose.layout import FACE, LIPS

    kp = keypoints.detach().cpu().numpy() if isinstance(keypoints, Tensor) else np.asarray(keypoints)
    track = np.full((kp.shape[0], 3), np.nan)
    for t, frame in enumerate(kp):
        face = frame[list(FACE)]
        face = face[face[:, 2] > threshold]
        if len(face) >= 10:
            (x0, y0), (x1, y1) = face[:, :2].min(0), face[:, :2].max(0)
            track[t] = ((x0 + x1) / 2, (y0 + y1) / 2, max(x1 - x0, y1 - y0) / 2)
            continue
        lips = frame[list(LIPS)]
        lips = lips[lips[:, 2] > threshold]
        if len(lips) >= 4:
            (x0, y0), (x1, y1) = lips[:, :2].min(0), lips[:, :2].max(0)
            s = 1.5 * max(x1 - x0, 1.0)  # face ≈ 3 mouth widths; the mouth sits ~0.4 s below the face centre
            track[t] = ((x0 + x1) / 2, (y0 + y1) / 2 - 0.4 * s, s)
    return None if np.isnan(track[:, 0]).all() else _fill_and_smooth(track)


def boxes_to_track(boxes: np.ndarray | Tensor) -> np.ndarray:
    """``(T, 4)`` face boxes x0, y0, x1, y1 -> smoothed ``(T, 3)`` centre/half-size track."""
    b = boxes.detach().cpu().numpy() if isinstance(boxes, Tensor) else np.asarray(boxes, dtype=np.float64)
    track = np.stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2,
                      np.maximum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]) / 2], axis=1)
    return _fill_and_smooth(track)


def crop_faces(frames: Tensor, track: np.ndarray, crop_scale: float = 0.4, pad_value: float = 110.0) -> Tensor:
    """``(T, 3, H, W)`` 0–255 float frames -> ``(T, 3, 224, 224)`` syncnet_python crops (bilinear, like cv2)."""
    from torchvision.ops import roi_align

    t = frames.shape[0]
    tr = torch.as_tensor(track, dtype=torch.float32, device=frames.device)
    cx, cy, s = tr[:, 0], tr[:, 1], tr[:, 2].clamp(min=1.0)
    boxes = torch.stack([torch.arange(t, device=frames.device, dtype=torch.float32),
                         cx - s * (1 + crop_scale), cy - s, cx + s * (1 + crop_scale), cy + s * (1 + 2 * crop_scale)],
                        dim=1)
    # roi_align reads 0 outside the frame: shifting by the grey level pads with grey without a padded copy
    crops = roi_align(frames - pad_value, boxes, output_size=(CROP, CROP), spatial_scale=1.0, sampling_ratio=1,
                      aligned=True)
    return crops + pad_value


@torch.no_grad()
def window_embeddings(net: SyncNet, crops: Tensor, audio: Tensor | np.ndarray, windows_per_batch: int = 32
                      ) -> tuple[Tensor, Tensor]:
    """Per-window video and audio embeddings of one clip, as ``SyncNetInstance.evaluate``: ``crops``
    ``(T, 3, 224, 224)`` BGR 0–255 floats, ``audio`` 16 kHz; ``min_length = min(T, len(audio) // 640)`` and windows
    ``0 .. min_length − 6`` (at least 6 frames of both)."""
    dev = crops.device
    audio = audio.detach().cpu().numpy() if isinstance(audio, Tensor) else np.asarray(audio)
    min_length = min(crops.shape[0], len(audio) // HOP)
    if min_length < WINDOW + 1:
        raise ValueError(f"SyncNet needs at least {WINDOW + 1} frames of video and audio, got {min_length}")
    cc = torch.from_numpy(mfcc(audio)).to(dev)  # (13, M)
    n = min_length - WINDOW  # the published `lastframe`
    v_emb, a_emb = [], []
    for i in range(0, n, windows_per_batch):
        idx = torch.arange(i, min(n, i + windows_per_batch), device=dev)
        chunk = crops[i: i + len(idx) + WINDOW - 1]  # frames of windows i .. i+len(idx)-1
        v_emb.append(net.forward_lip_sliding(chunk.transpose(0, 1).contiguous()))
        aud = cc[:, idx[:, None] * 4 + torch.arange(20, device=dev)].permute(1, 0, 2)  # (b,13,20)
        a_emb.append(net.forward_aud(aud[:, None].contiguous()))
    return torch.cat(v_emb), torch.cat(a_emb)


def min_sync_frames(vshift: int) -> int:
    """The fewest frames the offset search needs so that every offset compares at least half of its windows
    against real audio: ``2·vshift`` windows, ``2·vshift + WINDOW`` frames."""
    return 2 * int(vshift) + WINDOW


class SyncScore(SuiteMetric):
    """The keypoint-crop lip-sync monitor of generated videos with their audio, averaged over clips (DDP: float64
    sums). Not LSE-C/D (see the module docstring): logged as ``kpsync_conf, kpsync_dist, kpsync_offset``
    (+ ``_randinit``) and ``kpsync_num_clips``.

    ``update(video (B,T,C,H,W), audio (B, S) 16 kHz, keypoints (B,T,134,3) pixels | None, boxes (B,T,4) | None)``.
    Without keypoints or boxes the whole frame is used (warns). Clips shorter than ``min_frames`` (default
    :func:`min_sync_frames` of ``vshift``; at least 6) are skipped; when none was scored, :meth:`results` logs
    nothing. In a suite it needs the suite's ``audio`` and uses ``keypoints``/``boxes`` when given.
    """

    full_state_update = False
    is_differentiable = False
    name = "kpsync"
    inputs = ("generated", "audio")
    optional_inputs = ("keypoints", "boxes")
    settings = ("input_range", "allow_random_weights", "verify_checksums", "checksums")
    weights_key = "syncnet"

    def __init__(self, syncnet_path: str | Path | None = None, *, allow_random_weights: bool = False,
                 verify_checksums: bool = True, checksums: Mapping[str, str] | None = None, vshift: int = 15,
                 min_frames: int | None = None, crop_scale: float = 0.4,
                 input_range: tuple[float, float] = (-1.0, 1.0), windows_per_batch: int = 32, **kwargs):
        self.vshift = int(vshift)
        self.min_frames = min_sync_frames(self.vshift) if min_frames is None else int(min_frames)
        if self.min_frames < WINDOW + 1:
            raise ValueError(f"metrics.sync.min_frames={self.min_frames}: SyncNet needs at least {WINDOW + 1} "
                             "frames (one 5-frame window and the published last-frame rule)")
        super().__init__(**kwargs)
        checksum = (checksums or {}).get("syncnet")
        net, randinit = build_syncnet(syncnet_path, allow_random_weights=allow_random_weights,
                                      verify_checksums=verify_checksums, checksum=checksum)
        self.__dict__["_net"] = net  # out of the module tree: not in checkpoints, not seen by DDP
        self.randinit = randinit
        path = None if randinit else W.resolve("syncnet", syncnet_path, verify_checksum=False)
        self.weights_record = W.file_record("syncnet", path, verified=verify_checksums, expected_sha256=checksum)
        self.name_suffix = "_randinit" if randinit else ""
        self.crop_scale = float(crop_scale)
        self.input_range = tuple(input_range)
        self.windows_per_batch = int(windows_per_batch)
        for name in ("conf_sum", "dist_sum", "offset_sum"):
            self.add_state(name, torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("clips", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("skipped_clips", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("whole_frame_clips", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.last_counts: dict[str, int] = {}
        self.input_size: tuple[int, int] | None = None
        self._warned_short = False

    @torch.no_grad()
    def embeddings(self, frames: Tensor, audio: Tensor | np.ndarray, track: np.ndarray | None) -> tuple[Tensor, Tensor]:
        """Per-window video/audio embeddings of one clip: frames (T,C,H,W) in the input convention (at least
        6 frames and 6 frames' audio)."""
        dev = frames.device
        net: SyncNet = ensure_device(self.__dict__["_net"], dev)
        audio = audio.detach().cpu().numpy() if isinstance(audio, Tensor) else np.asarray(audio)
        min_length = min(frames.shape[0], len(audio) // HOP)
        if min_length < WINDOW + 1:
            raise ValueError(f"SyncNet needs at least {WINDOW + 1} frames of video and audio, got {min_length}")
        if track is not None and len(track) < min_length:  # keypoints shorter than the clip: hold the last box
            track = np.concatenate([track, np.repeat(track[-1:], min_length - len(track), 0)])
        frames = frames[:min_length]
        bgr = (to_unit(frames, self.input_range) * 255.0).flip(1)  # RGB -> BGR, raw 0-255 like cv2
        if track is None:
            h, w = bgr.shape[-2:]
            s = min(h, w) / (2 + 2 * self.crop_scale)  # the crop box then spans the frame's width, from the top
            track = np.tile([[w / 2, s, s]], (min_length, 1))
        crops = crop_faces(bgr, track[:min_length], self.crop_scale)  # (T,3,224,224)
        return window_embeddings(net, crops, audio, self.windows_per_batch)

    def update(self, video: Tensor, audio: Tensor | np.ndarray, keypoints: Tensor | np.ndarray | None = None,
               boxes: Tensor | np.ndarray | None = None) -> None:
        if video.ndim != 5:
            raise ValueError(f"video must be (B,T,C,H,W), got {tuple(video.shape)}")
        self.input_size = (int(video.shape[-2]), int(video.shape[-1]))
        self.last_per_clip = []  # (offset, conf, dist) per scored clip of the latest batch; not a state
        for b in range(video.shape[0]):
            length = min(video.shape[1], len(audio[b]) // HOP)
            if length < self.min_frames:
                self.skipped_clips += 1
                if not self._warned_short:
                    warnings.warn(f"kpsync: clips of {length} frames are shorter than the {self.min_frames} the "
                                  f"offset search over ±{self.vshift} needs; not scored (no padding)", stacklevel=2)
                    self._warned_short = True
                continue
            track = None
            if boxes is not None:
                track = boxes_to_track(boxes[b])
            elif keypoints is not None:
                track = face_track(keypoints[b])
            if track is None:
                self.whole_frame_clips += 1
                warnings.warn("kpsync: no face keypoints/box for a clip; using the whole frame", stacklevel=2)
            v_emb, a_emb = self.embeddings(video[b], audio[b], track)
            offset, conf, dist = sync_scores(v_emb, a_emb, self.vshift)
            self.last_per_clip.append((offset, conf, dist))
            self.conf_sum += conf
            self.dist_sum += dist
            self.offset_sum += offset
            self.clips += 1

    def compute(self) -> dict[str, Tensor]:
        self.last_counts = {"num_clips": int(self.clips), "skipped_clips": int(self.skipped_clips),
                            "whole_frame_clips": int(self.whole_frame_clips)}
        if int(self.clips) == 0:
            nan = torch.tensor(math.nan, dtype=torch.float64)
            return {"conf": nan, "dist": nan, "offset": nan, "num_clips": torch.tensor(0.0, dtype=torch.float64)}
        n = self.clips.double()
        return {"conf": self.conf_sum / n, "dist": self.dist_sum / n, "offset": self.offset_sum / n,
                "num_clips": n}

    def _prefix(self) -> str:
        return self.name + (f"_v{self.vshift}" if self.vshift != 15 else "")

    def names(self) -> list[str]:
        return [f"{self._prefix()}_{p}{self.name_suffix}" for p in ("conf", "dist", "offset")] + \
            [f"{self._prefix()}_num_clips"]

    def results(self) -> dict[str, float]:
        v = self.compute()  # sets last_counts (synchronised)
        if not self.last_counts.get("num_clips"):
            return {}
        return dict(zip(self.names(), (float(v[k]) for k in ("conf", "dist", "offset", "num_clips"))))

    def per_clip(self) -> dict[str, list[float]]:
        rows = getattr(self, "last_per_clip", [])  # (offset, conf, dist) per clip
        if not rows:
            return {}
        return {f"{self._prefix()}_{p}{self.name_suffix}": [float(r[i]) for r in rows]
                for i, p in enumerate(("offset", "conf", "dist"))}

    def protocol(self) -> dict[str, Any]:
        return {**super().protocol(), "variant": "keypoint-crop SyncNet monitor (not LSE-C/D)",
                "crop": "syncnet_python crop (scale 0.4, 224²) around the driving pose's face keypoints / given "
                        "boxes, median-smoothed over 13 frames",
                "vshift": self.vshift, "min_frames": self.min_frames, "fps": 25, "audio_rate": SAMPLE_RATE,
                "input_resolution": list(self.input_size) if self.input_size else None,
                "comparable_with": "only this monitor at the same vshift (not published LSE-C/D numbers)",
                **self.weights_record, **self.last_counts}
