"""The team deployment's files, checked without Docker: docker-compose.yaml parses and is valid
(Debian's ``docker-compose config``), holds the services and settings the e2e test starts, the
image installs what erpmail needs, and .env.example's connections work with erpmail's hooks."""

from __future__ import annotations

import json
import re
import secrets
import shutil
import socket
import ssl
import subprocess
import threading
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yaml"
ENV_EXAMPLE = ROOT / ".env.example"

AIRFLOW_COMMANDS = {
    "airflow-apiserver": "api-server",
    "airflow-scheduler": "scheduler",
    "airflow-dag-processor": "dag-processor",
    "airflow-triggerer": "triggerer",
    "airflow-worker": "celery worker",
}
SECRETS = (
    "_AIRFLOW_WWW_USER_PASSWORD",
    "AIRFLOW_JWT_SECRET",
    "AIRFLOW_API_SECRET_KEY",
    "AIRFLOW_FERNET_KEY",
)


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def common_env(compose: dict) -> dict:
    return compose["x-airflow-common"]["environment"]


def env_example() -> dict[str, str]:
    """.env.example's assignments, quotes removed as Compose removes them."""
    values = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key] = value[1:-1] if value[:1] == value[-1:] == "'" else value
    return values


def filled_env_file(tmp_path: Path) -> Path:
    """.env.example with a fresh value for every secret it leaves empty."""
    text = ENV_EXAMPLE.read_text()
    for name in SECRETS:
        text = re.sub(rf"^{name}=$", f"{name}={secrets.token_urlsafe(32)}", text, flags=re.M)
    path = tmp_path / ".env"
    path.write_text(text)
    return path


def docker_compose(env_file: Path, *args: str) -> subprocess.CompletedProcess:
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip(
            "docker-compose not installed (Debian package docker-compose; make test installs it)"
        )
    return subprocess.run(
        [binary, "--project-directory", str(ROOT), "-f", str(COMPOSE_FILE)]
        + ["--env-file", str(env_file), *args],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "ENV_FILE_PATH": str(env_file)},
        timeout=60,
    )


def test_every_service_exists_with_its_command_and_healthcheck(compose: dict) -> None:
    services = compose["services"]
    for name, command in AIRFLOW_COMMANDS.items():
        assert services[name]["command"] == command, name
    for name in [*AIRFLOW_COMMANDS, "postgres", "redis", "mailpit", "dovecot"]:
        assert services[name]["healthcheck"]["test"], name
    assert services["mailpit"]["profiles"] == services["dovecot"]["profiles"] == ["mail"]
    init = "\n".join(services["airflow-init"]["command"])
    for step in ("airflow db migrate", "erpmail db migrate", "airflow pools set smtp"):
        assert step in init
    assert services["airflow-init"]["user"] == "0:0"


def test_airflow_services_share_one_environment(compose: dict, common_env: dict) -> None:
    for name in [*AIRFLOW_COMMANDS, "airflow-init"]:
        env = compose["services"][name]["environment"]
        assert {k: env[k] for k in common_env} == common_env, name
    own = set(compose["services"]["airflow-worker"]["environment"]) - set(common_env)
    assert own == {"DUMB_INIT_SETSID"}


def test_common_environment_runs_celery_on_the_named_services(common_env: dict) -> None:
    assert common_env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert (
        common_env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"]
        == "http://airflow-apiserver:8080/execution/"
    )
    assert common_env["AIRFLOW__CORE__LOAD_EXAMPLES"] == "false"
    assert common_env["AIRFLOW__CELERY__BROKER_URL"] == "redis://redis:6379/0"
    assert re.fullmatch(
        r"postgresql\+psycopg2://\w+:\w+@postgres/\w+",
        common_env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"],
    )
    assert re.fullmatch(
        r"db\+postgresql\+psycopg2://\w+:\w+@postgres/\w+",
        common_env["AIRFLOW__CELERY__RESULT_BACKEND"],
    )
    assert re.fullmatch(
        r"postgresql://\w+:\w+@postgres:5432/erpmail", common_env["AIRFLOW_CONN_ERP_DB"]
    )
    assert common_env["AIRFLOW__CORE__DAGS_FOLDER"] == "/opt/erpmail/dags"
    assert common_env["AIRFLOW__CORE__PLUGINS_FOLDER"] == "/opt/erpmail/plugins"


