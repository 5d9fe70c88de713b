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
import shutil
import signal
import socket
import ssl
import struct
import tempfile
import time
from pathlib import Path

import pytest

import faultkit as fk
import harness as h
from faultkit import USER
from harness import KiB
from harness import PlainControl


@pytest.fixture(scope="module")
def site(workdir):
    with h.Site(workdir, "security", [fk.SITE], sizes={"blob.bin": 256 * KiB}) as s:
        yield s


# --------------------------------------------------------------------------
# TLS policy
# --------------------------------------------------------------------------

def test_tls12_minimum_by_default(make_proxy, certs, site, workdir):
    """With tls_min_version unset, a client that offers at most TLS 1.1 is
    refused on both listeners; one that offers at most 1.2 gets 1.2."""
    assert h.client_can_offer_tls11(workdir, certs), \
        "this client cannot offer TLS 1.1 at all: the refusal would prove nothing"
    p = fk.start_proxy(make_proxy, site, tls_min_version=None)
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
    c = h.login(p, certs, USER, context=ctx12)
    try:
        assert c.tls_version() == "TLSv1.2"
        got, n, _ = h.retr(c, "/blob.bin")
        assert got == site.files["blob.bin"].sha
    finally:
        c.close_quietly()


# TLS 1.2 suites OpenSSL serves with an RSA key (the central certificate),
# then the renegotiation SCSV.
SUITES_12 = [0xC02F, 0xC030, 0xCCA8, 0x009E, 0x009F, 0x009C, 0x009D, 0x00FF]
NULL, DEFLATE = 0, 1                     # compression methods (RFC 3749)


def _ext(kind: int, data: bytes) -> bytes:
    return struct.pack("!HH", kind, len(data)) + data


def _u16s(values: list[int]) -> bytes:
    """A TLS vector of 16-bit values with its 2-byte length."""
    return struct.pack(f"!H{len(values)}H", 2 * len(values), *values)


def tls12_client_hello(compression: bytes) -> bytes:
    """A TLS 1.2 ClientHello record, built byte by byte: Python's ssl cannot
    offer compression (Debian's OpenSSL is built without zlib, and TLS 1.3
    has none), so a test through it would pass whatever the server does."""
    exts = (_ext(10, _u16s([0x001D, 0x0017, 0x0018]))            # supported_groups
            + _ext(11, b"\x01\x00")                               # ec_point_formats
            + _ext(13, _u16s([0x0804, 0x0805, 0x0401, 0x0501]))   # signature_algorithms
            + _ext(23, b""))                                      # extended_master_secret
    body = (struct.pack("!H", 0x0303) + os.urandom(32) + b"\x00"  # version, random, no id
            + _u16s(SUITES_12)
            + bytes([len(compression)]) + compression
            + struct.pack("!H", len(exts)) + exts)
    handshake = bytes([1]) + len(body).to_bytes(3, "big") + body           # client_hello
    return struct.pack("!BHH", h.TLS_HANDSHAKE, 0x0301, len(handshake)) + handshake


def server_hello(sock) -> dict:
    """Parses the ServerHello, the first message of the server's first
    record; every length must add up to the message's, so a wrong offset
    cannot pass for a compression method."""
    typ, _, rec = h.read_tls_record(sock)
    assert typ != h.TLS_ALERT, f"the server answered with an alert: {rec.hex()}"
    assert typ == h.TLS_HANDSHAKE and rec[0] == 2, f"not a ServerHello: {typ} {rec[:8].hex()}"
    n = int.from_bytes(rec[1:4], "big")
    body = rec[4:4 + n]
    assert len(body) == n, "the ServerHello spans records"
    version = struct.unpack("!H", body[0:2])[0]
    sid_len = body[34]                   # after the version and the 32-byte random
    at = 35 + sid_len
    suite, method, ext_len = struct.unpack("!HBH", body[at:at + 5])
    assert at + 5 + ext_len == n, f"ServerHello lengths do not add up: {body.hex()}"
    return {"version": version, "suite": suite, "compression": method}


