"""Generation (image + speech -> video): lengths for any audio, muxed audio, bad inputs refused with no partial file,
checkpoints (Lightning and safetensors exports, mismatches refused), typed sampling options, the crop + resize of the
inputs, the CLI and the quickstart chain's configs. Tiny randomly initialised modules are built here and saved as
checkpoints in tmp."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from mmgt.data.synthetic import synth_sequence
from mmgt.data.video_io import probe_video, read_audio, read_video
from mmgt.generation.options import PoseSampling, Sampling, VideoSampling
from mmgt.inference import (
    GenerationError,
    GesturePipeline,
    export_safetensors,
    load_stage,
    n_frames_for,
    run,
)
from mmgt.lit.smga import SMGAModule
from mmgt.lit.video import VideoModule
from mmgt.pose.masks import MaskConfig
from tiny_configs import save_checkpoint

SMGA_NET = dict(width=32, ff_size=64, num_layers=1, num_heads=2, audio_layers=1, dropout=0.0)
SMGA_INFO = dict(audio_feature_dim=66, window=16, frame_size=[64, 64], fps=25.0,
                 normalizer=dict(width=64, height=64, margin=0.5, legacy=False))
VIDEO_NET = dict(
    codec=dict(type="pixel", factor=4), image_encoder=dict(type="conv", channels=[8, 16]),
    unet=dict(block_out_channels=[16, 32], layers_per_block=1, down_blocks=["cross", "cross"], heads=2,
              cross_attention_dim=16, norm_num_groups=8, motion_heads=2, motion_max_seq_length=32),
    pose_guider=dict(channels=[8, 8, 16]), audio_proj=dict(hidden_dim=32, tokens=3, dim=16),
    audio_attention=dict(heads=2),
)
VIDEO_INFO = dict(audio_embed_shape=[5, 2, 32], num_branches=3, frame_size=[32, 32], fps=25.0,
                  audio_context=2, mask=MaskConfig(cell=4).to_dict())
# few DDIM steps: tests check plumbing, not quality
FAST = Sampling(PoseSampling(steps=2), VideoSampling(steps=2, guidance=1.5))
FLAT = dict(pose_steps=2, steps=2, guidance=1.5)  # the same as the earlier flat keywords (the notebook passes them)


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("generate")
    torch.manual_seed(0)
    smga = SMGAModule(SMGA_NET, data_info=SMGA_INFO, sampling=dict(steps=2, guidance=2.0))
    with torch.no_grad():  # an EMA that differs from the raw net: checks that inference uses the average
        for p in smga.ema.module.parameters():
            p.add_(0.01 * torch.randn_like(p))
    video = VideoModule(VIDEO_NET, attention={"type": "mm_haa", "blocks": ["down"]}, substage="b",
                        data_info=VIDEO_INFO,
                        sampling={"steps": 2, "guidance": 2.0, "context_frames": 8, "context_overlap": 2})
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():  # zero-init MM-HAA projections would make the audio (and branch weights) irrelevant
        for mod in video.net.audio_modules.values():
            for p in mod.proj:
                p.weight.copy_(torch.randn(p.weight.shape, generator=g) * 0.3)
    frames, audio, kp = synth_sequence(200, 64, seed=1)
    from PIL import Image

    Image.fromarray(frames[0]).save(d / "person.png")
    np.save(d / "person.npy", kp[:3])  # (T, 134, 3): frame 0 is used
    sf.write(d / "speech_44k.wav", np.interp(np.arange(0, len(audio), 16000 / 44100), np.arange(len(audio)), audio),
             44100)
    return {"dir": d, "smga": save_checkpoint(smga, d / "smga.ckpt"),
            "video": save_checkpoint(video, d / "video.ckpt", mmgt_video_stage="b"), "image": d / "person.png",
            "keypoints": d / "person.npy", "speech": d / "speech_44k.wav", "audio": audio}


@pytest.fixture(scope="module")
def pipe(assets) -> GesturePipeline:
    return GesturePipeline.from_checkpoints(assets["smga"], assets["video"], progress=False)


def speech_file(assets, seconds: float, folder: Path, fmt: str = "wav", rate: int = 22050) -> Path:
    """``seconds`` of the synthetic speech resampled to ``rate`` Hz in a ``fmt`` container."""
    x = assets["audio"][: int(round(seconds * 16000))]
    x = np.interp(np.arange(0, len(x), 16000 / rate), np.arange(len(x)), x).astype(np.float32)
    path = folder / f"speech_{seconds}.{fmt}"
    if fmt in ("wav", "flac"):
        sf.write(path, x, rate)
    else:  # m4a: AAC in an mp4 container through PyAV
        import av

        with av.open(str(path), "w", format="mp4") as out:
            st = out.add_stream("aac", rate=rate)
            st.layout = "mono"
            fr = av.AudioFrame.from_ndarray(x[None], format="fltp", layout="mono")
            fr.sample_rate, fr.pts = rate, 0
            for pkt in list(st.encode(fr)) + list(st.encode()):
                out.mux(pkt)
    return path


def test_frame_count_rule() -> None:
    assert [n_frames_for(int(round(s * 16000))) for s in (1.0, 3.2, 7.3)] == [25, 80, 183]
    assert n_frames_for(1) == 1 and n_frames_for(641) == 2


@pytest.mark.parametrize(("seconds", "frames", "fmt", "rate"),
                         [(1.0, 25, "wav", 22050), (3.2, 80, "flac", 8000), (7.3, 183, "m4a", 44100)])
def test_any_audio_length_gives_full_video(pipe, assets, tmp_path, seconds, frames, fmt, rate) -> None:
    audio = speech_file(assets, seconds, tmp_path, fmt, rate)
    out = tmp_path / "out" / "talk.mp4"
    res = pipe.generate(assets["image"], audio, out, keypoints=assets["keypoints"], side_by_side=True,
                        save_keypoints=True, sampling=FAST)
    assert res.n_frames == frames
    info = probe_video(out)
    assert abs(info.n_frames - frames) <= 1 and info.fps == 25.0 and info.has_audio
    assert (info.height, info.width) == (32, 32)
    muxed = read_audio(out)
    assert abs(len(muxed) / 16000 - seconds) <= 1 / 25  # audio of the same length, within one frame
    assert abs(info.n_frames / 25 - len(muxed) / 16000) <= 1 / 25
    # the muxed track is the input speech (AAC round trip), not silence or another clip
    ref = read_audio(audio)
    n = min(len(ref), len(muxed))
    assert np.corrcoef(ref[:n], muxed[:n])[0, 1] > 0.9
    # poses cover every frame (no skipped start: frame 0 follows the image's pose) and were saved
    assert res.keypoints.shape == (frames, 134, 3) and np.isfinite(res.keypoints).all()
    assert np.load(res.keypoints_file).shape == (frames, 134, 3)
    panel = probe_video(res.side_by_side)
    assert panel.n_frames == info.n_frames and panel.width == 3 * 32 + 2 * 2


def test_outputs_follow_inputs(pipe, assets, tmp_path) -> None:
    """Same seed -> same video; the reference image and the branch weights both change the result."""
    audio = speech_file(assets, 1.0, tmp_path)
    kw = dict(keypoints=assets["keypoints"], sampling=FAST)
    a = pipe.generate(assets["image"], audio, tmp_path / "a.mp4", **kw)
    b = pipe.generate(assets["image"], audio, tmp_path / "b.mp4", keypoints=assets["keypoints"], **FLAT)
    np.testing.assert_array_equal(a.frames, b.frames)
    np.testing.assert_array_equal(a.keypoints, b.keypoints)
    # the mp4 holds those frames (H.264 + 4:2:0 chroma: close in 8x8 block means, not bit-exact on random frames)
    def blocks(v):
        return v.astype(float).reshape(len(v), 4, 8, 4, 8, 3).mean((2, 4))

    assert np.abs(blocks(read_video(a.video)) - blocks(a.frames)).mean() < 8
    from PIL import Image

    dark = np.asarray(Image.open(assets["image"])) // 4
    c = pipe.generate(dark.astype(np.uint8), audio, tmp_path / "c.mp4", **kw)
    assert np.abs(c.frames.astype(int) - a.frames.astype(int)).mean() > 1.0
    weighted = replace(FAST, video=replace(FAST.video, branch_weights=(0.0, 3.0, 3.0)))
    d = pipe.generate(assets["image"], audio, tmp_path / "d.mp4", keypoints=assets["keypoints"], sampling=weighted)
    assert np.abs(d.frames.astype(int) - a.frames.astype(int)).max() > 0
    with pytest.raises(GenerationError, match="branch_weights has 2 values"):
        pipe.generate(assets["image"], audio, tmp_path / "e.mp4", branch_weights=[1.0, 1.0], **kw)
    assert not (tmp_path / "e.mp4").exists()


def test_initial_pose_is_the_images_pose(pipe, assets, tmp_path) -> None:
    """The first SMGA window is conditioned on the image's pose, mapped through the same crop/resize as the image:
    a wide image (person in the middle, padded left/right) gives the same poses as the square one."""
    from PIL import Image

    img = np.asarray(Image.open(assets["image"]))
    wide = np.pad(img, ((0, 0), (32, 32), (0, 0)))
    kp = np.load(assets["keypoints"])[0].copy()
    kp[:, 0] += 32
    audio = speech_file(assets, 1.0, tmp_path)
    a = pipe.generate(assets["image"], audio, tmp_path / "a.mp4", keypoints=assets["keypoints"], sampling=FAST)
    b = pipe.generate(wide, audio, tmp_path / "b.mp4", keypoints=kp, sampling=FAST)
    np.testing.assert_allclose(a.keypoints, b.keypoints, atol=1e-4)


class NoPerson:
    """A pose estimator (PoseEstimator interface) that finds nobody, as DWPose on an empty picture."""

    def __call__(self, frames: np.ndarray, context=None) -> np.ndarray:
        return np.zeros((len(frames), 134, 3), np.float32)


def test_bad_inputs_are_refused_without_output(pipe, assets, tmp_path) -> None:
    out_dir = tmp_path / "out"
    out = out_dir / "x.mp4"
    good = speech_file(assets, 1.0, tmp_path)
    empty, silent = tmp_path / "empty.wav", tmp_path / "silent.wav"
    sf.write(empty, np.zeros(0, np.float32), 16000)
    sf.write(silent, np.zeros(16000, np.float32), 16000)
    garbage = tmp_path / "garbage.mp3"
    garbage.write_bytes(b"not audio at all" * 10)
    kw = dict(keypoints=assets["keypoints"], side_by_side=True, pose_video=True, sampling=FAST)
    cases = [
        (dict(image=tmp_path / "missing.png", audio=good), "image file not found"),
        (dict(image=assets["image"], audio=tmp_path / "missing.wav"), "audio file not found"),
        (dict(image=assets["image"], audio=empty), "empty"),
        (dict(image=assets["image"], audio=silent), "silent"),
        (dict(image=assets["image"], audio=garbage), "cannot read audio"),
        (dict(image=assets["keypoints"], audio=good), "cannot read the image"),
    ]
    for args, msg in cases:
        with pytest.raises(GenerationError, match=msg):
            pipe.generate(args["image"], args["audio"], out, **kw)
    with pytest.raises(GenerationError, match="no person found"):
        pipe.generate(assets["image"], good, out, estimator=NoPerson(), sampling=FAST)
    with pytest.raises(GenerationError, match="no initial pose"):
        pipe.generate(assets["image"], good, out, sampling=FAST)
    with pytest.raises(GenerationError, match="keypoints must be"):
        pipe.generate(assets["image"], good, out, keypoints=np.zeros((5, 3)), sampling=FAST)
    with pytest.raises(GenerationError, match="must be an .mp4"):
        pipe.generate(assets["image"], good, out_dir / "x.avi", **kw)
    assert not out_dir.exists() or not list(out_dir.iterdir())


def test_write_failure_leaves_no_partial_files(pipe, assets, tmp_path, monkeypatch) -> None:
    import mmgt.data.video_io as vio

    calls = []
    real = vio.write_video

    def flaky(path, frames, **kw):  # the main video is written, the panel fails
        calls.append(path)
        if len(calls) == 2:
            raise OSError("disk full")
        return real(path, frames, **kw)

    monkeypatch.setattr(vio, "write_video", flaky)
    out_dir = tmp_path / "out"
    with pytest.raises(OSError, match="disk full"):
        pipe.generate(assets["image"], speech_file(assets, 1.0, tmp_path), out_dir / "x.mp4",
                      keypoints=assets["keypoints"], side_by_side=True, sampling=FAST)
    assert len(calls) == 2 and not list(out_dir.iterdir())


def test_non_finite_poses_are_refused_before_any_output(pipe, assets, tmp_path, monkeypatch) -> None:
    """A broken SMGA model sampling NaN keypoints used to give an mp4 rendered from 100 % NaN poses, exit 0."""
    real = pipe.pose_diffusion.sample

    def nan_poses(*args, **kwargs):  # type: ignore[no-untyped-def]
        return real(*args, **kwargs) * float("nan")

    monkeypatch.setattr(pipe.pose_diffusion, "sample", nan_poses)
    out = tmp_path / "out" / "x.mp4"
    with pytest.raises(GenerationError, match="non-finite keypoints"):
        pipe.generate(assets["image"], speech_file(assets, 1.0, tmp_path), out, keypoints=assets["keypoints"],
                      sampling=FAST)
    assert not out.exists()


def test_checkpoints_mismatch_and_export(assets, tmp_path) -> None:
    d = assets["dir"]
    with pytest.raises(GenerationError, match=r"stage-1 \(SMGA.*`video.ckpt` needs a stage-2"):
        load_stage(assets["smga"], "video")
    with pytest.raises(GenerationError, match="checkpoint not found"):
        load_stage(d / "nope.ckpt", "smga")
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(GenerationError, match="weights_only=True"):
        load_stage(bad, "smga")
    # the configured architecture disagrees with the weights: refused, naming the tensors
    with pytest.raises(GenerationError, match=r"does not match the configured architecture.*shape mismatches"):
        load_stage(assets["smga"], "smga", net={"width": 64, "ff_size": 64})
    with pytest.raises(GenerationError, match=r"does not match the configured architecture"):
        load_stage(assets["video"], "video", net={"unet": {"block_out_channels": [16, 16]}})
    # safetensors exports rebuild the same networks (EMA applied) and generate the same poses and frames
    s_exp = export_safetensors(assets["smga"], tmp_path / "smga.safetensors")
    v_exp = export_safetensors(assets["video"], tmp_path / "video.safetensors")
    with pytest.raises(GenerationError, match="stage-2"):
        load_stage(v_exp, "smga")
    audio = speech_file(assets, 1.0, tmp_path)
    runs = []
    for s, v in ((assets["smga"], assets["video"]), (s_exp, v_exp)):
        p = GesturePipeline.from_checkpoints(s, v, progress=False)
        runs.append(p.generate(assets["image"], audio, tmp_path / f"{len(runs)}.mp4", keypoints=assets["keypoints"],
                               sampling=FAST))
    np.testing.assert_allclose(runs[0].keypoints, runs[1].keypoints, atol=1e-5)
    np.testing.assert_array_equal(runs[0].frames, runs[1].frames)


def test_features_must_match_the_networks(assets) -> None:
    with pytest.raises(GenerationError, match="stage-1 audio features have 34 values"):
        GesturePipeline.from_checkpoints(assets["smga"], assets["video"], stage1_features={"n_mels": 32},
                                         progress=False)
    with pytest.raises(GenerationError, match="stage-2 audio embedding"):
        GesturePipeline.from_checkpoints(assets["smga"], assets["video"], stage2_features={"num_layers": 3},
                                         progress=False)


def test_corpus_clip_mode_and_run(assets, synthetic_corpus, tmp_path) -> None:
    """``run`` (the CLI body): a held-out clip of the corpus, its ground truth placed for ``mmgt.evaluate``."""
    from mmgt.data.corpus import Corpus

    clip = Corpus(synthetic_corpus).split("test")[0]
    cfg = {"smga": {"ckpt": str(assets["smga"]), "steps": 2}, "video": {"ckpt": str(assets["video"]), "steps": 2},
           "split": "test", "limit": 1, "data": {"root": str(synthetic_corpus)}, "out": str(tmp_path / "gen"),
           "reference_dir": str(tmp_path / "ref"), "side_by_side": True, "progress": False,
           "output_dir": str(tmp_path / "run")}
    [res] = run(cfg, echo=lambda _: None)
    assert res.video == tmp_path / "gen" / f"{clip.clip_id}.mp4"
    assert probe_video(res.video).n_frames == clip.n_frames
    assert sorted(p.name for p in (tmp_path / "gen").glob("*.mp4")) == [f"{clip.clip_id}.mp4"]  # extras in subdirs
    assert res.side_by_side.parent == tmp_path / "gen" / "panel"
    assert {p.suffix for p in (tmp_path / "ref").iterdir()} == {".mp4", ".npy", ".wav"}
    assert (tmp_path / "run" / "generation.json").exists()
    with pytest.raises(GenerationError, match="no clip 'nope'"):
        run({**cfg, "split": None, "clip_id": "nope"}, echo=lambda _: None)
    with pytest.raises(GenerationError, match="set smga.ckpt"):
        run({**cfg, "smga": {}}, echo=lambda _: None)


def test_cli_generates_and_refuses(assets, tmp_path) -> None:
    """One multirun process (to pay the start-up once): job 0 generates with the default output path, job 1 is given
    the SMGA checkpoint as the video checkpoint and must refuse with a clear message and no file."""
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    audio = speech_file(assets, 1.0, tmp_path)
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "mmgt.generate", "-m", f"image={assets['image']}", f"audio={audio}",
           f"keypoints={assets['keypoints']}", f"smga.ckpt={assets['smga']}", "smga.steps=2", "video.steps=2",
           "video.branch_weights=[1,1,2]", "video.guidance=3.0", "side_by_side=true", "progress=false",
           f"video.ckpt={assets['video']},{assets['smga']}", f"hydra.sweep.dir={sweep}"]
    proc = subprocess.run(cmd, env=env, cwd=root, capture_output=True, text=True, timeout=300)
    out = sweep / "0" / f"{audio.stem}.mp4"
    assert out.exists(), proc.stderr[-3000:]
    assert probe_video(out).n_frames == 25 and out.with_name(f"{audio.stem}_panel.mp4").exists()
    assert proc.returncode != 0 and "needs a stage-2 (video diffusion) checkpoint" in proc.stderr
    assert not list((sweep / "1").glob("*.mp4"))


def test_quickstart_chain_composes(tmp_path) -> None:
    """Every training/generation/evaluation step of ``make quickstart`` is a valid command of its entry point."""
    from hydra import compose, initialize_config_dir

    from mmgt.quickstart import steps
    from mmgt.utils.paths import CONF_DIR

    chain = steps(tmp_path, tmp_path / "out", (7, 5, 3))
    names = [n for n, _ in chain]
    assert names[0] == "synthetic corpus" and names[-2:] == ["generate held-out clips", "evaluate"]
    seen = {}
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        for name, cmd in chain:
            entry = cmd[2].split(".")[1]
            if entry not in ("train", "generate", "evaluate"):
                continue
            overrides = [o for o in cmd[3:] if not o.startswith("hydra.")]
            cfg = compose(config_name=entry, overrides=overrides)
            seen[name] = cfg
    steps_run = [int(seen[n].trainer.max_steps) for n in names if n.startswith("stage")]
    assert steps_run == [7, 5, 3]
    assert seen["stage 2B: motion + MM-HAA audio"].model.substage == "b"
    assert seen["stage 2B: motion + MM-HAA audio"].model.init_from.endswith("video_a/checkpoints/last.ckpt")
    assert seen["generate held-out clips"].split == "test"
    assert seen["evaluate"].metrics.allow_random_weights is True
    assert math.isclose(float(seen["generate held-out clips"].min_peak), 1e-4)


def test_generation_conditions_equal_training_batches(pipe, synthetic_corpus) -> None:
    """Pose images and region masks at generation come from the same code and config as the training batches."""
    from mmgt.data.datamodule import PATSDataModule

    dm = PATSDataModule(synthetic_corpus, "video", n_frames=4, stride=8, batch_size=2, image_size=32,
                        mask=MaskConfig(cell=4).to_dict(), progress=False)
    dm.prepare_data()
    dm.setup("validate")
    batch = next(iter(dm.val_dataloader()))
    for i in range(2):
        images, masks = pipe.conditions(batch["keypoints"][i].numpy())
        assert torch.allclose(images, batch["pose_images"][i], atol=1e-6)
        assert masks.shape == batch["masks"][i].shape and torch.allclose(masks, batch["masks"][i], atol=1e-6)


def test_sampling_options_are_typed_and_merged_once(pipe, assets) -> None:
    """The YAML blocks become one options object per stage (unknown keys refused, values typed); unstated settings
    are the checkpoint's, merged in one place; the earlier flat keywords map onto the same objects."""
    from hydra import compose, initialize_config_dir

    from mmgt.utils.config import to_plain
    from mmgt.utils.paths import CONF_DIR

    # the checkpoints' settings (fixture: SMGA steps 2, guidance 2; video steps 2, guidance 2, context 8 / 2)
    assert pipe.pose_sampling == PoseSampling(steps=2, guidance=2.0, eta=1.0, overlap=0)
    assert pipe.video_sampling == VideoSampling(steps=2, guidance=2.0, eta=0.0, context_frames=8, context_overlap=2)
    merged = VideoSampling(steps=5, branch_weights=[1, 1, 2]).over(pipe.video_sampling)
    assert merged == replace(pipe.video_sampling, steps=5, branch_weights=(1.0, 1.0, 2.0))
    assert Sampling().with_flat(FLAT) == FAST
    with pytest.raises(TypeError, match="unexpected keyword"):
        Sampling().with_flat({"pose_stepz": 3})
    def blocks(overrides: list[str]) -> dict:  # the stage blocks of `python -m mmgt.generate <overrides>`
        cfg = compose(config_name="generate", overrides=overrides)
        return {"smga": to_plain(cfg.smga), "video": to_plain(cfg.video)}

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        official = Sampling.from_config(blocks(["preset=official"]))
        default = Sampling.from_config(blocks(["video.steps=7"]))
    assert official == Sampling(PoseSampling(50, 2.0, 1.0, 0), VideoSampling(30, 3.5, 0.0, 12, 4, (1.0, 1.0, 2.0)))
    assert default == Sampling(video=VideoSampling(steps=7))  # every other setting: the checkpoint's
    with pytest.raises(GenerationError, match=r"config block `video`: unknown sampling setting\(s\) \['stepz'\]"):
        run({"smga": {"ckpt": str(assets["smga"])}, "video": {"ckpt": str(assets["video"]), "stepz": 2},
             "image": str(assets["image"]), "audio": str(assets["speech"])}, echo=lambda _: None)


