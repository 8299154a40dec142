"""Beat alignment of motion with speech (:class:`BeatAlignment`, a stage-1 gesture metric; see
:mod:`mmgt.metrics.gesture` for the protocol): motion beats are local minima of the keypoint speed, audio events are
librosa's onsets or beats, and the score is the mean Gaussian-weighted distance from each event to the nearest
motion beat, in the published Bailando and DiffGesture variants."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from mmgt.data.video_io import HOP, SAMPLE_RATE
from mmgt.metrics.base import SuiteMetric
from mmgt.pose.layout import BODY, HANDS, LEG_POINTS

BEAT_VARIANTS: dict[str, dict[str, Any]] = {
    "bailando": {"events": "beat", "sigma_s": 0.05, "smooth_s": 5.0 / 60.0, "pool": "clip"},
    "diffgesture": {"events": "onset", "sigma_s": 0.1, "smooth_s": 0.0, "pool": "event"},
}
MOTION_POINTS = tuple(i for i in BODY if i not in LEG_POINTS) + tuple(HANDS)  # what the loss supervises


def audio_events(audio: np.ndarray, sample_rate: int = SAMPLE_RATE, events: str = "onset") -> np.ndarray:
    """Times (s) of librosa's onsets (``onset.onset_detect``) or beats (``beat.beat_track``) of a mono waveform."""
    import librosa

    y = np.ascontiguousarray(audio, dtype=np.float32)
    if events == "onset":
        return np.asarray(librosa.onset.onset_detect(y=y, sr=sample_rate, units="time"), dtype=np.float64)
    if events == "beat":
        return np.asarray(librosa.beat.beat_track(y=y, sr=sample_rate, units="time")[1], dtype=np.float64)
    raise ValueError(f"beat alignment events {events!r}: expected 'onset' or 'beat'")


def motion_beats(poses: np.ndarray, fps: float, smooth_s: float = 0.0, vis: np.ndarray | None = None) -> np.ndarray:
    """Times (s) of motion beats of one (N, K, >=2) pose sequence: local minima of the mean speed of the body and hand
    points (velocity i = frame i+1 - frame i, at time i / fps), Gaussian-smoothed with σ = ``smooth_s`` seconds."""
    from scipy.ndimage import gaussian_filter1d
    from scipy.signal import argrelextrema

    xy = np.asarray(poses, dtype=np.float64)[:, list(MOTION_POINTS), :2]
    speed = np.linalg.norm(xy[1:] - xy[:-1], axis=-1)
    if vis is None:
        kinetic = speed.mean(-1)
    else:
        m = np.asarray(vis, dtype=bool)[:, list(MOTION_POINTS)]
        m = (m[1:] & m[:-1]).astype(np.float64)
        kinetic = (speed * m).sum(-1) / np.maximum(m.sum(-1), 1.0)
    if smooth_s > 0:
        kinetic = gaussian_filter1d(kinetic, smooth_s * fps)
    return argrelextrema(kinetic, np.less)[0].astype(np.float64) / fps


def beat_align_score(events: np.ndarray, beats: np.ndarray, sigma_s: float) -> float:
    """Mean over audio events of exp(-d² / 2σ²), d the time to the nearest motion beat (nan without either)."""
    if len(events) == 0 or len(beats) == 0:
        return math.nan
    d = np.abs(np.asarray(events)[:, None] - np.asarray(beats)[None]).min(1)
    return float(np.exp(-d ** 2 / (2 * sigma_s ** 2)).mean())


