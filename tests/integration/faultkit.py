"""Fault-injection helpers shared by the hardening tests (issue 5):
test_limits.py, test_faults.py, test_soak.py, test_security.py,
valgrind_session.py, and the mid-transfer failures of test_data.py.

The "hard" site's host name and user; the "after a fault" check: the proxy
is alive, serves a fresh session with a whole download, and its descriptors
and passive ports are back where they were (warm_up(), recovered()); a
Bystander session downloading while a fault happens; clients that vanish or
reset; a ClientHello's bytes; memory and /proc probes; renegotiation through
openssl s_client. The general helpers (Site, login, retr, stor, pasv_port,
closed_within, the proxy's descriptor and port probes, ...) are harness.py's.

Every wait has a timeout.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import resource
import signal
import socket
import ssl
import struct
import subprocess
import threading
import time
from pathlib import Path
from typing import Optional

import harness as h
from harness import MiB, Site

SITE = "ftp.hard.test"          # the host name of the sites the hardening tests make
USER = f"{SITE}|anonymous"


def start_proxy(make_proxy, site: Site, extra_backends: Optional[dict] = None,
                pool: int = 8, start: bool = True, **opts) -> h.Proxy:
    """make_proxy() in front of `site` (backend "hard") and extra_backends,
    with a passive pool of its own of `pool` ports; opts are [proxy] keys
    (None: the key is left out, so its default applies). start=False: made,
    not started."""
    lo, hi = h.free_port_range(pool)
    proxy = {"passive_ports": f"{lo}-{hi}"}
    proxy.update({k: (None if v is None else str(v)) for k, v in opts.items()})
    backends = {"hard": site.section()}
    backends.update(extra_backends or {})
    return make_proxy(proxy=proxy, backends=backends, start=start)


# --------------------------------------------------------------------------
# Clients that vanish, and raw TLS bytes
# --------------------------------------------------------------------------

def rst_close(sock: socket.socket) -> None:
    """Close with an RST (SO_LINGER 0) rather than a FIN. For an SSLSocket
    the option is set on the same descriptor."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


def vanish(c: h.FtpsClient, rst: bool = False) -> None:
    """The control connection goes away: no QUIT, no close_notify; RST or FIN."""
    if rst and c.sock is not None:
        with contextlib.suppress(OSError):
            c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.drop()


def transfer_midway(c: h.FtpsClient, direction: str, path: str, n: int):
    """Starts RETR path ("download") or STOR path ("upload") and moves its
    first n bytes; returns the data connection, still open."""
    if direction == "download":
        conn, _ = c.ntransfercmd(f"RETR {path}")
        assert h.read_all(conn, n) == n
    else:
        conn, _ = c.ntransfercmd(f"STOR {path}")
        conn.sendall(os.urandom(n))
    return conn


def client_hello(sni: Optional[str] = None, max_version=None) -> bytes:
    """The bytes of a real ClientHello (Python's ssl over memory BIOs)."""
    ctx = h.client_context(verify=False)
    if max_version is not None:
        ctx.maximum_version = max_version
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_side=False, server_hostname=sni)
    with contextlib.suppress(ssl.SSLWantReadError):
        obj.do_handshake()
    return out.read()


# --------------------------------------------------------------------------
# Probes of the running proxy
# --------------------------------------------------------------------------

def status_field(pid: int, field: str) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return line.split(":", 1)[1].strip()
    raise KeyError(field)


def rss_kib(pid: int) -> int:
    return int(status_field(pid, "VmRSS").split()[0])


def binary_is_sanitized(path: Path) -> bool:
    """True for an ASan build (its resident memory is not the product's)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return False
    return b"AddressSanitizer" in data or b"libasan.so" in data


def raise_nofile(want: int) -> int:
    """Raise this process's descriptor limit to `want` (or as far as allowed);
    returns the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= want:
        return soft
    new_hard = hard if hard == resource.RLIM_INFINITY or hard >= want else want
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, new_hard))
        return want
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# --------------------------------------------------------------------------
# Baseline and recovery
# --------------------------------------------------------------------------

def fresh_download(p: h.Proxy, certs, site: Site, name: str = "blob.bin", *,
                   user: str = USER) -> None:
    """A new session logs in and downloads `name` whole (sha256)."""
    f = site.files[name]
    c = h.login(p, certs, user, timeout=20)
    try:
        got, n, resp = h.retr(c, f"/{name}")
        assert resp.startswith("226"), resp
        assert n == f.size and got == f.sha, f"download of {name}: {n} bytes, sha {got}"
        assert c.cmd("QUIT").code == 221
    finally:
        c.close_quietly()


def warm_up(p: h.Proxy, certs, site: Site, name: str = "blob.bin", *,
            user: str = USER) -> int:
    """One whole session with a transfer (OpenSSL loads lazily, libuv makes
    its threadpool), then the descriptor count at rest."""
    fresh_download(p, certs, site, name, user=user)
    time.sleep(0.5)
    h.wait_until(lambda: not p.pool_ports_busy(), 5, what="pool free after warm-up")
    return p.fd_count()


