"""Strict, offline loading of pretrained diffusers / transformers folders: all tensors or one clear error.

Both libraries only *warn* when a tensor is missing and fill it with random values (with accelerate's low-memory
path a missing diffusers tensor is even left on the meta device), so a truncated download or the wrong folder would
train and generate on noise. :func:`load_pretrained` asks the library what it did (``output_loading_info=True``) and
raises :class:`IncompleteWeightsError` naming the folder and the tensors, unless they are in the allow-list of known,
harmless differences between the published checkpoints and the classes mmgt builds. It also fixes the dtype the
model is built in (transformers >= 5 otherwise keeps an fp16 file's dtype: "expected scalar type Float but found
Half" at the first float32 input) and passes the weight-file ``variant`` (``fp16`` for fp16-only folders).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from itertools import chain
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

# Where each pretrained part is published (shown in errors so users know what to fetch by hand).
PUBLISHED = {
    "vae": "stabilityai/sd-vae-ft-mse (diffusers folder: config.json + diffusion_pytorch_model.safetensors)",
    "image_encoder": "lambdalabs/sd-image-variations-diffusers, subfolder image_encoder (CLIP vision + projection)",
    "unet": "lambdalabs/sd-image-variations-diffusers, subfolder unet (or runwayml/stable-diffusion-v1-5/unet)",
    "motion_adapter": "guoyww/animatediff-motion-adapter-v1-5-2 (diffusers MotionAdapter folder)",
    "pose_guider": "lllyasviel/sd-controlnet-openpose (diffusion_pytorch_model.safetensors)",
    "wavlm": "microsoft/wavlm-large (transformers folder: config.json + weights)",
    "wav2vec2": "facebook/wav2vec2-base-960h (transformers folder: config.json + weights)",
}

# Known differences between published checkpoints and the classes mmgt loads them into (regexes on tensor names).
# Tensors a checkpoint may hold that the model does not use:
ALLOWED_UNEXPECTED: dict[str, tuple[str, ...]] = {
    # wav2vec2-base-960h is a CTC checkpoint (its character head is unused); wav2vec2-base / WavLM pre-training
    # checkpoints carry the quantiser and the contrastive projections
    "Wav2Vec2Model": (r"^lm_head\.", r"^quantizer\.", r"^project_(q|hid)\."),
    "WavLMModel": (r"^lm_head\.", r"^quantizer\.", r"^project_(q|hid)\."),
    # older transformers saved the position-id buffer (a constant arange, rebuilt from the config)
    "*": (r"(^|\.)position_ids$",),
}
# Tensors the model has that a checkpoint may lack (rebuilt or unused at inference):
ALLOWED_MISSING: dict[str, tuple[str, ...]] = {
    # the SpecAugment mask vector is only used when masking during training; fine-tuned exports drop it
    "Wav2Vec2Model": (r"^masked_spec_embed$",),
    "WavLMModel": (r"^masked_spec_embed$",),
    # the motion modules' sinusoidal position table is a buffer recomputed from motion_max_seq_length
    "MotionAdapter": (r"\.pos_embed\.pe$",),
}

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
SHOWN = 12  # tensor names listed in an error before "... and N more"

M = TypeVar("M", bound=nn.Module)


class MissingWeightsError(FileNotFoundError):
    """A pretrained file named in the config is not on disk."""


class IncompleteWeightsError(ValueError):
    """A pretrained folder is on disk but cannot fill the model exactly (missing, extra, mis-shaped or unreadable
    tensors)."""


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


def as_dtype(name: str | torch.dtype | None, key: str) -> torch.dtype:
    """``float32`` / ``float16`` / ``bfloat16`` (null: float32) -> torch dtype; anything else is refused."""
    if name is None:
        return torch.float32
    if isinstance(name, torch.dtype):
        return name
    if name not in DTYPES:
        raise ValueError(f"`{key}` must be one of {sorted(DTYPES)} or null, got {name!r}")
    return DTYPES[name]


def _listing(names: Iterable[str]) -> str:
    names = sorted(names)
    more = f" ... and {len(names) - SHOWN} more" if len(names) > SHOWN else ""
    return ", ".join(names[:SHOWN]) + more


def _folder_files(path: Path) -> str:
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else []
    return ", ".join(f"{p.name} ({p.stat().st_size} B)" for p in files) or "no files"


def _filtered(names: Iterable[str], patterns: Iterable[str]) -> list[str]:
    rx = [re.compile(p) for p in patterns]
    return sorted(n for n in names if not any(r.search(n) for r in rx))


def check_complete(model: nn.Module, info: dict[str, Any], source: str, *, allow_missing: Iterable[str] = (),
                   allow_unexpected: Iterable[str] = ()) -> None:
    """Raise :class:`IncompleteWeightsError` naming ``source`` if ``info`` (a library's loading info: missing,
    unexpected and mismatched keys, error messages) shows anything beyond the allow-lists, or if any tensor of
    ``model`` was left on the meta device."""
    name = type(model).__name__
    missing = _filtered(info.get("missing_keys") or (),
                        chain(ALLOWED_MISSING.get(name, ()), ALLOWED_MISSING.get("*", ()), allow_missing))
    unexpected = _filtered(info.get("unexpected_keys") or (),
                           chain(ALLOWED_UNEXPECTED.get(name, ()), ALLOWED_UNEXPECTED.get("*", ()), allow_unexpected))
    mismatched = [f"{k}: file {tuple(a)} vs model {tuple(b)}" for k, a, b in sorted(info.get("mismatched_keys") or ())]
    on_meta = [n for n, t in chain(model.named_parameters(), model.named_buffers()) if t.is_meta and n not in missing]
    problems = []
    if missing:
        problems.append(f"{len(missing)} tensor(s) missing: {_listing(missing)}")
    if on_meta:
        problems.append(f"{len(on_meta)} tensor(s) never loaded (left on the meta device): {_listing(on_meta)}")
    if mismatched:
        problems.append(f"{len(mismatched)} tensor(s) with the wrong shape: {_listing(mismatched)}")
    if unexpected:
        problems.append(f"{len(unexpected)} tensor(s) this {name} does not use (another model's folder?): "
                        f"{_listing(unexpected)}")
    problems += [str(m) for m in info.get("error_msgs") or ()]
    if problems:
        raise IncompleteWeightsError(f"{source}: cannot fill {name} exactly: " + "; ".join(problems)
                                     + ". A truncated or partial download? Nothing is random-initialised in its place.")


def _library_kwargs(cls: type, dtype: torch.dtype) -> dict[str, Any]:
    from diffusers import ModelMixin

    if issubclass(cls, ModelMixin):
        # low_cpu_mem_usage: built on the meta device, each tensor placed once (needs accelerate)
        return dict(torch_dtype=dtype, low_cpu_mem_usage=True)
    import transformers

    major, minor = (int(v) for v in transformers.__version__.split(".")[:2])
    return {"dtype" if (major, minor) >= (4, 56) else "torch_dtype": dtype}  # transformers always builds on meta


def load_pretrained(cls: type[M], path: str | Path | None, *, key: str, what: str, variant: str | None = None,
                    dtype: str | torch.dtype | None = None, allow_missing: Iterable[str] = (),
                    allow_unexpected: Iterable[str] = ()) -> M:
    """``cls.from_pretrained`` of a local diffusers / transformers folder, strictly.

    Args:
        cls: a diffusers ``ModelMixin`` or transformers ``PreTrainedModel`` class.
        path: the folder (``config.json`` + weights); ``key``: its config key and ``what``: the part's name
            (both in errors).
        variant: weight-file variant (``fp16``: ``*.fp16.safetensors``), as published in fp16-only folders.
        dtype: the dtype the model is built in, whatever the file's (null: float32).
        allow_missing / allow_unexpected: extra regexes on tensor names beyond :data:`ALLOWED_MISSING` /
            :data:`ALLOWED_UNEXPECTED`.
    """
    p = require(path, key, what, files=("config.json",))
    source = f"{what} folder {p} (config key `{key}`" + (f", variant {variant!r})" if variant else ")")
    kwargs = _library_kwargs(cls, as_dtype(dtype, f"{key} dtype"))
    try:
        model, info = cls.from_pretrained(str(p), local_files_only=True, output_loading_info=True, variant=variant,
                                          **kwargs)
    except Exception as err:  # the libraries raise OSError / SafetensorError / RuntimeError ... for bad files
        raise IncompleteWeightsError(f"{source}: cannot be read as {cls.__name__}: {type(err).__name__}: {err} "
                                     f"(files: {_folder_files(p)})") from err
    check_complete(model, info, source, allow_missing=allow_missing, allow_unexpected=allow_unexpected)
    return model
