"""Kinetics-400 Inception-I3D (the FVD feature network) and the FVD metric with its published protocols.

The network is defined here with the parameter names of piergiaj/pytorch-i3d, i.e. the layout of the published
``i3d_pretrained_400.pt`` (TATS / VideoGPT / DisCo / cd-fvd), so that file loads with ``load_state_dict`` as is.
A TorchScript detector (stylegan-v's ``i3d_torchscript.pt``) is accepted too.

Published FVDs differ in how clips are taken and in the network's numerics, so FVD is computed under a named
protocol (``metrics.fvd.protocol``, :data:`PROTOCOLS`) and logged as ``fvd_<protocol>``:

* ``videogpt`` (VideoGPT / TATS / cd-fvd code): every non-overlapping 16-frame clip of each video (a trailing
  partial clip ignored), BatchNorm eps 1e-5 (TATS' PyTorch I3D), PyTorch bilinear resize to 224² with half-pixel
  centres (``align_corners=False``).
* ``styleganv`` (stylegan-v ``fvd2048_16f``, the TF FVD reference): one 16-frame clip per video (the first 16
  frames; stylegan-v takes a random 16-frame window of each *real* video and the first 16 generated frames),
  the TF-Hub network's BatchNorm eps 1e-3 and TensorFlow-1 ``tf.image.resize_bilinear`` (source pixel = output
  pixel · in/out, no half-pixel centres). With ``i3d_pretrained_400.pt`` these two settings make the TF-Hub
  network it was converted from; stylegan-v's TorchScript file has its own BatchNorm built in.
* ``whole`` (DisCo; JunyaoHu's common_metrics_on_video_quality): each whole video is one clip (at least
  ``min_frames``, 10 by default, as JunyaoHu requires), eps 1e-5, half-pixel resize. Values depend on the video
  length (recorded in the protocol card).

A video shorter than its protocol needs is **not scored** (stylegan-v discards short videos too): never padded, and
when no video of the set qualifies nothing is logged (sub-stage A's 1-frame samples, 12-frame windows under a
16-frame protocol). ``bn_eps`` / ``resize_grid`` other than the protocol's, ``resize`` other than 224 or
``clip_frames`` other than 16 are non-standard and show in the name (``fvd_videogpt_eps0.001``,
``fvd_styleganv_halfpixel``, ``fvd_videogpt_r64_8f``); random-init weights add ``_randinit``, a TorchScript file
under another protocol than ``styleganv`` adds ``_torchscript``. Frames are scaled to [−1, 1]; the 400-d Kinetics
logits (time-averaged) are the features; the Fréchet distance is computed in float64 (:mod:`mmgt.metrics.frechet`).
"""

from __future__ import annotations

import math
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.nn.utils.fusion import fuse_conv_bn_eval

import mmgt.metrics.weights as W
from mmgt.metrics.frechet import FrechetMetric, _cat
from mmgt.metrics.video import ensure_device, to_unit


