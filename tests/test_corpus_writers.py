"""Corpus writers lose nothing (issue 17, item 5) and DDP waits are bounded (item 6).

A writer killed half-way (SIGKILL inside a file write, so its temp file stays behind) resumes on rerun keeping
the finished clips; an interrupted ``overwrite`` leaves the old corpus whole; leftovers are swept and flagged by
the validator; a failed write is one line naming the file; the manifest wait and the DDP process-group timeout
are config keys.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from mmgt.data.corpus import MANIFEST, Corpus, CorpusError, leftovers, read_manifest, write_manifest
from mmgt.data.datamodule import PATSDataModule
from mmgt.data.prepare import run
from mmgt.data.synthetic import generate_corpus
from mmgt.data.validate import report, validate_corpus
from mmgt.utils.paths import CONF_DIR

REPO = Path(__file__).resolve().parents[1]
SPEC = dict(n_speakers=1, clips_per_speaker=4, seconds=1.0, size=32)

# `prepare task=synthetic` (mmgt.data.prepare.run) that SIGKILLs itself inside the N-th audio write, after the temp
# file was created: what a kill, OOM or power cut does to a real writer (no finally block runs).
KILLER = """
import json, os, signal, sys
from omegaconf import OmegaConf
import mmgt.data.corpus as corpus
from mmgt.data.prepare import run

root, kill_at, overwrite, spec = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1", json.loads(sys.argv[4])
real, calls = corpus.write_audio, [0]

def write_audio(path, audio, *args, **kw):
    calls[0] += 1
    if calls[0] == kill_at:
        with corpus.atomic_path(path) as tmp:
            tmp.write_bytes(b"RIFF half a wav")
            os.kill(os.getpid(), signal.SIGKILL)
    return real(path, audio, *args, **kw)

corpus.write_audio = write_audio
run(OmegaConf.create({"task": "synthetic", "overwrite": overwrite, "progress": False,
                      "data": {"root": root, "synthetic": spec}}))
