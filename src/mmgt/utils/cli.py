"""What every ``python -m mmgt.<app>`` shares around ``hydra.main``.

- :func:`app`: the decorator of the entry points: strict value types of command-line overrides (OmegaConf stores
  ``side_by_side=ture`` as the string ``"ture"``, which every ``if`` reads as true) and one copy of each Lightning
  log line.
- :func:`help_text`: the ``--help`` of an app, built from its own primary YAML with the comments that document each
  key (Hydra's raw dump lists every group of ``conf/``, also the training groups for generate, and strips the
  comments). ``conf/hydra/default.yaml`` points ``hydra.help.template`` at it through the ``mmgt.help`` resolver.
"""

from __future__ import annotations

import functools
import logging
import re
import sys
import textwrap
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmgt.utils.paths import CONF_DIR

_MISSING = object()


# --------------------------------------------------------------------------------------- strict value types


def strict_bool(value: Any, key: str) -> bool:
    """``value`` as a bool, refusing anything but ``true``/``false`` (and null = false): a misspelt ``ture`` must not
    read as true. Raises ``ValueError`` naming the key."""
    if value is None or isinstance(value, bool):
        return bool(value)
    raise ValueError(f"{key}={value!r}: expected true or false")


def type_error(key: str, default: Any, value: Any) -> str | None:
    """Why ``value`` cannot replace the YAML's ``default`` of ``key`` (None when it can): a boolean stays a boolean,
    a number a number (null is allowed for both)."""
    if value is None or default is None or default is _MISSING:
        return None
    if isinstance(default, bool):
        return None if isinstance(value, bool) else f"{key}={value!r}: expected true or false"
    if isinstance(default, int | float) and (isinstance(value, bool) or not isinstance(value, int | float)):
        return f"{key}={value!r}: expected a number"
    return None


def _is_group(key: str, conf_dir: str) -> bool:
    return "@" in key or (Path(conf_dir) / key).is_dir()


def override_errors(overrides: Sequence[str], cfg: Any, base: Any, conf_dir: str = CONF_DIR) -> list[str]:
    """Type errors of the value overrides among ``overrides`` (command-line strings): each overridden key's value in
    the composed ``cfg`` against its value in ``base`` (the same config composed with the group overrides only)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    errors = []
    for o in OverridesParser.create().parse_overrides(list(overrides)):
        key = o.key_or_group
        if key.startswith("hydra") or o.is_delete() or o.is_add() or _is_group(key, conf_dir):
            continue
        try:
            default = OmegaConf.select(base, key, default=_MISSING)
            value = OmegaConf.select(cfg, key, default=_MISSING)
        except Exception:  # noqa: BLE001 - an unresolvable interpolation is reported where it is used
            continue
        if value is not _MISSING and (err := type_error(key, default, value)):
            errors.append(err)
    return errors


def group_overrides(overrides: Iterable[str], conf_dir: str = CONF_DIR) -> list[str]:
    """The overrides that choose a config group option (``experiment=...``, ``data=pats``), Hydra's own excluded."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    out = []
    for raw, o in zip(overrides, OverridesParser.create().parse_overrides(list(overrides)), strict=True):
        if not o.key_or_group.startswith("hydra") and _is_group(o.key_or_group, conf_dir):
            out.append(raw)
    return out


def check_overrides(cfg: Any, config_name: str) -> None:
    """Refuse, in one line per key, command-line values of the wrong type for the running Hydra job (its overrides
    against the config composed with its group overrides only)."""
    from hydra import compose
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized() or not GlobalHydra.instance().is_initialized():
        return
    overrides = list(HydraConfig.get().overrides.task)
    if not overrides:
        return
    # the job's own search path extensions (e.g. a plug-in's task folder) are needed to compose its groups again
    search = [o for o in HydraConfig.get().overrides.hydra if o.startswith(("hydra.searchpath", "+hydra.searchpath"))]
    base = compose(config_name=config_name, overrides=search + group_overrides(overrides))
    errors = override_errors(overrides, cfg, base)
    if errors:
        raise ValueError("; ".join(errors))


# --------------------------------------------------------------------------------------- logging


