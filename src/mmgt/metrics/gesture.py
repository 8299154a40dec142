"""Stage-1 gesture metrics as torchmetrics ``Metric``s (DDP-safe: states are summed or concatenated).

Protocol (all on *normalised* poses from the DataModule, x, y in [-1, 1]; with the default normaliser one unit = one
frame side, so L2 values read as fractions of the frame size). Points the stage-1 loss never supervises (knees,
ankles, feet) enter no metric; where the suite gets the ground truth's visibility (``vis``), points invisible in the
ground truth at a frame are masked in generated and real poses alike.

* :class:`KeypointL2` — mean Euclidean distance between generated and ground-truth keypoints, per region (face,
  lips, hands, body without knees/ankles), over keypoints visible in the ground truth.
* :class:`FrechetGestureDistance` — Fréchet distance (float64) between Gaussians fitted to sequence features of
  generated and real poses. **``fgd``** only with a trained motion encoder (``encoder``: the checkpoint written by
  ``python -m mmgt.train experiment=fgd_encoder``, :mod:`mmgt.models.fgd`, Yoon et al. 2020's conv sequence
  autoencoder per pose part): the features are its codes of non-overlapping windows of the encoder's length
  (shorter sequences are skipped, never padded); ``fgd_body``, ``fgd_hands``, ``fgd_face`` are the same distance on
  each part's block and ``fgd_num_windows`` the generated sample count. Without an encoder the features are a
  fixed seeded random projection of per-part summary statistics (temporal mean, std, mean absolute velocity) and
  the value is logged as **``fgd_randproj``**: it compares runs with each other, not with published numbers (it is
  blind to temporal order: a time-reversed motion scores 0).
* :class:`GestureDiversity` — on the same features, two published definitions (each logs the ground truth's value
  beside, ``<name>_real``): ``bailando`` (Bailando, Siyao et al. 2022): features z-scored by the *real* set's
  mean and standard deviation (population std, + 1e-10), then the mean L2 distance over all pairs;
  ``diffgesture`` (Zhu et al. 2023): the mean L1 distance between the first ``n_pairs`` (500) samples (in
  lexicographic order, so DDP gives the same value) and the same
  number drawn by a random permutation (seeded). Names ``diversity_<variant>`` (+ ``_randproj`` without an encoder).
* :class:`~mmgt.metrics.beats.BeatAlignment` — beat-align score: motion beats are the local minima
  (``scipy.signal.argrelextrema``) of the mean keypoint speed (body + hands), Gaussian-smoothed
  (``scipy.ndimage.gaussian_filter1d``); audio events are librosa's (``onset.onset_detect`` or ``beat.beat_track``,
  times in seconds); per clip, the mean over events of exp(-d²/2σ²) with d the time to the nearest motion beat, σ in
  seconds. Variants: ``bailando`` (librosa beats, σ = 0.05 s = 3 frames at 60 fps, smoothing 5/60 s, mean of per-clip
  scores) and ``diffgesture`` (librosa onsets, σ = 0.1 s, no smoothing, clips weighted by their onset count as
  DiffGesture's script averages them; its motion beats come from joint-angle speed of 3-D direction vectors, here from
  keypoint speed). Names ``beat_align_<variant>`` and ``beat_align_<variant>_real``. Clips without an audio event or
  without a motion beat are not scored (counted in :meth:`BeatAlignment.protocol`). Without smoothing a frozen pose
  with detector jitter has a speed minimum every few frames and scores almost as high as motion locked to the onsets.

Each set-level metric's :meth:`protocol` says what its number is (variant, feature network file and sha256, sample
counts). :class:`GestureSuite` is the stage-1 suite (``conf/metrics/gesture.yaml``): ``update(generated, reference,
vis, audio)``, ``compute()`` -> ``l2_*``, ``fgd*``, ``diversity_*``, ``beat_align_*``.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import torch
from torchmetrics.utilities import dim_zero_cat

from mmgt.data.video_io import HOP, SAMPLE_RATE
from mmgt.metrics.base import Builtin, Suite, SuiteMetric
from mmgt.metrics.beats import BeatAlignment
from mmgt.metrics.frechet import frechet_distance_from_features
from mmgt.models.fgd import PART_GROUPS, MotionAutoencoder, MotionAutoencoderConfig, part_inputs
from mmgt.pose.layout import BODY, FACE, HANDS, LEG_POINTS, LIPS

log = logging.getLogger(__name__)

REGIONS: dict[str, tuple[int, ...]] = {
    "face": FACE,
    "lips": LIPS,
    "hands": HANDS,
    "body": tuple(i for i in BODY if i not in LEG_POINTS),
}
FEATURE_SEED = 20240531
ENCODER_KIND = "fgd_encoder"


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


# --------------------------------------------------------------------------------------------------- features


def _projection(in_dim: int, dim: int, part: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(FEATURE_SEED + part)
    return torch.randn(in_dim, dim, generator=g, dtype=torch.float64) / in_dim ** 0.5


def sequence_features(poses: torch.Tensor, dim: int = 32, vis: torch.Tensor | None = None) -> torch.Tensor:
    """(B, N, K, >=2) poses -> (B, 3·dim) random-projection features: per part (body, hands, face, inputs as
    :func:`mmgt.models.fgd.part_inputs`) [temporal mean, std, mean absolute velocity] projected to ``dim``."""
    out = []
    for i, x in enumerate(part_inputs(poses, vis).values()):
        x = x.double()
        vel = (x[:, 1:] - x[:, :-1]).abs().mean(1) if x.shape[1] > 1 else torch.zeros_like(x[:, 0])
        stats = torch.cat([x.mean(1), x.std(1, unbiased=False), vel], dim=1)
        out.append(stats @ _projection(stats.shape[1], dim, i).to(stats.device))
    return torch.cat(out, dim=1)


_ENCODERS: dict[tuple[str, int, int], tuple[MotionAutoencoder, dict[str, Any]]] = {}


def load_fgd_encoder(path: str | Path, sha256: str | None = None) -> tuple[MotionAutoencoder, dict[str, Any]]:
    """The trained FGD encoder of an ``experiment=fgd_encoder`` checkpoint (a ``.ckpt`` file or its run folder) and
    what identifies it (path, sha256, training step, window length). Read with ``weights_only=True``; the stored
    architecture is plain data checked key by key; a file of another kind, or with another ``sha256`` than the one
    given, is refused."""
    from mmgt import checkpoints
    from mmgt.errors import CheckpointError
    from mmgt.metrics.weights import ChecksumMismatchError, file_digests

    p = checkpoints.resolve(path, "metrics.encoder")
    stat = p.stat()
    key = (str(p.resolve()), stat.st_mtime_ns, stat.st_size)
    if key not in _ENCODERS:
        digest, _ = file_digests(p)
        ckpt = checkpoints.load_torch(p, "FGD encoder checkpoint")
        rec = ckpt.get("mmgt") if isinstance(ckpt, Mapping) else None
        kind = rec.get("kind") if isinstance(rec, Mapping) else None
        if kind != ENCODER_KIND or "state_dict" not in ckpt:
            raise CheckpointError(f"{p} is not an FGD encoder checkpoint (recorded kind {kind!r}, expected "
                                  f"{ENCODER_KIND!r}); train one with `python -m mmgt.train experiment=fgd_encoder`")
        hp = ckpt.get("hyper_parameters") or {}
        try:
            net = MotionAutoencoder(MotionAutoencoderConfig.from_dict(hp.get("net")))
        except (TypeError, ValueError) as err:
            raise CheckpointError(f"{p}: stored FGD encoder architecture `net` = {hp.get('net')!r}: {err}") from err
        state = {k[len("net."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
        checkpoints.check_state(p, net, state, "metrics.encoder")
        net.load_state_dict(state)
        bad = checkpoints.non_finite(state)
        if bad:
            raise CheckpointError(f"{p}: {len(bad)} FGD encoder tensors hold NaN/inf (e.g. {', '.join(bad[:3])})")
        info = {"encoder": str(p), "encoder_sha256": digest, "encoder_step": int(ckpt.get("global_step", -1)),
                "window": net.cfg.length, "parts": list(net.cfg.parts),
                "encoder_data": dict(hp.get("data_info") or {})}
        _ENCODERS[key] = (net.eval().requires_grad_(False), info)
    net, info = _ENCODERS[key]
    if sha256 and info["encoder_sha256"] != str(sha256).lower():
        raise ChecksumMismatchError(f"{p}: sha256 {info['encoder_sha256']} is not the configured "
                                    f"metrics.encoder_sha256 {sha256}")
    return net, dict(info)


class PoseFeatures:
    """The sequence features FGD and diversity share: a trained encoder's codes of non-overlapping windows of its
    length (``trained``), or the random projection of whole sequences (``sequence_features``)."""

    def __init__(self, encoder: str | Path | None = None, encoder_sha256: str | None = None,
                 feature_dim: int = 32) -> None:
        self.feature_dim = int(feature_dim)
        self.net: MotionAutoencoder | None = None
        self.info: dict[str, Any] = {"features": "random projection", "feature_dim": self.feature_dim}
        if encoder not in (None, ""):
            self.net, info = load_fgd_encoder(encoder, encoder_sha256)  # type: ignore[arg-type]
            self.info = {"features": "trained motion encoder (Yoon et al. 2020 conv autoencoder per part)", **info}

    @property
    def trained(self) -> bool:
        return self.net is not None

    @property
    def suffix(self) -> str:
        """Name suffix of a number computed on these features (never the bare name without a trained encoder)."""
        return "" if self.trained else "_randproj"

    def part_slices(self) -> dict[str, slice]:
        if self.net is not None:
            return self.net.part_slices()
        d = self.feature_dim
        return {p: slice(i * d, (i + 1) * d) for i, p in enumerate(PART_GROUPS)}

    def windows(self, n_frames: int) -> int:
        """How many feature rows one sequence of ``n_frames`` gives (0: too short for the encoder)."""
        return n_frames // self.net.cfg.length if self.net is not None else 1

    @torch.no_grad()
    def __call__(self, poses: torch.Tensor, vis: torch.Tensor | None = None) -> torch.Tensor:
        """(B, N, K, >=2) poses -> (B · windows, D) float64 features ((0, D) when N is shorter than the window)."""
        if self.net is None:
            return sequence_features(poses, self.feature_dim, vis)
        from mmgt.metrics.video import ensure_device

        net = ensure_device(self.net, poses.device)
        length, w = net.cfg.length, self.windows(poses.shape[1])
        if w == 0:
            return torch.zeros(0, net.feature_dim, dtype=torch.float64, device=poses.device)
        b = poses.shape[0]
        cut = poses[:, :w * length].reshape(b * w, length, *poses.shape[2:])
        v = None if vis is None else vis[:, :w * length].reshape(b * w, length, vis.shape[-1])
        return net.encode(cut.float(), v).double()


class _FeatureMetric(SuiteMetric):
    """A metric on :class:`PoseFeatures` (``features`` from the suite, or its own from ``encoder``)."""

    settings = ("feature_dim", "encoder", "encoder_sha256", "features")

    def __init__(self, feature_dim: int = 32, *, encoder: str | None = None, encoder_sha256: str | None = None,
                 features: PoseFeatures | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        own = encoder not in (None, "") or features is None
        self.__dict__["features"] = PoseFeatures(encoder, encoder_sha256, feature_dim) if own else features
        self.name_suffix = self.features.suffix
        self.add_state("skipped", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    @property
    def features(self) -> PoseFeatures:
        return self.__dict__["features"]

    def _features(self, poses: torch.Tensor, vis: torch.Tensor | None) -> torch.Tensor:
        f = self.features(poses, vis)
        if f.shape[0] == 0:
            self.skipped += poses.shape[0]
            warnings.warn(f"{self.name}: {poses.shape[1]}-frame sequences are shorter than the FGD encoder's "
                          f"{self.features.info.get('window')}-frame window; not scored", stacklevel=3)
        return f


class FrechetGestureDistance(_FeatureMetric):
    """Fréchet distance of pose-sequence features, generated vs real: ``fgd`` with a trained encoder (+ per part and
    the window count), ``fgd_randproj`` with the random projection (module docstring)."""

    full_state_update = False
    name = "fgd"
    optional_inputs = ("vis",)

    def __init__(self, feature_dim: int = 32, **kwargs: Any) -> None:
        super().__init__(feature_dim, **kwargs)
        self.add_state("real", default=[], dist_reduce_fx="cat")
        self.add_state("fake", default=[], dist_reduce_fx="cat")

    def update(self, pred: torch.Tensor, target: torch.Tensor, vis: torch.Tensor | None = None) -> None:
        """``pred``/``target`` (B, N, K, >=2); ``vis`` (B, N, K) the ground truth's visibility, applied to both."""
        self.fake.append(self._features(pred, vis))
        self.real.append(self._features(target, vis))

    def _sets(self) -> tuple[torch.Tensor, torch.Tensor]:
        return _rows(self.real), _rows(self.fake)

    def compute(self) -> torch.Tensor:
        real, fake = self._sets()
        if len(real) < 2 or len(fake) < 2:
            return torch.tensor(float("nan"))
        return torch.tensor(frechet_distance_from_features(real, fake), dtype=torch.float32)

    def names(self) -> list[str]:
        if not self.features.trained:
            return [f"{self.name}{self.name_suffix}"]
        return [self.name, *(f"{self.name}_{p}" for p in self.features.part_slices()), f"{self.name}_num_windows"]

    def results(self) -> dict[str, float]:
        """``{}`` with a trained encoder when no sequence held one of its windows (the protocol was not met: e.g.
        1- or 12-frame clips for a 32-frame encoder), rather than ``nan`` under the standard name."""
        if self.features.trained and self.update_count and len(_rows(self.fake)) == 0:
            return {}
        out = {self.names()[0]: float(self.compute())}
        if self.features.trained:
            real, fake = self._sets()
            ok = len(real) >= 2 and len(fake) >= 2
            for part, sl in self.features.part_slices().items():
                value = frechet_distance_from_features(real[:, sl], fake[:, sl]) if ok else math.nan
                out[f"{self.name}_{part}"] = value
            out[f"{self.name}_num_windows"] = float(len(fake))
        return out

    def protocol(self) -> dict[str, Any]:
        """What the number is: the metric, its features (encoder file and sha256), sample counts."""
        real, fake = self._sets()
        return {"metric": self.names()[0], "definition": "Fréchet distance of Gaussian fits (float64)",
                **self.features.info, "num_generated": int(len(fake)), "num_real": int(len(real)),
                "skipped_sequences": int(self.skipped)}


