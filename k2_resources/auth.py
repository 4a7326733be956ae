"""Who is asking and what they may read.

Callers are identified by a signed token (JWT, HS256, with the secret K2_JWT_SECRET) or by an API key. Roles and
their permissions live in the catalog database (SQLite locally, PostgreSQL in prod), in tables next to the Iceberg
catalog's own, seeded with the design review's permission table:

    trader      read  market_data.ticks, market_data.bars
    quant       read  market_data.ticks, market_data.bars, market_data.pnl; write market_data.tags
    compliance  read  *                    (everything, the audit log included)
    admin       *     *

The audit log is append-only whatever the table says: no role may do anything to it but read (K2 appends).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import os
import pwd
import secrets
import threading
import time
import uuid
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import jwt
import sqlalchemy as sa

from k2_resources.env import Settings
from k2_resources.errors import AuthenticationError, ConfigurationError, PermissionDeniedError, TokenExpiredError

ROLES = ("trader", "quant", "compliance", "admin")
ANY = "*"
ISSUER = "k2"
ALGORITHM = "HS256"
MIN_SECRET_LENGTH = 32
API_KEY_PREFIX = "k2_"

# (role, resource, action). Resource names are <namespace>.<resource>; bars_1m..bars_1d share `bars`.
DEFAULT_PERMISSIONS: tuple[tuple[str, str, str], ...] = (
    ("trader", "market_data.ticks", "read"),
    ("trader", "market_data.bars", "read"),
    ("quant", "market_data.ticks", "read"),
    ("quant", "market_data.bars", "read"),
    ("quant", "market_data.pnl", "read"),
    ("quant", "market_data.tags", "write"),
    ("compliance", ANY, "read"),
    ("admin", ANY, ANY),
)
APPEND_ONLY_TABLES = frozenset({"audit_log"})

_metadata = sa.MetaData()
_ensure_lock = threading.Lock()
PERMISSIONS = sa.Table(
    "k2_rbac_permissions",
    _metadata,
    sa.Column("role", sa.String(64), primary_key=True),
    sa.Column("resource", sa.String(255), primary_key=True),
    sa.Column("action", sa.String(64), primary_key=True),
)
API_KEYS = sa.Table(
    "k2_rbac_api_keys",
    _metadata,
    sa.Column("key_id", sa.String(32), primary_key=True),
    sa.Column("key_hash", sa.String(64), nullable=False),
    sa.Column("user_id", sa.String(255), nullable=False),
    sa.Column("role", sa.String(64), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
)


@dataclass(frozen=True)
class Principal:
    """An authenticated caller."""

    user: str
    role: str
    method: str  # jwt | api_key | local
    token_id: str | None = None


def resource_for_table(namespace: str, table: str) -> str:
    """The permission resource a table belongs to: every bars_<interval> table is `<namespace>.bars`."""
    return f"{namespace}.bars" if table.startswith("bars_") else f"{namespace}.{table}"


@cache
def _engine(uri: str) -> sa.Engine:
    # SQLite serialises writers: under load (many readers spooling audit events while the catalog commits) wait up
    # to 60 s for the lock instead of the driver's 5 s.
    connect_args = {"timeout": 60} if uri.startswith("sqlite") else {}
    return sa.create_engine(uri, pool_pre_ping=True, connect_args=connect_args)


class AuthStore:
    """Permissions and API keys in the catalog database."""

    def __init__(self, catalog_uri: str) -> None:
        self.engine = _engine(catalog_uri)
        self._ready = False

    @classmethod
    def from_settings(cls, settings: Settings) -> AuthStore:
        if settings.catalog_uri.startswith("sqlite:///"):
            Path(settings.catalog_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        return cls(settings.catalog_uri)

    def ensure(self) -> None:
        """Create the tables and seed the review's permission table once (later grants and revokes stick)."""
        if self._ready:
            return
        with _ensure_lock:
            self._ensure_locked()

    def _ensure_locked(self) -> None:
        if self._ready:
            return
        _metadata.create_all(self.engine)
        with self.engine.begin() as con:
            if con.execute(sa.select(sa.func.count()).select_from(PERMISSIONS)).scalar_one() == 0:
                con.execute(
                    PERMISSIONS.insert(),
                    [{"role": r, "resource": res, "action": a} for r, res, a in DEFAULT_PERMISSIONS],
                )
        self._ready = True

    def permissions(self) -> set[tuple[str, str, str]]:
        self.ensure()
        with self.engine.connect() as con:
            return {(r.role, r.resource, r.action) for r in con.execute(sa.select(PERMISSIONS))}

    def grant(self, role: str, resource: str, action: str) -> None:
        _check_role(role)
        self.ensure()
        with self.engine.begin() as con:
            exists = con.execute(
                sa.select(PERMISSIONS).where(
                    PERMISSIONS.c.role == role, PERMISSIONS.c.resource == resource, PERMISSIONS.c.action == action
                )
            ).first()
            if exists is None:
                con.execute(PERMISSIONS.insert().values(role=role, resource=resource, action=action))

    def revoke(self, role: str, resource: str, action: str) -> None:
        self.ensure()
        with self.engine.begin() as con:
            con.execute(
                PERMISSIONS.delete().where(
                    PERMISSIONS.c.role == role, PERMISSIONS.c.resource == resource, PERMISSIONS.c.action == action
                )
            )

    def create_api_key(self, user: str, role: str) -> str:
        """A new key for `user`; only its hash is stored, so the returned string is the only copy."""
        _check_role(role)
        self.ensure()
        key_id = uuid.uuid4().hex[:16]
        key = f"{API_KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
        with self.engine.begin() as con:
            con.execute(
                API_KEYS.insert().values(
                    key_id=key_id, key_hash=_hash(key), user_id=user, role=role, created_at=dt.datetime.now(dt.UTC)
                )
            )
        return key

    def revoke_api_key(self, key_id: str) -> bool:
        self.ensure()
        with self.engine.begin() as con:
            done = con.execute(
                API_KEYS.update()
                .where(API_KEYS.c.key_id == key_id, API_KEYS.c.revoked_at.is_(None))
                .values(revoked_at=dt.datetime.now(dt.UTC))
            )
            return bool(done.rowcount)

    def principal_for_key(self, key: str) -> Principal:
        parts = key.removeprefix(API_KEY_PREFIX).split("_", 1)
        if not key.startswith(API_KEY_PREFIX) or len(parts) != 2:
            raise AuthenticationError("malformed API key: expected k2_<id>_<secret> as printed by `k2 auth apikey`")
        self.ensure()
        with self.engine.connect() as con:
            row = con.execute(sa.select(API_KEYS).where(API_KEYS.c.key_id == parts[0])).first()
        if row is None or not hmac.compare_digest(row.key_hash, _hash(key)):
            raise AuthenticationError("unknown API key: ask an admin for one (`k2 auth apikey create`)")
        if row.revoked_at is not None:
            raise AuthenticationError(f"API key {parts[0]} was revoked at {row.revoked_at}")
        return Principal(user=row.user_id, role=row.role, method="api_key", token_id=parts[0])


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise ConfigurationError(f"unknown role {role!r}: use one of {', '.join(ROLES)}")


