"""RBAC and the audit log through the query API: each role against each resource, token and key handling, and an
audit log that matches the calls made (allowed, denied and failed)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import time

import jwt
import pytest

from k2.query import Client
from k2.query.api import shared_audit_log
from k2_resources.auth import ALGORITHM, ISSUER, Authorizer, AuthStore, Principal, issue_token, jwt_secret
from k2_resources.env import Settings, load_settings
from k2_resources.errors import (
    AuthenticationError,
    PermissionDeniedError,
    QueryError,
    TableNotFoundError,
    TokenExpiredError,
)
from tests.unit.query_seed import DAY, seed

ROLES = ("trader", "quant", "compliance", "admin")
TABLES = ("ticks", "bars_1m", "pnl", "quarantine", "raw_ticks", "audit_log")
RESOURCE = {
    "ticks": "market_data.ticks",
    "bars_1m": "market_data.bars",
    "pnl": "market_data.pnl",
    "quarantine": "market_data.quarantine",
    "raw_ticks": "market_data.raw_ticks",
    "audit_log": "market_data.audit_log",
}
# The design review's table: trader reads market data, quant also PnL, compliance everything, admin everything.
ALLOWED = {
    "trader": {"ticks", "bars_1m"},
    "quant": {"ticks", "bars_1m", "pnl"},
    "compliance": set(TABLES),
    "admin": set(TABLES),
}


@pytest.fixture
def governed(offline_lakehouse: Settings) -> Settings:
    seed(offline_lakehouse)
    shared_audit_log(offline_lakehouse).table()  # audit_log exists before anyone reads it
    return offline_lakehouse


def client(settings: Settings, role: str, user: str | None = None, ttl: float = 600) -> Client:
    token = issue_token(jwt_secret(settings), user or f"{role}-1", role, ttl)
    return Client(settings, token=token, client_address=f"test:{role}")


def audit_rows(settings: Settings) -> list[dict[str, object]]:
    result = client(settings, "compliance", "auditor").sql(
        "SELECT user_id, role, auth_method, action, resource, outcome, row_count, client_address "
        "FROM audit_log ORDER BY event_ts, event_id"
    )
    return result.pl().to_dicts()


def test_each_role_reads_exactly_the_tables_its_permissions_allow(governed: Settings) -> None:
    outcomes = {}
    for role in ROLES:
        c = client(governed, role)
        for table in TABLES:
            try:
                c.sql(f"SELECT count(*) AS n FROM {table}")
                outcomes[role, table] = "allowed"
            except PermissionDeniedError:
                outcomes[role, table] = "denied"
    expected = {(r, t): "allowed" if t in ALLOWED[r] else "denied" for r in ROLES for t in TABLES}
    assert outcomes == expected


def test_typed_reads_check_the_same_permissions(governed: Settings) -> None:
    trader = client(governed, "trader")
    assert trader.ticks(["BHP"], DAY, DAY.replace(hour=23, minute=59), route="iceberg").num_rows == 20
    assert trader.bars("1m", ["BHP", "CBA"]).num_rows == 6
    assert trader.latest(["CSL"], route="iceberg").pl()["sequence"].to_list() == [20]
    with pytest.raises(PermissionDeniedError):
        trader.sql("SELECT t.symbol FROM ticks t JOIN quarantine q USING (symbol)")  # one forbidden table is enough
    with pytest.raises(PermissionDeniedError):
        trader.sql("WITH audit_log AS (SELECT 1 AS x) SELECT * FROM market_data.audit_log")  # a CTE cannot hide it


def test_audit_log_matches_every_call_allowed_denied_or_failed(governed: Settings) -> None:
    trader = client(governed, "trader", "tina")
    quant = client(governed, "quant", "quinn")
    trader.ticks(["BHP"], DAY, DAY + dt.timedelta(seconds=10), route="iceberg")
    with pytest.raises(PermissionDeniedError):
        trader.sql("SELECT * FROM pnl")
    quant.sql("SELECT * FROM pnl")
    with pytest.raises(TableNotFoundError):
        quant.bars("5m", ["BHP"])

    rows = audit_rows(governed)
    assert [(r["user_id"], r["role"], r["action"], r["resource"], r["outcome"], r["row_count"]) for r in rows] == [
        ("tina", "trader", "ticks", "market_data.ticks", "allowed", 10),
        ("tina", "trader", "sql", "market_data.pnl", "denied", 0),
        ("quinn", "quant", "sql", "market_data.pnl", "allowed", 1),
        ("quinn", "quant", "bars", "market_data.bars", "error", 0),
    ]
    assert {r["auth_method"] for r in rows} == {"jwt"}
    assert {r["client_address"] for r in rows} == {"test:trader", "test:quant"}


def test_forged_expired_tampered_and_unsigned_tokens_are_refused_and_audited(governed: Settings) -> None:
    secret = jwt_secret(governed)
    now = int(time.time())
    claims = {"sub": "mallory", "role": "admin", "iss": ISSUER, "iat": now, "exp": now + 600}
    forged = jwt.encode(claims, "not-the-k2-secret-but-long-enough-0123456789", algorithm=ALGORITHM)
    expired = issue_token(secret, "eve", "trader", ttl_s=60, now=now - 3600)
    header, _payload, signature = issue_token(secret, "tom", "trader").split(".")
    tampered = ".".join([header, jwt.utils.base64url_encode(b'{"sub":"tom","role":"admin"}').decode(), signature])
    unsigned = jwt.encode(claims, key=None, algorithm="none")  # type: ignore[arg-type]
    unknown_role = jwt.encode({**claims, "role": "superuser"}, secret, algorithm=ALGORITHM)

    with pytest.raises(TokenExpiredError):
        Client(governed, token=expired)
    for bad in (forged, tampered, unsigned, unknown_role, "not.a.jwt"):
        with pytest.raises(AuthenticationError):
            Client(governed, token=bad)

    refused = [r for r in audit_rows(governed) if r["action"] == "authenticate"]
    assert len(refused) == 6
    assert {r["outcome"] for r in refused} == {"denied"}


def test_api_keys_identify_their_user_until_revoked(governed: Settings) -> None:
    store = AuthStore.from_settings(governed)
    key = store.create_api_key("quinn", "quant")
    c = Client(governed, api_key=key)
    assert c.principal == Principal("quinn", "quant", "api_key", key.split("_")[1])
    assert c.sql("SELECT count(*) AS n FROM pnl").pl()["n"].to_list() == [1]
    assert store.revoke_api_key(key.split("_")[1])
    with pytest.raises(AuthenticationError, match="revoked"):
        Client(governed, api_key=key)
    with pytest.raises(AuthenticationError):
        Client(governed, api_key=key[:-2] + "xx")


def test_nobody_can_delete_from_or_rewrite_the_audit_log(governed: Settings) -> None:
    admin = client(governed, "admin")
    for statement in ("DELETE FROM audit_log", "UPDATE audit_log SET outcome = 'allowed'", "DROP VIEW audit_log"):
        with pytest.raises(QueryError, match="only SELECT"):
            admin.sql(statement)
    authorizer = Authorizer(AuthStore.from_settings(governed))
    admin_p = Principal("root", "admin", "jwt")
    assert authorizer.allowed(admin_p, "market_data.audit_log", "read")
    for action in ("delete", "write", "*"):
        assert not authorizer.allowed(admin_p, "market_data.audit_log", action)
    assert authorizer.allowed(admin_p, "market_data.ticks", "delete")  # the rule is the audit log's alone


def test_table_functions_that_bypass_the_views_are_for_admins_only(governed: Settings) -> None:
    path = governed.home / "x.csv"
    path.write_text("a\n1\n")
    with pytest.raises(PermissionDeniedError, match=r"system\.table_functions"):
        client(governed, "compliance").sql(f"SELECT * FROM read_csv('{path}')")
    assert client(governed, "admin").sql(f"SELECT * FROM read_csv('{path}')").num_rows == 1


def test_a_granted_permission_takes_effect_for_new_clients(governed: Settings) -> None:
    store = AuthStore.from_settings(governed)
    with pytest.raises(PermissionDeniedError):
        client(governed, "trader").sql("SELECT * FROM quarantine")
    store.grant("trader", "market_data.quarantine", "read")
    assert client(governed, "trader").sql("SELECT * FROM quarantine").num_rows == 0


def test_prod_profile_refuses_a_caller_without_credentials(governed: Settings) -> None:
    prod = load_settings(
        {
            "K2_ENV": "prod",
            "K2_HOME": str(governed.home),
            "K2_KAFKA_BOOTSTRAP": "127.0.0.1:1",
            "K2_CATALOG_URI": governed.catalog_uri,
            "K2_WAREHOUSE": governed.warehouse,
            "K2_JWT_SECRET": "x" * 40,
        }
    )
    with pytest.raises(AuthenticationError, match="no credentials"):
        Client(prod)
    token = issue_token("x" * 40, "tina", "trader")
    assert Client(prod, token=token).principal.user == "tina"
    with pytest.raises(AuthenticationError):  # a token signed with the local secret is not valid in prod
        Client(prod, token=issue_token(jwt_secret(governed), "tina", "trader"))
    assert dataclasses.replace(prod.serving, jwt_secret=None).local_role is None