def _same_pad(size: tuple[int, ...], kernel: tuple[int, ...], stride: tuple[int, ...]) -> tuple[int, ...]:
    """TensorFlow 'SAME' padding for (T, H, W) as F.pad's (w_f, w_b, h_f, h_b, t_f, t_b)."""
    pads = []
    for s, k, st in zip(size, kernel, stride):
        p = max(k - st, 0) if s % st == 0 else max(k - s % st, 0)
        pads.append((p // 2, p - p // 2))
    (tf, tb), (hf, hb), (wf, wb) = pads
    return (wf, wb, hf, hb, tf, tb)


def _symmetric(pads: tuple[int, ...]) -> tuple[int, int, int] | None:
    """F.pad's (w_f, w_b, h_f, h_b, t_f, t_b) as a conv/pool ``padding=(t, h, w)`` when front == back, else None."""
    return (pads[4], pads[2], pads[0]) if pads[0::2] == pads[1::2] else None


class MaxPool3dSame(nn.MaxPool3d):
    """Max pool with TF 'SAME' zero padding (as pytorch-i3d).

    ``nonnegative_input``: the input is ≥ 0 (it follows a ReLU), so zero padding and the pool's own −inf padding
    give the same maxima; symmetric padding is then left to the pool (no padded copy of the activation).
    """

    nonnegative_input = False

    def forward(self, x: Tensor) -> Tensor:
        size = tuple(x.shape[2:])
        pads = _same_pad(size, self.kernel_size, self.stride)
        if self.nonnegative_input:
            sym = _symmetric(pads)
            if sym is not None:
                return F.max_pool3d(x, self.kernel_size, self.stride, padding=sym)
            if not any(pads[0::2]):  # padding only at the back: ceil mode's partial last window is the same
                out = F.max_pool3d(x, self.kernel_size, self.stride, ceil_mode=True)
                if tuple(out.shape[2:]) == tuple(-(-n // st) for n, st in zip(size, self.stride)):
                    return out
        return super().forward(F.pad(x, pads))


class Unit3D(nn.Module):
    """Conv3d (no bias) + BatchNorm3d + ReLU with TF 'SAME' padding; names ``conv3d``/``bn`` as published.

    Symmetric 'SAME' padding is passed to the convolution (no padded copy); a 1×1×1 conv runs as one GEMM on the
    channels-last view (as fast as oneDNN's conv with 2 threads; with 1 thread, as in DDP ranks or workers, PyTorch
    sends small-batch 1×1×1 conv3d to a slow im2col path whose output also drops the channels-last layout: the
    whole I3D then runs 1.5x slower). :meth:`fuse_bn_` folds eval BatchNorm into the conv for inference (same
    function up to float round-off).
    """

    def __init__(self, cin: int, cout: int, kernel: tuple[int, int, int] = (1, 1, 1),
                 stride: tuple[int, int, int] = (1, 1, 1), activation: bool = True, batch_norm: bool = True,
                 bias: bool = False, bn_eps: float = 1e-5):
        super().__init__()
        self.kernel, self.stride, self.activation = tuple(kernel), tuple(stride), activation
        self.conv3d = nn.Conv3d(cin, cout, kernel, stride=stride, padding=0, bias=bias)
        self.bn = nn.BatchNorm3d(cout, eps=bn_eps, momentum=0.001) if batch_norm else None

    def forward(self, x: Tensor) -> Tensor:
        w, b = self.conv3d.weight, self.conv3d.bias
        if self.kernel == (1, 1, 1) and self.stride == (1, 1, 1):
            x = F.linear(x.permute(0, 2, 3, 4, 1), w.flatten(1), b).permute(0, 4, 1, 2, 3)
        else:
            pads = _same_pad(tuple(x.shape[2:]), self.kernel, self.stride)
            sym = _symmetric(pads)
            x = F.conv3d(x, w, b, self.stride, sym) if sym is not None else F.conv3d(F.pad(x, pads), w, b, self.stride)
        if self.bn is not None:
            x = self.bn(x)
        return F.relu_(x) if self.activation else x  # in place: x is a fresh conv/bn output

    @torch.no_grad()
    def fuse_bn_(self) -> Unit3D:
        """Fold an eval-mode BatchNorm into the conv (torch's ``fuse_conv_bn_eval``; only for inference nets)."""
        if self.bn is not None:
            self.conv3d = fuse_conv_bn_eval(self.conv3d, self.bn)
            self.bn = None
        return self


class InceptionModule(nn.Module):
    def __init__(self, cin: int, c: tuple[int, int, int, int, int, int], bn_eps: float = 1e-5):
        super().__init__()
        self.b0 = Unit3D(cin, c[0], bn_eps=bn_eps)
        self.b1a = Unit3D(cin, c[1], bn_eps=bn_eps)
        self.b1b = Unit3D(c[1], c[2], (3, 3, 3), bn_eps=bn_eps)
        self.b2a = Unit3D(cin, c[3], bn_eps=bn_eps)
        self.b2b = Unit3D(c[3], c[4], (3, 3, 3), bn_eps=bn_eps)
        self.b3a = MaxPool3dSame(kernel_size=(3, 3, 3), stride=(1, 1, 1), padding=0)
        self.b3b = Unit3D(cin, c[5], bn_eps=bn_eps)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], dim=1)


class InceptionI3d(nn.Module):
    """Inception-v1 I3D (Carreira & Zisserman 2017) returning time-averaged class logits ``(N, num_classes)``.

    Input ``(N, 3, T, H, W)`` in [−1, 1]. At 224² and 16 frames it is exactly the published network; for smaller
    inputs the final average pool shrinks to the feature map (the published 2×7×7 pool would fail), which only
    the non-standard cheap test settings use. ``bn_eps``: the BatchNorm epsilon of every unit (1e-5 in TATS'
    port, 1e-3 in the TF-Hub original; BatchNorm depends only on running variance + eps).
    """

    def __init__(self, num_classes: int = 400, in_channels: int = 3, bn_eps: float = 1e-5):
        super().__init__()
        e = {"bn_eps": float(bn_eps)}  # TATS' PyTorch port: 1e-5; the TF-Hub network it was converted from: 1e-3
        self.Conv3d_1a_7x7 = Unit3D(in_channels, 64, (7, 7, 7), (2, 2, 2), **e)
        self.MaxPool3d_2a_3x3 = MaxPool3dSame(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=0)
        self.Conv3d_2b_1x1 = Unit3D(64, 64, **e)
        self.Conv3d_2c_3x3 = Unit3D(64, 192, (3, 3, 3), **e)
        self.MaxPool3d_3a_3x3 = MaxPool3dSame(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=0)
        self.Mixed_3b = InceptionModule(192, (64, 96, 128, 16, 32, 32), **e)
        self.Mixed_3c = InceptionModule(256, (128, 128, 192, 32, 96, 64), **e)
        self.MaxPool3d_4a_3x3 = MaxPool3dSame(kernel_size=(3, 3, 3), stride=(2, 2, 2), padding=0)
        self.Mixed_4b = InceptionModule(480, (192, 96, 208, 16, 48, 64), **e)
        self.Mixed_4c = InceptionModule(512, (160, 112, 224, 24, 64, 64), **e)
        self.Mixed_4d = InceptionModule(512, (128, 128, 256, 24, 64, 64), **e)
        self.Mixed_4e = InceptionModule(512, (112, 144, 288, 32, 64, 64), **e)
        self.Mixed_4f = InceptionModule(528, (256, 160, 320, 32, 128, 128), **e)
        self.MaxPool3d_5a_2x2 = MaxPool3dSame(kernel_size=(2, 2, 2), stride=(2, 2, 2), padding=0)
        self.Mixed_5b = InceptionModule(832, (256, 160, 320, 32, 128, 128), **e)
        self.Mixed_5c = InceptionModule(832, (384, 192, 384, 48, 128, 128), **e)
        self.logits = Unit3D(1024, num_classes, activation=False, batch_norm=False, bias=True)
        for m in self.modules():
            if isinstance(m, MaxPool3dSame):
                m.nonnegative_input = True  # every pool follows a ReLU
        self._trunk = ["Conv3d_1a_7x7", "MaxPool3d_2a_3x3", "Conv3d_2b_1x1", "Conv3d_2c_3x3", "MaxPool3d_3a_3x3",
                       "Mixed_3b", "Mixed_3c", "MaxPool3d_4a_3x3", "Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e",
                       "Mixed_4f", "MaxPool3d_5a_2x2", "Mixed_5b", "Mixed_5c"]

    def forward(self, x: Tensor) -> Tensor:
        for name in self._trunk:
            x = getattr(self, name)(x)
        t, h, w = x.shape[2:]
        x = F.avg_pool3d(x, kernel_size=(min(2, t), min(7, h), min(7, w)), stride=1)  # dropout: identity in eval
        return self.logits(x).mean(dim=(3, 4)).mean(dim=2)


def he_init(net: nn.Module) -> nn.Module:
    """He-normal weights, zero biases: PyTorch's default conv init shrinks the signal through ~20 layers so a
    random-init feature net would map every video to the same logits (FVD always 0); this keeps it informative."""
    for m in net.modules():
        if isinstance(m, nn.Conv1d | nn.Conv2d | nn.Conv3d | nn.Linear):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return net


def is_torchscript(path: Path) -> bool:
    """Whether a weight file is a TorchScript archive (stylegan-v's detector) rather than a state dict."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.endswith("constants.pkl") or "/code/" in n for n in z.namelist())


class TorchScriptI3D(nn.Module):
    """Wraps stylegan-v's TorchScript I3D: input (N,3,T,224,224) in [−1,1] -> 400-d raw logits."""

    def __init__(self, module: torch.jit.ScriptModule):
        super().__init__()
        self.module = module

    def forward(self, x: Tensor) -> Tensor:
        return self.module(x, rescale=False, resize=False, return_features=True)


def load_i3d_state_dict(model: InceptionI3d, state_dict: dict[str, Tensor]) -> None:
    """Strict load, tolerating only the ``num_batches_tracked`` counters absent from TF-converted files."""
    sd = state_dict.get("state_dict", state_dict)
    sd = {k.removeprefix("module."): v for k, v in sd.items()}
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise KeyError(f"not an InceptionI3d(400) state dict: missing {missing[:5]}, unexpected {unexpected[:5]}")


def build_i3d(path: str | Path | None, *, allow_random_weights: bool = False, verify_checksums: bool = True,
              bn_eps: float = 1e-5, checksum: str | None = None) -> tuple[nn.Module, bool]:
    """The FVD feature net in eval mode from ``metrics.weights.i3d``; ``(net, randinit)``. ``bn_eps`` is applied
    to a state-dict file before its BatchNorms are folded (a TorchScript file keeps its own); ``checksum``: the
    sha256 of a user's own file (checked instead of the published ones)."""
    randinit = allow_random_weights and not W.available("i3d", path)
    if randinit:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # the same random net in every process/rank, global RNG untouched
            return _fast(he_init(InceptionI3d(400, bn_eps=bn_eps))), True
    p = W.resolve("i3d", path, verify_checksum=verify_checksums, expected_sha256=checksum)
    if is_torchscript(p):
        return TorchScriptI3D(torch.jit.load(str(p), map_location="cpu")).eval().requires_grad_(False), False
    model = InceptionI3d(400, bn_eps=bn_eps)
    load_i3d_state_dict(model, torch.load(p, map_location="cpu", weights_only=True))
    return _fast(model), False


def _fast(model: nn.Module) -> nn.Module:
    """Eval mode, no grads, BatchNorm folded into the convs, channels-last 3-D weights (~1.8x faster conv3d on
    CPU); the same function up to float32 round-off."""
    model = model.eval().requires_grad_(False)
    for m in model.modules():
        if isinstance(m, Unit3D):
            m.fuse_bn_()
    return model.to(memory_format=torch.channels_last_3d)


# ---------------------------------------------------------------- FVD protocols
RESIZE_GRIDS = ("half_pixel", "tf1", "align_corners")


@dataclass(frozen=True)
class FVDProtocol:
    """A published FVD recipe: which clips of each video, the I3D BatchNorm eps, the resize grid."""

    name: str
    clips: str  # "all": every non-overlapping clip; "first": the first clip; "whole": the whole video
    bn_eps: float
    resize_grid: str
    weights: str  # the file it is published with
    comparable_with: str


PROTOCOLS: dict[str, FVDProtocol] = {
    "videogpt": FVDProtocol(
        "videogpt", "all", 1e-5, "half_pixel", "i3d_pretrained_400.pt",
        "VideoGPT/TATS/cd-fvd code (PyTorch I3D, 16-frame clips, 224²): papers reporting FVD with those scripts"),
    "styleganv": FVDProtocol(
        "styleganv", "first", 1e-3, "tf1", "i3d_torchscript.pt (or i3d_pretrained_400.pt at these settings)",
        "stylegan-v's fvd2048_16f and the original TF FVD: one 16-frame clip per video, TF-Hub I3D"),
    "whole": FVDProtocol(
        "whole", "whole", 1e-5, "half_pixel", "i3d_pretrained_400.pt",
        "DisCo / JunyaoHu common_metrics_on_video_quality: each whole video one clip (same video length only)"),
}


def select_clips(video: Tensor, clips: str, clip_frames: int, min_frames: int = 10) -> Tensor | None:
    """The clips a protocol scores: ``(B,T,...)`` -> ``(N, L, ...)``, or ``None`` when the videos are too short
    (never padded). ``all``: every non-overlapping ``clip_frames`` clip (a trailing partial clip ignored);
    ``first``: the first ``clip_frames`` frames; ``whole``: the video itself when it has ``min_frames``."""
    b, t = video.shape[:2]
    if clips == "whole":
        return video if t >= min_frames else None
    if t < clip_frames:
        return None
    if clips == "first":
        return video[:, :clip_frames]
    n = t // clip_frames
    return video[:, : n * clip_frames].reshape(b * n, clip_frames, *video.shape[2:])


def resize_frames(frames: Tensor, size: int | tuple[int, int], grid: str) -> Tensor:
    """Bilinear resize of ``(N, C, H, W)`` float frames to ``size`` (``S`` or ``(H, W)``; no antialiasing, as every
    FVD code) on a sampling grid: ``half_pixel`` (PyTorch ``align_corners=False``, TF2), ``tf1`` (TensorFlow 1's
    ``tf.image.resize_bilinear`` default: source = output · in/out, no half-pixel centres; torch-fidelity's
    TF1-exact interpolation) or ``align_corners`` (corner pixels aligned)."""
    hw = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if grid not in RESIZE_GRIDS:
        raise ValueError(f"resize_grid={grid!r}: expected one of {RESIZE_GRIDS}")
    if tuple(frames.shape[-2:]) == hw:
        return frames
    if grid == "tf1":
        from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

        return interpolate_bilinear_2d_like_tensorflow1x(frames, size=hw, align_corners=False)
    return F.interpolate(frames, size=hw, mode="bilinear", align_corners=grid == "align_corners")


class FrechetVideoDistance(FrechetMetric):
    """FVD between generated and reference videos ``(B,T,C,H,W)`` (uint8, or float in ``input_range``) under a
    named protocol (:data:`PROTOCOLS`; the module docstring has the recipes).

    Kinetics-400 I3D logits of the protocol's clips at ``resize``²; states, DDP, the ≥ 2-clip rule and the optional
    reference cache (``reference_cache_mb``, 3.2 kB per clip) come from :class:`~mmgt.metrics.frechet.FrechetMetric`.
    A batch whose videos are shorter than the protocol needs is not scored (counted as skipped); when no video of
    the whole set was scored, :meth:`results` logs nothing. Logged as ``fvd_<protocol>[suffixes]`` with
    ``..._num_clips`` beside it; :meth:`protocol` is its protocol card.
    """

    name = "fvd"
    sample_name = "clips"
    weights_key = "i3d"
    settings = ("input_range", "allow_random_weights", "verify_checksums", "checksums")

    def __init__(self, i3d_path: str | Path | None = None, *, protocol: str = "videogpt",
                 allow_random_weights: bool = False, verify_checksums: bool = True,
                 checksums: Mapping[str, str] | None = None, clip_frames: int = 16, resize: int = 224,
                 bn_eps: float | None = None, resize_grid: str | None = None, min_frames: int | None = None,
                 input_range: tuple[float, float] = (-1.0, 1.0), clips_per_batch: int = 8,
                 reference_cache_mb: float = 0.0, **kwargs):
        if protocol not in PROTOCOLS:
            raise ValueError(f"metrics.fvd.protocol={protocol!r}: expected one of {sorted(PROTOCOLS)}")
        proto = PROTOCOLS[protocol]
        grid = proto.resize_grid if resize_grid is None else str(resize_grid)
        if grid not in RESIZE_GRIDS:
            raise ValueError(f"metrics.fvd.resize_grid={grid!r}: expected one of {RESIZE_GRIDS}")
        clip_frames, min_frames = int(clip_frames), int(10 if min_frames is None else min_frames)
        if clip_frames < 2 or min_frames < 2:  # a single frame has no motion: never an FVD (sub-stage A samples)
            raise ValueError(f"FVD needs clips of at least 2 frames (clip_frames={clip_frames}, "
                             f"min_frames={min_frames})")
        super().__init__(reference_cache_mb=reference_cache_mb, **kwargs)
        eps = proto.bn_eps if bn_eps is None else float(bn_eps)
        checksum = (checksums or {}).get("i3d")
        net, randinit = build_i3d(i3d_path, allow_random_weights=allow_random_weights,
                                  verify_checksums=verify_checksums, bn_eps=eps, checksum=checksum)
        self.__dict__["_net"] = net  # out of the module tree: not in checkpoints, not seen by DDP
        self.randinit = randinit
        self.torchscript = isinstance(net, TorchScriptI3D)
        if self.torchscript and bn_eps is not None:
            warnings.warn(f"metrics.fvd.bn_eps={bn_eps} does not apply to a TorchScript I3D (its BatchNorm is built "
                          "in)", stacklevel=2)
        path = None if randinit else W.resolve("i3d", i3d_path, verify_checksum=False)
        self.weights_record = W.file_record("i3d", path, verified=verify_checksums, expected_sha256=checksum)
        self.protocol_name, self.clips = protocol, proto.clips
        self.bn_eps, self.resize_grid = eps, grid
        self.clip_frames, self.min_frames, self.resize = clip_frames, min_frames, int(resize)
        self.input_range = tuple(input_range)
        self.clips_per_batch = int(clips_per_batch)
        self.name_suffix = (f"_{protocol}" + (f"_r{self.resize}" if self.resize != 224 else "")
                            + (f"_{self.clip_frames}f" if self.clips != "whole" and self.clip_frames != 16 else "")
                            + (f"_eps{eps:g}" if eps != proto.bn_eps and not self.torchscript else "")
                            + (f"_{grid.replace('_', '')}" if grid != proto.resize_grid else "")
                            + ("_torchscript" if self.torchscript and protocol != "styleganv" else "")
                            + ("_randinit" if randinit else ""))
        self.add_state("videos_scored", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("videos_skipped", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("clip_len_min", torch.tensor(2**31 - 1, dtype=torch.long), dist_reduce_fx="min")
        self.add_state("clip_len_max", torch.tensor(0, dtype=torch.long), dist_reduce_fx="max")
        self.last_counts: dict[str, int] = {}
        self.input_size: tuple[int, int] | None = None
        self._warned_short = False

    @property
    def num_clips(self) -> int:
        return self.num_samples

    @property
    def needed_frames(self) -> int:
        """The fewest frames a video must have to be scored."""
        return self.min_frames if self.clips == "whole" else self.clip_frames

    def clips_of(self, video: Tensor) -> Tensor | None:
        """The protocol's clips of ``video`` (B,T,C,H,W), or None when it is too short."""
        return select_clips(video, self.clips, self.clip_frames, self.min_frames)

    @torch.no_grad()
    def features(self, video: Tensor) -> Tensor:
        """``(N, 400)`` float64 I3D logits of the protocol's clips of ``video`` (B,T,C,H,W) (videos long enough)."""
        net = ensure_device(self.__dict__["_net"], video.device)
        clips = self.clips_of(video)
        if clips is None:
            raise ValueError(f"FVD ({self.protocol_name}) needs videos of at least {self.needed_frames} frames, got "
                             f"{video.shape[1]}")
        out = []
        for i in range(0, clips.shape[0], self.clips_per_batch):
            out.append(net(self._preprocess(clips[i:i + self.clips_per_batch])).double())
        return torch.cat(out)

    def update(self, generated: Tensor, reference: Tensor | None = None) -> None:
        """Add a batch; videos shorter than the protocol needs are counted as skipped, never padded."""
        t = generated.shape[1] if reference is None else min(generated.shape[1], reference.shape[1])
        self.input_size = (int(generated.shape[-2]), int(generated.shape[-1]))
        if t < self.needed_frames:
            self.videos_skipped += generated.shape[0]
            if not self._warned_short:
                warnings.warn(f"FVD ({self.protocol_name}) needs videos of at least {self.needed_frames} frames; "
                              f"{t}-frame videos are not scored (no padding)", stacklevel=2)
                self._warned_short = True
            return
        super().update(generated, reference)
        self.videos_scored += generated.shape[0]
        length = self.clip_frames if self.clips != "whole" else t
        self.clip_len_min = torch.minimum(self.clip_len_min, torch.tensor(length, device=self.clip_len_min.device))
        self.clip_len_max = torch.maximum(self.clip_len_max, torch.tensor(length, device=self.clip_len_max.device))

    def compute(self) -> Tensor:
        self.last_counts = {"videos_scored": int(self.videos_scored), "videos_skipped": int(self.videos_skipped),
                            "num_reference_clips": int(_cat(self.ref_features).shape[0]),
                            "clip_frames_min": int(self.clip_len_min) if int(self.videos_scored) else 0,
                            "clip_frames_max": int(self.clip_len_max)}
        if self.last_counts["videos_scored"] == 0:  # nothing met the protocol: no value (results() logs nothing)
            self.num_samples = 0
            return torch.tensor(math.nan, dtype=torch.float64)
        return super().compute()

    def names(self) -> list[str]:
        full = f"{self.name}{self.name_suffix}"
        return [full, f"{full}_num_{self.sample_name}"]

    def results(self) -> dict[str, float]:
        value = float(self.compute())  # sets num_samples and last_counts (synchronised)
        if not self.last_counts.get("videos_scored"):
            return {}
        return dict(zip(self.names(), (value, float(self.num_samples))))

    def protocol(self) -> dict[str, Any]:
        clips = {"all": f"every non-overlapping {self.clip_frames}-frame clip of each video",
                 "first": f"the first {self.clip_frames} frames of each video",
                 "whole": f"each whole video (at least {self.min_frames} frames)"}[self.clips]
        return {"metric": self.names()[0], "variant": self.protocol_name, "clips": clips,
                "min_frames": self.needed_frames,
                "bn_eps": "built into the TorchScript file" if self.torchscript else self.bn_eps,
                "resize_grid": self.resize_grid, "resolution": [self.resize, self.resize],
                "input_resolution": list(self.input_size) if self.input_size else None,
                "features": "Kinetics-400 I3D logits (400-d), Fréchet distance in float64",
                "comparable_with": PROTOCOLS[self.protocol_name].comparable_with
                if not self.name_suffix.replace(f"_{self.protocol_name}", "") else "only runs with the same name",
                **self.weights_record, "num_clips": self.num_samples, **self.last_counts}

    def _preprocess(self, clips: Tensor) -> Tensor:
        """``(n,T,C,H,W)`` clips -> ``(n,3,T,S,S)`` in [−1, 1], channels-last 3-D, S = ``resize``.

        Scaled to [−1, 1] before the (linear, weights summing to 1) bilinear resize, i.e. on the smaller tensor,
        and resized in channels-last 2-D, whose memory layout *is* channels-last 3-D: no copy afterwards.
        """
        n, t = clips.shape[:2]
        c = to_unit(clips, self.input_range) * 2 - 1
        c = c.flatten(0, 1).contiguous(memory_format=torch.channels_last)
        c = resize_frames(c, self.resize, self.resize_grid)
        c = c.contiguous(memory_format=torch.channels_last)  # (n·T, S, S, 3) in memory
        return c.reshape(n, t, 3, self.resize, self.resize).transpose(1, 2)  # a view, channels-last 3-D

    def cache_key(self) -> tuple:
        return ("i3d", self.protocol_name, self.clip_frames, self.min_frames, self.resize, self.resize_grid,
                self.bn_eps, self.input_range)
