"""Helpers shared by the hardening tests (issue 5): test_limits.py,
test_faults.py, test_soak.py, test_security.py and valgrind_session.py.

A dedicated vsftpd site ("hard", host names ftp.hard.test) with random files
of known sha256; an ftplib client that resumes the control session on data
connections (the proxy requires it by default); descriptor, passive-port and
memory probes of the running proxy; and the "after a fault" check: the proxy
is alive, serves a fresh session with a whole download, and its descriptors
and passive ports are back where they were.

Every wait has a timeout.
"""

from __future__ import annotations

import contextlib
import ftplib
import hashlib
import io
import os
import resource
import signal
import socket
import ssl
import struct
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import harness as h
from harness import FtpsClient, Vsftpd, backend_section

PW = "test@example.org"
KiB = 1024
MiB = 1024 * KiB
SITE = "ftp.hard.test"
USER = f"{SITE}|anonymous"
BLOCK = 64 * KiB


# --------------------------------------------------------------------------
# The site
# --------------------------------------------------------------------------

@dataclass
class SiteFile:
    name: str
    size: int
    sha: str


def random_bytes(size: int, seed: Optional[int] = None) -> bytes:
    if seed is None:
        return os.urandom(size)
    import random
    return random.Random(seed).randbytes(size)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha_file(path: Path) -> str:
    hs = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(4 * MiB):
            hs.update(chunk)
    return hs.hexdigest()


class Site:
    """A vsftpd backend with random files: files[name] -> SiteFile."""

    def __init__(self, workdir: Path, name: str = "hard", sizes: Optional[dict] = None,
                 pasv_ports: int = 20, pasv_range: Optional[tuple[int, int]] = None):
        sizes = sizes or {"blob.bin": 256 * KiB}
        self.vs = Vsftpd(workdir, name, pasv_ports=pasv_ports, files={}, dirs=[])
        if pasv_range is not None:           # a range reserved earlier
            self.vs.pasv_min, self.vs.pasv_max = pasv_range
        self.files: dict[str, SiteFile] = {}
        self._sizes = sizes

    def start(self) -> "Site":
        self.vs.start()
        for name, size in self._sizes.items():
            data = os.urandom(size)
            p = self.vs.root / name
            p.write_bytes(data)
            os.chmod(p, 0o644)
            self.files[name] = SiteFile(name, size, sha(data))
        return self

    def stop(self) -> None:
        self.vs.stop()

    @property
    def root(self) -> Path:
        return self.vs.root

    def section(self, hostnames=(SITE,), **extra) -> dict:
        return backend_section(self.vs, list(hostnames), **extra)

    def session_procs(self) -> set[int]:
        return h.descendants(self.vs.proc.pid) if self.vs.proc else set()


# --------------------------------------------------------------------------
# Clients
# --------------------------------------------------------------------------

class Client(FtpsClient):
    """FtpsClient that resumes the control session on data connections."""

    def __init__(self, **kw):
        kw.setdefault("reuse_session", True)
        super().__init__(**kw)


def connect(p: h.Proxy, certs, *, implicit: bool = False, source: Optional[str] = None,
            timeout: float = h.T_IO, sni: Optional[str] = None, **kw) -> Client:
    c = Client(ca=certs.ca, verify=True, implicit=implicit, timeout=timeout, sni=sni, **kw)
    c.connect(p.host, p.implicit_port if implicit else p.port,
              source_address=(source, 0) if source else None)
    return c


def login(p: h.Proxy, certs, user: str = USER, password: str = PW, *, prot_p: bool = True,
          **kw) -> Client:
    """A logged-in session, PBSZ 0 + PROT P done unless prot_p=False."""
    c = connect(p, certs, **kw)
    try:
        r = c.tls_login(user, password)
        assert r.code == 230, f"login as {user}: {r}"
        if prot_p:
            c.protect()
    except BaseException:
        c.close_quietly()
        raise
    return c


def retr(c: ftplib.FTP, path: str) -> tuple[str, int, str]:
    """(sha256, bytes, final reply) of a download."""
    return h.retr_sha(c, path, blocksize=BLOCK)


def stor(c: ftplib.FTP, path: str, data: bytes) -> str:
    return c.storbinary(f"STOR {path}", io.BytesIO(data), blocksize=BLOCK)


def pasv_port(c: FtpsClient) -> int:
    r = c.cmd("PASV")
    assert r.code == 227, r
    return ftplib.parse227(r.text)[1]


def read_n(conn, limit: int) -> int:
    n = 0
    while n < limit:
        b = conn.recv(min(BLOCK, limit - n))
        if not b:
            break
        n += len(b)
    return n


