"""Issue 5, limits and timeouts: max_sessions, max_sessions_per_ip and a
backend's max_sessions refuse the extra session with 421 and a log line
(`ev=refused reason=...`); login_timeout ends a slowloris client and TLS
handshakes that never finish; data_timeout ends stalled data connections
(download and upload) and gives their passive port back while the session
goes on; an exhausted passive pool answers 425.

In each test another session, logged in before the limit bites, is served
untouched: it downloads a file whole (sha256) while or after the limit acts.
Each test ends with the proxy's descriptors and passive ports back at the
baseline taken after a warm-up session.
"""

from __future__ import annotations

import contextlib
import ftplib
import hashlib
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

OTHER = h.OTHER_CLIENT_ADDR      # 127.0.0.2


@pytest.fixture(scope="module")
def site(workdir):
    with h.Site(workdir, "limits", [fk.SITE],
                sizes={"blob.bin": 256 * KiB, "big.bin": 48 * MiB}) as s:
        yield s


def download_ok(c: h.FtpsClient, site: h.Site, name: str = "blob.bin") -> None:
    got, n, resp = h.retr(c, f"/{name}")
    assert resp.startswith("226"), resp
    assert (n, got) == (site.files[name].size, site.files[name].sha)


def refused_421(port: int, source=None) -> h.Reply:
    """A new plaintext control connection that must get 421 and be closed."""
    c = PlainControl(port, source_address=(source, 0) if source else None)
    try:
        assert c.greeting.code == 421, f"expected 421, got {c.greeting}"
        closed, _ = h.closed_within(c.sock, 5)
        assert closed, "the refused connection stayed open"
        return c.greeting
    finally:
        c.close()


def admitted_again(port: int, timeout: float = 5.0, source=None) -> None:
    """Once a session has ended, a new connection gets 220 (polls: the end
    of a session is asynchronous)."""
    def try_once():
        with PlainControl(port, source_address=(source, 0) if source else None) as c:
            return c.greeting.code == 220
    h.wait_until(try_once, timeout, interval=0.2, what="a new connection to be admitted")


def transfer_on(c: h.FtpsClient, port: int, path: str) -> tuple[int, str]:
    """RETR on a passive port this client already holds (raw: no new PASV)."""
    conn = h.data_connect(c, port, source=(c.source_address[0], 0) if c.source_address
                          else None)
    r = c.cmd(f"RETR {path}")
    assert r.code == 150, r
    t = h.wrap_data(c, conn)
    hs = hashlib.sha256()
    n = h.read_all(t, None, hs)
    h.finish_tls(t)
    r = c.reply()
    assert r.code == 226, r
    return n, hs.hexdigest()


# --------------------------------------------------------------------------
# Session limits
# --------------------------------------------------------------------------

def test_max_sessions_refuses_extra_with_421(make_proxy, certs, site):
    p = fk.start_proxy(make_proxy, site, max_sessions=3)
    base = fk.warm_up(p, certs, site)
    held = []
    b = h.login(p, certs, USER)
    try:
        held = [PlainControl(p.port), PlainControl(p.port)]   # 3 sessions now
        assert all(x.greeting.code == 220 for x in held)
        mark = p.log_mark()
        refused_421(p.port)
        # On the implicit listener there is no plaintext to say 421 in: closed.
        with socket.create_connection((p.host, p.implicit_port), 5) as s:
            closed, got = h.closed_within(s, 5)
            assert closed and got == b"", got
        lines = p.log_lines(mark, "ev=refused", "reason=max_sessions")
        assert len(lines) >= 2, p.log_since(mark)
        # The sessions inside the limit are untouched.
        download_ok(b, site)
        assert all(x.cmd("NOOP").code == 200 for x in held)
        # One ends: there is room again.
        held.pop().close()
        admitted_again(p.port)
    finally:
        for x in held:
            x.close()
        b.close_quietly()
    fk.recovered(p, certs, site, base)


