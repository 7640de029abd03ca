"""Dovecot started from a throwaway config, one instance per TLS mode.

`start_dovecot()` returns a running `Dovecot` on free 127.0.0.1 ports; `stop()` ends it and
removes its directory. Each instance has its own temp dir, ports and `base_dir`, so parallel
pytest sessions do not meet.
"""

from __future__ import annotations

import ctypes
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.servers.tlsca import CertSet

HOST = "127.0.0.1"
DOVECOT = shutil.which("dovecot") or "/usr/sbin/dovecot"


def free_port() -> int:
    """A port the kernel just handed out; racy by nature, so starters retry on a clash."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class ImapUser:
    """One mailbox owner on a `Dovecot` instance; the mailbox starts empty."""

    name: str
    password: str
    server: Dovecot

    @property
    def host(self) -> str:
        return self.server.host

    @property
    def imaps_port(self) -> int | None:
        return self.server.imaps_port

    @property
    def imap_port(self) -> int:
        return self.server.imap_port

    @property
    def ca_file(self) -> Path:
        return self.server.ca_file


@dataclass
class Dovecot:
    """A running Dovecot. `imaps_port` is implicit TLS (None when `tls` is off); `imap_port`
    is plaintext with STARTTLS offered only when `tls` is on. `users` maps name -> password."""

    host: str
    imap_port: int
    imaps_port: int | None
    tls: bool
    ca_file: Path
    root: Path
    config: Path
    users: dict[str, str] = field(default_factory=dict)
    _proc: subprocess.Popen | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def passwd_dir(self) -> Path:
        return self.root / "passwd"

    @property
    def log_file(self) -> Path:
        return self.root / "dovecot.log"

    def home(self, name: str) -> Path:
        return self.root / "mail" / name

    def add_user(self, name: str | None = None, password: str | None = None) -> ImapUser:
        """Create a user with an empty mailbox; name and password are random when not given."""
        name = name or f"u{secrets.token_hex(4)}"
        password = password or secrets.token_urlsafe(12)
        if not re.fullmatch(r"[a-z0-9][a-z0-9._-]*", name) or not password.isprintable():
            raise ValueError("user name must be [a-z0-9._-], password printable")
        if ":" in password:
            raise ValueError("passwd-file cannot hold ':' in a password")
        with self._lock:
            if name in self.users:
                raise ValueError(f"user {name!r} exists")
            self.users[name] = password
        # One passwd-file per user: Dovecot stats a shared file at most once a second, so a
        # user appended right after a login would stay unknown for up to a second.
        path = self.passwd_dir / name
        path.write_text(f"{name}:{{PLAIN}}{password}\n")
        path.chmod(0o644)
        return ImapUser(name, password, self)

    def user(self, name: str) -> ImapUser:
        return ImapUser(name, self.users[name], self)

    def reset_user(self, name: str) -> None:
        """Delete all the user's folders and mail (call with no session open); the next login
        sees an empty INBOX with a new UIDVALIDITY."""
        maildir = self.home(name) / "Maildir"
        if not maildir.exists():
            return
        for entry in maildir.iterdir():
            # Keep the UIDVALIDITY counter: without it a mailbox recreated within the same
            # second gets the old UIDVALIDITY back, as Dovecot derives it from the clock.
            if entry.name.startswith("dovecot-uidvalidity"):
                continue
            if entry.is_dir():
                shutil.rmtree(entry)
            else:
                entry.unlink()

    def stop(self) -> None:
        """Terminate Dovecot's process group, wait for the master, remove the temp dir."""
        proc, self._proc = self._proc, None
        if proc is not None:
            # Signal the whole group at once: the master alone reaps its children in 1 s steps.
            _killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=1)
            except subprocess.TimeoutExpired:
                pass  # a login process still starting up can ignore SIGTERM for 5 s
            # Stragglers: the group outlives the master while members remain, so its id
            # cannot have been reused and every member is ours.
            _killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        shutil.rmtree(self.root, ignore_errors=True)


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _config(root: Path, cert: Path, key: Path, imap_port: int, imaps_port: int | None) -> str:
    tls = imaps_port is not None
    ssl_lines = f"ssl = yes\nssl_cert = <{cert}\nssl_key = <{key}\n" if tls else "ssl = no\n"
    imaps = (
        f"  inet_listener imaps {{\n    port = {imaps_port}\n    ssl = yes\n  }}\n" if tls else ""
    )
    return f"""\
instance_name = erpmail-{root.name}
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
protocols = imap
# No stats process to handshake with: a login process waiting on it delays shutdown by 5 s.
stats_writer_socket_path =
listen = {HOST}
default_login_user = dovenull
default_internal_user = dovecot
first_valid_uid = 1
mail_location = maildir:~/Maildir
# Tests and benchmarks do not need durable mail; fsync would dominate append timings.
mail_fsync = never
auth_mechanisms = plain login
# The default 2 s penalty would make every refused-login test slow.
auth_failure_delay = 0
# Clients must refuse plaintext auth themselves; a lenient server proves they do.
disable_plaintext_auth = no
{ssl_lines}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN {root}/passwd/%u
}}
userdb {{
  driver = static
  args = uid=dovecot gid=dovecot home={root}/mail/%u
}}
service imap-login {{
  # One long-lived login process for all connections: no fork per connection, and none
  # half-started (and deaf to SIGTERM) when the instance is stopped.
  service_count = 0
  process_min_avail = 1
  inet_listener imap {{
    port = {imap_port}
  }}
{imaps}}}
"""


