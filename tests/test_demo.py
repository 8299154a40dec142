"""``python -m mmgt.demo``: the Gradio page over the generation pipeline.

In-process tests check the page's actions (the pose preview, ``generate``'s input checks as page errors, the
estimator when no keypoints are uploaded, the page's values reaching the sampler); the slow test starts the real
command on localhost with the shipped quickstart checkpoints (trained, tiny, 32 px) and drives the page in
headless Chromium (Debian's ``chromium`` + ``chromium-driver``): an error for a missing upload, then an image,
speech and keypoints uploaded, the panel asked for, Generate clicked, the video element's file fetched and decoded
(frames, duration of the speech), the panel shown. ``MMGT_DEMO_SCREENSHOT=docs/demo.png`` also stores the page's
screenshot there.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import gradio as gr  # the `dev` extra installs it (and the lock): a missing one fails, it does not skip
import numpy as np
import pytest
import soundfile as sf
import torch

from mmgt.data.synthetic import synth_sequence
from mmgt.data.video_io import probe_video, read_audio, read_video
from mmgt.demo import Demo, build, no_pose_message, pose_preview
from tiny_configs import GEN_VIDEO_NET, SMGA_INFO, SMGA_NET, save_checkpoint, video_info

ROOT = Path(__file__).resolve().parents[1]
SECONDS = 1.6  # speech of the browser test (40 frames)


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny random-init checkpoints of both stages (2 sampling steps recorded), an image of a synthetic speaker with
    its keypoints, its speech and a silent recording."""
    from mmgt.lit.smga import SMGAModule
    from mmgt.lit.video import VideoModule

    d = tmp_path_factory.mktemp("demo")
    torch.manual_seed(0)
    smga = SMGAModule(SMGA_NET, data_info=SMGA_INFO, sampling=dict(steps=2, guidance=2.0))
    video = VideoModule(GEN_VIDEO_NET, attention={"type": "mm_haa", "blocks": ["down"]}, substage="b",
                        data_info=video_info(),
                        sampling={"steps": 2, "guidance": 2.0, "context_frames": 8, "context_overlap": 2})
    frames, audio, kp = synth_sequence(int(SECONDS * 25), 64, seed=1)
    from PIL import Image

    Image.fromarray(frames[0]).save(d / "person.png")
    np.save(d / "person.npy", kp[0])
    sf.write(d / "speech.wav", audio, 16000)
    sf.write(d / "silence.wav", np.zeros(16000, np.float32), 16000)
    return {"dir": d, "smga": save_checkpoint(smga, d / "smga.ckpt"), "video": save_checkpoint(video, d / "video.ckpt"),
            "image": d / "person.png", "keypoints": d / "person.npy", "speech": d / "speech.wav",
            "silence": d / "silence.wav", "kp": kp[0], "frame": frames[0]}


