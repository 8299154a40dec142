"""``python -m mmgt.generate image=... audio=... out=...``: still image + speech -> talking, gesturing video.

The generation pipeline (SMGA poses -> region masks -> video diffusion -> mp4 with audio) is not wired yet;
this entry point refuses clearly instead of pretending.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from mmgt.utils.paths import CONF_DIR


@hydra.main(config_path=CONF_DIR, config_name="generate", version_base="1.3")
def main(cfg: DictConfig) -> None:
    sys.exit("mmgt.generate: the generation pipeline is not implemented yet (tracked in the generation issue)")


if __name__ == "__main__":
    main()
