"""How a configuration record (a frozen dataclass of settings) is checked, and
converted to and from the plain ``dict`` a model file carries."""

from __future__ import annotations

import dataclasses
import math
import numbers
import sys
from typing import Any, TypeVar

import numpy as np

from .errors import ConfigError

T = TypeVar("T")


def to_dict(record: Any) -> dict:
    """A plain ``dict`` of a config record (nested records become dicts too)."""
    return dataclasses.asdict(record)


def from_dict(cls: type[T], data: dict | None) -> T:
    """Build ``cls`` from ``data``, ignoring keys that ``cls`` does not know.

    Unknown keys are dropped so that files written by newer versions still load;
    missing keys take the field defaults.
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{cls.__name__} needs a mapping of settings, got {type(data).__name__}")
    data = dict(data)
    names = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            continue
        if isinstance(value, list):
            value = tuple(value)
        kwargs[key] = value
    return cls(**kwargs)


def with_overrides(record: T, overrides: dict) -> T:
    """``record`` (a settings dataclass) with some fields replaced; unknown names are
    refused by name, with the known ones."""
    known = {field.name for field in dataclasses.fields(record)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ConfigError(
            f"unknown {type(record).__name__} setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )
    return dataclasses.replace(record, **overrides)


def check_types(record: Any) -> None:
    """Refuse field values of the wrong type, read off the field annotations.

    ``int`` fields take integers (not ``bool``), ``float`` fields take finite real
    numbers, ``bool`` fields take booleans, ``str`` fields strings, tuples of strings
    tuples of strings; ``| None`` allows ``None``. Nested records must be instances of
    their class. A hostile value (a string, a list, NaN) thus never reaches the
    range checks, where it would raise ``TypeError`` or slip through a comparison.
    Numpy scalars are accepted and stored as the Python numbers they equal.
    """
    for spec in dataclasses.fields(record):
        value = getattr(record, spec.name)
        kinds = {part.strip() for part in str(spec.type).split("|")}
        if value is None and "None" in kinds:
            continue
        if "tuple[int, ...]" in kinds and isinstance(value, (tuple, list)):  # one size per axis
            if not all(isinstance(item, numbers.Integral) and not isinstance(item, bool) for item in value):
                raise ConfigError(f"{type(record).__name__}.{spec.name} must be whole numbers, got {value!r}")
            object.__setattr__(record, spec.name, tuple(int(item) for item in value))
            continue
        if "int" in kinds:
            ok, wanted = isinstance(value, numbers.Integral) and not isinstance(value, bool), "an integer"
        elif "float" in kinds:
            ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
            wanted = "a finite number"
        elif "bool" in kinds:
            ok, wanted = isinstance(value, (bool, np.bool_)), "true or false"
        elif "str" in kinds:
            ok, wanted = isinstance(value, str), "a string"
        elif "tuple[str, ...]" in kinds:
            ok = isinstance(value, tuple) and all(isinstance(item, str) for item in value)
            wanted = "a list of strings"
        else:
            cls = vars(sys.modules[type(record).__module__]).get(spec.type)  # a nested record's class
            ok, wanted = cls is None or isinstance(value, cls), f"{spec.type} settings"
        if not ok:
            raise ConfigError(f"{type(record).__name__}.{spec.name} must be {wanted}, got {value!r}")
        for kind, convert in (("int", int), ("float", float), ("bool", bool)):
            if kind in kinds and type(value) is not convert:  # numpy scalars become Python's (JSON-able)
                object.__setattr__(record, spec.name, convert(value))
                break
