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

Helpers that could move to harness.py are marked "harness candidate".
"""

from __future__ import annotations

import contextlib
import ftplib
import hashlib
import io
import os
import re
import select
import shutil
import signal
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pytest

import harness as h
from conftest import proxy_problems
from harness import FtpsClient, Vsftpd, backend_section

PW = "test@example.org"
MiB = 1024 * 1024
SITE = "ftp.data.test"           # the xfer site's host name; it has its own certificate
USER = f"{SITE}|anonymous"       # routes by USER prefix (no SNI, no HOST: central cert)
BIG = "big64.bin"                # 64 MiB random, in the site's root
BIG_SIZE = 64 * MiB
UP_SIZE = 32 * MiB
MID = "mid.bin"                  # 4 MiB random
MID_SIZE = 4 * MiB
SMALL = b"small file on the xfer site\n"
EMPTY_SHA = hashlib.sha256(b"").hexdigest()
BLOCK = 256 * 1024
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
    hs = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            chunk = os.urandom(min(left, 4 * MiB))
            hs.update(chunk)
            f.write(chunk)
            left -= len(chunk)
    os.chmod(path, 0o644)
    return Blob(path, size, hs.hexdigest())


def sha_of(path: Path) -> str:
    hs = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(4 * MiB):
            hs.update(chunk)
    return hs.hexdigest()


@pytest.fixture(scope="session")
def blobs(tmp_path_factory):
    d = tmp_path_factory.mktemp("blobs")
    return {"big": _random_file(d / BIG, BIG_SIZE),
            "up": _random_file(d / "up32.bin", UP_SIZE),
            "mid": _random_file(d / MID, MID_SIZE)}


def _place(blob: Blob, dest: Path) -> None:
    """Hard link (same file system: no copy of 64 MiB), else copy."""
    if dest.exists():
        dest.unlink()
    try:
        os.link(blob.path, dest)
    except OSError:
        shutil.copyfile(blob.path, dest)
    os.chmod(dest, 0o644)


def start_site(workdir: Path, blobs: dict, name: str = "xfer") -> Vsftpd:
    """A vsftpd with the big files; 40 passive ports for 20+ parallel sessions."""
    v = Vsftpd(workdir, name, pasv_ports=40,
               files={"small.txt": SMALL, "empty.bin": b"",
                      "list-dir/a.txt": b"a\n", "list-dir/bb.txt": b"bb\n",
                      "list-dir/ccc.txt": b"ccc\n"},
               dirs=["list-dir"])
    v.start()
    _place(blobs["big"], v.root / BIG)
    _place(blobs["mid"], v.root / MID)
    return v


@pytest.fixture(scope="module")
def site(workdir, blobs):
    v = start_site(workdir, blobs)
    yield v
    v.stop()


@pytest.fixture(scope="module")
def site_cert(certs):
    return certs.make("xfer-site", SITE, dns=[SITE])


def xfer_backends(site: Vsftpd, site_cert, **more) -> dict:
    b = {"xfer": backend_section(site, [SITE], site_cert)}
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
    p.start()
    yield p
    problems = proxy_problems(p)
    if problems:
        print(f"\n--- ftpsgate log ---\n{p.log_text()[-12000:]}")
        pytest.fail("; ".join(problems), pytrace=False)


@pytest.fixture(autouse=True)
def _dp_log_on_failure(request):
    """Print the shared proxy's log for the failing test (if it used it)."""
    if "dp" not in request.fixturenames:
        yield
        return
    p = request.getfixturevalue("dp")
    mark = p.log_mark()
    yield
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        print(f"\n--- ftpsgate log (this test) ---\n{p.log_since(mark)[-12000:]}")


# --------------------------------------------------------------------------
# Clients (harness candidates: DataClient's EPSV/EPRT switches, the raw
# data-connection helpers and pool_ports_busy belong in harness.py)
# --------------------------------------------------------------------------

class DataClient(FtpsClient):
    """FtpsClient that resumes the control session on data connections by
    default, and can use EPSV/EPRT over IPv4 (ftplib uses them only over
    IPv6: PASV/PORT otherwise)."""

    def __init__(self, *, epsv: bool = False, eprt: bool = False, **kw):
        kw.setdefault("reuse_session", True)
        super().__init__(**kw)
        self.epsv = epsv
        self.eprt = eprt

    def makepasv(self):
        if self.epsv and self.af == socket.AF_INET:
            return ftplib.parse229(self.sendcmd("EPSV"), self.sock.getpeername())
        return super().makepasv()

    def makeport(self):
        if not (self.eprt and self.af == socket.AF_INET):
            return super().makeport()
        sock = socket.create_server(("", 0), family=self.af, backlog=1)
        port = sock.getsockname()[1]
        host = self.sock.getsockname()[0]
        self.sendeprt(host, port)
        sock.settimeout(self.timeout)
        return sock


