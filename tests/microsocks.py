"""A real SOCKS5 server for the tests of SOCKS egress: Debian's `microsocks`.

`start_microsocks()` runs one on a free loopback port, optionally with a user and password
(RFC 1929) and with its outgoing connections bound to another loopback address (`-b`), so the
fake upstream sees which proxy a request came through (`SeenRequest.peer`). microsocks writes
one line per tunnel it opened to its standard error (`client[N] 127.0.0.1: connected to
HOST:PORT`), kept in a log file: `targets()` reads what it was asked to reach, by name or
address. `kill()` makes it die at once (SIGKILL: every tunnel through it breaks), `restart()`
brings it back on the same port.

Without the program the test is skipped, or failed under LLMGATEWAY_REQUIRE_MICROSOCKS=1 (CI,
where .ci/run installs it).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.helpers import free_port

REQUIRE_VARIABLE = "LLMGATEWAY_REQUIRE_MICROSOCKS"
_TARGET = re.compile(r"connected to (\S+):(\d+)")


def microsocks_program() -> str | None:
    """The microsocks program on PATH (Debian puts it in /usr/bin), or None."""
    return shutil.which("microsocks")


def require_microsocks() -> None:
    """Skip the running test without microsocks, or fail it under
    LLMGATEWAY_REQUIRE_MICROSOCKS=1."""
    if microsocks_program() is not None:
        return
    problem = "microsocks is not installed (apt-get install microsocks)"
    if os.environ.get(REQUIRE_VARIABLE) == "1":
        pytest.fail(f"{problem}; {REQUIRE_VARIABLE}=1 requires it", pytrace=False)
    pytest.skip(problem)


@dataclass(slots=True)
class MicroSocks:
    """A running microsocks: its port, login, outgoing address and log."""

    port: int
    folder: Path
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    bind: str | None = None
    process: subprocess.Popen[bytes] | None = None

    def url(self, scheme: str = "socks5", password: str | None = None) -> str:
        """The proxy URL (`socks5://user:pass@127.0.0.1:PORT`); `password` overrides the
        right one (to log in wrongly)."""
        login = ""
        if self.user is not None:
            secret = self.password if password is None else password
            login = f"{quote(self.user, safe='')}:{quote(secret or '', safe='')}@"
        return f"{scheme}://{login}127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log(self) -> str:
        """What microsocks has written so far."""
        path = self.folder / "microsocks.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def targets(self) -> list[tuple[str, int]]:
        """Every (host, port) a client had this proxy connect to, in order (a host name when
        the client left resolving to the proxy, socks5h; an address otherwise)."""
        return [(m[1], int(m[2])) for m in _TARGET.finditer(self.log())]

    def start(self, within: float = 10.0) -> None:
        """Run it (again, on the same port) and wait until it accepts connections."""
        command = [microsocks_program() or "microsocks", "-i", "127.0.0.1", "-p", str(self.port)]
        if self.user is not None:
            command += ["-u", self.user, "-P", self.password or ""]
        if self.bind is not None:
            command += ["-b", self.bind]
        with (self.folder / "microsocks.log").open("ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + within
        while not _accepts(self.port):
            if self.process.poll() is not None:
                raise RuntimeError(f"microsocks exited ({self.process.returncode}):\n{self.log()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"microsocks not listening on {self.port}:\n{self.log()}")
            time.sleep(0.02)

    def kill(self) -> None:
        """Make it die at once (SIGKILL): its port refuses, every open tunnel breaks."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def restart(self) -> None:
        """Back on the same port after `kill()`."""
        self.kill()
        self.start()

    def stop(self) -> None:
        """Kill it and remove its folder."""
        self.kill()
        shutil.rmtree(self.folder, ignore_errors=True)


def start_microsocks(
    user: str | None = None, password: str | None = None, bind: str | None = None
) -> MicroSocks:
    """A microsocks on a free loopback port; with `user`, clients must log in as `user` with
    `password`; with `bind` (a loopback address such as 127.0.0.2), its outgoing connections
    leave from that address."""
    folder = Path(tempfile.mkdtemp(prefix="llmgw-microsocks-"))
    server = MicroSocks(free_port(), folder, user, password, bind)
    try:
        server.start()
    except BaseException:
        server.stop()
        raise
    return server


def _accepts(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(("127.0.0.1", port)) == 0
