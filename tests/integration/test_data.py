"""Issue 3: the data channel. Passive (PASV/EPSV) and active (PORT/EPRT)
transfers through ftpsgate to real vsftpd backends, with real clients
(ftplib, curl, lftp), checked byte for byte with sha256; the data
connection's TLS (same certificate as the control connection, resumption of
the control session required), the refusals (522, 521, 534, 5xx for PORT),
the transfer commands (LIST, NLST, MLSD, REST, APPE, STOU, ABOR), load
(20 parallel 64 MiB downloads), the passive port pool (exhaustion, return
of ports, data_timeout) and failures mid-transfer that must end only their
own session and leave no descriptor or port behind.

The site used here is a dedicated vsftpd ("xfer", host name ftp.data.test,
its own certificate) with the big random files; the 64 MiB and 32 MiB files
are made once per run in the pytest tmp dir and hard-linked into its root.

The clients and sessions are harness.py's, the fault-injection helpers
(warm_up, Bystander) faultkit.py's.
"""

from __future__ import annotations

import contextlib
import ftplib
import hashlib
import os
import re
import select
import signal
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pytest

import faultkit as fk
import harness as h
from conftest import log_on_failure, running
from harness import MiB

SITE = "ftp.data.test"           # the xfer site's host name; it has its own certificate
USER = f"{SITE}|anonymous"       # routes by USER prefix (no SNI, no HOST: central cert)
BIG = "big64.bin"                # 64 MiB random, in the site's root
BIG_SIZE = 64 * MiB
UP_SIZE = 32 * MiB
MID = "mid.bin"                  # 4 MiB random
MID_SIZE = 4 * MiB
SMALL = b"small file on the xfer site\n"
EMPTY_SHA = hashlib.sha256(b"").hexdigest()
T_BIG = 90.0                     # one client run moving a big file


# --------------------------------------------------------------------------
# Files (session: made once per run)
# --------------------------------------------------------------------------

@dataclass
class Blob:
    path: Path
    size: int
    sha: str

    def read(self) -> bytes:
        return self.path.read_bytes()


def _random_file(path: Path, size: int) -> Blob:
    return Blob(path, size, h.random_file(path, size))


@pytest.fixture(scope="session")
def blobs(tmp_path_factory):
    d = tmp_path_factory.mktemp("blobs")
    return {"big": _random_file(d / BIG, BIG_SIZE),
            "up": _random_file(d / "up32.bin", UP_SIZE),
            "mid": _random_file(d / MID, MID_SIZE)}


def start_site(workdir: Path, blobs: dict, name: str = "xfer",
               hostnames=(SITE,)) -> h.Site:
    """A vsftpd with the big files; 40 passive ports for 20+ parallel sessions."""
    v = h.Site(workdir, name, hostnames, pasv_ports=40,
               files={"small.txt": SMALL, "empty.bin": b"",
                      "list-dir/a.txt": b"a\n", "list-dir/bb.txt": b"bb\n",
                      "list-dir/ccc.txt": b"ccc\n"},
               dirs=["list-dir"])
    v.start()
    v.link(BIG, blobs["big"].path, blobs["big"].sha)
    v.link(MID, blobs["mid"].path, blobs["mid"].sha)
    return v


@pytest.fixture(scope="module")
def site(workdir, blobs):
    v = start_site(workdir, blobs)
    yield v
    v.stop()


@pytest.fixture(scope="module")
def site_cert(certs):
    return certs.make("xfer-site", SITE, dns=[SITE])


def xfer_backends(site: h.Site, site_cert, **more) -> dict:
    b = {"xfer": site.section(cert=site_cert)}
    b.update(more)
    return b


def pool_range(n: int) -> str:
    lo, hi = h.free_port_range(n)
    return f"{lo}-{hi}"


@pytest.fixture(scope="module")
def dp(workdir, certs, site, site_cert):
    """The module's ftpsgate in front of the xfer site: a 48-port pool (20
    parallel sessions), defaults otherwise (require_protected_data,
    require_session_reuse, allow_active = no)."""
    p = h.Proxy(workdir, certs.central(), xfer_backends(site, site_cert), ca=certs.ca,
                proxy={"passive_ports": pool_range(48), "data_timeout": "20",
                       "idle_timeout": "120"})
    with running(p):
        yield p


@pytest.fixture(autouse=True)
def _dp_log_on_failure(request):
    """Print the shared proxy's log for the failing test (if it used it)."""
    if "dp" not in request.fixturenames:
        yield
        return
    with log_on_failure(request, request.getfixturevalue("dp")):
        yield


# --------------------------------------------------------------------------
# Clients
# --------------------------------------------------------------------------

def check_data_tls(c: h.FtpsClient, expected_der: Optional[bytes] = None) -> None:
    """Every data connection so far resumed the control session and showed
    the control connection's certificate."""
    ctl = c.peer_cert_der()
    assert c.data_certs, "no data connection was made"
    for i, der in enumerate(c.data_certs):
        assert der == ctl, f"data connection {i}: certificate differs from the control one"
    if expected_der is not None:
        assert ctl == expected_der
    assert all(c.data_session_reused), c.data_session_reused


def data_ends(conn, direction: str, timeout: float = 10.0) -> str:
    """Keep reading (download) or writing (upload) until the connection ends:
    'eof' or 'error'. AssertionError if it merely stalls or goes on."""
    conn.settimeout(timeout)
    deadline = time.monotonic() + timeout
    chunk = b"\0" * h.BLOCK
    try:
        while time.monotonic() < deadline:
            if direction == "download":
                if not conn.recv(h.BLOCK):
                    return "eof"
            else:
                conn.send(chunk)
    except socket.timeout:
        raise AssertionError(f"the data connection stalled ({direction}) instead of ending")
    except (OSError, ssl.SSLError, ValueError):
        return "error"
    raise AssertionError(f"the data connection still open after {timeout}s ({direction})")


def control_ends(c: h.FtpsClient, timeout: float = 10.0) -> list[str]:
    """The control connection is closed by the server within `timeout`:
    returns the reply lines that came first."""
    lines = []
    c.sock.settimeout(timeout)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = c.file.readline()
        except (socket.timeout, TimeoutError):
            break
        except (OSError, ssl.SSLError, ValueError):
            return lines
        if not line:
            return lines
        lines.append(line.rstrip("\r\n"))
    raise TimeoutError(f"control connection still open after {timeout}s; got {lines}")


