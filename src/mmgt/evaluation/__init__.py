"""Evaluation: the ``python -m mmgt.evaluate`` task.

- :mod:`~mmgt.evaluation.folders` — mode (a): the metric suite over two folders of mp4s paired by name;
- :mod:`~mmgt.evaluation.checkpoint` — mode (b): a stage-2 checkpoint scored on a split of its recorded DataModule;
- :mod:`~mmgt.evaluation.reports` — ``metrics.json`` / ``metrics.csv`` / ``per_video.csv``, TensorBoard, the table;
- :mod:`~mmgt.evaluation.task` — config -> mode -> exit code.
"""

from mmgt.evaluation.checkpoint import evaluate_checkpoint
from mmgt.evaluation.folders import Pairing, evaluate_folders, find_audio, find_keypoints, load_pair, match_folders
from mmgt.evaluation.reports import print_table, write_per_video, write_reports
from mmgt.evaluation.task import run

__all__ = ["Pairing", "evaluate_checkpoint", "evaluate_folders", "find_audio", "find_keypoints", "load_pair",
           "match_folders", "print_table", "run", "write_per_video", "write_reports"]
