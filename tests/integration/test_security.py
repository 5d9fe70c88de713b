"""Issue 5, security checks: TLS 1.2 minimum by default; no TLS compression;
no client-initiated renegotiation; data-port theft refused (another
address, no resumption of the control session); FTP bounce refused;
passwords in no log line at any log level or format; after `user = nobody`
the running process (every thread) has no root uid, gid or supplementary
group; as root without `user` the proxy warns.

test_data.py holds the thorough data-channel refusals; the versions here are
short, from the attacker's side: the thief gets no byte of the file.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import secrets
import socket
import ssl
import time
from pathlib import Path

import pytest

import faultkit as fk
import harness as h
from faultkit import KiB, USER
from harness import PlainControl


@pytest.fixture(scope="module")
def site(workdir):
    s = fk.Site(workdir, "security", sizes={"blob.bin": 256 * KiB})
    s.start()
    yield s
    s.stop()


def start(make_proxy, site, pool: int = 6, **opts):
    lo, hi = h.free_port_range(pool)
    proxy = {"passive_ports": f"{lo}-{hi}"}
    proxy.update({k: (None if v is None else str(v)) for k, v in opts.items()})
    return make_proxy(proxy=proxy, backends={"hard": site.section()})


# --------------------------------------------------------------------------
# TLS policy
# --------------------------------------------------------------------------

def test_tls12_minimum_by_default(make_proxy, certs, site, workdir):
    """With tls_min_version unset, a client that offers at most TLS 1.1 is
    refused on both listeners; one that offers at most 1.2 gets 1.2."""
    assert h.client_can_offer_tls11(workdir, certs), \
        "this client cannot offer TLS 1.1 at all: the refusal would prove nothing"
    p = start(make_proxy, site, tls_min_version=None)
    assert "tls_min_version" not in p.ini_text()
    old = h.tls11_client_context()
    with socket.create_connection((p.host, p.implicit_port), 5) as s:
        with pytest.raises((ssl.SSLError, OSError)):
            old.wrap_socket(s).do_handshake()
    with PlainControl(p.port) as c:
        assert c.cmd("AUTH TLS").code == 234
        with pytest.raises((ssl.SSLError, OSError)):
            old.wrap_socket(c.sock).do_handshake()
    ctx12 = h.client_context(certs.ca, max_version=ssl.TLSVersion.TLSv1_2)
    c = fk.login(p, certs, context=ctx12)
    try:
        assert c.tls_version() == "TLSv1.2"
        got, n, _ = fk.retr(c, "/blob.bin")
        assert got == site.files["blob.bin"].sha
    finally:
        c.close_quietly()


@pytest.mark.parametrize("version", ["TLSv1_2", "TLSv1_3"])
def test_no_tls_compression(make_proxy, certs, site, version):
    """The client offers compression where its OpenSSL can (OP_NO_COMPRESSION
    cleared); control and data connections negotiate none."""
    v = getattr(ssl.TLSVersion, version)
    ctx = h.client_context(certs.ca, min_version=v, max_version=v)
    ctx.options &= ~ssl.OP_NO_COMPRESSION
    p = start(make_proxy, site)
    c = fk.login(p, certs, context=ctx)
    try:
        assert c.sock.compression() is None
        conn, _ = c.ntransfercmd("RETR /blob.bin")
        assert conn.compression() is None
        fk.read_n(conn, 1 << 30)
        with contextlib.suppress(OSError, ValueError):
            conn.unwrap()
        conn.close()
        assert c.reply().code == 226
    finally:
        c.close_quietly()
    r = h.run(["openssl", "s_client", "-connect", f"{p.host}:{p.implicit_port}",
               "-tls1_2", "-CAfile", str(certs.ca.cert)], input=b"QUIT\r\n", timeout=15)
    assert "Compression: NONE" in r.stdout, r.stdout[-2000:]


def test_no_client_renegotiation(make_proxy, certs, site):
    """A TLS 1.2 client asks to renegotiate (openssl s_client 'R'): refused,
    the session does not go on, the proxy serves others."""
    p = start(make_proxy, site)
    after = fk.renegotiate(p, certs, implicit=True)
    assert not any(l.startswith("200 ") for l in after.splitlines()), after
    assert "no renegotiation" in after or "error" in after, after
    assert p.alive()
    fk.fresh_download(p, certs, site)


# --------------------------------------------------------------------------
# Data-port theft and FTP bounce
# --------------------------------------------------------------------------

def test_data_port_theft_from_another_address(make_proxy, certs, site):
    p = start(make_proxy, site)
    with contextlib.closing(fk.login(p, certs)) as c:
        mark = p.log_mark()
        port = fk.pasv_port(c)
        try:
            thief = socket.create_connection((p.host, port), 5,
                                             source_address=(h.OTHER_CLIENT_ADDR, 0))
        except ConnectionResetError:
            # The proxy's reset can beat connect()'s own check of the
            # socket (SO_ERROR) on loopback: refused all the same.
            closed, got = True, b""
        else:
            try:
                closed, got = fk.closed_within(thief, 5)
            finally:
                thief.close()
        assert closed and got == b"", f"the thief got {len(got)} bytes"
        p.wait_log(r"data_refused.*127\.0\.0\.2|127\.0\.0\.2.*data_refused", mark)
        # The victim goes on.
        r = c.cmd("NOOP")
        assert r.code == 200, r
        got, n, _ = fk.retr(c, "/blob.bin")
        assert got == site.files["blob.bin"].sha


def test_data_port_theft_without_session_resumption(make_proxy, certs, site):
    """require_session_reuse (default): a data connection from the right
    address whose TLS does not resume the control session gets no byte."""
    p = start(make_proxy, site)
    with contextlib.closing(fk.login(p, certs)) as c:
        mark = p.log_mark()
        port = fk.pasv_port(c)
        raw = socket.create_connection((p.host, port), 5)
        r = c.cmd("RETR /blob.bin")
        assert r.code == 150, r
        got = b""
        reused = None
        try:
            t = c.context.wrap_socket(raw, server_hostname=None)   # a new session
            reused = t.session_reused
            t.settimeout(5)
            while b := t.recv(65536):
                got += b
        except (ssl.SSLError, OSError):
            pass
        finally:
            raw.close()
        assert reused is not True
        assert got == b"", f"{len(got)} bytes reached a connection that did not resume"
        r = c.reply()
        assert r.code == 522, r
        assert "data_refused" in p.log_since(mark)
        got, n, _ = fk.retr(c, "/blob.bin")
        assert got == site.files["blob.bin"].sha


def test_ftp_bounce_refused(make_proxy, certs, site):
    """allow_active = yes: PORT/EPRT to another address, or to a port below
    1024 of the client's own, get 501 and never reach the backend; with the
    default allow_active = no, PORT and EPRT get 502."""
    p = start(make_proxy, site, allow_active="yes")
    c = fk.login(p, certs)
    try:
        mark = p.log_mark()
        vmark = site.vs.log_mark()
        for cmd in ("PORT 127,0,0,2,200,10", "PORT 10,0,0,1,200,10",
                    "PORT 127,0,0,1,0,25", "EPRT |1|127.0.0.2|51210|",
                    "EPRT |1|192.0.2.1|51210|", "EPRT |2|::1|51210|",
                    "EPRT |1|127.0.0.1|21|"):
            r = c.cmd(cmd)
            assert r.code == 501, f"{cmd}: {r}"
        assert len(fk.log_lines(p, mark, "ev=bounce_refused")) == 7, p.log_since(mark)
        sent = site.vs.commands_since(vmark)
        assert not any(x.startswith(("PORT", "EPRT")) for x in sent), sent
        assert c.cmd("NOOP").code == 200
    finally:
        c.close_quietly()
    p2 = start(make_proxy, site)
    with contextlib.closing(fk.login(p2, certs)) as c:
        for cmd in ("PORT 127,0,0,1,200,10", "EPRT |1|127.0.0.1|51210|"):
            assert c.cmd(cmd).code == 502, cmd


# --------------------------------------------------------------------------
# Passwords
# --------------------------------------------------------------------------

def _password(tag: str) -> str:
    return f"Pw{tag}Z{secrets.token_hex(8)}"


def _password_sessions(p: h.Proxy, certs, workdir: Path) -> list[str]:
    """Every way a password travels through the proxy; returns them all."""
    used = []

    def pw(tag):
        x = _password(tag)
        used.append(x)
        return x

    # A successful login (explicit, then implicit) and a transfer.
    with contextlib.closing(fk.login(p, certs, password=pw("ok"))) as c:
        fk.retr(c, "/blob.bin")
        c.cmd(f"ACCT {pw('acct')}")
    with contextlib.closing(fk.login(p, certs, password=pw("imp"), implicit=True)) as c:
        c.cmd("NOOP")
    # PASS in odd places and shapes.
    with contextlib.closing(fk.connect(p, certs)) as c:
        c.start_tls()
        c.cmd(f"PASS {pw('beforeuser')}")                      # before USER
        c.cmd(f"pass {pw('lower')}")
        c.cmd(f"PASS  {pw('twospaces')}")
        c.send_raw(b"PA\xff\xf1SS " + pw("iac").encode() + b"\r\n")   # Telnet NOP inside
        c.reply()
        c.cmd(f"PASS {pw('long')}" + "x" * 5000)              # over the line limit: 500
        c.send_raw(b"PASS " + pw("nul").encode() + b"\x00tail\r\n")
        c.reply()
        c.cmd("USER nosuch.test|anonymous")                   # unknown host: 530
        c.cmd(f"PASS {pw('unknownhost')}")
        c.cmd("USER ftp.hard.test|bob")                      # vsftpd: anonymous only
        c.cmd(f"PASS {pw('refuseduser')}")
    # Before AUTH TLS (require_tls): refused, must not be logged either.
    with PlainControl(p.port) as c:
        c.cmd("USER ftp.hard.test|anonymous")
        c.cmd(f"PASS {pw('plain')}")
    # A client that vanishes right after its PASS.
    c = fk.connect(p, certs)
    c.start_tls()
    c.cmd(f"USER {USER}")
    c.send_raw(f"PASS {pw('vanish')}\r\n".encode())
    c.drop()
    # curl and lftp.
    r = h.curl(p.port, "/blob.bin", user=USER, password=pw("curl"), ca=certs.ca,
               extra=["-o", os.devnull])
    assert r.returncode == 0, r.stderr
    r = h.lftp(p.port, ["cls /"], user=USER, password=pw("lftp"), ca=certs.ca,
               check_hostname=False, workdir=workdir)
    assert r.returncode == 0, r.stderr
    time.sleep(0.3)
    return used


@pytest.mark.parametrize("fmt", ["text", "json"])
@pytest.mark.parametrize("level", ["debug", "info", "warn", "error"])
def test_passwords_never_logged(make_proxy, certs, site, workdir, level, fmt):
    p = start(make_proxy, site, log_level=level, log_format=fmt)
    used = _password_sessions(p, certs, workdir)
    assert len(used) >= 15
    log = p.log_text()
    if level == "debug":
        assert "ev=command" in log or '"command"' in log, "no command lines at debug?"
    for x in used:
        secret = x.split("Z", 1)[1]               # the random part alone
        assert secret not in log, f"password {x} in the {level}/{fmt} log:\n" + "\n".join(
            l for l in log.splitlines() if secret in l)
        # Escaped forms too (hex of the bytes, as an escape would write them).
        assert secret.upper() not in log


# --------------------------------------------------------------------------
# Privileges
# --------------------------------------------------------------------------

def _ids(pid: int, task: str = "") -> tuple[list[int], list[int], list[int]]:
    base = f"/proc/{pid}/task/{task}" if task else f"/proc/{pid}"
    fields = {}
    for line in Path(f"{base}/status").read_text().splitlines():
        k, _, v = line.partition(":")
        fields[k] = v.split()
    return ([int(x) for x in fields["Uid"]], [int(x) for x in fields["Gid"]],
            [int(x) for x in fields.get("Groups", [])])


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping root needs to start as root")
@pytest.mark.parametrize("workers", [1, 2])
def test_user_nobody_drops_root(make_proxy, certs, site, workers):
    nobody = pwd.getpwnam("nobody")
    p = start(make_proxy, site, user="nobody", workers=workers)
    p.wait_log(r"ev=privileges.*dropped root", timeout=5)
    tasks = os.listdir(f"/proc/{p.pid}/task")
    assert len(tasks) >= workers
    for task in tasks:
        uids, gids, groups = _ids(p.pid, task)
        assert uids == [nobody.pw_uid] * 4, f"thread {task}: Uid {uids}"
        assert gids == [nobody.pw_gid] * 4, f"thread {task}: Gid {gids}"
        assert groups == [], f"thread {task}: supplementary groups {groups}"
    # It still serves, data connections (passive ports bound after the drop) too.
    fk.fresh_download(p, certs, site)
    assert "running as root" not in p.log_text()


@pytest.mark.skipif(os.geteuid() != 0, reason="the warning is about running as root")
def test_root_without_user_warns(make_proxy, certs, site):
    p = start(make_proxy, site)
    assert "user" not in re.findall(r"^(\w+) =", p.ini_text(), re.M)
    m = p.wait_log(r"warn ev=privileges .*running as root", timeout=5)
    assert m
    assert _ids(p.pid)[0][0] == 0