def replies_until(c: h.FtpsClient, codes: set, maxn: int = 4) -> list[h.Reply]:
    out = []
    for _ in range(maxn):
        r = c.reply()
        out.append(r)
        if r.code in codes:
            return out
    raise AssertionError(f"no reply with a code in {codes}: {[str(x) for x in out]}")


def bystander(p: h.Proxy, certs, site: h.Site) -> fk.Bystander:
    """A session downloading the 64 MiB file while a fault happens, started
    and paused after 8 MiB until check()."""
    return fk.Bystander(p, certs, site, BIG, pause_at=8 * MiB, user=USER, timeout=T_BIG).go()


def every_pool_port_pasv(p: h.Proxy, certs) -> set[int]:
    """Opens one session per pool port, each with a PASV: every one must get
    227 (all ports are back in the pool); returns the ports handed out."""
    sessions, ports = [], set()
    try:
        for _ in p.passive_ports():
            c = h.login(p, certs, USER)
            sessions.append(c)
            ports.add(h.pasv_port(c))
    finally:
        for c in sessions:
            c.close_quietly()
    assert ports == set(p.passive_ports()), ports
    return ports


# --------------------------------------------------------------------------
# Big transfers with ftplib, curl and lftp
# --------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["pasv", "epsv"])
def test_ftplib_download_64m(dp, certs, site, blobs, mode):
    big = blobs["big"]
    mark, pmark = site.log_mark(), dp.log_mark()
    c = h.login(dp, certs, USER, epsv=(mode == "epsv"), timeout=30)
    try:
        t0 = time.monotonic()
        sha, n, resp = h.retr(c, f"/{BIG}")
        dt = time.monotonic() - t0
        assert resp.startswith("226"), resp
        assert n == big.size and sha == big.sha
        check_data_tls(c)
        sent = c.cmd("NOOP")
        assert sent.code == 200
        print(f"{mode}: 64 MiB in {dt:.2f}s ({big.size / MiB / dt:.0f} MiB/s)")
    finally:
        c.close_quietly()
    # One log line for the transfer, with direction, bytes and duration.
    dp.wait_log(rf"ev=transfer .*command=RETR path=/{BIG} direction=download "
                rf"bytes={big.size} duration_ms=\d+ reply=226 result=ok", pmark)
    # The backend was asked with EPSV (the proxy's choice), whatever the client sent.
    cmds = site.commands_since(mark)
    assert "EPSV" in cmds and "PASV" not in cmds, cmds


@pytest.mark.parametrize("mode", ["pasv", "epsv"])
def test_ftplib_upload_32m(dp, certs, site, blobs, mode):
    up = blobs["up"]
    name = f"ftplib-{mode}.bin"
    pmark = dp.log_mark()
    c = h.login(dp, certs, USER, epsv=(mode == "epsv"), timeout=30)
    try:
        with open(up.path, "rb") as f:
            resp = h.stor(c, f"/upload/{name}", f)
        assert resp.startswith("226"), resp
        check_data_tls(c)
        r = c.cmd(f"SIZE /upload/{name}")
        assert r.code == 213 and int(r.text.split()[1]) == up.size, r
    finally:
        c.close_quietly()
    dest = site.root / "upload" / name
    assert dest.stat().st_size == up.size
    assert h.sha_file(dest) == up.sha
    dest.unlink()
    dp.wait_log(rf"ev=transfer .*command=STOR path=/upload/{name} direction=upload "
                rf"bytes={up.size} duration_ms=\d+ reply=226 result=ok", pmark)


def test_passive_replies_name_the_proxy(dp, certs, site):
    """227 names passive_address and a pool port; 229 is (|||port|) with a
    pool port; the backend's own passive ports never reach the client."""
    backend_ports = range(site.pasv_min, site.pasv_max + 1)
    with contextlib.closing(h.login(dp, certs, USER)) as c:
        r = c.cmd("PASV")
        assert r.code == 227, r
        host, port = ftplib.parse227(r.text)
        assert host == h.LOOPBACK
        assert port in dp.passive_ports() and port not in backend_ports
        r = c.cmd("EPSV")
        assert r.code == 229, r
        assert re.search(r"\(\|\|\|(\d+)\|\)", r.text), r
        port = ftplib.parse229(r.text, ("x", 0))[1]
        assert port in dp.passive_ports() and port not in backend_ports
        # The data connection is made to that port and works.
        conn = h.data_connect(c, port)
        assert c.cmd("RETR /small.txt").code == 150
        t = h.wrap_data(c, conn)
        hs = hashlib.sha256()
        h.read_all(t, None, hs)
        h.finish_tls(t)
        assert c.reply().code == 226
        assert hs.hexdigest() == hashlib.sha256(SMALL).hexdigest()


@pytest.mark.parametrize("implicit", [False, True], ids=["explicit", "implicit"])
def test_curl_download_and_upload(dp, certs, site, blobs, tmp_path, implicit):
    """curl: explicit ftp:// --ssl-reqd (by SNI, the site's certificate
    verified for its name) and implicit ftps:// (USER prefix, the central
    certificate verified for 127.0.0.1). curl uses EPSV and resumes the
    control session on data connections."""
    big, up = blobs["big"], blobs["up"]
    kw = dict(ca=certs.ca, implicit=implicit, timeout=T_BIG)
    if implicit:
        kw.update(user=USER)
        port = dp.implicit_port
    else:
        kw.update(user="anonymous", sni=SITE)
        port = dp.port
    out = tmp_path / "curl-down.bin"
    mark = dp.log_mark()
    r = h.curl(port, f"/{BIG}", extra=["-o", str(out)], **kw)
    assert r.returncode == 0, r.stderr[-3000:]
    assert out.stat().st_size == big.size and h.sha_file(out) == big.sha
    assert "EPSV" in h.curl_sent(r)
    out.unlink()
    name = f"curl-{'implicit' if implicit else 'explicit'}.bin"
    r = h.curl(port, f"/upload/{name}", extra=["-T", str(up.path)], **kw)
    assert r.returncode == 0, r.stderr[-3000:]
    dest = site.root / "upload" / name
    assert dest.stat().st_size == up.size and h.sha_file(dest) == up.sha
    dest.unlink()
    # Both data connections resumed the control session (the proxy would
    # have refused them otherwise): nothing refused in the log.
    assert "data_refused" not in dp.log_since(mark)


