"""Corpus format, media I/O, the synthetic corpus and the validator (`python -m mmgt.prepare`)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from mmgt.data.corpus import HOP, Corpus, CorpusError, read_manifest, write_clip, write_manifest
from mmgt.data.synthetic import ensure_corpus, frame_loudness, generate_corpus, speaker_style, synth_sequence
from mmgt.data.validate import validate_corpus
from mmgt.data.video_io import probe_video, read_audio, read_video, write_video
from mmgt.pose.layout import mouth_opening

REPO = Path(__file__).resolve().parents[1]


def test_video_roundtrip_with_audio(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    frames = np.repeat(np.linspace(0, 250, 12).astype(np.uint8)[:, None, None, None], 3, -1)
    frames = np.ascontiguousarray(np.broadcast_to(frames, (12, 32, 48, 3)))
    audio = rng.standard_normal(12 * HOP).astype(np.float32) * 0.1
    path = write_video(tmp_path / "v.mp4", frames, audio=audio)
    info = probe_video(path)
    assert (info.fps, info.n_frames, info.width, info.height, info.has_audio) == (25.0, 12, 48, 32, True)
    got = read_video(path, start=3, count=4)
    assert got.shape == (4, 32, 48, 3)
    assert np.abs(got.astype(int).mean((1, 2, 3)) - frames[3:7].astype(int).mean((1, 2, 3))).max() < 4
    decoded = read_audio(path)
    assert len(decoded) == len(audio)  # AAC priming and end padding removed
    assert np.corrcoef(decoded, audio)[0, 1] > 0.9  # and the samples line up (no shift)
    with pytest.raises(ValueError, match="only 12"):
        read_video(path, start=10, count=5)
    with pytest.raises(ValueError, match="even"):
        write_video(tmp_path / "odd.mp4", np.zeros((2, 33, 32, 3), np.uint8))
    assert not (tmp_path / "odd.mp4").exists() and not list(tmp_path.glob(".odd*"))  # atomic: nothing left


def test_manifest_roundtrip_and_errors(tmp_path: Path) -> None:
    kp = np.zeros((5, 134, 3), np.float32)
    recs = [write_clip(tmp_path, f"c{i}", "s", "train", np.zeros((5, 16, 16, 3), np.uint8), np.zeros(100), kp)
            for i in range(2)]
    write_manifest(tmp_path, recs)
    assert read_manifest(tmp_path) == recs
    corpus = Corpus(tmp_path)
    assert len(corpus.load_audio(recs[0])) == 5 * HOP  # audio padded to the video's duration on write
    with pytest.raises(CorpusError, match="no clip 'zz'"):
        corpus["zz"]
    with pytest.raises(CorpusError, match="manifest not found"):
        Corpus(tmp_path / "elsewhere")
    (tmp_path / "manifest.csv").write_text("clip_id,speaker\nx,y\n")
    with pytest.raises(CorpusError, match="lacks columns"):
        Corpus(tmp_path)
    with pytest.raises(ValueError, match=r"\(5, 134, 3\)"):
        write_clip(tmp_path, "bad", "s", "train", np.zeros((5, 16, 16, 3), np.uint8), np.zeros(10), kp[:, :10])


def test_synthetic_mouth_follows_audio_and_is_seeded() -> None:
    frames, audio, kp = synth_sequence(150, 64, seed=3, style=1)
    assert frames.shape == (150, 64, 64, 3) and frames.dtype == np.uint8
    assert audio.shape == (150 * HOP,) and kp.shape == (150, 134, 3) and kp.dtype == np.float32
    rms = np.sqrt((audio.reshape(150, HOP) ** 2).mean(1))
    assert np.corrcoef(rms, mouth_opening(kp))[0, 1] > 0.8
    # lag 0 is the best alignment (no built-in shift between audio and motion)
    mouth = mouth_opening(kp)
    lags = {lag: np.corrcoef(rms[max(0, lag):150 + min(0, lag)], mouth[max(0, -lag):150 - max(0, lag)])[0, 1]
            for lag in (-2, -1, 0, 1, 2)}
    assert max(lags, key=lags.get) == 0
    # frames show the mouth: the dark mouth area grows with the lip gap
    again = synth_sequence(150, 64, seed=3, style=1)
    assert np.array_equal(again[1], audio) and np.array_equal(again[2], kp) and np.array_equal(again[0], frames)
    assert not np.array_equal(synth_sequence(150, 64, seed=4, style=1)[1], audio)
    assert kp[:, [9, 10, 12, 13], 2].max() < 0.3 and kp[:, :9, 2].min() > 0.3  # legs invisible, torso visible
    assert (kp[..., :2] >= 0).all() and (kp[:, 24:, :2] < 64).all()


def test_frame_loudness_is_per_frame() -> None:
    env = np.zeros(10 * HOP, np.float32)
    env[3 * HOP:4 * HOP] = 1
    assert frame_loudness(env, 10).nonzero()[0].tolist() == [3]


def test_synthetic_corpus_layout(synthetic_corpus: Path) -> None:
    corpus = Corpus(synthetic_corpus)
    assert len(corpus) == 10 and corpus.speakers == ["spk0", "spk1"]
    assert [len(corpus.split(s)) for s in ("train", "val", "test")] == [6, 2, 2]
    rec = corpus.split("val")[0]
    assert (rec.n_frames, rec.width, rec.height, rec.fps) == (75, 64, 64, 25.0)
    assert validate_corpus(synthetic_corpus, progress=False) == []


def test_ensure_corpus_generates_once(tmp_path: Path) -> None:
    root = tmp_path / "syn"
    spec = dict(n_speakers=1, clips_per_speaker=3, seconds=0.4, size=32)
    ensure_corpus(root, progress=False, **spec)
    manifest = (root / "manifest.csv").stat().st_mtime_ns
    ensure_corpus(root, progress=False, **spec)
    assert (root / "manifest.csv").stat().st_mtime_ns == manifest
    with pytest.raises(ValueError, match="no training clips"):
        generate_corpus(tmp_path / "x", n_speakers=1, clips_per_speaker=2, progress=False)


def _broken_copy(src: Path, dst: Path) -> dict[str, Path]:
    shutil.copytree(src, dst)
    corpus = Corpus(dst)
    recs = corpus.records
    broken = {}
    # NaN keypoints
    kp = corpus.load_keypoints(recs[0])
    kp[4, 10, 0] = np.nan
    np.save(corpus.path(recs[0], "keypoints"), kp)
    broken["nan"] = corpus.path(recs[0], "keypoints")
    # undecodable video
    corpus.path(recs[1], "video").write_bytes(b"\x00not a video" * 50)
    broken["video"] = corpus.path(recs[1], "video")
    # audio of the wrong rate
    import soundfile as sf

    # right duration, wrong rate
    sf.write(corpus.path(recs[2], "audio"), np.zeros(recs[2].n_frames * 882, np.float32), 22050)
    broken["rate"] = corpus.path(recs[2], "audio")
    # keypoints of the wrong length
    np.save(corpus.path(recs[3], "keypoints"), corpus.load_keypoints(recs[3])[:-7])
    broken["length"] = corpus.path(recs[3], "keypoints")
    return broken


def test_validator_names_each_bad_file(synthetic_corpus: Path, tmp_path: Path) -> None:
    root = tmp_path / "broken"
    broken = _broken_copy(synthetic_corpus, root)
    lines = [str(f) for f in validate_corpus(root, progress=False)]
    joined = "\n".join(lines)
    assert f"{broken['nan']}: 1 NaN/inf values in frames [4]" in joined
    assert f"{broken['video']}: not decodable" in joined
    assert f"{broken['rate']}: sample rate 22050 Hz, expected 16000" in joined
    assert f"{broken['length']}: 68 keypoint frames, manifest says 75" in joined
    assert all(line.startswith("ERROR ") for line in lines)
    # duplicate ids and empty splits are manifest-level faults
    recs = read_manifest(root)
    write_manifest(root, [*recs, recs[0]])
    text = "\n".join(map(str, validate_corpus(root, progress=False)))
    assert "duplicate clip_id" in text
    write_manifest(root, [r for r in recs if r.split != "val"])
    assert "split 'val' is empty" in "\n".join(map(str, validate_corpus(root, progress=False)))


def test_prepare_cli_validate_exit_codes(synthetic_corpus: Path, tmp_path: Path) -> None:
    root = tmp_path / "broken"
    broken = _broken_copy(synthetic_corpus, root)
    env = dict(os.environ, HF_HUB_OFFLINE="1", MMGT_ROOT=str(tmp_path))
    cmd = [sys.executable, "-m", "mmgt.prepare", "task=validate", "progress=false"]
    ok = subprocess.run([*cmd, f"data.root={synthetic_corpus}"], capture_output=True, text=True, env=env, cwd=REPO)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "0 error(s)" in ok.stdout
    bad = subprocess.run([*cmd, f"data.root={root}"], capture_output=True, text=True, env=env, cwd=REPO)
    assert bad.returncode == 1
    for path in broken.values():
        assert str(path) in bad.stdout
    assert "4 error(s)" in bad.stdout


def test_synthetic_sway_moves_the_body_and_keeps_the_mouth_link() -> None:
    """``sway`` drifts the whole figure sideways (so later frames differ from frame 0) without touching the
    audio -> mouth link or the random stream the rest of the clip is drawn from."""
    style = speaker_style(1)
    still, audio0, kp0 = synth_sequence(150, 64, seed=3, style=replace(style, sway=0.0))
    moving, audio1, kp1 = synth_sequence(150, 64, seed=3, style=replace(style, sway=0.8))
    assert np.array_equal(audio0, audio1)
    assert kp0[:, 1, 0].std() < 0.2 < 4.0 < kp1[:, 1, 0].std()  # neck x: jitter only vs a drift of pixels
    assert np.allclose(mouth_opening(kp0), mouth_opening(kp1), atol=1e-3)

    def drift(frames: np.ndarray) -> float:
        return float(np.abs(frames[1:].astype(np.float32) - frames[:1]).mean())

    assert drift(moving) > 2 * drift(still)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0 ** 2 / mse))


def test_444_encoding_keeps_tiny_frames_colour_and_older_corpora_are_kept(tmp_path: Path) -> None:
    """At 32 px 4:2:0 keeps a 16x16 colour plane: a 4:4:4 encode at a low crf must be far closer to the rendered
    frames (the ground truth every metric decodes); bad settings are refused naming them; a corpus written before
    the encoding keys existed (its synthetic.json lacks them) reads as the defaults and is not rebuilt."""
    import av

    frames, _, _ = synth_sequence(20, 32, seed=[0, 1, 2], style=1)
    dec = {}
    for pix, crf in (("yuv420p", 18), ("yuv444p", 10)):
        path = write_video(tmp_path / f"{pix}.mp4", frames, crf=crf, pix_fmt=pix)
        with av.open(str(path)) as c:
            assert c.streams.video[0].codec_context.pix_fmt == pix
        dec[pix] = read_video(path)
    assert _psnr(dec["yuv444p"], frames) > _psnr(dec["yuv420p"], frames) + 3.0
    with pytest.raises(ValueError, match="pix_fmt must be one of"):
        write_video(tmp_path / "x.mp4", frames, pix_fmt="rgb24")
    with pytest.raises(ValueError, match="crf must be an integer"):
        generate_corpus(tmp_path / "y", n_speakers=1, clips_per_speaker=3, seconds=0.4, size=32, crf=70,
                        progress=False)
    root = tmp_path / "old"
    spec = dict(n_speakers=1, clips_per_speaker=3, seconds=0.4, size=32)
    generate_corpus(root, progress=False, **spec)
    meta = json.loads((root / "synthetic.json").read_text())
    (root / "synthetic.json").write_text(json.dumps({k: v for k, v in meta.items() if k not in ("crf", "pix_fmt")}))
    video = root / read_manifest(root)[0].video
    stamp = video.stat().st_mtime_ns
    generate_corpus(root, progress=False, **spec)  # the same spec: every clip kept as written
    assert video.stat().st_mtime_ns == stamp
    generate_corpus(root, progress=False, pix_fmt="yuv444p", crf=10, **spec)  # another encoding: rebuilt
    assert json.loads((root / "synthetic.json").read_text())["pix_fmt"] == "yuv444p"
    rec = read_manifest(root)[0]
    with av.open(str(root / rec.video)) as c:
        assert c.streams.video[0].codec_context.pix_fmt == "yuv444p"


def test_prepare_synthetic_rebuilds_a_corpus_written_with_other_settings(tmp_path: Path, capsys) -> None:
    """``prepare task=synthetic`` keeps a corpus written with the asked settings (or a corpus that is not synthetic)
    but rebuilds one written with other settings, saying which changed (an updated quickstart recipe must not score
    against its old clips)."""
    from omegaconf import OmegaConf

    from mmgt.data.prepare import _run

    root = tmp_path / "syn"
    spec = dict(n_speakers=1, clips_per_speaker=3, seconds=0.4, size=32, seed=0, sway=0.02, crf=18,
                pix_fmt="yuv420p")

    def prepare(**over: object) -> None:
        cfg = OmegaConf.create({"task": "synthetic", "overwrite": False, "progress": False,
                                "data": {"root": str(root), "synthetic": {**spec, **over}}})
        assert _run(cfg) == 0

    prepare()
    video = root / read_manifest(root)[0].video
    stamp = video.stat().st_mtime_ns
    prepare()
    assert "already there" in capsys.readouterr().out and video.stat().st_mtime_ns == stamp
    prepare(pix_fmt="yuv444p", crf=10)
    assert "'pix_fmt': ('yuv420p', 'yuv444p')" in capsys.readouterr().out
    assert json.loads((root / "synthetic.json").read_text())["pix_fmt"] == "yuv444p"
    (root / "synthetic.json").unlink()  # not (known to be) synthetic: left alone
    stamp = video.stat().st_mtime_ns
    prepare()
    assert "already there" in capsys.readouterr().out and video.stat().st_mtime_ns == stamp
