"""Audio feature extractors: exact lengths, frame alignment, tiny offline models, windows, caching."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from mmgt.data.audio_features import (
    Stage1Features,
    Wav2VecFeatures,
    cache_is_fresh,
    ensure_feature_cache,
    feature_cache_path,
    resample_frames,
    window_features,
    window_indices,
)
from mmgt.data.corpus import Corpus, write_clip, write_manifest

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


def test_wav2vec_resamples_before_the_transformer_by_default() -> None:
    """As the original: the transformer runs on 25 fps frames (its input length is n_frames), unless "after"."""
    x = np.random.default_rng(5).standard_normal(HOP * 12).astype(np.float32)
    seen: list[int] = []
    before = Wav2VecFeatures(seed=1)
    layer = before.encoder.model.encoder.layers[0]
    handle = layer.register_forward_hook(lambda _m, inp, _o: seen.append(inp[0].shape[1]))
    emb = before(x, 12)
    handle.remove()
    assert seen == [12] and emb.shape == (12, 2, 32)
    after = Wav2VecFeatures(seed=1, resample="after")
    layer = after.encoder.model.encoder.layers[0]
    handle = layer.register_forward_hook(lambda _m, inp, _o: seen.append(inp[0].shape[1]))
    other = after(x, 12)
    handle.remove()
    assert seen[1] > 20 and other.shape == emb.shape and not torch.allclose(other, emb)
    assert before.signature != after.signature
