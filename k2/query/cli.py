"""`k2 query ...`, `k2 auth ...`, `k2 audit ...`: the CLI face of k2.query and k2_resources.auth.

`k2 query "SELECT ..."` (SQL as the first argument) still works: it is `k2 query sql "SELECT ..."`.
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from typer.core import TyperGroup

from k2_resources.env import load_settings
from k2_resources.errors import PermissionDeniedError

if TYPE_CHECKING:  # the heavy modules load when a command runs, not when `k2 --help` does
    import polars as pl

    from k2.query.api import Client, QueryResult

ROLES_HELP = "trader | quant | compliance | admin"

console = Console(width=None if sys.stdout.isatty() else 200)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 200)


class _SqlByDefault(TyperGroup):
    """A first argument that is not a subcommand is SQL: `k2 query "SELECT 1"` == `k2 query sql "SELECT 1"`."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["sql", *args]
        return super().parse_args(ctx, args)


query_app = typer.Typer(
    cls=_SqlByDefault,
    help='Read market data: `k2 query ticks|bars|latest|asof|sql`, or `k2 query "SELECT ..."`.',
    no_args_is_help=True,
)
auth_app = typer.Typer(help="Tokens, API keys and role permissions.", no_args_is_help=True)
apikey_app = typer.Typer(help="API keys (stored hashed in the catalog database).", no_args_is_help=True)
auth_app.add_typer(apikey_app, name="apikey")
audit_app = typer.Typer(help="The append-only audit log of every read.", no_args_is_help=True)

Token = Annotated[str | None, typer.Option("--token", help="JWT (default: K2_TOKEN)")]
ApiKey = Annotated[str | None, typer.Option("--api-key", help="API key (default: K2_API_KEY)")]
AsOf = Annotated[str | None, typer.Option("--as-of", help="Snapshot id, tag name or ISO time to read as of")]
Format = Annotated[str, typer.Option("--format", help="table | csv | json | parquet")]
Limit = Annotated[int, typer.Option(help="Most rows to print (table/csv/json)")]
Output = Annotated[Path | None, typer.Option("--output", "-o", help="Write all rows to this file instead")]
Start = Annotated[str | None, typer.Option(help="Start time, ISO 8601 (UTC if no offset)")]
End = Annotated[str | None, typer.Option(help="End time (exclusive), ISO 8601")]


def client(token: str | None, api_key: str | None) -> Client:
    from k2.query.api import Client

    return Client(load_settings(), token=token, api_key=api_key, client_address=f"cli:{socket.gethostname()}")


def _freshness_line(result: QueryResult) -> str:
    f = result.freshness
    parts = []
    for p in f.parts:
        where = f"@{p.snapshot_id}" if p.snapshot_id is not None else ""
        if p.offsets:
            where = " offsets " + ",".join(f"{k}:[{lo},{hi})" for k, (lo, hi) in sorted(p.offsets.items()))
        parts.append(f"{p.source} {p.name}{where}: {p.rows} rows")
    extra = f"; as of {f.as_of}" if f.as_of else ""
    extra += "; cached" if f.cached else ""
    extra += f"; KAFKA UNAVAILABLE ({f.kafka_error})" if f.kafka_error else ""
    extra += f"; {f.lag_records} records past the watermark" if f.route == "hybrid" else ""
    return f"{result.num_rows} rows in {result.elapsed_s * 1000:.0f} ms via {f.route}: " + "; ".join(parts) + extra


def emit(result: QueryResult, fmt: str, limit: int, output: Path | None, c: Client | None = None) -> None:
    from k2.display import print_frame

    try:
        frame = result.pl()
        if output is not None:
            writers: dict[str, Any] = {
                "csv": frame.write_csv, "json": frame.write_ndjson, "parquet": frame.write_parquet,
            }  # fmt: skip
            writers.get(fmt, frame.write_parquet)(output)
            err_console.print(f"wrote {frame.height} rows to {output}")
        elif fmt == "csv":
            sys.stdout.write(_printable(frame.head(limit)).write_csv())
        elif fmt == "json":
            sys.stdout.write(frame.head(limit).write_json() + "\n")
        else:
            print_frame(console, frame.head(limit))
            err_console.print(_freshness_line(result), style="dim")
    finally:
        if c is not None:
            c.audit_log.flush_quietly()


