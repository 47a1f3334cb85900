"""Argument checks shared by the synthetic data generators: values from the command line arrive as whatever Hydra
parsed (``generator.width=wide`` is a string), so each is converted here and a bad one is a
:class:`GeneratorArgumentError` naming the argument."""

from __future__ import annotations

import math
import numbers
from typing import Any

from sparse3d.utils.errors import UserError


class GeneratorArgumentError(UserError, ValueError):
    """A generator argument out of range or of the wrong type (a :class:`UserError` and a ``ValueError``)."""


def whole(name: str, value: Any, minimum: int | None = None) -> int:
    """``value`` as an int (integral floats accepted, bools and text refused), at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) \
            or value != int(value):
        raise GeneratorArgumentError(f"{name} must be a whole number, got {value!r}")
    if minimum is not None and value < minimum:
        raise GeneratorArgumentError(f"{name} must be >= {minimum}, got {value!r}")
    return int(value)


def real(name: str, value: Any, minimum: float | None = None, positive: bool = False) -> float:
    """``value`` as a finite float, at least ``minimum`` (or > 0 with ``positive``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise GeneratorArgumentError(f"{name} must be a finite number, got {value!r}")
    if positive and not value > 0:
        raise GeneratorArgumentError(f"{name} must be > 0, got {value!r}")
    if minimum is not None and value < minimum:
        raise GeneratorArgumentError(f"{name} must be >= {minimum}, got {value!r}")
    return float(value)


def whole_list(name: str, values: Any) -> list[int]:
    """A list of whole numbers (any sequence that is not a string)."""
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise GeneratorArgumentError(f"{name} must be a list of whole numbers, got {values!r}")
    return [whole(f"{name}[{i}]", v) for i, v in enumerate(values)]
