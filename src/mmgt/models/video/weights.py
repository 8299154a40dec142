"""Local pretrained files: one clear error naming the file and the config key, never a download."""

from __future__ import annotations

from pathlib import Path

import torch

# Where each pretrained part is published (shown in errors so users know what to fetch by hand).
PUBLISHED = {
    "vae": "stabilityai/sd-vae-ft-mse (diffusers folder: config.json + diffusion_pytorch_model.safetensors)",
    "image_encoder": "lambdalabs/sd-image-variations-diffusers, subfolder image_encoder (CLIP vision + projection)",
    "unet": "lambdalabs/sd-image-variations-diffusers, subfolder unet (or runwayml/stable-diffusion-v1-5/unet)",
    "motion_adapter": "guoyww/animatediff-motion-adapter-v1-5-2 (diffusers MotionAdapter folder)",
    "pose_guider": "lllyasviel/sd-controlnet-openpose (diffusion_pytorch_model.safetensors)",
}


class MissingWeightsError(FileNotFoundError):
    """A pretrained file named in the config is not on disk."""


def require(path: str | Path | None, key: str, what: str, files: tuple[str, ...] = ()) -> Path:
    """Return ``path`` as a Path if it (and the listed files inside it) exist; otherwise raise one clear error."""
    if path in (None, ""):
        raise MissingWeightsError(f"config key `{key}` is empty but {what} weights are required at this size; "
                                  f"download {PUBLISHED.get(what, what)} and set `{key}=<local path>`")
    p = Path(str(path)).expanduser()
    missing = [p] if not p.exists() else [p / f for f in files if not (p / f).exists()]
    if missing:
        raise MissingWeightsError(f"{what} weights not found: {missing[0]} (config key `{key}`={path}). Nothing is "
                                  f"downloaded at run time; fetch {PUBLISHED.get(what, what)} and point `{key}` at it")
    return p


def load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """A ``.safetensors`` or torch state-dict file through the one checkpoint reader (``weights_only=True``)."""
    from mmgt.checkpoints import state_dict_file

    return state_dict_file(Path(path))
