"""What users plug into Warren (jobs, reports), found once at a service's start-up.

Sources, in this order:

- the entry-point group of a :class:`PluginKind` in every installed distribution
  (Warren's own plug-ins register this way, in pyproject.toml). Each entry point is
  named after its plug-in and its value names the object, ``words = "pkg.jobs:WORDS"``;
- the kind's references setting (``WARREN_RUNNER_JOBS``, ...): more references of the
  same form, for modules that no installed distribution declares.

The kind's enabled setting, when set, keeps only the plug-ins it names; an entry point
of another name is not even imported, so an operator can leave a broken package out.

A source that cannot be imported, a reference to an object of the wrong type, and two
sources offering one name all stop the start-up with the kind's :class:`PluginLoadError`,
naming the distribution and the entry point (or the setting): a replica with a bad
package refuses to start, and the replicas already running are not affected.

A child process that runs one plug-in (a run, a build) gets its reference and imports
that module alone (:func:`load`): it never discovers again, so one package's import
cost or fault cannot reach another package's work, and the child needs none of the
service's settings.
"""

from __future__ import annotations

import importlib
import logging
import re
import sys
import sysconfig
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any, Final, Generic, Protocol, TypeVar

from shared.config import ConfigError, Env, env_list
from shared.messaging.names import NAME_PATTERN

log = logging.getLogger(__name__)

_IDENTIFIER: Final = r"[A-Za-z_][A-Za-z0-9_]*"
# ``package.module:attribute``, the form of an entry point's value.
REFERENCE: Final = re.compile(rf"{_IDENTIFIER}(\.{_IDENTIFIER})*:{_IDENTIFIER}(\.{_IDENTIFIER})*")


class Plugin(Protocol):
    @property
    def name(self) -> str: ...

    def describe(self) -> dict[str, Any]: ...


P = TypeVar("P", bound=Plugin)


class PluginLoadError(ConfigError):
    """A plug-in source is broken; the message names the package and the entry point."""


@dataclass(frozen=True, slots=True)
class PluginKind(Generic[P]):
    """One kind of plug-in: its class, its entry-point group and its two settings."""

    noun: str  # "job", in messages
    cls: type[P]
    group: str  # the entry-point group
    references_setting: str  # more module:attribute references
    enabled_setting: str  # the names to keep
    error: type[PluginLoadError]
    example: str  # a reference, in messages

    def references(self, env: Env) -> tuple[str, ...]:
        """The references setting, each checked for form."""
        references = env_list(env, self.references_setting)
        for reference in references:
            if not REFERENCE.fullmatch(reference):
                raise ConfigError(f"{self.references_setting}: {reference!r} is not a "
                                  f"module:attribute reference (as {self.example})")
        return references

    def enabled(self, env: Env) -> frozenset[str] | None:
        """The enabled setting's names; None when it is empty (everything is enabled)."""
        names = env_list(env, self.enabled_setting)
        for name in names:
            if not NAME_PATTERN.fullmatch(name):
                raise ConfigError(f"{self.enabled_setting}: {name!r} is not a {self.noun} name")
        return frozenset(names) if names else None


@dataclass(frozen=True, slots=True)
class Registered(Generic[P]):
    plugin: P
    reference: str  # module:attribute, what a child process imports
    source: str  # where it came from, for messages


class Registry(Mapping[str, P]):
    """The enabled plug-ins of one kind by name; built by :func:`discover`, read-only."""

    def __init__(self, entries: Iterable[Registered[P]]) -> None:
        self._entries = {entry.plugin.name: entry for entry in entries}

    def __getitem__(self, name: str) -> P:
        return self._entries[name].plugin

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def reference(self, name: str) -> str:
        return self._entries[name].reference

    def source(self, name: str) -> str:
        return self._entries[name].source

    def describe(self) -> list[dict[str, Any]]:
        """Every plug-in as clients see it, by name."""
        return [self._entries[name].plugin.describe() for name in sorted(self._entries)]

    def import_paths(self) -> tuple[str, ...]:
        """Directories the plug-ins' modules were imported from that a fresh interpreter of
        this environment would not search (a ``PYTHONPATH`` entry, the current directory):
        a child process needs them to import its plug-in."""
        known = {sysconfig.get_path(key) for key in ("stdlib", "platstdlib", "purelib", "platlib")}
        paths: dict[str, None] = {}
        for entry in self._entries.values():
            root = _import_root(entry.reference.partition(":")[0])
            if root is not None and root not in known:
                paths[root] = None
        return tuple(paths)