def _cfg(assets: dict, out_dir: Path) -> dict:
    """conf/demo.yaml as Hydra composes it, with the test's checkpoints."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from mmgt.utils.paths import CONF_DIR

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="demo", overrides=[f"smga.ckpt={assets['smga']}", f"video.ckpt={assets['video']}",
                                                     f"paths.output_dir={out_dir}", "progress=false",
                                                     f"paths.weights_dir={out_dir}/no_weights"])
    return OmegaConf.to_container(cfg, resolve=True)


@pytest.fixture(scope="module")
def demo(assets, tmp_path_factory) -> Demo:
    out = tmp_path_factory.mktemp("demo_out")
    return build(_cfg(assets, out), out)


def test_controls_start_at_the_checkpoints_settings(demo) -> None:
    k = demo.controls
    assert (k.pose_steps, k.pose_guidance, k.video_steps, k.video_guidance) == (2, 2.0, 2, 2.0)
    assert k.branch_names == ("full", "face", "lips") and k.branch_weights == (1.0, 1.0, 1.0)


def test_preview_draws_the_pose_where_the_keypoints_are(demo, assets) -> None:
    img, note = demo.preview(str(assets["image"]), str(assets["keypoints"]))
    frame = assets["frame"]  # 64 px: shown 4x enlarged (256 px)
    assert img.shape == (256, 256, 3)
    changed = np.abs(img.astype(int) - frame.repeat(4, 0).repeat(4, 1).astype(int)).sum(-1) > 0
    kp = assets["kp"]
    vis = kp[:, 2] >= 0.3
    ys, xs = np.nonzero(changed)
    # the drawing lies around the visible keypoints (within the joints' radius), not elsewhere
    x, y = kp[vis, 0] * 4, kp[vis, 1] * 4
    assert changed.any() and xs.min() >= x.min() - 16 and xs.max() <= x.max() + 16
    assert ys.min() >= y.min() - 16 and ys.max() <= y.max() + 16
    assert changed.mean() < 0.5
    assert "the whole image" in note and "64x64 to its 32x32 frame" in note
    plain, hint = demo.preview(str(assets["image"]), None)  # no keypoints, no estimator: the image and a hint
    assert np.array_equal(plain, frame) and hint == no_pose_message(demo.cfg["estimator"])
    assert "no_weights/dwpose/yolox_l.onnx" in hint  # where the DWPose files would make the upload optional


def test_preview_dims_what_the_crop_drops() -> None:
    image = np.full((40, 80, 3), 200, np.uint8)
    kp = np.zeros((134, 3), np.float32)
    out, note = pose_preview(image, kp, (32, 32), min_side=80)
    assert (out[:, :20] < 100).all() and (out[:, 60:] < 100).all() and (out[:, 20:60] == 200).all()
    assert "centre crop 40x40 at x=20, y=0" in note


def test_page_errors_are_generates_input_checks(demo, assets, tmp_path) -> None:
    ok = dict(pose_steps=2, pose_guidance=2.0, video_steps=2, video_guidance=2.0, seed=0, panel=False)
    args = lambda image, audio, kp: (image, audio, kp, *ok.values())  # noqa: E731
    with pytest.raises(gr.Error, match="upload a still image"):
        demo.generate(*args(None, str(assets["speech"]), str(assets["keypoints"])))
    with pytest.raises(gr.Error, match="upload \\(or record\\) the speech"):
        demo.generate(*args(str(assets["image"]), None, str(assets["keypoints"])))
    with pytest.raises(gr.Error, match="no initial pose"):
        demo.generate(*args(str(assets["image"]), str(assets["speech"]), None))
    with pytest.raises(gr.Error, match="silence.wav: the audio is silent"):
        demo.generate(*args(str(assets["image"]), str(assets["silence"]), str(assets["keypoints"])))
    bad = tmp_path / "norm.npy"
    kp = assets["kp"].copy()
    kp[:, :2] /= 64.0
    np.save(bad, kp)
    with pytest.raises(gr.Error, match="look normalised"):
        demo.generate(*args(str(assets["image"]), str(assets["speech"]), str(bad)))
    with pytest.raises(gr.Error, match="look normalised"):  # the preview tells it too, before any generation
        demo.preview(str(assets["image"]), str(bad))
    with pytest.raises(gr.Error, match="branch_weights has 2 values"):
        demo.generate(*args(str(assets["image"]), str(assets["speech"]), str(assets["keypoints"])), 1.0, 2.0)
    demo.cfg["max_seconds"] = 1.0
    try:
        with pytest.raises(gr.Error, match="speech.wav: 1.6 s of speech; this page generates at most 1 s"):
            demo.generate(*args(str(assets["image"]), str(assets["speech"]), str(assets["keypoints"])))
    finally:
        demo.cfg["max_seconds"] = 60
    assert not list(demo.out_dir.glob("*.mp4"))


def test_without_keypoints_the_estimator_gives_the_pose(demo, assets, monkeypatch) -> None:
    """No keypoints uploaded and an estimator that can run (as DWPose does once its files exist): the preview and
    the generation use its pose."""
    from mmgt.pose.estimators import PoseEstimator

    class Known(PoseEstimator):  # the image's true keypoints, as a perfect estimator would give them
        calls = 0

        def __call__(self, frames, context=None):
            Known.calls += 1
            return np.repeat(assets["kp"][None], len(frames), 0)

    monkeypatch.setitem(demo.cfg, "estimator", Known())
    by_estimator, note = demo.preview(str(assets["image"]), None)
    by_file, _ = demo.preview(str(assets["image"]), str(assets["keypoints"]))
    assert np.array_equal(by_estimator, by_file) and "visible keypoints" in note and Known.calls == 1
    video, _, _ = demo.generate(str(assets["image"]), str(assets["speech"]), None, 1, 2.0, 1, 2.0, 0, False)
    assert Known.calls == 2 and probe_video(video).n_frames == int(SECONDS * 25)


def test_page_values_reach_the_sampler(demo, assets, monkeypatch) -> None:
    seen = {}
    real = type(demo.pipe).__call__

    def spy(self, *a, **kw):
        seen.update(pose=kw["pose_sampling"], video=kw["video_sampling"])
        return real(self, *a, **kw)

    monkeypatch.setattr(type(demo.pipe), "__call__", spy)
    video, panel, report = demo.generate(str(assets["image"]), str(assets["speech"]), str(assets["keypoints"]),
                                         1, 3.5, 1, 1.5, 7, True, 1.0, 0.5, 2.0)
    assert (seen["pose"].steps, seen["pose"].guidance) == (1, 3.5)
    assert (seen["video"].steps, seen["video"].guidance, seen["video"].branch_weights) == (1, 1.5, (1.0, 0.5, 2.0))
    assert probe_video(video).n_frames == int(SECONDS * 25) and Path(panel).exists()
    assert "40 frames (1.60 s of audio)" in report and (demo.out_dir / "generation.json").exists()


# ------------------------------------------------------------------------------------------ the browser


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(cond, timeout: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        got = cond()
        if got:
            return got
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the demo exited ({proc.returncode}) before {what}:\n{log.read_text()[-3000:] if log else ''}")
        time.sleep(0.25)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}" +
                (f":\n{log.read_text()[-3000:]}" if log else ""))


def _up(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def _screenshot(browser, path: Path, copy_to: str | None) -> None:
    """The whole page (the window grown to the page's height), as a 256-colour PNG (small enough for the docs)."""
    from PIL import Image

    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(1280, min(int(height) + 140, 2400))  # + the window's chrome
    browser.execute_script("window.scrollTo(0, 0)")
    time.sleep(0.5)
    browser.save_screenshot(str(path))
    Image.open(path).convert("RGB").quantize(256).save(path, optimize=True)
    if copy_to:
        shutil.copyfile(path, copy_to)


@pytest.mark.slow
def test_demo_in_headless_chromium(assets, tmp_path) -> None:
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver_path:
        pytest.skip("needs Debian's chromium and chromium-driver (apt-get install -y chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    from mmgt.quickstart import SHIPPED  # the trained tiny pair make quickstart starts from (32 px, like the page)

    port, run_dir, log = _free_port(), tmp_path / "run", tmp_path / "demo.log"
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "GRADIO_TEMP_DIR": str(tmp_path / "gradio"),
           "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "mmgt.demo", f"smga.ckpt={SHIPPED['smga']}", f"video.ckpt={SHIPPED['video']}",
           f"port={port}", f"hydra.run.dir={run_dir}", "threads=1", f"paths.weights_dir={tmp_path}/no_weights"]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    browser = None
    try:
        _wait_for(lambda: _up(url), 120, "the page to be served", proc, log)
        opts = webdriver.ChromeOptions()
        opts.binary_location = chromium
        for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--window-size=1280,1100", "--disable-background-networking", "--no-first-run",
                    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"):  # only this machine is reached
            opts.add_argument(arg)
        browser = webdriver.Chrome(service=Service(driver_path), options=opts)
        browser.set_page_load_timeout(60)
        browser.get(url)
        find = browser.find_element
        _wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#generate"), 60, "the Generate button")

        # Generate with nothing uploaded: the page says what is missing (generate's own check), no video
        find(By.CSS_SELECTOR, "#generate").click()
        _wait_for(lambda: "upload a still image" in browser.find_element(By.TAG_NAME, "body").text, 30,
                  "the missing-image error on the page")
        for close in browser.find_elements(By.CSS_SELECTOR, ".toast-close"):
            close.click()

        for elem, path in (("image", assets["image"]), ("audio", assets["speech"]),
                           ("keypoints", assets["keypoints"])):
            find(By.CSS_SELECTOR, f"#{elem} input[type=file]").send_keys(str(path))
        _wait_for(lambda: "visible keypoints" in find(By.CSS_SELECTOR, "#pose-note").text, 30, "the pose preview")
        _wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#audio audio, #audio [data-testid=waveform]"),
                  30, "the uploaded audio")
        find(By.CSS_SELECTOR, "#panel input[type=checkbox]").click()
        find(By.CSS_SELECTOR, "#generate").click()

        src = _wait_for(lambda: [v.get_attribute("src") for v in browser.find_elements(By.CSS_SELECTOR, "#video video")
                                 if v.get_attribute("src")], 120, "the generated video", proc, log)[0]
        # the browser decoded it: its duration is the speech's
        duration = _wait_for(lambda: browser.execute_script(
            "const v = document.querySelector('#video video'); return v.readyState >= 1 ? v.duration : 0;"), 30,
            "the video's metadata in the browser")
        assert duration == pytest.approx(SECONDS, abs=0.1)
        assert "40 frames (1.60 s of audio)" in find(By.CSS_SELECTOR, "#status").text
        _wait_for(lambda: [v for v in browser.find_elements(By.CSS_SELECTOR, "#panel-video video")
                           if v.get_attribute("src")], 30, "the pose | masks | result panel")
        got = tmp_path / "served.mp4"
        with urllib.request.urlopen(src, timeout=10) as r:
            got.write_bytes(r.read())
        _screenshot(browser, tmp_path / "demo.png", os.environ.get("MMGT_DEMO_SCREENSHOT"))
    finally:
        if browser is not None:
            browser.quit()
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()

    # the file the page played: decodable frames of the model's size, with the speech, as long as the speech
    info = probe_video(got)
    frames = read_video(got)
    assert frames.shape == (int(SECONDS * 25), 32, 32, 3) and frames.std() > 0
    assert info.n_frames / info.fps == pytest.approx(SECONDS, abs=0.05)
    speech = read_audio(got, 16000)
    assert len(speech) / 16000 == pytest.approx(SECONDS, abs=0.05)
    written = sorted(run_dir.glob("*.mp4"))  # the video and its panel
    assert [p.name for p in written] == ["001_speech.mp4", "001_speech_panel.mp4"]
    assert written[0].read_bytes() == got.read_bytes()