def single_log_lines() -> None:
    """Drop the console handler ``import lightning`` puts on the ``lightning`` logger when the root logger already
    has handlers (Hydra's console + log file): records then reach the console once, through the root, and the run's
    log file too. Without it every Lightning line is printed twice (``INFO: ...`` and Hydra's format)."""
    import lightning  # noqa: F401  (adds the handler on first import)

    root = logging.getLogger()
    if not root.handlers:
        return
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        lg = logging.getLogger(name)
        for h in list(lg.handlers):
            if type(h) is logging.StreamHandler and getattr(h, "stream", None) in (sys.stderr, sys.stdout):
                lg.removeHandler(h)
        lg.propagate = True


# --------------------------------------------------------------------------------------- the decorator


def app(config_name: str, lightning_logs: bool = False) -> Callable[[Callable[[Any], Any]], Callable[[], Any]]:
    """``hydra.main`` over ``conf/<config_name>.yaml`` for an mmgt entry point, with strict override types (a wrong
    one exits with one line naming the key); ``lightning_logs``: the app runs a Lightning Trainer, so import Lightning
    now and keep its log lines single (:func:`single_log_lines`; apps that may not need Lightning call it later)."""
    import hydra

    def wrap(task: Callable[[Any], Any]) -> Callable[[], Any]:
        @functools.wraps(task)
        def run(cfg: Any) -> Any:
            try:
                check_overrides(cfg, config_name)
            except ValueError as err:
                sys.exit(f"mmgt.{config_name}: {err}")
            if lightning_logs:
                single_log_lines()
            return task(cfg)

        return hydra.main(config_path=CONF_DIR, config_name=config_name, version_base="1.3")(run)

    return wrap


# --------------------------------------------------------------------------------------- --help


@dataclass
class KeyDoc:
    """One documented key of a YAML file: dotted path, the YAML default as written, its comment."""

    key: str
    default: str
    doc: list[str] = field(default_factory=list)
    section: str | None = None  # a `# --- title` line (and the comment lines after it) just before it
    note: list[str] = field(default_factory=list)  # a comment block above a key that has its own inline comment


@dataclass
class YamlDoc:
    """The parts of a primary YAML the help shows: the header comment, the defaults list, the documented keys."""

    header: list[str]
    groups: list[tuple[str, str, list[str]]]  # (group, default option, comment lines)
    keys: list[KeyDoc]


_KEY = re.compile(r"^(\s*)([A-Za-z_][\w\-]*):(?:\s+(.*?))?\s*$")


def _split_comment(text: str) -> tuple[str, str | None]:
    """``value  # comment`` -> (value, comment), a ``#`` inside quotes kept."""
    quote = None
    for i, ch in enumerate(text):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or text[i - 1].isspace()):
            return text[:i].rstrip(), text[i + 1:].strip()
    return text.rstrip(), None


def parse_yaml_doc(text: str) -> YamlDoc:
    """Read the comments of a config file as documentation (a comment block documents the key below it, an inline
    comment its own key, a deeper-indented comment line right after a key continues that key's comment)."""
    lines = text.splitlines()
    header: list[str] = []
    i = 0
    while i < len(lines) and lines[i].lstrip().startswith("#"):
        c = lines[i].strip()[1:]
        if not c.strip().startswith("@package"):
            header.append(c[1:] if c.startswith(" ") else c)
        i += 1
    groups: list[tuple[str, str, list[str]]] = []
    keys: list[KeyDoc] = []
    stack: list[tuple[int, str]] = []
    pending: list[str] = []
    section: str | None = None
    section_open = False  # comment lines right after a `# ---` title continue the title
    last: KeyDoc | None = None
    last_indent = -1
    in_defaults = False
    for line in lines[i:]:
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        if not stripped:
            pending, last, section_open = [], None, False
            continue
        if stripped.startswith("#"):
            comment = stripped[1:].strip()
            if last is not None and indent > last_indent + 2 and not in_defaults:
                last.doc.append(comment)  # continuation of the key line above
            elif comment.startswith("---"):
                section, pending, section_open = comment.strip("- ").strip() or None, [], True
            elif section_open and section:
                section += " " + comment
            else:
                pending.append(comment)
            continue
        section_open = False
        if in_defaults and (stripped.startswith("-") or indent > 0):
            entry, comment = _split_comment(stripped.lstrip("- ").strip())
            doc = pending + ([comment] if comment else [])
            pending = []
            if ":" in entry:
                group, option = (s.strip() for s in entry.split(":", 1))
                if group.startswith("optional "):
                    doc = [*doc, "(optional: used when the file exists)"]
                group = group.replace("optional ", "").replace("override ", "").strip().lstrip("/")
                if group not in ("hydra",):
                    groups.append((group, option, doc))
            continue
        in_defaults = False
        if stripped.startswith("-"):
            continue
        m = _KEY.match(line)
        if not m:
            pending, last = [], None
            continue
        if indent == 0 and m.group(2) == "defaults":
            in_defaults, pending = True, []
            continue
        while stack and stack[-1][0] >= indent:
            stack.pop()
        name = ".".join([k for _, k in stack] + [m.group(2)])
        value, comment = _split_comment(m.group(3) or "")
        note, doc = (pending, [comment]) if comment else ([], pending)
        pending = []
        if value == "" or value in ("|", ">", "|-", ">-"):
            stack.append((indent, m.group(2)))
            last, last_indent = None, indent
            if doc:
                keys.append(KeyDoc(name + ".*", "", doc, section))
                section = None
            continue
        last, last_indent = KeyDoc(name, value, doc, section, note), indent
        section = None
        keys.append(last)
    return YamlDoc(header, groups, keys)


