"""Lean stage-2 checkpoints: frozen parts that can be rebuilt from a file are not written into every checkpoint.

At paper size most of a sub-stage-B checkpoint is frozen: the SD VAE and CLIP image encoder (from their local
folders) and the denoising/reference UNets and pose guider of stage A (from ``model.init_from``). Saving them with
every checkpoint costs ~10 GB per file. A lean checkpoint leaves out each frozen tensor whose value comes from a
*source* and records, per source, what it took from where:

- ``init_from``: frozen tensors loaded from the ``model.init_from`` file (except the ``init_exclude`` groups) and
  verified, at the first save, to be equal to that file's tensors;
- a pretrained part: the frozen VAE (``codec`` of type ``vae``), CLIP encoder (``image_encoder`` of type
  ``clip``), UNets (``unet.pretrained``, motion modules from ``unet.motion_adapter``) or pose guider
  (``pose_guider.pretrained``), built from the configured local folder, when nothing it fills is trained (never for
  a custom backbone, nor for random-init tensors: those are saved).

Each source is recorded with its path and a fingerprint (file names and sizes), and every omitted tensor with a
checksum (float64 sum, sum of squares and a position-weighted sum). Loading rebuilds the omitted tensors from
their sources and compares checksums: a source that changed since the checkpoint was written is an error naming
it, the config key that points at it and the first tensors that differ (a changed fingerprint alone is only a
warning: the same weights may be stored in other files). Trainable tensors, EMA shadows, optimiser state and
every frozen tensor without a source are always saved. Files without the record (full checkpoints) load as
before.

Three readers: Lightning's resume (:func:`restore_for_resume`: the module being resumed was just built from the
same configuration, so its own tensors fill the gaps after the checksum check), :func:`mmgt.checkpoints.build_module`
(generation, evaluation, export: :func:`rebuild` from the sources) and ``model.init_from`` of a lean checkpoint
(:func:`mmgt.checkpoints.net_state` returns the tensors it holds; the receiving model keeps its own for the rest).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mmgt.errors import CheckpointError

log = logging.getLogger(__name__)

RECORD_KEY = "lean"  # inside the checkpoint's ``mmgt`` record
LEAN_VERSION = 1
_PLAN_ATTR = "_mmgt_lean_record"  # the record, computed once per module (frozen tensors never change)
_MOTION = ".motion_modules."


# ------------------------------------------------------------------------------------------- fingerprints


def fingerprint(path: str | Path) -> dict[str, int]:
    """File names (relative to a folder) and sizes of a source file or folder; hidden files are skipped."""
    p = Path(path)
    if p.is_file():
        return {p.name: p.stat().st_size}
    if not p.is_dir():
        return {}
    out = {}
    for f in sorted(p.rglob("*")):
        rel = f.relative_to(p)
        if f.is_file() and not any(part.startswith(".") for part in rel.parts):
            out[rel.as_posix()] = f.stat().st_size
    return out


@torch.no_grad()
def checksum(t: torch.Tensor) -> list[float]:
    """Order-sensitive float64 checksum of a tensor's values: [sum, sum of squares, position-weighted sum]."""
    x = t.detach().reshape(-1).to(torch.float64)
    w = torch.arange(x.numel(), device=x.device, dtype=torch.float64).remainder_(251).add_(1)
    return [float(x.sum()), float(x.square().sum()), float(x.mul(w).sum())]


def _same_checksum(a: list[float], b: list[float], n: int) -> bool:
    scale = math.sqrt(max(abs(a[1]), abs(b[1])) * max(n, 1)) * 251 + 1e-30
    return all(abs(x - y) <= 1e-6 * scale for x, y in zip(a, b, strict=True))


# ---------------------------------------------------------------------------------------- pretrained parts


def pretrained_parts(net_cfg: Mapping[str, Any]) -> list[tuple[str, str, str, Callable[[str], bool]]]:
    """(part, config key under ``net``, path, which ``net.*`` state keys it fills) for every part a stage-2 net
    builds from a local pretrained file. Only what the builders load in full is listed (the UNet's random-init
    motion modules without an adapter are not)."""
    parts: list[tuple[str, str, str, Callable[[str], bool]]] = []
    codec = dict(net_cfg.get("codec") or {})
    if codec.get("type") == "vae" and codec.get("path"):
        parts.append(("codec", "codec.path", str(codec["path"]), lambda k: k.startswith("net.codec.")))
    enc = dict(net_cfg.get("image_encoder") or {})
    if enc.get("type") == "clip" and enc.get("path"):
        parts.append(("image_encoder", "image_encoder.path", str(enc["path"]),
                      lambda k: k.startswith("net.image_encoder.")))
    unet = dict(net_cfg.get("unet") or {})
    if net_cfg.get("backbone") is None and unet:
        if unet.get("pretrained"):
            parts.append(("backbone", "unet.pretrained", str(unet["pretrained"]),
                          lambda k: k.startswith("net.reference_unet.") or
                          (k.startswith("net.denoising_unet.") and _MOTION not in k)))
        if unet.get("motion_adapter"):
            parts.append(("backbone", "unet.motion_adapter", str(unet["motion_adapter"]),
                          lambda k: k.startswith("net.denoising_unet.") and _MOTION in k))
    pg = dict(net_cfg.get("pose_guider") or {})
    if pg.get("pretrained"):
        parts.append(("pose_guider", "pose_guider.pretrained", str(pg["pretrained"]),
                      lambda k: k.startswith("net.pose_guider.")))
    return parts