def test_lftp_download_upload_list(dp, certs, site, blobs, tmp_path):
    """lftp with ftp:ssl-force and ftp:ssl-protect-data, the certificate
    verified against the test CA with check-hostname on (the central
    certificate covers 127.0.0.1)."""
    big, up = blobs["big"], blobs["up"]
    out = tmp_path / "lftp-down.bin"
    r = h.lftp(dp.port, [f"get /{BIG} -o {out}",
                         f"put {up.path} -o /upload/lftp-up.bin",
                         "cls -1 /list-dir"],
               user=USER, ca=certs.ca, check_hostname=True, workdir=tmp_path,
               settings=["set ftp:ssl-force yes", "set ftp:ssl-protect-data yes",
                         "set ssl:verify-certificate yes", "set ssl:check-hostname yes",
                         "set dns:order inet"],
               timeout=T_BIG)
    assert r.returncode == 0, r.stderr[-4000:]
    sent = h.lftp_sent(r)
    assert "PROT P" in sent, sent
    assert out.stat().st_size == big.size and h.sha_file(out) == big.sha
    dest = site.root / "upload" / "lftp-up.bin"
    assert dest.stat().st_size == up.size and h.sha_file(dest) == up.sha
    dest.unlink()
    assert {"a.txt", "bb.txt", "ccc.txt"} <= {Path(x.strip()).name for x in r.stdout.split()}


def test_gftp_login_list_get_put(dp, certs, site, blobs, tmp_path):
    """gftp-text over explicit FTPS (ftps://: AUTH TLS, PBSZ 0, PROT P), the
    certificate verified against the test CA for `localhost`: login, ls, get
    and put, checked with sha256. gftp reads one TLS record and expects a
    whole reply in it: before the proxy wrote each reply with one SSL_write,
    a relayed reply came as two records and gftp hung at its USER."""
    mid = blobs["mid"]
    up = tmp_path / "gftp-up.bin"
    up_sha = h.random_file(up, 3 * MiB + 17)
    mark = dp.log_mark()
    r = h.gftp(dp.port, ["ls", f"get {MID}", "cd /list-dir", "ls", "cd /upload",
                         f"put {up.name}"],
               user=USER, ca=certs.ca, workdir=tmp_path, timeout=60)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    assert "230 " in out and "SSL connection established" in out, out[-3000:]
    assert "PROT P" in out and "SSL data connection established" in out, out[-3000:]
    got = tmp_path / MID
    assert got.exists(), f"gftp did not download {MID}:\n{out[-3000:]}"
    assert got.stat().st_size == mid.size and h.sha_file(got) == mid.sha
    dest = site.root / "upload" / up.name
    assert dest.exists(), f"gftp did not upload:\n{out[-3000:]}"
    assert h.sha_file(dest) == up_sha
    dest.unlink()
    names = {line.split()[-1] for line in out.splitlines() if line[:1] in ("-", "d")}
    assert {MID, BIG, "small.txt", "a.txt", "bb.txt", "ccc.txt"} <= names, names
    assert "data_refused" not in dp.log_since(mark)


# --------------------------------------------------------------------------
# The data connection's certificate and session
# --------------------------------------------------------------------------

TLS_VERSIONS = {"tls12": ssl.TLSVersion.TLSv1_2, "tls13": ssl.TLSVersion.TLSv1_3}


@pytest.mark.parametrize("tls", list(TLS_VERSIONS))
@pytest.mark.parametrize("source", ["sni", "early-host", "central"])
def test_data_cert_equals_control_cert(dp, certs, site, site_cert, blobs, source, tls):
    v = TLS_VERSIONS[tls]
    ctx = h.client_context(certs.ca, verify=True, check_hostname=(source == "sni"),
                           min_version=v, max_version=v)
    if source == "sni":
        c = h.login(dp, certs, "anonymous", sni=SITE, context=ctx)
        expected = site_cert.der
    elif source == "early-host":
        c = h.login(dp, certs, "anonymous", early_host=SITE, context=ctx)
        expected = site_cert.der
    else:
        c = h.login(dp, certs, USER, context=ctx)
        expected = certs.central().der
    try:
        assert c.tls_version() == {"tls12": "TLSv1.2", "tls13": "TLSv1.3"}[tls]
        assert h.retr(c, f"/{MID}")[0] == blobs["mid"].sha
        lines = []
        c.retrlines("LIST /list-dir", lines.append)
        assert len(lines) == 3
        name = f"cert-{source}-{tls}.bin"
        with open(blobs["mid"].path, "rb") as f:
            h.stor(c, f"/upload/{name}", f)
        assert len(c.data_certs) == 3
        check_data_tls(c, expected)
    finally:
        c.close_quietly()
    dest = site.root / "upload" / name
    assert h.sha_file(dest) == blobs["mid"].sha
    dest.unlink()


