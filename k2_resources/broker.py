"""A local single-node Apache Kafka 4.x broker in KRaft mode, run from jars resolved by Maven.

Used by `k2 kafka start|stop|status`, infra/kafka/start|stop and the pytest fixture. The broker binds 127.0.0.1
only. Its state (jars, formatted log dir, pid, server log) lives under one directory.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from k2_resources.errors import BrokerError, BrokerUnavailableError, PortInUseError, ToolchainMissingError
from k2_resources.local_process import live_pid, port_open, stop_group

REPO_ROOT = Path(__file__).resolve().parent.parent
INFRA_DIR = REPO_ROOT / "infra" / "kafka"


def _require(program: str, hint: str) -> str:
    path = shutil.which(program)
    if path is None:
        raise ToolchainMissingError(f"`{program}` is not on PATH: {hint}")
    return path


def ensure_jars(libs_dir: Path) -> Path:
    """Resolve the broker's classpath into `libs_dir` with Maven (once)."""
    marker = libs_dir / ".resolved"
    if marker.exists():
        return libs_dir
    _require("java", "install a JDK 17+ (Debian: apt-get install -y openjdk-17-jre-headless)")
    mvn = _require("mvn", "install Maven (Debian: apt-get install -y maven)")
    libs_dir.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [
            mvn,
            "-q",
            "-B",
            "-f",
            str(INFRA_DIR / "pom.xml"),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={libs_dir}",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise BrokerError(f"Maven could not resolve the Kafka jars:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    marker.touch()
    return libs_dir


@dataclass
class LocalKafkaBroker:
    """One broker+controller process. `start()` is idempotent: a running broker of ours is reused."""

    data_dir: Path
    port: int
    controller_port: int | None = None
    startup_timeout_s: float = 60.0
    # Jars are shared by every broker on the machine: resolving them is the slow part of a first start.
    libs_dir: Path = REPO_ROOT / ".k2" / "kafka-libs"

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir).resolve()
        if self.controller_port is None:
            self.controller_port = self.port + 1

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid_file(self) -> Path:
        return self.data_dir / "broker.pid"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "server.log"

    def pid(self) -> int | None:
        return live_pid(self.pid_file)

    def is_running(self) -> bool:
        return self.pid() is not None and port_open(self.port)

    def _write_config(self) -> Path:
        template = (INFRA_DIR / "server.properties").read_text()
        config = (
            template.replace("@PORT@", str(self.port))
            .replace("@CONTROLLER_PORT@", str(self.controller_port))
            .replace("@LOG_DIR@", str(self.data_dir / "data"))
        )
        path = self.data_dir / "server.properties"
        path.write_text(config)
        return path

    def _classpath(self) -> str:
        libs = ensure_jars(self.libs_dir)
        return os.pathsep.join(str(p) for p in sorted(libs.glob("*.jar")))

    def _java(self, main: str, *args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
        java = _require("java", "install a JDK 17+ (Debian: apt-get install -y openjdk-17-jre-headless)")
        return subprocess.run(  # type: ignore[call-overload, no-any-return]
            [java, "-cp", self._classpath(), main, *args], capture_output=True, text=True, check=False, **kwargs
        )

    def _format_storage(self, config: Path) -> None:
        if (self.data_dir / "data" / "meta.properties").exists():
            return
        cluster_id = _cluster_id()
        result = self._java("kafka.tools.StorageTool", "format", "--standalone", "-t", cluster_id, "-c", str(config))
        if result.returncode != 0:
            raise BrokerError(f"formatting KRaft storage failed:\n{result.stdout}{result.stderr}")

    def start(self) -> None:
        if self.is_running():
            return
        assert self.controller_port is not None
        for port in (self.port, self.controller_port):
            if port_open(port):
                raise PortInUseError(
                    f"port {port} on 127.0.0.1 is taken by another process; stop it or set K2_KAFKA_PORT to a free port"
                )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config = self._write_config()
        self._format_storage(config)
        java = _require("java", "install a JDK 17+ (Debian: apt-get install -y openjdk-17-jre-headless)")
        log = self.log_file.open("ab")
        log4j = self.data_dir / "log4j2.properties"
        log4j.write_text(
            "rootLogger.level=WARN\nrootLogger.appenderRef.stdout.ref=STDOUT\n"
            "appender.stdout.type=Console\nappender.stdout.name=STDOUT\n"
            "appender.stdout.layout.type=PatternLayout\nappender.stdout.layout.pattern=[%d] %p %m (%c)%n\n"
            "logger.kafka.name=kafka\nlogger.kafka.level=INFO\n"
        )
        proc = subprocess.Popen(
            [
                java,
                "-Xms256m",
                "-Xmx1g",
                f"-Dlog4j2.configurationFile={log4j}",
                "-cp",
                self._classpath(),
                "kafka.Kafka",
                str(config),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.pid_file.write_text(str(proc.pid))
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise BrokerError(f"the broker exited with code {proc.returncode}; see {self.log_file}")
            if port_open(self.port) and _metadata_answers(self.bootstrap):
                return
            time.sleep(0.3)
        self.stop()
        raise BrokerUnavailableError(
            f"the broker did not answer within {self.startup_timeout_s:.0f}s; see {self.log_file}"
        )

    def stop(self, timeout_s: float = 30.0) -> None:
        stop_group(self.pid_file, timeout_s)


def _cluster_id() -> str:
    """A random KRaft cluster id: 16 bytes, URL-safe base64 without padding (what `kafka-storage random-uuid` prints).

    Like Kafka's own Uuid.randomUuid, never one starting with '-': the storage tool would parse it as an option.
    """
    import base64

    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def _metadata_answers(bootstrap: str, timeout_s: float = 2.0) -> bool:
    from confluent_kafka.admin import AdminClient

    try:
        AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=timeout_s)
    except Exception:  # noqa: BLE001 - "not yet" is all we need to know while waiting
        return False
    return True
