"""A new user's first hour: the traps that gave silent wrong results or late, long errors.

Strict booleans on the command line, per-app ``--help`` with the YAML's key descriptions, every ``generate`` input
and output folder checked before any network loads (corrupt files, no pose, 133-point arrays, normalised or
out-of-range keypoints, crop/upscale logged), TensorBoard GIFs that play at the logged frame rate with captions and
audio, and Lightning log lines printed once. Everything runs in-process on tiny inputs unless it needs a fresh
interpreter (Lightning's logging set-up happens at its first import).
"""

from __future__ import annotations

import io
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from hydra import compose, initialize_config_dir
from PIL import Image

from mmgt.errors import GenerationError
from mmgt.utils.paths import CONF_DIR

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------ strict booleans


def _errors(config: str, overrides: list[str]) -> list[str]:
    from mmgt.utils.cli import group_overrides, override_errors

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name=config, overrides=overrides)
        base = compose(config_name=config, overrides=group_overrides(overrides))
    return override_errors(overrides, cfg, base)


def test_misspelt_booleans_and_numbers_are_refused_naming_the_key() -> None:
    assert _errors("generate", ["side_by_side=ture"]) == ["side_by_side='ture': expected true or false"]
    assert _errors("generate", ["side_by_side=true", "pose_video=false", "video.steps=7"]) == []
    assert _errors("evaluate", ["tensorboard=yes"]) == ["tensorboard='yes': expected true or false"]
    # a key set by an experiment file keeps that file's type; group overrides are composed first
    assert _errors("train", ["experiment=quickstart_smga", "trainer.max_steps=5"]) == []
    assert _errors("train", ["experiment=quickstart_smga", "trainer.max_steps=five"]) == [
        "trainer.max_steps='five': expected a number"]
    assert _errors("train", ["test=1"]) == ["test=1: expected true or false"]
    assert _errors("train", ["+extra.key=ture", "hydra.job.chdir=false"]) == []  # new keys, Hydra's own: not ours


def test_generate_flags_are_strict_in_python_too() -> None:
    from mmgt.generation.task import flags

    assert flags({"side_by_side": True, "progress": None}) == {"pose_video": False, "side_by_side": True,
                                                             "save_keypoints": False, "progress": False}
    with pytest.raises(GenerationError, match="side_by_side='ture': expected true or false"):
        flags({"side_by_side": "ture"})


# ------------------------------------------------------------------------------------------ --help


def test_each_app_has_its_own_help_with_the_yaml_comments() -> None:
    from mmgt.utils.cli import help_template, help_text

    gen = help_text("generate")
    assert "python -m mmgt.generate" in gen
    assert "image=null" in gen and "still image" in gen  # the key and the comment that documents it
    assert "side_by_side=false" in gen and "pose | masks | result" in gen
    assert "preset: official" in gen and "experiment" not in gen and "trainer" not in gen  # only its own groups
    train = help_text("train")
    assert "experiment: " in train and "quickstart_smga" in train and "require_init=true" in train
    assert "python -m mmgt.train experiment=video_stage_b model.init_from=" in train  # usage lines
    for app in ("evaluate", "prepare", "convert"):
        assert f"conf/{app}.yaml" in help_text(app)
    assert "$$" in help_template("convert")  # `${paths.weights_dir}` survives Hydra's $-substitution
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="generate", return_hydra_config=True)
        assert cfg.hydra.help.template == help_template("generate")  # what `--help` prints


