"""The services of ``docker-compose.yaml`` started as local processes, from the same settings.

The compose file is the one source: each Airflow service's command and environment are read
from it, and only what a container gives for free is changed here, each change named below:
service host names become 127.0.0.1 on the machine's PostgreSQL and Redis (with databases
of the test's own), container paths become this checkout's folders, secrets come from the
test instead of ``.env``, and ports that containers would each have to themselves (API,
log servers, health check) are free ports. Every process is stopped by its PID.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yaml"
AIRFLOW = str(Path(sys.executable).with_name("airflow"))
# The Airflow services of the compose file and what the e2e test starts of each.
AIRFLOW_SERVICES = (
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "airflow-worker",
)
_INTERPOLATION = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::?[-?][^}]*)?\}")


def compose() -> dict:
    """The compose file, parsed (YAML merge keys resolved)."""
    return yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))


def service_environment(spec: Mapping, service: str) -> dict[str, str]:
    """A service's environment as compose gives it: its own over the common anchor's."""
    env = dict(spec["x-airflow-common"]["environment"])
    env.update(spec["services"][service].get("environment") or {})
    return {key: str(value) for key, value in env.items()}


def service_command(spec: Mapping, service: str) -> list[str]:
    """A service's command as argument list for ``airflow``."""
    command = spec["services"][service]["command"]
    return command.split() if isinstance(command, str) else list(command)


def init_pools(spec: Mapping) -> list[tuple[str, int]]:
    """The pools airflow-init creates (``airflow pools set NAME SLOTS``), slots at their
    ``${VAR:-default}`` default."""
    command = spec["services"]["airflow-init"]["command"]
    text = command if isinstance(command, str) else "\n".join(command)
    found = []
    for name, slots in re.findall(r"airflow pools set (\S+) \"?([^\s\"]+)\"?", text):
        default = re.fullmatch(r"\$?\$\{\w+:-(\d+)\}", slots)
        found.append((name, int(default[1] if default else slots)))
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Site:
    """Where the local processes run: the machine's servers, databases and a home folder."""

    home: Path
    postgres: str  # e.g. postgresql://postgres@127.0.0.1:5432/test (user, host, port used)
    databases: dict[str, str]  # compose database name -> this test's database
    redis_db: int
    secrets: dict[str, str]  # values for ${NAME:?...} in the compose file
    extra_env: dict[str, str] = field(default_factory=dict)  # connections, archive
    api_port: int = field(default_factory=free_port)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def localize(self, env: Mapping[str, str]) -> dict[str, str]:
        """``env`` (a service's compose environment) for processes on this machine."""
        local = urlsplit(self.postgres)
        out = {}
        for key, value in env.items():
            value = _INTERPOLATION.sub(lambda m: self.secrets[m["name"]], value)
            url = urlsplit(value) if "://" in value else None
            if url and url.hostname == "postgres":
                database = self.databases[url.path.lstrip("/")]
                auth = local.username + (f":{local.password}" if local.password else "")
                value = url._replace(
                    netloc=f"{auth}@{local.hostname}:{local.port or 5432}", path=f"/{database}"
                ).geturl()
            elif url and url.hostname == "redis":
                value = url._replace(netloc="127.0.0.1:6379", path=f"/{self.redis_db}").geturl()
            elif url and url.hostname == "airflow-apiserver":
                value = url._replace(netloc=f"127.0.0.1:{self.api_port}").geturl()
            elif value.startswith("/opt/erpmail/"):
                value = str(ROOT / value.removeprefix("/opt/erpmail/"))
            elif value.startswith("/opt/airflow/"):
                value = str(self.home / value.removeprefix("/opt/airflow/"))
            out[key] = value
        return out

    def environment(self, spec: Mapping, service: str, **more: str) -> dict[str, str]:
        """The whole environment of one local process of ``service``."""
        base = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("AIRFLOW", "ERPMAIL_", "_AIRFLOW"))
        }
        return {
            **base,
            **self.localize(service_environment(spec, service)),
            # a container has its own home and ports; these processes share a machine
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW__API__PORT": str(self.api_port),
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(self.home / "logs"),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT": str(free_port()),
            **self.extra_env,
            **more,
        }


@dataclass
class Process:
    """One started service: its name, its process and its log file."""

    name: str
    popen: subprocess.Popen
    log: Path

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


class Services:
    """The started processes; ``stop()`` ends each by its PID (and its process group)."""

    def __init__(self, site: Site, spec: Mapping) -> None:
        self.site, self.spec = site, spec
        self.processes: list[Process] = []

    def run(self, service: str, *args: str, timeout: float = 300, **env: str) -> str:
        """Run ``airflow ARGS`` once in ``service``'s environment; its output, or an error."""
        done = subprocess.run(
            [AIRFLOW, *args],
            env=self.site.environment(self.spec, service, **env),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if done.returncode != 0:
            raise RuntimeError(f"airflow {' '.join(args)}: {done.stderr[-3000:]}")
        return done.stdout

    def start(self, service: str, name: str, *extra: str, **env: str) -> Process:
        """Start ``service``'s compose command (plus ``extra`` arguments) as ``name``."""
        log = self.site.home / f"{name}.log"
        popen = subprocess.Popen(
            [AIRFLOW, *service_command(self.spec, service), *extra],
            env=self.site.environment(self.spec, service, **env),
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the task processes go with it
        )
        process = Process(name, popen, log)
        self.processes.append(process)
        return process

    def check_running(self) -> None:
        """An error naming any process that has exited, with the end of its log."""
        for process in self.processes:
            if process.popen.poll() is not None:
                raise RuntimeError(
                    f"{process.name} exited with {process.popen.returncode}:\n{process.tail()}"
                )

    def stop(self) -> None:
        for process in self.processes:
            # the whole group: Celery's pool and the task processes too, even if the
            # leader is gone
            try:
                os.killpg(process.popen.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 20
        for process in self.processes:
            try:
                process.popen.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(process.popen.pid, signal.SIGKILL)
                process.popen.wait()
            try:  # what is left of the group
                os.killpg(process.popen.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
