"""Fréchet distance between Gaussians fitted to feature sets (FVD, FID, FGD share it), and the metric base class
FVD and FID share (:class:`FrechetMetric`).

``d² = ‖μ₁−μ₂‖² + Tr(Σ₁ + Σ₂ − 2 (Σ₁Σ₂)^{1/2})`` in float64. The trace of the matrix square root is taken as
``Tr((Σ₁^{1/2} Σ₂ Σ₁^{1/2})^{1/2})`` — the same number, but of a symmetric PSD matrix, so two ``eigh`` calls give it
without the complex round-off and the "singular product" retries of ``scipy.linalg.sqrtm``. Covariances are the
unbiased sample covariance (``np.cov(rowvar=False)``), as in the published FVD/FID code. With fewer samples than
feature dimensions Σ is rank-deficient and the value is noisy: always report the sample count beside it.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from torch import Tensor

from mmgt.metrics.base import SuiteMetric
from mmgt.metrics.cache import FeatureCache

ArrayLike = np.ndarray | torch.Tensor


def _np64(x: ArrayLike) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def _sqrt_psd(mat: np.ndarray) -> np.ndarray:
    """Square root of a symmetric PSD matrix (negative round-off eigenvalues clipped to 0)."""
    w, v = np.linalg.eigh((mat + mat.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def trace_sqrt_product(sigma1: ArrayLike, sigma2: ArrayLike) -> float:
    """``Tr((Σ₁Σ₂)^{1/2})`` for PSD Σ₁, Σ₂ in float64."""
    s1 = _sqrt_psd(_np64(sigma1))
    m = s1 @ _np64(sigma2) @ s1
    w = np.linalg.eigvalsh((m + m.T) / 2)
    return float(np.sqrt(np.clip(w, 0.0, None)).sum())


def frechet_distance(mu1: ArrayLike, sigma1: ArrayLike, mu2: ArrayLike, sigma2: ArrayLike) -> float:
    """Squared Fréchet distance between N(μ₁, Σ₁) and N(μ₂, Σ₂), float64. Clipped at 0 (round-off)."""
    mu1, mu2 = _np64(mu1).reshape(-1), _np64(mu2).reshape(-1)
    sigma1, sigma2 = np.atleast_2d(_np64(sigma1)), np.atleast_2d(_np64(sigma2))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.size, mu1.size):
        raise ValueError(f"shape mismatch: mu {mu1.shape}/{mu2.shape}, sigma {sigma1.shape}/{sigma2.shape}")
    diff = mu1 - mu2
    value = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt_product(sigma1, sigma2)
    return max(float(value), 0.0)


def feature_statistics(features: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance of ``(N, D)`` features in float64 (needs N ≥ 2)."""
    f = _np64(features)
    if f.ndim != 2:
        f = f.reshape(f.shape[0], -1)
    if f.shape[0] < 2:
        raise ValueError(f"need at least 2 feature vectors for a covariance, got {f.shape[0]}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def frechet_distance_from_features(features1: ArrayLike, features2: ArrayLike) -> float:
    """Fréchet distance between the Gaussians fitted to two ``(N, D)`` feature sets (N may differ).

    Non-finite features (a diverged generator, NaN keypoints) give ``nan`` with a warning instead of an obscure
    ``LinAlgError`` from the matrix square root."""
    bad = [name for name, f in (("first", features1), ("second", features2)) if not np.isfinite(_np64(f)).all()]
    if bad:
        warnings.warn(f"Fréchet distance: the {' and '.join(bad)} feature set holds NaN/inf; returning nan",
                      stacklevel=2)
        return math.nan
    mu1, s1 = feature_statistics(features1)
    mu2, s2 = feature_statistics(features2)
    return frechet_distance(mu1, s1, mu2, s2)


def _cat(state: list[Tensor] | Tensor) -> Tensor:
    """A cat-state as one ``(N, D)`` tensor (lists before sync, a tensor after; empty -> (0, 0))."""
    if isinstance(state, Tensor):
        return state if state.ndim == 2 else state.reshape(0, 0)
    return torch.cat(state) if state else torch.zeros(0, 0, dtype=torch.float64)


class FrechetMetric(SuiteMetric):
    """Fréchet distance between network features of generated and reference videos ``(B,T,C,H,W)``.

    What FVD and FID share: features are gathered as cat-states (exact under DDP), :meth:`compute` needs ≥ 2
    samples per side and returns ``nan`` (with a warning) otherwise, ``num_samples`` after compute says how many
    generated samples (clips, frames) it used, and ``reference_cache_mb > 0`` keeps reference videos' features
    (fixed ground truth then runs through the network once; see :mod:`mmgt.metrics.cache`). Subclasses say how a
    batch of videos becomes ``(N, D)`` features (:meth:`features`) and what the cache key depends on. Logged as
    ``<name><suffix>`` with ``<name>_num_<sample_name>`` beside it (``fvd_num_clips``, ``fid_num_frames``).
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = False
    #: what one feature row is, for messages and the count's name ("clips", "frames")
    sample_name = "samples"
    settings = ("input_range", "allow_random_weights", "verify_checksums")

    def __init__(self, *, reference_cache_mb: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.__dict__["cache"] = FeatureCache(int(reference_cache_mb * 2**20))
        self.add_state("gen_features", [], dist_reduce_fx="cat")
        self.add_state("ref_features", [], dist_reduce_fx="cat")
        self.num_samples = 0

    def features(self, video: Tensor) -> Tensor:
        """``(N, D)`` float64 features of a batch of videos ``(B,T,C,H,W)``."""
        raise NotImplementedError

    def cache_key(self) -> tuple:
        """Settings that change :meth:`features` (part of the reference-cache key)."""
        return (type(self).__name__,)

    def reference_features(self, reference: Tensor) -> Tensor:
        """:meth:`features` of reference videos, per video through the reference cache when it is enabled."""
        cache: FeatureCache = self.__dict__["cache"]
        if not cache.enabled:
            return self.features(reference)
        rows = [cache.for_tensor(video, lambda v=video: self.features(v[None]), *self.cache_key())
                for video in reference]
        return torch.cat(rows)

    def update(self, generated: Tensor, reference: Tensor | None = None) -> None:
        """Reference may be None to accumulate generated features only (e.g. against stored statistics)."""
        self.gen_features.append(self.features(generated))
        if reference is not None:
            self.ref_features.append(self.reference_features(reference))

    def compute(self) -> Tensor:
        gen, ref = _cat(self.gen_features), _cat(self.ref_features)
        self.num_samples = int(gen.shape[0])
        if min(gen.shape[0], ref.shape[0]) < 2:
            warnings.warn(f"{type(self).__name__} needs at least 2 {self.sample_name} per side (got "
                          f"{gen.shape[0]} and {ref.shape[0]}); returning nan", stacklevel=2)
            return torch.tensor(math.nan, dtype=torch.float64)
        return torch.tensor(frechet_distance_from_features(gen, ref), dtype=torch.float64)

    def names(self) -> list[str]:
        return [f"{self.name}{self.name_suffix}", f"{self.name}_num_{self.sample_name}"]

    def results(self) -> dict[str, float]:
        value = float(self.compute())  # sets num_samples
        return dict(zip(self.names(), (value, float(self.num_samples))))
