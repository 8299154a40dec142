"""``python -m mmgt.evaluate generated=<dir> reference=<dir>`` (two folders of mp4s paired by name) or
``python -m mmgt.evaluate ckpt_path=<stage-2 checkpoint> split=test``: the metric suite, reports in the run folder.

The task is :mod:`mmgt.evaluation`; its functions are re-exported here for earlier imports.
"""

from __future__ import annotations

import sys

from omegaconf import DictConfig

from mmgt.evaluation import (
    Pairing,
    evaluate_checkpoint,
    evaluate_folders,
    find_audio,
    find_keypoints,
    load_pair,
    match_folders,
    print_table,
    write_per_video,
    write_reports,
)
from mmgt.utils.cli import app


@app("evaluate")
def main(cfg: DictConfig) -> None:
    from mmgt.evaluation.task import run
    from mmgt.utils.cli import single_log_lines

    if cfg.get("ckpt_path"):
        single_log_lines()  # mode (b) runs a Lightning Trainer: its lines once, also in the run's log file
    code = run(cfg)
    if code:
        sys.exit(code)


__all__ = ["Pairing", "evaluate_checkpoint", "evaluate_folders", "find_audio", "find_keypoints", "load_pair",
           "main", "match_folders", "print_table", "write_per_video", "write_reports"]

if __name__ == "__main__":
    main()
