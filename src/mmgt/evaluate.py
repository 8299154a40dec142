"""``python -m mmgt.evaluate generated=<dir> reference=<dir>`` (two folders of mp4s paired by name) or
``python -m mmgt.evaluate ckpt_path=<stage-2 checkpoint> split=test``: the metric suite, reports in the run folder.

The task is :mod:`mmgt.evaluation`; its functions are re-exported here for earlier imports.
"""

from __future__ import annotations

import sys

import hydra
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
from mmgt.utils.paths import CONF_DIR


@hydra.main(config_path=CONF_DIR, config_name="evaluate", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from mmgt.evaluation.task import run

    code = run(cfg)
    if code:
        sys.exit(code)


__all__ = ["Pairing", "evaluate_checkpoint", "evaluate_folders", "find_audio", "find_keypoints", "load_pair",
           "main", "match_folders", "print_table", "write_per_video", "write_reports"]

if __name__ == "__main__":
    main()