def recovered(p: h.Proxy, certs, site: Site, base: int, timeout: float = 10.0) -> None:
    """After a fault: alive, descriptors and passive ports back to the
    baseline, serves a fresh session (download with sha256), and is back at
    the baseline after that session too. (Waiting for the baseline first
    also lets sessions the test closed end, so that a session limit under
    test has room again.)"""
    assert p.alive(), f"ftpsgate died (exit {p.proc.returncode if p.proc else '?'})"
    p.wait_fds_back(base, timeout)
    fresh_download(p, certs, site)
    p.wait_fds_back(base, timeout)
    p.wait_pool_free(timeout)
    assert p.alive()


class Bystander(threading.Thread):
    """Another session downloading `name` while a fault happens: it reads
    `pause_at` bytes, sets `midway`, waits for `resume`, reads the rest and
    checks sha256. check() releases it and asserts it finished whole."""

    def __init__(self, p: h.Proxy, certs, site: Site, name: str = "big.bin",
                 pause_at: int = 4 * MiB, user: str = USER, timeout: float = 60.0):
        super().__init__(daemon=True)
        self.p, self.certs, self.site, self.name = p, certs, site, name
        self.pause_at, self.user, self.timeout = pause_at, user, timeout
        self.midway = threading.Event()
        self.resume = threading.Event()
        self.error: Optional[BaseException] = None
        self.n = 0
        self.sha: Optional[str] = None
        self.final: Optional[h.Reply] = None

    def run(self):
        try:
            c = h.login(self.p, self.certs, self.user, timeout=30)
            try:
                hs = hashlib.sha256()
                conn, _ = c.ntransfercmd(f"RETR /{self.name}")
                self.n = h.read_all(conn, self.pause_at, hs)
                self.midway.set()
                if not self.resume.wait(self.timeout):
                    raise TimeoutError("never resumed")
                self.n += h.read_all(conn, None, hs)
                h.finish_tls(conn)
                self.final = c.reply()
                self.sha = hs.hexdigest()
                assert c.cmd("NOOP").code == 200
                c.quit()
            finally:
                c.close_quietly()
        except BaseException as e:       # reported by check()
            self.error = e
            self.midway.set()

    def go(self) -> "Bystander":
        """Starts the download and waits until it is midway."""
        self.start()
        self.wait_midway()
        return self

    def wait_midway(self, timeout: float = 30.0) -> None:
        assert self.midway.wait(timeout), "the other session never got going"
        assert self.error is None, f"the other session failed: {self.error!r}"

    def check(self) -> None:
        self.resume.set()
        self.join(self.timeout)
        assert not self.is_alive(), "the other session's download did not finish"
        assert self.error is None, f"the other session failed: {self.error!r}"
        assert self.final is not None and self.final.code == 226, self.final
        f = self.site.files[self.name]
        assert (self.n, self.sha) == (f.size, f.sha), "the other session's file differs"


# --------------------------------------------------------------------------
# TLS renegotiation (Python's ssl cannot start one: openssl s_client can)
# --------------------------------------------------------------------------

class SClient:
    """openssl s_client in interactive mode: lines written to its stdin go
    to the server (with -crlf), 'R' alone on a line renegotiates."""

    def __init__(self, port: int, ca, starttls: bool):
        cmd = ["openssl", "s_client", "-connect", f"{h.LOOPBACK}:{port}", "-tls1_2",
               "-crlf", "-CAfile", str(ca.cert), "-servername", "proxy.test"]
        if starttls:
            cmd += ["-starttls", "ftp"]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self.out = b""
        self.lock = threading.Lock()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        while True:
            b = self.proc.stdout.read1(4096)
            if not b:
                return
            with self.lock:
                self.out += b

    def text(self) -> str:
        with self.lock:
            return self.out.decode(errors="replace")

    def send(self, line: str) -> None:
        with contextlib.suppress(OSError):
            self.proc.stdin.write(line.encode() + b"\n")
            self.proc.stdin.flush()

    def wait_for(self, what: str, timeout: float = 10.0, start: int = 0) -> None:
        """Waits for a line of s_client's output that starts with `what`."""
        def seen():
            return any(l.startswith(what) for l in self.text()[start:].splitlines())
        h.wait_until(lambda: seen() or self.proc.poll() is not None,
                     timeout, what=f"s_client output {what!r}")
        if not seen():
            self.reader.join(5)        # it has exited: its last words may be in the pipe
        assert seen(), f"no line {what!r} from s_client:\n{self.text()}"

    def close(self) -> int:
        with contextlib.suppress(OSError):
            self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            h._kill_group(self.proc, signal.SIGKILL)
            self.proc.wait(5)
        self.reader.join(5)
        return self.proc.returncode


def renegotiate(p: h.Proxy, certs, implicit: bool) -> str:
    """Logs in over TLS 1.2 with s_client, asks for a renegotiation, then
    sends NOOP. Returns s_client's output after the 'R'."""
    sc = SClient(p.implicit_port if implicit else p.port, certs.ca, starttls=not implicit)
    try:
        sc.wait_for("    Protocol  : TLSv1.2")
        sc.send("NOOP")
        sc.wait_for("200 NOOP")
        at = len(sc.text())
        sc.send("R")
        sc.wait_for("RENEGOTIATING", start=at)
        time.sleep(0.5)
        sc.send("NOOP")
        # Either s_client gives up (the proxy refused with an alert and/or
        # closed), or it stays up without the NOOP being answered.
        with contextlib.suppress(subprocess.TimeoutExpired):
            sc.proc.wait(5)
        return sc.text()[at:]
    finally:
        sc.close()