def connect(p: h.Proxy, certs, *, sni=None, implicit=False, epsv=False, eprt=False,
            reuse=True, context=None, check_hostname=None, source_address=None,
            host=None, port=None, timeout=h.T_IO) -> DataClient:
    if check_hostname is None:
        check_hostname = sni is not None
    c = DataClient(ca=certs.ca, verify=True, check_hostname=check_hostname, sni=sni,
                   implicit=implicit, timeout=timeout, context=context,
                   reuse_session=reuse, epsv=epsv, eprt=eprt)
    c.connect(host or p.host, port or (p.implicit_port if implicit else p.port),
              source_address=source_address)
    return c


def login(p: h.Proxy, certs, user: str = USER, *, prot_p: bool = True,
          early_host: Optional[str] = None, **kw) -> DataClient:
    """A logged-in session (PBSZ 0 + PROT P unless prot_p=False)."""
    c = connect(p, certs, **kw)
    try:
        if early_host:
            r = c.host_cmd(early_host)
            assert r.code == 220, r
        r = c.tls_login(user, PW)
        assert r.code == 230, r
        if prot_p:
            c.protect()
    except BaseException:
        c.close_quietly()
        raise
    return c


def retr(c: ftplib.FTP, path: str, rest: Optional[int] = None) -> tuple[str, int, str]:
    """RETR through ftplib, hashing on the fly: (sha256, bytes, final reply)."""
    return h.retr_sha(c, path, rest, blocksize=BLOCK)


def stor(c: ftplib.FTP, path: str, data, cmd: str = "STOR") -> str:
    f = data if hasattr(data, "read") else io.BytesIO(data)
    return c.storbinary(f"{cmd} {path}", f, blocksize=BLOCK)


def check_data_tls(c: DataClient, expected_der: Optional[bytes] = None) -> None:
    """Every data connection so far resumed the control session and showed
    the control connection's certificate."""
    ctl = c.peer_cert_der()
    assert c.data_certs, "no data connection was made"
    for i, der in enumerate(c.data_certs):
        assert der == ctl, f"data connection {i}: certificate differs from the control one"
    if expected_der is not None:
        assert ctl == expected_der
    assert all(c.data_session_reused), c.data_session_reused


def data_connect(c: DataClient, port: int, source=None) -> socket.socket:
    return socket.create_connection((c.sock.getpeername()[0], port), h.T_IO,
                                    source_address=source)


def wrap_data(c: DataClient, conn: socket.socket, session="control") -> ssl.SSLSocket:
    """TLS client on a data connection; session='control' resumes the control
    session, None offers none, or an ssl.SSLSession of our choosing."""
    s = c.sock.session if session == "control" else session
    return c.context.wrap_socket(conn, server_hostname=c.host, session=s)


def pasv_port(c: DataClient) -> int:
    r = c.cmd("PASV")
    assert r.code == 227, r
    return ftplib.parse227(r.text)[1]


def epsv_port(c: DataClient) -> int:
    r = c.cmd("EPSV")
    assert r.code == 229, r
    return ftplib.parse229(r.text, ("x", 0))[1]


def read_all(conn, limit: Optional[int] = None, hs=None) -> int:
    """Read to EOF (or `limit` bytes); returns the count."""
    n = 0
    while limit is None or n < limit:
        want = BLOCK if limit is None else min(BLOCK, limit - n)
        b = conn.recv(want)
        if not b:
            break
        if hs is not None:
            hs.update(b)
        n += len(b)
    return n


def finish_tls(conn) -> None:
    """close_notify both ways, then close (what ftplib does)."""
    with contextlib.suppress(OSError, ValueError):
        if isinstance(conn, ssl.SSLSocket):
            conn = conn.unwrap()
    with contextlib.suppress(OSError):
        conn.close()


def connection_ends(sock: socket.socket, timeout: float = 5.0) -> bytes:
    """Read until EOF/reset; returns what came. TimeoutError if it stays open."""
    sock.settimeout(timeout)
    got = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            b = sock.recv(65536)
        except socket.timeout:
            break
        except (ConnectionResetError, BrokenPipeError, ssl.SSLError, OSError):
            return got
        if not b:
            return got
        got += b
    raise TimeoutError(f"connection still open after {timeout}s ({len(got)} bytes came)")


def data_ends(conn, direction: str, timeout: float = 10.0) -> str:
    """Keep reading (download) or writing (upload) until the connection ends:
    'eof' or 'error'. AssertionError if it merely stalls or goes on."""
    conn.settimeout(timeout)
    deadline = time.monotonic() + timeout
    chunk = b"\0" * BLOCK
    try:
        while time.monotonic() < deadline:
            if direction == "download":
                if not conn.recv(BLOCK):
                    return "eof"
            else:
                conn.send(chunk)
    except socket.timeout:
        raise AssertionError(f"the data connection stalled ({direction}) instead of ending")
    except (OSError, ssl.SSLError, ValueError):
        return "error"
    raise AssertionError(f"the data connection still open after {timeout}s ({direction})")


