"""Per-frame reconstruction metrics: PSNR, SSIM, LPIPS.

Protocol: every generated frame is compared with the ground-truth frame at the same index; the per-frame
values are averaged over the frames of a clip, then over clips (every clip weighs the same, whatever its length).
Inputs are videos ``(B, T, C, H, W)``: ``uint8`` in [0, 255], or float in ``input_range`` (default [−1, 1], the
range the video model works in). They are mapped to [0, 1] first, so **PSNR and SSIM use ``data_range=1.0``**
(equal to 255 on uint8 frames); LPIPS gets [−1, 1] as the lpips package expects. Identical frames give an infinite
PSNR: it is capped at ``cap`` dB (default 100) so means stay finite; ``cap=None`` keeps ``inf``.

The metric states are float64 sums + clip counts with ``dist_reduce_fx="sum"``: exact under DDP.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics.functional.image import peak_signal_noise_ratio

import mmgt.metrics.weights as W
from mmgt.metrics.base import SuiteMetric
from mmgt.metrics.cache import FeatureCache


def to_unit(video: Tensor, input_range: tuple[float, float] = (-1.0, 1.0)) -> Tensor:
    """uint8 [0,255] or float in ``input_range`` -> float32 in [0, 1] (clamped)."""
    if video.dtype == torch.uint8:
        return video.float() / 255.0
    lo, hi = input_range
    return ((video.float() - lo) / (hi - lo)).clamp(0.0, 1.0)


def ensure_device(net: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """Move an (unregistered) feature net to ``device`` if it is not there yet."""
    p = next(itertools.chain(net.parameters(), net.buffers()), None)
    if p is None or p.device != device:
        net.to(device)
    return net


def check_pair(generated: Tensor, reference: Tensor) -> None:
    if generated.ndim != 5 or generated.shape != reference.shape:
        raise ValueError(f"expected two videos (B,T,C,H,W) of the same shape, got {tuple(generated.shape)} and "
                         f"{tuple(reference.shape)} (resize/trim them first: mmgt.evaluate does it and warns)")


class _PerFrameMetric(SuiteMetric):
    """Mean over clips of the mean over frames of a per-frame score."""

    full_state_update = False
    is_differentiable = False
    settings = ("input_range",)

    def __init__(self, input_range: tuple[float, float] = (-1.0, 1.0), frames_per_batch: int = 256, **kwargs):
        super().__init__(**kwargs)
        self.input_range = tuple(input_range)
        self.frames_per_batch = int(frames_per_batch)
        self.add_state("total", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("clips", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("frames", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.input_size: tuple[int, int] | None = None
        self.last_counts: dict[str, int] = {}

    def per_frame(self, generated: Tensor, reference: Tensor) -> Tensor:
        """``(B, T)`` per-frame values of two videos (B,T,C,H,W) already in [0, 1]."""
        b, t = generated.shape[:2]
        g, r = generated.flatten(0, 1), reference.flatten(0, 1)
        vals = [self._frames(g[i:i + self.frames_per_batch], r[i:i + self.frames_per_batch])
                for i in range(0, g.shape[0], self.frames_per_batch)]
        return torch.cat(vals).reshape(b, t)

    def _frames(self, g: Tensor, r: Tensor) -> Tensor:  # (N,C,H,W) in [0,1] -> (N,)
        raise NotImplementedError

    def per_video(self, generated: Tensor, reference: Tensor) -> Tensor:
        """``(B, T)`` per-frame values of two videos in the input convention (LPIPS overrides it to cache)."""
        return self.per_frame(to_unit(generated, self.input_range), to_unit(reference, self.input_range))

    def update(self, generated: Tensor, reference: Tensor) -> None:
        check_pair(generated, reference)
        with torch.no_grad():
            vals = self.per_video(generated, reference)
        per_clip = vals.double().mean(dim=1)
        self.last_per_clip = per_clip.tolist()  # not a state: per-video reports of the latest batch
        self.total += per_clip.sum()
        self.clips += vals.shape[0]
        self.frames += vals.numel()
        self.input_size = (int(generated.shape[-2]), int(generated.shape[-1]))

    def compute(self) -> Tensor:
        self.last_counts = {"num_clips": int(self.clips), "num_frames": int(self.frames)}
        if int(self.clips) == 0:
            return torch.tensor(float("nan"), dtype=torch.float64)
        return self.total / self.clips

    def per_clip(self) -> dict[str, list[float]]:
        return {self.names()[0]: list(getattr(self, "last_per_clip", []))}

    #: what the number is, for the protocol card
    variant = ""

    def protocol(self) -> dict[str, Any]:
        return {**super().protocol(), "variant": self.variant,
                "averaging": "per frame vs the ground-truth frame, mean over frames, then over clips",
                "resolution": list(self.input_size) if self.input_size else None, **self.last_counts}


class PSNR(_PerFrameMetric):
    """Per-frame PSNR in dB on [0, 1] frames (``data_range=1``), capped at ``cap`` for identical frames."""

    higher_is_better = True
    name = "psnr"
    variant = "data range 1 on [0, 1] frames, identical frames capped"

    def __init__(self, cap: float | None = 100.0, **kwargs):
        super().__init__(**kwargs)
        self.cap = cap

    def _frames(self, g: Tensor, r: Tensor) -> Tensor:
        v = peak_signal_noise_ratio(g, r, data_range=1.0, reduction="none", dim=(1, 2, 3))
        return v.clamp(max=self.cap) if self.cap is not None else v


class SSIM(_PerFrameMetric):
    """Per-frame SSIM (Gaussian window 11, σ=1.5, K=(0.01, 0.03), ``data_range=1``, mean over channels).

    The mean is over the pixels where the window lies inside the image (a 5-pixel border excluded), as in
    scikit-image / the Wang et al. reference code. That interior equals torchmetrics' SSIM map cropped by 5 (its
    reflection padding only touches the border), so it is computed directly as a *valid* filter, and the 11×11
    Gaussian as two 11-tap passes (it is separable): ~5x fewer operations than torchmetrics' padded 2-D grouped
    conv, same numbers to float32 round-off. Frames are filtered in small chunks that stay in cache on CPU.
    """

    higher_is_better = True
    name = "ssim"
    variant = "Gaussian window 11, sigma 1.5, data range 1, 5-px border excluded (scikit-image)"
    border = 5  # (11 - 1) // 2
    k1, k2, sigma = 0.01, 0.03, 1.5
    #: elements (frames·C·H·W) per inner chunk on CPU: 5 stacked float32 maps of this size fit a core's L2 cache
    #: (64x that on a GPU)
    chunk_elements = 1 << 16

    def _taps(self) -> list[float]:
        """The 11 normalised Gaussian weights, computed as torchmetrics does (float32)."""
        d = torch.arange(-self.border, self.border + 1, dtype=torch.float32)
        g = torch.exp(-torch.pow(d / self.sigma, 2) / 2)
        return (g / g.sum()).tolist()

    def _frames(self, g: Tensor, r: Tensor) -> Tensor:
        if min(g.shape[-2:]) <= 2 * self.border:
            raise ValueError(f"SSIM needs frames of at least 11x11 pixels, got {tuple(g.shape[-2:])}")
        budget = self.chunk_elements * (64 if g.is_cuda else 1)  # on a GPU: fewer, larger launches
        n = max(1, budget // g[0].numel())
        taps = self._taps()
        return torch.cat([self._chunk(g[i:i + n], r[i:i + n], taps) for i in range(0, g.shape[0], n)])

    @staticmethod
    def _filter(x: Tensor, taps: list[float], dim: int) -> Tensor:
        """Valid 1-D correlation of ``x`` along ``dim`` with ``taps`` (sum of shifted slices)."""
        size = x.shape[dim] - len(taps) + 1
        out = x.narrow(dim, 0, size) * taps[0]
        for i, w in enumerate(taps[1:], 1):
            out.add_(x.narrow(dim, i, size), alpha=w)
        return out

    def _chunk(self, g: Tensor, r: Tensor, taps: list[float]) -> Tensor:
        x = torch.stack([g, r, g * g, r * r, g * r])  # (5, N, C, H, W)
        mu_g, mu_r, gg, rr, gr = self._filter(self._filter(x, taps, -1), taps, -2)
        c1, c2 = self.k1 ** 2, self.k2 ** 2  # data_range = 1
        mu_gg, mu_rr, mu_gr = mu_g * mu_g, mu_r * mu_r, mu_g * mu_r
        var_g = (gg - mu_gg).clamp_(min=0.0)
        var_r = (rr - mu_rr).clamp_(min=0.0)
        cov = gr - mu_gr
        ssim_map = ((2 * mu_gr + c1) * (2 * cov + c2)) / ((mu_gg + mu_rr + c1) * (var_g + var_r + c2))
        return ssim_map.mean(dim=(1, 2, 3))


# ---------------------------------------------------------------- LPIPS
_ALEX_SLICES = ((0, 2), (2, 5), (5, 8), (8, 10), (10, 12))  # lpips' split of torchvision alexnet.features


def build_lpips(alexnet_path: str | Path | None, *, allow_random_weights: bool = False,
                verify_checksums: bool = True, checksum: str | None = None) -> tuple[torch.nn.Module, bool]:
    """lpips 0.1 AlexNet model with the backbone from a local torchvision file; returns ``(net, randinit)``.

    The lpips package ships its linear heads (``weights/v0.1/alex.pth``) but would download the AlexNet trunk;
    here the trunk comes from ``metrics.weights.alexnet`` (``alexnet-owt-7be5be79.pth``) or, when allowed and the
    file is absent, stays random (``randinit=True``).
    """
    import lpips

    randinit = allow_random_weights and not W.available("alexnet", alexnet_path)
    path = None if randinit else W.resolve("alexnet", alexnet_path, verify_checksum=verify_checksums,
                                           expected_sha256=checksum)
    with warnings.catch_warnings(), torch.random.fork_rng(devices=[]):
        warnings.simplefilter("ignore")
        torch.manual_seed(0)  # a random trunk is the same in every process/rank; global RNG untouched
        net = lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, verbose=False)
    if path is not None:
        sd = torch.load(path, map_location="cpu", weights_only=True)
        load_alexnet_trunk(net.net, sd)
    net.net.to(memory_format=torch.channels_last)  # ~1.2x faster trunk on CPU, same values to float round-off
    return net.eval().requires_grad_(False), randinit


def load_alexnet_trunk(trunk: torch.nn.Module, state_dict: dict[str, Tensor]) -> None:
    """Copy torchvision ``features.{i}.*`` tensors into lpips' ``slice{k}.{i}.*`` modules (all must match)."""
    target = trunk.state_dict()
    mapped = {}
    for key, value in state_dict.items():
        if not key.startswith("features."):
            continue
        idx = int(key.split(".")[1])
        k = next(n for n, (lo, hi) in enumerate(_ALEX_SLICES, 1) if lo <= idx < hi)
        mapped[f"slice{k}.{key.split('.', 1)[1]}"] = value
    missing = sorted(set(target) - set(mapped))
    if missing:
        raise KeyError(f"AlexNet weight file lacks {missing[:4]}...: not a torchvision alexnet state dict")
    trunk.load_state_dict(mapped, strict=True)


