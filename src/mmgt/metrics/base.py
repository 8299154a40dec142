"""What a metric declares to be part of a suite, and the suite: a collection built from config entries.

A member is a torchmetrics ``Metric`` that says which of the suite's ``update`` arguments it takes (``inputs``,
``optional_inputs``) and under which names its values are logged (:meth:`SuiteMetric.names`,
:meth:`SuiteMetric.results`). The suite only dispatches and merges, so a new metric needs no change here: a class
plus a config entry naming it (``_target_``). Each suite (video: :class:`~mmgt.metrics.suite.MetricSuite`, poses:
:class:`~mmgt.metrics.gesture.GestureSuite`) is a subclass that states its call arguments, its shared settings and
its table of built-in entries.

torchmetrics' ``MetricCollection`` is not the container: it calls every member with the same arguments (kwargs
filtered by each ``update``'s parameter names) where members here take different inputs and one lacking an input is
skipped; its name flattening cannot put a suffix inside a multi-value member's names (``sync_c_randinit`` beside
``sync_padded_clips``); and its compute groups would merge members with the same state layout (PSNR/SSIM/LPIPS).
"""

from __future__ import annotations

import contextlib
import functools
import math
import types
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch.distributed as dist
from torch import nn
from torchmetrics import Metric

from mmgt.utils.config import to_plain


