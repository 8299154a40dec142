"""Stage-1 audio features against the official MMGT code's outputs (golden fixtures in ``<fixtures>/features``).

The fixture folder comes from ``MMGT_OFFICIAL_FIXTURES`` (default ``<repo>/../shared/fixtures/mmgt_official``);
every size, frame count and value is read from its files and metadata, so another fixture set (other wav, length,
model size) runs unchanged.

Relative error (``rel_err``) = max |ours - official| / max |official|, over the compared array, and for the EDGE
block over each column group separately (the onset envelope, MFCC and chroma have very different scales; a
per-block denominator keeps the small-valued chroma from hiding behind the MFCC's range). One-hot columns and frame
indices are compared exactly. Tolerance 1e-5 (the fixture README: a float32 re-implementation agrees to ~1e-6).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from mmgt.data.audio_features import Stage1Features, layer_norm_waveform, official_25fps
from mmgt.data.edge_features import EDGE_COLUMNS, EDGE_DIM, edge35_features, edge35_parts
from mmgt.data.video_io import SAMPLE_RATE

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(os.environ.get("MMGT_OFFICIAL_FIXTURES", REPO.parent / "shared" / "fixtures" / "mmgt_official"))
FEATURES = FIXTURES / "features"
TOL = 1e-5

pytestmark = pytest.mark.skipif(
    not (FEATURES / "edge35_meta.json").is_file(),
    reason=f"official feature fixtures not found at {FEATURES} (set MMGT_OFFICIAL_FIXTURES)")


def rel_err(ours: np.ndarray | torch.Tensor, gold: np.ndarray) -> float:
    ours = ours.numpy() if isinstance(ours, torch.Tensor) else np.asarray(ours)
    assert ours.shape == gold.shape, (ours.shape, gold.shape)
    return float(np.abs(ours.astype(np.float64) - gold).max() / np.abs(gold).max())


@pytest.fixture(scope="module")
def edge_meta() -> dict:
    return json.loads((FEATURES / "edge35_meta.json").read_text())


@pytest.fixture(scope="module")
def wavlm_meta() -> dict:
    return json.loads((FEATURES / "wavlm_meta.json").read_text())


@pytest.fixture(scope="module")
def wav(edge_meta: dict) -> tuple[np.ndarray, int]:
    """The wav at its own rate, as librosa.load(sr=None) reads it (soundfile, float32, channels averaged)."""
    import soundfile as sf

    y, sr = sf.read(FEATURES / edge_meta["wav"]["file"], dtype="float32", always_2d=True)
    return y.mean(1).astype(np.float32) if y.shape[1] > 1 else y[:, 0], int(sr)


@pytest.fixture(scope="module")
def wav16(wav: tuple[np.ndarray, int]) -> np.ndarray:
    """The 16 kHz waveform the official WavLM extractor reads (librosa.load(path, sr=16000))."""
    saved = FEATURES / "wav_16k_float32.npy"
    if saved.is_file():
        return np.load(saved)
    import librosa

    y, sr = wav
    return librosa.resample(y, orig_sr=sr, target_sr=SAMPLE_RATE, res_type="soxr_hq")


@pytest.fixture(scope="module")
def official() -> Stage1Features:
    return Stage1Features(kind="official", backend="wavlm", pretrained_path=str(FEATURES / "wavlm_tiny_hf"))


# ---------------------------------------------------------------------------------------------- EDGE 35


def test_edge35_intermediates_match(wav: tuple[np.ndarray, int], edge_meta: dict) -> None:
    inter = np.load(FEATURES / "edge35_intermediates.npz")
    parts = edge35_parts(*wav)
    assert rel_err(parts.y, inter["y_12800"]) <= TOL
    for key in ("onset_envelope", "mfcc", "chroma_cens"):
        assert rel_err(getattr(parts, key), inter[key]) <= TOL, key
    assert parts.onset_envelope.shape[0] == edge_meta["edge35"]["frames_before_chop"]
    np.testing.assert_array_equal(parts.onset_peak_frames, inter["onset_peak_frames"])
    np.testing.assert_array_equal(parts.beat_frames, inter["beat_frames"])
    assert parts.start_bpm == pytest.approx(edge_meta["edge35"]["start_bpm_from_fallback"], rel=1e-6)
    assert parts.tempo == pytest.approx(edge_meta["edge35"]["beat_track_tempo"], rel=1e-6)


def test_edge35_matches_official(wav: tuple[np.ndarray, int], edge_meta: dict) -> None:
    gold = np.load(FEATURES / "edge35.npy")
    assert list(gold.shape) == edge_meta["edge35"]["shape"] and gold.shape[1] == EDGE_DIM
    ours = edge35_features(*wav, n_frames=gold.shape[0])
    assert ours.shape == gold.shape and ours.dtype == np.float32
    for name, cols in edge_meta["edge35"]["columns"].items():
        sl = slice(cols[0], cols[-1] + 1)
        assert EDGE_COLUMNS[name] == sl, name
        if name in ("onset_peak", "beat"):
            np.testing.assert_array_equal(ours[:, sl], gold[:, sl], err_msg=name)
        else:
            assert rel_err(ours[:, sl], gold[:, sl]) <= TOL, name


# ---------------------------------------------------------------------------------------------- WavLM


def test_wavlm_50hz_hidden_states_match(official: Stage1Features, wav16: np.ndarray, wavlm_meta: dict) -> None:
    gold = np.load(FEATURES / "wavlm_tiny_50hz_last_hidden.npy")
    assert gold.shape == (wavlm_meta["n_frames_50hz"], wavlm_meta["dim"])
    assert official.encoder is not None
    h = official.encoder.native_states(layer_norm_waveform(wav16))[-1]
    assert rel_err(h, gold) <= TOL


def test_official_25fps_postprocessing_matches() -> None:
    """The post-processing alone, on the official 50 Hz states."""
    gold50 = torch.from_numpy(np.load(FEATURES / "wavlm_tiny_50hz_last_hidden.npy"))
    gold25 = np.load(FEATURES / "wavlm_tiny_25fps.npy")
    assert rel_err(official_25fps(gold50), gold25) <= TOL


def test_official_wavlm_25fps_end_to_end(official: Stage1Features, wav16: np.ndarray, wavlm_meta: dict) -> None:
    gold = np.load(FEATURES / "wavlm_tiny_25fps.npy")
    assert gold.shape == (wavlm_meta["n_frames_25fps"], wavlm_meta["dim"])
    assert official.encoder is not None
    assert rel_err(official.encoder(wav16, len(gold))[:, 0], gold) <= TOL


def test_official_stage1_layout(official: Stage1Features, wav16: np.ndarray, wavlm_meta: dict) -> None:
    """``[WavLM ‖ EDGE35]`` along the feature axis, for the EDGE block's frame count (the official 80-row slice)."""
    edge, wavlm = np.load(FEATURES / "edge35.npy"), np.load(FEATURES / "wavlm_tiny_25fps.npy")
    n, d = len(edge), wavlm_meta["dim"]
    feats = official(wav16, n)
    assert official.dim == d + EDGE_DIM and feats.shape == (n, d + EDGE_DIM)
    assert official.slices["backend"] == slice(0, d) and official.slices["edge35"] == slice(d, d + EDGE_DIM)
    assert rel_err(feats[:, :d], wavlm[:n]) <= TOL
    ours_edge = feats[:, d:].numpy()
    for name, sl in EDGE_COLUMNS.items():
        if name in ("onset_peak", "beat"):
            np.testing.assert_array_equal(ours_edge[:, sl], edge[:, sl], err_msg=name)
        else:
            assert rel_err(ours_edge[:, sl], edge[:, sl]) <= TOL, name
