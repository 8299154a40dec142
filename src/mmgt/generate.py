"""``python -m mmgt.generate image=... audio=... out=...``: still image + speech -> talking, gesturing video.

The task is :func:`mmgt.generation.task.run`; this entry point turns a bad input into one clear line and exit 1.
"""

from __future__ import annotations

import sys

from omegaconf import DictConfig, OmegaConf

from mmgt.utils.cli import app


@app("generate")
def main(cfg: DictConfig) -> None:
    import torch

    from mmgt.errors import GenerationError
    from mmgt.generation.task import run

    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    try:
        run({**OmegaConf.to_container(cfg, resolve=True), "output_dir": cfg.paths.output_dir})
    except GenerationError as err:
        sys.exit(f"mmgt.generate: {err}")
    except OSError as err:  # disk full, permission denied: no partial file is left (atomic writes)
        sys.exit(f"mmgt.generate: cannot write {err.filename or 'the output'}: {err.strerror or err}")


if __name__ == "__main__":
    main()
