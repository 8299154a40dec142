"""PATS import (issue 8): intervals CSV + raw videos -> corpus, pose estimators, h5 import; its writer (issue 17).

The raw material is fake but built like the real thing: long 30-fps, 96x64 (non-square) videos with an AAC
track, showing the synthetic talking figure at a per-speaker horizontal offset, a frame-index code in a bar
at the bottom and a 1-kHz beep at a known time, plus per-video keypoints in source pixels and an intervals
CSV in the PATS column layout.
"""

from __future__ import annotations

import csv
import errno
import os
import threading
from pathlib import Path

import numpy as np
import pytest

from mmgt.data.corpus import HOP, MANIFEST, Corpus, leftovers, writer_lock
from mmgt.data.pats import (
    PatsSettings,
    VideoIndex,
    crop_offset,
    cut_audio,
    parse_time,
    prepare_pats,
    read_intervals,
    run_pats,
    video_ids,
    window_spans,
)
from mmgt.data.synthetic import synth_sequence
from mmgt.data.video_io import probe_video, read_video, write_video
from mmgt.pose.estimators import (
    CropTransform,
    PoseContext,
    PrecomputedEstimator,
    affine_crop,
    back_transform,
    box_to_center_scale,
    build_estimator,
    check_estimator_config,
    coco_wholebody_to_134,
    simcc_decode,
)

SRC_FPS, SRC_H, SRC_W, FIG, SECONDS = 30, 64, 96, 64, 12
SIZE = 32
BEEP_AT = 6.0
OFFSETS = {"oliver": 24, "jon": 32}  # where the figure sits; crop: oliver 0.25 * 96 = 24, jon "right" = 96 - 64
YT_ID = "abcdefghijk"


def _bar_level(j: np.ndarray | int) -> np.ndarray:
    return 8 + (np.asarray(j) % 10) * 24  # far apart: the tiny H.264 clips shift levels by a few units


def _make_source(path: Path, seed: int, style: int, x_off: int) -> tuple[np.ndarray, np.ndarray]:
    n = SECONDS * SRC_FPS
    frames, _, kp = synth_sequence(n, FIG, seed=seed, style=style)
    canvas = np.zeros((n, SRC_H, SRC_W, 3), np.uint8)
    canvas[:, :, x_off:x_off + FIG] = frames
    canvas[:, 56:64, x_off:x_off + FIG] = _bar_level(np.arange(n))[:, None, None, None].astype(np.uint8)
    audio = np.zeros(SECONDS * 16000, np.float32)
    t = np.arange(1600) / 16000
    audio[int(BEEP_AT * 16000):int(BEEP_AT * 16000) + 1600] = 0.5 * np.sin(2 * np.pi * 1000 * t)
    write_video(path, canvas, fps=SRC_FPS, audio=audio)
    kp = kp.copy()
    kp[..., 0] += x_off
    return canvas, kp.astype(np.float32)


