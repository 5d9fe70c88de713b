"""Issue 12: defences that only a proxy in front of vsftpd can give
(DESIGN.md, "Cross-protocol and abuse defences").

* a HOST sent in plaintext steers a login only when its site's own
  certificate was then served (a man in the middle can inject plaintext);
* ALPACA: ALPN must offer "ftp" or be absent, on control and data
  connections; strict_sni; an HTTP method as first command closes;
* a hostile backend's passive reply never aims the proxy at a privileged
  port or at one of its own backends or listeners;
* per-address limits on passive ports and transfers, a transfer-memory
  budget, and the metrics listener's timeout and connection cap;
* brute-force bans after failed logins;
* a wildcard host name's '*' matches one DNS label only.
"""

from __future__ import annotations

import contextlib
import ftplib
import socket
import ssl
import threading
import time
from pathlib import Path

import pytest

import harness as h
from conftest import ALPHA_HOSTS, BETA_HOSTS
from harness import PW, backend_section
from test_ops import metric, samples, scrape

OTHER = h.OTHER_CLIENT_ADDR


def backends(alpha, beta, certs, **extra) -> dict:
    """alpha and beta with their own certificates, and gamma (beta's
    vsftpd again) without one."""
    b = {"alpha": backend_section(alpha, ALPHA_HOSTS, certs.alpha(), health_check=0),
         "beta": backend_section(beta, BETA_HOSTS, certs.beta(), health_check=0),
         "gamma": backend_section(beta, ["ftp.gamma.test"], health_check=0)}
    b.update(extra)
    return b


# --------------------------------------------------------------------------
# Plaintext HOST must not steer a login
# --------------------------------------------------------------------------

@pytest.mark.parametrize("default", [None, "alpha"])
def test_injected_plaintext_host_is_forgotten(make_proxy, alpha, beta, certs, default):
    """A man in the middle sends `HOST ftp.gamma.test` in plaintext and
    swallows the 220; the victim's AUTH TLS (SNI naming the shared name)
    gets the central certificate, which it trusts, and logs in: the login
    reaches default_backend (or 530 without one), never gamma."""
    p = make_proxy(proxy={"default_backend": default}, backends=backends(alpha, beta, certs))
    mark = beta.log_mark()
    plog = p.log_mark()
    c = h.connect(p, certs, sni="proxy.test")
    try:
        assert c.host_cmd("ftp.gamma.test").code == 220      # the injection
        assert c.start_tls().code == 234
        assert c.peer_cert_der() == certs.central().der
        r = c.user_pass("anonymous")
        if default is None:
            assert r.code == 530 and "No site named" in str(r), r
        else:
            assert r.code == 230, r
            assert c.cmd("SIZE /alpha-only.txt").code == 213   # alpha answered
    finally:
        c.close_quietly()
    assert beta.connects_since(mark) == 0, "the injected HOST reached gamma's backend"
    assert p.log_lines(plog, "ev=host_forgotten"), p.log_since(plog)


def test_plaintext_host_with_its_own_certificate_still_routes(make_proxy, alpha, beta, certs):
    """The legitimate early HOST (WinSCP's option): beta's own certificate is
    served, the client's check confirms the name, and the login routes."""
    p = make_proxy(backends=backends(alpha, beta, certs))
    c = h.connect(p, certs)
    try:
        assert c.host_cmd("ftp.beta.test").code == 220
        assert c.start_tls().code == 234
        assert c.peer_cert_der() == certs.beta().der
        assert c.user_pass("anonymous").code == 230
        assert c.cmd("SIZE /beta-only.txt").code == 213
    finally:
        c.close_quietly()


# --------------------------------------------------------------------------
# ALPACA: ALPN, strict_sni, HTTP as a first command
# --------------------------------------------------------------------------

def s_client(p, certs, *args: str, implicit: bool = True) -> tuple[int, str]:
    port = p.implicit_port if implicit else p.port
    cmd = ["openssl", "s_client", "-connect", f"{h.LOOPBACK}:{port}", "-CAfile",
           str(certs.ca.cert), "-verify_return_error", *args]
    if not implicit:
        cmd += ["-starttls", "ftp"]
    r = h.run(cmd, timeout=15, input=b"")
    return r.returncode, r.stdout + r.stderr


