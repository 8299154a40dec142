"""A new dataset integrated in the files a contributor writes and nothing else (issue 13, "done when").

The dataset: a folder of recordings ``<speaker>/<name>.mp4`` (any rate, any frame shape) with the speech beside it
in ``<name>.wav`` (any rate, stereo) and keypoints ``<name>.npy`` (one row per source frame, source pixels). The four
pieces a contributor adds:

1. the importer, :func:`import_folder` below, built only from the shared media code (:mod:`mmgt.data.media`,
   :mod:`mmgt.data.importing`);
2. its prepare config, a task file ``conf/task/folder.yaml`` naming it (written by the test into its own config
   folder, found through ``hydra.searchpath``: no file of the repository is touched);
3. its data config, ``conf/data/folder.yaml`` (the synthetic one with another root);
4. this test.

``python -m mmgt.prepare task=folder`` builds the corpus, ``task=validate`` passes on it, and the DataModule built
from ``data=folder`` yields training batches.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from mmgt.data.corpus import Corpus, write_manifest
from mmgt.data.importing import ClipStore, SkipItem, assign_val, write_skip_log
from mmgt.data.media import cut_audio, cut_video, find_videos
from mmgt.data.video_io import FPS, probe_video, write_video
from mmgt.pose.estimators import CropTransform

REPO = Path(__file__).resolve().parents[1]
SRC_FPS, SRC_W, SRC_H, FIG, SECONDS, SIZE = 30, 64, 48, 48, 2, 32


# --------------------------------------------------------------------------------------------------- 1. importer


def import_folder(settings: dict[str, Any], root: Path, *, workers: int | None = None, progress: bool = True) -> int:
    """``<source_dir>/<speaker>/<name>.mp4`` + ``.wav`` + ``.npy`` -> one 25-fps clip per recording (an
    :class:`mmgt.data.prepare.Importer`). Resumable: a clip finished with the same settings is kept."""
    size, crop = int(settings["size"]), settings["crop"]
    signature = f"{size}-{crop}"
    store, records, skipped = ClipStore(root), [], []
    with store.run():  # the writer lock; leftovers of killed runs swept
        for video in find_videos(settings["source_dir"]):
            speaker, clip_id = video.parent.name, f"{video.parent.name}-{video.stem}"
            rec = store.finished(clip_id, signature)
            if rec is None:
                try:
                    rec = _import_one(store, video, speaker, clip_id, size, crop, signature)
                except SkipItem as skip:
                    skipped.append({"clip_id": clip_id, "reason": skip.reason, "detail": skip.detail})
                    continue
            records.append(rec)
        records = assign_val(records, {r.clip_id: r.clip_id for r in records}, int(settings["val_per_speaker"]))
        write_manifest(root, records)
        write_skip_log(root, skipped, ("clip_id", "reason", "detail"))
    print(f"{root}: {len(records)} clips, {len(skipped)} skipped")
    return 0 if records else 1


def _import_one(store: ClipStore, video: Path, speaker: str, clip_id: str, size: int, crop: str, signature: str):
    keypoints = video.with_suffix(".npy")
    if not keypoints.is_file():
        raise SkipItem("missing keypoints", str(keypoints))
    try:
        cut = cut_video(video, 0.0, probe_video(video).duration, FPS, size, crop)
        audio = cut_audio(video.with_suffix(".wav"), 0.0, len(cut.frames) / FPS)
    except ValueError as err:
        raise SkipItem("decode error", str(err)) from err
    kp = CropTransform(*cut.crop, size).apply(np.load(keypoints, allow_pickle=False)[cut.source_frames])
    return store.write(clip_id, speaker, "train", cut.frames, audio, kp, signature=signature)


# --------------------------------------------------------------------------------------------------- 2., 3. configs


TASK_FILE = """# @package _global_
defaults:
  - override /data: folder  # data.root: where `data=folder` training reads
task: folder
importer:
  _target_: test_importer_example.import_folder
folder:
  source_dir: null
  size: 32
  crop: center
  val_per_speaker: 1
"""
DATA_FILE = """defaults:
  - synthetic
  - _self_
root: ${paths.data_dir}/folder
synthetic:
  generate_if_missing: false