def build_part(part: str, net_cfg: Mapping[str, Any], net: nn.Module, key: str) -> dict[str, torch.Tensor]:
    """The ``net.*`` tensors of one pretrained part, built from its configured folder by the part's own builder
    (the same code that built it for training). ``net``: the (possibly meta-device) net being filled, for widths."""
    cfg = dict(net_cfg)
    if part == "codec":
        from mmgt.models.video.codec import build_codec

        mod: nn.Module = build_codec(dict(cfg["codec"]), f"{key}.codec", True)
    elif part == "image_encoder":
        from mmgt.models.video.encoders import build_image_encoder

        mod = build_image_encoder(dict(cfg["image_encoder"]), int(net.backbone.context_dim), f"{key}.image_encoder",
                                  True)
    elif part == "backbone":
        from mmgt.models.video.backbone import build_backbone
        from mmgt.models.video.reference import ForwardContext

        backbone = build_backbone(cfg, ForwardContext(), int(net.codec.latent_channels), True, key)
        return {f"net.{name}.{k}": v for name, child in backbone.named_children()
                for k, v in child.state_dict().items()}
    elif part == "pose_guider":
        from mmgt.models.video.pose_guider import PoseGuider

        pg = dict(cfg["pose_guider"])
        mod = PoseGuider(int(net.pose_guider.embed.conv_out.out_channels), tuple(pg.get("channels", (16, 32, 96, 256))))
        mod.load_controlnet(pg["pretrained"], f"{key}.pose_guider.pretrained")
    else:
        raise ValueError(f"unknown pretrained part {part!r}")
    return {f"net.{part}.{k}": v for k, v in mod.state_dict().items()}


# ------------------------------------------------------------------------------------------------ saving


def _init_from_source(module: Any, state: Mapping[str, torch.Tensor], frozen: list[str]) -> dict[str, Any] | None:
    """The frozen tensors equal to those of ``model.init_from`` (the file is read memory-mapped, once)."""
    from mmgt import checkpoints

    hp = module.hparams
    path = hp.get("init_from")
    if not path:
        return None
    real = Path(os.path.realpath(Path(str(path)).expanduser()))
    if real.is_dir():
        real = Path(os.path.realpath(checkpoints.resolve(real, "model.init_from")))
    if not real.is_file():
        log.warning("lean checkpoint: model.init_from=%s is gone; its tensors are saved in full", path)
        return None
    prefer_ema = bool((hp.get("ema") or {}).get("init_from_ema", True))
    sd = checkpoints.net_state(real, prefer_ema=prefer_ema)
    groups = module.net.parameter_groups()
    skip = {f"net.{n}" for g in hp.get("init_exclude") or [] for n, _ in groups.get(g, [])}
    keys, changed = [], []
    for k in frozen:
        src = sd.get(k[len("net."):])
        if k in skip or src is None or tuple(src.shape) != tuple(state[k].shape):
            continue
        if torch.equal(src.to(state[k].device, state[k].dtype), state[k]):
            keys.append(k)
        else:
            changed.append(k)
    if changed:
        log.warning("lean checkpoint: %d frozen tensors differ from %s (changed since this run started?), e.g. %s; "
                    "they are saved in full", len(changed), real, ", ".join(changed[:3]))
    return {"kind": "init_from", "config_key": "model.init_from", "path": str(real), "prefer_ema": prefer_ema,
            "fingerprint": fingerprint(real), "keys": keys} if keys else None