def control_ends(c: DataClient, timeout: float = 10.0) -> list[str]:
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


def replies_until(c: DataClient, codes: set, maxn: int = 4) -> list[h.Reply]:
    out = []
    for _ in range(maxn):
        r = c.reply()
        out.append(r)
        if r.code in codes:
            return out
    raise AssertionError(f"no reply with a code in {codes}: {[str(x) for x in out]}")


def pool_of(p: h.Proxy) -> range:
    lo, hi = (int(x) for x in str(p.opts["passive_ports"]).split("-"))
    return range(lo, hi + 1)


def pool_ports_busy(p: h.Proxy) -> list[int]:
    """Ports of the proxy's pool that something still listens on (a bind with
    SO_REUSEADDR fails only for a listening socket, not for TIME_WAIT)."""
    busy = []
    for port in pool_of(p):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((h.LOOPBACK, port))
        except OSError:
            busy.append(port)
        finally:
            s.close()
    return busy


def every_pool_port_pasv(p: h.Proxy, certs) -> set[int]:
    """Opens one session per pool port, each with a PASV: every one must get
    227 (all ports are back in the pool); returns the ports handed out."""
    sessions, ports = [], set()
    try:
        for _ in pool_of(p):
            c = login(p, certs)
            sessions.append(c)
            ports.add(pasv_port(c))
    finally:
        for c in sessions:
            c.close_quietly()
    assert ports == set(pool_of(p)), ports
    return ports


def fds(p: h.Proxy) -> list[str]:
    out = []
    for fd in os.listdir(f"/proc/{p.pid}/fd"):
        with contextlib.suppress(OSError):
            out.append(f"{fd} -> {os.readlink(f'/proc/{p.pid}/fd/{fd}')}")
    return sorted(out)


def wait_fds_back(p: h.Proxy, base: int, timeout: float = 10.0) -> None:
    try:
        h.wait_until(lambda: p.fd_count() <= base, timeout, interval=0.1,
                     what=f"the proxy's descriptors back to {base}")
    except TimeoutError:
        raise AssertionError(f"proxy holds {p.fd_count()} descriptors, {base} before:\n"
                             + "\n".join(fds(p)))


def session_procs(v: Vsftpd) -> set[int]:
    """vsftpd's session processes (descendants of the listener)."""
    return h.descendants(v.proc.pid)


def warm_up(p: h.Proxy, certs, user: str = USER) -> int:
    """One complete session with a transfer (OpenSSL loads lazily), then the
    proxy's descriptor count at rest."""
    c = login(p, certs, user)
    try:
        assert retr(c, "/small.txt")[0] == hashlib.sha256(SMALL).hexdigest()
        c.quit()
    finally:
        c.close_quietly()
    time.sleep(0.5)
    return p.fd_count()


class Bystander(threading.Thread):
    """Another session downloading the big file at the same time: it reads
    `pause_at` bytes, says so (midway), waits for `resume`, then finishes and
    checks sha256."""

    def __init__(self, p, certs, blob: Blob, user: str = USER, pause_at: int = 8 * MiB):
        super().__init__(daemon=True)
        self.p, self.certs, self.blob, self.user, self.pause_at = p, certs, blob, user, pause_at
        self.midway = threading.Event()
        self.resume = threading.Event()
        self.error: Optional[BaseException] = None
        self.sha = None
        self.n = 0
        self.final = None

    def run(self):
        try:
            c = login(self.p, self.certs, self.user, timeout=30)
            try:
                hs = hashlib.sha256()
                conn, _ = c.ntransfercmd(f"RETR /{self.blob.path.name}")
                self.n = read_all(conn, self.pause_at, hs)
                self.midway.set()
                if not self.resume.wait(60):
                    raise TimeoutError("never resumed")
                self.n += read_all(conn, None, hs)
                finish_tls(conn)
                self.final = c.reply()
                self.sha = hs.hexdigest()
                assert c.cmd("NOOP").code == 200
                c.quit()
            finally:
                c.close_quietly()
        except BaseException as e:   # reported by check()
            self.error = e
            self.midway.set()

    def check(self):
        self.resume.set()
        self.join(T_BIG)
        assert not self.is_alive(), "the other session's download did not finish"
        assert self.error is None, f"the other session failed: {self.error!r}"
        assert self.final is not None and self.final.code == 226, self.final
        assert self.n == self.blob.size
        assert self.sha == self.blob.sha


