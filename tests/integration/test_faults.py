"""Issue 5, fault injection. Each test injects one fault and then checks,
through faultkit.recovered(), that the proxy is alive, serves a fresh
session correctly (a download checked with sha256), and that its open
descriptors and listening passive ports are back at the baseline taken
after a warm-up session. Where a fault hits one session, another session
downloading at the same time (a Bystander) must finish whole.

Faults: a backend that refuses connections; one that accepts and never
greets; one that dies mid-transfer; a client that vanishes mid-upload and
mid-download (FIN or RST); garbage instead of a ClientHello; a plaintext
client on the implicit port; garbage after AUTH TLS; client-initiated TLS
renegotiation; 2,000 concurrent idle sessions (memory per session printed);
clients that close while the proxy writes (SIGPIPE).
"""

from __future__ import annotations

import contextlib
import os
import random
import resource
import select
import signal
import socket
import ssl
import threading
import time

import pytest

import faultkit as fk
import harness as h
from faultkit import USER
from harness import KiB, MiB
from harness import PlainControl


@pytest.fixture(scope="module")
def site(workdir):
    with h.Site(workdir, "faults", [fk.SITE],
                sizes={"blob.bin": 256 * KiB, "big.bin": 32 * MiB}) as s:
        yield s


# --------------------------------------------------------------------------
# Backends that fail
# --------------------------------------------------------------------------

def test_backend_refuses_connections(make_proxy, certs, site):
    dead = f"127.0.0.1:{h.free_port()}"          # nobody listens there
    p = fk.start_proxy(make_proxy, site, {"down": h.backend_section(address=dead,
                                                           hostnames=["ftp.down.test"])})
    base = fk.warm_up(p, certs, site)
    mark = p.log_mark()
    for _ in range(3):
        with contextlib.closing(h.connect(p, certs)) as c:
            assert c.start_tls().code == 234
            r = c.user_pass("ftp.down.test|anonymous")
            assert r.code == 421, r
            c.expect_closed(5)
    r = h.curl(p.port, "/x", user="ftp.down.test|anonymous", ca=certs.ca, timeout=15)
    assert r.returncode != 0 and any(x.startswith("421") for x in h.curl_replies(r)), r.stderr
    lines = p.log_lines(mark, "ev=backend_unreachable", dead)
    assert len(lines) >= 4, p.log_since(mark)
    fk.recovered(p, certs, site, base)


class SilentBackend:
    """Accepts TCP connections and never says a word; notes when the peer
    (the proxy) closes each one."""

    def __init__(self):
        self.sock = socket.create_server((h.LOOPBACK, 0))
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.closed_by_peer = 0
        self.conns: list[socket.socket] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        self.sock.settimeout(0.1)
        while not self.stop.is_set():
            with contextlib.suppress(socket.timeout, OSError):
                c, _ = self.sock.accept()
                self.conns.append(c)
                self.accepted += 1
            for c in list(self.conns):
                r, _, _ = select.select([c], [], [], 0)
                if r:
                    try:
                        data = c.recv(4096)
                    except OSError:
                        data = b""
                    if not data:
                        self.closed_by_peer += 1
                        self.conns.remove(c)
                        c.close()

    def close(self):
        self.stop.set()
        self.thread.join(5)
        for c in self.conns:
            c.close()
        self.sock.close()


def test_backend_accepts_then_never_greets(make_proxy, certs, site):
    silent = SilentBackend()
    try:
        p = fk.start_proxy(make_proxy, site, {"mute": h.backend_section(
            address=f"127.0.0.1:{silent.port}", hostnames=["ftp.mute.test"], health_check=0)},
            connect_timeout=2, login_timeout=20)
        base = fk.warm_up(p, certs, site)
        other = fk.Bystander(p, certs, site).go()
        mark = p.log_mark()
        with contextlib.closing(h.connect(p, certs, timeout=15)) as c:
            assert c.start_tls().code == 234
            t0 = time.monotonic()
            r = c.user_pass("ftp.mute.test|anonymous")
            waited = time.monotonic() - t0
            assert r.code == 421, r
            assert waited <= 2 + 3, f"421 after {waited:.1f}s"
            c.expect_closed(5)
        assert p.log_lines(mark, "ev=backend_unreachable", "greeting"), p.log_since(mark)
        other.check()
        h.wait_until(lambda: silent.accepted == 1 and silent.closed_by_peer == 1, 5,
                     what="the proxy to close its connection to the mute backend")
        fk.recovered(p, certs, site, base)
    finally:
        silent.close()