def plan(module: Any) -> dict[str, Any]:
    """The lean record of a stage-2 module: which frozen ``state_dict`` keys come from which source, with
    fingerprints and checksums. Computed once per module (frozen tensors do not change during training)."""
    cached = module.__dict__.get(_PLAN_ATTR)
    if cached is not None:
        return cached
    hp = module.hparams
    state = module.state_dict()
    trainable = {f"net.{n}" for n in module.trainable_names}
    frozen = [k for k, v in state.items() if k.startswith("net.") and k not in trainable and torch.is_tensor(v)]
    sources: dict[str, dict[str, Any]] = {}
    src = _init_from_source(module, state, frozen)
    taken = set()
    if src is not None:
        sources["init_from"] = src
        taken = set(src["keys"])
    if hp.get("load_weights", True):
        frozen_set = set(frozen)
        for part, sub, path, fills in pretrained_parts(hp["net"]):
            if any(fills(k) and k not in frozen_set for k in state):
                continue  # partly trained (e.g. the few unused reference-UNet tensors of sub-stage A): saved, so a
                # load never rebuilds a whole UNet for a handful of tensors
            keys = [k for k in frozen if k not in taken and fills(k)]
            if keys:
                sources[sub] = {"kind": "pretrained", "part": part, "config_key": sub, "path": path,
                                "fingerprint": fingerprint(path), "keys": keys}
                taken.update(keys)
    record = {"version": LEAN_VERSION, "sources": sources,
              "checksums": {k: checksum(state[k]) for k in sorted(taken)},
              "numel": {k: int(state[k].numel()) for k in sorted(taken)},
              "dtype": {k: str(state[k].dtype).removeprefix("torch.") for k in sorted(taken)}}
    module.__dict__[_PLAN_ATTR] = record
    if taken:
        n = sum(record["numel"].values())
        log.info("lean checkpoints: %d frozen tensors (%.1f M values) are rebuilt from %s instead of saved", len(taken),
                 n / 1e6, ", ".join(f"{s['path']} ({name})" for name, s in sources.items()))
    return record


def _plain(v: Any) -> Any:
    if isinstance(v, Mapping):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_plain(x) for x in v]
    return v if v is None or isinstance(v, bool | int | float | str) else str(v)


def architectures(module: Any) -> dict[str, dict[str, Any]]:
    """The architecture of the pretrained VAE / CLIP encoder actually built (their folders' config), as the
    ``config`` entries :func:`~mmgt.models.video.codec.build_codec` / ``build_image_encoder`` rebuild them from
    without weights: a checkpoint then describes its network whatever its folders hold."""
    import inspect

    out: dict[str, dict[str, Any]] = {}
    net = module.net
    vae = getattr(net.codec, "vae", None)
    if vae is not None:
        params = inspect.signature(type(vae).__init__).parameters
        out["codec"] = {k: _plain(v) for k, v in dict(vae.config).items() if k in params}
    model = getattr(net.image_encoder, "model", None)
    if model is not None and hasattr(model.config, "to_dict"):
        keep = ("hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers", "image_size",
                "patch_size", "projection_dim", "hidden_act", "num_channels", "layer_norm_eps")
        out["image_encoder"] = {k: _plain(v) for k, v in model.config.to_dict().items() if k in keep}
    return out


def prune(module: Any, checkpoint: dict[str, Any]) -> None:
    """Leave the rebuildable frozen tensors out of a checkpoint dict being saved and record where they come from
    (``checkpoint["mmgt"]["lean"]``; call after :func:`mmgt.checkpoints.stamp`). The stored ``net`` settings get the
    built VAE / CLIP architectures (``config``), so the network is rebuilt without its folders' config files."""
    import copy

    hp = checkpoint.get("hyper_parameters")
    if isinstance(hp, Mapping) and isinstance(hp.get("net"), Mapping):
        net = copy.deepcopy(dict(hp["net"]))  # never the module's own hparams
        for part, arch in architectures(module).items():
            if isinstance(net.get(part), Mapping) and not net[part].get("config"):
                net[part] = {**net[part], "config": arch}
        checkpoint["hyper_parameters"] = {**hp, "net": net}
    record = plan(module)
    state = checkpoint.get("state_dict") or {}
    for s in record["sources"].values():
        for k in s["keys"]:
            state.pop(k, None)
    checkpoint.setdefault("mmgt", {})[RECORD_KEY] = record


def record_of(checkpoint: Mapping[str, Any]) -> dict[str, Any] | None:
    """The lean record of a checkpoint dict (None: a full checkpoint)."""
    rec = checkpoint.get("mmgt")
    lean = rec.get(RECORD_KEY) if isinstance(rec, Mapping) else None
    return lean if isinstance(lean, Mapping) and lean.get("sources") else None


def omitted_keys(record: Mapping[str, Any]) -> list[str]:
    return [k for s in record["sources"].values() for k in s["keys"]]


# ----------------------------------------------------------------------------------------------- loading


def _describe(src: Mapping[str, Any], key: str) -> str:
    where = "model.init_from" if src["kind"] == "init_from" else f"{key}.{src['config_key']}"
    return f"{src['path']} (config key `{where}`)"


