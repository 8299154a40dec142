"""Audio feature extractors: exact lengths, frame alignment, tiny offline models, windows, caching."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from mmgt.data.audio_features import (
    Stage1Features,
    Wav2VecFeatures,
    _SpeechEncoder,
    cache_is_fresh,
    ensure_feature_cache,
    feature_cache_path,
    layer_norm_waveform,
    official_25fps,
    resample_frames,
    window_features,
    window_indices,
)
from mmgt.data.corpus import Corpus, write_clip, write_manifest
from mmgt.data.edge_features import EDGE_COLUMNS, edge35_features
from mmgt.data.vocal_separation import MDXVocalSeparator

HOP = 640


@pytest.fixture(scope="module")
def stage1() -> Stage1Features:
    return Stage1Features()


def test_stage1_exact_length_and_dtype(stage1: Stage1Features) -> None:
    rng = np.random.default_rng(0)
    for n_samples, n_frames in [(HOP * 10, 10), (HOP * 10 - 37, 10), (HOP * 10 + 300, 10), (HOP * 3, 7)]:
        out = stage1(rng.standard_normal(n_samples).astype(np.float32), n_frames)
        assert out.shape == (n_frames, stage1.dim) and out.dtype == torch.float32
        assert torch.isfinite(out).all()
    # default length: ceil(samples / hop)
    assert stage1(np.zeros(HOP * 4 + 1, np.float32)).shape[0] == 5
    assert stage1.slices["rms"] == slice(64, 65) and stage1.dim == 66


@pytest.mark.parametrize("offset", [3, 320, 636])
def test_click_lands_in_its_own_row(stage1: Stage1Features, offset: int) -> None:
    """A click at any sample of frame k raises row k (rms, onset), never k±1."""
    n, k = 12, 7
    x = np.zeros(n * HOP, np.float32)
    x[k * HOP + offset] = 1.0
    f = stage1(x, n)
    rms = f[:, stage1.slices["rms"]].squeeze(1)
    onset = f[:, stage1.slices["onset"]].squeeze(1)
    assert int(rms.argmax()) == k and rms[k - 1] == 0 and rms[k + 1] == 0
    assert int(onset.argmax()) == k
    if 0 < offset < HOP - 1:  # the Hann taper is exactly 0 only at the first sample
        energy = f[:, stage1.slices["logmel"]].mean(-1)
        assert int(energy.argmax()) == k


def test_rows_depend_only_on_their_frame(stage1: Stage1Features) -> None:
    """Changing the samples of frame k changes rows k (and k+1 via the onset flux), nothing else."""
    rng = np.random.default_rng(1)
    n, k = 10, 4
    x = rng.standard_normal(n * HOP).astype(np.float32) * 0.1
    y = x.copy()
    y[k * HOP:(k + 1) * HOP] *= 5
    fx, fy = stage1(x, n), stage1(y, n)
    changed = (fx - fy).abs().amax(-1) > 1e-6
    assert changed.nonzero().flatten().tolist() == [k, k + 1]
    base = [s for name, s in stage1.slices.items() if name != "onset"]
    changed_no_onset = torch.stack([(fx[:, s] - fy[:, s]).abs().amax(-1) for s in base]).amax(0) > 1e-6
    assert changed_no_onset.nonzero().flatten().tolist() == [k]


def test_resample_frames_hits_frame_centres() -> None:
    """CNN frame j (hop 320, field 400) is centred at sample 320j+200; output frame i at 640i+320."""
    n = 9
    t50 = 2 * n - 1  # what wav2vec's conv stack gives for n*640 samples
    centres = torch.arange(t50, dtype=torch.float64) * 320 + 200
    out = resample_frames(centres[None, None], n, in_hop=320, in_offset=200, out_hop=640)[0, 0]
    want = (torch.arange(n, dtype=torch.float64) + 0.5) * 640
    want = want.clamp(max=centres[-1])
    assert torch.allclose(out, want)
    legacy = resample_frames(centres[None, None], n, in_hop=320, in_offset=200, out_hop=640,
                             legacy_align_corners=True)[0, 0]
    assert legacy[0] == centres[0] and legacy[-1] == centres[-1]


def test_tiny_wav2vec_offline_shapes_and_seed() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal(HOP * 20).astype(np.float32)
    w2v = Wav2VecFeatures(seed=3)
    emb = w2v(x, 20)
    assert emb.shape == (20, w2v.n_layers, w2v.hidden_size) == (20, 2, 32) and emb.dtype == torch.float32
    assert w2v.feature_shape == (2, 32)
    assert torch.equal(emb, Wav2VecFeatures(seed=3)(x, 20))  # seeded random init: same weights each build
    assert not torch.allclose(emb, Wav2VecFeatures(seed=4)(x, 20))
    assert not torch.allclose(emb[:, 0], emb[:, 1])  # distinct layers kept
    assert w2v(x[:HOP], 1).shape == (1, 2, 32)  # a single frame (sub-stage A) works
    # loudness does not matter (waveform normalisation), but content does
    assert torch.allclose(w2v(x * 7, 20), emb, atol=1e-4)
    last = Wav2VecFeatures(seed=3, layers="last")(x, 20)
    assert last.shape == (20, 1, 32) and torch.allclose(last[:, 0], emb[:, -1], atol=1e-6)
    assert Wav2VecFeatures(seed=3).signature != Wav2VecFeatures(seed=3, layers="last").signature


def test_stage1_tiny_backend_is_prepended() -> None:
    x = np.random.default_rng(2).standard_normal(HOP * 8).astype(np.float32)
    plain = Stage1Features()
    with_backend = Stage1Features(backend="wavlm")
    f = with_backend(x, 8)
    assert f.shape == (8, 32 + plain.dim) and with_backend.slices["backend"] == slice(0, 32)
    assert torch.allclose(f[:, 32:], plain(x, 8))
    assert with_backend.signature != plain.signature


def test_missing_pretrained_path_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "wav2vec2-base-960h"
    with pytest.raises(FileNotFoundError) as err:
        Wav2VecFeatures(pretrained_path=str(missing))
    msg = str(err.value)
    assert str(missing) in msg and "data.stage2_features.pretrained_path" in msg
    with pytest.raises(FileNotFoundError, match="data.stage1_features.pretrained_path"):
        Stage1Features(backend="wavlm", pretrained_path=str(tmp_path / "wavlm"))


def test_window_features_clamps() -> None:
    emb = torch.arange(6.0)[:, None, None].expand(6, 2, 3)
    win = window_features(emb, 2)
    assert win.shape == (6, 5, 2, 3)
    assert win[0, :, 0, 0].tolist() == [0, 0, 0, 1, 2]
    assert win[3, :, 0, 0].tolist() == [1, 2, 3, 4, 5]
    assert win[5, :, 0, 0].tolist() == [3, 4, 5, 5, 5]
    idx = window_indices(4, 2, 6, 2)
    assert torch.equal(win[4:6], emb[torch.from_numpy(idx)])


# ---------------------------------------------------------------------------------------------- cache


def _tiny_corpus(root: Path, n_clips: int = 2, n_frames: int = 10) -> Corpus:
    rng = np.random.default_rng(0)
    recs = []
    for i in range(n_clips):
        frames = np.zeros((n_frames, 16, 16, 3), np.uint8)
        audio = rng.standard_normal(n_frames * HOP).astype(np.float32) * 0.1
        kp = np.ones((n_frames, 134, 3), np.float32) * 8
        recs.append(write_clip(root, f"c{i}", "spk", "train", frames, audio, kp))
    write_manifest(root, recs)
    return Corpus(root)


class _Spy:
    """Wraps an extractor and counts computations."""

    def __init__(self, inner: Stage1Features):
        self.inner, self.calls = inner, 0
        self.name, self.signature, self.feature_shape = inner.name, inner.signature, inner.feature_shape

    def __call__(self, audio: np.ndarray, n_frames: int) -> torch.Tensor:
        self.calls += 1
        return self.inner(audio, n_frames)


def test_cache_computed_once_and_recomputed_when_stale(tmp_path: Path) -> None:
    corpus = _tiny_corpus(tmp_path)
    spy = _Spy(Stage1Features())
    assert ensure_feature_cache(corpus, corpus.records, spy, progress=False) == {}
    assert spy.calls == 2
    rec = corpus.records[0]
    path = feature_cache_path(corpus, rec, spy)
    cached = np.load(path)
    assert cached.shape == (rec.n_frames, spy.feature_shape[0])
    assert np.allclose(cached, spy.inner(corpus.load_audio(rec), rec.n_frames).numpy())
    ensure_feature_cache(corpus, corpus.records, spy, progress=False)
    assert spy.calls == 2  # everything fresh: nothing recomputed
    # audio newer than its cache (cache written before the audio was touched) -> recomputed
    past = corpus.path(rec, "audio").stat().st_mtime - 10
    os.utime(path, (past, past))
    assert not cache_is_fresh(path, corpus.path(rec, "audio"), rec.n_frames, spy.feature_shape)
    ensure_feature_cache(corpus, corpus.records, spy, progress=False)
    assert spy.calls == 3
    # wrong length -> recomputed
    other = feature_cache_path(corpus, corpus.records[1], spy)
    np.save(other, np.zeros((3, spy.feature_shape[0]), np.float32))
    ensure_feature_cache(corpus, corpus.records, spy, progress=False)
    assert spy.calls == 4 and np.load(other).shape[0] == corpus.records[1].n_frames


def test_cache_reports_unreadable_audio(tmp_path: Path) -> None:
    corpus = _tiny_corpus(tmp_path)
    bad = corpus.records[1]
    corpus.path(bad, "audio").write_bytes(b"not a wav file at all")
    failed = ensure_feature_cache(corpus, corpus.records, Stage1Features(), progress=False)
    assert list(failed) == [bad.clip_id] and str(corpus.path(bad, "audio")) in failed[bad.clip_id]


def test_pretrained_folder_loads_offline(tmp_path: Path) -> None:
    """A local Hugging Face folder (what `pretrained_path` names) loads offline and reproduces the saved model."""
    x = np.random.default_rng(5).standard_normal(HOP * 6).astype(np.float32)
    tiny = Wav2VecFeatures(seed=7)
    tiny.encoder.model.save_pretrained(tmp_path / "w2v")
    loaded = Wav2VecFeatures(pretrained_path=str(tmp_path / "w2v"), seed=0)
    assert torch.equal(loaded(x, 6), tiny(x, 6)) and loaded.signature != tiny.signature


def _transformer_lengths(encoder: object, run: object) -> list[int]:
    """Sequence lengths the first transformer layer sees during ``run()``."""
    seen: list[int] = []
    layer = encoder.model.encoder.layers[0]  # type: ignore[attr-defined]
    handle = layer.register_forward_hook(lambda _m, inp, _o: seen.append(inp[0].shape[1]))
    try:
        run()  # type: ignore[operator]
    finally:
        handle.remove()
    return seen


def test_wav2vec_transformer_runs_at_50hz_by_default() -> None:
    """Default: the transformer sees ~2 frames per video frame (its native 50 Hz); resample="before" (the old
    default, the original's Hallo trick) runs it on the n_frames video frames."""
    x = np.random.default_rng(5).standard_normal(HOP * 12).astype(np.float32)
    default = Wav2VecFeatures(seed=1)
    emb: list[torch.Tensor] = []
    assert _transformer_lengths(default.encoder, lambda: emb.append(default(x, 12))) == [24]
    before = Wav2VecFeatures(seed=1, resample="before")
    other: list[torch.Tensor] = []
    assert _transformer_lengths(before.encoder, lambda: other.append(before(x, 12))) == [12]
    assert other[0].shape == emb[0].shape == (12, 2, 32) and not torch.allclose(other[0], emb[0])
    assert before.signature != default.signature
    assert Wav2VecFeatures(seed=1, resample="after").signature == default.signature
    with pytest.raises(ValueError, match="resample"):
        Wav2VecFeatures(resample="sideways")


def test_stage1_backend_runs_at_50hz_unless_before() -> None:
    x = np.random.default_rng(6).standard_normal(HOP * 10).astype(np.float32)
    default = Stage1Features(backend="wavlm")
    assert default.encoder is not None
    assert _transformer_lengths(default.encoder, lambda: default(x, 10)) == [20]
    old = Stage1Features(backend="wavlm", backend_resample="before")
    assert old.encoder is not None
    assert _transformer_lengths(old.encoder, lambda: old(x, 10)) == [10]
    assert old.signature != default.signature


# ---------------------------------------------------------------------------------------------- official recipe


def test_official_25fps_appends_last_frame_and_aligns_corners() -> None:
    for t50 in (1, 2, 7, 159):
        h = torch.arange(t50, dtype=torch.float32)[:, None].expand(t50, 3) * torch.tensor([1.0, -2.0, 0.5])
        out = official_25fps(h[None])[0]
        n = math.ceil((t50 + 1) / 2)
        assert out.shape == (n, 3)
        # rows sample the appended sequence 0..t50-1, t50-1 at n evenly spaced positions from first to last
        seq = np.append(np.arange(t50), t50 - 1).astype(np.float64)
        pos = np.linspace(0, t50, n) if n > 1 else np.zeros(1)
        want = np.interp(pos, np.arange(t50 + 1), seq)
        assert np.allclose(out[:, 0].numpy(), want, atol=1e-5) and torch.allclose(out[:, 1], -2 * out[:, 0])


def test_layer_norm_waveform_is_loudness_free() -> None:
    x = np.random.default_rng(0).standard_normal(5000).astype(np.float32) + 0.3  # var 1: eps 1e-5 negligible
    y = layer_norm_waveform(x)
    assert y.dtype == np.float32 and abs(y.mean()) < 1e-5 and abs(y.std() - 1) < 1e-3
    assert np.allclose(layer_norm_waveform(x * 9), y, atol=1e-4)


def test_stage1_official_layout_and_signature() -> None:
    x = np.random.default_rng(3).standard_normal(HOP * 30).astype(np.float32) * 0.1
    baseline = Stage1Features(kind="official")
    f = baseline(x, 30)
    assert baseline.dim == 35 and f.shape == (30, 35) and f.dtype == torch.float32
    assert baseline.slices["edge35"] == slice(0, 35) and baseline.slices["mfcc"] == slice(1, 21)
    assert torch.equal(f, torch.from_numpy(edge35_features(x, 16000, 30)))
    full = Stage1Features(kind="official", backend="wavlm")
    g = full(x, 30)
    assert full.dim == 32 + 35 and full.slices["backend"] == slice(0, 32) and full.slices["edge35"] == slice(32, 67)
    assert torch.equal(g[:, 32:], f)
    assert full.encoder is not None and full.encoder.resample == "official"
    assert len({Stage1Features().signature, baseline.signature, full.signature,
                Stage1Features(kind="official", backend="wavlm", backend_resample="after").signature}) == 4
    with pytest.raises(ValueError, match="kind"):
        Stage1Features(kind="edge")


def test_official_wavlm_uses_the_whole_waveform_then_fits_rows() -> None:
    """Rows past the audio's end hold the last row; fewer rows are the first rows of the same computation."""
    x = np.random.default_rng(4).standard_normal(HOP * 12).astype(np.float32)
    enc = Stage1Features(kind="official", backend="wavlm").encoder
    assert enc is not None
    full = enc(x, 12)
    assert torch.equal(enc(x, 8), full[:8])
    longer = enc(x, 15)
    assert torch.equal(longer[:12], full) and torch.equal(longer[12:], full[-1:].expand(3, -1, -1))
    assert enc(x[:100], 1).shape == (1, 1, 32)  # shorter than one receptive field: padded


def test_last_layer_includes_the_final_layer_norm(tmp_path: Path) -> None:
    """WavLM-Large is a pre-norm ("stable layer norm") model: its last layer is taken after the encoder's final
    LayerNorm (``last_hidden_state``), whatever transformers puts in ``hidden_states[-1]``."""
    from transformers import WavLMConfig, WavLMModel

    torch.manual_seed(0)
    cfg = WavLMConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                      conv_dim=(16,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
                      do_stable_layer_norm=True, feat_extract_norm="layer", apply_spec_augment=False)
    WavLMModel(cfg).save_pretrained(tmp_path / "wavlm")
    feats = Stage1Features(backend="wavlm", pretrained_path=str(tmp_path / "wavlm"), kind="official")
    assert feats.encoder is not None
    x = layer_norm_waveform(np.random.default_rng(0).standard_normal(HOP * 5).astype(np.float32))
    with torch.inference_mode():
        out = feats.encoder.model(torch.from_numpy(x)[None], output_hidden_states=True)
    states = feats.encoder.native_states(x)
    assert torch.allclose(states[-1], out.last_hidden_state[0], atol=1e-6)
    all_layers = _SpeechEncoder("wavlm", pretrained_path=str(tmp_path / "wavlm"), config_key="k", seed=0, hidden_size=0,
                                num_layers=0, layers="all", legacy_align_corners=False, device="cpu").native_states(x)
    assert all_layers.shape[0] == 2 and torch.allclose(all_layers[-1], states[-1], atol=1e-6)


def test_replaced_weights_change_the_signature(tmp_path: Path) -> None:
    Wav2VecFeatures(seed=7).encoder.model.save_pretrained(tmp_path / "w2v")
    first = Wav2VecFeatures(pretrained_path=str(tmp_path / "w2v")).signature
    assert Wav2VecFeatures(pretrained_path=str(tmp_path / "w2v")).signature == first
    Wav2VecFeatures(seed=8).encoder.model.save_pretrained(tmp_path / "w2v")  # same path, other weights
    weights = next((tmp_path / "w2v").glob("*.safetensors"))
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    assert Wav2VecFeatures(pretrained_path=str(tmp_path / "w2v")).signature != first
    # stage 1's speech encoder shares the key: replacing its weights file changes the stage-1 cache signature too
    stage1 = Stage1Features(backend="wav2vec2", pretrained_path=str(tmp_path / "w2v")).signature
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    assert Stage1Features(backend="wav2vec2", pretrained_path=str(tmp_path / "w2v")).signature != stage1


# ---------------------------------------------------------------------------------------------- EDGE 35


def _click_train(seconds: float, bpm: float, sr: int = 16000) -> np.ndarray:
    x = np.zeros(int(seconds * sr), np.float32)
    period = int(sr * 60 / bpm)
    for start in range(sr // 10, len(x) - 400, period):
        x[start:start + 400] += np.hanning(400).astype(np.float32) * np.sin(np.arange(400) * 0.7).astype(np.float32)
    return x


def test_edge35_click_train_peaks_and_beats() -> None:
    """Clicks at 120 bpm (every 12.5 frames): onset peaks sit on the clicks and beats come ~12.5 frames apart."""
    x = _click_train(6.0, 120.0)
    f = edge35_features(x, 16000, 150)
    assert f.shape == (150, 35) and f.dtype == np.float32
    for name in ("onset_peak", "beat"):
        assert set(np.unique(f[:, EDGE_COLUMNS[name]])) <= {0.0, 1.0}
    clicks = (np.arange(1600, len(x) - 400, 8000) + 200) / 640  # click centres in frames
    peaks = np.flatnonzero(f[:, EDGE_COLUMNS["onset_peak"]][:, 0])
    # the centred 2048-sample (160 ms) analysis window smears each click over ~2 frames
    assert all(np.abs(peaks - c).min() <= 2 for c in clicks) and all(np.abs(clicks - p).min() <= 2.5 for p in peaks)
    beats = np.flatnonzero(f[:, EDGE_COLUMNS["beat"]][:, 0])
    assert len(beats) >= 8 and abs(float(np.median(np.diff(beats))) - 12.5) <= 1.0


def test_edge35_frames_are_cut_or_padded() -> None:
    x = _click_train(2.0, 100.0)
    rows = edge35_features(x, 16000)
    assert rows.shape == (1 + (len(x) * 4 // 5) // 512, 35)  # 12.8 kHz, centred frames, hop 512
    assert np.array_equal(edge35_features(x, 16000, 20), rows[:20])
    assert edge35_features(x, 16000, 70).shape == (70, 35)  # 2 s is 50 frames: zero-padded audio
    with pytest.raises(ValueError, match="mono"):
        edge35_features(np.zeros((2, 100), np.float32), 16000)


# ---------------------------------------------------------------------------------------------- vocal separation

# Small MDX settings: 16 kHz model (no resampling unless asked), n_fft 256, windows of 64 * 31 samples.
MDX = dict(sample_rate=16000, n_fft=256, hop=64, dim_t=32)


def _onnx_model(path: Path, op: str, n_bins: int, gain: float = 1.0) -> Path:
    """A one-node MDX stand-in on (B, 4, n_bins, dim_t): ``gain * x`` (op "Mul") or ``x * x`` (op "Square")."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    shape = ["b", 4, n_bins, MDX["dim_t"]]
    if op == "Mul":
        node, init = helper.make_node("Mul", ["input", "gain"], ["output"]), [
            numpy_helper.from_array(np.array(gain, np.float32), "gain")]
    else:
        node, init = helper.make_node("Mul", ["input", "input"], ["output"]), []
    graph = helper.make_graph([node], "mdx", [helper.make_tensor_value_info("input", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, shape)], initializer=init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _tones(freqs: list[float], n: int, sr: int = 16000) -> np.ndarray:
    t = np.arange(n) / sr
    return sum(np.sin(2 * np.pi * f * t) for f in freqs).astype(np.float32) * 0.2


def test_mdx_gain_model_round_trips(tmp_path: Path) -> None:
    """All bins kept + a gain-g model: the STFT/model/iSTFT/window plumbing gives g * compensate * mix for any length
    (several windows, a ragged tail)."""
    model = _onnx_model(tmp_path / "gain.onnx", "Mul", n_bins=129, gain=0.5)
    sep = MDXVocalSeparator(model, dim_f=129, compensate=1.25, batch_size=3, **MDX)
    for n in (500, 1984, 9001):
        x = np.random.default_rng(n).standard_normal(n).astype(np.float32)
        assert np.allclose(sep(x, 16000), 0.5 * 1.25 * x, atol=1e-5), n


def test_mdx_drops_bins_above_dim_f(tmp_path: Path) -> None:
    """The model only sees the lowest dim_f bins; the rest come back as silence (MDX's frequency cut-off)."""
    model = _onnx_model(tmp_path / "id.onnx", "Mul", n_bins=64)
    sep = MDXVocalSeparator(model, dim_f=64, compensate=1.0, **MDX)  # bins 0..63 of 129: up to ~3.9 kHz
    low, high = _tones([500.0], 8000), _tones([6000.0], 8000)
    out = sep(low + high, 16000)
    core = slice(500, -500)
    assert np.abs(out[core] - low[core]).max() < 1e-2 * np.abs(low).max()


def test_mdx_denoise_averages_the_negated_pass(tmp_path: Path) -> None:
    """denoise = (f(X) - f(-X)) / 2: zero for an even model (x*x), unchanged for a linear one."""
    x = _tones([300.0, 900.0], 4000)
    square = _onnx_model(tmp_path / "sq.onnx", "Square", n_bins=129)
    assert np.abs(MDXVocalSeparator(square, dim_f=129, **MDX)(x, 16000)).max() > 1e-3
    assert np.abs(MDXVocalSeparator(square, dim_f=129, denoise=True, **MDX)(x, 16000)).max() < 1e-6
    gain = _onnx_model(tmp_path / "g.onnx", "Mul", n_bins=129, gain=2.0)
    assert np.allclose(MDXVocalSeparator(gain, dim_f=129, denoise=True, compensate=1.0, **MDX)(x, 16000), 2 * x,
                       atol=1e-5)


def test_mdx_resamples_to_the_model_rate(tmp_path: Path) -> None:
    """A 44.1 kHz model (the original's rate) on 16 kHz audio: the soxr round trip keeps a band-limited signal."""
    model = _onnx_model(tmp_path / "id.onnx", "Mul", n_bins=129)
    sep = MDXVocalSeparator(model, dim_f=129, compensate=1.0, **{**MDX, "sample_rate": 44100})
    x = _tones([220.0, 1000.0, 3100.0], 16000)
    out = sep(x, 16000)
    assert out.shape == x.shape and out.dtype == np.float32
    assert np.abs(out[200:-200] - x[200:-200]).max() < 1e-2 * np.abs(x).max()


def test_mdx_settings_are_checked_and_missing_file_is_clear(tmp_path: Path) -> None:
    missing = tmp_path / "Kim_Vocal_2.onnx"
    with pytest.raises(FileNotFoundError) as err:
        Wav2VecFeatures(vocal_separator=str(missing))
    assert str(missing) in str(err.value) and "data.stage2_features.vocal_separator" in str(err.value)
    model = _onnx_model(tmp_path / "id.onnx", "Mul", n_bins=129)
    with pytest.raises(ValueError, match="MDX"):
        MDXVocalSeparator(model, dim_f=200, **MDX)  # more bins than n_fft // 2 + 1
    with pytest.raises(ValueError, match="vocal_separator"):
        Wav2VecFeatures(separator_options={"n_fft": 256})


def test_wav2vec_features_of_separated_vocals(tmp_path: Path) -> None:
    """With a separator, wav2vec sees its output: a zero-gain model gives the features of silence."""
    x = np.random.default_rng(9).standard_normal(HOP * 6).astype(np.float32)
    mute = _onnx_model(tmp_path / "mute.onnx", "Mul", n_bins=129, gain=0.0)
    options = dict(dim_f=129, **MDX)
    sep = Wav2VecFeatures(seed=2, vocal_separator=str(mute), separator_options=options)
    assert torch.allclose(sep(x, 6), Wav2VecFeatures(seed=2)(np.zeros_like(x), 6), atol=1e-5)
    plain = Wav2VecFeatures(seed=2)
    assert sep.signature != plain.signature
    again = Wav2VecFeatures(seed=2, vocal_separator=str(mute), separator_options=options)
    assert again.signature == sep.signature
    _onnx_model(mute, "Mul", n_bins=129, gain=1.0)  # replaced in place: new size/mtime -> new cache key
    os.utime(mute, ns=(mute.stat().st_atime_ns, mute.stat().st_mtime_ns + 10**9))
    assert Wav2VecFeatures(seed=2, vocal_separator=str(mute), separator_options=options).signature != sep.signature


def test_ctc_checkpoint_loads_strictly_and_missing_tensors_stop(tmp_path: Path) -> None:
    """wav2vec2-base-960h is a CTC checkpoint: its unused ``lm_head`` (and a dropped SpecAugment vector) are known
    differences; any other missing tensor stops the run naming the config key, the folder and the tensor."""
    from safetensors.torch import load_file, save_file
    from transformers import Wav2Vec2ForCTC

    from mmgt.models.pretrained import IncompleteWeightsError

    tiny = Wav2VecFeatures(seed=7)
    ctc = Wav2Vec2ForCTC(tiny.encoder.model.config)
    ctc.wav2vec2.load_state_dict(tiny.encoder.model.state_dict())
    ctc.save_pretrained(tmp_path / "ctc")
    f = tmp_path / "ctc" / "model.safetensors"
    sd = load_file(str(f))
    assert "lm_head.weight" in sd
    sd.pop("wav2vec2.masked_spec_embed", None)
    save_file(sd, str(f), metadata={"format": "pt"})
    x = np.random.default_rng(1).standard_normal(HOP * 6).astype(np.float32)
    assert torch.equal(Wav2VecFeatures(pretrained_path=str(tmp_path / "ctc"))(x, 6), tiny(x, 6))
    del sd["wav2vec2.encoder.layers.1.attention.q_proj.weight"]
    save_file(sd, str(f), metadata={"format": "pt"})
    with pytest.raises(IncompleteWeightsError) as err:
        Wav2VecFeatures(pretrained_path=str(tmp_path / "ctc"))
    msg = str(err.value)
    assert "data.stage2_features.pretrained_path" in msg and str(tmp_path / "ctc") in msg
    assert "encoder.layers.1.attention.q_proj.weight" in msg


def test_fp16_speech_encoder_runs_in_float32_and_variant(tmp_path: Path) -> None:
    """An fp16 file (plain or as the ``fp16`` variant) is built in float32 and meets float32 waveforms; the dtype
    and variant are part of the cache signature only when they leave the defaults."""
    x = np.random.default_rng(2).standard_normal(HOP * 6).astype(np.float32)
    tiny = Wav2VecFeatures(seed=7)
    expected = tiny(x, 6)
    tiny.encoder.model.half().save_pretrained(tmp_path / "w16")
    tiny.encoder.model.save_pretrained(tmp_path / "var", variant="fp16")
    assert not (tmp_path / "var" / "model.safetensors").exists()
    loaded = Wav2VecFeatures(pretrained_path=str(tmp_path / "w16"))
    assert loaded.encoder.model.dtype == torch.float32
    out = loaded(x, 6)  # "expected scalar type Float but found Half" when built as fp16
    assert out.dtype == torch.float32 and torch.allclose(out, expected, atol=5e-2)  # fp16-rounded weights
    half = Wav2VecFeatures(pretrained_path=str(tmp_path / "w16"), dtype="float16")
    assert half.encoder.model.dtype == torch.float16 and half.signature != loaded.signature
    var = Wav2VecFeatures(pretrained_path=str(tmp_path / "var"), variant="fp16")
    assert var.encoder.model.dtype == torch.float32 and "variant" in var.encoder.settings
    assert torch.equal(var(x, 6), out)