# --------------------------------------------------------------------------
# Big transfers with ftplib, curl and lftp
# --------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["pasv", "epsv"])
def test_ftplib_download_64m(dp, certs, site, blobs, mode):
    big = blobs["big"]
    mark, pmark = site.log_mark(), dp.log_mark()
    c = login(dp, certs, epsv=(mode == "epsv"), timeout=30)
    try:
        t0 = time.monotonic()
        sha, n, resp = retr(c, f"/{BIG}")
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
    c = login(dp, certs, epsv=(mode == "epsv"), timeout=30)
    try:
        with open(up.path, "rb") as f:
            resp = stor(c, f"/upload/{name}", f)
        assert resp.startswith("226"), resp
        check_data_tls(c)
        r = c.cmd(f"SIZE /upload/{name}")
        assert r.code == 213 and int(r.text.split()[1]) == up.size, r
    finally:
        c.close_quietly()
    dest = site.root / "upload" / name
    assert dest.stat().st_size == up.size
    assert sha_of(dest) == up.sha
    dest.unlink()
    dp.wait_log(rf"ev=transfer .*command=STOR path=/upload/{name} direction=upload "
                rf"bytes={up.size} duration_ms=\d+ reply=226 result=ok", pmark)


def test_passive_replies_name_the_proxy(dp, certs, site):
    """227 names passive_address and a pool port; 229 is (|||port|) with a
    pool port; the backend's own passive ports never reach the client."""
    backend_ports = range(site.pasv_min, site.pasv_max + 1)
    with contextlib.closing(login(dp, certs)) as c:
        r = c.cmd("PASV")
        assert r.code == 227, r
        host, port = ftplib.parse227(r.text)
        assert host == h.LOOPBACK
        assert port in pool_of(dp) and port not in backend_ports
        r = c.cmd("EPSV")
        assert r.code == 229, r
        assert re.search(r"\(\|\|\|(\d+)\|\)", r.text), r
        port = ftplib.parse229(r.text, ("x", 0))[1]
        assert port in pool_of(dp) and port not in backend_ports
        # The data connection is made to that port and works.
        conn = data_connect(c, port)
        assert c.cmd("RETR /small.txt").code == 150
        t = wrap_data(c, conn)
        hs = hashlib.sha256()
        read_all(t, None, hs)
        finish_tls(t)
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
    assert out.stat().st_size == big.size and sha_of(out) == big.sha
    assert "EPSV" in h.curl_sent(r)
    out.unlink()
    name = f"curl-{'implicit' if implicit else 'explicit'}.bin"
    r = h.curl(port, f"/upload/{name}", extra=["-T", str(up.path)], **kw)
    assert r.returncode == 0, r.stderr[-3000:]
    dest = site.root / "upload" / name
    assert dest.stat().st_size == up.size and sha_of(dest) == up.sha
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
    assert out.stat().st_size == big.size and sha_of(out) == big.sha
    dest = site.root / "upload" / "lftp-up.bin"
    assert dest.stat().st_size == up.size and sha_of(dest) == up.sha
    dest.unlink()
    assert {"a.txt", "bb.txt", "ccc.txt"} <= {Path(x.strip()).name for x in r.stdout.split()}


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
        c = login(dp, certs, "anonymous", sni=SITE, context=ctx)
        expected = site_cert.der
    elif source == "early-host":
        c = login(dp, certs, "anonymous", early_host=SITE, context=ctx)
        expected = site_cert.der
    else:
        c = login(dp, certs, USER, context=ctx)
        expected = certs.central().der
    try:
        assert c.tls_version() == {"tls12": "TLSv1.2", "tls13": "TLSv1.3"}[tls]
        assert retr(c, f"/{MID}")[0] == blobs["mid"].sha
        lines = []
        c.retrlines("LIST /list-dir", lines.append)
        assert len(lines) == 3
        name = f"cert-{source}-{tls}.bin"
        with open(blobs["mid"].path, "rb") as f:
            stor(c, f"/upload/{name}", f)
        assert len(c.data_certs) == 3
        check_data_tls(c, expected)
    finally:
        c.close_quietly()
    dest = site.root / "upload" / name
    assert sha_of(dest) == blobs["mid"].sha
    dest.unlink()


@pytest.mark.parametrize("tls", list(TLS_VERSIONS))
@pytest.mark.parametrize("offer", ["no-session", "other-session"])
def test_data_without_control_session_refused(dp, certs, site, blobs, offer, tls):
    """A data connection that does not resume this control session (a full
    handshake, or the session of another control connection) is refused:
    522 on the control channel, and the session goes on and transfers."""
    v = TLS_VERSIONS[tls]
    ctx = h.client_context(certs.ca, verify=True, min_version=v, max_version=v)
    c = login(dp, certs, context=ctx)
    other = login(dp, certs, context=ctx) if offer == "other-session" else None
    try:
        if other is not None:
            # The other session's own data connection makes sure it holds a
            # resumable session (TLS 1.3: a ticket read from the control).
            assert retr(other, "/small.txt")[1] == len(SMALL)
            session = other.sock.session
            assert session is not None
        else:
            session = None
        mark = dp.log_mark()
        port = pasv_port(c)
        conn = data_connect(c, port)
        r = c.cmd(f"RETR /{MID}")
        assert r.code == 150, r
        got = b""
        reused = None
        try:
            t = wrap_data(c, conn, session=session)
            reused = t.session_reused
            got = connection_ends(t)
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
        sha, n, resp = retr(c, f"/{MID}")
        assert resp.startswith("226") and sha == blobs["mid"].sha
        assert c.data_session_reused[n0:] == [True]
        if other is not None:
            assert retr(other, f"/{MID}")[0] == blobs["mid"].sha
    finally:
        c.close_quietly()
        if other is not None:
            other.close_quietly()


