"""The video metric suite the LightningModules and ``mmgt.evaluate`` call: one ``update``, one ``compute``.

Names are stable (DESIGN §6): ``psnr, ssim, lpips, fvd, fvd_num_clips, sync_c, sync_d, sync_offset,
sync_padded_clips`` (+ ``fid, fid_num_frames`` when FID is enabled); a metric
whose feature network is random-init gets ``_randinit`` (``lpips_randinit``, ``fvd_randinit``, ``sync_c_randinit``
...), a non-standard FVD resolution/clip length ``_r<size>``/``_<n>f`` — a number that is not the published protocol
never carries the bare name. Every member is a torchmetrics ``Metric`` with sum/cat states, so ``compute`` is exact
under DDP; feature networks live outside the module tree (no checkpoint bloat, invisible to DDP).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
from torch import Tensor, nn

from mmgt.metrics.fid import FrechetInceptionDistance
from mmgt.metrics.i3d import FrechetVideoDistance
from mmgt.metrics.syncnet import SyncScore
from mmgt.metrics.video import LPIPS, PSNR, SSIM


def _opts(value: bool | Mapping | None) -> dict[str, Any] | None:
    """``False/None`` -> disabled, ``True`` -> defaults, a mapping -> its kwargs (``enabled: false`` disables)."""
    if value is None or value is False:
        return None
    if value is True:
        return {}
    try:
        from mmgt.utils.config import to_plain

        value = to_plain(value)
    except ImportError:  # pragma: no cover
        pass
    opts = dict(value)
    return opts if opts.pop("enabled", True) else None


class MetricSuite(nn.Module):
    """PSNR, SSIM, LPIPS, FVD, Sync-C/D (and optionally FID) over batches of generated vs reference videos
    ``(B,T,C,H,W)``.

    Args:
        weights: ``{"i3d": path, "syncnet": path, "alexnet": path, "inception": path}`` (config
            ``metrics.weights``; ``inception`` only for FID).
        allow_random_weights: random-init feature nets when a file is missing (tests/quickstart); names get
            ``_randinit``. Otherwise a missing file raises ``MissingMetricWeightsError`` at construction.
        verify_checksums: check files against the published checksums of :mod:`mmgt.metrics.weights`.
        input_range: value range of float videos (uint8 videos are always [0, 255]).
        psnr, ssim, lpips, fvd, sync, fid: ``True``/``False`` or kwargs of the metric class (``enabled: false``
            off). FID is off unless asked for: an Inception pass per frame is the suite's most expensive part.
    """

    def __init__(self, weights: Mapping[str, Any] | None = None, *, allow_random_weights: bool = False,
                 verify_checksums: bool = True, input_range: tuple[float, float] | list[float] = (-1.0, 1.0),
                 psnr: bool | Mapping = True, ssim: bool | Mapping = True, lpips: bool | Mapping = True,
                 fvd: bool | Mapping = True, sync: bool | Mapping = True, fid: bool | Mapping = False):
        super().__init__()
        w = dict(_opts(weights) or {})
        common = {"input_range": tuple(input_range)}
        nets = {"allow_random_weights": allow_random_weights, "verify_checksums": verify_checksums}
        self.metrics = nn.ModuleDict()
        if (o := _opts(psnr)) is not None:
            self.metrics["psnr"] = PSNR(**common, **o)
        if (o := _opts(ssim)) is not None:
            self.metrics["ssim"] = SSIM(**common, **o)
        if (o := _opts(lpips)) is not None:
            self.metrics["lpips"] = LPIPS(w.get("alexnet"), **nets, **common, **o)
        if (o := _opts(fvd)) is not None:
            self.metrics["fvd"] = FrechetVideoDistance(w.get("i3d"), **nets, **common, **o)
        if (o := _opts(sync)) is not None:
            self.metrics["sync"] = SyncScore(w.get("syncnet"), **nets, **common, **o)
        if (o := _opts(fid)) is not None:
            self.metrics["fid"] = FrechetInceptionDistance(w.get("inception"), **nets, **common, **o)
        self._warned_audio = False

    @property
    def names(self) -> list[str]:
        """The keys :meth:`compute` returns (with suffixes)."""
        out = []
        for key, m in self.metrics.items():
            sfx = getattr(m, "name_suffix", "")
            if key == "sync":
                out += [f"sync_c{sfx}", f"sync_d{sfx}", f"sync_offset{sfx}", "sync_padded_clips"]
            elif key == "fvd":
                out += [f"fvd{sfx}", "fvd_num_clips"]
            elif key == "fid":
                out += [f"fid{sfx}", "fid_num_frames"]
            else:
                out.append(f"{key}{sfx}")
        return out

    def update(self, generated: Tensor, reference: Tensor, audio: Tensor | np.ndarray | None = None,
               keypoints: Tensor | np.ndarray | None = None, boxes: Tensor | np.ndarray | None = None) -> None:
        """Add a batch. ``audio`` (B, S) 16 kHz aligned with the frames (25 fps); ``keypoints`` (B,T,134,3) in
        pixels of these frames (the driving pose) or face ``boxes`` (B,T,4) locate the mouth for Sync-C/D."""
        for key, m in self.metrics.items():
            if key == "sync":
                if audio is None:
                    if not self._warned_audio:
                        warnings.warn("MetricSuite.update without audio: Sync-C/D not updated", stacklevel=2)
                        self._warned_audio = True
                    continue
                m.update(generated, audio, keypoints=keypoints, boxes=boxes)
            else:
                m.update(generated, reference)

    def last_per_clip(self) -> dict[str, list[float]]:
        """Per-clip values of the latest :meth:`update` (PSNR/SSIM/LPIPS/Sync; FVD is set-level), same names."""
        out: dict[str, list[float]] = {}
        for key, m in self.metrics.items():
            sfx = getattr(m, "name_suffix", "")
            if key == "sync":
                rows = getattr(m, "last_per_clip", [])
                for i, name in enumerate(("sync_offset", "sync_c", "sync_d")):
                    out[f"{name}{sfx}"] = [float(r[i]) for r in rows]
            elif key not in ("fvd", "fid"):
                out[f"{key}{sfx}"] = list(getattr(m, "last_per_clip", []))
        return out

    def compute(self) -> dict[str, float]:
        """All values as floats (synchronised across ranks); ``nan`` for a metric that saw no data."""
        out: dict[str, float] = {}
        for key, m in self.metrics.items():
            sfx = getattr(m, "name_suffix", "")
            if key == "sync":
                for k, v in m.compute().items():
                    out[k if k.endswith("_clips") else f"{k}{sfx}"] = float(v)
            elif key == "fvd":
                out[f"fvd{sfx}"] = float(m.compute())
                out["fvd_num_clips"] = float(m.num_clips)
            elif key == "fid":
                out[f"fid{sfx}"] = float(m.compute())
                out["fid_num_frames"] = float(m.num_frames)
            else:
                out[f"{key}{sfx}"] = float(m.compute())
        return out

    def reset(self) -> None:
        for m in self.metrics.values():
            m.reset()


VideoMetrics = MetricSuite