def _die_with_parent() -> None:
    # A crashed pytest must not leave a Dovecot behind: SIGTERM it when the parent dies.
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _wait_ready(server: Dovecot, proc: subprocess.Popen, deadline: float) -> bool:
    """True once the greeting arrives on the plain port and the IMAPS port accepts."""
    ports = [server.imap_port] + ([server.imaps_port] if server.imaps_port else [])
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection((HOST, ports[0]), timeout=1) as s:
                if not s.recv(64).startswith(b"* OK"):
                    raise OSError("no greeting")
            for port in ports[1:]:
                socket.create_connection((HOST, port), timeout=1).close()
            return True
        except OSError:
            time.sleep(0.02)
    return False


def start_dovecot(certs: CertSet, which: str = "", *, tls: bool = True) -> Dovecot:
    """Start Dovecot presenting `certs.server_context(which)`'s certificate; `tls=False` gives
    a plaintext-only instance (no IMAPS, no STARTTLS capability). Needs root."""
    prefix = f"{which}_" if which else ""
    cert, key = getattr(certs, f"{prefix}cert"), getattr(certs, f"{prefix}key")
    dovecot_pw = pwd.getpwnam("dovecot")
    last_log = ""
    for _attempt in range(5):
        # Not pytest's tmp dir: that is 0700 and the dropped-privilege processes must enter it.
        root = Path(tempfile.mkdtemp(prefix="erpmail-dovecot-", dir="/tmp"))
        root.chmod(0o755)
        (root / "run").mkdir(mode=0o755)
        (root / "state").mkdir(mode=0o755)
        (root / "mail").mkdir(mode=0o755)
        os.chown(root / "mail", dovecot_pw.pw_uid, dovecot_pw.pw_gid)
        (root / "passwd").mkdir(mode=0o755)
        imap_port = free_port()
        imaps_port = free_port() if tls else None
        config = root / "dovecot.conf"
        config.write_text(_config(root, cert, key, imap_port, imaps_port))
        server = Dovecot(HOST, imap_port, imaps_port, tls, certs.ca_cert, root, config)
        with (root / "stderr.log").open("wb") as stderr:
            proc = subprocess.Popen(
                [DOVECOT, "-F", "-c", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                preexec_fn=_die_with_parent,
                start_new_session=True,  # its own process group, so stop() can signal all of it
            )
        server._proc = proc
        if _wait_ready(server, proc, time.monotonic() + 10):
            return server
        last_log = _logs(root)
        server.stop()
        if "in use" not in last_log:  # only a port clash with another test run is worth a retry
            break
    raise RuntimeError(f"dovecot did not start:\n{last_log}")


def _logs(root: Path) -> str:
    return "\n".join(
        p.read_text(errors="replace")
        for p in (root / "stderr.log", root / "dovecot.log")
        if p.exists()
    )