def test_data_from_other_address_refused(dp, certs, blobs):
    """A data connection from 127.0.0.2 (bound before connecting) to a
    session whose control connection is from 127.0.0.1 is refused and
    logged; the client's legitimate connection afterwards still works."""
    with contextlib.closing(login(dp, certs)) as c:
        assert c.sock.getsockname()[0] == h.LOOPBACK
        mark = dp.log_mark()
        port = pasv_port(c)
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
                assert connection_ends(bad) == b""
        finally:
            bad.close()
        m = dp.wait_log(r"data_refused.*127\.0\.0\.2|127\.0\.0\.2.*data_refused", mark)
        assert m
        # The legitimate data connection to the same passive port.
        good = data_connect(c, port)
        r = c.cmd(f"RETR /{MID}")
        assert r.code == 150, r
        t = wrap_data(c, good)
        assert t.session_reused
        hs = hashlib.sha256()
        assert read_all(t, None, hs) == MID_SIZE
        finish_tls(t)
        assert c.reply().code == 226
        assert hs.hexdigest() == blobs["mid"].sha
        # The session goes on.
        assert c.cmd("NOOP").code == 200
        sha, n, resp = retr(c, f"/{MID}")
        assert resp.startswith("226") and sha == blobs["mid"].sha
        check_data_tls(c)


def test_prot_c_refused_under_require_protected_data(dp, certs, blobs):
    with contextlib.closing(login(dp, certs, prot_p=False)) as c:
        assert c.cmd("PBSZ 0").code == 200
        r = c.cmd("PROT C")
        assert r.code == 534, r
        # Still PROT P after a refused PROT C (or never set): P works.
        assert c.cmd("PROT P").code == 200
        c._prot_p = True
        assert c.cmd("PROT C").code == 534
        sha, n, resp = retr(c, f"/{MID}")
        assert sha == blobs["mid"].sha
        check_data_tls(c)


def test_prot_c_relays_clear_when_allowed(make_proxy, certs, site, site_cert, blobs):
    """require_protected_data = no: PROT C is accepted and data flows in clear."""
    p = make_proxy(proxy={"require_protected_data": "no"},
                   backends=xfer_backends(site, site_cert))
    with contextlib.closing(login(p, certs, prot_p=False)) as c:
        assert c.cmd("PBSZ 0").code == 200
        assert c.cmd("PROT C").code == 200
        c._prot_p = False
        port = pasv_port(c)
        conn = data_connect(c, port)
        assert c.cmd(f"RETR /{MID}").code == 150
        hs = hashlib.sha256()
        read_all(conn, None, hs)        # plaintext: no TLS on this connection
        conn.close()
        assert c.reply().code == 226
        assert hs.hexdigest() == blobs["mid"].sha


def test_transfer_before_prot_p_gets_521(dp, certs, site, blobs):
    with contextlib.closing(login(dp, certs, prot_p=False)) as c:
        mark = site.log_mark()
        port = pasv_port(c)
        conn = data_connect(c, port)
        r = c.cmd("RETR /small.txt")
        assert r.code == 521, r
        conn.close()
        r = c.cmd("LIST")
        assert r.code in (425, 521), r     # no PASV pending any more, or 521 again
        port = pasv_port(c)
        r = c.cmd("STOR /upload/never.bin")
        assert r.code == 521, r
        cmds = [x.split()[0] for x in site.commands_since(mark)]
        assert "RETR" not in cmds and "STOR" not in cmds and "LIST" not in cmds, cmds
        assert not (site.root / "upload" / "never.bin").exists()
        # After PBSZ/PROT P, the same session transfers.
        assert c.cmd("PBSZ 0").code == 200
        assert c.cmd("PROT P").code == 200
        c._prot_p = True
        assert retr(c, f"/{MID}")[0] == blobs["mid"].sha


# --------------------------------------------------------------------------
# Active mode
# --------------------------------------------------------------------------

