"""Real servers: a throwaway PostgreSQL cluster and a real `mlflow server` on it.

The team tests (``tests/test_team_server.py``, ``tests/test_server_outage.py``) and the outage
benchmark (``experiments/bench_outage.py``) start them the same way, from here.

PostgreSQL comes from Debian's packages (``.ci/run`` installs ``postgresql`` when it is missing);
the cluster lives in a temporary folder and is stopped and removed at the end. As root (CI),
PostgreSQL's programs run as the ``postgres`` user, which they insist on.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

MLFLOW = str(Path(sys.executable).with_name("mlflow"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _postgres_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        raise RuntimeError("PostgreSQL's server programs are not installed (Debian: apt-get install postgresql; "
                           ".ci/run installs them)")
    return Path(found[-1]).parent


class PostgreSQL:
    """A PostgreSQL cluster in a temporary folder on 127.0.0.1:``port`` with trust authentication."""

    def __init__(self):
        self.bin = _postgres_bin()
        self.root = Path(tempfile.mkdtemp(prefix="facegan-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.as_root = os.geteuid() == 0
        if self.as_root:
            shutil.chown(self.root, "postgres", "postgres")

    def _run(self, *args: str) -> subprocess.CompletedProcess:
        command = [*(["runuser", "-u", "postgres", "--"] if self.as_root else []), *args]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=self.root)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
        return done

    def start(self) -> "PostgreSQL":
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-w", "-l", str(self.root / "log"),
                  "-o", f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off", "start")
        return self

    def create_database(self, name: str) -> str:
        self._run(str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", name)
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        try:
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


class MlflowServer:
    """``mlflow server`` on ``backend_uri`` with artifacts proxied into ``artifacts``, on 127.0.0.1:``port``.

    Started in its own process group, so :meth:`kill` takes down every worker it forked.
    """

    def __init__(self, backend_uri: str, artifacts: Path, port: int | None = None, *, log: Path | None = None,
                 app_name: str | None = None, env: dict[str, str] | None = None, nice: int = 0):
        self.backend_uri, self.artifacts = backend_uri, Path(artifacts)
        self.app_name, self.extra_env, self.nice = app_name, env or {}, nice
        self.port = port or free_port()
        self.log = log or self.artifacts.parent / f"mlflow-server-{self.port}.log"
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 180) -> "MlflowServer":
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **self.extra_env}
        env.pop("MLFLOW_TRACKING_URI", None)
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [*(["nice", "-n", str(self.nice)] if self.nice else []), MLFLOW, "server", "--backend-store-uri", self.backend_uri, "--artifacts-destination",
                 str(self.artifacts), "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
                 *(["--app-name", self.app_name] if self.app_name else [])],
                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True, cwd=self.artifacts.parent)
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                    if response.status == 200:
                        return self
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server did not start:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.3)

    def kill(self) -> None:
        """SIGKILL the whole process group: the server disappears mid-request, as in a crash."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()