"""


def _killed_writer(root: Path, kill_at: int, overwrite: bool = False, **spec: object) -> None:
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    res = subprocess.run([sys.executable, "-c", KILLER, str(root), str(kill_at), str(int(overwrite)),
                          json.dumps(spec)], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == -9, res.stdout + res.stderr


def _files(root: Path) -> dict[str, tuple[int, str]]:
    """mtime and content hash of every non-hidden file under ``root``."""
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(root.rglob("*")) if p.is_file() and not p.name.startswith(".")}


def _prepare_cfg(root: Path, tmp_path: Path, *overrides: str):
    spec = [f"data.synthetic.{k}={v}" for k, v in SPEC.items()]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="prepare", overrides=[f"data.root={root}", "progress=false", *spec, *overrides,
                                                         f"paths.root_dir={tmp_path}"])


def test_killed_generation_resumes_keeping_finished_clips(tmp_path: Path) -> None:
    root = tmp_path / "syn"
    _killed_writer(root, kill_at=3, **SPEC)  # clips 0 and 1 done, clip 2 has its video and half a wav
    assert not (root / MANIFEST).exists()
    (temp,) = leftovers(root)
    assert temp.parent.name == "spk0_002" and temp.name.startswith(".audio.") and temp.suffix == ".wav"
    before = _files(root)
    records = generate_corpus(root, progress=False, **SPEC)
    after = _files(root)
    for clip in ("spk0_000", "spk0_001"):  # finished clips kept byte for byte, not rewritten
        kept = {k: v for k, v in before.items() if f"/{clip}/" in k}
        assert len(kept) == 3 and all(after[k] == v for k, v in kept.items()), clip
    assert after["clips/spk0_002/video.mp4"] != before["clips/spk0_002/video.mp4"]  # the partial clip rewritten
    assert sorted(r.clip_id for r in read_manifest(root)) == sorted(r.clip_id for r in records) == [
        f"spk0_{c:03d}" for c in range(4)]
    assert leftovers(root) == [] and validate_corpus(root, progress=False) == []


def test_interrupted_overwrite_leaves_old_corpus_whole(tmp_path: Path) -> None:
    root = tmp_path / "syn"
    generate_corpus(root, progress=False, **SPEC)
    old = _files(root)
    _killed_writer(root, kill_at=2, overwrite=True, seed=1, **SPEC)  # rebuild with another seed, killed half-way
    assert _files(root) == old  # not a file of the old corpus touched: every listed clip still there
    corpus = Corpus(root)
    assert len(corpus) == 4 and all(corpus.path(r, k).exists() for r in corpus for k in ("video", "audio",
                                                                                       "keypoints"))
    faults = validate_corpus(root, progress=False)
    assert faults and not any(f.fatal for f in faults)  # consistent and loadable; the build folder is a warning
    assert {f.path.name.split("-")[0] for f in faults} == {"syn.new"}
    # a new run sweeps the dead build folder and swaps a complete new corpus in
    generate_corpus(root, progress=False, overwrite=True, seed=1, **SPEC)
    new = _files(root)
    assert new.keys() == old.keys() and new["clips/spk0_000/keypoints.npy"][1] != old["clips/spk0_000/keypoints.npy"][1]
    assert json.loads((root / "synthetic.json").read_text())["seed"] == 1
    assert leftovers(root) == [] and validate_corpus(root, progress=False) == []


def test_corpus_files_follow_the_umask(tmp_path: Path) -> None:
    """Others on a shared folder can read a corpus: every file gets the umask's bits, not mkstemp's 0600."""
    old = os.umask(0o027)
    try:
        generate_corpus(tmp_path / "syn", progress=False, **SPEC)
    finally:
        os.umask(old)
    modes = {p.stat().st_mode & 0o777 for p in (tmp_path / "syn").rglob("*") if p.is_file()}
    assert modes == {0o640}


def test_validate_flags_leftovers_and_writers_sweep_them(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = tmp_path / "syn"
    generate_corpus(root, progress=False, **SPEC)
    temp = root / "clips" / "spk0_001" / ".video.k3x9_a0q.mp4"
    temp.write_bytes(b"\x00" * 100)
    build = tmp_path / "syn.new-4242"
    (build / "clips").mkdir(parents=True)
    harmless = root / "clips" / "spk0_001" / ".notes"  # a hidden file of another shape is not the writer's
    harmless.write_text("mine")
    assert run(_prepare_cfg(root, tmp_path, "task=validate")) == 0  # warnings only: the corpus is consistent
    out = capsys.readouterr().out
    assert f"WARNING {temp}: temp file left by an interrupted writer" in out
    assert f"WARNING {build}: build folder left by an interrupted writer" in out
    assert "0 error(s), 2 warning(s)" in out and str(harmless) not in out
    faults = validate_corpus(root, progress=False)
    assert report(root, faults) == 0 and [f.path for f in faults] == [temp, build]
    kept = _files(root)
    generate_corpus(root, progress=False, **SPEC)  # a writer run on the corpus starts by sweeping
    assert not temp.exists() and not build.exists() and harmless.exists()
    assert _files(root) == {**kept, MANIFEST: _files(root)[MANIFEST]}  # clips untouched (manifest rewritten)


@pytest.mark.parametrize(("target", "error", "where"), [
    ("numpy.save", errno.ENOSPC, "clips/spk0_000/keypoints.npy"),
    ("pathlib.Path.write_text", errno.EACCES, "synthetic.json"),
])
def test_write_failure_is_one_line_naming_the_final_path(target: str, error: int, where: str, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture) -> None:
    root = tmp_path / "syn"

    def failing(dest, *args, **kwargs):  # writes a little, then the disk is full / access is denied
        if isinstance(dest, Path):  # Path.write_text(self, data)
            Path.write_bytes(dest, b"{")
        else:  # np.save(file_handle, arr)
            dest.write(b"\x93NUMPY")
        raise OSError(error, os.strerror(error), str(getattr(dest, "name", dest)))

    monkeypatch.setattr(target, failing)
    assert run(_prepare_cfg(root, tmp_path, "task=synthetic")) == 1
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [f"ERROR {root / where}: cannot write ({os.strerror(error)} [Errno {error}])"]
    assert not (root / where).exists() and not (root / MANIFEST).exists() and leftovers(root) == []


def test_failed_overwrite_keeps_old_corpus_and_frees_the_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture) -> None:
    root = tmp_path / "syn"
    generate_corpus(root, progress=False, **SPEC)
    old = _files(root)
    real, calls = np.save, [0]

    def full_after_two(fh, arr, *args, **kwargs):
        calls[0] += 1
        if calls[0] > 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), fh.name)
        return real(fh, arr, *args, **kwargs)

    monkeypatch.setattr(np, "save", full_after_two)
    assert run(_prepare_cfg(root, tmp_path, "task=synthetic", "overwrite=true", "data.synthetic.seed=3")) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"ERROR {tmp_path / 'syn.new-'}") and line.endswith("/clips/spk0_002/keypoints.npy: "
                                                                                "cannot write (No space left on "
                                                                                "device [Errno 28])")
    assert _files(root) == old and leftovers(root) == []  # old corpus whole, the partial build removed


def test_manifest_wait_is_bounded_and_names_path_and_rank(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "syn"
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("RANK", "3")
    dm = PATSDataModule(root, synthetic={"generate_if_missing": True, **SPEC}, manifest_wait_s=0.4)
    start = time.monotonic()
    with pytest.raises(CorpusError) as err:
        dm.ensure_corpus()
    assert 0.4 <= time.monotonic() - start < 1.5
    assert str(err.value).startswith(f"{root / MANIFEST}: rank 3 (local rank 1) waited 0.4 s")
    assert "data.manifest_wait_s" in str(err.value)
    # the wait ends as soon as the node's rank 0 has written the manifest
    root.mkdir()
    threading.Timer(0.3, write_manifest, (root, [])).start()
    start = time.monotonic()
    PATSDataModule(root, synthetic={"generate_if_missing": True}, manifest_wait_s=30).ensure_corpus()
    assert time.monotonic() - start < 3.0
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"data.root={root}"])
    assert cfg.data.manifest_wait_s == 600 and instantiate(cfg.data).manifest_wait_s == 600.0


def test_ddp_trainers_have_a_bounded_process_group_timeout(tmp_path: Path) -> None:
    from lightning.pytorch.strategies import DDPStrategy

    def trainer_cfg(*overrides: str):
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose(config_name="train", overrides=[*overrides, f"paths.root_dir={tmp_path}",
                                                           f"paths.output_dir={tmp_path / 'run'}"]).trainer

    for name in ("ddp", "ddp_cpu", "multinode"):
        strategy = instantiate(trainer_cfg(f"trainer={name}").strategy)
        assert isinstance(strategy, DDPStrategy) and strategy._timeout == timedelta(seconds=600), name
    trainer = instantiate(trainer_cfg("trainer=ddp_cpu", "trainer.strategy.timeout.seconds=20"), logger=False)
    assert isinstance(trainer.strategy, DDPStrategy) and trainer.strategy._timeout == timedelta(seconds=20)
    assert trainer.num_devices == 2
    assert trainer_cfg("trainer=ddp_cpu", "trainer.strategy=ddp").strategy == "ddp"  # still overridable