def test_port_eprt_refused_when_active_disabled(dp, certs, site):
    mark = site.log_mark()
    with contextlib.closing(login(dp, certs)) as c:
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
        with contextlib.closing(login(p, certs)) as c:
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
    c = login(p, certs, eprt=(cmd == "eprt"), timeout=30)
    try:
        c.set_pasv(False)
        sha, n, resp = retr(c, f"/{BIG}")
        assert resp.startswith("226"), resp
        assert n == big.size and sha == big.sha
        name = f"active-{cmd}.bin"
        with open(up.path, "rb") as f:
            assert stor(c, f"/upload/{name}", f).startswith("226")
        lines = []
        c.retrlines("LIST /list-dir", lines.append)
        assert len(lines) == 3, lines
        check_data_tls(c)
        assert len(c.data_certs) == 3
    finally:
        c.close_quietly()
    dest = site.root / "upload" / name
    assert dest.stat().st_size == up.size and sha_of(dest) == up.sha
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
    assert out.stat().st_size == big.size and sha_of(out) == big.sha
    assert dest.stat().st_size == up.size and sha_of(dest) == up.sha
    dest.unlink()
    assert "data_refused" not in p.log_since(mark)


# --------------------------------------------------------------------------
# Transfer commands
# --------------------------------------------------------------------------

def test_list_and_nlst(dp, certs, site):
    with contextlib.closing(login(dp, certs)) as c:
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
    with contextlib.closing(login(dp, certs)) as c:
        feat = c.cmd("FEAT")
        assert feat.code == 211, feat
        assert not h.feat_has(feat, "MLST") and not h.feat_has(feat, "MLSD"), feat
        with pytest.raises(ftplib.error_perm) as e:
            list(c.mlsd("/list-dir"))
        assert str(e.value) == direct.text, (str(e.value), direct.text)
        assert c.cmd("NOOP").code == 200
        assert retr(c, f"/{MID}")[0] == blobs["mid"].sha
    assert any(x.startswith("MLSD") for x in site.commands_since(mark))


def test_rest_resumes_partial_download(dp, certs, blobs):
    """Download the first N bytes and cut the data connection; then REST N
    and RETR the rest: the two parts are the whole file."""
    big = blobs["big"]
    N = 10 * MiB + 12345
    with contextlib.closing(login(dp, certs, timeout=30)) as c:
        conn, _ = c.ntransfercmd(f"RETR /{BIG}")
        hs = hashlib.sha256()
        assert read_all(conn, N, hs) == N
        conn.close()                               # cut: no close_notify
        r = c.reply()
        assert r.code // 100 in (2, 4), r          # the backend's final reply
        print(f"reply after the cut: {r}")
        assert c.cmd("TYPE I").code == 200
        rest = []

        def cb(b):
            hs.update(b)
            rest.append(len(b))

        resp = c.retrbinary(f"RETR /{BIG}", cb, blocksize=BLOCK, rest=N)
        assert resp.startswith("226"), resp
        assert sum(rest) == big.size - N
        assert hs.hexdigest() == big.sha


def test_appe_appends(dp, certs, site, blobs):
    up = blobs["up"]
    data = up.read()
    cut = 5 * MiB + 7
    with contextlib.closing(login(dp, certs, timeout=30)) as c:
        assert stor(c, "/upload/appe.bin", data[:cut]).startswith("226")
        assert stor(c, "/upload/appe.bin", data[cut:], cmd="APPE").startswith("226")
        r = c.cmd("SIZE /upload/appe.bin")
        assert r.code == 213 and int(r.text.split()[1]) == up.size
        check_data_tls(c)
    dest = site.root / "upload" / "appe.bin"
    assert sha_of(dest) == up.sha
    dest.unlink()


def test_stou_stores_unique(dp, certs, site, blobs):
    mid = blobs["mid"]
    with contextlib.closing(login(dp, certs)) as c:
        assert c.cmd("CWD /upload").code == 250
        names = []
        for _ in range(2):
            port = pasv_port(c)
            conn = data_connect(c, port)
            r = c.cmd("STOU")
            assert r.code == 150, r
            m = re.search(r"FILE:\s*(\S+)", r.text)
            assert m, r
            names.append(m.group(1))
            t = wrap_data(c, conn)
            assert t.session_reused
            t.sendall(mid.read())
            finish_tls(t)
            r = c.reply()
            assert r.code == 226, r
    assert names[0] != names[1], names
    for n in names:
        dest = site.root / "upload" / n
        assert sha_of(dest) == mid.sha, n
        dest.unlink()


def test_abor_mid_download_then_new_download(dp, certs, site, blobs):
    """ABOR during a 64 MiB download: the backend's 426 for the transfer,
    then its 226/225 for ABOR; then a new download in the same session is
    whole."""
    big = blobs["big"]
    with contextlib.closing(login(dp, certs, timeout=30)) as c:
        mark = site.log_mark()
        conn, _ = c.ntransfercmd(f"RETR /{BIG}")
        assert read_all(conn, 2 * MiB) == 2 * MiB
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
        sha, n, resp = retr(c, f"/{BIG}")
        assert resp.startswith("226") and n == big.size and sha == big.sha


