"""Shared fixtures. Offline by construction: hub loaders must fail fast, never hang."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tiny models: one intra-op thread is faster than two, and with several processes (DDP, CLI subprocesses, which
# inherit this) OpenMP threads would fight over the 2 cores of CI (measured 5-40x slowdowns).
os.environ.setdefault("OMP_NUM_THREADS", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _torch_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    # Any attempt to fetch torch.hub weights lands in an empty temp dir and fails instead of reusing a cache.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path_factory.getbasetemp() / "torch_home"))


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Tiny tensors: one intra-op thread is faster than two and never oversubscribes the cores (see above)."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def synthetic_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic corpus shared by the whole session (2 speakers, a few 3-s clips, 64 px)."""
    from mmgt.data.synthetic import generate_corpus

    root = tmp_path_factory.mktemp("synthetic")
    generate_corpus(root, n_speakers=2, clips_per_speaker=5, seconds=3.0, size=64, seed=0)
    return root
