"""The one reader and writer of mmgt checkpoints: Lightning ``.ckpt`` files, run folders and safetensors exports.

Rules kept in one place:

- every read is ``torch.load(weights_only=True, mmap=True)`` or safetensors: no pickled code runs and a large
  stage-2 checkpoint is mapped, not copied into memory;
- every checkpoint and export records what it is (``mmgt: {kind, format_version}``); files written before the
  record existed are recognised by their hyper-parameter keys;
- stored hyper-parameters are **data**: before a module is rebuilt from them, every ``_target_`` they name must be
  one of mmgt's own components or a torch/timm optimiser or LR scheduler class (:func:`check_stored_config`);
  anything else is refused naming the file and the key, so a crafted file cannot call arbitrary code;
- a run folder resolves to its newest *loadable* checkpoint by training step, across ``last*.ckpt`` and
  ``step-*.ckpt``; unreadable files are skipped and named;
- writes go to a temp file beside the target, are fsync'd and renamed (:func:`mmgt.data.video_io.atomic_path`;
  Lightning's saves through :class:`mmgt.lit.checkpoint_io.AtomicCheckpointIO`), with the umask's permissions;
- modules are rebuilt without a throwaway random init and without a copy of the weights: parameters are created on
  the meta device and the file's (memory-mapped) tensors are assigned to them (``load_state_dict(assign=True)``);
- stage-2 checkpoints may be *lean* (:mod:`mmgt.lit.lean`): frozen parts rebuilt from their recorded sources
  (pretrained folders, ``model.init_from``) are not stored, and are rebuilt and checksum-verified on load.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import importlib
import inspect
import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mmgt.errors import CheckpointError

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
EXPORT_FORMAT = "mmgt-export-1"
KINDS = {"smga": "stage-1 (SMGA, audio -> poses)", "video": "stage-2 (video diffusion)"}
CHECKPOINT_GLOBS = ("last*.ckpt", "step-*.ckpt")

# targets a stored config may name: mmgt components (checked to be classes below) and optimiser/scheduler classes
_MMGT_TARGET = re.compile(r"^mmgt\.(models|losses|metrics|pose)(\.[a-z_][a-z0-9_]*)*\.[A-Z][A-Za-z0-9_]*$")
_OPTIM_TARGET = re.compile(r"^(torch\.optim(\.lr_scheduler)?|timm\.optim)\.[A-Z][A-Za-z0-9_]*$")


# --------------------------------------------------------------------------------------------- stored settings


def _resolve_class(target: str) -> Any:
    module, _, name = target.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return None


def safe_target(target: Any) -> bool:
    if not isinstance(target, str):
        return False
    if _MMGT_TARGET.match(target):
        obj = _resolve_class(target)
        return inspect.isclass(obj) and (issubclass(obj, nn.Module) or dataclasses.is_dataclass(obj))
    if _OPTIM_TARGET.match(target):
        obj = _resolve_class(target)
        sched = getattr(torch.optim.lr_scheduler, "LRScheduler", object)
        return inspect.isclass(obj) and issubclass(obj, torch.optim.Optimizer | sched)
    return False


def check_stored_config(cfg: Any, path: str | Path, where: str = "hyper_parameters") -> None:
    """Refuse stored settings that name code: every ``_target_`` must be an mmgt component class (an
    ``nn.Module`` or dataclass under ``mmgt.models/losses/metrics/pose``) or a torch/timm optimiser or LR scheduler
    class. Raises :class:`CheckpointError` naming the file and the first offending key."""
    if isinstance(cfg, Mapping):
        for k, v in cfg.items():
            # `module` names a class too (attention.module): a short name, or a dotted path like a target
            if k == "module" and isinstance(v, str) and "." in v and not safe_target(v):
                raise CheckpointError(f"{path}: stored setting `{where}.module` = {v!r} is not an mmgt component "
                                      "class; stored hyper-parameters are data and may not name code to run")
            if k == "_target_" and not safe_target(v):
                raise CheckpointError(f"{path}: stored setting `{where}._target_` = {v!r} is not an mmgt component "
                                      "or optimiser class; stored hyper-parameters are data and may not name code "
                                      "to run (refusing to build anything from this file)")
            check_stored_config(v, path, f"{where}.{k}")
    elif isinstance(cfg, list | tuple):
        for i, v in enumerate(cfg):
            check_stored_config(v, path, f"{where}[{i}]")


# --------------------------------------------------------------------------------------------------- reading


@dataclass
class Checkpoint:
    """What a checkpoint or export holds, read once."""

    path: Path
    kind: str  # "smga" | "video" | "" (not an mmgt stage module)
    format: str  # "ckpt" | "safetensors"
    version: int  # mmgt format version (0 = written before versions were recorded)
    hparams: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    datamodule: dict[str, Any] = field(default_factory=dict)
    global_step: int = -1
    lean: dict[str, Any] | None = None  # the lean record (mmgt.lit.lean): frozen parts to rebuild from sources

    def describe(self) -> str:
        return KINDS.get(self.kind, "not a checkpoint of an mmgt stage module")


def kind_of(ckpt: Mapping[str, Any]) -> str:
    """The stage a Lightning checkpoint dict belongs to: its ``mmgt.kind`` record, else guessed from the
    hyper-parameter keys (files written before the record existed)."""
    rec = ckpt.get("mmgt")
    if isinstance(rec, Mapping) and rec.get("kind") in KINDS:
        return str(rec["kind"])
    hp = ckpt.get("hyper_parameters") or {}
    if "substage" in hp and "net" in hp:
        return "video"
    if "diffusion" in hp and "sampling" in hp and "net" in hp:
        return "smga"
    return ""


def stamp(checkpoint: dict[str, Any], kind: str, **extra: Any) -> None:
    """Record what a checkpoint is (called from the LightningModules' ``on_save_checkpoint``)."""
    checkpoint["mmgt"] = {"kind": kind, "format_version": FORMAT_VERSION, **extra}


def load_torch(path: str | Path, what: str = "checkpoint") -> Any:
    """``torch.load`` with ``weights_only=True`` (forced: an explicit argument beats
    ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``) and memory-mapped; errors name the file."""
    p = Path(str(path))
    try:
        return torch.load(p, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # noqa: BLE001 - pickled code, truncated/empty files, non-torch files
        size = p.stat().st_size if p.exists() else -1
        raise CheckpointError(f"{p}: cannot load as a {what} with weights_only=True ({type(err).__name__}: {err}; "
                              f"{size} bytes)") from err


def latest_checkpoint(ckpt_dir: str | Path) -> Path | None:
    """Newest loadable checkpoint of a run's ``checkpoints/`` folder by training step (ties: newest file), across
    ``last*.ckpt`` and ``step-*.ckpt``; unreadable files are skipped with a warning naming each. None if none."""
    d = Path(ckpt_dir)
    files = sorted({f for g in CHECKPOINT_GLOBS for f in d.glob(g) if f.is_file()})
    best: tuple[int, float, Path] | None = None
    for f in files:
        try:
            ckpt = load_torch(f)
            step = int(ckpt.get("global_step", -1)) if isinstance(ckpt, Mapping) else -1
            if not isinstance(ckpt, Mapping) or "state_dict" not in ckpt:
                raise CheckpointError(f"{f}: not a Lightning checkpoint (no state_dict)")
        except CheckpointError as err:
            log.warning("skipping unloadable checkpoint %s", err)
            continue
        key = (step, f.stat().st_mtime, f)
        if best is None or key[:2] > best[:2]:
            best = key
    return best[2] if best else None


def resolve(path: str | Path, key: str = "ckpt") -> Path:
    """A checkpoint file, or a run folder (or its ``checkpoints/``) -> its newest loadable checkpoint."""
    p = Path(str(path)).expanduser()
    if p.is_dir():
        d = p / "checkpoints" if (p / "checkpoints").is_dir() else p
        found = latest_checkpoint(d)
        if found is None:
            raise CheckpointError(f"no loadable checkpoint in {d} (config key `{key}`)")
        return found
    if not p.is_file():
        raise CheckpointError(f"checkpoint not found: {p} (config key `{key}`)")
    return p


def _upgrade(ckpt: Checkpoint) -> Checkpoint:
    """Fill settings whose default changed since a file's format version, so old files keep their numbers.

    Version 0 (before the record existed): speech encoders ran their transformer on 25-fps input by default."""
    if ckpt.version < 1:
        s2 = ckpt.datamodule.get("stage2_features")
        if isinstance(s2, dict):
            s2.setdefault("resample", "before")
        s1 = ckpt.datamodule.get("stage1_features")
        if isinstance(s1, dict) and s1.get("backend"):
            s1.setdefault("backend_resample", "before")
    return ckpt


def read(path: str | Path, key: str = "ckpt") -> Checkpoint:
    """Read a Lightning ``.ckpt``, a run folder's newest checkpoint, or a safetensors export."""
    p = resolve(path, key)
    if p.suffix == ".safetensors":
        from safetensors import safe_open
        from safetensors.torch import load_file

        try:
            with safe_open(str(p), framework="pt") as fh:
                meta = fh.metadata() or {}
            state = load_file(str(p))
        except Exception as err:  # noqa: BLE001
            raise CheckpointError(f"{p}: not a readable safetensors file ({err})") from err
        if meta.get("format") != EXPORT_FORMAT:
            raise CheckpointError(f"{p}: not an mmgt export (no '{EXPORT_FORMAT}' metadata); export Lightning "
                                  "checkpoints with mmgt.checkpoints.export_safetensors")
        try:
            hp, dm = json.loads(meta["hparams"]), json.loads(meta.get("datamodule", "{}"))
        except (KeyError, json.JSONDecodeError) as err:
            raise CheckpointError(f"{p}: export metadata is not valid JSON ({err})") from err
        return _upgrade(Checkpoint(p, meta.get("kind", ""), "safetensors", int(meta.get("format_version", 0) or 0),
                                   hp, state, dm))
    ckpt = load_torch(p)
    if not isinstance(ckpt, Mapping) or "state_dict" not in ckpt:
        raise CheckpointError(f"{p}: not a Lightning checkpoint (no state_dict)")
    rec = ckpt.get("mmgt") if isinstance(ckpt.get("mmgt"), Mapping) else {}
    from mmgt.lit.lean import record_of

    return _upgrade(Checkpoint(p, kind_of(ckpt), "ckpt", int(rec.get("format_version", 0)),
                               dict(ckpt.get("hyper_parameters") or {}), dict(ckpt["state_dict"]),
                               dict(ckpt.get("datamodule_hyper_parameters") or {}), int(ckpt.get("global_step", -1)),
                               record_of(ckpt)))


# ---------------------------------------------------------------------------------------------- rebuilding


def _deep_update(base: dict[str, Any], over: Mapping[str, Any] | None) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = _deep_update(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def check_state(path: Path, model: nn.Module, state: Mapping[str, torch.Tensor], key: str) -> None:
    """Refuse weights that do not fit ``model``, naming the first mismatching tensors."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}" for k in own
              if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        for label, items in (("shape mismatches", shapes), ("tensors missing from the file", missing),
                             ("unexpected tensors", unexpected)):
            if items:
                parts.append(f"{len(items)} {label} (e.g. {'; '.join(items[:3])})")
        raise CheckpointError(f"{path} does not match the configured architecture (`{key}.net` overrides and the "
                              f"architecture recorded in the checkpoint): " + ", ".join(parts))


def non_finite(state: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of floating-point tensors holding NaN or inf."""
    return [k for k, v in state.items() if torch.is_tensor(v) and v.is_floating_point() and
            not bool(torch.isfinite(v).all())]


@contextlib.contextmanager
def empty_parameters() -> Any:
    """Modules built inside get their parameters on the meta device (buffers stay real: noise schedules, constants),
    to be filled with ``load_state_dict(..., assign=True)``; accelerate's ``init_empty_weights``."""
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        yield


def build_module(ckpt: Checkpoint, kind: str, net: Mapping[str, Any] | None = None, key: str | None = None,
                 device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a stage module for inference from a checkpoint read by :func:`read`, with its weights loaded (EMA
    applied when the checkpoint has it) and non-finite weights refused. The stored settings are validated as data
    first (:func:`check_stored_config`); training-only blocks (optimiser, LR scheduler) are not rebuilt."""
    key = key or kind
    if ckpt.kind != kind:
        what = f"is a {KINDS[ckpt.kind]} checkpoint" if ckpt.kind in KINDS else f"is {ckpt.describe()}"
        raise CheckpointError(f"{ckpt.path} {what}; `{key}.ckpt` needs a {KINDS[kind]} checkpoint")
    hp = copy.deepcopy(ckpt.hparams)
    # optimiser and LR schedule are training-only; stage 2's `scheduler` is its noise schedule and is kept
    for train_only in ("optim", "lr_scheduler") + (("scheduler",) if kind == "smga" else ()):
        hp.pop(train_only, None)
    check_stored_config(hp, ckpt.path)
    hp["net"] = _deep_update(hp.get("net") or {}, net)
    if ckpt.format == "safetensors":  # the export holds the (EMA-applied) network weights only
        hp["ema"] = {**(hp.get("ema") or {}), "enabled": False}
    try:
        with empty_parameters():  # every weight comes from the file: no random init, no copy
            if kind == "smga":
                from mmgt.lit.smga import SMGAModule

                module: nn.Module = SMGAModule(**hp)
            else:
                from mmgt.lit.video import VideoModule

                hp.update(init_from=None, load_weights=False)
                module = VideoModule(**hp)
    except (ValueError, TypeError, KeyError) as err:
        raise CheckpointError(f"{ckpt.path}: cannot build the {KINDS[kind]} network from its recorded configuration "
                              f"with `{key}.net` overrides {dict(net or {})}: {err}") from err
    state = ckpt.state_dict
    if ckpt.lean is not None:  # frozen parts left out of the file: rebuilt from their sources, checksum-verified
        from mmgt.lit.lean import rebuild

        state = {**state, **rebuild(ckpt.lean, module, hp["net"], ckpt.path, f"{key}.net")}
    target = module if ckpt.format == "ckpt" else module.net
    check_state(ckpt.path, target, state, key)
    # assign=True keeps the file's tensors, dtype included: a float16 export must still give the dtypes the module
    # was built with (float32, or the configured frozen_dtype), as a copying load would
    built = {**dict(target.named_parameters()), **dict(target.named_buffers())}
    state = {k: v.to(built[k].dtype) if k in built and v.is_floating_point() and built[k].is_floating_point()
             and v.dtype != built[k].dtype else v for k, v in state.items()}
    target.load_state_dict(state, strict=True, assign=True)
    still_empty = [n for n, t in [*module.named_parameters(), *module.named_buffers()] if t.is_meta]
    if still_empty:
        raise CheckpointError(f"{ckpt.path}: {len(still_empty)} tensors of the rebuilt module were not filled by the "
                              f"file (e.g. {', '.join(still_empty[:3])})")
    module.inference_view()
    bad = non_finite(dict(module.state_dict()))
    if bad:
        raise CheckpointError(f"{ckpt.path}: {len(bad)} weight tensors hold NaN/inf (e.g. {', '.join(bad[:3])}); "
                              "the run diverged before this checkpoint: use an earlier one")
    return module.eval().requires_grad_(False).to(device)


def export_safetensors(ckpt_path: str | Path, out: str | Path, kind: str | None = None) -> Path:
    """Export a stage's Lightning checkpoint as a safetensors file of its network (EMA applied) whose metadata
    records the architecture and feature settings, so it loads with no pickle and no training code state."""
    ckpt = read(ckpt_path, kind or "checkpoint")
    if ckpt.format != "ckpt" or not ckpt.kind or (kind and ckpt.kind != kind):
        raise CheckpointError(f"{ckpt_path}: expected a Lightning checkpoint of {KINDS.get(kind or '', 'a stage')}")
    module = build_module(ckpt, ckpt.kind)
    return write_export(module.net, ckpt.kind, module.hparams, ckpt.datamodule, out)


def write_export(net: nn.Module, kind: str, hparams: Mapping[str, Any], datamodule: Mapping[str, Any],
                 out: str | Path) -> Path:
    """Write a network's weights as an mmgt safetensors export (kind, format version, settings in metadata)."""
    from safetensors.torch import save_file

    from mmgt.data.video_io import atomic_path

    state = {k: v.detach().cpu().contiguous().clone() for k, v in net.state_dict().items()}
    hp = copy.deepcopy(dict(hparams))
    hp["ema"] = {**(hp.get("ema") or {}), "enabled": False}
    if kind == "video":
        hp["init_from"] = None
    meta = {"format": EXPORT_FORMAT, "kind": kind, "format_version": str(FORMAT_VERSION),
            "hparams": json.dumps(hp, default=list),
            "datamodule": json.dumps({k: datamodule.get(k) for k in ("stage1_features", "stage2_features")
                                      if k in datamodule})}
    out = Path(out)
    with atomic_path(out) as tmp:
        save_file(state, str(tmp), metadata=meta)
    return out


def net_state(path: str | Path, prefer_ema: bool = True, key: str = "model.init_from") -> dict[str, torch.Tensor]:
    """A stage network's weights (``net.*`` of a Lightning checkpoint of either stage, EMA applied when present and
    ``prefer_ema``; a safetensors export; or a plain state-dict file) to initialise a model: no stored setting is
    read, so nothing is rebuilt from the file."""
    p = Path(str(path)).expanduser()
    if p.is_dir():
        p = resolve(p, key)
    if not p.exists():
        raise FileNotFoundError(f"checkpoint not found: {p} (config key `{key}`)")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        sd: dict[str, Any] = load_file(str(p))
    else:
        sd = load_torch(p)
    keys = [str(k) for k in (sd.get("ema_state_dict") or sd if isinstance(sd, Mapping) else {})]
    if any(k.startswith(("audioproj.", "seqTransDecoder.")) or ".temporal_transformer." in k for k in keys):
        raise CheckpointError(f"{p} is a released MMGT checkpoint (official names); convert it first: python -m "
                              "mmgt.convert source=official smga=<stage-1 .pt> video=<net-*.pth> out=<dir>, then "
                              f"`{key}=<dir>/smga.safetensors` or `<dir>/video.safetensors`")
    ema = {}
    if isinstance(sd, Mapping) and "state_dict" in sd:
        from mmgt.lit.lean import omitted_keys, record_of

        lean = record_of(sd)
        if lean is not None:  # the receiving model keeps its own (pretrained) values for what the file left out
            log.info("%s is a lean checkpoint: %d frozen tensors it left out (sources: %s) are not taken from it",
                     p, len(omitted_keys(lean)), ", ".join(s["path"] for s in lean["sources"].values()))
        full = sd["state_dict"]
        if any(k.startswith("ema.module.") for k in full):  # stage 1: torch AveragedModel
            ema = {k[len("ema.module."):]: v for k, v in full.items() if k.startswith("ema.module.")}
        else:  # stage 2: averages of the trainable parameters, dots stored as "__"
            ema = {k[len("ema."):].replace("__", "."): v for k, v in full.items() if k.startswith("ema.")}
        sd = {k[len("net."):]: v for k, v in full.items() if k.startswith("net.")}
    elif any(k.startswith("net.") for k in sd):
        sd = {k[len("net."):]: v for k, v in sd.items() if k.startswith("net.")}
    if prefer_ema and ema:
        sd.update({k: v for k, v in ema.items() if k in sd})
    return dict(sd)


video_net_state = net_state  # the stage-2 name used by earlier code


def state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """A plain state dict from a ``.safetensors`` or torch file (a Lightning file's ``state_dict``)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    sd = load_torch(path, "state dict")
    return sd.get("state_dict", sd) if isinstance(sd, dict) else sd


__all__ = ["EXPORT_FORMAT", "FORMAT_VERSION", "KINDS", "Checkpoint", "CheckpointError", "build_module", "check_state",
           "check_stored_config", "empty_parameters", "export_safetensors", "kind_of", "latest_checkpoint",
           "load_torch", "net_state", "non_finite", "read", "resolve", "stamp", "state_dict_file", "video_net_state",
           "write_export"]