@pytest.mark.parametrize("implicit", [True, False], ids=["implicit", "explicit"])
def test_alpn(proxy, certs, implicit):
    rc, out = s_client(proxy, certs, "-alpn", "http/1.1", implicit=implicit)
    assert rc != 0 and "no application protocol" in out, out
    rc, out = s_client(proxy, certs, "-alpn", "ftp", implicit=implicit)
    assert rc == 0 and "ALPN protocol: ftp" in out, out
    rc, out = s_client(proxy, certs, "-alpn", "http/1.1,ftp", implicit=implicit)
    assert rc == 0 and "ALPN protocol: ftp" in out, out
    rc, out = s_client(proxy, certs, implicit=implicit)
    assert rc == 0 and "No ALPN negotiated" in out, out


def test_alpn_on_data_connections(proxy, certs):
    """The data connection of a logged-in session, offering only http/1.1:
    refused with no_application_protocol; offering ftp: served."""
    for protos, ok in ((["http/1.1"], False), (["ftp"], True)):
        c = h.login(proxy, certs, "ftp.alpha.test|anonymous")
        try:
            port = h.epsv_port(c)
            conn = h.data_connect(c, port)
            c.context.set_alpn_protocols(protos)  # the session binds the data TLS to it
            if ok:
                d = c.context.wrap_socket(conn, server_hostname=c.sni, session=c.sock.session)
                assert d.selected_alpn_protocol() == "ftp"
                d.close()
            else:
                with pytest.raises(ssl.SSLError, match="no application protocol"):
                    c.context.wrap_socket(conn, server_hostname=c.sni, session=c.sock.session)
                conn.close()
        finally:
            c.close_quietly()


@pytest.mark.parametrize("strict", ["yes", "no"])
def test_strict_sni(make_proxy, certs, strict):
    p = make_proxy(proxy={"strict_sni": strict})
    rc, out = s_client(p, certs, "-servername", "www.bank.example")
    if strict == "yes":
        assert rc != 0 and "unrecognized name" in out, out
        p.wait_log(r"ev=tls_refused .*reason=unrecognized_name")
    else:
        assert "CN = proxy.test" in out or "CN=proxy.test" in out, out
    # A name a site has, and a name the central certificate covers, always work.
    assert s_client(p, certs, "-servername", "ftp.alpha.test")[0] == 0
    assert s_client(p, certs, "-servername", "localhost")[0] == 0
    r = p.check()
    assert f"strict_sni {strict}" in r.stdout, r.stdout


@pytest.mark.parametrize("implicit", [True, False], ids=["implicit", "explicit"])
def test_http_request_as_first_command_closes(proxy, certs, implicit):
    mark = proxy.log_mark()
    if implicit:
        raw = socket.create_connection((proxy.host, proxy.implicit_port), timeout=h.T_IO)
        s = h.client_context(certs.ca).wrap_socket(raw, server_hostname="localhost")
    else:
        s = socket.create_connection((proxy.host, proxy.port), timeout=h.T_IO)
    assert s.recv(100).startswith(b"220 ")  # the greeting, then a browser's request
    s.sendall(b"GET / HTTP/1.1\r\nHost: ftp.alpha.test\r\n\r\n")
    got = b""
    with contextlib.suppress(OSError):
        while chunk := s.recv(100):
            got += chunk
    s.close()
    assert got == b"", f"the proxy answered an HTTP request: {got!r}"
    proxy.wait_log(r"ev=http_refused", mark)


# --------------------------------------------------------------------------
# A hostile backend
# --------------------------------------------------------------------------

class FakeBackend(threading.Thread):
    """A small FTP server that logs anyone in and answers EPSV and PASV
    with the port it is told: the backend that tries to aim the proxy at
    another service."""

    def __init__(self, data_port: int):
        super().__init__(daemon=True)
        self.data_port = data_port
        self.srv = socket.create_server((h.LOOPBACK, 0))
        self.port = self.srv.getsockname()[1]
        self.stopped = False

    def run(self) -> None:
        self.srv.settimeout(0.2)
        while not self.stopped:
            try:
                conn, _ = self.srv.accept()
            except OSError:
                continue
            threading.Thread(target=self.serve, args=(conn,), daemon=True).start()

    def serve(self, conn: socket.socket) -> None:
        f = conn.makefile("rb")
        p = self.data_port
        answers = {b"USER": b"331 ok", b"PASS": b"230 ok",
                   b"EPSV": b"229 Entering Extended Passive Mode (|||%d|)" % p,
                   b"PASV": b"227 Entering Passive Mode (127,0,0,1,%d,%d)" % (p >> 8, p & 255),
                   b"QUIT": b"221 bye"}
        with contextlib.suppress(OSError):
            conn.sendall(b"220 fake backend\r\n")
            for line in f:
                verb = line.split(b" ")[0].strip().upper()
                conn.sendall(answers.get(verb, b"200 ok") + b"\r\n")
                if line.startswith(b"SITE STRAY"):  # a reply nobody asked for
                    conn.sendall(b"500 OOPS: child died\r\n" if b"OOPS" in line
                                 else b"226 Transfer complete.\r\n")
                if verb == b"QUIT" or b"CLOSE" in line:
                    break
        conn.close()

    def stop(self) -> None:
        self.stopped = True
        self.srv.close()