def _printable(frame: pl.DataFrame) -> pl.DataFrame:
    """CSV has no nested types: lists become `a|b`, structs JSON."""
    import polars as pl

    lists = [n for n, t in frame.schema.items() if isinstance(t, pl.List)]
    structs = [n for n, t in frame.schema.items() if isinstance(t, pl.Struct)]
    return frame.with_columns(
        *(pl.col(n).cast(pl.List(pl.String)).list.join("|") for n in lists),
        *(pl.col(n).struct.json_encode() for n in structs),
    )


@query_app.command("sql")
def sql_cmd(
    sql: Annotated[str, typer.Argument(help="One SELECT over the views (ticks, bars_1m, quarantine, ...)")],
    limit: Limit = 50,
    fmt: Format = "table",
    output: Output = None,
    as_of: AsOf = None,
    token: Token = None,
    api_key: ApiKey = None,
) -> None:
    """Run SQL with DuckDB over the Iceberg tables."""
    c = client(token, api_key)
    emit(c.sql(sql, as_of=as_of), fmt, limit, output, c)


@query_app.command("ticks")
def ticks_cmd(
    symbols: Annotated[list[str] | None, typer.Argument(help="Symbols (default: all)")] = None,
    start: Start = None,
    end: End = None,
    route: Annotated[str, typer.Option(help="auto | iceberg | kafka")] = "auto",
    limit: Limit = 50,
    fmt: Format = "table",
    output: Output = None,
    as_of: AsOf = None,
    token: Token = None,
    api_key: ApiKey = None,
) -> None:
    """Validated ticks in [start, end) (default: the last 60 s), the newest straight from Kafka."""
    c = client(token, api_key)
    emit(c.ticks(symbols, start, end, as_of=as_of, route=route), fmt, limit, output, c)


@query_app.command("bars")
def bars_cmd(
    symbols: Annotated[list[str] | None, typer.Argument(help="Symbols (default: all)")] = None,
    interval: Annotated[str, typer.Option(help="1m | 5m | 1h | 1d")] = "1m",
    start: Start = None,
    end: End = None,
    limit: Limit = 50,
    fmt: Format = "table",
    output: Output = None,
    as_of: AsOf = None,
    token: Token = None,
    api_key: ApiKey = None,
) -> None:
    """OHLCV bars of one interval."""
    c = client(token, api_key)
    emit(c.bars(interval, symbols, start, end, as_of=as_of), fmt, limit, output, c)


@query_app.command("latest")
def latest_cmd(
    symbols: Annotated[list[str] | None, typer.Argument(help="Symbols (default: all)")] = None,
    route: Annotated[str, typer.Option(help="auto | iceberg | kafka")] = "auto",
    limit: Limit = 50,
    fmt: Format = "table",
    as_of: AsOf = None,
    token: Token = None,
    api_key: ApiKey = None,
) -> None:
    """The newest tick of each symbol."""
    c = client(token, api_key)
    emit(c.latest(symbols, as_of=as_of, route=route), fmt, limit, None, c)


@query_app.command("asof")
def asof_cmd(
    trades: Annotated[Path, typer.Argument(help="CSV or Parquet file of trades (columns: symbol, ts, ...)")],
    right: Annotated[str, typer.Option(help="ticks or bars_<interval>")] = "bars_1m",
    by: Annotated[str, typer.Option(help="Symbol column of the trades")] = "symbol",
    on: Annotated[str, typer.Option(help="Time column of the trades")] = "ts",
    limit: Limit = 50,
    fmt: Format = "table",
    output: Output = None,
    as_of: AsOf = None,
    token: Token = None,
    api_key: ApiKey = None,
) -> None:
    """ASOF-join trades to the last tick or closed bar known at each trade's time."""
    import polars as pl

    frame = pl.read_parquet(trades) if trades.suffix == ".parquet" else pl.read_csv(trades, try_parse_dates=True)
    dtype = frame.schema.get(on)
    if isinstance(dtype, pl.Datetime) and dtype.time_zone is None:
        frame = frame.with_columns(pl.col(on).dt.replace_time_zone("UTC"))
    c = client(token, api_key)
    emit(c.asof_join(frame, right, by=by, on=on, as_of=as_of), fmt, limit, output, c)


# ---- auth ------------------------------------------------------------------------------------------------------