def rst_close(sock: socket.socket) -> None:
    """Close with an RST (SO_LINGER 0) rather than a FIN. For an SSLSocket
    the option is set on the same descriptor."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


def vanish(c: FtpsClient, rst: bool = False) -> None:
    """The control connection goes away: no QUIT, no close_notify; RST or FIN."""
    if rst and c.sock is not None:
        with contextlib.suppress(OSError):
            c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.drop()


def closed_within(sock: socket.socket, timeout: float) -> tuple[bool, bytes]:
    """(True, bytes read) if the peer closes (EOF/reset) within timeout."""
    deadline = time.monotonic() + timeout
    got = b""
    try:
        while time.monotonic() < deadline:
            sock.settimeout(max(0.05, deadline - time.monotonic()))
            b = sock.recv(4096)
            if not b:
                return True, got
            got += b
    except socket.timeout:
        return False, got
    except (ConnectionError, OSError, ssl.SSLError):
        return True, got
    return False, got


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

def pool_of(p: h.Proxy) -> range:
    lo, hi = (int(x) for x in str(p.opts["passive_ports"]).split("-"))
    return range(lo, hi + 1)


def pool_ports_busy(p: h.Proxy) -> list[int]:
    """Ports of the proxy's passive range that something listens on."""
    listening = h._listening_ports()
    return [port for port in pool_of(p) if port in listening]


def fd_list(pid: int) -> list[str]:
    out = []
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                out.append(f"{fd} -> {os.readlink(f'/proc/{pid}/fd/{fd}')}")
    return sorted(out, key=lambda s: int(s.split()[0]))


def wait_fds_back(p: h.Proxy, base: int, timeout: float = 10.0) -> None:
    try:
        h.wait_until(lambda: p.fd_count() <= base, timeout, interval=0.1,
                     what=f"the proxy's descriptors back to {base}")
    except TimeoutError:
        raise AssertionError(f"proxy holds {p.fd_count()} descriptors after {timeout:.0f}s, "
                             f"{base} before:\n" + "\n".join(fd_list(p.pid)))


def wait_pool_free(p: h.Proxy, timeout: float = 10.0) -> None:
    try:
        h.wait_until(lambda: not pool_ports_busy(p), timeout, interval=0.1,
                     what="every passive port closed")
    except TimeoutError:
        raise AssertionError(f"passive ports still listening after {timeout:.0f}s: "
                             f"{pool_ports_busy(p)}")


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

def fresh_download(p: h.Proxy, certs, site: Site, name: str = "blob.bin",
                   user: str = USER) -> None:
    """A new session logs in and downloads `name` whole (sha256)."""
    f = site.files[name]
    c = login(p, certs, user, timeout=20)
    try:
        got, n, resp = retr(c, f"/{name}")
        assert resp.startswith("226"), resp
        assert n == f.size and got == f.sha, f"download of {name}: {n} bytes, sha {got}"
        assert c.cmd("QUIT").code == 221
    finally:
        c.close_quietly()


def warm_up(p: h.Proxy, certs, site: Site, user: str = USER) -> int:
    """One whole session with a transfer (OpenSSL loads lazily, libuv makes
    its threadpool), then the descriptor count at rest."""
    fresh_download(p, certs, site, user=user)
    time.sleep(0.3)
    h.wait_until(lambda: not pool_ports_busy(p), 5, what="pool free after warm-up")
    return p.fd_count()


def recovered(p: h.Proxy, certs, site: Site, base: int, timeout: float = 10.0) -> None:
    """After a fault: alive, descriptors and passive ports back to the
    baseline, serves a fresh session (download with sha256), and is back at
    the baseline after that session too. (Waiting for the baseline first
    also lets sessions the test closed end, so that a session limit under
    test has room again.)"""
    assert p.alive(), f"ftpsgate died (exit {p.proc.returncode if p.proc else '?'})"
    wait_fds_back(p, base, timeout)
    fresh_download(p, certs, site)
    wait_fds_back(p, base, timeout)
    wait_pool_free(p, timeout)
    assert p.alive()


def log_lines(p: h.Proxy, mark: int, *words: str) -> list[str]:
    """Lines of the proxy's log since `mark` that contain every word."""
    return [l for l in p.log_since(mark).splitlines() if all(w in l for w in words)]


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
            c = login(self.p, self.certs, self.user, timeout=30)
            try:
                hs = hashlib.sha256()
                conn, _ = c.ntransfercmd(f"RETR /{self.name}")
                while self.n < self.pause_at:
                    b = conn.recv(min(BLOCK, self.pause_at - self.n))
                    if not b:
                        break
                    hs.update(b)
                    self.n += len(b)
                self.midway.set()
                if not self.resume.wait(self.timeout):
                    raise TimeoutError("never resumed")
                while True:
                    b = conn.recv(BLOCK)
                    if not b:
                        break
                    hs.update(b)
                    self.n += len(b)
                with contextlib.suppress(OSError, ValueError):
                    conn.unwrap()
                conn.close()
                self.final = c.reply()
                self.sha = hs.hexdigest()
                assert c.cmd("NOOP").code == 200
                c.quit()
            finally:
                c.close_quietly()
        except BaseException as e:       # reported by check()
            self.error = e
            self.midway.set()

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
