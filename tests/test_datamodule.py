"""PATSDataModule and the window datasets: batch contracts (BATCHES.md), alignment, robustness, workers."""

from __future__ import annotations

import io
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from mmgt.data.audio_features import Stage1Features, Wav2VecFeatures, window_features
from mmgt.data.corpus import Corpus, CorpusError, write_clip, write_manifest
from mmgt.data.datamodule import PATSDataModule
from mmgt.pose.layout import PoseNormalizer, mouth_opening

HOP = 640
SIZE = 32
N_FRAMES = 60


def _grey(i: int) -> int:
    """Grey level that encodes frame index i (survives H.264 to within a few levels)."""
    return 20 + 3 * i


def _make_corpus(root: Path) -> Path:
    """2 speakers; train 2 + 1 too-short clip, val 2, test 1. Mouth opening = per-frame audio loudness."""
    rng = np.random.default_rng(0)
    recs = []
    plan = [("a0", "alice", "train", N_FRAMES), ("b0", "bob", "train", N_FRAMES), ("short", "bob", "train", 15),
            ("a1", "alice", "val", N_FRAMES), ("b1", "bob", "val", N_FRAMES), ("a2", "alice", "test", N_FRAMES)]
    for clip_id, spk, split, t in plan:
        env = rng.uniform(0.05, 1.0, t).astype(np.float32)
        audio = (rng.standard_normal(t * HOP).astype(np.float32) * np.repeat(env, HOP) * 0.3)
        frames = np.stack([np.full((SIZE, SIZE, 3), _grey(i), np.uint8) for i in range(t)])
        kp = np.zeros((t, 134, 3), np.float32)
        kp[..., :2] = rng.uniform(4, SIZE - 4, (1, 134, 2)) + rng.normal(0, 0.3, (t, 134, 2))
        kp[..., 2] = 0.9
        kp[:, [85, 86, 87], 1] = 12.0
        kp[:, [89, 90, 91], 1] = 12.0 + 6.0 * env[:, None]
        recs.append(write_clip(root, clip_id, spk, split, frames, audio, kp))
    write_manifest(root, recs)
    return root


@pytest.fixture(scope="module")
def corpus_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _make_corpus(tmp_path_factory.mktemp("dm_corpus"))


def _dm(root: Path, stage: str = "smga", **kw) -> PATSDataModule:
    args = {"window": 20, "stride": 5, "batch_size": 4, "n_frames": 4, "mask": {"cell": 4},
            "progress": False}
    args.update(kw)
    dm = PATSDataModule(root, stage, **args)
    dm.prepare_data()
    return dm


# ----------------------------------------------------------------------------------------------- stage 1


def test_stage1_batch_contract(corpus_root: Path) -> None:
    dm = _dm(corpus_root)
    dm.setup("fit")
    assert dm.speakers == ["alice", "bob"] and dm.frame_size == (SIZE, SIZE)
    assert dm.normalizer == PoseNormalizer(SIZE, SIZE) and dm.audio_feature_dim == Stage1Features().dim
    batch = next(iter(dm.train_dataloader()))
    b, n = 4, 20
    assert batch["audio_feat"].shape == (b, n, dm.audio_feature_dim) and batch["audio_feat"].dtype == torch.float32
    assert batch["cond_pose"].shape == (b, 134, 3) and batch["cond_pose"].dtype == torch.float32
    assert batch["poses"].shape == (b, n, 134, 3) and batch["poses"].dtype == torch.float32
    assert batch["vis"].shape == (b, n, 134) and batch["vis"].dtype == torch.bool
    assert not batch["vis"][..., [9, 10, 12, 13]].any() and batch["vis"][..., :9].all()
    assert batch["audio"].shape == (b, n * HOP) and batch["audio"].dtype == torch.float32
    assert batch["frame_size"].dtype == torch.int64 and batch["frame_size"].tolist() == [[SIZE, SIZE]] * b
    assert len(batch["clip_id"]) == b and batch["start"].dtype == torch.int64
    assert set(batch["speaker"].tolist()) <= {0, 1}
    assert (batch["poses"][..., :2].abs() <= 1).all() and torch.allclose(batch["poses"][..., 2], torch.tensor(0.9))