def _rows(state: list[torch.Tensor] | torch.Tensor) -> torch.Tensor:
    if isinstance(state, torch.Tensor):
        return state.double()
    return dim_zero_cat(state).double() if state else torch.zeros(0, 0, dtype=torch.float64)


DIVERSITY_VARIANTS = ("bailando", "diffgesture")


def diversity_bailando(features: torch.Tensor, real: torch.Tensor) -> float:
    """Mean pairwise L2 distance of ``features`` z-scored by ``real``'s mean and population std (+ 1e-10)."""
    f, r = features.double(), real.double()
    if len(f) < 2 or len(r) < 1:
        return math.nan
    z = (f - r.mean(0)) / (r.std(0, unbiased=False) + 1e-10)
    n = len(z)
    return float(torch.pdist(z).sum() / (n * (n - 1) / 2))


def lexicographic(rows: torch.Tensor) -> torch.Tensor:
    """``rows`` sorted lexicographically (first column, then the next, ...): an order that does not depend on the
    order samples arrived in (DDP ranks, shuffled loaders)."""
    idx = torch.arange(len(rows), device=rows.device)
    for c in reversed(range(rows.shape[1])):
        idx = idx[torch.argsort(rows[idx, c], stable=True)]
    return rows[idx]


def diversity_diffgesture(features: torch.Tensor, n_pairs: int = 500, seed: int = 0) -> float:
    """Mean L1 distance between the first ``min(N, n_pairs)`` rows and as many rows of a seeded random permutation,
    rows taken in :func:`lexicographic` order so the value does not depend on how the samples were gathered."""
    f = features.double()
    if len(f) < 2:
        return math.nan
    f = lexicographic(f)
    n = min(len(f), int(n_pairs))
    perm = torch.randperm(len(f), generator=torch.Generator().manual_seed(int(seed)))[:n]
    return float((f[:n] - f[perm.to(f.device)]).abs().sum(-1).mean())