def test_pipeline_call_is_the_recipe_on_arrays(pipe, assets) -> None:
    """``pipe(image, speech, pose)`` runs the recipe without files; given initial latents reproduce a run, other
    latents change it."""
    from PIL import Image

    image = np.asarray(Image.open(assets["image"]))
    speech = assets["audio"][:16000].astype(np.float32)
    pose = np.load(assets["keypoints"])[0]  # pixels of the 64-px image (the frame is 32 px)
    opts = dict(pose_sampling=FAST.pose, video_sampling=FAST.video)
    latents = pipe.prepare_latents(25, torch.Generator().manual_seed(7))
    a = pipe(image, speech, pose, generator=torch.Generator().manual_seed(0), latents=latents, **opts)
    assert a.frames.shape == (25, 32, 32, 3) and a.keypoints.shape == (25, 134, 3)
    assert a.pose_images.shape == (25, 3, 32, 32) and a.masks.shape[:2] == (3, 25)
    b = pipe(image, speech, pose, generator=torch.Generator().manual_seed(0), latents=latents.clone(), **opts)
    np.testing.assert_array_equal(a.frames, b.frames)
    c = pipe(image, speech, pose, generator=torch.Generator().manual_seed(0), latents=torch.randn_like(latents),
             **opts)
    np.testing.assert_array_equal(a.keypoints, c.keypoints)  # stage 1 does not see the video latents
    assert np.abs(c.frames.astype(int) - a.frames.astype(int)).max() > 0
    with pytest.raises(GenerationError, match="no person found"):
        pipe(image, speech, np.zeros((134, 3), np.float32), **opts)


