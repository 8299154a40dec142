"""Classes named in stage-2 configs (``_target_`` of a backbone or attention variant, ``attention.module``).

Config values are data, also when they come back from a checkpoint's stored hyper-parameters: a dotted class path
is imported only if :func:`mmgt.checkpoints.safe_target` accepts it (an ``nn.Module`` or dataclass under
``mmgt.models/losses/metrics/pose``) - the same rule that guards stored settings - and the class must then derive
from the kind of part the key expects.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping
from typing import Any


def component_class(spec: str | type, base: type, key: str, what: str) -> type:
    """The class ``spec`` names (a class, or a dotted path checked before import), which must subclass ``base``."""
    if isinstance(spec, type):
        cls = spec
    else:
        from mmgt.checkpoints import safe_target

        if not safe_target(spec):
            raise ValueError(f"{key}={spec!r} is not {what}: a config may name mmgt component classes only (an "
                             "nn.Module or dataclass under mmgt.models, mmgt.losses, mmgt.metrics or mmgt.pose)")
        module, _, name = str(spec).rpartition(".")
        cls = getattr(importlib.import_module(module), name)
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise ValueError(f"{key}={spec!r} is not {what} (a subclass of {base.__module__}.{base.__qualname__})")
    return cls


def split_target(cfg: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
    """(``_target_``, the other keys) of a config node; plain dicts and DictConfigs alike."""
    rest = dict(cfg)
    return rest.pop("_target_", None), rest


def construct(cls: type, where: str, config: Mapping[str, Any], **runtime: Any) -> Any:
    """``cls(**runtime, **config)``, refusing config keys the class does not take (a typo would otherwise fall back
    to a default or surface as a TypeError from deep inside) and config keys that VideoNet supplies."""
    clash = sorted(set(config) & set(runtime))
    if clash:
        raise ValueError(f"{where}: {clash} are set by VideoNet, not by the config")
    sig = inspect.signature(cls)
    try:
        sig.bind(**runtime, **config)
    except TypeError as err:
        keys = [n for n, p in sig.parameters.items()
                if n not in runtime and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        raise ValueError(f"{where}: {err} (keys of {cls.__name__}: {keys})") from err
    return cls(**runtime, **config)