def test_no_secret_is_committed(compose: dict, common_env: dict) -> None:
    # every secret comes from .env, and Compose refuses to start without it
    assert common_env["AIRFLOW__API_AUTH__JWT_SECRET"] == (
        "${AIRFLOW_JWT_SECRET:?set AIRFLOW_JWT_SECRET in .env}"
    )
    for key in ("AIRFLOW__API__SECRET_KEY", "AIRFLOW__CORE__FERNET_KEY"):
        assert re.fullmatch(r"\$\{AIRFLOW_\w+:\?[^}]+\}", common_env[key]), key
    password = compose["services"]["airflow-init"]["environment"]["_AIRFLOW_WWW_USER_PASSWORD"]
    assert password.startswith("${_AIRFLOW_WWW_USER_PASSWORD:?")
    example = env_example()
    assert all(example[name] == "" for name in SECRETS)
    assert ".env" in (ROOT / ".gitignore").read_text().splitlines()
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    assert ".env" in ignored and ".venv" in ignored


def test_compose_config_is_valid(tmp_path: Path) -> None:
    env_file = filled_env_file(tmp_path)
    for profile in ([], ["--profile", "mail"]):
        done = docker_compose(env_file, *profile, "config", "-q")
        assert done.returncode == 0, done.stderr
    done = docker_compose(env_file, "config")
    resolved = yaml.safe_load(done.stdout)["services"]["airflow-worker"]["environment"]
    # .env's connections reach the containers, its JSON unquoted
    assert json.loads(resolved["AIRFLOW_CONN_SMTP_MAILPIT"])["host"] == "mailpit"


def test_compose_refuses_to_start_without_the_secrets() -> None:
    done = docker_compose(ENV_EXAMPLE, "config", "-q")
    assert done.returncode != 0
    assert "in .env" in done.stderr


def test_image_installs_requirements_and_weasyprints_libraries() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    airflow = re.search(r"^apache-airflow==(\S+)$", (ROOT / "requirements.txt").read_text(), re.M)
    assert f"apache/airflow:{airflow.group(1)}-python3.11" in dockerfile
    assert re.search(r"pip install .*-r /opt/erpmail/requirements\.txt", dockerfile)
    apt = re.search(r"apt-get install[^\n]*\n(?:[^\n]*\\\n)*[^\n]*", dockerfile).group(0)
    makefile = (ROOT / "Makefile").read_text()
    runtime = re.search(r"^RUNTIME_PACKAGES := (.*)$", makefile, re.M).group(1).split()
    for package in {*runtime, "libharfbuzz-subset0", "fonts-dejavu-core"}:
        assert re.search(rf"\s{re.escape(package)}(\s|$)", apt), package


def test_env_example_connections_work_with_erpmails_hooks(monkeypatch) -> None:
    from erpmail.inbound.imap import ImapHook
    from erpmail.outbound.smtp import SmtpHook

    for key, value in env_example().items():
        if key.startswith("AIRFLOW_CONN_"):
            monkeypatch.setenv(key, value)
    smtp = SmtpHook("smtp_mailpit").settings()
    assert (smtp.host, smtp.port, smtp.security) == ("mailpit", 1025, "none")
    imap = ImapHook("imap_devbox").settings()
    assert (imap.host, imap.port, imap.security) == ("dovecot", 31993, "tls")
    assert imap.ca_file == "/opt/erpmail/tls/ca.crt"


def _handshake(server: ssl.SSLContext, client: ssl.SSLContext, hostname: str) -> None:
    """One TLS handshake over a socket pair; raises the client's verification error."""
    ours, theirs = socket.socketpair()

    def serve() -> None:
        try:
            with server.wrap_socket(theirs, server_side=True) as s:
                s.recv(1)
        except (ssl.SSLError, OSError):
            pass  # the client refused the certificate

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with client.wrap_socket(ours, server_hostname=hostname) as s:
            s.sendall(b".")
    finally:
        ours.close()
        thread.join(10)


def test_dev_mailbox_certificate_is_trusted_through_its_ca(tmp_path: Path) -> None:
    from erpmail.core.transport import tls_context

    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    script = ROOT / "deploy" / "dovecot" / "make-tls.sh"
    subprocess.run(["sh", str(script), str(tmp_path)], check=True, capture_output=True)
    made = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert set(made) == {"ca.crt", "tls.crt", "tls.key"}  # the CA's key is not kept
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(tmp_path / "tls.crt", tmp_path / "tls.key")
    client = tls_context(str(tmp_path / "ca.crt"))
    _handshake(server, client, "dovecot")
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(server, client, "mailpit")
    # a second start keeps the certificates the workers already trust
    subprocess.run(["sh", str(script), str(tmp_path)], check=True, capture_output=True)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == made


def test_outbox_dispatch_takes_the_pool_airflow_init_creates(compose: dict, airflow_db) -> None:
    from airflow.dag_processing.dagbag import DagBag

    init = "\n".join(compose["services"]["airflow-init"]["command"])
    pool = re.search(r"airflow pools set (\S+) ", init).group(1)
    dag = DagBag().get_dag("outbox_dispatch")
    assert dag.get_task("dispatch").pool == pool == "smtp"
