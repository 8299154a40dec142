"""S3FD face detector (Zhang et al. 2017) as joonson/syncnet_python ships it for LSE-C/D (``sfd_face.pth``).

The standard LSE pipeline (:mod:`mmgt.metrics.lse`) finds faces on the generated video with this network, so the
network, its pre-processing, the prior boxes, the decoding and both NMS stages follow the published detector:

* Network: VGG16 trunk (``vgg.0 .. vgg.34``: conv3_3/conv4_3/conv5_3 feature maps, then pool5, a dilated 3×3 conv
  fc6 (1024, dilation 6) and a 1×1 fc7), channel-wise L2 normalisation with a learnt per-channel scale
  (``L2Norm3_3``/``4_3``/``5_3``, initial scales 10, 8, 5), two extra stages (``extras.0..3``: 1×1 then stride-2 3×3
  convs), and six detection heads (``loc.k``: 4 box offsets, ``conf.k``: 2 logits; the conv3_3 head has 4 logits,
  3 background ones max-pooled into one). One prior per feature-map cell: centre ((j + ½)·step/W, (i + ½)·step/H),
  size min_size/W × min_size/H with steps 4..128 and min sizes 16..512; boxes decoded with variances 0.1/0.2.
* Input: the RGB frame (8-bit values) resized by ``scale`` (0.25 in ``run_pipeline``; bilinear without antialiasing,
  rounded to 8 bit as cv2 does), minus the means 123, 117, 104 (R, G, B), no other scaling.
* Per frame: face probabilities (softmax) > 0.05, the 5000 best, NMS at IoU 0.3, the 750 best; then the detections
  above ``conf_threshold`` (0.9 in ``run_pipeline``) in frame pixels, and a second NMS at IoU 0.1 — the list in
  decreasing score order (the tracker takes faces in that order).

NMS is ``torchvision.ops.batched_nms`` (the same rule as the published loops: keep a box when its IoU with every
better-scored kept box is ≤ the threshold, areas without +1), over all frames of a batch at once with the frame as
the group; the network, decoding and selection are batched over frames too.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

import mmgt.metrics.weights as W
from mmgt.metrics.i3d import he_init

MIN_SIZES = (16, 32, 64, 128, 256, 512)
STEPS = (4, 8, 16, 32, 64, 128)
VARIANCES = (0.1, 0.2)
RGB_MEAN = (123.0, 117.0, 104.0)


class L2Norm(nn.Module):
    """Channel-wise L2 normalisation with a learnt per-channel scale (``weight``, initialised to ``scale``)."""

    def __init__(self, channels: int, scale: float):
        super().__init__()
        self.eps = 1e-10
        self.weight = nn.Parameter(torch.full((channels,), float(scale)))

    def forward(self, x: Tensor) -> Tensor:
        return x / (x.pow(2).sum(dim=1, keepdim=True).sqrt() + self.eps) * self.weight[None, :, None, None]


def _vgg() -> nn.ModuleList:
    layers: list[nn.Module] = []
    cin = 3
    for block, (cout, n) in enumerate(((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))):
        for _ in range(n):
            layers += [nn.Conv2d(cin, cout, 3, 1, padding=1), nn.ReLU(inplace=True)]
            cin = cout
        layers.append(nn.MaxPool2d(2, 2, ceil_mode=block == 2))  # the pool after conv3_3 rounds up
    layers += [nn.Conv2d(512, 1024, 3, 1, padding=6, dilation=6), nn.ReLU(inplace=True),
               nn.Conv2d(1024, 1024, 1, 1), nn.ReLU(inplace=True)]
    return nn.ModuleList(layers)


class S3FDNet(nn.Module):
    """The S3FD network with the module names (state-dict keys) of the published ``sfd_face.pth``.

    ``forward`` returns the raw heads rather than detections (so detection is batched and testable):
    ``loc (N, P, 4)``, ``logits (N, P, 2)`` (background, face) and the six feature-map sizes the priors need.
    """

    #: vgg indices after which the three L2-normalised sources are taken (conv3_3, conv4_3, conv5_3 + ReLU)
    SOURCES = (16, 23, 30)

    def __init__(self) -> None:
        super().__init__()
        self.vgg = _vgg()
        self.L2Norm3_3 = L2Norm(256, 10)
        self.L2Norm4_3 = L2Norm(512, 8)
        self.L2Norm5_3 = L2Norm(512, 5)
        self.extras = nn.ModuleList([nn.Conv2d(1024, 256, 1, 1), nn.Conv2d(256, 512, 3, 2, padding=1),
                                     nn.Conv2d(512, 128, 1, 1), nn.Conv2d(128, 256, 3, 2, padding=1)])
        chans = (256, 512, 512, 1024, 512, 256)
        self.loc = nn.ModuleList([nn.Conv2d(c, 4, 3, 1, padding=1) for c in chans])
        self.conf = nn.ModuleList([nn.Conv2d(c, 4 if k == 0 else 2, 3, 1, padding=1) for k, c in enumerate(chans)])

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, list[tuple[int, int]]]:
        sources = []
        start = 0
        for end, norm in zip(self.SOURCES, (self.L2Norm3_3, self.L2Norm4_3, self.L2Norm5_3), strict=True):
            for k in range(start, end):
                x = self.vgg[k](x)
            sources.append(norm(x))
            start = end
        for k in range(start, len(self.vgg)):
            x = self.vgg[k](x)
        sources.append(x)
        for k, layer in enumerate(self.extras):
            x = F.relu(layer(x))
            if k % 2 == 1:
                sources.append(x)
        locs, logits = [], []
        for k, src in enumerate(sources):
            c = self.conf[k](src)
            if k == 0:  # max-out background: three background logits, one face logit
                c = torch.cat([c[:, :3].amax(dim=1, keepdim=True), c[:, 3:]], dim=1)
            locs.append(self.loc[k](src).permute(0, 2, 3, 1).flatten(1, 2))
            logits.append(c.permute(0, 2, 3, 1).flatten(1, 2))
        sizes = [(int(s.shape[-2]), int(s.shape[-1])) for s in sources]
        return torch.cat(locs, 1), torch.cat(logits, 1), sizes


def prior_boxes(image_size: tuple[int, int], feature_maps: list[tuple[int, int]]) -> Tensor:
    """``(P, 4)`` priors (cx, cy, w, h), normalised by the network input ``image_size`` (H, W), cells row-major per
    feature map in head order (the published ``PriorBox``; computed in float64, returned as float32)."""
    imh, imw = image_size
    out = []
    for (fh, fw), step, size in zip(feature_maps, STEPS, MIN_SIZES, strict=True):
        i, j = torch.meshgrid(torch.arange(fh, dtype=torch.float64), torch.arange(fw, dtype=torch.float64),
                              indexing="ij")
        cx, cy = (j.flatten() + 0.5) / (imw / step), (i.flatten() + 0.5) / (imh / step)
        out.append(torch.stack([cx, cy, torch.full_like(cx, size / imw), torch.full_like(cy, size / imh)], 1))
    return torch.cat(out).float()


def decode(loc: Tensor, priors: Tensor) -> Tensor:
    """Box offsets ``(..., P, 4)`` against priors ``(P, 4)`` -> corner boxes x0, y0, x1, y1 (normalised)."""
    centre = priors[:, :2] + loc[..., :2] * VARIANCES[0] * priors[:, 2:]
    size = priors[:, 2:] * torch.exp(loc[..., 2:] * VARIANCES[1])
    return torch.cat([centre - size / 2, centre + size / 2], dim=-1)


def _nms_per_frame(boxes: Tensor, scores: Tensor, frame: Tensor, iou: float, top_k: int | None = None
                   ) -> Tensor:
    """Indices kept by NMS within each frame, grouped by frame (ascending), by decreasing score within a frame; at
    most ``top_k`` per frame."""
    from torchvision.ops import batched_nms

    keep = batched_nms(boxes, scores, frame, iou)  # decreasing score over all frames
    keep = keep[torch.sort(frame[keep], stable=True).indices]  # grouped by frame, score order kept
    if top_k is not None and keep.numel():
        f = frame[keep]
        counts = torch.bincount(f)
        starts = torch.cumsum(counts, 0) - counts
        keep = keep[torch.arange(len(f), device=f.device) - starts[f] < top_k]
    return keep


class S3FD:
    """The detector: ``detect(frames)`` -> one ``(n, 5)`` array (x0, y0, x1, y1, score in frame pixels, decreasing
    score) per frame, over batches of ``frames_per_batch`` frames.

    Args:
        net: an :class:`S3FDNet` (eval mode; see :func:`build_s3fd`).
        scale: the detector's input scale (``facedet_scale``, 0.25 in ``run_pipeline``).
        conf_threshold: the published ``conf_th`` (0.9 in ``run_pipeline``).
    """

    def __init__(self, net: S3FDNet, *, scale: float = 0.25, conf_threshold: float = 0.9,
                 frames_per_batch: int = 32) -> None:
        self.net = net
        self.scale = float(scale)
        self.conf_threshold = float(conf_threshold)
        self.frames_per_batch = int(frames_per_batch)

    @torch.no_grad()
    def raw(self, frames: Tensor) -> tuple[Tensor, Tensor]:
        """Decoded boxes ``(N, P, 4)`` (normalised) and face probabilities ``(N, P)`` of ``(N, 3, H, W)`` RGB frames
        with 8-bit values (any dtype)."""
        dev = frames.device
        p = next(self.net.parameters())
        if p.device != dev:
            self.net.to(dev)
        x = frames.float()
        if self.scale != 1.0:  # cv2.resize(fx=fy=scale, INTER_LINEAR) of an 8-bit image: no antialiasing, rounded
            x = F.interpolate(x, scale_factor=self.scale, mode="bilinear", align_corners=False, antialias=False,
                              recompute_scale_factor=False)
            x = torch.floor(x + 0.5).clamp_(0, 255)
        if min(x.shape[-2:]) < 32:
            raise ValueError(f"S3FD: frames of {tuple(frames.shape[-2:])} px at detector scale {self.scale} give a "
                             f"{tuple(x.shape[-2:])} input; the network needs at least 32 px per side (its fc7 stride)")
        x = x - torch.tensor(RGB_MEAN, device=dev).view(1, 3, 1, 1)
        loc, logits, sizes = self.net(x)
        priors = prior_boxes((int(x.shape[-2]), int(x.shape[-1])), sizes).to(dev)
        return decode(loc, priors), logits.softmax(dim=-1)[..., 1]

    @torch.no_grad()
    def detect(self, frames: Tensor) -> list[np.ndarray]:
        """Faces of each frame of ``(N, 3, H, W)`` RGB frames with 8-bit values (uint8 or float 0–255)."""
        if frames.ndim != 4 or frames.shape[1] != 3:
            raise ValueError(f"S3FD.detect expects (N, 3, H, W) RGB frames, got {tuple(frames.shape)}")
        out: list[np.ndarray] = []
        for i in range(0, frames.shape[0], self.frames_per_batch):
            out.extend(self._detect_batch(frames[i: i + self.frames_per_batch]))
        return out

    def _detect_batch(self, frames: Tensor) -> list[np.ndarray]:
        n, _, h, w = frames.shape
        boxes, scores = self.raw(frames)
        k = min(5000, scores.shape[1])  # the published nms_top_k: the 5000 best scores above 0.05 enter NMS
        top, idx = scores.masked_fill(scores <= 0.05, -1.0).topk(k, dim=1)
        valid = top > 0.05
        frame = torch.arange(n, device=scores.device)[:, None].expand(n, k)[valid]
        b = boxes.gather(1, idx[..., None].expand(n, k, 4))[valid]
        s = top[valid]
        keep = _nms_per_frame(b, s, frame, 0.3, top_k=750)
        b, s, frame = b[keep], s[keep], frame[keep]
        conf = s > self.conf_threshold
        b = b[conf] * torch.tensor([w, h, w, h], device=b.device, dtype=b.dtype)
        s, frame = s[conf], frame[conf]
        keep = _nms_per_frame(b, s, frame, 0.1)
        dets = torch.cat([b[keep], s[keep, None]], 1).double().cpu().numpy()
        counts = torch.bincount(frame[keep], minlength=n).cpu().tolist()
        return list(np.split(dets, np.cumsum(counts)[:-1])) if n else []


@torch.no_grad()
def random_s3fd(seed: int = 0) -> S3FDNet:
    """A seeded random-init S3FD whose outputs stay finite and spread: He init, the first conv scaled by 1/128 (the
    input is 0–255 minus the means, not unit scale; fc7 and the extra stages are not normalised, so the box
    regression would otherwise overflow ``exp``), heads N(0, 0.05²) (face probabilities across (0, 1) without
    saturating at 1, so the score order is well defined); L2Norm scales at their published initial values."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = he_init(S3FDNet())
        net.vgg[0].weight.div_(128.0)
        for head in (*net.loc, *net.conf):
            head.weight.normal_(0.0, 0.05)
    return net.eval().requires_grad_(False)


def build_s3fd(path: str | Path | None, *, allow_random_weights: bool = False, verify_checksums: bool = True,
               checksum: str | None = None) -> tuple[S3FDNet, bool]:
    """S3FD in eval mode from ``metrics.weights.s3fd`` (checked against the registry); ``(net, randinit)``. A
    missing file is an error unless ``allow_random_weights`` (:func:`random_s3fd`)."""
    if allow_random_weights and not W.available("s3fd", path):
        return random_s3fd(), True
    p = W.resolve("s3fd", path, verify_checksum=verify_checksums, expected_sha256=checksum)
    sd = torch.load(p, map_location="cpu", weights_only=True)
    if not isinstance(sd, dict):
        raise KeyError(f"{p} is not an S3FD state dict (got {type(sd).__name__})")
    net = S3FDNet()
    missing, unexpected = net.load_state_dict(sd.get("state_dict", sd), strict=False)
    if missing or unexpected:
        raise KeyError(f"{p} is not an S3FD state dict (syncnet_python's sfd_face.pth layout): missing "
                       f"{missing[:5]}, unexpected {unexpected[:5]}")
    return net.eval().requires_grad_(False), False