@pytest.mark.parametrize("target", ["other_backend", "listener", "privileged"])
def test_hostile_backend_passive_reply_refused(make_proxy, alpha, beta, certs, target):
    fake = FakeBackend(0)
    fake.start()
    try:
        p = make_proxy(backends={"alpha": backend_section(alpha, ALPHA_HOSTS, certs.alpha(),
                                                          health_check=0),
                                 "evil": backend_section(None, ["ftp.evil.test"],
                                                         address=f"{h.LOOPBACK}:{fake.port}")},
                       start=False)
        fake.data_port = {"other_backend": alpha.port, "listener": p.port,
                          "privileged": 21}[target]
        p.start()
        amark, mark = alpha.log_mark(), p.log_mark()
        c = h.login(p, certs, "ftp.evil.test|anonymous")
        try:
            port = h.epsv_port(c)
            assert port != fake.data_port
            r = c.cmd("RETR /secret")
            assert r.code == 425 and "does not connect to" in str(r), r
            assert c.cmd("NOOP").code == 200
        finally:
            c.close_quietly()
        assert p.log_lines(mark, "ev=backend_passive_refused", "backend=evil"), p.log_since(mark)
        assert alpha.connects_since(amark) == 0, "the proxy connected to alpha's control port"
    finally:
        fake.stop()


@pytest.mark.parametrize("stray", ["226", "oops"])
@pytest.mark.parametrize("then", ["close", "stay"])
def test_backend_unsolicited_reply_ends_session(make_proxy, certs, then, stray):
    """A reply to no command (a late 226; vsftpd's "500 OOPS: child died"
    when its session process is killed). Relayed, the client would take it
    for the answer to its next command; the session ends with 421 instead,
    whether or not the backend closes after it."""
    fake = FakeBackend(0)
    fake.start()
    try:
        p = make_proxy(backends={"evil": backend_section(None, ["ftp.evil.test"],
                                                         address=f"{h.LOOPBACK}:{fake.port}")})
        mark = p.log_mark()
        c = h.login(p, certs, "ftp.evil.test|anonymous")
        try:
            cmd = "SITE STRAY" + ("-OOPS" if stray == "oops" else "")
            assert c.cmd(cmd + ("-CLOSE" if then == "close" else "")).code == 200
            c.sock.settimeout(h.T_IO)
            with pytest.raises(ftplib.error_temp, match="^421 .*ended the session"):
                c.getresp()
        finally:
            c.close_quietly()
        assert p.wait_log(r"ev=backend_unsolicited .*reply=226 text=\"?226 Transfer complete"
                          if stray == "226" else
                          r"ev=backend_oops .*text=\"?500 OOPS: child died", mark)
    finally:
        fake.stop()


# --------------------------------------------------------------------------
# Fair limits per client address, transfer memory, the metrics listener
# --------------------------------------------------------------------------

def test_passive_ports_per_address(make_proxy, certs):
    p = make_proxy(proxy={"max_passive_per_ip": "2"})
    sessions = []
    try:
        for i in range(2):
            c = h.login(p, certs, "ftp.alpha.test|anonymous")
            sessions.append(c)
            h.epsv_port(c)
        c = h.login(p, certs, "ftp.alpha.test|anonymous")
        sessions.append(c)
        r = c.cmd("EPSV")
        assert r.code == 425 and "for your address" in str(r), r
        # Another address is not held back by this one.
        o = h.login(p, certs, "ftp.alpha.test|anonymous", source=OTHER)
        sessions.append(o)
        assert o.cmd("EPSV").code == 229
        # A port given back makes room.
        sessions[0].close_quietly()
        h.wait_until(lambda: c.cmd("EPSV").code == 229, 5, what="a passive port for the third")
    finally:
        for c in sessions:
            c.close_quietly()


def stalled_download(p, certs, path: str, **kw):
    """A session whose RETR runs and whose client does not read: its data
    connection holds the transfer's buffers."""
    c = h.login(p, certs, "ftp.big.test|anonymous", **kw)
    port = h.epsv_port(c)
    conn = h.data_connect(c, port)
    c.send_raw(f"RETR {path}\r\n".encode())
    d = h.wrap_data(c, conn)
    return c, d


@pytest.fixture(scope="module")
def big(workdir):
    with h.Site(workdir, "bigfiles", ["ftp.big.test"], sizes={"big.bin": 24 << 20}) as s:
        yield s