@pytest.mark.parametrize(("src_hw", "size", "block"), [
    ((64, 103), (64, 64), 1),  # crop only, at an odd offset (19.5 px before rounding: the crop starts at 20)
    ((64, 103), (32, 32), 2),  # crop + 2x down
    ((16, 26), (32, 32), 1),  # crop + 2x up
    ((37, 64), (32, 32), 5),  # crop at 13.5 -> 14, then 32/37
    ((90, 50), (40, 30), 4),  # too tall: crop the height, then 30/50
])
def test_crop_resize_keeps_keypoints_on_their_pixels(src_hw, size, block) -> None:
    """A keypoint on a marked pixel block lands on the marked pixel of the cropped + resized image (one transform,
    the pixel-corner convention of ``scale_keypoints``)."""
    from mmgt.generation.inputs import fit_image
    from mmgt.pose.conditioning import CropResize, scale_keypoints

    h0, w0 = src_hw
    rng = np.random.default_rng(0)
    tf = CropResize.centre(src_hw, size)
    for _ in range(5):
        img = np.zeros((h0, w0, 3), np.uint8)
        y = int(rng.integers(tf.y0 + block, tf.y0 + tf.height - 2 * block))
        x = int(rng.integers(tf.x0 + block, tf.x0 + tf.width - 2 * block))
        img[y:y + block, x:x + block] = 255
        kp = np.array([[x + block / 2, y + block / 2, 1.0]], np.float32)  # the block's centre (pixel corners)
        out, used = fit_image(img, size)
        assert used == tf and out.shape == (*size, 3)
        kx, ky = tf.keypoints(kp)[0, :2]
        assert out[int(ky), int(kx), 0] == out[..., 0].max() > 0, (x, y, kx, ky)
    kp = rng.uniform(0, 30, (4, 134, 3)).astype(np.float32)
    whole = CropResize(0, 0, w0, h0, size)  # no crop: the same map as scale_keypoints
    np.testing.assert_array_equal(whole.keypoints(kp), scale_keypoints(kp, src_hw, size))


