"""``python -m mmgt.convert source=official smga=... video=... out=...``: the released MMGT weights -> mmgt exports.

The work is :func:`mmgt.official.export.export_official`; this entry point turns the config into the call and a bad
input into one clear line and exit code 1.
"""

from __future__ import annotations

import sys

from omegaconf import DictConfig

from mmgt.utils.cli import app

SOURCES = ("official",)


@app("convert")
def main(cfg: DictConfig) -> None:
    from mmgt.errors import CheckpointError
    from mmgt.official import ConversionError
    from mmgt.official.export import export_official

    if cfg.source not in SOURCES:
        sys.exit(f"mmgt.convert: source={cfg.source!r}; known sources: {', '.join(SOURCES)}")
    try:
        export_official(cfg.out, cfg.smga, cfg.video, vae=cfg.vae, image_encoder=cfg.image_encoder, wavlm=cfg.wavlm,
                        wav2vec=cfg.wav2vec, vocal_separator=cfg.vocal_separator, frame_size=int(cfg.frame_size),
                        smga_heads=int(cfg.smga_heads), video_heads=int(cfg.video_heads),
                        norm_groups=int(cfg.norm_groups), motion_heads=int(cfg.motion_heads),
                        audio_shape=list(cfg.audio_shape))
    except (ConversionError, CheckpointError, OSError) as err:
        sys.exit(f"mmgt.convert: {err}")


if __name__ == "__main__":
    main()