def test_stage1_values_come_from_the_right_frames(corpus_root: Path) -> None:
    dm = _dm(corpus_root)
    dm.setup("validate")
    corpus = Corpus(corpus_root)
    norm = PoseNormalizer(SIZE, SIZE)
    ds = dm.datasets["val"]
    assert [int(s) for c, s in ds.windows if c == 0] == [1, 21]  # val: deterministic, from frame 1
    item = ds[1]
    rec, start = corpus[item["clip_id"]], item["start"]
    kp = corpus.load_keypoints(rec)
    assert np.allclose(item["cond_pose"].numpy(), norm.normalize(kp[start - 1]))
    assert np.allclose(item["poses"].numpy(), norm.normalize(kp[start:start + 20]))
    wav = corpus.load_audio(rec)
    assert np.allclose(item["audio"].numpy(), wav[start * HOP:(start + 20) * HOP])
    feats = Stage1Features()(wav, rec.n_frames)
    assert torch.allclose(item["audio_feat"], feats[start:start + 20], atol=1e-5)


def test_stage1_audio_row_i_matches_pose_frame_i(corpus_root: Path) -> None:
    """The loudness feature of row i correlates best with the mouth opening of pose i (lag 0)."""
    dm = _dm(corpus_root)
    dm.setup("validate")
    rms_col = Stage1Features().slices["rms"].start
    score = {}
    for lag in (-2, -1, 0, 1, 2):
        xs, ys = [], []
        for batch in dm.val_dataloader():
            env = batch["audio_feat"][..., rms_col]
            mouth = mouth_opening(batch["poses"])
            n = env.shape[1]
            a, b = max(0, lag), n + min(0, lag)
            xs.append(env[:, a:b].flatten())
            ys.append(mouth[:, a - lag:b - lag].flatten())
        score[lag] = float(torch.corrcoef(torch.stack([torch.cat(xs), torch.cat(ys)]))[0, 1])
    assert max(score, key=score.get) == 0 and score[0] > 0.9, score


def test_train_starts_are_random_within_stride_and_skip_short_clips(corpus_root: Path, caplog) -> None:
    with caplog.at_level(logging.WARNING):
        dm = _dm(corpus_root)
        dm.setup("fit")
    assert "short" in caplog.text
    ds = dm.datasets["train"]
    assert {r.clip_id for r in ds.records} == {"a0", "b0"} and ds.skipped == ["short"]
    torch.manual_seed(0)
    starts = [ds[0]["start"] for _ in range(40)]
    assert min(starts) >= 1 and max(starts) <= 5 and len(set(starts)) > 1
    last = len([w for w in ds.windows if w[0] == 0]) - 1
    assert all(1 <= ds[last]["start"] <= N_FRAMES - 20 for _ in range(10))


def test_val_batches_identical_with_workers(corpus_root: Path) -> None:
    dm0 = _dm(corpus_root, val_batch_size=3)
    dm0.setup("validate")
    dm2 = _dm(corpus_root, val_batch_size=3, num_workers=2)
    dm2.setup("validate")
    loader = dm2.val_dataloader()
    assert loader.persistent_workers
    for b0, b2 in zip(dm0.val_dataloader(), loader, strict=True):
        assert b0["clip_id"] == b2["clip_id"]
        for key in ("audio_feat", "cond_pose", "poses", "audio", "start"):
            assert torch.equal(b0[key], b2[key])


