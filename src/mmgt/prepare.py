"""``python -m mmgt.prepare task=synthetic|validate|pats data.root=...``: build or check a corpus;
``task=keypoints image=me.jpg``: the DWPose pose of a photo for ``mmgt.generate`` (a task is a file
``conf/task/<name>.yaml``; dataset importers add their own, see :mod:`mmgt.data.prepare`)."""

from __future__ import annotations

import sys

from omegaconf import DictConfig

from mmgt.utils.cli import app


@app("prepare")
def main(cfg: DictConfig) -> None:
    from mmgt.data.prepare import run

    code = run(cfg)
    if code:
        sys.exit(code)


if __name__ == "__main__":
    main()