"""


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two speakers with two recordings each (30 fps, 64x48, 22.05 kHz stereo speech) and one without keypoints."""
    from mmgt.data.synthetic import synth_sequence

    base = tmp_path_factory.mktemp("folder_dataset")
    src, conf = base / "recordings", base / "conf"
    for i, (speaker, name) in enumerate([("ann", "a"), ("ann", "b"), ("bob", "a"), ("bob", "b"), ("bob", "c")]):
        (src / speaker).mkdir(parents=True, exist_ok=True)
        frames, audio, kp = synth_sequence(SECONDS * SRC_FPS, FIG, seed=i, style=i % 2)
        canvas = np.zeros((len(frames), SRC_H, SRC_W, 3), np.uint8)
        x0 = (SRC_W - FIG) // 2
        canvas[:, :, x0:x0 + FIG] = frames
        write_video(src / speaker / f"{name}.mp4", canvas, fps=SRC_FPS)
        t = np.arange(SECONDS * 22050) / 22050
        sf.write(src / speaker / f"{name}.wav", np.stack([np.sin(2 * np.pi * 220 * t)] * 2, 1) * 0.3, 22050)
        if name != "c":
            np.save(src / speaker / f"{name}.npy", kp + np.array([x0, 0, 0], np.float32))
    (conf / "task").mkdir(parents=True)
    (conf / "data").mkdir()
    (conf / "task" / "folder.yaml").write_text(TASK_FILE)
    (conf / "data" / "folder.yaml").write_text(DATA_FILE)
    return {"base": base, "src": src, "conf": conf, "root": base / "data" / "folder"}


def _prepare(dataset: dict[str, Path], *overrides: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO / "tests"))
    cmd = [sys.executable, "-m", "mmgt.prepare", f"hydra.searchpath=[file://{dataset['conf']}]",
           f"paths.root_dir={dataset['base']}", "progress=false", *overrides]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


# --------------------------------------------------------------------------------------------------- 4. the test


def test_new_importer_builds_a_valid_corpus_that_trains(dataset: dict[str, Path]) -> None:
    root = dataset["root"]
    made = _prepare(dataset, "task=folder", f"folder.source_dir={dataset['src']}")
    assert made.returncode == 0, made.stdout + made.stderr
    assert f"{root}: 4 clips, 1 skipped" in made.stdout
    checked = _prepare(dataset, "task=validate", f"data.root={root}")
    assert checked.returncode == 0 and "0 error(s)" in checked.stdout, checked.stdout + checked.stderr

    corpus = Corpus(root)
    assert sorted(r.clip_id for r in corpus) == ["ann-a", "ann-b", "bob-a", "bob-b"]
    assert sorted(r.split for r in corpus) == ["train", "train", "val", "val"]  # one val recording per speaker
    for rec in corpus:  # 2 s of 30-fps video -> 50 frames at 25 fps, 32 px, 16 kHz mono audio of the same length
        assert (rec.fps, rec.n_frames, rec.width, rec.height) == (25, 50, SIZE, SIZE)
        assert len(corpus.load_audio(rec)) == 50 * 640
    kp = corpus.load_keypoints(corpus["ann-a"])
    assert (kp[..., 0][kp[..., 2] > 0] < SIZE).all() and kp[:, 1, 2].min() > 0.3  # cropped frame, neck visible
    assert "missing keypoints" in (root / "skipped.csv").read_text()

    # the data config: the DataModule of `python -m mmgt.train data=folder` reads the new corpus
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from mmgt.utils.paths import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"hydra.searchpath=[file://{dataset['conf']}]", "data=folder",
                                                      f"paths.root_dir={dataset['base']}", "data.window=16",
                                                      "data.stride=8", "data.batch_size=2", "data.progress=false"])
    dm = instantiate(cfg.data)
    dm.prepare_data()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["poses"].shape == (2, 16, 134, 3) and dm.frame_size == (SIZE, SIZE)


def test_rerun_keeps_finished_clips(dataset: dict[str, Path]) -> None:
    root = dataset["root"]
    if not (root / "manifest.csv").exists():
        import_folder({"source_dir": dataset["src"], "size": SIZE, "crop": "center", "val_per_speaker": 1}, root)
    stamps = {p: p.stat().st_mtime_ns for p in (root / "clips").rglob("*") if p.is_file()}
    assert import_folder({"source_dir": dataset["src"], "size": SIZE, "crop": "center", "val_per_speaker": 1},
                         root, progress=False) == 0
    assert {p: p.stat().st_mtime_ns for p in (root / "clips").rglob("*") if p.is_file()} == stamps


def test_unknown_tasks_are_refused_with_the_choices(dataset: dict[str, Path], tmp_path: Path) -> None:
    from hydra import compose, initialize_config_dir
    from hydra.errors import MissingConfigException
    from omegaconf import OmegaConf

    from mmgt.data.prepare import run
    from mmgt.utils.paths import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"), \
            pytest.raises(MissingConfigException, match=r"(?s)task/nope.*pats.*synthetic.*validate"):
        compose(config_name="prepare", overrides=["task=nope"])
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):  # the search path adds options
        assert compose(config_name="prepare", overrides=[f"hydra.searchpath=[file://{dataset['conf']}]",
                                                         "task=folder"]).importer._target_.endswith("import_folder")
    plain = OmegaConf.create({"task": "nope", "data": {"root": str(tmp_path)}})  # run() without Hydra
    with pytest.raises(ValueError, match=r"task='nope'.*conf/task/nope.yaml.*importer._target_"):
        run(plain)