ROWS = [  # speaker, interval_id, video_link, video_fn, start, end, dataset
    ("oliver", "101", f"https://www.youtube.com/watch?v={YT_ID}", "Oliver_Show.mp4", "1.0", "3.0", "train"),
    ("oliver", "102", f"https://www.youtube.com/watch?v={YT_ID}", "Oliver_Show.mp4", "0:00:05.00", "0:00:08.20",
     "test"),
    ("oliver", "103", f"https://www.youtube.com/watch?v={YT_ID}", "Oliver_Show.mp4", "9.0", "9.5", "train"),
    ("oliver", "104", "https://www.youtube.com/watch?v=zzzzzzzzzzz", "gone.mp4", "1.0", "4.0", "train"),
    ("oliver", "105", f"https://www.youtube.com/watch?v={YT_ID}", "Oliver_Show.mp4", "8.5", "11.5", "dev"),
    ("jon", "201", "http://www.cc.com/video/dsx1/jon-stewart", "jon_show.mp4", "0.5", "2.9", "train"),
    ("jon", "202", "http://www.cc.com/video/dsx1/jon-stewart", "jon_show.mp4", "4.0", "7.0", "train"),
    ("jon", "203", "http://www.cc.com/video/dsx1/jon-stewart", "jon_show.mp4", "7.5", "10.5", "train"),
    ("jon", "204", "http://www.cc.com/video/x/y", "broken.mp4", "1.0", "3.0", "train"),
    ("conan", "301", f"https://www.youtube.com/watch?v={YT_ID}", "Oliver_Show.mp4", "1.0", "3.0", "train"),
]
EXPECTED = {"oliver-101": 50, "oliver-102": 75, "oliver-105": 75, "jon-201": 60, "jon-202": 75}


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> dict:
    d = tmp_path_factory.mktemp("pats_raw")
    videos, kps = d / "videos", d / "keypoints"
    (videos / "oliver").mkdir(parents=True)
    kps.mkdir()
    frames_a, kp_a = _make_source(videos / "oliver" / f"{YT_ID}.mp4", seed=1, style=0, x_off=OFFSETS["oliver"])
    frames_b, kp_b = _make_source(videos / "jon_show.mp4", seed=2, style=1, x_off=OFFSETS["jon"])
    (videos / "broken.mp4").write_bytes(np.random.default_rng(0).bytes(4000))
    np.save(kps / f"{YT_ID}.npy", kp_a)  # per video: one row per source frame
    np.save(kps / "jon_show.npy", kp_b)
    np.save(kps / "203.npy", np.zeros((80, 134, 3), np.float32))  # per interval: nobody there
    csv_path = d / "cmu_intervals_df.csv"
    with csv_path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["", "dataset", "delta_time", "end_time", "interval_id", "speaker", "start_time", "video_fn",
                    "video_link"])
        for i, (spk, iid, link, fn, start, end, ds) in enumerate(ROWS):
            w.writerow([i, ds, 0.0, end, iid, spk, start, fn, link])
    return {"dir": d, "videos": videos, "keypoints": kps, "csv": csv_path, "frames": {"oliver": frames_a,
            "jon": frames_b}, "kp": {"oliver": kp_a, "jon": kp_b}}


def _settings(raw: dict, root: Path, **kw) -> dict:
    cfg = {"intervals_csv": str(raw["csv"]), "videos_dir": str(raw["videos"]), "output_root": str(root),
           "speakers": ["oliver", "jon"], "crop": {"default": "center", "oliver": 0.25, "jon": "right"},
           "size": SIZE, "max_seconds": 3.0, "min_seconds": 1.0, "val_per_speaker": 1, "workers": 1,
           "progress": False, "estimator": {"name": "precomputed", "keypoints_dir": str(raw["keypoints"])}}
    cfg.update(kw)
    return cfg


def _prepare_cfg(raw: dict, base: Path, root: Path, *extra: str):
    """The composed `python -m mmgt.prepare task=pats ...` config (prepare.yaml + conf/pats/default.yaml)."""
    from hydra import compose, initialize_config_dir

    from mmgt.utils.paths import CONF_DIR

    overrides = [
        "task=pats", f"paths.root_dir={base}", f"data.root={root}", "progress=false",
        f"pats.intervals_csv={raw['csv']}", f"pats.videos_dir={raw['videos']}", "pats.speakers=[oliver,jon]",
        "pats.crop.oliver=0.25", f"pats.size={SIZE}", "pats.max_seconds=3.0", "pats.min_seconds=1.0",
        "pats.val_per_speaker=1", "pats.workers=2", "pats.estimator.name=precomputed",
        f"pats.estimator.keypoints_dir={raw['keypoints']}", "+pats.progress=false", *extra,
    ]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="prepare", overrides=overrides)