class SuiteMetric(Metric):
    """A torchmetrics ``Metric`` that declares its suite inputs and its logged names.

    Class attributes (``name`` and ``inputs`` can also be set per instance with the keywords of the same name, e.g.
    from a config entry: the same class then serves ``diversity`` on generated and ``diversity_real`` on reference
    poses):

    * ``name``: the logged base name; :meth:`names` adds ``name_suffix`` (``_randinit`` for a random-init feature
      net, ``_r<size>``/``_<n>f`` for a non-standard protocol: a number that is not the published protocol never
      carries the bare name).
    * ``inputs``: suite ``update`` arguments this metric needs, given positionally in this order; the suite skips the
      metric (with a warning, once) when one of them is missing from a call.
    * ``optional_inputs``: suite arguments given by keyword of the same name (``None`` when the call lacks them).
    * ``settings``: suite-level settings the constructor takes by keyword of the same name (e.g. ``input_range``,
      ``allow_random_weights``); an entry's own value wins.
    * ``weights_key``: the entry of the suite's ``weights`` mapping given as the first constructor argument.

    ``compute`` must also work on no data (return ``nan``): under DDP every rank computes every member. A metric
    whose protocol was not met by any clip of the set (videos too short for FVD's clips or Sync's offset search)
    returns ``{}`` from :meth:`results`: nothing is logged rather than a number under a name it does not earn
    (decided on synchronised states, so every rank agrees). :meth:`protocol` is the member's protocol card.
    """

    name: ClassVar[str] = ""
    inputs: ClassVar[tuple[str, ...]] = ("generated", "reference")
    optional_inputs: ClassVar[tuple[str, ...]] = ()
    settings: ClassVar[tuple[str, ...]] = ()
    weights_key: ClassVar[str | None] = None
    name_suffix: str = ""

    def __init__(self, *, name: str | None = None, inputs: Iterable[str] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if name is not None:
            self.name = str(name)  # type: ignore[misc]  # instance value shadows the class declaration
        if inputs is not None:
            self.inputs = tuple(inputs)  # type: ignore[misc]

    def names(self) -> list[str]:
        """The keys :meth:`results` returns."""
        return [f"{self.name}{self.name_suffix}"]

    def results(self) -> dict[str, float]:
        """``compute()`` as ``{logged name: float}`` (synchronised across ranks: every rank must call it)."""
        return {self.names()[0]: float(self.compute())}

    def per_clip(self) -> dict[str, list[float]]:
        """Per-clip values of the latest ``update`` under the logged names; ``{}`` for set-level metrics."""
        return {}

    def protocol(self) -> dict[str, Any]:
        """The protocol card: what was computed and how (metric, variant, weight file and checksum, clip/frame
        counts, resolution), written beside every evaluation. Subclasses add their settings to this default."""
        return {"metric": self.names()[0], "names": self.names(), "class": f"{type(self).__module__}."
                f"{type(self).__qualname__}"}


@contextlib.contextmanager
def synced_states(metric: Metric) -> Iterator[None]:
    """Every rank's states gathered into ``metric`` for the duration (a collective under DDP: all ranks enter), with
    its ``compute`` running on them as they are: members whose ``results`` / ``protocol`` read states beside
    ``compute()`` (real-set values, counts, per-part distances) then agree on every rank. Outside DDP: nothing."""
    ddp = dist.is_available() and dist.is_initialized()
    if not ddp or not metric.sync_on_compute or getattr(metric, "_is_synced", False):
        yield
        return
    metric.sync(should_sync=True)
    wrapped = metric.compute
    metric.compute = types.MethodType(type(metric).compute, metric)  # no second sync inside
    try:
        yield
    finally:
        metric.compute = wrapped
        metric.unsync()


def _card_of(m: Metric) -> dict[str, Any]:
    proto = getattr(m, "protocol", None)
    return dict(proto()) if callable(proto) else {"names": list(m.names())}


@dataclass(frozen=True)
class Builtin:
    """A suite's built-in entry: the class behind a config key, whether it is on without config, its defaults."""

    cls: type[SuiteMetric]
    enabled: bool = True
    defaults: Mapping[str, Any] = field(default_factory=dict)


def entry_options(value: Any) -> dict[str, Any] | None:
    """An entry's value: ``False``/``None`` -> off, ``True`` -> defaults, a mapping -> its kwargs (``enabled: false``
    turns it off)."""
    if value is None or value is False:
        return None
    if value is True:
        return {}
    opts = dict(to_plain(value))
    return opts if opts.pop("enabled", True) else None


class Suite(nn.Module):
    """Members built from config entries; ``update`` dispatches by declared inputs, ``compute`` merges the names.

    Args:
        entries: ``{key: value}``; a value is ``True``/``False``, a mapping of constructor kwargs (``enabled: false``
            turns it off; ``_target_`` names the class — any :class:`SuiteMetric` — for keys that are not built-in
            or to replace a built-in's class) or a ready metric. Built-in keys missing from ``entries`` take their
            table default. Members keep the table's order, then the entries' order.
        settings: suite-level values handed to each member that declares them in ``settings``.
        weights: feature-network files; a member with ``weights_key`` gets ``weights[weights_key]`` (or ``None``).
    """

    #: the keyword names ``update`` accepts (besides ``generated``, ``reference``); members may only declare these
    arguments: ClassVar[tuple[str, ...]] = ()
    #: config key -> built-in member
    builtins: ClassVar[Mapping[str, Builtin]] = {}

    def __init__(self, entries: Mapping[str, Any] | None = None, settings: Mapping[str, Any] | None = None,
                 weights: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        entries = dict(entries or {})
        settings = dict(settings or {})
        weights = dict(to_plain(weights) or {})
        self.metrics = nn.ModuleDict()
        for key in [*self.builtins, *(k for k in entries if k not in self.builtins)]:
            member = self._build(key, entries.get(key, self.builtins[key].enabled if key in self.builtins else None),
                                 settings, weights)
            if member is not None:
                self.metrics[key] = member
        self._check()
        self._warned: set[str] = set()
        self._latest: list[str] = []  # members the latest update reached
        self.update_count = 0
        self.last_card: dict[str, dict[str, Any]] = {}  # protocol card of the latest compute (outlives reset)

    # ------------------------------------------------------------------------------------------- building
    def _build(self, key: str, value: Any, settings: Mapping[str, Any], weights: Mapping[str, Any]) -> Metric | None:
        if isinstance(value, Metric):
            return value
        opts = entry_options(value)
        if opts is None:
            return None
        factory: Callable[..., Any]
        if "_target_" in opts:
            from hydra.utils import instantiate

            factory = instantiate(opts, _partial_=True, _convert_="all")  # a partial: settings are added below
            cls = factory.func  # type: ignore[attr-defined]
        elif key in self.builtins:
            cls = self.builtins[key].cls
            factory = functools.partial(cls, **{**self.builtins[key].defaults, **opts})
        else:
            known = ", ".join(self.builtins) or "none"
            raise ValueError(f"metrics.{key}: not a built-in metric of {type(self).__name__} ({known}) and no "
                             "`_target_` naming its class")
        given = getattr(factory, "keywords", {})
        shared = {k: settings[k] for k in getattr(cls, "settings", ()) if k in settings and k not in given}
        wkey = getattr(cls, "weights_key", None)
        return factory(*([weights.get(wkey)] if wkey else []), **shared)

    def _check(self) -> None:
        """Every member speaks the protocol, takes only this suite's arguments, and logs names no other one does."""
        allowed = {"generated", "reference", *self.arguments}
        seen: dict[str, str] = {}
        for key, m in self.metrics.items():
            if not all(callable(getattr(m, a, None)) for a in ("names", "results", "per_clip")) or \
                    not hasattr(m, "inputs"):
                raise TypeError(f"metrics.{key}: {type(m).__name__} is not a suite metric (subclass "
                                "mmgt.metrics.SuiteMetric: declare `inputs` and `names()`)")
            unknown = sorted({*m.inputs, *getattr(m, "optional_inputs", ())} - allowed)
            if unknown:
                raise ValueError(f"metrics.{key}: needs {unknown}, but {type(self).__name__}.update gives "
                                 f"{sorted(allowed)}")
            for n in m.names():
                if n in seen:
                    raise ValueError(f"metrics.{key} and metrics.{seen[n]} both log `{n}`: set `name` on one")
                seen[n] = key

    # ------------------------------------------------------------------------------------------- the collection
    @property
    def names(self) -> list[str]:
        """The keys :meth:`compute` can return, in order (a member whose protocol no clip met returns none)."""
        return [n for m in self.metrics.values() for n in m.names()]

    def update(self, generated: Any, reference: Any = None, **inputs: Any) -> None:
        """Add a batch: each member gets the arguments it declares; one with a missing input is skipped (warned
        once per member)."""
        unknown = sorted(set(inputs) - set(self.arguments))
        if unknown:
            raise TypeError(f"{type(self).__name__}.update got {unknown}; it takes generated, reference"
                            + "".join(f", {a}" for a in self.arguments))
        given = {"generated": generated, "reference": reference, **inputs}
        self._latest = []
        for key, m in self.metrics.items():
            missing = [i for i in m.inputs if given.get(i) is None]
            if missing:
                if key not in self._warned:
                    warnings.warn(f"{type(self).__name__}.update without {', '.join(missing)}: {key} "
                                  f"({', '.join(m.names())}) not updated", stacklevel=2)
                    self._warned.add(key)
                continue
            m.update(*(given[i] for i in m.inputs), **{k: given.get(k) for k in getattr(m, "optional_inputs", ())})
            self._latest.append(key)
        self.update_count += 1

    def compute(self) -> dict[str, float]:
        """All values as floats (synchronised across ranks); ``nan`` for a member that saw no data; nothing for a
        member whose protocol no clip met. Also sets :attr:`last_card` (:meth:`protocol_card` after this compute).

        Every member's ``compute`` runs on every rank (it is a collective under DDP), also for a member skipped on
        this rank; its values are then ``nan``.
        """
        out: dict[str, float] = {}
        card: dict[str, dict[str, Any]] = {}
        for key, m in self.metrics.items():
            with synced_states(m):  # results() and protocol() may read states beyond compute(): all ranks' states
                if m.update_count:
                    out.update(m.results())
                else:
                    with warnings.catch_warnings():  # "compute before update": said once at update time already
                        warnings.simplefilter("ignore")
                        out.update(dict.fromkeys(m.results(), math.nan))
                card[key] = _card_of(m)
        self.last_card = card
        return out

    def protocol_card(self) -> dict[str, dict[str, Any]]:
        """``{config key: member.protocol()}``: each metric's protocol, weight file and checksum, counts (of the
        latest compute), resolution. Members without a ``protocol`` method get their names."""
        return {key: _card_of(m) for key, m in self.metrics.items()}

    def last_per_clip(self) -> dict[str, list[float]]:
        """Per-clip values of the latest :meth:`update` (set-level metrics such as FVD have none; a member that call
        skipped has none either, rather than the clips before), same names."""
        out: dict[str, list[float]] = {}
        for key in self._latest:
            out.update(self.metrics[key].per_clip())
        return out

    def reset(self) -> None:
        for m in self.metrics.values():
            m.reset()
        self.update_count = 0


def build_suite(cfg: Any, default: type[Suite]) -> Suite:
    """A suite from a config node: a ``_target_`` node (a :class:`Suite` class, built through Hydra, members built
    by the suite), or a mapping without one (settings written before suites were config nodes) given to
    ``default``; ``None``/empty -> ``default()``."""
    opts = dict(to_plain(cfg) or {})
    if "_target_" not in opts:
        return default(**opts)
    from hydra.utils import instantiate

    opts.pop("_recursive_", None)
    factory = instantiate(opts, _partial_=True, _recursive_=False, _convert_="all")
    if not (isinstance(factory.func, type) and issubclass(factory.func, Suite)):
        raise TypeError(f"metrics._target_ = {opts['_target_']!r} is not a metric suite class (mmgt.metrics.Suite)")
    return factory()