def _options(group: str, conf_dir: str) -> list[str]:
    return sorted(p.stem for p in (Path(conf_dir) / group).glob("*.yaml"))


def help_text(config_name: str, conf_dir: str = CONF_DIR, width: int = 118) -> str:
    """The ``--help`` of ``python -m mmgt.<config_name>``: the YAML's header (what the app does, usage lines), its
    config groups with their options, then every key of the YAML with its default and comment."""
    doc = parse_yaml_doc((Path(conf_dir) / f"{config_name}.yaml").read_text())
    out = [f"python -m mmgt.{config_name} [key=value ...] [group=option ...]", ""]
    out += [h.rstrip() for h in doc.header]
    if doc.groups:
        out += ["", "== Config groups (group=option; the default is marked *) =="]
        for group, default, comment in doc.groups:
            if group == "_self_":
                continue
            opts = [f"{o}*" if o == default else o for o in _options(group, conf_dir)]
            if default in ("null", "None") or not (Path(conf_dir) / group / f"{default}.yaml").exists():
                opts.append(f"({default}*)")
            out += textwrap.wrap(f"{group}: {', '.join(opts)}", width, initial_indent="  ",
                                 subsequent_indent=" " * (4 + len(group)))
            out += textwrap.wrap(" ".join(comment), width, initial_indent=" " * 6, subsequent_indent=" " * 6)
    out += ["", f"== Keys of conf/{config_name}.yaml (key=default: what it does) =="]
    col = 30
    for k in doc.keys:
        if k.section:
            out += [""] + textwrap.wrap(k.section, width, initial_indent="  -- ", subsequent_indent="     ")
        out += textwrap.wrap(" ".join(k.note), width, initial_indent="  # ", subsequent_indent="  # ")
        head = f"  {k.key}" + (f"={k.default}" if k.default else "")
        text = " ".join(k.doc)
        if not text:
            out.append(head)
            continue
        lines = textwrap.wrap(text, width - col) or [""]
        if len(head) >= col - 1:
            out.append(head)
            out += [" " * col + ln for ln in lines]
        else:
            out.append(head.ljust(col) + lines[0])
            out += [" " * col + ln for ln in lines[1:]]
    out += [""] + textwrap.wrap("Every group's own keys are documented in conf/<group>/<option>.yaml; `--cfg job` "
                                "prints the composed config (with your overrides), `-m` runs a sweep over "
                                "comma-separated values, `--hydra-help` lists Hydra's own options.", width)
    return "\n".join(out) + "\n"


def help_template(config_name: str) -> str:
    """:func:`help_text` as a ``hydra.help.template`` (Hydra substitutes ``$NAME`` in it, so ``$`` is escaped)."""
    return help_text(str(config_name)).replace("$", "$$")


__all__ = ["KeyDoc", "YamlDoc", "app", "check_overrides", "group_overrides", "help_template", "help_text",
           "override_errors", "parse_yaml_doc", "single_log_lines", "strict_bool", "type_error"]