@pytest.mark.parametrize("direction", ["download", "upload"])
def test_backend_dies_mid_transfer(make_proxy, certs, workdir, site, direction):
    """vsftpd's session process is killed mid-transfer: that session ends,
    another one (on another backend) finishes its download whole."""
    victim = h.Site(workdir, f"victim-{direction}", ["ftp.victim.test"],
                    sizes={"big.bin": 32 * MiB}).start()
    try:
        p = fk.start_proxy(make_proxy, site, {"victim": victim.section()})
        vuser = "ftp.victim.test|anonymous"
        base = fk.warm_up(p, certs, site)
        before = victim.session_procs()
        other = fk.Bystander(p, certs, site).go()
        mark = p.log_mark()
        v = h.login(p, certs, vuser, timeout=15)
        try:
            conn = fk.transfer_midway(v, direction, "/big.bin" if direction == "download"
                                      else "/upload/killed.bin", MiB)
            procs = victim.session_procs() - before
            assert procs, "no vsftpd session process found"
            for pid in procs:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            # The session ends: the data connection and then the control
            # connection are closed (a 4xx may come first).
            closed, _ = h.closed_within(conn, 10) if direction == "download" else (True, b"")
            assert closed, "the data connection outlived the backend"
            lines = []
            v.sock.settimeout(10)
            with contextlib.suppress(EOFError, OSError, ssl.SSLError, h.HarnessError):
                while True:
                    r = v.reply()
                    lines.append(r)
                    assert r.code // 100 in (4, 5), f"after the backend died: {r}"
            with contextlib.suppress(OSError):
                conn.close()
        finally:
            v.close_quietly()
        # The close is logged when our FIN has gone out (uv_shutdown's
        # callback): the client may see the EOF a moment before the line.
        with contextlib.suppress(TimeoutError):
            h.wait_until(lambda: p.log_lines(mark, "ev=close"), 10, what="the close line")
        assert p.log_lines(mark, "ev=close"), p.log_since(mark)
        other.check()
        fk.recovered(p, certs, site, base)
    finally:
        victim.stop()


# --------------------------------------------------------------------------
# Clients that vanish
# --------------------------------------------------------------------------

@pytest.mark.parametrize("how", ["fin", "rst"])
@pytest.mark.parametrize("direction", ["download", "upload"])
def test_client_vanishes_mid_transfer(make_proxy, certs, site, direction, how):
    p = fk.start_proxy(make_proxy, site)
    base = fk.warm_up(p, certs, site)
    procs_before = len(site.session_procs())
    other = fk.Bystander(p, certs, site).go()
    mark = p.log_mark()
    x = h.login(p, certs, USER, timeout=15)
    conn = fk.transfer_midway(x, direction, "/big.bin" if direction == "download"
                              else "/upload/vanished.bin", 2 * MiB)
    # Gone: no close_notify, no ABOR, no QUIT.
    if how == "rst":
        fk.rst_close(conn)
    else:
        with contextlib.suppress(OSError):
            conn.close()
    fk.vanish(x, rst=(how == "rst"))
    p.wait_log(r"ev=close", mark, timeout=10)
    other.check()
    h.wait_until(lambda: len(site.session_procs()) <= procs_before, 10,
                 what="the vanished client's backend session to end")
    fk.recovered(p, certs, site, base)
    with contextlib.suppress(FileNotFoundError):
        (site.root / "upload" / "vanished.bin").unlink()


# --------------------------------------------------------------------------
# Bad bytes on the TLS layer
# --------------------------------------------------------------------------

GARBAGE = [
    ("random", random.Random(5).randbytes(4096)),
    ("http", b"GET / HTTP/1.1\r\nHost: proxy.test\r\n\r\n"),
    ("bad-record", b"\x16\x03\x01\xff\xff" + b"\x01" * 64),      # a record too long
    ("alert-first", b"\x15\x03\x03\x00\x02\x02\x28"),           # a fatal alert, no hello
    # An SSLv2-format ClientHello offering only an SSLv2 cipher: complete, refused.
    ("sslv2-hello", bytes.fromhex("801c" "01" "0301" "0003" "0000" "0010" "010080")
     + os.urandom(16)),
]