@pytest.mark.parametrize("tls", list(TLS_VERSIONS))
@pytest.mark.parametrize("offer", ["no-session", "other-session"])
def test_data_without_control_session_refused(dp, certs, site, blobs, offer, tls):
    """A data connection that does not resume this control session (a full
    handshake, or the session of another control connection) is refused:
    522 on the control channel, and the session goes on and transfers."""
    v = TLS_VERSIONS[tls]
    ctx = h.client_context(certs.ca, verify=True, min_version=v, max_version=v)
    c = h.login(dp, certs, USER, context=ctx)
    other = h.login(dp, certs, USER, context=ctx) if offer == "other-session" else None
    try:
        if other is not None:
            # The other session's own data connection makes sure it holds a
            # resumable session (TLS 1.3: a ticket read from the control).
            assert h.retr(other, "/small.txt")[1] == len(SMALL)
            session = other.sock.session
            assert session is not None
        else:
            session = None
        mark = dp.log_mark()
        port = h.pasv_port(c)
        conn = h.data_connect(c, port)
        r = c.cmd(f"RETR /{MID}")
        assert r.code == 150, r
        got = b""
        reused = None
        try:
            t = h.wrap_data(c, conn, session=session)
            reused = t.session_reused
            _, got = h.closed_within(t, 5.0)
        except (ssl.SSLError, OSError):
            pass          # refused during or right after the handshake
        assert reused is not True, "the proxy resumed a session it should refuse"
        assert got == b"", f"{len(got)} bytes of the file reached a refused connection"
        r = c.reply()
        assert r.code == 522, r
        assert "resum" in r.text.lower() or "session" in r.text.lower(), r
        assert "data_refused" in dp.log_since(mark)
        # The session goes on: a transfer that resumes works, byte for byte.
        assert c.cmd("NOOP").code == 200
        n0 = len(c.data_certs)
        sha, n, resp = h.retr(c, f"/{MID}")
        assert resp.startswith("226") and sha == blobs["mid"].sha
        assert c.data_session_reused[n0:] == [True]
        if other is not None:
            assert h.retr(other, f"/{MID}")[0] == blobs["mid"].sha
    finally:
        c.close_quietly()
        if other is not None:
            other.close_quietly()


def test_data_from_other_address_refused(dp, certs, blobs):
    """A data connection from 127.0.0.2 (bound before connecting) to a
    session whose control connection is from 127.0.0.1 is refused and
    logged; the client's legitimate connection afterwards still works."""
    with contextlib.closing(h.login(dp, certs, USER)) as c:
        assert c.sock.getsockname()[0] == h.LOOPBACK
        mark = dp.log_mark()
        port = h.pasv_port(c)
        bad = socket.socket()
        try:
            bad.settimeout(h.T_IO)
            bad.bind((h.OTHER_CLIENT_ADDR, 0))
            try:
                bad.connect((h.LOOPBACK, port))
            except ConnectionResetError:
                pass      # on loopback the proxy's reset can beat connect()'s return
            else:
                # Closed at once, before any TLS: nothing comes but the end.
                closed, got = h.closed_within(bad, 5.0)
                assert closed and got == b"", (closed, got)
        finally:
            bad.close()
        m = dp.wait_log(r"data_refused.*127\.0\.0\.2|127\.0\.0\.2.*data_refused", mark)
        assert m
        # The legitimate data connection to the same passive port.
        good = h.data_connect(c, port)
        r = c.cmd(f"RETR /{MID}")
        assert r.code == 150, r
        t = h.wrap_data(c, good)
        assert t.session_reused
        hs = hashlib.sha256()
        assert h.read_all(t, None, hs) == MID_SIZE
        h.finish_tls(t)
        assert c.reply().code == 226
        assert hs.hexdigest() == blobs["mid"].sha
        # The session goes on.
        assert c.cmd("NOOP").code == 200
        sha, n, resp = h.retr(c, f"/{MID}")
        assert resp.startswith("226") and sha == blobs["mid"].sha
        check_data_tls(c)


def test_prot_c_refused_under_require_protected_data(dp, certs, blobs):
    with contextlib.closing(h.login(dp, certs, USER, prot_p=False)) as c:
        assert c.cmd("PBSZ 0").code == 200
        r = c.cmd("PROT C")
        assert r.code == 534, r
        # Still PROT P after a refused PROT C (or never set): P works.
        assert c.cmd("PROT P").code == 200
        c._prot_p = True
        assert c.cmd("PROT C").code == 534
        sha, n, resp = h.retr(c, f"/{MID}")
        assert sha == blobs["mid"].sha
        check_data_tls(c)


def test_prot_c_relays_clear_when_allowed(make_proxy, certs, site, site_cert, blobs):
    """require_protected_data = no: PROT C is accepted and data flows in clear."""
    p = make_proxy(proxy={"require_protected_data": "no"},
                   backends=xfer_backends(site, site_cert))
    with contextlib.closing(h.login(p, certs, USER, prot_p=False)) as c:
        assert c.cmd("PBSZ 0").code == 200
        assert c.cmd("PROT C").code == 200
        c._prot_p = False
        port = h.pasv_port(c)
        conn = h.data_connect(c, port)
        assert c.cmd(f"RETR /{MID}").code == 150
        hs = hashlib.sha256()
        h.read_all(conn, None, hs)        # plaintext: no TLS on this connection
        conn.close()
        assert c.reply().code == 226
        assert hs.hexdigest() == blobs["mid"].sha


def test_transfer_before_prot_p_gets_521(dp, certs, site, blobs):
    with contextlib.closing(h.login(dp, certs, USER, prot_p=False)) as c:
        mark = site.log_mark()
        port = h.pasv_port(c)
        conn = h.data_connect(c, port)
        r = c.cmd("RETR /small.txt")
        assert r.code == 521, r
        conn.close()
        r = c.cmd("LIST")
        assert r.code in (425, 521), r     # no PASV pending any more, or 521 again
        port = h.pasv_port(c)
        r = c.cmd("STOR /upload/never.bin")
        assert r.code == 521, r
        cmds = [x.split()[0] for x in site.commands_since(mark)]
        assert "RETR" not in cmds and "STOR" not in cmds and "LIST" not in cmds, cmds
        assert not (site.root / "upload" / "never.bin").exists()
        # After PBSZ/PROT P, the same session transfers.
        assert c.cmd("PBSZ 0").code == 200
        assert c.cmd("PROT P").code == 200
        c._prot_p = True
        assert h.retr(c, f"/{MID}")[0] == blobs["mid"].sha


# --------------------------------------------------------------------------
# Active mode
# --------------------------------------------------------------------------

def test_port_eprt_refused_when_active_disabled(dp, certs, site):
    mark = site.log_mark()
    with contextlib.closing(h.login(dp, certs, USER)) as c:
        for cmd in ("PORT 127,0,0,1,156,64", "EPRT |1|127.0.0.1|40000|"):
            r = c.cmd(cmd)
            assert r.code // 100 == 5, f"{cmd}: {r}"
            assert "PASV" in r.text or "EPSV" in r.text, f"{cmd}: {r}"
        assert c.cmd("NOOP").code == 200
    cmds = [x.split()[0] for x in site.commands_since(mark)]
    assert "PORT" not in cmds and "EPRT" not in cmds, cmds


