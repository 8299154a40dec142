"""Kinetics-400 Inception-I3D (the FVD feature network) and the FVD metric.

The network is defined here with the parameter names of piergiaj/pytorch-i3d, i.e. the layout of the published
``i3d_pretrained_400.pt`` (TATS / VideoGPT / DisCo / cd-fvd), so that file loads with ``load_state_dict`` as is.
A TorchScript detector (stylegan-v's ``i3d_torchscript.pt``) is accepted too.

FVD protocol: each video is cut into non-overlapping ``clip_frames``-frame clips (16; a
video shorter than one clip is padded by repeating its last frame — scored, never dropped — and a trailing partial
clip is ignored when the video has at least one full clip); frames are resized to 224² (bilinear, no crop, as TATS),
scaled to [−1, 1]; the 400-d Kinetics logits (time-averaged) are the features; the Fréchet distance is computed in
float64 (:mod:`mmgt.metrics.frechet`). The number of clips is reported beside the value. ``resize`` other than 224
or ``clip_frames`` other than 16 are non-standard (cheap tests) and show up in the metric name (``fvd_r64``,
``fvd_8f``); random-init weights add ``_randinit``.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.nn.utils.fusion import fuse_conv_bn_eval

import mmgt.metrics.weights as W
from mmgt.metrics.frechet import FrechetMetric
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
                 bias: bool = False):
        super().__init__()
        self.kernel, self.stride, self.activation = tuple(kernel), tuple(stride), activation
        self.conv3d = nn.Conv3d(cin, cout, kernel, stride=stride, padding=0, bias=bias)
        self.bn = nn.BatchNorm3d(cout, eps=1e-5, momentum=0.001) if batch_norm else None

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
    def __init__(self, cin: int, c: tuple[int, int, int, int, int, int]):
        super().__init__()
        self.b0 = Unit3D(cin, c[0])
        self.b1a = Unit3D(cin, c[1])
        self.b1b = Unit3D(c[1], c[2], (3, 3, 3))
        self.b2a = Unit3D(cin, c[3])
        self.b2b = Unit3D(c[3], c[4], (3, 3, 3))
        self.b3a = MaxPool3dSame(kernel_size=(3, 3, 3), stride=(1, 1, 1), padding=0)
        self.b3b = Unit3D(cin, c[5])

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], dim=1)


class InceptionI3d(nn.Module):
    """Inception-v1 I3D (Carreira & Zisserman 2017) returning time-averaged class logits ``(N, num_classes)``.

    Input ``(N, 3, T, H, W)`` in [−1, 1]. At 224² and 16 frames it is exactly the published network; for smaller
    inputs the final average pool shrinks to the feature map (the published 2×7×7 pool would fail), which only
    the non-standard cheap test settings use.
    """

    def __init__(self, num_classes: int = 400, in_channels: int = 3):
        super().__init__()
        self.Conv3d_1a_7x7 = Unit3D(in_channels, 64, (7, 7, 7), (2, 2, 2))
        self.MaxPool3d_2a_3x3 = MaxPool3dSame(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=0)
        self.Conv3d_2b_1x1 = Unit3D(64, 64)
        self.Conv3d_2c_3x3 = Unit3D(64, 192, (3, 3, 3))
        self.MaxPool3d_3a_3x3 = MaxPool3dSame(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=0)
        self.Mixed_3b = InceptionModule(192, (64, 96, 128, 16, 32, 32))
        self.Mixed_3c = InceptionModule(256, (128, 128, 192, 32, 96, 64))
        self.MaxPool3d_4a_3x3 = MaxPool3dSame(kernel_size=(3, 3, 3), stride=(2, 2, 2), padding=0)
        self.Mixed_4b = InceptionModule(480, (192, 96, 208, 16, 48, 64))
        self.Mixed_4c = InceptionModule(512, (160, 112, 224, 24, 64, 64))
        self.Mixed_4d = InceptionModule(512, (128, 128, 256, 24, 64, 64))
        self.Mixed_4e = InceptionModule(512, (112, 144, 288, 32, 64, 64))
        self.Mixed_4f = InceptionModule(528, (256, 160, 320, 32, 128, 128))
        self.MaxPool3d_5a_2x2 = MaxPool3dSame(kernel_size=(2, 2, 2), stride=(2, 2, 2), padding=0)
        self.Mixed_5b = InceptionModule(832, (256, 160, 320, 32, 128, 128))
        self.Mixed_5c = InceptionModule(832, (384, 192, 384, 48, 128, 128))
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


def _is_torchscript(path: Path) -> bool:
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


def build_i3d(path: str | Path | None, *, allow_random_weights: bool = False,
              verify_checksums: bool = True) -> tuple[nn.Module, bool]:
    """The FVD feature net in eval mode from ``metrics.weights.i3d``; ``(net, randinit)``."""
    randinit = allow_random_weights and not W.available("i3d", path)
    if randinit:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # the same random net in every process/rank, global RNG untouched
            return _fast(he_init(InceptionI3d(400))), True
    p = W.resolve("i3d", path, verify_checksum=verify_checksums)
    if _is_torchscript(p):
        return TorchScriptI3D(torch.jit.load(str(p), map_location="cpu")).eval().requires_grad_(False), False
    model = InceptionI3d(400)
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


def video_to_clips(video: Tensor, clip_frames: int) -> Tensor:
    """``(B,T,...)`` -> ``(B*n, clip_frames, ...)`` non-overlapping clips; a short video is padded with its last
    frame (one clip, never dropped), a trailing partial clip is ignored otherwise."""
    b, t = video.shape[:2]
    if t < clip_frames:
        pad = video[:, -1:].expand(b, clip_frames - t, *video.shape[2:])
        video = torch.cat([video, pad], dim=1)
        t = clip_frames
    n = t // clip_frames
    return video[:, : n * clip_frames].reshape(b * n, clip_frames, *video.shape[2:])


class FrechetVideoDistance(FrechetMetric):
    """FVD between generated and reference videos ``(B,T,C,H,W)`` (uint8, or float in ``input_range``).

    Kinetics-400 I3D logits of non-overlapping ``clip_frames`` clips at ``resize``²; states, DDP, the ≥ 2-clip rule
    and the optional reference cache (``reference_cache_mb``, 3.2 kB per clip) come from
    :class:`~mmgt.metrics.frechet.FrechetMetric`. ``num_clips`` after compute says how many generated clips it used.
    """

    name = "fvd"
    sample_name = "clips"
    weights_key = "i3d"

    def __init__(self, i3d_path: str | Path | None = None, *, allow_random_weights: bool = False,
                 verify_checksums: bool = True, clip_frames: int = 16, resize: int = 224,
                 input_range: tuple[float, float] = (-1.0, 1.0), clips_per_batch: int = 8,
                 reference_cache_mb: float = 0.0, **kwargs):
        super().__init__(reference_cache_mb=reference_cache_mb, **kwargs)
        net, randinit = build_i3d(i3d_path, allow_random_weights=allow_random_weights,
                                  verify_checksums=verify_checksums)
        self.__dict__["_net"] = net  # out of the module tree: not in checkpoints, not seen by DDP
        self.randinit = randinit
        self.clip_frames, self.resize = int(clip_frames), int(resize)
        self.input_range = tuple(input_range)
        self.clips_per_batch = int(clips_per_batch)
        self.name_suffix = ((f"_r{self.resize}" if self.resize != 224 else "")
                            + (f"_{self.clip_frames}f" if self.clip_frames != 16 else "")
                            + ("_randinit" if randinit else ""))

    @property
    def num_clips(self) -> int:
        return self.num_samples

    @torch.no_grad()
    def features(self, video: Tensor) -> Tensor:
        """``(N, 400)`` float64 I3D logits of the clips of ``video`` (B,T,C,H,W)."""
        net = ensure_device(self.__dict__["_net"], video.device)
        clips = video_to_clips(video, self.clip_frames)
        out = []
        for i in range(0, clips.shape[0], self.clips_per_batch):
            out.append(net(self._preprocess(clips[i:i + self.clips_per_batch])).double())
        return torch.cat(out)

    def _preprocess(self, clips: Tensor) -> Tensor:
        """``(n,T,C,H,W)`` clips -> ``(n,3,T,S,S)`` in [−1, 1], channels-last 3-D, S = ``resize``.

        Scaled to [−1, 1] before the (linear, weights summing to 1) bilinear resize, i.e. on the smaller tensor,
        and resized in channels-last 2-D, whose memory layout *is* channels-last 3-D: no copy afterwards.
        """
        n, t = clips.shape[:2]
        c = to_unit(clips, self.input_range) * 2 - 1
        c = c.flatten(0, 1).contiguous(memory_format=torch.channels_last)
        if tuple(c.shape[-2:]) != (self.resize, self.resize):
            c = F.interpolate(c, size=(self.resize, self.resize), mode="bilinear", align_corners=False)
        c = c.contiguous(memory_format=torch.channels_last)  # (n·T, S, S, 3) in memory
        return c.reshape(n, t, 3, self.resize, self.resize).transpose(1, 2)  # a view, channels-last 3-D

    def cache_key(self) -> tuple:
        return ("i3d", self.clip_frames, self.resize, self.input_range)