def jwt_secret(settings: Settings) -> str:
    """The configured secret; locally, one generated once into <K2_HOME>/auth/jwt.secret (mode 0600)."""
    secret = settings.serving.jwt_secret
    if secret is None:
        if settings.env != "local":
            raise ConfigurationError("K2_ENV=prod needs K2_JWT_SECRET (at least 32 characters) to verify tokens")
        path = settings.home / "auth" / "jwt.secret"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_urlsafe(48))
        secret = path.read_text().strip()
    if len(secret) < MIN_SECRET_LENGTH:
        raise ConfigurationError(f"K2_JWT_SECRET must be at least {MIN_SECRET_LENGTH} characters for HS256")
    return secret


def issue_token(secret: str, user: str, role: str, ttl_s: float = 3600.0, now: float | None = None) -> str:
    _check_role(role)
    issued = int(now if now is not None else time.time())
    claims = {
        "sub": user,
        "role": role,
        "iss": ISSUER,
        "iat": issued,
        "exp": issued + int(ttl_s),
        "jti": uuid.uuid4().hex,
    }
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def verify_token(secret: str, token: str) -> Principal:
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],
            issuer=ISSUER,
            options={"require": ["sub", "role", "exp", "iat", "iss"]},
        )
    except jwt.ExpiredSignatureError as exc:
        raise TokenExpiredError("the token has expired: ask an admin for a new one (`k2 auth token`)") from exc
    except jwt.InvalidTokenError as exc:
        raise AuthenticationError(f"the token was refused ({type(exc).__name__}: {exc})") from exc
    role = str(claims["role"])
    if role not in ROLES:
        raise AuthenticationError(f"the token names an unknown role {role!r}")
    return Principal(user=str(claims["sub"]), role=role, method="jwt", token_id=str(claims.get("jti") or ""))


def local_user() -> str:
    return pwd.getpwuid(os.getuid()).pw_name


def authenticate(
    settings: Settings, *, token: str | None = None, api_key: str | None = None, store: AuthStore | None = None
) -> Principal:
    """The caller behind a token or API key (explicit arguments first, then K2_TOKEN / K2_API_KEY). With neither,
    the local profile's K2_LOCAL_ROLE applies to the OS user; in prod that is refused."""
    token = token or settings.serving.token
    api_key = api_key or settings.serving.api_key
    if token:
        return verify_token(jwt_secret(settings), token)
    if api_key:
        return (store or AuthStore.from_settings(settings)).principal_for_key(api_key)
    role = settings.serving.local_role
    if role is None:
        raise AuthenticationError("no credentials: pass --token / --api-key (or set K2_TOKEN / K2_API_KEY)")
    _check_role(role)
    return Principal(user=f"local:{local_user()}", role=role, method="local")


class Authorizer:
    """Permission checks against the stored table (re-read at most every `refresh_s` seconds)."""

    def __init__(self, store: AuthStore, namespace: str = "market_data", refresh_s: float = 30.0) -> None:
        self.store = store
        self.namespace = namespace
        self.refresh_s = refresh_s
        self._lock = threading.Lock()
        self._loaded_at = -1e18
        self._permissions: set[tuple[str, str, str]] = set()

    def invalidate(self) -> None:
        with self._lock:
            self._loaded_at = -1e18

    def _table(self) -> set[tuple[str, str, str]]:
        with self._lock:
            if time.monotonic() - self._loaded_at > self.refresh_s:
                self._permissions = self.store.permissions()
                self._loaded_at = time.monotonic()
            return self._permissions

    def allowed(self, principal: Principal, resource: str, action: str) -> bool:
        if resource in {f"{self.namespace}.{t}" for t in APPEND_ONLY_TABLES} and action != "read":
            return False
        return any(
            role == principal.role and res in (resource, ANY) and act in (action, ANY)
            for role, res, act in self._table()
        )

    def check(self, principal: Principal, resource: str, action: str) -> None:
        if not self.allowed(principal, resource, action):
            raise PermissionDeniedError(
                f"{principal.user} (role {principal.role}) may not {action} {resource}; "
                "ask an admin to grant it (`k2 auth grant`)"
            )