def test_help_cli_prints_the_apps_own_help() -> None:
    """One process (~1 s: ``--help`` imports no torch)."""
    proc = subprocess.run([sys.executable, "-m", "mmgt.generate", "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "still image" in proc.stdout and "${paths.data_dir}/synthetic" in proc.stdout
    assert "experiment" not in proc.stdout and "Powered by Hydra" not in proc.stdout


# ------------------------------------------------------------------------------------------ generate inputs


@pytest.fixture
def person(tmp_path: Path) -> dict:
    """A synthetic speaker's frame, its (134, 3) pixel keypoints and 1 s of its speech, as files."""
    from mmgt.data.synthetic import synth_sequence

    frames, audio, kp = synth_sequence(25, 64, seed=1)
    Image.fromarray(frames[0]).save(tmp_path / "me.png")
    np.save(tmp_path / "me.npy", kp[0])
    sf.write(tmp_path / "speech.wav", audio[:16000], 16000)
    return {"image": tmp_path / "me.png", "keypoints": tmp_path / "me.npy", "audio": tmp_path / "speech.wav",
            "kp": kp[0], "frame": frames[0]}


class Loaded(Exception):
    """Raised instead of loading the networks: reaching it means every input check passed."""


def _run(cfg: dict, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    from mmgt.generation import task

    calls: list[dict] = []

    class FakePipe:
        def generate(self, image, audio, out, **kw):
            from mmgt.generation.outputs import GenerationResult

            calls.append({"image": image, "audio": audio, **kw})
            return GenerationResult(Path(out), 1, 1.0, np.zeros((1, 134, 3)), np.zeros((1, 2, 2, 3), np.uint8))

    def load(*args, **kwargs):
        if cfg.get("_load") == "fake":
            return FakePipe()
        raise Loaded

    monkeypatch.setattr(task.GesturePipeline, "from_checkpoints", load)
    for name in ("s.ckpt", "v.ckpt"):  # never read: the loader is replaced
        (tmp_path / name).touch()
    base = {"smga": {"ckpt": str(tmp_path / "s.ckpt")}, "video": {"ckpt": str(tmp_path / "v.ckpt")},
            "output_dir": str(tmp_path / "run"), "progress": False}
    task.run({**base, **{k: v for k, v in cfg.items() if k != "_load"}}, echo=lambda _: None)
    return calls


def test_bad_inputs_are_refused_before_any_network_loads(person, tmp_path, monkeypatch) -> None:
    garbage_audio, garbage_image = tmp_path / "broken.wav", tmp_path / "broken.jpg"
    garbage_audio.write_bytes(b"RIFF not really a wave file" * 20)
    garbage_image.write_bytes(b"\xff\xd8\xff not a jpeg" * 20)
    good = {"image": str(person["image"]), "audio": str(person["audio"]), "keypoints": str(person["keypoints"])}
    cases = [  # (config, regex of the message)
        ({**good, "audio": str(garbage_audio)}, re.escape(f"{garbage_audio}: cannot read audio")),
        ({**good, "image": str(garbage_image)}, re.escape(f"{garbage_image}: cannot read the image")),
        ({**good, "keypoints": None}, "no initial pose"),
        ({**good, "side_by_side": "ture"}, "side_by_side='ture': expected true or false"),
        ({**good, "video": {"ckpt": str(tmp_path / "nope.ckpt")}}, r"video.ckpt=.*nope.ckpt: no such checkpoint"),
    ]
    for cfg, msg in cases:
        with pytest.raises(GenerationError, match=msg):
            _run(cfg, monkeypatch, tmp_path)
    with pytest.raises(Loaded):  # the good inputs pass every check
        _run(good, monkeypatch, tmp_path)


def test_normalised_keypoints_are_refused_and_out_of_range_warned(person, tmp_path, monkeypatch, caplog) -> None:
    kp = person["kp"].copy()
    h, w = person["frame"].shape[:2]
    norm = kp.copy()
    norm[:, 0] /= w
    norm[:, 1] /= h
    np.save(tmp_path / "norm.npy", norm)
    cfg = {"image": str(person["image"]), "audio": str(person["audio"]), "keypoints": str(tmp_path / "norm.npy")}
    with pytest.raises(GenerationError, match=rf"look normalised, but must be pixel x, y of the {w}x{h} image"):
        _run(cfg, monkeypatch, tmp_path)
    shifted = kp.copy()
    shifted[:, 0] += 3 * w  # pixels of another, larger picture
    np.save(tmp_path / "shifted.npy", shifted)
    with caplog.at_level(logging.WARNING, logger="mmgt.generation.inputs"), pytest.raises(Loaded):
        _run({**cfg, "keypoints": str(tmp_path / "shifted.npy")}, monkeypatch, tmp_path)
    assert any("lie outside the 64x64 image" in r.getMessage() for r in caplog.records)


def test_coco_wholebody_133_keypoints_are_accepted(person, tmp_path, monkeypatch) -> None:
    """COCO-WholeBody order (what DWPose/MMPose write): 17 body points (5, 6 = left/right shoulder), 6 feet,
    68 face, 2 x 21 hands. mmgt's layout inserts the neck and keeps feet, face and hands in order after it."""
    rng = np.random.default_rng(0)
    coco = np.concatenate([rng.uniform(8, 56, (133, 2)), np.ones((133, 1))], 1).astype(np.float32)
    np.save(tmp_path / "coco.npy", coco[None].repeat(3, 0))  # (T, 133, 3): frame 0 is used
    cfg = {"image": str(person["image"]), "audio": str(person["audio"]), "keypoints": str(tmp_path / "coco.npy"),
           "_load": "fake"}
    [call] = _run(cfg, monkeypatch, tmp_path)
    pose = call["keypoints"]
    assert pose.shape == (134, 3)
    np.testing.assert_allclose(pose[1, :2], (coco[5, :2] + coco[6, :2]) / 2, rtol=1e-6)  # the neck
    np.testing.assert_array_equal(pose[18:], coco[17:])  # feet, face, hands follow unchanged
    assert isinstance(call["image"], np.ndarray) and isinstance(call["audio"], np.ndarray)  # decoded once, up front


def test_unwritable_output_folder_is_one_line_before_generation(person, tmp_path, monkeypatch) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("in the way")
    good = {"image": str(person["image"]), "audio": str(person["audio"]), "keypoints": str(person["keypoints"])}
    with pytest.raises(GenerationError, match=rf"cannot write to {blocker}/sub \(config key `out`\)"):
        _run({**good, "out": str(blocker / "sub" / "x.mp4")}, monkeypatch, tmp_path)
    import tempfile

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", denied)
    with pytest.raises(GenerationError, match=r"cannot write to .*run \(config key `hydra.run.dir`\): Permission "):
        _run({**good, "out": str(tmp_path / "out" / "x.mp4")}, monkeypatch, tmp_path)


@pytest.mark.parametrize(("hw", "lines"), [((64, 64), []), ((50, 200), ["centre crop to 50x50 at x=75, y=0"]),
                                           ((80, 40), ["centre crop to 40x40 at x=0, y=20"]),
                                           ((20, 40), ["centre crop to 20x20", "upscaled x1.60"]),
                                           ((10, 10), ["upscaled x3.20"]), ((128, 128), [])])
def test_crop_and_upscale_are_logged_once_each(hw, lines, caplog) -> None:
    from mmgt.generation.inputs import fit_image

    with caplog.at_level(logging.INFO, logger="mmgt.generation.inputs"):
        frame, _ = fit_image(np.zeros((*hw, 3), np.uint8), (32, 32) if hw != (64, 64) else (64, 64))
    assert frame.shape[:2] == ((32, 32) if hw != (64, 64) else (64, 64))
    msgs = [r.getMessage() for r in caplog.records]
    assert len(msgs) == len(lines), msgs
    for want, got in zip(lines, msgs, strict=True):
        assert want in got
    if hw == (10, 10):
        assert caplog.records[0].levelno == logging.WARNING and "blurry" in msgs[0]


# ------------------------------------------------------------------------------------------ TensorBoard media


def test_tensorboard_video_plays_at_its_fps_with_caption_and_audio(tmp_path) -> None:
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from mmgt.callbacks.media import log_panel

    rng = np.random.default_rng(0)
    gt, gen = (rng.integers(0, 255, (6, 32, 32, 3), dtype=np.uint8) for _ in range(2))  # distinct frames
    logger = TensorBoardLogger(str(tmp_path), name="", version="")
    wave = np.sin(np.linspace(0, 2000, 32000)).astype(np.float32)  # 2 s; the panel lasts 6 / 25 s
    assert log_panel([logger], "val/sample_0", {"ground truth": gt, "generated": gen}, step=3, fps=25.0,
                     caption="clip spk0_001", audio=wave) == 1
    logger.experiment.flush()
    ea = EventAccumulator(str(tmp_path), size_guidance={"images": 0, "audio": 0, "tensors": 0})
    ea.Reload()
    [img] = ea.Images("val/sample_0")
    gif = Image.open(io.BytesIO(img.encoded_image_string))
    durations = []
    for i in range(gif.n_frames):
        gif.seek(i)
        durations.append(gif.info["duration"])
    assert gif.n_frames == 6 and durations == [40] * 6  # 25 fps (moviepy 1.0.3 + imageio wrote 0 ms)
    assert (img.width, img.step) == (2 * 32 + 2, 3)
    [text] = ea.Tensors("val/sample_0/caption/text_summary")
    assert text.tensor_proto.string_val[0].decode() == "ground truth | generated (clip spk0_001)"
    [aud] = ea.Audio("val/sample_0/audio")
    assert aud.sample_rate == 16000 and aud.length_frames == round(6 / 25 * 16000)


def test_panel_labels_are_drawn_above_each_part() -> None:
    from mmgt.callbacks.media import side_by_side

    white = np.full((2, 40, 48, 3), 255, np.uint8)
    plain = side_by_side(white, white)
    labelled = side_by_side(white, white, labels=("ground truth", "generated"))
    assert plain.shape == (2, 40, 98, 3)
    strip = labelled.shape[1] - 40
    assert strip >= 8 and labelled.shape[2] == 98
    assert (labelled[:, :strip, :48] < 128).any() and (labelled[:, :strip, 50:] < 128).any()  # text in each strip
    assert (labelled[:, strip:] == 255).all()  # the videos themselves are untouched
    with pytest.raises(ValueError, match="2 labels for 1 videos"):
        side_by_side(white, labels=("a", "b"))


# ------------------------------------------------------------------------------------------ logging


LOG_PROBE = """
import logging, sys
logging.basicConfig(stream=sys.stdout, format="[%(name)s] %(message)s", level=logging.INFO)  # as Hydra's job logging
import lightning.pytorch  # Lightning adds its own console handler on import
from lightning.fabric.utilities.rank_zero import rank_zero_info
rank_zero_info("before the fix")
from mmgt.utils.cli import single_log_lines
single_log_lines()
rank_zero_info("after the fix")
"""


@pytest.mark.slow
def test_lightning_log_lines_appear_once() -> None:
    """Under Hydra the root logger has handlers before Lightning is imported, and ``import lightning`` adds another
    console handler to the ``lightning`` logger: each line was printed twice. A fresh interpreter (Lightning sets its
    logging up at its first import)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-c", LOG_PROBE], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    both = proc.stdout + proc.stderr
    assert both.count("before the fix") == 2, both  # the trap, as Lightning sets it up
    assert both.count("after the fix") == 1, both
    assert "after the fix" in proc.stdout  # through the root handler (Hydra's console and the run's log file)