def test_garbage_instead_of_client_hello(make_proxy, certs, site):
    p = fk.start_proxy(make_proxy, site, login_timeout=20)
    base = fk.warm_up(p, certs, site)
    other = fk.Bystander(p, certs, site).go()
    for name, data in GARBAGE:
        with socket.create_connection((p.host, p.implicit_port), 5) as s:
            with contextlib.suppress(OSError):
                s.sendall(data)
            closed, got = h.closed_within(s, 5)
            assert closed, f"{name}: connection still open"
            assert b"220" not in got, f"{name}: got a plaintext greeting"
    other.check()
    assert p.alive()
    fk.recovered(p, certs, site, base)


def test_plaintext_client_on_implicit_port(make_proxy, certs, site):
    """A plain FTP client on the implicit port: it waits for a greeting that
    never comes in plaintext, sends its USER in clear; the proxy reads that
    as a broken ClientHello and closes."""
    p = fk.start_proxy(make_proxy, site, login_timeout=20)
    base = fk.warm_up(p, certs, site)
    mark = p.log_mark()
    with socket.create_connection((p.host, p.implicit_port), 5) as s:
        s.settimeout(1.0)
        with contextlib.suppress(socket.timeout):
            assert not s.recv(100).startswith(b"220")
        s.sendall(b"USER anonymous\r\n")
        closed, got = h.closed_within(s, 5)
        assert closed, "plaintext client kept on the implicit port"
        assert not got.startswith(b"220"), got
    assert p.log_lines(mark, "ev=close"), p.log_since(mark)
    fk.recovered(p, certs, site, base)


def test_garbage_after_auth_tls(make_proxy, certs, site):
    p = fk.start_proxy(make_proxy, site, login_timeout=20)
    base = fk.warm_up(p, certs, site)
    other = fk.Bystander(p, certs, site).go()
    for name, data in GARBAGE + [("plain-command", b"USER anonymous\r\n")]:
        with PlainControl(p.port) as c:
            assert c.cmd("AUTH TLS").code == 234
            with contextlib.suppress(OSError):
                c.send(data)
            closed, _ = h.closed_within(c.sock, 5)
            assert closed, f"{name}: connection still open"
    other.check()
    fk.recovered(p, certs, site, base)


# --------------------------------------------------------------------------
# Renegotiation (Python's ssl cannot start one: openssl s_client can)
# --------------------------------------------------------------------------

@pytest.mark.parametrize("implicit", [True, False], ids=["implicit", "explicit"])
def test_client_renegotiation_refused(make_proxy, certs, site, implicit):
    p = fk.start_proxy(make_proxy, site)
    base = fk.warm_up(p, certs, site)
    mark = p.log_mark()
    after = fk.renegotiate(p, certs, implicit)
    assert not any(l.startswith("200 ") for l in after.splitlines()), \
        f"the session went on after a renegotiation:\n{after}"
    assert ("no renegotiation" in after or "closed" in after or "errno" in after
            or "error" in after), after
    # The proxy ended that session and logged why.
    p.wait_log(r"ev=close", mark, timeout=5)
    fk.recovered(p, certs, site, base)


# --------------------------------------------------------------------------
# 2,000 concurrent idle sessions
# --------------------------------------------------------------------------

N_IDLE = 2000
SOURCES = [f"127.0.1.{i}" for i in range(1, 41)]      # 50 each: under max_sessions_per_ip 64


