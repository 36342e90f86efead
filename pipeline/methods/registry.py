"""The method registry: a method is one module that registers a kind (a name, a typed config
dataclass and a one-line description) with ``@register``; a run holds named *instances* of
kinds (``name -> kind + config``), so two settings of one kind run side by side.

One syntax serves a shell and a deployment parameter: a comma list of entries, each
``kind`` or ``name=kind:key=value:key=value`` (e.g. ``scd,cd,knockoff=scd:infill=knockoff``),
given as one string or as a list of such strings.

Run-wide options (``--samples``, ``--iterations``, ``--mask-size``, ``--infill``,
``--stop-change``, ``--concepts``) reach only the kinds that declare them in ``run_options``
(FIDO's ``scd`` and ``cd``; the concept methods' ``--concepts``); every other kind keeps its own defaults and takes ``name=kind:key=value``, so that a
value meant for FIDO never silently replaces, say, I-GOS's 15 steps or RISE's in-fill.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from fidoflow.pipeline.methods.base import Method

NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")  # a Zarr group and a table value: keep it plain


FIDO_OPTIONS = ("samples", "iterations", "mask_size", "infill", "stop_change")  # FIDO's budget
RUN_OPTIONS = (*FIDO_OPTIONS, "concepts")


@dataclass(frozen=True)
class Kind:
    """A registered kind of method: its class, config dataclass, description, the config
    values that differ from the dataclass defaults for this kind (e.g. ``cd``'s sampler) and
    the run-wide options that reach it."""

    name: str
    method: type[Method]
    config: type
    description: str
    defaults: Mapping[str, Any]
    run_options: tuple[str, ...] = ()

    def make_config(self, settings: Mapping[str, Any] | None = None) -> Any:
        """The kind's config with ``settings`` (field -> value, checked and coerced) applied."""
        fields = {f.name for f in dataclasses.fields(self.config)}
        unknown = sorted(set(settings or {}) - fields)
        if unknown:
            raise ValueError(f"method {self.name!r} has no setting {', '.join(unknown)}; "
                             f"settings: {', '.join(sorted(fields))}")
        hints = typing.get_type_hints(self.config)
        values = {**self.defaults, **{k: coerce(v, hints[k], f"{self.name}:{k}")
                                      for k, v in (settings or {}).items()}}
        return self.config(**values)


KINDS: dict[str, Kind] = {}


def register(name: str, config: type, description: str, run_options: tuple[str, ...] = (),
             **defaults: Any) -> Callable[[type[Method]], type[Method]]:
    """Class decorator: make ``name`` a method kind run by the decorated class; the run-wide
    options in ``run_options`` (of ``RUN_OPTIONS``) set its config fields of the same names."""
    unknown = set(run_options) - set(RUN_OPTIONS)
    if unknown:
        raise ValueError(f"{name}: no run-wide option {', '.join(sorted(unknown))}")

    def add(cls: type[Method]) -> type[Method]:
        if name in KINDS:
            raise ValueError(f"method kind {name!r} registered twice")
        KINDS[name] = Kind(name, cls, config, description, dict(defaults), tuple(run_options))
        return cls
    return add


def kinds_taking(option: str) -> list[str]:
    """The kinds a run-wide option reaches (for ``--help`` and ``fidoflow methods``)."""
    return sorted(k.name for k in KINDS.values() if option in k.run_options)


def kind(name: str) -> Kind:
    try:
        return KINDS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; registered: {', '.join(sorted(KINDS))}"
                         " (fidoflow methods lists them)") from None


@dataclass(frozen=True)
class MethodSpec:
    """A method instance of a run: its kind and its config (a dataclass of that kind)."""

    kind: str
    config: Any

    def build(self, model: nn.Module) -> Method:
        return kind(self.kind).method(model, self.config)

    @property
    def map_names(self) -> tuple[str, ...]:
        return kind(self.kind).method.map_names

    @property
    def reads_layers(self) -> bool:
        """Whether it needs the classifier's named layers (``Method.reads_layers``)."""
        return kind(self.kind).method.reads_layers

    @property
    def table(self) -> str | None:
        """The run-folder table its extra rows go to (``Method.table``), if any."""
        return kind(self.kind).method.table

    @property
    def passes(self) -> float:
        """Classifier passes explaining one image costs (``Method.passes``)."""
        return kind(self.kind).method.passes(self.config)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "config": dataclasses.asdict(self.config)}

    @classmethod
    def from_json(cls, record: Mapping[str, Any]) -> MethodSpec:
        spec = kind(record["kind"])
        return cls(spec.name, spec.config(**record.get("config", {})))


def parse_methods(entries: str | Iterable[str],
                  overrides: Mapping[str, Any] | None = None) -> dict[str, MethodSpec]:
    """Method instances from ``"scd,cd,knockoff=scd:infill=knockoff"`` (or a list of such
    strings). ``overrides`` (the run-wide options, e.g. the CLI's ``--iterations``) apply to
    the instances whose kind takes them (``run_options``); an entry's own settings win."""
    if isinstance(entries, str):
        entries = [entries]
    methods: dict[str, MethodSpec] = {}
    for entry in (e.strip() for chunk in entries for e in str(chunk).split(",")):
        if not entry:
            continue
        head, *pairs = entry.split(":")
        name, _, kind_name = head.partition("=") if "=" in head else (head, "", head)
        name, kind_name = name.strip(), kind_name.strip()
        if not NAME.match(name):
            raise ValueError(f"method name {name!r}: use lower-case letters, digits, - and _")
        if name in methods:
            raise ValueError(f"method {name!r} given twice; name a variant: other={kind_name}:...")
        spec = kind(kind_name)
        settings = {k: v for k, v in (overrides or {}).items()
                    if v is not None and k in spec.run_options}
        for pair in pairs:
            key, sep, value = pair.partition("=")
            if not sep:
                raise ValueError(f"method {entry!r}: expected key=value after ':', got {pair!r}")
            settings[key.strip()] = literal(value.strip())
        methods[name] = MethodSpec(kind_name, spec.make_config(settings))
    if not methods:
        raise ValueError("no method given")
    return methods


def literal(text: str) -> Any:
    """A setting's value as written: none/true/false, an int, a float, else the text."""
    lowered = text.lower()
    if lowered in ("none", "null"):
        return None
    if lowered in ("true", "false"):
        return lowered == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def coerce(value: Any, hint: Any, where: str) -> Any:
    """``value`` as the config field's type (int -> float, numbers -> str where text is
    expected, lists -> tuples), or a one-line error."""
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if value is None:
        if type(None) in options:
            return None
        raise ValueError(f"{where} cannot be none")
    for option in options:
        origin = typing.get_origin(option) or option
        if origin is bool and isinstance(value, bool):
            return value
        if origin is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if origin is float and isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if origin is tuple and isinstance(value, list | tuple):
            return tuple(value)
        if origin is str:
            return str(value)
    raise ValueError(f"{where} = {value!r} is not a {hint}")


def describe() -> list[dict[str, Any]]:
    """Every registered kind: name, description, default config and the run-wide options that
    reach it (for ``fidoflow methods``)."""
    return [{"kind": k.name, "description": k.description, "run_options": list(k.run_options),
             "defaults": dataclasses.asdict(k.make_config())} for k in sorted(
                 KINDS.values(), key=lambda k: k.name)]