class GestureDiversity(_FeatureMetric):
    """Diversity of generated (and, beside it, real) pose sequences in a published definition (module docstring)."""

    full_state_update = False
    name = "diversity"
    inputs = ("generated",)
    optional_inputs = ("reference", "vis")

    def __init__(self, feature_dim: int = 32, *, variant: str = "bailando", n_pairs: int = 500, seed: int = 0,
                 name: str | None = None, **kwargs: Any) -> None:
        if variant not in DIVERSITY_VARIANTS:
            raise ValueError(f"diversity variant {variant!r}: expected one of {DIVERSITY_VARIANTS}")
        super().__init__(feature_dim, name=name or f"diversity_{variant}", **kwargs)
        self.variant, self.n_pairs, self.seed = variant, int(n_pairs), int(seed)
        self.add_state("fake", default=[], dist_reduce_fx="cat")
        self.add_state("real", default=[], dist_reduce_fx="cat")

    def update(self, pred: torch.Tensor, reference: torch.Tensor | None = None,
               vis: torch.Tensor | None = None) -> None:
        """``pred`` (B, N, K, >=2); ``reference`` the ground truth (Bailando's z-scoring needs it)."""
        self.fake.append(self._features(pred, vis))
        if reference is not None:
            self.real.append(self._features(reference, vis))

    def _value(self, f: torch.Tensor, real: torch.Tensor) -> float:
        if self.variant == "bailando":
            return diversity_bailando(f, real)
        return diversity_diffgesture(f, self.n_pairs, self.seed)

    def compute(self) -> torch.Tensor:
        return torch.tensor(self._value(_rows(self.fake), _rows(self.real)), dtype=torch.float32)

    def names(self) -> list[str]:
        return [f"{self.name}{self.name_suffix}", f"{self.name}_real{self.name_suffix}"]

    def results(self) -> dict[str, float]:
        """``{}`` with a trained encoder when no sequence held one of its windows (protocol not met)."""
        fake, real = _rows(self.fake), _rows(self.real)
        if self.features.trained and self.update_count and len(fake) == 0:
            return {}
        return dict(zip(self.names(), (self._value(fake, real), self._value(real, real))))

    def protocol(self) -> dict[str, Any]:
        return {"metric": self.names()[0], "variant": self.variant, **self.features.info,
                "num_generated": int(len(_rows(self.fake))), "num_real": int(len(_rows(self.real))),
                **({"n_pairs": self.n_pairs, "seed": self.seed} if self.variant == "diffgesture" else {})}