def big_proxy(make_proxy, big, **opts):
    return make_proxy(proxy=opts, backends={"big": big.section()})


def test_transfers_per_address(make_proxy, certs, big):
    p = big_proxy(make_proxy, big, max_transfers_per_ip="1")
    c, d = stalled_download(p, certs, "/big.bin")
    try:
        assert c.reply().code == 150
        o = h.login(p, certs, "ftp.big.test|anonymous")
        try:
            h.epsv_port(o)
            r = o.cmd("RETR /big.bin")
            assert r.code == 425 and "Too many transfers" in str(r), r
        finally:
            o.close_quietly()
        o = h.login(p, certs, "ftp.big.test|anonymous", source=OTHER)
        try:
            assert h.retr(o, "/big.bin")[1] == 24 << 20
        finally:
            o.close_quietly()
    finally:
        d.close()
        c.close_quietly()


def test_transfer_memory_budget(make_proxy, certs, big):
    """Stalled downloads hold their buffers; once they hold transfer_memory,
    a new transfer gets 425 and the session goes on."""
    p = big_proxy(make_proxy, big, transfer_memory="16M", max_transfers_per_ip="100",
                  max_passive_per_ip="100")
    held, refused = [], None
    try:
        for _ in range(12):
            c = h.login(p, certs, "ftp.big.test|anonymous")
            port = h.epsv_port(c)
            conn = h.data_connect(c, port)
            c.send_raw(b"RETR /big.bin\r\n")
            first = c.reply()
            if first.code == 425:
                refused = (c, first)
                conn.close()
                break
            held.append((c, h.wrap_data(c, conn)))
            time.sleep(0.3)  # the buffers fill
        assert refused is not None, "16M of transfer memory never ran out"
        c, r = refused
        assert "short of transfer memory" in str(r), r
        assert c.cmd("NOOP").code == 200
        assert len(held) >= 2
    finally:
        if refused:
            refused[0].close_quietly()
        for c, d in held:
            d.close()
            c.close_quietly()


def test_metrics_listener_timeout_and_cap(make_proxy):
    addr = f"{h.LOOPBACK}:{h.free_port()}"
    p = make_proxy(proxy={"metrics_listen": addr})
    host, port = h.split_addr(addr)
    idle = [socket.create_connection((host, port), timeout=h.T_IO) for _ in range(16)]
    try:
        extra = socket.create_connection((host, port), timeout=h.T_IO)
        closed, _ = h.closed_within(extra, 2)
        assert closed, "a 17th metrics connection was served"
        extra.close()
        t0 = time.monotonic()
        closed, _ = h.closed_within(idle[0], 8)
        assert closed and time.monotonic() - t0 < 7.5, "a silent scraper was not timed out"
    finally:
        for s in idle:
            s.close()
    def scraped():  # refused (reset) until the proxy has counted the closed ones out
        try:
            return scrape(addr)[0]
        except OSError:
            return None
    h.wait_until(scraped, 10, what="a scrape after the idle ones are gone")


# --------------------------------------------------------------------------
# Brute-force bans
# --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def guarded(workdir):
    """A vsftpd whose anonymous login wants a listed password: a real 530 to
    a wrong PASS."""
    d = Path(workdir) / "ban-emails"
    d.write_text(f"{PW}\n")
    vs = h.Vsftpd(workdir, "guarded", extra={"secure_email_list_enable": "YES",
                                             "email_password_file": str(d),
                                             "delay_failed_login": "0"})
    vs.start()
    yield vs
    vs.stop()


def guarded_proxy(make_proxy, guarded, **opts):
    opts.setdefault("ban_time", "3")
    return make_proxy(proxy=opts,
                      backends={"g": backend_section(guarded, ["ftp.guarded.test"])})


def wrong_password(p, certs, source=None) -> int:
    c = h.connect(p, certs, source=source)
    try:
        assert c.start_tls().code == 234
        return c.user_pass("ftp.guarded.test|anonymous", "wrong@example.org").code
    finally:
        c.close_quietly()


def greeting_of(p, source=None) -> bytes:
    s = socket.create_connection((p.host, p.port), timeout=h.T_IO,
                                 source_address=(source, 0) if source else None)
    try:
        return s.recv(200)
    finally:
        s.close()