def verify(record: Mapping[str, Any], tensors: Mapping[str, torch.Tensor], path: str | Path,
           key: str = "size.video") -> None:
    """Compare rebuilt tensors with the checksums recorded at save time; raise naming the changed source."""
    sums, numel = record["checksums"], record.get("numel", {})
    for name, src in record["sources"].items():
        missing = [k for k in src["keys"] if k not in tensors]
        bad = [k for k in src["keys"] if k in tensors and
               not _same_checksum(checksum(tensors[k]), sums[k], int(numel.get(k, tensors[k].numel())))]
        if missing or bad:
            now = fingerprint(src["path"])
            diff = sorted(set(now.items()) ^ set(src["fingerprint"].items()))
            files = f"; files changed: {', '.join(sorted({f for f, _ in diff})[:5])}" if diff else ""
            what = (f"{len(missing)} of them are missing (e.g. {', '.join(missing[:3])})" if missing else
                    f"{len(bad)} differ (e.g. {', '.join(bad[:3])})")
            raise CheckpointError(
                f"{path} is a lean checkpoint: {len(src['keys'])} frozen tensors were left out and must be rebuilt "
                f"from {_describe(src, key)}, but {what}{files}. The source changed since the checkpoint was "
                f"written (source `{name}`): point the config key at the original file/folder")


def check_fingerprints(record: Mapping[str, Any], path: str | Path, key: str = "size.video",
                       paths: Mapping[str, str] | None = None) -> None:
    """Warn (only) when a source's file names or sizes changed; the checksums decide."""
    for name, src in record["sources"].items():
        p = (paths or {}).get(name, src["path"])
        if not Path(p).exists():
            raise CheckpointError(f"{path} is a lean checkpoint whose frozen parts are rebuilt from "
                                  f"{_describe({**src, 'path': p}, key)}, which does not exist")
        if fingerprint(p) != src["fingerprint"]:
            log.warning("%s: the files of source %s (%s) changed since the checkpoint was written; checking the "
                        "rebuilt tensors", path, name, p)


def restore_for_resume(module: Any, checkpoint: dict[str, Any]) -> None:
    """Lightning resume of a lean checkpoint: the module was just built from its configuration (pretrained folders,
    ``init_from``), so its own tensors fill the omitted keys once their checksums match the record."""
    record = record_of(checkpoint)
    if record is None:
        return
    state = module.state_dict()
    own = {k: state[k] for k in omitted_keys(record) if k in state}
    verify(record, own, "the checkpoint being resumed", "size.video")
    checkpoint["state_dict"].update(own)
    module.__dict__[_PLAN_ATTR] = dict(record)  # same sources: the next saves need not re-read them


def rebuild(record: Mapping[str, Any], module: Any, net_cfg: Mapping[str, Any], path: str | Path,
            key: str = "size.video") -> dict[str, torch.Tensor]:
    """The omitted tensors of a lean checkpoint, rebuilt from their sources (``net_cfg``: the recorded net with the
    caller's overrides, so a moved folder can be pointed at), verified against the recorded checksums."""
    from mmgt import checkpoints

    paths = {}
    for name, src in record["sources"].items():
        if src["kind"] == "pretrained":
            current = [p for part, sub, p, _ in pretrained_parts(net_cfg) if sub == src["config_key"]]
            if not current:
                raise CheckpointError(f"{path} is a lean checkpoint whose frozen {src['part']} comes from "
                                      f"{_describe(src, key)}, but `{key}.{src['config_key']}` is now empty")
            paths[name] = current[0]
    check_fingerprints(record, path, key, paths)
    out: dict[str, torch.Tensor] = {}
    built: dict[str, dict[str, torch.Tensor]] = {}
    for src in record["sources"].values():
        if src["kind"] == "init_from":
            sd = checkpoints.net_state(src["path"], prefer_ema=bool(src.get("prefer_ema", True)),
                                       key="model.init_from")
            out.update({k: sd[k[len("net."):]] for k in src["keys"] if k[len("net."):] in sd})
        else:
            part = src["part"]
            if part not in built:
                built[part] = build_part(part, net_cfg, module.net, key)
            out.update({k: built[part][k] for k in src["keys"] if k in built[part]})
    dtypes = record.get("dtype", {})
    out = {k: v.to(getattr(torch, dtypes[k])) if k in dtypes else v for k, v in out.items()}  # as trained
    verify(record, out, path, key)
    return out


__all__ = ["LEAN_VERSION", "RECORD_KEY", "build_part", "check_fingerprints", "checksum", "fingerprint",
           "omitted_keys", "plan", "pretrained_parts", "prune", "rebuild", "record_of", "restore_for_resume",
           "verify"]
