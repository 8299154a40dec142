"""Stage-1 gesture metrics as torchmetrics ``Metric``s (DDP-safe: states are summed or concatenated).

Protocol (all on *normalised* poses from the DataModule, x, y in [-1, 1]; with the default normaliser one
unit = one frame side, so L2 values read as fractions of the frame size):

* :class:`KeypointL2` — mean Euclidean distance between generated and ground-truth keypoints, per region
  (face, lips, hands, body without knees/ankles), over keypoints visible in the ground truth.
* :class:`FrechetGestureDistance` — "FGD-style": Fréchet distance (float64) between Gaussian fits of
  pose-sequence features. The feature extractor is a **fixed random projection** (seeded, no training):
  per sequence, the x, y of all keypoints relative to the neck → [temporal mean, temporal std, mean absolute
  velocity] (804-d) → a fixed Gaussian random projection to ``dim`` (default 32). It is *not* the FGD of the
  literature (which uses a trained motion autoencoder) and is logged as ``fgd_randproj`` to say so; it compares
  runs with each other, not with published numbers.
* :class:`GestureDiversity` — mean pairwise L2 distance between the same features of generated sequences.
* :class:`BeatAlignment` — Bailando/AIST++ beat-align score: for each audio onset, exp(-d²/2σ²) with d the
  distance (frames) to the nearest motion beat (local minimum of smoothed keypoint speed); averaged over onsets.
  Audio onsets are peaks of the positive log-RMS flux of the waveform at 25 fps (640 samples per frame).

:class:`GestureSuite` is the stage-1 suite (``conf/metrics/gesture.yaml``): ``update(generated, reference, vis,
audio)``, ``compute()`` -> ``l2_face, l2_lips, l2_hands, l2_body, fgd_randproj, diversity, diversity_real,
beat_align, beat_align_real`` (the ``_real`` ones: the same metrics on the ground truth, for scale).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torchmetrics.utilities import dim_zero_cat

from mmgt.data.video_io import HOP
from mmgt.metrics.base import Builtin, Suite, SuiteMetric
from mmgt.metrics.frechet import frechet_distance_from_features
from mmgt.pose.layout import BODY, FACE, HANDS, LEG_POINTS, LIPS

REGIONS: dict[str, tuple[int, ...]] = {
    "face": FACE,
    "lips": LIPS,
    "hands": HANDS,
    "body": tuple(i for i in BODY if i not in LEG_POINTS),
}
NECK = 1
FEATURE_SEED = 20240531


class KeypointL2(SuiteMetric):
    """Mean keypoint L2 per region; ``compute()`` -> {region: value}, logged as ``l2_<region>``."""

    full_state_update = False
    name = "l2"
    optional_inputs = ("vis",)

    def __init__(self, regions: dict[str, tuple[int, ...]] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.regions = dict(regions or REGIONS)
        for name in self.regions:
            self.add_state(f"sum_{name}", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(f"n_{name}", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, pred: torch.Tensor, target: torch.Tensor, vis: torch.Tensor | None = None) -> None:
        """``pred``/``target`` (B, N, K, >=2), ``vis`` (B, N, K) bool (default: all)."""
        dist = (pred[..., :2].double() - target[..., :2].double()).norm(dim=-1)
        vis = torch.ones_like(dist, dtype=torch.bool) if vis is None else vis.to(torch.bool)
        for name, idx in self.regions.items():
            m = vis[..., list(idx)]
            setattr(self, f"sum_{name}", getattr(self, f"sum_{name}") + (dist[..., list(idx)] * m).sum())
            setattr(self, f"n_{name}", getattr(self, f"n_{name}") + m.sum())

    def compute(self) -> dict[str, torch.Tensor]:
        return {name: (getattr(self, f"sum_{name}") / getattr(self, f"n_{name}").clamp(min=1)).float()
                for name in self.regions}

    def names(self) -> list[str]:
        return [f"{self.name}_{region}" for region in self.regions]

    def results(self) -> dict[str, float]:
        return {f"{self.name}_{region}": float(v) for region, v in self.compute().items()}


def _projection(in_dim: int, dim: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(FEATURE_SEED)
    return torch.randn(in_dim, dim, generator=g, dtype=torch.float64) / in_dim ** 0.5


def sequence_features(poses: torch.Tensor, dim: int = 32) -> torch.Tensor:
    """(B, N, K, >=2) poses -> (B, dim) fixed random-projection features (see module docstring)."""
    xy = poses[..., :2].double()
    xy = xy - xy[:, :, NECK:NECK + 1]
    vel = (xy[:, 1:] - xy[:, :-1]).abs().mean(1) if xy.shape[1] > 1 else torch.zeros_like(xy[:, 0])
    stats = torch.cat([xy.mean(1).flatten(1), xy.std(1, unbiased=False).flatten(1), vel.flatten(1)], dim=1)
    return stats @ _projection(stats.shape[1], dim).to(stats.device)


class FrechetGestureDistance(SuiteMetric):
    """Fréchet distance of random-projection sequence features, generated vs real (see module docstring); logged
    as ``fgd_randproj`` (not the FGD of the literature)."""

    full_state_update = False
    name = "fgd"
    name_suffix = "_randproj"
    settings = ("feature_dim",)

    def __init__(self, feature_dim: int = 32, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.dim = feature_dim
        self.add_state("real", default=[], dist_reduce_fx="cat")
        self.add_state("fake", default=[], dist_reduce_fx="cat")

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        self.fake.append(sequence_features(pred, self.dim))
        self.real.append(sequence_features(target, self.dim))

    def compute(self) -> torch.Tensor:
        real, fake = dim_zero_cat(self.real), dim_zero_cat(self.fake)
        if len(real) < 2 or len(fake) < 2:
            return torch.tensor(float("nan"))
        return torch.tensor(frechet_distance_from_features(real, fake), dtype=torch.float32)


class GestureDiversity(SuiteMetric):
    """Mean pairwise L2 distance between sequence features of generated samples (higher = more varied)."""

    full_state_update = False
    name = "diversity"
    inputs = ("generated",)
    settings = ("feature_dim",)

    def __init__(self, feature_dim: int = 32, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.dim = feature_dim
        self.add_state("feats", default=[], dist_reduce_fx="cat")

    def update(self, pred: torch.Tensor) -> None:
        self.feats.append(sequence_features(pred, self.dim))

    def compute(self) -> torch.Tensor:
        f = dim_zero_cat(self.feats)
        n = f.shape[0]
        if n < 2:
            return torch.tensor(float("nan"))
        d = torch.cdist(f, f)
        return (d.sum() / (n * (n - 1))).float()


def audio_onsets(audio: torch.Tensor, hop: int = HOP) -> torch.Tensor:
    """(B, n*hop) waveform -> (B, n) bool onsets: peaks of positive log-RMS flux above mean + 0.5 std."""
    b = audio.shape[0]
    n = audio.shape[1] // hop
    rms = audio[:, :n * hop].double().view(b, n, hop).pow(2).mean(-1).sqrt()
    flux = F.relu(torch.diff(torch.log(rms + 1e-4), dim=1, prepend=torch.log(rms[:, :1] + 1e-4)))
    pad = F.pad(flux, (1, 1), value=-1.0)
    peak = (flux > pad[:, :-2]) & (flux >= pad[:, 2:])
    thr = flux.mean(1, keepdim=True) + 0.5 * flux.std(1, keepdim=True)
    return peak & (flux > thr)


def motion_beats(poses: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """(B, N, K, >=2) poses -> (B, N) bool motion beats: local minima of Gaussian-smoothed mean keypoint speed."""
    idx = list(REGIONS["body"]) + list(HANDS)
    xy = poses[:, :, idx, :2].double()
    speed = (xy[:, 1:] - xy[:, :-1]).norm(dim=-1).mean(-1)
    speed = torch.cat([speed[:, :1], speed], dim=1)  # frame i's speed = |p_i - p_{i-1}|
    if smooth > 0:
        r = max(1, int(round(3 * smooth)))
        k = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=torch.float64) / smooth) ** 2).to(speed.device)
        speed = F.conv1d(F.pad(speed[:, None], (r, r), mode="replicate"), (k / k.sum()).view(1, 1, -1))[:, 0]
    # strict minima (tolerance for round-off on plateaus); the first and last frames are never beats
    tol = 1e-6 * speed.abs().amax(1, keepdim=True).clamp(min=1e-12)
    pad = F.pad(speed, (1, 1), value=float("-inf"))
    return (speed < pad[:, :-2] - tol) & (speed < pad[:, 2:] - tol)


class BeatAlignment(SuiteMetric):
    """Beat-align score of poses vs the audio they were generated for (higher = motion beats on onsets)."""

    full_state_update = False
    name = "beat_align"
    inputs = ("generated", "audio")
    settings = ("beat_sigma", "hop")

    def __init__(self, beat_sigma: float = 3.0, hop: int = HOP, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.sigma, self.hop = beat_sigma, hop
        self.add_state("score", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, poses: torch.Tensor, audio: torch.Tensor) -> None:
        """``poses`` (B, N, K, C), ``audio`` (B, >= N*hop) waveform aligned with the poses."""
        n = poses.shape[1]
        onsets = audio_onsets(audio[:, :n * self.hop], self.hop)
        beats = motion_beats(poses)
        frames = torch.arange(n, device=poses.device, dtype=torch.float64)
        for on, bt in zip(onsets, beats):
            if not on.any() or not bt.any():
                continue
            d = (frames[on][:, None] - frames[bt][None]).abs().amin(1)
            self.score += torch.exp(-(d ** 2) / (2 * self.sigma ** 2)).sum()
            self.count += on.sum()

    def compute(self) -> torch.Tensor:
        return (self.score / self.count.clamp(min=1)).float()


class GestureSuite(Suite):
    """The stage-1 metrics of generated vs ground-truth poses ``(B, N, K, >=2)`` (normalised), plus any configured
    metric (a ``_target_`` entry).

    Args:
        feature_dim: random-projection feature size of FGD and diversity.
        beat_sigma: beat-align tolerance in frames.
        hop: audio samples per pose frame (beat alignment).
        entries: ``l2, fgd, diversity, diversity_real, beat_align, beat_align_real``: ``True``/``False`` or kwargs
            (``enabled: false`` off); any other key: a metric named by ``_target_``.
    """

    arguments: ClassVar[tuple[str, ...]] = ("vis", "audio")
    builtins: ClassVar[Mapping[str, Builtin]] = {
        "l2": Builtin(KeypointL2),
        "fgd": Builtin(FrechetGestureDistance),
        "diversity": Builtin(GestureDiversity),
        "diversity_real": Builtin(GestureDiversity, defaults={"name": "diversity_real", "inputs": ("reference",)}),
        "beat_align": Builtin(BeatAlignment),
        "beat_align_real": Builtin(BeatAlignment, defaults={"name": "beat_align_real",
                                                            "inputs": ("reference", "audio")}),
    }

    def __init__(self, feature_dim: int = 32, beat_sigma: float = 3.0, hop: int = HOP, **entries: Any) -> None:
        super().__init__(entries, {"feature_dim": int(feature_dim), "beat_sigma": float(beat_sigma), "hop": int(hop)})

    def update(self, generated: torch.Tensor, reference: torch.Tensor | None = None,  # type: ignore[override]
               vis: torch.Tensor | None = None, audio: torch.Tensor | None = None) -> None:
        """``vis`` (B, N, K) bool visibility of the ground truth; ``audio`` (B, >= N*hop) waveform (beat alignment is
        skipped without it)."""
        super().update(generated, reference, vis=vis, audio=audio)


class GestureMetrics(GestureSuite):
    """The surface ``mmgt.lit.smga`` used before suites were configured (``.l2``, float32 inputs, tensors from
    ``compute``), on the same members; remove once that module builds its metrics with ``build_suite``."""

    @property
    def l2(self) -> KeypointL2:
        return self.metrics["l2"]

    def update(self, generated: torch.Tensor, reference: torch.Tensor | None = None,  # type: ignore[override]
               vis: torch.Tensor | None = None, audio: torch.Tensor | None = None) -> None:
        super().update(generated.float(), None if reference is None else reference.float(), vis, audio)

    def compute(self) -> dict[str, torch.Tensor]:  # type: ignore[override]
        return {k: torch.tensor(v) for k, v in super().compute().items()}