def test_corrupt_clip_is_replaced_not_fatal(corpus_root: Path, tmp_path: Path, caplog) -> None:
    root = tmp_path / "c"
    shutil.copytree(corpus_root, root)
    bad = Corpus(root)["a0"]
    bad_file = root / bad.keypoints
    bad_file.write_bytes(b"garbage")
    dm = _dm(root, batch_size=2)
    dm.setup("fit")
    seen, count = set(), 0
    with caplog.at_level(logging.WARNING):
        for batch in dm.train_dataloader():
            seen.update(batch["clip_id"])
            count += len(batch["clip_id"])
    assert count == len(dm.datasets["train"]) and seen == {"b0"}
    assert str(bad_file) in caplog.text and caplog.text.count("failed to load") == 1


@pytest.mark.parametrize("stage", ["smga", "video"])
def test_non_finite_keypoints_skip_the_clip_by_name(corpus_root: Path, tmp_path: Path, caplog, stage) -> None:
    """One clip with NaN keypoints would make every loss NaN from step 1: both stages skip it, naming it."""
    root = tmp_path / "c"
    shutil.copytree(corpus_root, root)
    bad = Corpus(root)["a0"]
    kp = np.load(root / bad.keypoints)
    kp[:, 5, 0] = np.nan  # in every window
    np.save(root / bad.keypoints, kp)
    dm = _dm(root, batch_size=2) if stage == "smga" else _dm(root, "video", n_frames=2, stride=8)
    dm.setup("fit")
    with caplog.at_level(logging.WARNING):
        ids = {cid for batch in dm.train_dataloader() for cid in batch["clip_id"]}
    assert "a0" not in ids and ids
    assert "clip a0" in caplog.text and "NaN" in caplog.text


def test_missing_corpus_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="manifest"):
        PATSDataModule(tmp_path / "nothing", progress=False).prepare_data()
    with pytest.raises(ValueError, match="data.stage"):
        PATSDataModule(tmp_path, stage="stage3")


def test_hparams_are_plain(corpus_root: Path) -> None:
    dm = PATSDataModule(corpus_root, mask={"a": 1}, synthetic={"generate_if_missing": False})
    buf = io.BytesIO()
    torch.save(dict(dm.hparams), buf)
    buf.seek(0)
    assert torch.load(buf, weights_only=True)["root"] == str(corpus_root)


# ----------------------------------------------------------------------------------------------- stage 2


def test_stage2_batch_contract(corpus_root: Path) -> None:
    dm = _dm(corpus_root, "video", stride=3)
    dm.setup("validate")
    assert dm.audio_embed_shape == (5, 2, 32) and dm.frame_size == (SIZE, SIZE)
    batch = next(iter(dm.val_dataloader()))
    b, n, h = 4, 4, SIZE // 4
    fr = batch["frames"]
    assert fr.shape == (b, n, 3, SIZE, SIZE) and fr.dtype == torch.float32 and fr.min() >= -1 and fr.max() <= 1
    pi = batch["pose_images"]
    assert pi.shape == (b, n, 3, SIZE, SIZE) and pi.min() >= 0 and pi.max() <= 1 and pi.max() > 0
    k = batch["masks"].shape[1]
    assert batch["masks"].shape == (b, k, n, h, h) and batch["masks"].dtype == torch.float32
    assert batch["masks"].min() >= 0 and batch["masks"].max() <= 1
    assert "mask_pyramid" not in batch  # one size: the model resizes the masks
    assert batch["ref_frame"].shape == (b, 3, SIZE, SIZE)
    assert batch["audio_emb"].shape == (b, n, 5, 2, 32) and batch["audio_emb"].dtype == torch.float32
    assert batch["keypoints"].shape == (b, n, 134, 3) and batch["audio"].shape == (b, n * HOP)
    # frames are the window's frames (grey level encodes the index); val reference = frame 0
    for i in range(b):
        start = int(batch["start"][i])
        for j in range(n):
            level = (float(fr[i, j].mean()) + 1) * 127.5
            assert abs(level - _grey(start + j)) < 4
        assert abs((float(batch["ref_frame"][i].mean()) + 1) * 127.5 - _grey(0)) < 4
    # audio windows are the ±2 neighbourhoods of the cached clip embedding
    corpus = Corpus(corpus_root)
    rec = corpus[batch["clip_id"][1]]
    emb = torch.from_numpy(np.load(corpus.cache_path(rec, Wav2VecFeatures().signature)).astype(np.float32))
    s = int(batch["start"][1])
    assert torch.allclose(batch["audio_emb"][1], window_features(emb, 2)[s:s + n])
    assert np.allclose(batch["keypoints"][1].numpy(), corpus.load_keypoints(rec)[s:s + n])