def test_quickstart_summary_prints_baselines_and_the_time_left(tmp_path) -> None:
    """The closing table puts each metric beside its baselines from metrics.json; the step banner's estimate of the
    time left scales the typical step shares by the pace so far."""
    import json

    from mmgt.quickstart import EXPECTED_SHARE, elapsed_and_left, summary

    (tmp_path / "evaluate").mkdir()
    (tmp_path / "evaluate" / "metrics.json").write_text(json.dumps({
        "pairs": ["a", "b"], "metrics": {"psnr": 21.5, "kpsync_conf_randinit": None},
        "baselines": {"copy_reference": {"psnr": 27.25, "kpsync_conf_randinit": 0.5},
                      "ground_truth": {"psnr": 100.0, "kpsync_conf_randinit": 1.25}}}))
    text = summary(tmp_path, [("step", 2.0)])
    row = next(line for line in text.splitlines() if line.strip().startswith("psnr"))
    assert row.split()[1:] == ["21.5000", "27.2500", "100.0000"]
    sync = next(line for line in text.splitlines() if line.strip().startswith("kpsync_conf_randinit"))
    assert sync.split()[1:] == ["-", "0.5000", "1.2500"]
    assert "copy reference" in text and "random-init" in text
    assert elapsed_and_left(0, 0.0) == "elapsed 0:00"
    half = next(i for i in range(len(EXPECTED_SHARE)) if sum(EXPECTED_SHARE[:i]) >= 0.5)
    share = sum(EXPECTED_SHARE[:half])
    left = 600 / share * (1 - share)
    assert elapsed_and_left(half, 600.0) == f"elapsed 10:00, about {int(left) // 60}:{int(left) % 60:02d} left"
    assert abs(sum(EXPECTED_SHARE) - 1.0) < 1e-9