def test_max_sessions_per_ip_counts_each_address(make_proxy, certs, site):
    p = fk.start_proxy(make_proxy, site, max_sessions_per_ip=2)
    base = fk.warm_up(p, certs, site)
    sessions = []
    try:
        sessions.append(h.login(p, certs, USER))
        sessions.append(h.login(p, certs, USER))
        mark = p.log_mark()
        refused_421(p.port)
        lines = p.log_lines(mark, "ev=refused", "reason=max_sessions_per_ip",
                             "client=127.0.0.1:")
        assert lines, p.log_since(mark)
        # Another address has its own count: two sessions, data included.
        for _ in range(2):
            c = h.login(p, certs, USER, source=OTHER)
            sessions.append(c)
            download_ok(c, site)
        mark = p.log_mark()
        refused_421(p.port, source=OTHER)
        assert p.log_lines(mark, "ev=refused", "reason=max_sessions_per_ip",
                            f"client={OTHER}:"), p.log_since(mark)
        download_ok(sessions[0], site)
        sessions.pop(0).quit()
        admitted_again(p.port)
    finally:
        for c in sessions:
            c.close_quietly()
    fk.recovered(p, certs, site, base)


def test_backend_max_sessions(make_proxy, certs, site, alpha):
    lo, hi = h.free_port_range(6)
    p = make_proxy(proxy={"passive_ports": f"{lo}-{hi}"},
                   backends={"hard": site.section(max_sessions=1),
                             "alpha": h.backend_section(alpha, ["ftp.alpha.test"])})
    base = fk.warm_up(p, certs, site)
    a = h.login(p, certs, USER)
    try:
        mark = p.log_mark()
        with contextlib.closing(h.connect(p, certs)) as b:
            assert b.start_tls().code == 234
            r = b.user_pass(USER)
            assert r.code == 421, r
            b.expect_closed(5)
        lines = p.log_lines(mark, "ev=refused", "backend=hard")
        assert any("max_sessions" in l for l in lines), p.log_since(mark)
        # Another site is not limited by this one's cap.
        with contextlib.closing(h.login(p, certs, "ftp.alpha.test|anonymous")) as c:
            assert c.cmd("SIZE /alpha-only.txt").code == 213
            c.quit()
        download_ok(a, site)
        a.quit()
    finally:
        a.close_quietly()
    # The slot is free again once `a` has gone.
    def login_works():
        with contextlib.closing(h.connect(p, certs)) as c:
            c.start_tls()
            ok = c.user_pass(USER).code == 230
            with contextlib.suppress(Exception):
                c.quit()
            return ok
    h.wait_until(login_works, 5, interval=0.2, what="the site's slot to be free again")
    fk.recovered(p, certs, site, base)


# --------------------------------------------------------------------------
# login_timeout
# --------------------------------------------------------------------------

class Timed(threading.Thread):
    """Runs fn() in a thread; records its result or exception and how long
    it took."""

    def __init__(self, fn):
        super().__init__(daemon=True)
        self.fn = fn
        self.result = None
        self.error = None
        self.t = None

    def run(self):
        t0 = time.monotonic()
        try:
            self.result = self.fn()
        except BaseException as e:        # reported by the test
            self.error = e
        self.t = time.monotonic() - t0

    def outcome(self, timeout: float):
        self.join(timeout)
        assert not self.is_alive(), f"{self.fn.__name__} still running after {timeout}s"
        if self.error is not None:
            raise self.error
        return self.result


def drip(sock, data: bytes, limit: float) -> tuple[bool, bytes]:
    """Send one byte a second until the peer closes; (closed, bytes read)."""
    got = b""
    deadline = time.monotonic() + limit
    i = 0
    sock.settimeout(1.0)
    while time.monotonic() < deadline:
        try:
            sock.sendall(data[i % len(data):i % len(data) + 1])
        except (OSError, ssl.SSLError):
            return True, got
        i += 1
        try:
            b = sock.recv(4096)
            if not b:
                return True, got
            got += b
        except socket.timeout:
            continue
        except (OSError, ssl.SSLError):
            return True, got
    return False, got