def _require_admin(token: str | None, api_key: str | None, what: str) -> Client:
    c = client(token, api_key)
    if not c.authorizer.allowed(c.principal, "system.auth", "admin"):
        raise PermissionDeniedError(f"{c.principal.user} (role {c.principal.role}) may not {what}: admins only")
    return c


@auth_app.command("token")
def token_cmd(
    user: Annotated[str, typer.Option(help="User the token identifies")],
    role: Annotated[str, typer.Option(help=ROLES_HELP)],
    ttl: Annotated[float, typer.Option(help="Lifetime in seconds")] = 8 * 3600,
    token: Token = None,
    api_key: ApiKey = None,
) -> None:
    """Issue a signed JWT (HS256) for USER with ROLE (admins only)."""
    from k2_resources.auth import issue_token, jwt_secret

    _require_admin(token, api_key, "issue tokens")
    sys.stdout.write(issue_token(jwt_secret(load_settings()), user, role, ttl) + "\n")


@auth_app.command("whoami")
def whoami_cmd(token: Token = None, api_key: ApiKey = None) -> None:
    """Who the given credentials identify."""
    p = client(token, api_key).principal
    console.print(f"{p.user} role={p.role} via {p.method}")


@auth_app.command("permissions")
def permissions_cmd() -> None:
    """The role permission table."""
    import polars as pl

    from k2.display import print_frame
    from k2_resources.auth import AuthStore

    rows = sorted(AuthStore.from_settings(load_settings()).permissions())
    print_frame(console, pl.DataFrame(rows, schema=["role", "resource", "action"], orient="row"))


@auth_app.command("grant")
def grant_cmd(role: str, resource: str, action: str, token: Token = None, api_key: ApiKey = None) -> None:
    """Let ROLE do ACTION on RESOURCE (e.g. `k2 auth grant trader market_data.quarantine read`). Admins only."""
    _require_admin(token, api_key, "change permissions").store.grant(role, resource, action)
    console.print(f"granted {role} {action} {resource}")


@auth_app.command("revoke")
def revoke_cmd(role: str, resource: str, action: str, token: Token = None, api_key: ApiKey = None) -> None:
    """Withdraw a permission. Admins only."""
    _require_admin(token, api_key, "change permissions").store.revoke(role, resource, action)
    console.print(f"revoked {role} {action} {resource}")


@apikey_app.command("create")
def apikey_create_cmd(
    user: Annotated[str, typer.Option(help="User the key identifies")],
    role: Annotated[str, typer.Option(help=ROLES_HELP)],
    token: Token = None,
    api_key: ApiKey = None,
) -> None:
    """Create an API key (printed once; only its hash is kept). Admins only."""
    c = _require_admin(token, api_key, "create API keys")
    sys.stdout.write(c.store.create_api_key(user, role) + "\n")


@apikey_app.command("revoke")
def apikey_revoke_cmd(key_id: str, token: Token = None, api_key: ApiKey = None) -> None:
    """Revoke an API key by its id (the part after `k2_`). Admins only."""
    done = _require_admin(token, api_key, "revoke API keys").store.revoke_api_key(key_id)
    console.print("revoked" if done else "no such active key")


# ---- audit ------------------------------------------------------------------------------------------------------


@audit_app.command("show")
def audit_show_cmd(
    user: Annotated[str | None, typer.Option(help="Only this user")] = None,
    outcome: Annotated[str | None, typer.Option(help="allowed | denied | error")] = None,
    limit: Limit = 50,
    fmt: Format = "table",
    token: Token = None,
    api_key: ApiKey = None,
) -> None:
    """The newest audit events (compliance and admin)."""
    clauses = [
        f"{col} = '{val.replace(chr(39), chr(39) * 2)}'"
        for col, val in (("user_id", user), ("outcome", outcome))
        if val
    ]
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    c = client(token, api_key)
    emit(c.sql(f"SELECT * FROM audit_log {where} ORDER BY event_ts DESC LIMIT {int(limit)}"), fmt, limit, None, c)


@audit_app.command("flush")
def audit_flush_cmd() -> None:
    """Move spooled audit events into the audit_log table now."""
    from k2.query.api import shared_audit_log

    moved = shared_audit_log(load_settings()).flush()
    console.print(f"{moved} audit events committed to audit_log")
