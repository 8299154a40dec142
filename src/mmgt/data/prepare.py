"""The tasks of ``python -m mmgt.prepare`` (kept out of the entry point so tests can call them)."""

from __future__ import annotations

import sys
from pathlib import Path

from omegaconf import DictConfig

from mmgt.data.corpus import MANIFEST, Corpus, CorpusWriteError
from mmgt.utils.config import to_plain

TASKS = ("synthetic", "validate", "pats")


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
        from mmgt.data.synthetic import generate_corpus

        spec = {k: v for k, v in (to_plain(cfg.data.get("synthetic")) or {}).items() if k != "generate_if_missing"}
        overwrite = bool(cfg.get("overwrite"))
        if (root / MANIFEST).exists() and not overwrite:
            print(f"{root}: a corpus is already there ({len(Corpus(root))} clips); overwrite=true rebuilds it")
            return 0
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
    if task == "pats":
        from mmgt.data.pats import prepare_pats

        if cfg.get("pats") is None:
            raise ValueError("task=pats needs the `pats` config group (conf/pats/default.yaml)")
        settings = dict(to_plain(cfg.pats), output_root=str(root), progress=bool(cfg.get("progress", True)))
        if cfg.get("workers") is not None:
            settings["workers"] = int(cfg.workers)
        return int(prepare_pats(settings))
    raise ValueError(f"task={task!r}: expected one of {TASKS}")
