"""Per-frame reconstruction metrics: PSNR, SSIM, LPIPS (DESIGN §6).

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
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from mmgt.metrics import weights as W


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


class _PerFrameMetric(Metric):
    """Mean over clips of the mean over frames of a per-frame score."""

    full_state_update = False
    is_differentiable = False
    #: suffix appended to the metric's logged name (``_randinit`` for random-init feature nets)
    name_suffix = ""

    def __init__(self, input_range: tuple[float, float] = (-1.0, 1.0), frames_per_batch: int = 256, **kwargs):
        super().__init__(**kwargs)
        self.input_range = tuple(input_range)
        self.frames_per_batch = int(frames_per_batch)
        self.add_state("total", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("clips", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def per_frame(self, generated: Tensor, reference: Tensor) -> Tensor:
        """``(B, T)`` per-frame values of two videos (B,T,C,H,W) already in [0, 1]."""
        b, t = generated.shape[:2]
        g, r = generated.flatten(0, 1), reference.flatten(0, 1)
        vals = [self._frames(g[i:i + self.frames_per_batch], r[i:i + self.frames_per_batch])
                for i in range(0, g.shape[0], self.frames_per_batch)]
        return torch.cat(vals).reshape(b, t)

    def _frames(self, g: Tensor, r: Tensor) -> Tensor:  # (N,C,H,W) in [0,1] -> (N,)
        raise NotImplementedError

    def update(self, generated: Tensor, reference: Tensor) -> None:
        check_pair(generated, reference)
        with torch.no_grad():
            vals = self.per_frame(to_unit(generated, self.input_range), to_unit(reference, self.input_range))
        per_clip = vals.double().mean(dim=1)
        self.last_per_clip = per_clip.tolist()  # not a state: per-video reports of the latest batch
        self.total += per_clip.sum()
        self.clips += vals.shape[0]

    def compute(self) -> Tensor:
        if int(self.clips) == 0:
            return torch.tensor(float("nan"), dtype=torch.float64)
        return self.total / self.clips


class PSNR(_PerFrameMetric):
    """Per-frame PSNR in dB on [0, 1] frames (``data_range=1``), capped at ``cap`` for identical frames."""

    higher_is_better = True

    def __init__(self, cap: float | None = 100.0, **kwargs):
        super().__init__(**kwargs)
        self.cap = cap

    def _frames(self, g: Tensor, r: Tensor) -> Tensor:
        v = peak_signal_noise_ratio(g, r, data_range=1.0, reduction="none", dim=(1, 2, 3))
        return v.clamp(max=self.cap) if self.cap is not None else v


class SSIM(_PerFrameMetric):
    """Per-frame SSIM (Gaussian window 11, σ=1.5, K=(0.01, 0.03), ``data_range=1``, mean over channels).

    The SSIM map comes from torchmetrics; its 5-pixel border (where the window leaves the image) is excluded from
    the mean, as in scikit-image / the Wang et al. reference code (torchmetrics' own mean includes the
    reflection-padded border, which reads a few 1e-3 higher on small frames).
    """

    higher_is_better = True
    border = 5  # (11 - 1) // 2

    def _frames(self, g: Tensor, r: Tensor) -> Tensor:
        _, ssim_map = structural_similarity_index_measure(g, r, data_range=1.0, reduction="none",
                                                          return_full_image=True)
        b = self.border
        return ssim_map[..., b:-b, b:-b].mean(dim=(1, 2, 3))


# ---------------------------------------------------------------- LPIPS
_ALEX_SLICES = ((0, 2), (2, 5), (5, 8), (8, 10), (10, 12))  # lpips' split of torchvision alexnet.features


def build_lpips(alexnet_path: str | Path | None, *, allow_random_weights: bool = False,
                verify_checksums: bool = True) -> tuple[torch.nn.Module, bool]:
    """lpips 0.1 AlexNet model with the backbone from a local torchvision file; returns ``(net, randinit)``.

    The lpips package ships its linear heads (``weights/v0.1/alex.pth``) but would download the AlexNet trunk;
    here the trunk comes from ``metrics.weights.alexnet`` (``alexnet-owt-7be5be79.pth``) or, when allowed and the
    file is absent, stays random (``randinit=True``).
    """
    import lpips

    randinit = allow_random_weights and not W.available("alexnet", alexnet_path)
    path = None if randinit else W.resolve("alexnet", alexnet_path, verify_checksum=verify_checksums)
    with warnings.catch_warnings(), torch.random.fork_rng(devices=[]):
        warnings.simplefilter("ignore")
        torch.manual_seed(0)  # a random trunk is the same in every process/rank; global RNG untouched
        net = lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, verbose=False)
    if path is not None:
        sd = torch.load(path, map_location="cpu", weights_only=True)
        load_alexnet_trunk(net.net, sd)
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

    The network is kept out of the module tree (not in checkpoints, not seen by DDP) and moved to the input's
    device on first use.
    """

    higher_is_better = False

    def __init__(self, alexnet_path: str | Path | None = None, *, allow_random_weights: bool = False,
                 verify_checksums: bool = True, frames_per_batch: int = 64, **kwargs):
        super().__init__(frames_per_batch=frames_per_batch, **kwargs)
        net, randinit = build_lpips(alexnet_path, allow_random_weights=allow_random_weights,
                                    verify_checksums=verify_checksums)
        self.__dict__["_net"] = net  # unregistered on purpose
        self.randinit = randinit
        self.name_suffix = "_randinit" if randinit else ""

    def _frames(self, g: Tensor, r: Tensor) -> Tensor:
        net = ensure_device(self.__dict__["_net"], g.device)
        return net(g * 2 - 1, r * 2 - 1).reshape(-1).float()


def resize_video(video: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear (antialiased) resize of ``(B,T,C,H,W)`` to ``size=(H, W)``, dtype kept."""
    if tuple(video.shape[-2:]) == tuple(size):
        return video
    b, t = video.shape[:2]
    out = F.interpolate(video.flatten(0, 1).float(), size=size, mode="bilinear", align_corners=False, antialias=True)
    out = out.reshape(b, t, *out.shape[1:])
    return out.round().clamp(0, 255).to(torch.uint8) if video.dtype == torch.uint8 else out.to(video.dtype)