def test_port_eprt_to_another_address_refused(make_proxy, certs, site, site_cert):
    """allow_active = yes: PORT/EPRT naming any address but the client's own
    (FTP bounce) get 5xx, and the proxy never connects there."""
    p = make_proxy(proxy={"allow_active": "yes"}, backends=xfer_backends(site, site_cert))
    trap = socket.create_server((h.OTHER_CLIENT_ADDR, 0))
    trap.settimeout(0.5)
    tport = trap.getsockname()[1]
    mark = site.log_mark()
    try:
        with contextlib.closing(h.login(p, certs, USER)) as c:
            for cmd in (f"PORT 127,0,0,2,{tport >> 8},{tport & 255}",
                        f"EPRT |1|127.0.0.2|{tport}|",
                        "PORT 10,1,2,3,156,64",
                        "EPRT |1|192.0.2.7|40000|",
                        "EPRT |2|::1|40000|"):
                r = c.cmd(cmd)
                assert r.code // 100 == 5, f"{cmd}: {r}"
                r = c.cmd("RETR /small.txt")
                assert r.code // 100 in (4, 5), f"RETR after refused {cmd}: {r}"
            assert c.cmd("NOOP").code == 200
        with pytest.raises(socket.timeout):
            conn, _ = trap.accept()
            conn.close()
    finally:
        trap.close()
    cmds = [x.split()[0] for x in site.commands_since(mark)]
    assert "RETR" not in cmds, cmds


