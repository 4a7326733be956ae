"""Printing query results as terminal tables."""

from __future__ import annotations

import polars as pl
from rich.console import Console
from rich.table import Table


def print_frame(console: Console, frame: pl.DataFrame, title: str | None = None) -> None:
    table = Table(title=title, show_lines=False)
    for name in frame.columns:
        table.add_column(name, overflow="fold")
    for row in frame.iter_rows():
        table.add_row(*["" if v is None else str(v) for v in row])
    console.print(table)