class BeatAlignment(SuiteMetric):
    """Beat-align score of generated (and, beside it, real) poses vs the audio they go with (module docstring)."""

    full_state_update = False
    name = "beat_align"
    inputs = ("generated", "audio")
    optional_inputs = ("reference", "vis")
    settings = ("hop", "sample_rate")

    def __init__(self, *, variant: str = "bailando", events: str | None = None, sigma_s: float | None = None,
                 smooth_s: float | None = None, pool: str | None = None, hop: int = HOP,
                 sample_rate: int = SAMPLE_RATE, name: str | None = None, **kwargs: Any) -> None:
        if variant not in BEAT_VARIANTS:
            raise ValueError(f"beat alignment variant {variant!r}: expected one of {sorted(BEAT_VARIANTS)}")
        super().__init__(name=name or f"beat_align_{variant}", **kwargs)
        given = {"events": events, "sigma_s": sigma_s, "smooth_s": smooth_s, "pool": pool}
        opts = {**BEAT_VARIANTS[variant], **{k: v for k, v in given.items() if v is not None}}
        if opts["pool"] not in ("clip", "event"):
            raise ValueError(f"beat alignment pool {opts['pool']!r}: expected 'clip' or 'event'")
        if opts["events"] not in ("onset", "beat"):
            raise ValueError(f"beat alignment events {opts['events']!r}: expected 'onset' or 'beat'")
        self.variant, self.events, self.pool = variant, str(opts["events"]), str(opts["pool"])
        self.sigma_s, self.smooth_s = float(opts["sigma_s"]), float(opts["smooth_s"])
        self.hop, self.sample_rate = int(hop), int(sample_rate)
        self.fps = self.sample_rate / self.hop
        for side in ("fake", "real"):  # per scored clip: score and number of audio events
            self.add_state(f"{side}_score", default=[], dist_reduce_fx="cat")
            self.add_state(f"{side}_events", default=[], dist_reduce_fx="cat")
        self.add_state("clips", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, poses: torch.Tensor, audio: torch.Tensor, reference: torch.Tensor | None = None,
               vis: torch.Tensor | None = None) -> None:
        """``poses`` (B, N, K, C), ``audio`` (B, >= N·hop) 16 kHz waveform aligned with the poses; ``reference`` the
        ground truth (scored beside); ``vis`` its visibility (masks the speed of invisible points)."""
        n = poses.shape[1]
        wave = audio[:, :n * self.hop].detach().float().cpu().numpy()
        sides = [("fake", poses)] + ([("real", reference)] if reference is not None else [])
        v = None if vis is None else vis.detach().cpu().numpy()
        for b in range(poses.shape[0]):
            ev = audio_events(wave[b], self.sample_rate, self.events)
            self.clips += 1
            for side, p in sides:
                beats = motion_beats(p[b].detach().cpu().numpy(), self.fps, self.smooth_s, None if v is None else v[b])
                score = beat_align_score(ev, beats, self.sigma_s)
                if math.isfinite(score):
                    getattr(self, f"{side}_score").append(torch.tensor([score], dtype=torch.float64))
                    getattr(self, f"{side}_events").append(torch.tensor([float(len(ev))], dtype=torch.float64))

    def _value(self, side: str) -> float:
        s, e = _vec(getattr(self, f"{side}_score")), _vec(getattr(self, f"{side}_events"))
        if len(s) == 0:
            return math.nan
        return float(s.mean()) if self.pool == "clip" else float((s * e).sum() / e.sum())

    def compute(self) -> torch.Tensor:
        return torch.tensor(self._value("fake"), dtype=torch.float32)

    def names(self) -> list[str]:
        return [self.name, f"{self.name}_real"]

    def results(self) -> dict[str, float]:
        """The generated and the ground-truth value, each only when at least one of its clips was scored (a clip
        without an audio event or a motion beat, e.g. a 1-frame clip, has no score): never ``nan`` under the name."""
        if not self.update_count:
            return dict(zip(self.names(), (self._value("fake"), self._value("real"))))
        return {n: v for n, v in zip(self.names(), (self._value("fake"), self._value("real"))) if math.isfinite(v)}

    def protocol(self) -> dict[str, Any]:
        return {"metric": self.name, "variant": self.variant, "audio_events": f"librosa {self.events}s",
                "sigma_s": self.sigma_s, "smooth_s": self.smooth_s, "pool": self.pool, "fps": self.fps,
                "clips": int(self.clips), "scored_clips": int(len(_vec(self.fake_score))),
                "scored_real_clips": int(len(_vec(self.real_score)))}


def _vec(state: list[torch.Tensor] | torch.Tensor) -> torch.Tensor:
    if isinstance(state, torch.Tensor):
        return state.reshape(-1).double()
    return torch.cat(state).double() if state else torch.zeros(0, dtype=torch.float64)


# --------------------------------------------------------------------------------------------------- suite

#: entries of configs written before the `_real` values were logged by the metrics themselves (ignored)
