"""A local Apicurio Registry (Apache-2.0) serving the Confluent Schema Registry API on 127.0.0.1.

Its Quarkus distribution comes from Maven Central (infra/registry/pom.xml) and is unpacked once under
.k2/registry-dist. Apicurio 3 needs Java 21+: the newest JDK found under /usr/lib/jvm is used (Temurin 25 on these
machines; the broker keeps Debian's Java 17). Storage is PostgreSQL when a JDBC URL is given (what production runs),
else an in-memory H2 database. The Confluent API lives under `<url>/apis/ccompat/v7`.
"""

from __future__ import annotations

import glob
import re
import shutil
import subprocess
import tarfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from k2_resources.errors import RegistryError, ToolchainMissingError
from k2_resources.local_process import free_port, live_pid, stop_group

REPO_ROOT = Path(__file__).resolve().parent.parent
INFRA_DIR = REPO_ROOT / "infra" / "registry"
MIN_JAVA = 21


def _java_major(java: str) -> int:
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, check=False, timeout=30).stderr
    except (OSError, subprocess.TimeoutExpired):
        return 0
    match = re.search(r'version "(\d+)', out)
    return int(match.group(1)) if match else 0


def find_java(minimum: int = MIN_JAVA) -> str:
    """The newest `java` of at least `minimum`, from /usr/lib/jvm or PATH."""
    candidates = [*glob.glob("/usr/lib/jvm/*/bin/java"), *(p for p in [shutil.which("java")] if p)]
    versions = sorted(((_java_major(c), c) for c in set(candidates)), reverse=True)
    if not versions or versions[0][0] < minimum:
        found = ", ".join(f"{c} ({v})" for v, c in versions) or "none"
        raise ToolchainMissingError(
            f"the schema registry (Apicurio 3) needs Java {minimum}+; found {found}. Install a JDK 21+ under /usr/lib/jvm"
        )
    return versions[0][1]


def ensure_distribution(dist_dir: Path) -> Path:
    """Resolve and unpack the registry distribution into `dist_dir` (once); return the dir holding quarkus-run.jar."""
    app = dist_dir / "app"
    if (app / "quarkus-run.jar").exists():
        return app
    mvn = shutil.which("mvn")
    if mvn is None:
        raise ToolchainMissingError("`mvn` is not on PATH: install Maven (Debian: apt-get install -y maven)")
    download = dist_dir / "download"
    result = subprocess.run(
        [
            mvn,
            "-q",
            "-B",
            "-f",
            str(INFRA_DIR / "pom.xml"),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={download}",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    archives = sorted(download.glob("apicurio-registry-app-*-all.tar.gz"))
    if result.returncode != 0 or not archives:
        raise RegistryError(f"Maven could not resolve the registry:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    staging = dist_dir / "app.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    with tarfile.open(archives[-1]) as archive:
        archive.extractall(staging, filter="data")
    staging.rename(app)
    shutil.rmtree(download, ignore_errors=True)
    return app


@dataclass
class LocalSchemaRegistry:
    """One Apicurio Registry process. `jdbc_url` (jdbc:postgresql://...) selects PostgreSQL storage."""

    data_dir: Path
    port: int
    jdbc_url: str | None = None
    jdbc_user: str = "k2"
    jdbc_password: str = "k2"
    dist_dir: Path = REPO_ROOT / ".k2" / "registry-dist"
    startup_timeout_s: float = 120.0
    _proc: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir).resolve()

    @property
    def url(self) -> str:
        """Base URL of the Confluent-compatible API (what K2_SCHEMA_REGISTRY_URL points at)."""
        return f"http://127.0.0.1:{self.port}/apis/ccompat/v7"

    @property
    def pid_file(self) -> Path:
        return self.data_dir / "registry.pid"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "registry.log"

    def pid(self) -> int | None:
        return live_pid(self.pid_file)

    def answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/subjects", timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def is_running(self) -> bool:
        return self.pid() is not None and self.answers()

    def _command(self) -> list[str]:
        app = ensure_distribution(self.dist_dir)
        props = {
            "quarkus.http.host": "127.0.0.1",
            "quarkus.http.port": str(self.port),
            "quarkus.management.host": "127.0.0.1",
            "quarkus.management.port": str(free_port()),
            "apicurio.storage.snapshot.location": str(self.data_dir),
            "apicurio.datasource.jdbc.initial-size": "2",
            "apicurio.datasource.jdbc.min-size": "2",
            "apicurio.datasource.jdbc.max-size": "10",
        }
        if self.jdbc_url:
            props |= {
                "apicurio.storage.sql.kind": "postgresql",
                "apicurio.datasource.url": self.jdbc_url,
                "apicurio.datasource.username": self.jdbc_user,
                "apicurio.datasource.password": self.jdbc_password,
            }
        return [
            find_java(),
            "-Xms128m",
            "-Xmx512m",
            "-XX:TieredStopAtLevel=1",  # start fast: this is a small, mostly idle service
            *(f"-D{k}={v}" for k, v in props.items()),
            "-jar",
            str(app / "quarkus-run.jar"),
        ]

    def start(self) -> None:
        if self.is_running():
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        command = self._command()
        log = self.log_file.open("ab")
        proc = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
        self._proc = proc
        self.pid_file.write_text(str(proc.pid))
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RegistryError(f"the registry exited with code {proc.returncode}; see {self.log_file}")
            if self.answers():
                return
            time.sleep(0.5)
        self.stop()
        raise RegistryError(f"the registry did not answer within {self.startup_timeout_s:.0f}s; see {self.log_file}")

    def stop(self, timeout_s: float = 20.0) -> None:
        stop_group(self.pid_file, timeout_s, self._proc)
        self._proc = None