def test_login_timeout_ends_slowloris(make_proxy, certs, site):
    """Clients that send a byte a second (never a whole line) are cut at
    login_timeout, in plaintext before AUTH TLS and inside TLS alike; a
    session logging in meanwhile is served."""
    lt = 3
    p = fk.start_proxy(make_proxy, site, login_timeout=lt)
    base = fk.warm_up(p, certs, site)
    mark = p.log_mark()
    line = b"USER " + b"x" * 200

    def plain():
        s = socket.create_connection((p.host, p.port), 5)
        with s:
            assert s.recv(4096).startswith(b"220")
            return drip(s, line, lt + 8)

    def tls():
        s = socket.create_connection((p.host, p.implicit_port), 5)
        t = h.client_context(certs.ca).wrap_socket(s)
        with t:
            return drip(t, line, lt + 8)

    loris = [Timed(plain), Timed(tls)]
    for x in loris:
        x.start()
    # Meanwhile a normal session logs in and downloads, twice.
    for _ in range(2):
        fk.fresh_download(p, certs, site)
    for x in loris:
        closed, got = x.outcome(lt + 12)
        assert closed, f"{x.fn.__name__}: slowloris not cut within {lt + 8}s"
        assert lt - 0.5 <= x.t <= lt + 4, f"{x.fn.__name__}: cut after {x.t:.1f}s"
        if x.fn is plain:
            assert b"421" in got, got
    assert len(p.log_lines(mark, "ev=timeout", "what=login")) >= 2, p.log_since(mark)
    fk.recovered(p, certs, site, base)


