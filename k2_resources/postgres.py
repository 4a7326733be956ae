"""A local PostgreSQL server for the prod profile's Iceberg SQL catalog and Dagster storage, and database helpers.

`LocalPostgres` runs Debian's PostgreSQL binaries (`initdb`, `pg_ctl`) on a data directory of its own, listening on
127.0.0.1 only. PostgreSQL refuses to run as root, so when K2 runs as root the server runs as the `postgres` user
(via `runuser`) and the data directory is handed to that user. Used by the pytest fixture `postgres`, by
`infra/postgres/start|stop` and by `make demo-prod`.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from k2_resources.errors import PostgresError, ToolchainMissingError
from k2_resources.local_process import port_open

if TYPE_CHECKING:
    import dagster as dg

SERVER_USER = "postgres"  # the OS user the server runs as when K2 runs as root
INSTALL_HINT = "install PostgreSQL (Debian: apt-get install -y postgresql)"


def pg_bindir() -> Path:
    """The newest installed PostgreSQL server's bin directory (Debian keeps them in /usr/lib/postgresql/<v>/bin)."""
    candidates = sorted(
        (Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/pg_ctl")),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    if candidates:
        return candidates[-1]
    found = shutil.which("pg_ctl")
    if found is None:
        raise ToolchainMissingError(f"no PostgreSQL server binaries (pg_ctl) found: {INSTALL_HINT}")
    return Path(found).parent


@dataclass
class LocalPostgres:
    """One PostgreSQL cluster. `start()` is idempotent: a running server on this data directory is reused."""

    data_dir: Path
    port: int
    user: str = "k2"
    password: str = "k2"
    startup_timeout_s: float = 60.0
    # Tests and the demo trade crash durability for speed; a long-lived server should set durable=True.
    durable: bool = False

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir).resolve()

    @property
    def as_root(self) -> bool:
        return os.geteuid() == 0

    @property
    def pgdata(self) -> Path:
        return self.data_dir / "pgdata"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "postgres.log"

    def url(self, database: str = "postgres", driver: str = "postgresql+psycopg2") -> str:
        """SQLAlchemy URL of `database` (use driver="postgresql" for a plain libpq/psycopg2 DSN)."""
        return f"{driver}://{self.user}:{self.password}@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        command = [str(pg_bindir() / args[0]), *args[1:]]
        if self.as_root:
            command = ["runuser", "-u", SERVER_USER, "--", *command]
        return subprocess.run(command, capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL)

    def _prepare_dir(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if not self.as_root:
            return
        try:
            entry = pwd.getpwnam(SERVER_USER)
        except KeyError as exc:
            raise ToolchainMissingError(f"running as root needs the `{SERVER_USER}` user: {INSTALL_HINT}") from exc
        os.chown(self.data_dir, entry.pw_uid, entry.pw_gid)
        probe = subprocess.run(
            ["runuser", "-u", SERVER_USER, "--", "test", "-w", str(self.data_dir)], check=False, capture_output=True
        )
        if probe.returncode != 0:
            raise PostgresError(
                f"the `{SERVER_USER}` user cannot reach {self.data_dir} (a parent directory is not traversable); "
                "put the PostgreSQL data directory under a world-traversable path such as /var/tmp"
            )

    def _initdb(self) -> None:
        if (self.pgdata / "PG_VERSION").exists():
            return
        pwfile = self.data_dir / "pwfile"
        pwfile.write_text(self.password + "\n")
        if self.as_root:
            entry = pwd.getpwnam(SERVER_USER)
            os.chown(pwfile, entry.pw_uid, entry.pw_gid)
        pwfile.chmod(0o600)
        result = self._run(
            "initdb",
            "-D",
            str(self.pgdata),
            "-U",
            self.user,
            f"--pwfile={pwfile}",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "-E",
            "UTF8",
            "--locale=C",
        )
        pwfile.unlink(missing_ok=True)
        if result.returncode != 0:
            raise PostgresError(f"initdb failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")

    def is_running(self) -> bool:
        return (self.pgdata / "postmaster.pid").exists() and port_open(self.port)

    def start(self) -> None:
        if self.is_running():
            return
        if port_open(self.port):
            raise PostgresError(f"port {self.port} on 127.0.0.1 is taken by another process; choose another port")
        self._prepare_dir()
        self._initdb()
        options = (
            f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories={self.data_dir} "
            "-c max_connections=100"
        )
        if not self.durable:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        result = self._run(
            "pg_ctl",
            "-D",
            str(self.pgdata),
            "-l",
            str(self.log_file),
            "-o",
            options,
            "-w",
            "-t",
            str(int(self.startup_timeout_s)),
            "start",
        )
        if result.returncode != 0:
            log = self.log_file.read_text()[-2000:] if self.log_file.exists() else ""
            raise PostgresError(f"PostgreSQL did not start:\n{result.stdout}{result.stderr}\n{log}")
        deadline = time.monotonic() + self.startup_timeout_s
        while not port_open(self.port):
            if time.monotonic() > deadline:
                raise PostgresError(f"PostgreSQL did not listen on 127.0.0.1:{self.port}; see {self.log_file}")
            time.sleep(0.1)

    def stop(self, mode: str = "fast") -> None:
        if not (self.pgdata / "postmaster.pid").exists():
            return
        result = self._run("pg_ctl", "-D", str(self.pgdata), "-m", mode, "-w", "stop")
        if result.returncode != 0 and "not running" not in result.stderr + result.stdout:
            raise PostgresError(f"pg_ctl stop failed:\n{result.stdout}{result.stderr}")

    def create_database(self, name: str) -> str:
        """Create `name` if it does not exist; return its SQLAlchemy URL."""
        ensure_database(self.url(name))
        return self.url(name)

    def drop_database(self, name: str) -> None:
        drop_database(self.url(name))


def _split(url: str) -> tuple[str, str]:
    """(URL of the maintenance database `postgres` on the same server, database name) of a SQLAlchemy URL."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if not parsed.drivername.startswith("postgresql") or not parsed.database:
        raise PostgresError(f"{parsed.render_as_string(hide_password=True)} is not a PostgreSQL database URL")
    return parsed.set(database="postgres").render_as_string(hide_password=False), parsed.database


def _admin_execute(url: str, statement: str) -> None:
    import sqlalchemy as sa

    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text(statement))
    except sa.exc.OperationalError as exc:
        raise PostgresError(
            f"PostgreSQL at {sa.engine.make_url(url).render_as_string()} did not answer: {exc}"
        ) from exc
    finally:
        engine.dispose()


def database_exists(url: str) -> bool:
    import sqlalchemy as sa

    admin, name = _split(url)
    engine = sa.create_engine(admin, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            found = conn.execute(sa.text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}).first()
    except sa.exc.OperationalError as exc:
        raise PostgresError(f"PostgreSQL did not answer: {exc}") from exc
    finally:
        engine.dispose()
    return found is not None


def ensure_database(url: str) -> None:
    """Create the database named in `url` if the server does not have it yet."""
    if database_exists(url):
        return
    admin, name = _split(url)
    _admin_execute(admin, f'CREATE DATABASE "{name}"')


def drop_database(url: str) -> None:
    """Drop the database named in `url` (closing its other sessions first)."""
    admin, name = _split(url)
    _admin_execute(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


DAGSTER_YAML_TEMPLATE = Path(__file__).resolve().parent.parent / "infra" / "postgres" / "dagster.yaml"


def write_dagster_yaml(dagster_home: Path, postgres_url: str) -> Path:
    """Write $DAGSTER_HOME/dagster.yaml from infra/postgres/dagster.yaml with `postgres_url` filled in (mode 0600:
    the URL carries the password)."""
    import yaml

    config = yaml.safe_load(DAGSTER_YAML_TEMPLATE.read_text())
    config["storage"]["postgres"]["postgres_url"] = postgres_url
    dagster_home.mkdir(parents=True, exist_ok=True)
    path = dagster_home / "dagster.yaml"
    text = "# Written by k2 from infra/postgres/dagster.yaml; do not edit.\n" + yaml.safe_dump(config, sort_keys=False)
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
        path.chmod(0o600)
    return path


def dagster_instance(dagster_home: Path, postgres_url: str) -> dg.DagsterInstance:
    """A Dagster instance whose runs, event logs and schedules live in PostgreSQL."""
    import dagster as dg

    ensure_database(postgres_url)
    write_dagster_yaml(dagster_home, postgres_url)
    return dg.DagsterInstance.from_config(str(dagster_home))
