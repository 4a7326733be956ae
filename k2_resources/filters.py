"""Typed constructors for pyiceberg row filters (its pydantic-based expression classes confuse mypy)."""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any

from pyiceberg import expressions as ex
from pyiceberg.expressions import BooleanExpression


def eq(column: str, value: Any) -> BooleanExpression:
    return ex.EqualTo(column, value)  # type: ignore[call-arg, arg-type]


def ge(column: str, value: Any) -> BooleanExpression:
    return ex.GreaterThanOrEqual(column, value)  # type: ignore[call-arg, arg-type]


def lt(column: str, value: Any) -> BooleanExpression:
    return ex.LessThan(column, value)  # type: ignore[call-arg, arg-type]


def all_of(*clauses: BooleanExpression) -> BooleanExpression:
    return functools.reduce(ex.And, clauses)


def any_of(clauses: list[BooleanExpression]) -> BooleanExpression:
    if not clauses:
        return ex.AlwaysFalse()
    return functools.reduce(ex.Or, clauses)


def is_in(column: str, values: Iterable[Any]) -> BooleanExpression:
    """Set membership; an empty set matches nothing."""
    items = list(values)
    if not items:
        return ex.AlwaysFalse()
    return ex.In(column, items)  # type: ignore[call-arg, arg-type]


def is_null(column: str) -> BooleanExpression:
    return ex.IsNull(column)  # type: ignore[call-arg, arg-type]