@pytest.mark.parametrize("where", ["implicit", "explicit", "data"])
def test_no_tls_compression(make_proxy, certs, site, where):
    """A TLS 1.2 ClientHello offering DEFLATE (1) before null (0): the
    ServerHello chooses null, on the implicit listener, after AUTH TLS on
    the explicit one, and on a data connection."""
    p = fk.start_proxy(make_proxy, site)
    c = {"implicit": lambda: None, "explicit": lambda: PlainControl(p.port),
         "data": lambda: h.login(p, certs, USER)}[where]()
    try:
        if where == "implicit":
            sock = socket.create_connection((p.host, p.implicit_port), h.T_IO)
        elif where == "explicit":
            assert c.cmd("AUTH TLS").code == 234
            sock = c.sock
        else:
            sock = h.data_connect(c, h.pasv_port(c))
        with sock:
            sock.settimeout(h.T_IO)
            sock.sendall(tls12_client_hello(bytes([DEFLATE, NULL])))
            sh = server_hello(sock)
        assert sh["version"] == 0x0303, sh
        assert sh["suite"] in SUITES_12[:-1], sh
        assert sh["compression"] == NULL, f"the server chose compression method {sh}"
        if where == "data":
            assert c.cmd("NOOP").code == 200         # the session goes on
    finally:
        if c is not None:
            c.close()


@pytest.mark.parametrize("method", [NULL, DEFLATE])
def test_server_hello_parser_self_check(method):
    """server_hello() reports the method a ServerHello names (so the test
    above would see a server choosing DEFLATE), and refuses a message whose
    lengths do not add up."""
    exts = _ext(0xFF01, b"\x00") + _ext(23, b"")
    sid = os.urandom(32)
    body = (struct.pack("!H", 0x0303) + os.urandom(32) + bytes([len(sid)]) + sid
            + struct.pack("!HBH", 0xC02F, method, len(exts)) + exts)
    for extra, ok in ((b"", True), (b"\x00", False)):
        msg = bytes([2]) + len(body + extra).to_bytes(3, "big") + body + extra
        a, b = socket.socketpair()
        with a, b:
            a.sendall(struct.pack("!BHH", h.TLS_HANDSHAKE, 0x0303, len(msg)) + msg)
            if ok:
                assert server_hello(b) == {"version": 0x0303, "suite": 0xC02F,
                                           "compression": method}
            else:
                with pytest.raises(AssertionError, match="do not add up"):
                    server_hello(b)


def test_no_client_renegotiation(make_proxy, certs, site):
    """A TLS 1.2 client asks to renegotiate (openssl s_client 'R'): refused,
    the session does not go on, the proxy serves others."""
    p = fk.start_proxy(make_proxy, site)
    after = fk.renegotiate(p, certs, implicit=True)
    assert not any(l.startswith("200 ") for l in after.splitlines()), after
    assert "no renegotiation" in after or "error" in after, after
    assert p.alive()
    fk.fresh_download(p, certs, site)


# --------------------------------------------------------------------------
# Data-port theft and FTP bounce
# --------------------------------------------------------------------------

def test_data_port_theft_from_another_address(make_proxy, certs, site):
    p = fk.start_proxy(make_proxy, site)
    with contextlib.closing(h.login(p, certs, USER)) as c:
        mark = p.log_mark()
        port = h.pasv_port(c)
        try:
            thief = socket.create_connection((p.host, port), 5,
                                             source_address=(h.OTHER_CLIENT_ADDR, 0))
        except ConnectionResetError:
            # The proxy's reset can beat connect()'s own check of the
            # socket (SO_ERROR) on loopback: refused all the same.
            closed, got = True, b""
        else:
            try:
                closed, got = h.closed_within(thief, 5)
            finally:
                thief.close()
        assert closed and got == b"", f"the thief got {len(got)} bytes"
        p.wait_log(r"data_refused.*127\.0\.0\.2|127\.0\.0\.2.*data_refused", mark)
        # The victim goes on.
        r = c.cmd("NOOP")
        assert r.code == 200, r
        got, n, _ = h.retr(c, "/blob.bin")
        assert got == site.files["blob.bin"].sha


def test_data_port_theft_without_session_resumption(make_proxy, certs, site):
    """require_session_reuse (default): a data connection from the right
    address whose TLS does not resume the control session gets no byte."""
    p = fk.start_proxy(make_proxy, site)
    with contextlib.closing(h.login(p, certs, USER)) as c:
        mark = p.log_mark()
        port = h.pasv_port(c)
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
        got, n, _ = h.retr(c, "/blob.bin")
        assert got == site.files["blob.bin"].sha


