"""Local pretrained files: one clear error naming the file and the config key, never a download.

The checks and the strict folder loader live in :mod:`mmgt.models.pretrained` (shared with the audio encoders)."""

from __future__ import annotations

from pathlib import Path

import torch

from mmgt.models.pretrained import PUBLISHED, IncompleteWeightsError, MissingWeightsError, load_pretrained, require

__all__ = ["PUBLISHED", "IncompleteWeightsError", "MissingWeightsError", "load_pretrained", "load_state_dict_file",
           "require"]


def load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """A ``.safetensors`` or torch state-dict file through the one checkpoint reader (``weights_only=True``); an
    unreadable (e.g. truncated) file is an :class:`IncompleteWeightsError` naming it."""
    from mmgt.checkpoints import state_dict_file

    try:
        return state_dict_file(Path(path))
    except Exception as err:  # safetensors / torch raise their own types for truncated or corrupt files
        raise IncompleteWeightsError(f"{path} ({Path(path).stat().st_size} B): cannot be read as a state dict: "
                                     f"{type(err).__name__}: {err}. A truncated download?") from err