def test_zero_byte_download_and_upload(dp, certs, site, tmp_path):
    with contextlib.closing(login(dp, certs)) as c:
        sha, n, resp = retr(c, "/empty.bin")
        assert resp.startswith("226") and n == 0 and sha == EMPTY_SHA
        assert stor(c, "/upload/empty-up.bin", b"").startswith("226")
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
    with contextlib.closing(login(dp, certs)) as c:
        conn, _ = c.ntransfercmd(f"RETR /{MID}")
        hs = hashlib.sha256()
        n = read_all(conn, 64 * 1024, hs)
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
        finish_tls(conn)
        assert c.reply().code == 226
        assert n == mid.size and hs.hexdigest() == mid.sha


def test_20_parallel_downloads(dp, certs, blobs):
    big = blobs["big"]
    n = 20
    results: list = [None] * n
    start = threading.Barrier(n, timeout=30)

    def worker(i):
        try:
            c = login(dp, certs, timeout=30)
            try:
                start.wait()
                results[i] = retr(c, f"/{BIG}") + (list(c.data_session_reused),)
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
    with contextlib.closing(login(dp, certs, epsv=True)) as c:
        mark = site.log_mark()
        r = c.cmd("EPSV ALL")
        assert r.code == 200, r
        r = c.cmd("PASV")
        assert r.code // 100 == 5, r
        r = c.cmd("PORT 127,0,0,1,156,64")
        assert r.code // 100 == 5, r
        assert "EPSV ALL" not in site.commands_since(mark)
        # EPSV still works, and transfers.
        assert retr(c, f"/{MID}")[0] == blobs["mid"].sha
        assert c.cmd("PASV").code // 100 == 5


def test_ipv6_epsv_works_pasv_refused(make_proxy, certs, site, site_cert, blobs):
    if not h.has_ipv6_loopback():
        pytest.fail("no IPv6 loopback on this machine")
    port = h.free_port("::1")
    p = make_proxy(proxy={"listen": f"[::1]:{port}", "listen_implicit": None},
                   backends=xfer_backends(site, site_cert))
    with contextlib.closing(login(p, certs, host="::1", port=port)) as c:
        assert c.af == socket.AF_INET6
        r = c.cmd("PASV")
        assert r.code == 522, r
        r = c.cmd("EPSV 1")
        assert r.code == 522 and "(2)" in r.text, r
        sha, n, resp = retr(c, f"/{MID}")      # ftplib uses EPSV over IPv6
        assert resp.startswith("226") and sha == blobs["mid"].sha
        check_data_tls(c)


# --------------------------------------------------------------------------
# The passive port pool
# --------------------------------------------------------------------------

def test_port_pool_exhausted_then_returned(make_proxy, certs, site, site_cert, blobs):
    p = make_proxy(proxy={"passive_ports": pool_range(2)},
                   backends=xfer_backends(site, site_cert))
    a, b, c = (login(p, certs) for _ in range(3))
    try:
        pa, pb = pasv_port(a), epsv_port(b)
        assert {pa, pb} == set(pool_of(p))
        r = c.cmd("PASV")
        assert r.code == 425, r
        r = c.cmd("EPSV")
        assert r.code == 425, r
        assert c.cmd("NOOP").code == 200      # the session goes on
        # a and b transfer on the ports they hold.
        for cl, port in ((a, pa), (b, pb)):
            conn = data_connect(cl, port)
            assert cl.cmd(f"RETR /{MID}").code == 150
            t = wrap_data(cl, conn)
            hs = hashlib.sha256()
            read_all(t, None, hs)
            finish_tls(t)
            assert cl.reply().code == 226
            assert hs.hexdigest() == blobs["mid"].sha
        # Their ports are back: c gets one, and transfers on it.
        sha, n, resp = retr(c, f"/{MID}")
        assert resp.startswith("226") and sha == blobs["mid"].sha
        assert pasv_port(c) in pool_of(p)
        assert epsv_port(a) in pool_of(p)     # c's PASV replaced by a new one: still 2
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
    (port,) = pool_of(p)
    a = login(p, certs)
    b = login(p, certs)
    try:
        assert pasv_port(a) == port
        assert h.is_listening(port)
        assert b.cmd("PASV").code == 425
        t0 = time.monotonic()
        h.wait_until(lambda: not h.is_listening(port), 6, what=f"port {port} closed")
        assert time.monotonic() - t0 > 1.0
        r = b.cmd("PASV")
        assert r.code == 227, f"port not returned to the pool after data_timeout: {r}"
        assert ftplib.parse227(r.text)[1] == port
        assert retr(b, f"/{MID}")[0] == blobs["mid"].sha
        # a's session goes on too.
        assert a.cmd("NOOP").code == 200
        assert retr(a, f"/{MID}")[0] == blobs["mid"].sha
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
    with contextlib.closing(login(p, certs, timeout=12)) as a:
        pasv_port(a)
        t0 = time.monotonic()
        r = a.cmd(f"RETR /{MID}")
        if r.code == 150:                  # a preliminary reply, then the final one
            r = a.reply()
        dt = time.monotonic() - t0
        assert r.code // 100 == 4, r
        assert dt < 2 + 6, f"final reply after {dt:.1f}s: {r}"
        assert a.cmd("NOOP").code == 200
        assert retr(a, f"/{MID}")[0] == blobs["mid"].sha


