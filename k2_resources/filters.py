"""Typed constructors for pyiceberg row filters (its pydantic-based expression classes confuse mypy)."""

from __future__ import annotations

import functools
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