def test_encoding_option_writes_444_closer_to_the_generated_frames(pipe, assets, tmp_path) -> None:
    """``encoding`` reaches the written file: yuv444p at crf 10 is decoded much closer to the frames the pipeline
    produced than the default yuv420p (at 32 px 4:2:0 keeps a 16x16 colour plane); a bad value is refused before
    any generation."""
    import av

    audio = speech_file(assets, 1.0, tmp_path)
    err = {}
    for name, enc in (("default", None), ("444", {"crf": 10, "pix_fmt": "yuv444p"})):
        res = pipe.generate(assets["image"], audio, tmp_path / f"{name}.mp4", keypoints=assets["keypoints"],
                            sampling=FAST, encoding=enc)
        with av.open(str(res.video)) as c:
            assert c.streams.video[0].codec_context.pix_fmt == ("yuv444p" if enc else "yuv420p")
        dec = read_video(res.video).astype(np.float64)
        err[name] = float(np.mean((dec - res.frames.astype(np.float64)) ** 2))
    assert err["444"] < 0.5 * err["default"], err
    with pytest.raises(GenerationError, match="pix_fmt must be one of"):
        pipe.generate(assets["image"], audio, tmp_path / "bad.mp4", keypoints=assets["keypoints"], sampling=FAST,
                      encoding={"pix_fmt": "yuv422p"})