def test_ten_wrong_passwords_ban_the_address(make_proxy, certs, guarded):
    p = guarded_proxy(make_proxy, guarded, metrics_listen=f"{h.LOOPBACK}:{h.free_port()}")
    # A session that logs in before the ban goes on after it.
    running = h.login(p, certs, "ftp.guarded.test|anonymous")
    try:
        for i in range(10):
            assert wrong_password(p, certs) == 530, i
        g = greeting_of(p)
        assert g.startswith(b"421 "), g          # before any TLS
        raw = socket.create_connection((p.host, p.implicit_port), timeout=h.T_IO)
        assert raw.recv(200).startswith(b"421 ")  # the implicit port: no handshake
        raw.close()
        assert greeting_of(p, source=OTHER).startswith(b"220 ")
        assert running.cmd("NOOP").code == 200   # not cut
        assert p.log_lines(0, "ev=ban", "address=127.0.0.1")
        s = samples(scrape(p.opts["metrics_listen"])[0])
        assert metric(s, "ftpsgate_bans_total") == 1
        assert metric(s, "ftpsgate_bans_active") == 1
        assert metric(s, "ftpsgate_connections_refused_total", reason="banned") >= 2
        # The ban ends after ban_time.
        h.wait_until(lambda: greeting_of(p).startswith(b"220 "), 10, what="the ban to end")
        p.wait_log(r"ev=unban address=127\.0\.0\.1", timeout=10)
    finally:
        running.close_quietly()


def test_exempt_range_is_never_banned(make_proxy, certs, guarded):
    p = guarded_proxy(make_proxy, guarded, ban_after="2", ban_exempt="127.0.0.0/30")
    for _ in range(4):
        assert wrong_password(p, certs) == 530
    assert greeting_of(p).startswith(b"220 ")
    for _ in range(2):
        assert wrong_password(p, certs, source="127.0.0.9") == 530
    assert greeting_of(p, source="127.0.0.9").startswith(b"421 ")


def test_check_shows_the_defences(make_proxy):
    p = make_proxy(proxy={"ban_after": "5", "ban_window": "60", "ban_time": "120",
                          "ban_exempt": "10.0.0.0/8"}, start=False)
    out = p.check().stdout
    assert "bans: after 5 failed logins within 60 s, for 120 s; 1 exempt range" in out, out
    assert "strict_sni no" in out, out


# --------------------------------------------------------------------------
# Wildcard host names
# --------------------------------------------------------------------------

@pytest.mark.parametrize("host", ["\x1b[2J<b>.alpha.test", "a_b.alpha.test", "*.alpha.test",
                                  "a.b.alpha.test"])
def test_wildcard_matches_one_dns_label_only(proxy, certs, host):
    c = h.connect(proxy, certs)
    try:
        assert c.start_tls().code == 234
        r = c.user_pass(f"{host}|anonymous")
        assert r.code == 530, r
    finally:
        c.close_quietly()
    c = h.login(proxy, certs, "x-1.alpha.test|anonymous")
    c.close_quietly()


def test_transfers_start_with_small_buffers(make_proxy, certs, big):
    """Issue 16: a data connection's buffers start small (32 KiB) and grow
    only while the transfer keeps them full. Twelve uploads that each sent
    one 8 KiB block and then wait hold a few tens of KiB each, so all of
    them (and a thirteenth, complete one) fit in 16 MiB of transfer_memory.
    With the large buffers from the start (1 MiB plaintext and 512 KiB of
    ciphertext each), eleven such uploads used the 16 MiB up and the twelfth
    got 425."""
    p = big_proxy(make_proxy, big, transfer_memory="16M", max_transfers_per_ip="100",
                  max_passive_per_ip="100", max_sessions_per_ip="100")
    block = bytes(range(256)) * 32
    held = []
    try:
        for i in range(12):
            c = h.login(p, certs, "ftp.big.test|anonymous")
            held.append((c, None))
            port = h.epsv_port(c)
            conn = h.data_connect(c, port)
            c.send_raw(f"STOR /upload/small-buffers-{i}.bin\r\n".encode())
            r = c.reply()
            assert r.code == 150, f"upload {i + 1}: {r}"
            d = h.wrap_data(c, conn)
            held[-1] = (c, d)
            d.sendall(block)
        c = h.login(p, certs, "ftp.big.test|anonymous")
        held.append((c, None))
        assert h.retr(c, "/big.bin")[:2] == (big.files["big.bin"].sha, 24 << 20)
        for i, (c, d) in enumerate(held[:12]):
            d.unwrap().close()
            r = c.reply()
            assert r.code == 226, f"upload {i + 1}: {r}"
            held[i] = (c, None)
        for i in range(12):
            assert (big.root / "upload" / f"small-buffers-{i}.bin").read_bytes() == block
    finally:
        for c, d in held:
            if d is not None:
                with contextlib.suppress(OSError):
                    d.close()
            c.close_quietly()