# --------------------------------------------------------------------------------------------------- suite

LEGACY_ENTRIES = ("diversity_real", "beat_align_real")


class GestureSuite(Suite):
    """The stage-1 metrics of generated vs ground-truth poses ``(B, N, K, >=2)`` (normalised), plus any configured
    metric (a ``_target_`` entry).

    Args:
        feature_dim: random-projection feature size per part (FGD/diversity without an encoder).
        encoder: trained FGD encoder (an ``experiment=fgd_encoder`` checkpoint or run folder): FGD and diversity
            use its codes and ``fgd`` gets its standard name; ``None``: the random projection (``fgd_randproj``).
        encoder_sha256: the encoder file's sha256; another file is refused.
        hop, sample_rate: audio samples per pose frame and audio rate (beat alignment).
        beat_sigma: ignored (older configs: σ in frames of the former beat alignment; σ is now per variant, in s).
        entries: ``l2, fgd, diversity, diversity_diffgesture, beat_align, beat_align_diffgesture``:
            ``True``/``False`` or kwargs (``enabled: false`` off); any other key: a metric named by ``_target_``.
    """

    arguments: ClassVar[tuple[str, ...]] = ("vis", "audio")
    builtins: ClassVar[Mapping[str, Builtin]] = {
        "l2": Builtin(KeypointL2),
        "fgd": Builtin(FrechetGestureDistance),
        "diversity": Builtin(GestureDiversity),
        "diversity_diffgesture": Builtin(GestureDiversity, defaults={"variant": "diffgesture"}),
        "beat_align": Builtin(BeatAlignment),
        "beat_align_diffgesture": Builtin(BeatAlignment, defaults={"variant": "diffgesture"}),
    }

    def __init__(self, feature_dim: int = 32, encoder: str | None = None, encoder_sha256: str | None = None,
                 hop: int = HOP, sample_rate: int = SAMPLE_RATE, beat_sigma: float | None = None,
                 **entries: Any) -> None:
        for key in LEGACY_ENTRIES:
            entries.pop(key, None)
        features = PoseFeatures(encoder, encoder_sha256, feature_dim)
        if features.trained:
            log.info("gesture metrics: FGD encoder %s (sha256 %s)", features.info["encoder"],
                     features.info["encoder_sha256"])
        super().__init__(entries, {"feature_dim": int(feature_dim), "features": features, "hop": int(hop),
                                   "sample_rate": int(sample_rate)})

    def update(self, generated: torch.Tensor, reference: torch.Tensor | None = None,  # type: ignore[override]
               vis: torch.Tensor | None = None, audio: torch.Tensor | None = None) -> None:
        """``vis`` (B, N, K) bool visibility of the ground truth; ``audio`` (B, >= N*hop) waveform (beat alignment is
        skipped without it)."""
        super().update(generated, reference, vis=vis, audio=audio)

    def protocol(self) -> dict[str, dict[str, Any]]:
        """Each member's :meth:`protocol` (set-level metrics), by config key."""
        return {k: m.protocol() for k, m in self.metrics.items() if callable(getattr(m, "protocol", None))}


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
