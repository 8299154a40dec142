"""The tasks of ``python -m mmgt.prepare`` (kept out of the entry point so tests can call them).

``task=<name>`` selects ``conf/task/<name>.yaml``. ``synthetic``, ``validate`` and ``keypoints`` (the pose of your
own photo, :mod:`mmgt.data.photo_pose`) are built in; every other task is a dataset importer the task file names, so
a new dataset needs its importer and its own task file, no edit here::

    # conf/task/<name>.yaml (or on a search path: hydra.searchpath=[file:///my/conf])
    # @package _global_
    task: <name>
    importer:
      _target_: my_package.my_importer   # an Importer: (settings, root, *, workers, progress) -> exit code
    <name>:                              # its settings (or an existing config group, as pats/default.yaml)
      source_dir: null
"""

from __future__ import annotations

import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol

from omegaconf import DictConfig

from mmgt.data.corpus import MANIFEST, Corpus, CorpusWriteError
from mmgt.utils.config import to_plain

BUILTIN_TASKS = ("synthetic", "validate", "keypoints")  # any other is an importer named in conf/task/<name>.yaml


class Importer(Protocol):
    """A dataset importer: builds the corpus at ``root`` from ``settings`` (the config node named like the task);
    returns the exit code. Write failures raise :class:`~mmgt.data.corpus.CorpusWriteError` naming the file."""

    def __call__(self, settings: dict[str, Any], root: Path, *, workers: int | None, progress: bool) -> int:
        ...


def run(cfg: DictConfig) -> int:
    """Dispatch on ``cfg.task``; returns the process exit code.

    A failed write or read (disk full, no permission) is one ``ERROR <path>: <cause>`` line and exit code 1, not a
    traceback: the writers leave nothing under a final name, so rerunning after freeing space resumes."""
    try:
        return _run(cfg)
    except CorpusWriteError as err:
        print(f"ERROR {err}", file=sys.stderr, flush=True)
    except OSError as err:
        where = err.filename or cfg.data.root
        print(f"ERROR {where}: {err.strerror or err}", file=sys.stderr, flush=True)
    return 1


def _run(cfg: DictConfig) -> int:
    task = cfg.get("task")
    root = Path(cfg.data.root)
    if task == "synthetic":
        from mmgt.data.synthetic import SyntheticSpec, generate_corpus, stored_spec

        spec = {k: v for k, v in (to_plain(cfg.data.get("synthetic")) or {}).items() if k != "generate_if_missing"}
        overwrite = bool(cfg.get("overwrite"))
        stored = stored_spec(root)
        wanted = {**asdict(SyntheticSpec()), **spec}
        if (root / MANIFEST).exists() and not overwrite and (stored is None or stored == wanted):
            print(f"{root}: a corpus is already there ({len(Corpus(root))} clips); overwrite=true rebuilds it")
            return 0
        if stored is not None and stored != wanted and (root / MANIFEST).exists():
            changed = {k: (stored.get(k), v) for k, v in wanted.items() if stored.get(k) != v}
            print(f"{root}: the synthetic corpus there was written with other settings {changed} (old, new): "
                  "rebuilding it beside the old one")
        # resumes an interrupted build; overwrite builds beside the old corpus and swaps it in when complete
        records = generate_corpus(root, progress=bool(cfg.get("progress", True)), overwrite=overwrite, **spec)
        print(f"{root}: wrote {len(records)} synthetic clips ({spec})")
        return 0
    if task == "validate":
        from mmgt.data.validate import report, validate_corpus

        faults = validate_corpus(root, workers=cfg.get("workers"), progress=bool(cfg.get("progress", True)))
        n = len(Corpus(root)) if (root / MANIFEST).exists() and not any("manifest" in f.message for f in faults) \
            else None
        return report(root, faults, n)
    if task == "keypoints":  # DWPose on a photo, a folder of them or a video (mmgt.data.photo_pose)
        from mmgt.data.photo_pose import run as keypoints

        return keypoints(cfg)
    importer = resolve_importer(cfg)
    settings = to_plain(cfg.get(task)) or {}
    workers = cfg.get("workers")
    return int(importer(settings, root, workers=None if workers is None else int(workers),
                        progress=bool(cfg.get("progress", True))))


def resolve_importer(cfg: DictConfig) -> Importer:
    """The callable named by ``importer._target_`` of the selected task file."""
    from hydra.utils import get_method

    task = cfg.get("task")
    target = (cfg.get("importer") or {}).get("_target_")
    if not target:
        raise ValueError(f"task={task!r}: expected {' | '.join(BUILTIN_TASKS)} or a dataset importer (a task file "
                         f"conf/task/{task}.yaml with `importer._target_`)")
    if cfg.get(task) is None:
        raise ValueError(f"task={task}: no `{task}` settings in the config (conf/task/{task}.yaml or its group)")
    return get_method(str(target))