@pytest.fixture(scope="module")
def corpus_root(raw: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`python -m mmgt.prepare task=pats` through Hydra (prepare.yaml + conf/pats/default.yaml), 2 workers."""
    from mmgt.data.prepare import run

    base = tmp_path_factory.mktemp("pats_out")
    root = base / "corpus"
    assert run(_prepare_cfg(raw, base, root)) == 0
    return root


def test_clips_durations_fps_crop_audio_splits(corpus_root: Path) -> None:
    corpus = Corpus(corpus_root)
    assert {r.clip_id: r.n_frames for r in corpus} == EXPECTED
    splits = {r.clip_id: r.split for r in corpus}
    assert splits["oliver-101"] == "train" and splits["oliver-102"] == "test" and splits["oliver-105"] == "val"
    assert sorted([splits["jon-201"], splits["jon-202"]]) == ["train", "val"]  # jon had no dev interval
    import soundfile as sf

    for rec in corpus:
        assert rec.fps == 25 and (rec.width, rec.height) == (SIZE, SIZE)
        info = probe_video(corpus.path(rec, "video"))
        assert (info.fps, info.width, info.height) == (25, SIZE, SIZE)
        assert len(read_video(corpus.path(rec, "video"))) == rec.n_frames
        a = sf.info(str(corpus.path(rec, "audio")))
        assert (a.samplerate, a.channels, a.frames) == (16000, 1, rec.n_frames * HOP)
        assert corpus.load_keypoints(rec).shape == (rec.n_frames, 134, 3)


def test_cut_is_exact_and_crop_and_keypoints_line_up(corpus_root: Path, raw: dict) -> None:
    corpus = Corpus(corpus_root)
    for clip_id, start, speaker in (("oliver-102", 5.0, "oliver"), ("jon-201", 0.5, "jon")):
        rec = corpus[clip_id]
        frames = corpus.load_video(rec)
        src_idx = np.floor((start + np.arange(rec.n_frames) / 25) * SRC_FPS + 1e-6).astype(int)
        # the frame code in the bottom bar says which source frame each output frame shows
        level = frames[:, 29:31, 4:28].astype(float).mean(axis=(1, 2, 3))
        assert np.array_equal(np.round((level - 8) / 24).astype(int) % 10, src_idx % 10), clip_id
        # the figure is where the per-speaker crop should put it (vs. a plain resize of the source square)
        from PIL import Image

        x0 = OFFSETS[speaker]
        want = np.stack([np.asarray(Image.fromarray(raw["frames"][speaker][j, :, x0:x0 + FIG]).resize(
            (SIZE, SIZE), Image.Resampling.LANCZOS)) for j in src_idx])
        err = np.abs(frames[:, :26].astype(float) - want[:, :26]).mean()
        shifted = np.abs(frames[:, :26, 4:].astype(float) - want[:, :26, :-4]).mean()
        assert err < 8.0 and shifted > 2.5 * err, (clip_id, err, shifted)  # two lossy H.264 passes at 32 px
        # keypoints: the source keypoints of the same source frames through the same crop + resize
        kp = corpus.load_keypoints(rec)
        src = raw["kp"][speaker][src_idx]
        np.testing.assert_allclose(kp[..., 0], (src[..., 0] + 0.5 - x0) * SIZE / FIG - 0.5, atol=1e-4)
        np.testing.assert_allclose(kp[..., 1], (src[..., 1] + 0.5) * SIZE / FIG - 0.5, atol=1e-4)


def test_audio_cut_matches_the_source(corpus_root: Path, raw: dict) -> None:
    corpus = Corpus(corpus_root)
    full = cut_audio(raw["videos"] / "oliver" / f"{YT_ID}.mp4", 0.0, SECONDS)
    onset = np.argmax(np.abs(full) > 0.1) / 16000  # the beep as the container decodes (AAC delay included)
    assert abs(onset - BEEP_AT) < 0.1
    clip = corpus.load_audio(corpus["oliver-102"])
    assert abs(np.argmax(np.abs(clip) > 0.1) / 16000 - (onset - 5.0)) < 0.002
    assert np.abs(corpus.load_audio(corpus["oliver-101"])).max() < 0.05  # no beep in [1, 3)


def test_skip_report(corpus_root: Path) -> None:
    with (corpus_root / "skipped.csv").open() as fh:
        rows = {r["interval_id"]: r["reason"] for r in csv.DictReader(fh)}
    assert rows == {"103": "too short", "104": "missing video", "203": "no person detected",
                    "204": "decode error"}


def test_corpus_validates_and_feeds_the_datamodule(corpus_root: Path) -> None:
    from mmgt.data.datamodule import PATSDataModule
    from mmgt.data.validate import validate_corpus

    faults = validate_corpus(corpus_root, workers=1, progress=False)
    assert not [f for f in faults if f.fatal], [str(f) for f in faults]
    dm = PATSDataModule(corpus_root, "smga", window=20, stride=10, batch_size=2, progress=False)
    dm.prepare_data()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["poses"].shape == (2, 20, 134, 3) and dm.frame_size == (SIZE, SIZE)
    assert batch["vis"][..., 1].all()  # the neck is there in every frame


def test_second_run_does_nothing_and_resume_redoes_only_unfinished(corpus_root: Path, raw: dict) -> None:
    cfg = _settings(raw, corpus_root)
    files = sorted(p for p in (corpus_root / "clips").rglob("*") if p.is_file())
    stamps = {p: p.stat().st_mtime_ns for p in files}
    manifest = (corpus_root / "manifest.csv").read_text()
    report = run_pats(cfg)
    assert report.processed == 0 and report.reused == 8 and not report.errors
    assert {p: p.stat().st_mtime_ns for p in files} == stamps
    assert (corpus_root / "manifest.csv").read_text() == manifest
    assert sorted(r["reason"] for r in report.skipped) == ["decode error", "missing video", "no person detected",
                                                           "too short"]
    # an interrupted clip (no .done marker) is redone, and only that one
    (corpus_root / "clips" / "jon-202" / ".done").unlink()
    report = run_pats(cfg)
    assert report.processed == 1 and report.reused == 7
    assert (corpus_root / "manifest.csv").read_text() == manifest
    assert prepare_pats(cfg) == 0  # and the entry point agrees


@pytest.mark.parametrize("workers", [1, 2])
def test_full_disk_is_one_line_naming_the_final_file_and_a_rerun_resumes(
        workers: int, raw: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """Issue 17: the clip is built in a staging folder, yet the error names the file the corpus wanted; the run
    stops there (no interval after it is decoded for nothing; in a pool, the jobs not started are cancelled) and
    leaves nothing under a final name. Forked workers inherit the full disk."""
    from mmgt.data.prepare import run

    root = tmp_path / "corpus"
    cfg = _prepare_cfg(raw, tmp_path, root, f"pats.workers={workers}", "pats.mp_context=fork",
                       "pats.speakers=[oliver]")
    real, calls = np.save, [0]

    def full(fh, arr, *args, **kwargs):  # a clip's keypoints: a few bytes, then the disk is full
        calls[0] += 1
        fh.write(b"\x93NUMPY")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), fh.name)

    monkeypatch.setattr(np, "save", full)
    assert run(cfg) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    first = "oliver-101" if workers == 1 else line.split("/clips/")[-1].split("/")[0]
    assert line == (f"ERROR {root / 'clips' / first / 'keypoints.npy'}: cannot write "
                    f"(No space left on device [Errno {errno.ENOSPC}])")
    assert calls[0] == (1 if workers == 1 else 0)  # in-process: stopped at the first failed write
    assert not (root / "clips").exists() and not (root / MANIFEST).exists()
    assert leftovers(root) == [] and not list((root / ".pats").rglob("*.npy"))  # the staging copies are gone too
    monkeypatch.setattr(np, "save", real)  # space freed: the rerun writes the clips
    assert run(cfg) == 0
    assert {r.clip_id for r in Corpus(root)} == {"oliver-101", "oliver-102", "oliver-105"}


def test_run_sweeps_what_killed_runs_left(corpus_root: Path, raw: dict) -> None:
    """A temp file of a writer killed mid-file and a dead staging copy are removed at the start of the next run
    (flagged by the validator until then); the finished clips are not touched."""
    from mmgt.data.validate import validate_corpus

    temp = corpus_root / "clips" / "oliver-101" / ".video.k2j8x0qz.mp4"
    temp.write_bytes(b"half a video")
    staged = corpus_root / ".pats" / "staging" / "jon-201.999999" / "clips" / "jon-201" / "video.mp4"
    staged.parent.mkdir(parents=True)
    staged.write_bytes(b"half a clip")
    assert temp in leftovers(corpus_root)
    assert any(str(temp) in str(f) and not f.fatal for f in validate_corpus(corpus_root, workers=1, progress=False))
    files = sorted(p for p in (corpus_root / "clips").rglob("*") if p.is_file() and p != temp)
    stamps = {p: p.stat().st_mtime_ns for p in files}
    report = run_pats(_settings(raw, corpus_root))
    assert report.processed == 0 and report.reused == 8
    assert not temp.exists() and not (corpus_root / ".pats" / "staging").exists() and leftovers(corpus_root) == []
    assert {p: p.stat().st_mtime_ns for p in files} == stamps


def test_run_waits_for_another_writer(corpus_root: Path, raw: dict) -> None:
    """Sweeping is only safe with no other writer at work: a second run on the corpus waits for the writer lock."""
    finished = threading.Event()
    worker = threading.Thread(target=lambda: (run_pats(_settings(raw, corpus_root)), finished.set()))
    with writer_lock(corpus_root):
        worker.start()
        assert not finished.wait(1.5)
    worker.join(60)
    assert finished.is_set()


def test_fixed_windows(raw: dict, tmp_path: Path) -> None:
    report = run_pats(_settings(raw, tmp_path, speakers=["oliver"], limit=1, window_seconds=0.8,
                                window_hop_seconds=0.4, val_per_speaker=0))
    corpus = Corpus(tmp_path)
    assert report.processed == 1 and [r.clip_id for r in corpus] == [f"oliver-101_w{k:03d}" for k in range(4)]
    assert {r.n_frames for r in corpus} == {20}
    kp = [corpus.load_keypoints(r) for r in corpus]
    np.testing.assert_array_equal(kp[0][10:], kp[1][:10])  # hop 10 frames


def test_helpers() -> None:
    assert parse_time("0:01:02.5") == 62.5 and parse_time("01:02") == 62.0 and parse_time("7.25") == 7.25
    assert video_ids(f"https://www.youtube.com/watch?v={YT_ID}&t=3") == [YT_ID]
    assert video_ids(f"https://youtu.be/{YT_ID}") == [YT_ID]
    assert crop_offset(1280, 720, 0.38) == (486, 0, 720) and crop_offset(1280, 720, "right") == (560, 0, 720)
    assert crop_offset(1280, 720, 0.9) == (560, 0, 720)  # clamped so the square fits
    assert window_spans(50, None) == [(0, 50)] and window_spans(50, (20, 20)) == [(0, 20), (20, 40)]


def test_video_index_and_bad_settings(raw: dict, tmp_path: Path) -> None:
    ivs = {iv.interval_id: iv for iv in read_intervals(raw["csv"])}
    assert set(ivs) == {r[1] for r in ROWS}
    index = VideoIndex(raw["videos"])
    assert index.find(ivs["101"]).name == f"{YT_ID}.mp4"  # by YouTube id
    assert index.find(ivs["201"]).name == "jon_show.mp4"  # by video_fn
    assert index.find(ivs["104"]) is None
    with pytest.raises(FileNotFoundError, match="pats.intervals_csv"):
        PatsSettings.from_dict(_settings(raw, tmp_path, intervals_csv=str(tmp_path / "nope.csv")))
    with pytest.raises(ValueError, match="unknown pats settings"):
        PatsSettings.from_dict(_settings(raw, tmp_path, colour="red"))
    assert prepare_pats(_settings(raw, tmp_path, estimator={"name": "dwpose", "det_model": None})) == 2


def test_config_file_keys_are_settings() -> None:
    from omegaconf import OmegaConf

    from mmgt.utils.paths import CONF_DIR

    cfg = OmegaConf.to_container(OmegaConf.load(Path(CONF_DIR) / "pats" / "default.yaml"), resolve=False)
    assert set(cfg) <= set(PatsSettings.__dataclass_fields__)
    assert cfg["speakers"] == ["chemistry", "oliver", "jon", "seth"] and cfg["size"] == 512 and cfg["fps"] == 25
    assert cfg["max_seconds"] == 15 and cfg["crop"]["oliver"] == 0.38


# --------------------------------------------------------------------------------------------------- estimators


def test_precomputed_needs_context_and_maps_through_crop(tmp_path: Path) -> None:
    kp = np.zeros((5, 134, 3), np.float32)
    kp[:, :, 0], kp[:, :, 1], kp[:, :, 2] = 300.0, 100.0, 0.9
    kp[:, 7, 0] = 10.0  # left of the crop -> invisible
    np.save(tmp_path / "42.npy", kp.reshape(5, -1))  # flat (N, 402) is accepted too
    est = PrecomputedEstimator(tmp_path)
    frames = np.zeros((4, 8, 8, 3), np.uint8)
    ctx = PoseContext("s-42", "42", "s", None, np.arange(4), CropTransform(200, 0, 400, 8))
    out = est(frames, ctx)
    assert out.shape == (4, 134, 3) and np.allclose(out[:, 0, :2], [(100.5 * 8 / 400) - 0.5, 100.5 / 50 - 0.5])
    assert (out[:, 7, 2] == 0).all() and (out[:, 0, 2] == 0.9).all()
    with pytest.raises(Exception, match="PoseContext"):
        est(frames)


def test_coco_wholebody_to_134_layout() -> None:
    kp = np.zeros((133, 3), np.float32)
    kp[:, 0] = np.arange(133)
    kp[:, 2] = 0.5
    kp[5] = (10.0, 20.0, 0.9)  # left shoulder
    kp[6] = (30.0, 40.0, 0.4)  # right shoulder
    out = coco_wholebody_to_134(kp)
    assert out.shape == (134, 3)
    np.testing.assert_allclose(out[1], (20.0, 30.0, 0.4))  # neck: mean of shoulders, min score
    assert out[2, 0] == 30.0 and out[5, 0] == 10.0  # right / left shoulder (OpenPose order)
    assert [out[i, 0] for i in (0, 3, 4, 6, 7, 8, 11, 14, 15, 16, 17)] == [0, 8, 10, 7, 9, 12, 11, 2, 1, 4, 3]
    np.testing.assert_array_equal(out[18:, 0], np.arange(17, 133))  # feet, face, hands unchanged


def test_simcc_decoding_and_affine_round_trip() -> None:
    sx = np.full((1, 2, 20), -1.0, np.float32)
    sy = np.full((1, 2, 30), -1.0, np.float32)
    sx[0, 0, 7], sy[0, 0, 11] = 0.8, 0.6
    out = simcc_decode(sx, sy, split_ratio=2.0)
    np.testing.assert_allclose(out[0, 0], (3.5, 5.5, 0.6))
    assert out[0, 1, 2] <= 0 and (out[0, 1, :2] == -1).all()
    # a bright pixel survives crop -> argmax -> back-transform at its own place
    img = np.zeros((60, 80, 3), np.uint8)
    img[37, 45] = 255
    center, scale = box_to_center_scale(np.array([30, 20, 60, 50]), aspect=36 / 48)
    assert abs(scale[0] / scale[1] - 0.75) < 1e-6
    crop = affine_crop(img, center, scale, (36, 48))[..., 0].astype(float)
    y, x = np.unravel_index(np.argmax(crop), crop.shape)
    back = back_transform(np.array([x, y], np.float32), center, scale, (36, 48))
    assert np.abs(back - (45, 37)).max() < 0.6


def test_dwpose_missing_weights_name_file_and_key(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"yolox\.onnx.*pats\.estimator\.det_model"):
        build_estimator({"name": "dwpose", "det_model": str(tmp_path / "yolox.onnx"),
                         "pose_model": str(tmp_path / "pose.onnx")})
    (tmp_path / "yolox.onnx").write_bytes(b"x")
    with pytest.raises(FileNotFoundError, match=r"pose\.onnx.*pats\.estimator\.pose_model"):
        check_estimator_config({"name": "dwpose", "det_model": str(tmp_path / "yolox.onnx"),
                                "pose_model": str(tmp_path / "pose.onnx")})
    with pytest.raises(ValueError, match="expected one of"):
        build_estimator({"name": "openpose"})


def _linear_head_model(path: Path, in_shape: tuple, outputs: dict, seed: int = 0) -> None:
    """A random-init ONNX net of the right shapes: global mean of the image -> per output MatMul + bias."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes = [helper.make_node("ReduceMean", ["input"], ["pooled"], axes=[2, 3], keepdims=0)]
    inits, outs = [], []
    for name, (shape, bias) in outputs.items():
        w = (rng.standard_normal((3, int(np.prod(shape)))) * 1e-5).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"{name}_w"),
                  numpy_helper.from_array(bias.reshape(-1).astype(np.float32), f"{name}_b"),
                  numpy_helper.from_array(np.asarray(shape, np.int64), f"{name}_shape")]
        nodes += [helper.make_node("MatMul", ["pooled", f"{name}_w"], [f"{name}_mm"]),
                  helper.make_node("Add", [f"{name}_mm", f"{name}_b"], [f"{name}_flat"]),
                  helper.make_node("Reshape", [f"{name}_flat", f"{name}_shape"], [name])]
        outs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape)))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                         list(in_shape))], outs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def test_dwpose_pipeline_on_random_init_onnx_models(tmp_path: Path) -> None:
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    # detector: 64x64 input -> 8x8 + 4x4 + 2x2 = 84 anchors x (4 box + obj + 80 classes); one confident person
    # at stride-8 cell (3, 3): centre (3.5, 3.5) * 8 = (28, 28), size 30 x 40 (in letterboxed input pixels)
    det_bias = np.zeros((84, 85), np.float32)
    det_bias[27, :6] = [0.5, 0.5, np.log(30 / 8), np.log(40 / 8), 0.9, 0.9]
    _linear_head_model(tmp_path / "det.onnx", (1, 3, 64, 64), {"dets": ((1, 84, 85), det_bias)})
    # pose: 48x36 input -> SimCC maps of 2x the input size, a known peak per keypoint
    rng = np.random.default_rng(1)
    bx, by = rng.integers(0, 72, 133), rng.integers(0, 96, 133)
    sx, sy = np.zeros((133, 72)), np.zeros((133, 96))
    sx[np.arange(133), bx], sy[np.arange(133), by] = 0.8, 0.7
    _linear_head_model(tmp_path / "pose.onnx", (1, 3, 48, 36),
                       {"simcc_x": ((1, 133, 72), sx), "simcc_y": ((1, 133, 96), sy)})
    est = build_estimator({"name": "dwpose", "det_model": str(tmp_path / "det.onnx"),
                           "pose_model": str(tmp_path / "pose.onnx")})
    assert est.det_hw == (64, 64) and est.pose_hw == (48, 36)
    frames = np.random.default_rng(0).integers(0, 255, (3, 32, 32, 3), dtype=np.uint8)
    boxes = est.detect(frames[0])
    # letterbox ratio 2: the box in frame pixels is half the input-pixel box
    np.testing.assert_allclose(boxes[0], [6.5, 4.0, 21.5, 24.0, 0.81], atol=0.05)
    kp = est(frames)
    assert kp.shape == (3, 134, 3) and kp.dtype == np.float32
    # expected: SimCC peak / 2 in the 36x48 crop, mapped back through the padded, aspect-fixed box
    cx, cy, w, h = 14.0, 14.0, 15.0 * 1.25, 20.0 * 1.25
    w, h = (w, w / 0.75) if w > h * 0.75 else (h * 0.75, h)
    want = np.stack([bx / 2 / 36 * w + cx - w / 2, by / 2 / 48 * h + cy - h / 2, np.full(133, 0.7)], -1)
    np.testing.assert_allclose(kp, np.broadcast_to(coco_wholebody_to_134(want), kp.shape), atol=0.1)
    # no person -> zeros (the pipeline then reports "no person detected")
    det_bias[27, 4] = 0.1
    _linear_head_model(tmp_path / "det.onnx", (1, 3, 64, 64), {"dets": ((1, 84, 85), det_bias)})
    est = build_estimator({"name": "dwpose", "det_model": str(tmp_path / "det.onnx"),
                           "pose_model": str(tmp_path / "pose.onnx")})
    assert not est(frames).any()


