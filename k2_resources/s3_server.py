"""A local S3-compatible object store for the prod profile's warehouse, on 127.0.0.1 only.

SeaweedFS (Apache-2.0; `weed mini`, one process with master, volume, filer and S3 gateway) when its binary has
been built (`make seaweedfs`: `infra/s3/build-seaweedfs`, from the Go module proxy, about 13 min on 2 cores, cached
under ~/.cache/k2), else moto's standalone server (`moto[server]` from PyPI, installed with the dev requirements).
Both speak the S3 REST API to the same clients (pyiceberg's pyarrow FileIO, s3fs, DuckDB httpfs); `kind` says which
one runs. README.md "Production profile" explains the choice.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from k2_resources.errors import ObjectStoreError
from k2_resources.local_process import free_port, live_pid, port_open, stop_group

REPO_ROOT = Path(__file__).resolve().parent.parent
SEAWEEDFS_VERSION = "v0.0.0-20261109003541-7506e5f91cd6"  # keep in step with infra/s3/go.mod
SEAWEEDFS_CACHE = Path.home() / ".cache" / "k2" / "seaweedfs" / SEAWEEDFS_VERSION
ACCESS_KEY = "k2-access"
SECRET_KEY = "k2-secret-key-for-local-tests"  # a local test server on 127.0.0.1: not a secret


def seaweedfs_binary() -> Path | None:
    """The cached `weed` binary built by infra/s3/build-seaweedfs, if any."""
    path = SEAWEEDFS_CACHE / "weed"
    return path if path.is_file() and os.access(path, os.X_OK) else None


@dataclass
class LocalObjectStore:
    """One S3 server process with one bucket. `kind` is "seaweedfs", "moto" or "auto" (SeaweedFS if built)."""

    data_dir: Path
    port: int
    bucket: str = "warehouse"
    kind: str = "auto"
    access_key: str = ACCESS_KEY
    secret_key: str = SECRET_KEY
    startup_timeout_s: float = 60.0
    _ports: dict[str, int] = field(default_factory=dict)
    _proc: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir).resolve()
        if self.kind == "auto":
            self.kind = "seaweedfs" if seaweedfs_binary() else "moto"
        if self.kind not in ("seaweedfs", "moto"):
            raise ObjectStoreError(f"object store kind {self.kind!r}: use seaweedfs, moto or auto")

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid_file(self) -> Path:
        return self.data_dir / f"{self.kind}.pid"

    @property
    def log_file(self) -> Path:
        return self.data_dir / f"{self.kind}.log"

    def warehouse(self, prefix: str = "lake") -> str:
        return f"s3://{self.bucket}/{prefix}"

    def settings_env(self, prefix: str = "lake") -> dict[str, str]:
        """The K2_* variables that point K2 at this store."""
        return {
            "K2_WAREHOUSE": self.warehouse(prefix),
            "K2_S3_ENDPOINT": self.endpoint,
            "K2_S3_ACCESS_KEY_ID": self.access_key,
            "K2_S3_SECRET_ACCESS_KEY": self.secret_key,
            "K2_S3_REGION": "us-east-1",
        }

    def pid(self) -> int | None:
        return live_pid(self.pid_file)

    def is_running(self) -> bool:
        return self.pid() is not None and port_open(self.port)

    def _command(self) -> list[str]:
        if self.kind == "moto":
            return [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)]
        binary = seaweedfs_binary()
        if binary is None:
            raise ObjectStoreError("SeaweedFS is not built: run `make seaweedfs` (or use kind='moto')")
        config = self.data_dir / "s3-identities.json"
        config.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "k2",
                            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                        }
                    ]
                }
            )
        )
        ports = self._ports or {
            name: free_port()
            for name in ("master", "master.grpc", "volume", "volume.grpc", "filer", "filer.grpc", "s3.grpc", "admin")
        }
        self._ports = ports
        (self.data_dir / "data").mkdir(parents=True, exist_ok=True)
        return [
            str(binary),
            "mini",
            f"-dir={self.data_dir / 'data'}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-s3.port={self.port}",
            *(f"-{name}.port={port}" for name, port in ports.items() if not name.endswith(".grpc")),
            *(f"-{name.split('.')[0]}.port.grpc={port}" for name, port in ports.items() if name.endswith(".grpc")),
            f"-admin.port.grpc={free_port()}",
            "-admin.port.legacy=0",
            "-admin.ui=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-webdav=false",
            "-master.volumeSizeLimitMB=64",
            f"-s3.config={config}",
            f"-bucket={self.bucket}",
        ]

    def start(self) -> None:
        if self.is_running():
            return
        if port_open(self.port):
            raise ObjectStoreError(f"port {self.port} on 127.0.0.1 is taken by another process; choose another port")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_file.open("ab")
        proc = subprocess.Popen(
            self._command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
        self._proc = proc
        self.pid_file.write_text(str(proc.pid))
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise ObjectStoreError(f"{self.kind} exited with code {proc.returncode}; see {self.log_file}")
            if port_open(self.port) and self._bucket_ready():
                return
            time.sleep(0.3)
        self.stop()
        raise ObjectStoreError(
            f"{self.kind} did not serve S3 within {self.startup_timeout_s:.0f}s; see {self.log_file}"
        )

    def filesystem(self):  # type: ignore[no-untyped-def]
        import s3fs

        return s3fs.S3FileSystem(
            key=self.access_key,
            secret=self.secret_key,
            endpoint_url=self.endpoint,
            client_kwargs={"region_name": "us-east-1"},
            skip_instance_cache=True,
            config_kwargs={"connect_timeout": 2, "read_timeout": 5, "retries": {"max_attempts": 1}},
        )

    def _bucket_ready(self) -> bool:
        fs = self.filesystem()
        try:
            if not fs.exists(self.bucket):
                fs.call_s3("create_bucket", Bucket=self.bucket)  # moto starts empty; SeaweedFS made it
            fs.ls(self.bucket, refresh=True)
        except Exception:  # noqa: BLE001 - "not yet" while the gateway connects to its filer
            return False
        return True

    def stop(self, timeout_s: float = 15.0) -> None:
        stop_group(self.pid_file, timeout_s, self._proc)
        self._proc = None