def test_stage2_single_frame_resized(corpus_root: Path) -> None:
    dm = _dm(corpus_root, "video", n_frames=1, image_size=16, mask={"cell": 2})
    dm.setup("fit")
    assert dm.frame_size == (16, 16)
    batch = next(iter(dm.train_dataloader()))
    assert batch["frames"].shape == (4, 1, 3, 16, 16) and batch["ref_frame"].shape == (4, 3, 16, 16)
    assert batch["masks"].shape[2:] == (1, 8, 8)
    corpus = Corpus(corpus_root)
    rec, s = corpus[batch["clip_id"][0]], int(batch["start"][0])
    kp = corpus.load_keypoints(rec)[s:s + 1]
    assert np.allclose(batch["keypoints"][0, ..., :2].numpy(), kp[..., :2] * 0.5)


def test_stage2_corrupt_video_is_replaced(corpus_root: Path, tmp_path: Path, caplog) -> None:
    root = tmp_path / "c"
    shutil.copytree(corpus_root, root)
    bad = Corpus(root)["b1"]
    (root / bad.video).write_bytes(b"\x00garbage" * 100)
    dm = _dm(root, "video", n_frames=2, stride=8)
    dm.setup("validate")
    with caplog.at_level(logging.WARNING):
        ids = [cid for batch in dm.val_dataloader() for cid in batch["clip_id"]]
    assert len(ids) == len(dm.datasets["val"]) and set(ids) == {"a1"}
    assert str(root / bad.video) in caplog.text


def test_frame_cache_serves_the_same_windows_and_keeps_its_budget(corpus_root: Path, monkeypatch) -> None:
    """data.frame_cache_mb: the windows served from decoded clips in memory equal the ones read from the file each
    time; each clip is decoded once while the budget holds it, and a clip beyond the budget is read per window."""
    from mmgt.data import corpus as corpus_mod

    calls: list[tuple[str, int, int | None]] = []
    real = corpus_mod.Corpus.load_video

    def counted(self, rec, start=0, count=None):  # noqa: ANN001, ANN202 - a spy on the real loader
        calls.append((rec.clip_id, start, count))
        return real(self, rec, start, count)

    monkeypatch.setattr(corpus_mod.Corpus, "load_video", counted)

    def items(cache_mb: float) -> list[dict]:
        dm = _dm(corpus_root, "video", n_frames=3, stride=2, frame_cache_mb=cache_mb)
        dm.setup("validate")
        ds = dm.datasets["val"]
        return [ds[i] for i in range(len(ds))] * 2  # every window twice

    plain = items(0)
    assert all(count is not None for _, _, count in calls)  # off: window reads only
    calls.clear()
    cached = items(256)
    assert len(plain) == len(cached) > 4
    for a, b in zip(plain, cached, strict=True):
        assert a["clip_id"] == b["clip_id"] and a["start"] == b["start"]
        for key in ("frames", "ref_frame", "pose_images", "masks"):
            assert torch.equal(a[key], b[key]), key
    assert sorted(calls) == [("a1", 0, None), ("b1", 0, None)]  # each val clip decoded once, whole
    calls.clear()
    one_clip = N_FRAMES * SIZE * SIZE * 3 / 2**20  # room for exactly one decoded clip
    items(one_clip)
    whole = [c for c in calls if c[2] is None]
    assert len(whole) == 1 and len(calls) > 1  # the first clip is held, the second read window by window
    with pytest.raises(ValueError, match="frame_cache_mb"):
        _dm(corpus_root, "video", frame_cache_mb=-1)