# --------------------------------------------------------------------------------------------------- PATS h5


def test_pats_h5_import(tmp_path: Path) -> None:
    h5py = pytest.importorskip("h5py")
    import mmgt.data.pats_h5 as old_path
    from mmgt.data.pats.h5 import CACHE_SIGNATURE, import_pats_h5

    assert old_path.import_pats_h5 is import_pats_h5  # the old import path still works

    t = 30  # 2 s at 15 fps
    pose = np.zeros((t, 104), np.float32)
    pose[:, 1], pose[:, 52 + 1] = -100.0, 10.0  # right shoulder 100 px left of the neck
    pose[:, 3] = np.linspace(-150, -50, t)  # right wrist moves
    conf = np.full((t, 52), 0.9, np.float32)
    for iid in ("1", "2"):
        (tmp_path / "processed" / "oliver").mkdir(parents=True, exist_ok=True)
        with h5py.File(tmp_path / "processed" / "oliver" / f"{iid}.h5", "w") as f:
            f["pose/data"], f["pose/confidence"] = pose, conf
            f["audio/log_mel_400"] = np.random.default_rng(0).normal(size=(200, 64)).astype(np.float32)
    recs = import_pats_h5(tmp_path / "processed", tmp_path / "out", size=72, source_height=720,
                          val_per_speaker=1, progress=False)
    corpus = Corpus(tmp_path / "out")
    assert len(recs) == 2 and {r.split for r in corpus} == {"train", "val"}
    rec = corpus.records[0]
    assert rec.fps == 25 and rec.n_frames == 50
    kp = corpus.load_keypoints(rec)
    np.testing.assert_allclose(kp[:, 1, :2], np.broadcast_to([36.0, 21.6], (50, 2)), atol=1e-4)  # neck
    np.testing.assert_allclose(kp[:, 2, :2], np.broadcast_to([26.0, 22.6], (50, 2)), atol=1e-4)  # r shoulder
    assert (kp[:, [9, 10, 12, 13] + list(range(18, 92)), 2] == 0).all()  # legs, feet, face: invisible
    assert (kp[:, 4, 0][1:] > kp[:, 4, 0][:-1]).all()  # the wrist keeps moving after resampling
    assert np.load(corpus.cache_path(rec, CACHE_SIGNATURE)).shape == (50, 64)