def test_2000_concurrent_idle_sessions(make_proxy, certs, site, capsys):
    """2,000 plain TCP control connections that read the 220 greeting and
    then sit idle, from 40 loopback addresses (default per-address limit);
    the proxy's resident memory per idle session is printed. A fresh session
    is served while they are open, and every descriptor comes back after."""
    want = N_IDLE + 500
    old = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert fk.raise_nofile(want) >= want, f"cannot raise this process's fd limit to {want}"
    lo, hi = h.free_port_range(8)
    p = make_proxy(proxy={"passive_ports": f"{lo}-{hi}", "login_timeout": "300",
                          "max_sessions": "4096"},
                   backends={"hard": site.section()}, start=False)
    p.nofile = N_IDLE * 2 + 200
    p.start()
    socks: list[socket.socket] = []
    try:
        base = fk.warm_up(p, certs, site)
        rss0 = fk.rss_kib(p.pid)
        t0 = time.monotonic()
        pending: dict[int, tuple[socket.socket, bytes]] = {}
        poller = select.poll()
        greeted = 0
        for i in range(N_IDLE):
            s = socket.create_connection((p.host, p.port), 10,
                                         source_address=(SOURCES[i % len(SOURCES)], 0))
            s.setblocking(False)
            socks.append(s)
            pending[s.fileno()] = (s, b"")
            poller.register(s, select.POLLIN)
            if len(pending) >= 200 or i == N_IDLE - 1:
                deadline = time.monotonic() + 20
                while pending and time.monotonic() < deadline:
                    for fd, _ in poller.poll(200):
                        s2, got = pending[fd]
                        got += s2.recv(4096)
                        if b"\n" in got:
                            assert got.startswith(b"220"), got
                            greeted += 1
                            poller.unregister(fd)
                            del pending[fd]
                        else:
                            pending[fd] = (s2, got)
                assert not pending, f"{len(pending)} connections got no greeting in 20s"
        took = time.monotonic() - t0
        assert greeted == N_IDLE
        time.sleep(0.5)
        rss1 = fk.rss_kib(p.pid)
        fds_open = p.fd_count()
        per = (rss1 - rss0) / N_IDLE
        figures = (f"\n2,000 idle sessions: connected and greeted in {took:.1f}s; proxy RSS "
                   f"{rss0} KiB -> {rss1} KiB: {per:.1f} KiB per idle session; "
                   f"{fds_open} descriptors open")
        print(figures)
        with capsys.disabled():           # shown in every run, not only on failure
            print(figures, flush=True)
        assert fds_open >= base + N_IDLE
        # Service goes on while they are there.
        fk.fresh_download(p, certs, site)
        assert per < 128, f"{per:.1f} KiB per idle session"
    finally:
        for s in socks:
            s.close()
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, old)
    p.wait_fds_back(base, timeout=20)
    fk.recovered(p, certs, site, base)


# --------------------------------------------------------------------------
# SIGPIPE
# --------------------------------------------------------------------------

def test_sigpipe_never_kills_the_process(make_proxy, certs, site):
    """Clients that close (RST) while the proxy is writing to them: before
    login (answers to a flood of FEAT), in a TLS handshake, logged in, and
    mid-download. The process ignores SIGPIPE and stays up."""
    p = fk.start_proxy(make_proxy, site, login_timeout=20)
    base = fk.warm_up(p, certs, site)
    sigign = int(fk.status_field(p.pid, "SigIgn"), 16)
    assert sigign & (1 << (signal.SIGPIPE - 1)), "SIGPIPE is not ignored"
    hello = fk.client_hello()

    def flood_plain():
        s = socket.create_connection((p.host, p.port), 5)
        s.sendall(b"FEAT\r\nHELP\r\n" * 2000)
        time.sleep(0.05)
        fk.rst_close(s)

    def hello_then_rst():
        s = socket.create_connection((p.host, p.implicit_port), 5)
        s.sendall(hello)
        fk.rst_close(s)

    def flood_logged_in():
        c = h.login(p, certs, USER)
        c.sock.setblocking(False)
        with contextlib.suppress(OSError, ssl.SSLError):
            for _ in range(500):
                c.sock.send(b"FEAT\r\nSTAT\r\n")
        fk.vanish(c, rst=True)

    def download_then_rst():
        c = h.login(p, certs, USER, timeout=15)
        conn, _ = c.ntransfercmd("RETR /big.bin")
        h.read_all(conn, 256 * KiB)
        fk.rst_close(conn)
        fk.vanish(c, rst=True)

    errors = []

    def guarded(f):
        def run():
            try:
                f()
            except BaseException as e:     # collected, reported below
                errors.append(f"{f.__name__}: {e!r}")
        return run

    for _ in range(5):
        threads = [threading.Thread(target=guarded(f), daemon=True)
                   for f in (flood_plain, hello_then_rst, flood_logged_in, download_then_rst)
                   for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
            assert not t.is_alive()
        assert p.alive(), f"ftpsgate died (exit {p.proc.returncode})"
    assert not errors, errors
    fk.recovered(p, certs, site, base, timeout=20)