def test_stalled_data_connection_not_reported_complete(make_proxy, certs, site, site_cert,
                                                       blobs):
    """The client opens its data connection but never starts TLS on it:
    after data_timeout (2 s) the proxy drops it, and the final reply must not
    be 226 (the backend's 226 only says vsftpd handed the file to the proxy;
    none of it reached the client). The session goes on."""
    p = make_proxy(proxy={"data_timeout": "2"}, backends=xfer_backends(site, site_cert))
    with contextlib.closing(login(p, certs, timeout=12)) as c:
        port = pasv_port(c)
        conn = data_connect(c, port)
        r = c.cmd("RETR /small.txt")
        assert r.code == 150, r
        t0 = time.monotonic()
        r = c.reply()
        dt = time.monotonic() - t0
        got = connection_ends(conn, 5)
        conn.close()
        assert got == b"" or not got.endswith(SMALL), got
        assert 1.0 < dt < 8, f"final reply after {dt:.1f}s: {r}"
        assert r.code // 100 == 4, f"the client got {r} for a file it never received"
        assert c.cmd("NOOP").code == 200
        assert retr(c, f"/{MID}")[0] == blobs["mid"].sha


# --------------------------------------------------------------------------
# Failures mid-transfer end only their own session
# --------------------------------------------------------------------------

@pytest.mark.parametrize("direction", ["download", "upload"])
def test_client_vanishes_mid_transfer(make_proxy, certs, site, site_cert, blobs, direction):
    p = make_proxy(proxy={"passive_ports": pool_range(4)},
                   backends=xfer_backends(site, site_cert))
    base = warm_up(p, certs)
    assert pool_ports_busy(p) == []
    procs_before = len(session_procs(site))
    other = Bystander(p, certs, blobs["big"])
    other.start()
    assert other.midway.wait(30) and other.error is None, other.error
    mark = p.log_mark()
    x = login(p, certs, timeout=30)
    conn, _ = x.ntransfercmd(f"RETR /{BIG}" if direction == "download"
                             else "STOR /upload/vanish.bin")
    if direction == "download":
        assert read_all(conn, 4 * MiB) == 4 * MiB
    else:
        conn.sendall(blobs["up"].read()[:4 * MiB])
    # Vanish: no close_notify, no QUIT.
    conn.close()
    x.drop()
    p.wait_log(r"ev=close ", mark, timeout=10)
    other.check()
    wait_fds_back(p, base)
    h.wait_until(lambda: pool_ports_busy(p) == [], 5, what="every pool port free")
    h.wait_until(lambda: len(session_procs(site)) <= procs_before, 10,
                 what="the vanished session's backend session ended")
    every_pool_port_pasv(p, certs)
    wait_fds_back(p, base)
    with contextlib.suppress(FileNotFoundError):
        (site.root / "upload" / "vanish.bin").unlink()


@pytest.mark.parametrize("direction", ["download", "upload"])
def test_backend_killed_mid_transfer(make_proxy, certs, workdir, site, site_cert, blobs,
                                     direction):
    """The session process of a dedicated vsftpd is killed mid-transfer: that
    session ends (its control connection is closed), another session on
    another backend finishes its 64 MiB download intact, and the proxy's
    descriptors and passive ports return to where they were."""
    victim = start_site(workdir, blobs, name=f"victim-{direction}")
    try:
        p = make_proxy(proxy={"passive_ports": pool_range(4)},
                       backends=xfer_backends(site, site_cert, victim=backend_section(
                           victim, ["ftp.victim.test"])))
        vuser = "ftp.victim.test|anonymous"
        base = warm_up(p, certs)
        warm_up(p, certs, vuser)
        base = max(base, p.fd_count())
        assert pool_ports_busy(p) == []
        other = Bystander(p, certs, blobs["big"])
        other.start()
        assert other.midway.wait(30) and other.error is None, other.error
        v = login(p, certs, vuser, timeout=30)
        conn, _ = v.ntransfercmd(f"RETR /{BIG}" if direction == "download"
                                 else "STOR /upload/killed.bin")
        if direction == "download":
            assert read_all(conn, 4 * MiB) == 4 * MiB
        else:
            conn.sendall(blobs["up"].read()[:4 * MiB])
        procs = session_procs(victim)
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
        wait_fds_back(p, base)
        h.wait_until(lambda: pool_ports_busy(p) == [], 5, what="every pool port free")
        every_pool_port_pasv(p, certs)
        wait_fds_back(p, base)
        # The victim backend itself still serves new sessions.
        with contextlib.closing(login(p, certs, vuser)) as c:
            assert retr(c, f"/{MID}")[0] == blobs["mid"].sha
    finally:
        victim.stop()