class LPIPS(_PerFrameMetric):
    """Per-frame LPIPS (v0.1, AlexNet trunk, spatial average; input [−1, 1]); lower is better.

    Computed from the lpips model's own parts (scaling layer, trunk, ``normalize_tensor``, linear heads) exactly as
    ``lpips.LPIPS.forward``, but with both sides in one trunk call and, when ``reference_cache_mb > 0``, the
    reference side's normalised features kept in a :class:`~mmgt.metrics.cache.FeatureCache` (fixed ground truth is
    then run through the trunk once; about 0.6 MB per 128² frame, 2.4 MB per 256² frame). The network is kept out
    of the module tree (not in checkpoints, not seen by DDP) and moved to the input's device on first use.
    """

    higher_is_better = False
    name = "lpips"
    variant = "lpips v0.1, AlexNet trunk, linear heads, spatial average, input [-1, 1]"
    settings = ("input_range", "allow_random_weights", "verify_checksums", "checksums")
    weights_key = "alexnet"

    def __init__(self, alexnet_path: str | Path | None = None, *, allow_random_weights: bool = False,
                 verify_checksums: bool = True, checksums: Mapping[str, str] | None = None,
                 frames_per_batch: int = 64, reference_cache_mb: float = 0.0, **kwargs):
        super().__init__(frames_per_batch=frames_per_batch, **kwargs)
        checksum = (checksums or {}).get("alexnet")
        net, randinit = build_lpips(alexnet_path, allow_random_weights=allow_random_weights,
                                    verify_checksums=verify_checksums, checksum=checksum)
        path = None if randinit else W.resolve("alexnet", alexnet_path, verify_checksum=False)
        self.weights_record = W.file_record("alexnet", path, verified=verify_checksums, expected_sha256=checksum)
        self.__dict__["_net"] = net  # unregistered on purpose
        self.__dict__["cache"] = FeatureCache(int(reference_cache_mb * 2**20))
        self.randinit = randinit
        self.name_suffix = "_randinit" if randinit else ""

    def protocol(self) -> dict[str, Any]:
        return {**super().protocol(), **self.weights_record}

    def features(self, frames: Tensor) -> tuple[Tensor, ...]:
        """Unit-normalised trunk activations (one per layer) of ``(N, C, H, W)`` frames in [0, 1]."""
        import lpips

        net = ensure_device(self.__dict__["_net"], frames.device)
        outs = net.net(net.scaling_layer(frames.contiguous(memory_format=torch.channels_last) * 2 - 1))
        return tuple(lpips.normalize_tensor(o) for o in outs)

    def distance(self, f0: tuple[Tensor, ...], f1: tuple[Tensor, ...]) -> Tensor:
        """``(N,)`` LPIPS from two sides' :meth:`features` (linear heads on squared differences, spatial mean)."""
        net = self.__dict__["_net"]
        val = 0
        for lin, a, b in zip(net.lins, f0, f1):
            val = val + lin((a - b) ** 2).mean(dim=(2, 3), keepdim=True)
        return val.reshape(-1).float()

    def _frames(self, g: Tensor, r: Tensor) -> Tensor:
        feats = self.features(torch.cat([g, r]))
        n = g.shape[0]
        return self.distance(tuple(f[:n] for f in feats), tuple(f[n:] for f in feats))

    def _batched_features(self, frames: Tensor) -> tuple[Tensor, ...]:
        step = self.frames_per_batch
        parts = [self.features(frames[i:i + step]) for i in range(0, frames.shape[0], step)]
        return tuple(torch.cat(layer) for layer in zip(*parts))

    def per_video(self, generated: Tensor, reference: Tensor) -> Tensor:
        cache: FeatureCache = self.__dict__["cache"]
        if not cache.enabled:
            return super().per_video(generated, reference)
        rows = []
        for gen, ref in zip(generated, reference):
            f_ref = cache.for_tensor(ref, lambda ref=ref: self._batched_features(to_unit(ref, self.input_range)),
                                     "lpips", self.input_range)
            f_gen = self._batched_features(to_unit(gen, self.input_range))
            rows.append(self.distance(f_gen, f_ref))
        return torch.stack(rows)


def resize_video(video: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear (antialiased) resize of ``(B,T,C,H,W)`` to ``size=(H, W)``, dtype kept."""
    if tuple(video.shape[-2:]) == tuple(size):
        return video
    b, t = video.shape[:2]
    out = F.interpolate(video.flatten(0, 1).float(), size=size, mode="bilinear", align_corners=False, antialias=True)
    out = out.reshape(b, t, *out.shape[1:])
    return out.round().clamp(0, 255).to(torch.uint8) if video.dtype == torch.uint8 else out.to(video.dtype)
