"""The official stage-1 "baseline" audio block: 35 librosa features per 25-fps frame (EDGE's music features).

MMGT feeds its SMGA ``[WavLM-Large last layer ‖ these 35]``. Each row is one hop of 512 samples at 12 800 Hz
(= 25 fps): onset-strength envelope (1) ‖ MFCC (20) ‖ chroma CENS (12) ‖ onset-peak one-hot (1) ‖ beat one-hot (1).
Everything is librosa with its defaults (centred n_fft-2048 frames, soxr_hq resampling), because the point of this
block is to reproduce the released model's inputs, not to be a good feature: the beat tracker starts from a tempo
estimated on the audio at librosa's default 22 050 Hz (the official code's fallback once its AIST++ file-name parse
fails) and uses tightness 100.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

EDGE_SAMPLE_RATE = 12800  # 25 fps x hop 512
EDGE_HOP = 512
TEMPO_SAMPLE_RATE = 22050  # librosa.load's default rate, where the official code estimates the start tempo
BEAT_TIGHTNESS = 100
N_MFCC = 20
N_CHROMA = 12
EDGE_DIM = 35
# Column groups of the 35-d block, in order.
EDGE_COLUMNS: dict[str, slice] = {"onset_envelope": slice(0, 1), "mfcc": slice(1, 21), "chroma_cens": slice(21, 33),
                                  "onset_peak": slice(33, 34), "beat": slice(34, 35)}
RESAMPLER = "soxr_hq"


@dataclass
class EdgeParts:
    """What the 35 columns are made of (also what the parity fixture records), before the frame-count fit."""

    y: np.ndarray  # waveform at 12 800 Hz
    onset_envelope: np.ndarray  # (T,)
    mfcc: np.ndarray  # (20, T)
    chroma_cens: np.ndarray  # (12, T)
    onset_peak_frames: np.ndarray  # frame indices
    beat_frames: np.ndarray  # frame indices
    start_bpm: float
    tempo: float

    def stack(self) -> np.ndarray:
        """(T, 35) float32 in the official column order."""
        n = len(self.onset_envelope)
        peak, beat = np.zeros(n, np.float32), np.zeros(n, np.float32)
        peak[self.onset_peak_frames] = 1.0
        beat[self.beat_frames] = 1.0
        return np.concatenate([self.onset_envelope[:, None], self.mfcc.T, self.chroma_cens.T, peak[:, None],
                               beat[:, None]], axis=1).astype(np.float32)


def edge_settings() -> dict[str, Any]:
    """Everything that changes the block's numbers, for cache signatures (librosa's version included: its beat
    tracker and tempo estimator have changed between releases)."""
    import librosa

    return dict(sample_rate=EDGE_SAMPLE_RATE, hop=EDGE_HOP, tempo_sample_rate=TEMPO_SAMPLE_RATE,
                tightness=BEAT_TIGHTNESS, n_mfcc=N_MFCC, n_chroma=N_CHROMA, resampler=RESAMPLER,
                librosa=librosa.__version__)


def _tempo(y: np.ndarray, sr: int) -> float:
    import librosa

    # librosa.beat.tempo (what the official code calls) moved to librosa.feature.tempo in 0.10 and was removed later.
    tempo_fn = getattr(librosa.feature, "tempo", None) or librosa.beat.tempo
    return float(np.asarray(tempo_fn(y=y, sr=sr)).reshape(-1)[0])


def edge35_parts(audio: np.ndarray, sample_rate: int) -> EdgeParts:
    """Compute the block's ingredients from mono ``audio`` at ``sample_rate`` (resampled like librosa.load does)."""
    import librosa

    audio = np.asarray(audio, dtype=np.float32)
    y = librosa.resample(audio, orig_sr=sample_rate, target_sr=EDGE_SAMPLE_RATE, res_type=RESAMPLER)
    y22 = librosa.resample(audio, orig_sr=sample_rate, target_sr=TEMPO_SAMPLE_RATE, res_type=RESAMPLER)
    sr, hop = EDGE_SAMPLE_RATE, EDGE_HOP
    envelope = librosa.onset.onset_strength(y=y, sr=sr, hop_length=hop)
    mfcc = librosa.feature.mfcc(y=y, sr=sr, n_mfcc=N_MFCC, hop_length=hop)
    chroma = librosa.feature.chroma_cens(y=y, sr=sr, hop_length=hop, n_chroma=N_CHROMA)
    peaks = librosa.onset.onset_detect(onset_envelope=envelope, sr=sr, hop_length=hop)
    start_bpm = _tempo(y22, TEMPO_SAMPLE_RATE)
    tempo, beats = librosa.beat.beat_track(onset_envelope=envelope, sr=sr, hop_length=hop, start_bpm=start_bpm,
                                           tightness=BEAT_TIGHTNESS)
    return EdgeParts(y=y, onset_envelope=envelope, mfcc=mfcc, chroma_cens=chroma,
                     onset_peak_frames=np.asarray(peaks, np.int64), beat_frames=np.asarray(beats, np.int64),
                     start_bpm=start_bpm, tempo=float(np.asarray(tempo).reshape(-1)[0]))


def edge35_features(audio: np.ndarray, sample_rate: int, n_frames: int | None = None) -> np.ndarray:
    """(n_frames, 35) float32: the official block of the whole ``audio``, cut to its first ``n_frames`` rows.

    As the official code, the features are computed on all the audio and then cut (so rows near the end of the cut
    still see the samples after it). Audio too short for ``n_frames`` rows is zero-padded first (the official code
    asserts instead); ``n_frames=None`` keeps every row (1 + samples_12800 // 512).
    """
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim != 1:
        raise ValueError(f"expected mono audio of shape (samples,), got {audio.shape}")
    if n_frames is not None:
        # n_frames rows need (n_frames - 1) hops at 12.8 kHz; padding to n_frames whole frames leaves a safe margin.
        need = int(np.ceil(n_frames * sample_rate * EDGE_HOP / EDGE_SAMPLE_RATE))
        if len(audio) < need:
            audio = np.pad(audio, (0, need - len(audio)))
    feats = edge35_parts(audio, sample_rate).stack()
    return feats if n_frames is None else feats[:n_frames]
