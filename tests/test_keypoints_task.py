"""Photo -> pose: ``python -m mmgt.prepare task=keypoints`` and generate's automatic DWPose.

Two tiny random-weight ONNX models with the DWPose release's layouts are exported with ``torch.onnx.export``: the
YOLOX-L detector (input "images" (1, 3, 640, 640), raw 0-255 pixels; output (1, 8400, 85): per anchor of the 80x80,
40x40 and 20x20 grids of strides 8, 16, 32, box offsets and log sizes in grid units, then objectness and the 80 COCO
class scores after a sigmoid) and the DWPose-L whole-body model (input (1, 3, 384, 288); outputs simcc_x
(1, 133, 576) and simcc_y (1, 133, 768), SimCC split ratio 2). Their biases place one person box and the 133 SimCC
peaks; the small random weights barely move them. The task is run through the prepare app's config and dispatch,
generate's through its config with the networks replaced.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from PIL import Image

from mmgt.errors import GenerationError
from mmgt.utils.paths import CONF_DIR

pytest.importorskip("onnxruntime")

H, W = 128, 96  # the photo (portrait: letterboxed into the detector's square input)
RELEASE = "https://huggingface.co/yzd-v/DWPose/resolve/main/"


class Head(torch.nn.Module):
    """A random-weight net of a given input/output layout: the image's channel means -> one linear map per output;
    ``sigmoid`` marks the output channels a sigmoid follows (as in the exported YOLOX head)."""

    def __init__(self, shapes: dict[str, tuple[int, ...]], biases: dict[str, np.ndarray],
                 sigmoid: dict[str, slice] | None = None, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.shapes, self.sigmoid = shapes, sigmoid or {}
        self.maps = torch.nn.ModuleList()
        for name, shape in shapes.items():
            lin = torch.nn.Linear(3, int(np.prod(shape)))
            with torch.no_grad():
                lin.weight.copy_(torch.randn(lin.weight.shape, generator=g) * 1e-5)
                lin.bias.copy_(torch.from_numpy(biases[name].reshape(-1).astype(np.float32)))
            self.maps.append(lin)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        pooled = x.mean((2, 3))
        outs = []
        for (name, shape), lin in zip(self.shapes.items(), self.maps, strict=True):
            y = lin(pooled).reshape(shape)
            if name in self.sigmoid:
                s = self.sigmoid[name]
                y = torch.cat([y[..., : s.start], torch.sigmoid(y[..., s]), y[..., s.stop:]], -1)
            outs.append(y)
        return tuple(outs)


def export(model: torch.nn.Module, in_shape: tuple[int, ...], names: list[str], path: Path,
           input_name: str = "input") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(model, (torch.zeros(in_shape),), str(path), input_names=[input_name], output_names=names,
                      dynamo=False)
    return path


@pytest.fixture(scope="module")
def dwpose(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """``<weights>/dwpose/{yolox_l.onnx, dw-ll_ucoco_384.onnx}`` and the person box they encode for an H x W photo."""
    weights = tmp_path_factory.mktemp("weights")
    # the photo is letterboxed by 640 / 128 = 5; the person box (image pixels) x 24..72, y 24..104 is, in the
    # detector's input, centre (240, 320), size 240 x 400: stride-32 cell (7, 10) with offsets (0.5, 0)
    det = np.full((1, 8400, 85), -10.0, np.float32)
    det[..., :4] = 0.0
    anchor = 6400 + 1600 + 10 * 20 + 7
    det[0, anchor, :6] = [0.5, 0.0, np.log(240 / 32), np.log(400 / 32), 4.0, 4.0]  # obj, person: sigmoid(4) = 0.98
    det_path = export(Head({"output": (1, 8400, 85)}, {"output": det}, {"output": slice(4, 85)}),
                      (1, 3, 640, 640), ["output"], weights / "dwpose" / "yolox_l.onnx", input_name="images")
    rng = np.random.default_rng(1)
    sx, sy = np.zeros((1, 133, 576), np.float32), np.zeros((1, 133, 768), np.float32)
    sx[0, np.arange(133), rng.integers(0, 576, 133)] = 0.8
    sy[0, np.arange(133), rng.integers(0, 768, 133)] = 0.7
    pose_net = Head({"simcc_x": (1, 133, 576), "simcc_y": (1, 133, 768)}, {"simcc_x": sx, "simcc_y": sy}, seed=1)
    pose_path = export(pose_net, (1, 3, 384, 288), ["simcc_x", "simcc_y"], weights / "dwpose" / "dw-ll_ucoco_384.onnx")
    return {"weights": weights, "det": det_path, "pose": pose_path, "box": (24.0, 24.0, 72.0, 104.0)}


@pytest.fixture()
def photo(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:H, :W]
    img = np.stack([xx * 2, yy * 2, (xx + yy) % 256], -1) + rng.integers(0, 20, (H, W, 3))
    path = tmp_path / "me.jpg"
    Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(path, quality=95)
    return path


def prepare(overrides: list[str]) -> int:
    from mmgt.data.prepare import run

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="prepare", overrides=["task=keypoints", *overrides])
    return run(cfg)


def test_keypoints_task_writes_pose_and_overlay(dwpose, photo, capsys) -> None:
    assert prepare([f"image={photo}", f"paths.weights_dir={dwpose['weights']}"]) == 0
    npy, png = photo.with_name("me_pose.npy"), photo.with_name("me_pose.png")
    out = capsys.readouterr().out.splitlines()
    assert [ln.split(":")[0] for ln in out] == [str(npy), str(png)]  # one line per written file
    assert "(134, 3) pixel keypoints" in out[0] and f"keypoints={npy}" in out[0]
    kp = np.load(npy)
    assert kp.shape == (134, 3) and kp.dtype == np.float32 and np.isfinite(kp).all()
    assert np.allclose(kp[:, 2], 0.7, atol=1e-3)  # the smaller SimCC peak
    x0, y0, x1, y1 = dwpose["box"]  # the points lie in the padded person box, inside the photo
    assert (kp[:, 0] >= 0).all() and (kp[:, 0] < W).all() and (kp[:, 1] >= 0).all() and (kp[:, 1] < H).all()
    cx, cy, side_h = (x0 + x1) / 2, (y0 + y1) / 2, (y1 - y0) * 1.25
    assert np.abs(kp[:, 1] - cy).max() <= side_h / 2 and np.abs(kp[:, 0] - cx).max() <= side_h * 0.75 / 2
    np.testing.assert_allclose(kp[1, :2], (kp[2, :2] + kp[5, :2]) / 2, atol=1e-4)  # mmgt layout: the neck at 1
    # the overlay: the photo with the pose drawn on it, unchanged away from the keypoints
    photo_px = np.asarray(Image.open(photo).convert("RGB"))
    over = np.asarray(Image.open(png))
    assert over.shape == photo_px.shape and (over != photo_px).any(axis=-1).sum() > 50
    lo, hi = np.floor(kp[:, :2].min(0)).astype(int) - 3, np.ceil(kp[:, :2].max(0)).astype(int) + 3
    away = np.ones((H, W), bool)
    away[max(lo[1], 0): hi[1], max(lo[0], 0): hi[0]] = False
    np.testing.assert_array_equal(over[away], photo_px[away])


def test_keypoints_task_takes_a_folder_with_a_video(dwpose, photo, tmp_path, capsys) -> None:
    from mmgt.data.video_io import write_video

    frames = np.repeat(np.asarray(Image.open(photo).convert("RGB"))[None], 3, 0)
    write_video(photo.with_name("clip.mp4"), frames)
    out = tmp_path / "poses"
    assert prepare([f"image={photo.parent}", f"out={out}", f"paths.weights_dir={dwpose['weights']}"]) == 0
    assert np.load(out / "clip_pose.npy").shape == (3, 134, 3) and np.load(out / "me_pose.npy").shape == (134, 3)
    assert sorted(p.name for p in out.iterdir()) == ["clip_pose.npy", "clip_pose.png", "me_pose.npy", "me_pose.png"]
    assert len(capsys.readouterr().out.splitlines()) == 4


def test_missing_dwpose_files_are_one_line_saying_what_to_get(photo, tmp_path, capsys) -> None:
    empty = tmp_path / "no_weights"
    assert prepare([f"image={photo}", f"paths.weights_dir={empty}"]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err and err.startswith("ERROR DWPose")
    for name, key in (("yolox_l.onnx", "det_model"), ("dw-ll_ucoco_384.onnx", "pose_model")):
        assert f"{RELEASE}{name} to {empty / 'dwpose' / name} (config key estimator.{key})" in err
    assert "pats." not in err and not list(photo.parent.glob("*_pose.*"))


# ------------------------------------------------------------------------------------------------- generate


def generate(overrides: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """generate's config (conf/generate.yaml with ``overrides``) run with the networks replaced by a stub that
    records what it is given."""
    from mmgt.generation import task
    from mmgt.generation.outputs import GenerationResult

    calls: list[dict] = []

    class FakePipe:
        def generate(self, image, audio, out, **kw):
            calls.append(kw)
            return GenerationResult(Path(out), 1, 1.0, np.zeros((1, 134, 3)), np.zeros((1, 2, 2, 3), np.uint8))

    monkeypatch.setattr(task.GesturePipeline, "from_checkpoints", lambda *a, **k: FakePipe())
    for name in ("s.ckpt", "v.ckpt"):  # never read: the loader is replaced
        (tmp_path / name).touch()
    sf.write(tmp_path / "speech.wav", 0.3 * np.sin(np.arange(16000) / 5.0), 16000)
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="generate", overrides=[
            f"smga.ckpt={tmp_path / 's.ckpt'}", f"video.ckpt={tmp_path / 'v.ckpt'}", f"audio={tmp_path / 'speech.wav'}",
            "progress=false", *overrides])
    cfg.paths.output_dir = str(tmp_path / "run")
    task.run({**OmegaConf.to_container(cfg, resolve=True), "output_dir": str(tmp_path / "run")}, echo=lambda _: None)
    return calls


def test_generate_uses_dwpose_when_its_files_exist(dwpose, photo, tmp_path, monkeypatch, caplog, capsys) -> None:
    assert prepare([f"image={photo}", f"paths.weights_dir={dwpose['weights']}"]) == 0
    with caplog.at_level(logging.INFO, logger="mmgt.generation.inputs"):
        [call] = generate([f"image={photo}", f"paths.weights_dir={dwpose['weights']}"], tmp_path, monkeypatch)
    # the pose the prepare task wrote for this photo, estimated once before the networks (none left for the pipeline)
    np.testing.assert_allclose(call["keypoints"], np.load(photo.with_name("me_pose.npy")), atol=1e-5)
    assert call["estimator"] is None
    assert any("estimated with dwpose" in r.getMessage() and str(dwpose["det"]) in r.getMessage()
               for r in caplog.records)
    # given keypoints win over the estimator; estimator=null never estimates
    kp = np.load(photo.with_name("me_pose.npy"))
    kp[:, :2] += 1.0
    np.save(tmp_path / "given.npy", kp)
    [call] = generate([f"image={photo}", f"keypoints={tmp_path / 'given.npy'}",
                       f"paths.weights_dir={dwpose['weights']}"], tmp_path, monkeypatch)
    np.testing.assert_array_equal(call["keypoints"], kp)
    with pytest.raises(GenerationError, match="no initial pose"):
        generate([f"image={photo}", "estimator=null", f"paths.weights_dir={dwpose['weights']}"], tmp_path, monkeypatch)


def test_generate_without_pose_or_dwpose_says_how_to_get_one(photo, tmp_path, monkeypatch) -> None:
    empty = tmp_path / "no_weights"
    with pytest.raises(GenerationError) as err:
        generate([f"image={photo}", f"paths.weights_dir={empty}"], tmp_path, monkeypatch)
    msg = str(err.value)
    assert msg.startswith("no initial pose") and "keypoints=<file.npy>" in msg
    assert "python -m mmgt.prepare task=keypoints image=<photo>" in msg
    for name in ("yolox_l.onnx", "dw-ll_ucoco_384.onnx"):
        assert f"{RELEASE}{name} to {empty / 'dwpose' / name}" in msg
    # asked for DWPose explicitly: the same one line about the files, naming generate's own keys
    with pytest.raises(GenerationError) as err:
        generate([f"image={photo}", "estimator.name=dwpose", f"paths.weights_dir={empty}"], tmp_path, monkeypatch)
    msg = str(err.value)
    assert re.match(r"DWPose .* not found", msg) and "\n" not in msg and "pats." not in msg
    assert f"{RELEASE}yolox_l.onnx to {empty / 'dwpose' / 'yolox_l.onnx'} (config key estimator.det_model)" in msg