def test_tls_handshake_that_never_finishes_is_ended(make_proxy, certs, site):
    """Handshakes left hanging are ended by login_timeout: an implicit
    connection that sends nothing, half a ClientHello, or a whole
    ClientHello and then nothing; AUTH TLS followed by half a ClientHello."""
    lt = 3
    p = fk.start_proxy(make_proxy, site, login_timeout=lt)
    base = fk.warm_up(p, certs, site)
    hello = fk.client_hello()
    assert hello[:1] == b"\x16" and len(hello) > 100

    def silent_implicit():
        with socket.create_connection((p.host, p.implicit_port), 5) as s:
            return h.closed_within(s, lt + 6)

    def half_hello_implicit():
        with socket.create_connection((p.host, p.implicit_port), 5) as s:
            s.sendall(hello[:len(hello) // 2])
            return h.closed_within(s, lt + 6)

    def whole_hello_implicit():
        with socket.create_connection((p.host, p.implicit_port), 5) as s:
            s.sendall(hello)
            return h.closed_within(s, lt + 6)

    def half_hello_explicit():
        with socket.create_connection((p.host, p.port), 5) as s:
            f = s.makefile("rb")
            assert f.readline().startswith(b"220")
            s.sendall(b"AUTH TLS\r\n")
            assert f.readline().startswith(b"234")
            s.sendall(hello[:len(hello) // 2])
            return h.closed_within(s, lt + 6)

    hangs = [Timed(f) for f in (silent_implicit, half_hello_implicit, whole_hello_implicit,
                                half_hello_explicit)]
    for x in hangs:
        x.start()
    fk.fresh_download(p, certs, site)
    for x in hangs:
        closed, _ = x.outcome(lt + 10)
        assert closed, f"{x.fn.__name__}: still open after {lt + 6}s"
        assert lt - 0.5 <= x.t <= lt + 4, f"{x.fn.__name__}: ended after {x.t:.1f}s"
    fk.recovered(p, certs, site, base)


# --------------------------------------------------------------------------
# data_timeout
# --------------------------------------------------------------------------

@pytest.mark.parametrize("direction", ["download", "upload"])
def test_data_timeout_ends_stalled_transfer_and_frees_port(make_proxy, certs, site,
                                                          direction):
    """The client connects its data socket, the transfer starts, then the
    client stops reading (download) or sending (upload) while keeping the
    connection open. After data_timeout without progress the proxy ends the
    transfer (a 4xx on the control connection, the data connection closed),
    the port goes back to the 2-port pool while the session is still open
    (two other sessions then hold both ports at once), and the stalled
    session goes on."""
    dt = 2
    p = fk.start_proxy(make_proxy, site, pool=2, data_timeout=dt, idle_timeout=60)
    base = fk.warm_up(p, certs, site)
    b = h.login(p, certs, USER)
    a = h.login(p, certs, USER, timeout=20)
    mark = p.log_mark()
    try:
        conn = fk.transfer_midway(a, direction, "/big.bin" if direction == "download"
                                  else "/upload/stalled.bin", MiB)
        t0 = time.monotonic()
        # Meanwhile another session transfers on the other port.
        download_ok(b, site)
        r = a.reply()
        waited = time.monotonic() - t0
        assert r.code // 100 == 4, r
        assert dt - 0.5 <= waited <= dt + 4, f"final reply after {waited:.1f}s"
        closed, _ = h.closed_within(conn, 5)
        assert closed, "the stalled data connection is still open"
        with contextlib.suppress(OSError):
            conn.close()
        assert p.log_lines(mark, "data_timeout"), p.log_since(mark)
        # The port is back in the pool while `a` is still logged in.
        p.wait_pool_free(5)
        c = h.login(p, certs, USER)
        try:
            ports = {h.pasv_port(b), h.pasv_port(c)}
            assert ports == set(p.passive_ports()), ports
        finally:
            c.close_quietly()
            b.close_quietly()
        # The stalled session itself goes on.
        assert a.cmd("NOOP").code == 200
        h.wait_until(lambda: not p.pool_ports_busy(), 5, what="b's and c's ports closed")
        download_ok(a, site)
        a.quit()
    finally:
        a.close_quietly()
        b.close_quietly()
    fk.recovered(p, certs, site, base)
    with contextlib.suppress(FileNotFoundError):
        (site.root / "upload" / "stalled.bin").unlink()


# --------------------------------------------------------------------------
# The passive pool
# --------------------------------------------------------------------------

def test_passive_pool_exhausted_gives_425(make_proxy, certs, site):
    p = fk.start_proxy(make_proxy, site, pool=2)
    base = fk.warm_up(p, certs, site)
    a, b, c = (h.login(p, certs, USER) for _ in range(3))
    try:
        pa = h.pasv_port(a)
        r = b.cmd("EPSV")
        assert r.code == 229, r
        pb = ftplib.parse229(r.text, ("x", 0))[1]
        assert {pa, pb} == set(p.passive_ports())
        mark = p.log_mark()
        for cmd in ("PASV", "EPSV"):
            r = c.cmd(cmd)
            assert r.code == 425, f"{cmd}: {r}"
        assert p.log_lines(mark, "ev=passive_ports_exhausted"), p.log_since(mark)
        assert c.cmd("NOOP").code == 200          # the session goes on
        # The holders transfer on their ports ...
        big = site.files["blob.bin"]
        for cl, port in ((a, pa), (b, pb)):
            assert transfer_on(cl, port, "/blob.bin") == (big.size, big.sha)
        # ... which are then free again for c, while a and b stay logged in.
        h.wait_until(lambda: not p.pool_ports_busy(), 5, what="ports closed")
        download_ok(c, site)
        assert a.cmd("NOOP").code == 200 and b.cmd("NOOP").code == 200
    finally:
        for x in (a, b, c):
            x.close_quietly()
    fk.recovered(p, certs, site, base)