def load(kind: PluginKind[P], reference: str) -> P:
    """The plug-in that ``module:attribute`` names. Any error the import raises
    propagates; :class:`TypeError` if the object is not of the kind's class."""
    target = _resolve(reference)
    if not isinstance(target, kind.cls):
        raise TypeError(f"{reference} is a {type(target).__name__}, not a "
                        f"warren.{kind.cls.__name__}")
    return target


def discover(
    kind: PluginKind[P], extra: Sequence[str] = (), enabled: Collection[str] | None = None,
    *, group: str | None = None, adapt: Callable[[P], P] | None = None,
) -> Registry[P]:
    """Every plug-in of the entry-point group (the kind's, or ``group``) and of the
    ``extra`` references, restricted to ``enabled`` (None: all), each passed through
    ``adapt`` (a deployment's limits, say). The kind's error if any source is broken."""
    group = group or kind.group
    noun, error = kind.noun, kind.error
    found: dict[str, Registered[P]] = {}

    def add(plugin: P, reference: str, source: str) -> None:
        if plugin.name in found:
            raise error(f"two sources offer the {noun} {plugin.name!r}: "
                        f"{found[plugin.name].source} and {source}; remove one of them")
        found[plugin.name] = Registered(adapt(plugin) if adapt else plugin, reference, source)

    # Every name is checked before anything is imported: a clash is reported as one.
    declared: dict[str, tuple[EntryPoint, str]] = {}
    for point in entry_points(group=group):
        source = _describe_entry_point(point)
        if point.name in declared:
            raise error(f"two sources offer the {noun} {point.name!r}: "
                        f"{declared[point.name][1]} and {source}; uninstall one of them")
        declared[point.name] = (point, source)
    for point, source in declared.values():
        if enabled is not None and point.name not in enabled:
            continue
        plugin = _load(kind, point.value, source)
        if plugin.name != point.name:
            raise error(f"{source} names the {noun} {plugin.name!r}: an entry point of "
                        f"{group} must be named after its {noun}")
        add(plugin, point.value, source)
    for reference in extra:
        add(_load(kind, reference, f"{kind.references_setting} entry {reference!r}"),
            reference, f"{kind.references_setting} entry {reference!r}")

    if enabled is not None:
        unknown = sorted(set(enabled) - set(found))
        if unknown:
            offered = ", ".join(sorted(set(declared) | set(found))) or "none"
            raise error(f"{kind.enabled_setting} names {', '.join(unknown)}, which no "
                        f"installed package offers ({noun}s found: {offered})")
        found = {name: entry for name, entry in found.items() if name in enabled}
    if not found:
        raise error(f"no {noun}s found: no installed distribution declares the entry-point "
                    f"group {group} (is Warren installed, 'pip install -e .'?) and "
                    f"{kind.references_setting} is empty")
    registry = Registry(found.values())
    log.info(f"{noun}s found", extra={f"{noun}s": sorted(registry)})
    return registry


def _resolve(reference: str) -> object:
    if not REFERENCE.fullmatch(reference):
        raise ValueError(f"{reference!r} is not a module:attribute reference")
    module_name, _, attribute = reference.partition(":")
    target: object = importlib.import_module(module_name)
    for part in attribute.split("."):
        target = getattr(target, part)
    return target


def _describe_entry_point(point: EntryPoint) -> str:
    dist = point.dist
    package = f"{dist.name} {dist.version}" if dist is not None else "an unknown distribution"
    return f"entry point {point.name!r} ({point.value}) of the package {package}"


def _load(kind: PluginKind[P], reference: str, source: str) -> P:
    if not REFERENCE.fullmatch(reference):
        raise kind.error(f"{source}: {reference!r} is not a module:attribute reference")
    try:
        target = _resolve(reference)
    except (Exception, SystemExit) as exc:  # whatever the module raises at import
        log.error(f"{kind.noun} source failed to load", extra={"source": source}, exc_info=exc)
        raise kind.error(f"{source} failed to load: {type(exc).__name__}: {exc}") from exc
    if not isinstance(target, kind.cls):
        raise kind.error(f"{source}: {reference} is a {type(target).__name__}, not a "
                         f"warren.{kind.cls.__name__}")
    return target


def _import_root(module_name: str) -> str | None:
    """The ``sys.path`` directory that ``module_name``'s top-level package came from."""
    top = sys.modules.get(module_name.partition(".")[0])
    if top is None:
        return None
    spec = top.__spec__
    if spec is not None and spec.submodule_search_locations:  # a package, perhaps a namespace
        return str(Path(next(iter(spec.submodule_search_locations))).parent)
    origin = getattr(top, "__file__", None)
    return str(Path(origin).parent) if origin else None
