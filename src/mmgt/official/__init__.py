"""Conversion of the released MMGT checkpoints (the official code's state dicts) into mmgt networks.

Each stage has its own converter module (:mod:`mmgt.official.smga`, :mod:`mmgt.official.stage2`); they share the
result type and the strict error rules here: every official tensor is copied, split, or listed as unused by the
official forward; a file of the wrong kind or with missing tensors is refused naming the file and the first
missing keys.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch


class ConversionError(ValueError):
    """An official file that cannot be converted (wrong kind, missing or misshapen tensors)."""


@dataclass
class Conversion:
    """An official state dict turned into an mmgt network's: the weights, the network config they fit, and what
    was left out (tensors the official forward never reads)."""

    state_dict: dict[str, torch.Tensor]
    config: dict[str, Any]
    unused: list[str] = field(default_factory=list)
    source: str = ""

    def report(self) -> str:
        """One line per fact a user should see after converting."""
        lines = [f"{self.source}: {len(self.state_dict)} tensors converted"]
        if self.unused:
            lines.append(f"  {len(self.unused)} official tensors not used by the official forward (dropped): "
                         + ", ".join(self.unused[:8]) + (" ..." if len(self.unused) > 8 else ""))
        return "\n".join(lines)


def missing_keys_error(path: str | Path, what: str, missing: Iterable[str], n_show: int = 5) -> ConversionError:
    """The one message for an official file that lacks tensors its kind must have."""
    missing = list(missing)
    return ConversionError(f"{path}: not a complete {what} ({len(missing)} tensors missing, first: "
                           f"{', '.join(missing[:n_show])})")


def read_official(path: str | Path, what: str) -> Mapping[str, Any]:
    """Read an official ``.pt``/``.pth`` file with ``weights_only=True`` (no pickled code) and memory-mapped."""
    p = Path(str(path)).expanduser()
    if not p.is_file():
        raise ConversionError(f"{p}: file not found (expected the official {what})")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # noqa: BLE001 - truncated files, pickled code, not a torch file
        raise ConversionError(f"{p}: cannot be read as the official {what} with weights_only=True "
                              f"({type(err).__name__}: {err})") from err
    if not isinstance(obj, Mapping):
        raise ConversionError(f"{p}: expected a dict of tensors for the official {what}, got {type(obj).__name__}")
    return obj