def test_ftp_bounce_refused(make_proxy, certs, site):
    """allow_active = yes: PORT/EPRT to another address, or to a port below
    1024 of the client's own, get 501 and never reach the backend; with the
    default allow_active = no, PORT and EPRT get 502."""
    p = fk.start_proxy(make_proxy, site, allow_active="yes")
    c = h.login(p, certs, USER)
    try:
        mark = p.log_mark()
        vmark = site.log_mark()
        for cmd in ("PORT 127,0,0,2,200,10", "PORT 10,0,0,1,200,10",
                    "PORT 127,0,0,1,0,25", "EPRT |1|127.0.0.2|51210|",
                    "EPRT |1|192.0.2.1|51210|", "EPRT |2|::1|51210|",
                    "EPRT |1|127.0.0.1|21|"):
            r = c.cmd(cmd)
            assert r.code == 501, f"{cmd}: {r}"
        assert len(p.log_lines(mark, "ev=bounce_refused")) == 7, p.log_since(mark)
        sent = site.commands_since(vmark)
        assert not any(x.startswith(("PORT", "EPRT")) for x in sent), sent
        assert c.cmd("NOOP").code == 200
    finally:
        c.close_quietly()
    p2 = fk.start_proxy(make_proxy, site)
    with contextlib.closing(h.login(p2, certs, USER)) as c:
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
    with contextlib.closing(h.login(p, certs, USER, password=pw("ok"))) as c:
        h.retr(c, "/blob.bin")
        c.cmd(f"ACCT {pw('acct')}")
    with contextlib.closing(h.login(p, certs, USER, password=pw("imp"), implicit=True)) as c:
        c.cmd("NOOP")
    # PASS in odd places and shapes.
    with contextlib.closing(h.connect(p, certs)) as c:
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
    c = h.connect(p, certs)
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
    p = fk.start_proxy(make_proxy, site, log_level=level, log_format=fmt)
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


@contextlib.contextmanager
def files_for(user: str, certs, key_mode: int):
    """The central certificate, its key and the CA copied into a fresh folder
    under /tmp that `user` can enter (pytest's own temporary folders are root's
    alone), the key owned by root and group `user`'s with key_mode."""
    pw = pwd.getpwnam(user)
    d = Path(tempfile.mkdtemp(prefix="ftpsgate-t10-", dir="/tmp"))
    try:
        os.chmod(d, 0o755)
        crt, key, ca = d / "central.crt", d / "central.key", d / "ca.crt"
        shutil.copyfile(certs.central().cert, crt)
        shutil.copyfile(certs.central().key, key)
        shutil.copyfile(certs.ca.cert, ca)
        for f in (crt, ca):
            os.chmod(f, 0o644)
        os.chown(key, 0, pw.pw_gid)
        os.chmod(key, key_mode)
        yield {"certificate": str(crt), "private_key": str(key), "ca_file": str(ca)}
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping root needs to start as root")
@pytest.mark.parametrize("workers", [1, 2])
def test_user_nobody_drops_root(make_proxy, certs, site, workers):
    nobody = pwd.getpwnam("nobody")
    with files_for("nobody", certs, 0o640) as files:
        p = fk.start_proxy(make_proxy, site, user="nobody", workers=workers, start=False, **files)
        p.conf_path = Path(files["certificate"]).parent / "ftpsgate.ini"  # nobody reads it too
        p.start()
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
        # And a reload, which reads every file again as nobody, works.
        mark = p.log_mark()
        p.signal(signal.SIGHUP)
        p.wait_log(r"ev=reloaded trigger=SIGHUP", mark, timeout=10)
        fk.fresh_download(p, certs, site)


@pytest.mark.skipif(os.geteuid() != 0, reason="reading as another user needs root")
def test_user_cannot_read_key_is_found_before_a_reload_fails(make_proxy, certs, site):
    """Issue 10: with user = nobody and a root-only (0600) key, start-up and
    -t used to pass and every later reload failed, so certificate renewals
    stopped silently. -t now names the file, and start-up refuses (a reload
    would)."""
    with files_for("nobody", certs, 0o600) as files:
        p = fk.start_proxy(make_proxy, site, user="nobody", start=False, **files)
        r = p.check()
        assert r.returncode == 1, r.stdout + r.stderr
        assert re.search(r"^error: " + re.escape(files["private_key"])
                         + r": central certificate: not readable by user nobody", r.stdout,
                         re.M), r.stdout
        s = h.run([str(h.PROXY_BIN), "-c", str(p.conf_path)], timeout=10)
        assert s.returncode == 1, s.stdout + s.stderr
        assert "not readable by user nobody" in s.stderr, s.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="the warning is about running as root")
def test_root_without_user_warns(make_proxy, certs, site):
    p = fk.start_proxy(make_proxy, site)
    assert "user" not in re.findall(r"^(\w+) =", p.ini_text(), re.M)
    m = p.wait_log(r"warn ev=privileges .*running as root", timeout=5)
    assert m
    assert _ids(p.pid)[0][0] == 0