@pytest.mark.parametrize("cmd", ["port", "eprt"])
def test_active_mode_transfers(make_proxy, certs, site, site_cert, blobs, tmp_path, cmd):
    """allow_active = yes, ftplib set_pasv(False): the proxy connects out to
    the client's own address and stays the TLS server there (RFC 4217); the
    client resumes its control session. Download 64 MiB, upload 32 MiB, LIST."""
    p = make_proxy(proxy={"allow_active": "yes"}, backends=xfer_backends(site, site_cert))
    big, up = blobs["big"], blobs["up"]
    mark, smark = p.log_mark(), site.log_mark()
    c = h.login(p, certs, USER, eprt=(cmd == "eprt"), timeout=30)
    try:
        c.set_pasv(False)
        sha, n, resp = h.retr(c, f"/{BIG}")
        assert resp.startswith("226"), resp
        assert n == big.size and sha == big.sha
        name = f"active-{cmd}.bin"
        with open(up.path, "rb") as f:
            assert h.stor(c, f"/upload/{name}", f).startswith("226")
        lines = []
        c.retrlines("LIST /list-dir", lines.append)
        assert len(lines) == 3, lines
        check_data_tls(c)
        assert len(c.data_certs) == 3
    finally:
        c.close_quietly()
    dest = site.root / "upload" / name
    assert dest.stat().st_size == up.size and h.sha_file(dest) == up.sha
    dest.unlink()
    assert "data_refused" not in p.log_since(mark)
    # The backend side was passive: it never saw PORT/EPRT.
    cmds = [x.split()[0] for x in site.commands_since(smark)]
    assert "PORT" not in cmds and "EPRT" not in cmds, cmds
    assert cmds.count("EPSV") >= 3, cmds
    # lftp in active mode too (curl 7.88.1 cannot: in active mode it never
    # starts TLS on the accepted data connection, against vsftpd's own FTPS
    # as well, so it is not used here).
    out = tmp_path / "lftp-active.bin"
    r = h.lftp(p.port, [f"get /{BIG} -o {out}", f"put {up.path} -o /upload/{name}"],
               user=USER, ca=certs.ca, workdir=tmp_path, timeout=T_BIG,
               settings=["set ftp:passive-mode no", f"set ftp:port-ipv4 {h.LOOPBACK}",
                         "set ftp:prefer-epsv no"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert any(x.startswith(("PORT", "EPRT")) for x in h.lftp_sent(r)), h.lftp_sent(r)
    assert not any(x.startswith(("PASV", "EPSV")) for x in h.lftp_sent(r)), h.lftp_sent(r)
    assert out.stat().st_size == big.size and h.sha_file(out) == big.sha
    assert dest.stat().st_size == up.size and h.sha_file(dest) == up.sha
    dest.unlink()
    assert "data_refused" not in p.log_since(mark)


# --------------------------------------------------------------------------
# Transfer commands
# --------------------------------------------------------------------------

def test_list_and_nlst(dp, certs, site):
    with contextlib.closing(h.login(dp, certs, USER)) as c:
        lines = []
        assert c.retrlines("LIST /list-dir", lines.append).startswith("226")
        names = sorted(l.split()[-1] for l in lines)
        assert names == ["a.txt", "bb.txt", "ccc.txt"], lines
        sizes = {l.split()[-1]: int(l.split()[4]) for l in lines}
        assert sizes == {"a.txt": 2, "bb.txt": 3, "ccc.txt": 4}
        nl = c.nlst("/list-dir")
        assert sorted(Path(x).name for x in nl) == ["a.txt", "bb.txt", "ccc.txt"], nl
        root = []
        c.retrlines("LIST", root.append)
        assert {BIG, MID, "small.txt", "empty.bin", "list-dir", "upload"} <= \
            {l.split()[-1] for l in root}
        check_data_tls(c)


def test_mlsd_relays_backend_500_and_feat_has_no_mlst(dp, certs, site, blobs):
    """vsftpd 3.0.3 has no MLSD: the proxy relays its 500, the session goes
    on, and FEAT after login advertises neither MLST nor MLSD."""
    with h.PlainControl(site.port) as b:
        assert b.cmd("USER anonymous").code == 331
        assert b.cmd("PASS x").code == 230
        direct = b.cmd("MLSD")
    assert direct.code == 500, direct
    mark = site.log_mark()
    with contextlib.closing(h.login(dp, certs, USER)) as c:
        feat = c.cmd("FEAT")
        assert feat.code == 211, feat
        assert not h.feat_has(feat, "MLST") and not h.feat_has(feat, "MLSD"), feat
        with pytest.raises(ftplib.error_perm) as e:
            list(c.mlsd("/list-dir"))
        assert str(e.value) == direct.text, (str(e.value), direct.text)
        assert c.cmd("NOOP").code == 200
        assert h.retr(c, f"/{MID}")[0] == blobs["mid"].sha
    assert any(x.startswith("MLSD") for x in site.commands_since(mark))


def test_rest_resumes_partial_download(dp, certs, blobs):
    """Download the first N bytes and cut the data connection; then REST N
    and RETR the rest: the two parts are the whole file."""
    big = blobs["big"]
    N = 10 * MiB + 12345
    with contextlib.closing(h.login(dp, certs, USER, timeout=30)) as c:
        conn, _ = c.ntransfercmd(f"RETR /{BIG}")
        hs = hashlib.sha256()
        assert h.read_all(conn, N, hs) == N
        conn.close()                               # cut: no close_notify
        r = c.reply()
        assert r.code // 100 in (2, 4), r          # the backend's final reply
        print(f"reply after the cut: {r}")
        assert c.cmd("TYPE I").code == 200
        rest = []

        def cb(b):
            hs.update(b)
            rest.append(len(b))

        resp = c.retrbinary(f"RETR /{BIG}", cb, blocksize=h.BLOCK, rest=N)
        assert resp.startswith("226"), resp
        assert sum(rest) == big.size - N
        assert hs.hexdigest() == big.sha


def test_appe_appends(dp, certs, site, blobs):
    up = blobs["up"]
    data = up.read()
    cut = 5 * MiB + 7
    with contextlib.closing(h.login(dp, certs, USER, timeout=30)) as c:
        assert h.stor(c, "/upload/appe.bin", data[:cut]).startswith("226")
        assert h.stor(c, "/upload/appe.bin", data[cut:], cmd="APPE").startswith("226")
        r = c.cmd("SIZE /upload/appe.bin")
        assert r.code == 213 and int(r.text.split()[1]) == up.size
        check_data_tls(c)
    dest = site.root / "upload" / "appe.bin"
    assert h.sha_file(dest) == up.sha
    dest.unlink()


def test_stou_stores_unique(dp, certs, site, blobs):
    mid = blobs["mid"]
    with contextlib.closing(h.login(dp, certs, USER)) as c:
        assert c.cmd("CWD /upload").code == 250
        names = []
        for _ in range(2):
            port = h.pasv_port(c)
            conn = h.data_connect(c, port)
            r = c.cmd("STOU")
            assert r.code == 150, r
            m = re.search(r"FILE:\s*(\S+)", r.text)
            assert m, r
            names.append(m.group(1))
            t = h.wrap_data(c, conn)
            assert t.session_reused
            t.sendall(mid.read())
            h.finish_tls(t)
            r = c.reply()
            assert r.code == 226, r
    assert names[0] != names[1], names
    for n in names:
        dest = site.root / "upload" / n
        assert h.sha_file(dest) == mid.sha, n
        dest.unlink()


def test_abor_mid_download_then_new_download(dp, certs, site, blobs):
    """ABOR during a 64 MiB download: the backend's 426 for the transfer,
    then its 226/225 for ABOR; then a new download in the same session is
    whole."""
    big = blobs["big"]
    with contextlib.closing(h.login(dp, certs, USER, timeout=30)) as c:
        mark = site.log_mark()
        conn, _ = c.ntransfercmd(f"RETR /{BIG}")
        assert h.read_all(conn, 2 * MiB) == 2 * MiB
        c.send_raw(b"ABOR\r\n")
        first = c.reply()
        rest = [first] if first.code in (225, 226) else [first] + replies_until(c, {225, 226})
        with contextlib.suppress(OSError, ssl.SSLError):
            conn.close()
        codes = [r.code for r in rest]
        assert codes[-1] in (225, 226), codes
        assert codes[0] == 426, [str(r) for r in rest]
        assert len(codes) == 2, [str(r) for r in rest]
        # The backend got ABOR (after the proxy's Telnet Synch: IAC IP IAC DM).
        assert any(x.endswith("ABOR") for x in site.commands_since(mark))
        assert c.cmd("NOOP").code == 200
        sha, n, resp = h.retr(c, f"/{BIG}")
        assert resp.startswith("226") and n == big.size and sha == big.sha


def test_zero_byte_download_and_upload(dp, certs, site, tmp_path):
    with contextlib.closing(h.login(dp, certs, USER)) as c:
        sha, n, resp = h.retr(c, "/empty.bin")
        assert resp.startswith("226") and n == 0 and sha == EMPTY_SHA
        assert h.stor(c, "/upload/empty-up.bin", b"").startswith("226")
        r = c.cmd("SIZE /upload/empty-up.bin")
        assert r.code == 213 and r.text.split()[1] == "0", r
        check_data_tls(c)
        assert len(c.data_certs) == 2
    dest = site.root / "upload" / "empty-up.bin"
    assert dest.stat().st_size == 0
    dest.unlink()
    out = tmp_path / "curl-empty.bin"
    r = h.curl(dp.port, "/empty.bin", user=USER, ca=certs.ca, extra=["-o", str(out)])
    assert r.returncode == 0, r.stderr[-2000:]
    assert out.read_bytes() == b""


def test_final_reply_only_after_data_end(dp, certs, blobs):
    """The 226 is not on the control connection before the data connection
    has delivered everything and its close_notify (the client reads slowly;
    vsftpd has long sent its 226 by then)."""
    mid = blobs["mid"]
    with contextlib.closing(h.login(dp, certs, USER)) as c:
        conn, _ = c.ntransfercmd(f"RETR /{MID}")
        hs = hashlib.sha256()
        n = h.read_all(conn, 64 * 1024, hs)
        time.sleep(1.0)
        early = b""
        while True:
            r, _, _ = select.select([c.sock], [], [], 0)
            if (r or c.sock.pending()) and not early:
                # Readable: a reply, or only TLS records (tickets) that carry
                # no reply; recv() on the SSLSocket returns application data only.
                c.sock.settimeout(0.2)
                with contextlib.suppress(socket.timeout, TimeoutError):
                    early = c.sock.recv(4096)
                c.sock.settimeout(h.T_IO)
            b = conn.recv(16 * 1024)
            if not b:
                break
            hs.update(b)
            n += len(b)
            time.sleep(0.001)
        assert not early, f"the final reply came before the data connection ended: {early!r}"
        h.finish_tls(conn)
        assert c.reply().code == 226
        assert n == mid.size and hs.hexdigest() == mid.sha


def test_20_parallel_downloads(dp, certs, blobs):
    big = blobs["big"]
    n = 20
    results: list = [None] * n
    start = threading.Barrier(n, timeout=30)

    def worker(i):
        try:
            c = h.login(dp, certs, USER, timeout=30)
            try:
                start.wait()
                results[i] = h.retr(c, f"/{BIG}") + (list(c.data_session_reused),)
                c.quit()
            finally:
                c.close_quietly()
        except BaseException as e:
            results[i] = e

    t0 = time.monotonic()
    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 100
    for t in threads:
        t.join(max(0.1, deadline - time.monotonic()))
    dt = time.monotonic() - t0
    assert not any(t.is_alive() for t in threads), "downloads still running after 100 s"
    bad = [(i, r) for i, r in enumerate(results)
           if isinstance(r, BaseException) or r[0] != big.sha or r[1] != big.size
           or not r[2].startswith("226") or r[3] != [True]]
    assert not bad, bad
    print(f"{n} x 64 MiB in {dt:.1f}s ({n * big.size / MiB / dt:.0f} MiB/s in all)")


def test_epsv_all_then_pasv_refused(dp, certs, site, blobs):
    with contextlib.closing(h.login(dp, certs, USER, epsv=True)) as c:
        mark = site.log_mark()
        r = c.cmd("EPSV ALL")
        assert r.code == 200, r
        r = c.cmd("PASV")
        assert r.code // 100 == 5, r
        r = c.cmd("PORT 127,0,0,1,156,64")
        assert r.code // 100 == 5, r
        assert "EPSV ALL" not in site.commands_since(mark)
        # EPSV still works, and transfers.
        assert h.retr(c, f"/{MID}")[0] == blobs["mid"].sha
        assert c.cmd("PASV").code // 100 == 5


def test_ipv6_epsv_works_pasv_refused(make_proxy, certs, site, site_cert, blobs):
    if not h.has_ipv6_loopback():
        pytest.fail("no IPv6 loopback on this machine")
    port = h.free_port("::1")
    p = make_proxy(proxy={"listen": f"[::1]:{port}", "listen_implicit": None},
                   backends=xfer_backends(site, site_cert))
    with contextlib.closing(h.login(p, certs, USER, host="::1", port=port)) as c:
        assert c.af == socket.AF_INET6
        r = c.cmd("PASV")
        assert r.code == 522, r
        r = c.cmd("EPSV 1")
        assert r.code == 522 and "(2)" in r.text, r
        sha, n, resp = h.retr(c, f"/{MID}")      # ftplib uses EPSV over IPv6
        assert resp.startswith("226") and sha == blobs["mid"].sha
        check_data_tls(c)


# --------------------------------------------------------------------------
# The passive port pool
# --------------------------------------------------------------------------

def test_port_pool_exhausted_then_returned(make_proxy, certs, site, site_cert, blobs):
    p = make_proxy(proxy={"passive_ports": pool_range(2)},
                   backends=xfer_backends(site, site_cert))
    a, b, c = (h.login(p, certs, USER) for _ in range(3))
    try:
        pa, pb = h.pasv_port(a), h.epsv_port(b)
        assert {pa, pb} == set(p.passive_ports())
        r = c.cmd("PASV")
        assert r.code == 425, r
        r = c.cmd("EPSV")
        assert r.code == 425, r
        assert c.cmd("NOOP").code == 200      # the session goes on
        # a and b transfer on the ports they hold.
        for cl, port in ((a, pa), (b, pb)):
            conn = h.data_connect(cl, port)
            assert cl.cmd(f"RETR /{MID}").code == 150
            t = h.wrap_data(cl, conn)
            hs = hashlib.sha256()
            h.read_all(t, None, hs)
            h.finish_tls(t)
            assert cl.reply().code == 226
            assert hs.hexdigest() == blobs["mid"].sha
        # Their ports are back: c gets one, and transfers on it.
        sha, n, resp = h.retr(c, f"/{MID}")
        assert resp.startswith("226") and sha == blobs["mid"].sha
        assert h.pasv_port(c) in p.passive_ports()
        assert h.epsv_port(a) in p.passive_ports()     # c's PASV replaced by a new one: still 2
        assert b.cmd("PASV").code == 425
    finally:
        for x in (a, b, c):
            x.close_quietly()


def test_data_timeout_frees_port(make_proxy, certs, site, site_cert, blobs):
    """A PASV whose data connection never comes: after data_timeout (2 s)
    the port is closed AND back in the pool (a 1-port pool, so another
    session's PASV can only get it if it was returned)."""
    p = make_proxy(proxy={"passive_ports": pool_range(1), "data_timeout": "2"},
                   backends=xfer_backends(site, site_cert))
    (port,) = p.passive_ports()
    a = h.login(p, certs, USER)
    b = h.login(p, certs, USER)
    try:
        assert h.pasv_port(a) == port
        assert h.is_listening(port)
        assert b.cmd("PASV").code == 425
        t0 = time.monotonic()
        h.wait_until(lambda: not h.is_listening(port), 6, what=f"port {port} closed")
        assert time.monotonic() - t0 > 1.0
        r = b.cmd("PASV")
        assert r.code == 227, f"port not returned to the pool after data_timeout: {r}"
        assert ftplib.parse227(r.text)[1] == port
        assert h.retr(b, f"/{MID}")[0] == blobs["mid"].sha
        # a's session goes on too.
        assert a.cmd("NOOP").code == 200
        assert h.retr(a, f"/{MID}")[0] == blobs["mid"].sha
    finally:
        a.close_quietly()
        b.close_quietly()


def test_data_timeout_with_transfer_command_pending(make_proxy, certs, site, site_cert,
                                                   blobs):
    """PASV, then RETR, and the data connection never comes: data_timeout
    (2 s) ends the transfer, the client gets a 4xx final reply soon after
    (not only when the backend gives up waiting: vsftpd's accept_timeout is
    60 s), and the session transfers again."""
    p = make_proxy(proxy={"passive_ports": pool_range(1), "data_timeout": "2"},
                   backends=xfer_backends(site, site_cert))
    with contextlib.closing(h.login(p, certs, USER, timeout=12)) as a:
        h.pasv_port(a)
        t0 = time.monotonic()
        r = a.cmd(f"RETR /{MID}")
        if r.code == 150:                  # a preliminary reply, then the final one
            r = a.reply()
        dt = time.monotonic() - t0
        assert r.code // 100 == 4, r
        assert dt < 2 + 6, f"final reply after {dt:.1f}s: {r}"
        assert a.cmd("NOOP").code == 200
        assert h.retr(a, f"/{MID}")[0] == blobs["mid"].sha


def test_stalled_data_connection_not_reported_complete(make_proxy, certs, site, site_cert,
                                                       blobs):
    """The client opens its data connection but never starts TLS on it:
    after data_timeout (2 s) the proxy drops it, and the final reply must not
    be 226 (the backend's 226 only says vsftpd handed the file to the proxy;
    none of it reached the client). The session goes on."""
    p = make_proxy(proxy={"data_timeout": "2"}, backends=xfer_backends(site, site_cert))
    with contextlib.closing(h.login(p, certs, USER, timeout=12)) as c:
        port = h.pasv_port(c)
        conn = h.data_connect(c, port)
        r = c.cmd("RETR /small.txt")
        assert r.code == 150, r
        t0 = time.monotonic()
        r = c.reply()
        dt = time.monotonic() - t0
        closed, got = h.closed_within(conn, 5)
        conn.close()
        assert closed, f"the data connection is still open ({len(got)} bytes came)"
        assert got == b"" or not got.endswith(SMALL), got
        assert 1.0 < dt < 8, f"final reply after {dt:.1f}s: {r}"
        assert r.code // 100 == 4, f"the client got {r} for a file it never received"
        assert c.cmd("NOOP").code == 200
        assert h.retr(c, f"/{MID}")[0] == blobs["mid"].sha


# --------------------------------------------------------------------------
# Failures mid-transfer end only their own session
# --------------------------------------------------------------------------

@pytest.mark.parametrize("direction", ["download", "upload"])
def test_client_vanishes_mid_transfer(make_proxy, certs, site, site_cert, blobs, direction):
    p = make_proxy(proxy={"passive_ports": pool_range(4)},
                   backends=xfer_backends(site, site_cert))
    base = fk.warm_up(p, certs, site, "small.txt", user=USER)
    assert p.pool_ports_busy() == []
    procs_before = len(site.session_procs())
    other = bystander(p, certs, site)
    mark = p.log_mark()
    x = h.login(p, certs, USER, timeout=30)
    conn = fk.transfer_midway(x, direction, f"/{BIG}" if direction == "download"
                              else "/upload/vanish.bin", 4 * MiB)
    # Vanish: no close_notify, no QUIT.
    conn.close()
    x.drop()
    p.wait_log(r"ev=close ", mark, timeout=10)
    other.check()
    p.wait_fds_back(base)
    h.wait_until(lambda: p.pool_ports_busy() == [], 5, what="every pool port free")
    h.wait_until(lambda: len(site.session_procs()) <= procs_before, 10,
                 what="the vanished session's backend session ended")
    every_pool_port_pasv(p, certs)
    p.wait_fds_back(base)
    with contextlib.suppress(FileNotFoundError):
        (site.root / "upload" / "vanish.bin").unlink()


@pytest.mark.parametrize("direction", ["download", "upload"])
def test_backend_killed_mid_transfer(make_proxy, certs, workdir, site, site_cert, blobs,
                                     direction):
    """The session process of a dedicated vsftpd is killed mid-transfer: that
    session ends (its control connection is closed), another session on
    another backend finishes its 64 MiB download intact, and the proxy's
    descriptors and passive ports return to where they were."""
    victim = start_site(workdir, blobs, name=f"victim-{direction}",
                        hostnames=["ftp.victim.test"])
    try:
        p = make_proxy(proxy={"passive_ports": pool_range(4)},
                       backends=xfer_backends(site, site_cert, victim=victim.section()))
        vuser = "ftp.victim.test|anonymous"
        base = fk.warm_up(p, certs, site, "small.txt", user=USER)
        fk.warm_up(p, certs, victim, "small.txt", user=vuser)
        base = max(base, p.fd_count())
        assert p.pool_ports_busy() == []
        other = bystander(p, certs, site)
        v = h.login(p, certs, vuser, timeout=30)
        conn = fk.transfer_midway(v, direction, f"/{BIG}" if direction == "download"
                                  else "/upload/killed.bin", 4 * MiB)
        procs = victim.session_procs()
        assert procs, "no vsftpd session process found"
        killed = 0
        for pid in procs:
            try:        # a warm-up session's process may be ending on its own
                os.kill(pid, signal.SIGKILL)
                killed += 1
            except ProcessLookupError:
                pass
        assert killed, f"every vsftpd session process was gone before the kill: {procs}"
        # The data connection ends (EOF or reset), it does not stall...
        assert data_ends(conn, direction) in ("eof", "error")
        # ...and the control connection is closed by the proxy.
        lines = control_ends(v, 10)
        print(f"the victim's client got: {lines}")
        assert all(l[:1] in ("4", "5") or l[:1] == " " for l in lines if l), lines
        with contextlib.suppress(OSError, ssl.SSLError):
            conn.close()
        v.close_quietly()
        other.check()
        p.wait_fds_back(base)
        h.wait_until(lambda: p.pool_ports_busy() == [], 5, what="every pool port free")
        every_pool_port_pasv(p, certs)
        p.wait_fds_back(base)
        # The victim backend itself still serves new sessions.
        with contextlib.closing(h.login(p, certs, vuser)) as c:
            assert h.retr(c, f"/{MID}")[0] == blobs["mid"].sha
    finally:
        victim.stop()
