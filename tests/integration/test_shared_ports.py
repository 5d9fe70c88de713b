"""Issue 14: data ports shared by TLS session (shared_passive_ports = yes).

With passive_ports set to a single port, every waiting session gets that
port, and each data connection goes to the session its TLS handshake
resumes: 100 sessions (50 from 127.0.0.1, 50 from 127.0.0.2; TLS 1.2 and
1.3, explicit and implicit, PASV and EPSV) download and upload at once
through it; curl, lftp and gftp work through it; theft from the same and
from another address, another session's ticket, a ticket of a session that
is not waiting and a fresh handshake are refused (reason in the log and in
ftpsgate_data_connections_refused_total) while the victim's transfers and a
session's own later tickets keep working; sessions the TLS cannot tell apart
(PROT C, require_session_reuse = no) get ports of their own.

Without the feature the single port serves one waiting session at a time,
and the concurrent sessions get 425.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import socket
import ssl
import threading
import time

import pytest

import faultkit as fk
import harness as h
from harness import KiB
from test_ops import metric, samples, scrape

TLS12, TLS13 = ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3
SIZES = {"down.bin": 384 * KiB, "small.bin": 64 * KiB}
N_PER_ADDRESS = 50
REFUSED = "ftpsgate_data_connections_refused_total"
MATCHED = "ftpsgate_data_connections_matched_total"


@pytest.fixture(scope="module")
def site(workdir):
    with h.Site(workdir, "shared", [fk.SITE], sizes=SIZES, pasv_ports=300) as s:
        yield s


def shared_proxy(make_proxy, site, pool: int = 1, **opts) -> h.Proxy:
    """A proxy in front of site with passive_ports of `pool` ports, sharing
    them, with room for 100 concurrent sessions and a metrics listener."""
    kw = dict(shared_passive_ports="yes", max_passive_per_ip=200, max_transfers_per_ip=200,
              max_sessions_per_ip=200, metrics_listen=f"{h.LOOPBACK}:{h.free_port()}",
              data_timeout=30)
    kw.update(opts)
    return fk.start_proxy(make_proxy, site, pool=pool, **kw)


def metrics(p: h.Proxy) -> dict:
    return samples(scrape(p.opts["metrics_listen"])[0])


def refused(s: dict, reason: str) -> float:
    return metric(s, REFUSED, reason=reason)


def upload_check(site, name: str, data: bytes) -> None:
    path = site.root / "upload" / name
    h.wait_until(lambda: path.exists() and path.stat().st_size == len(data), 10,
                 what=f"upload {name} complete")
    assert h.sha_file(path) == hashlib.sha256(data).hexdigest(), f"upload {name} corrupted"


# --------------------------------------------------------------------------
# 100 sessions, one port
# --------------------------------------------------------------------------

def test_hundred_sessions_through_one_port(make_proxy, certs, site):
    p = shared_proxy(make_proxy, site)
    port = p.passive_ports()[0]
    down = site.files["down.bin"]
    n = 2 * N_PER_ADDRESS
    barrier = threading.Barrier(n, timeout=60)
    errors: list[str] = []
    lock = threading.Lock()

    def session(i: int) -> None:
        source = "127.0.0.1" if i % 2 == 0 else "127.0.0.2"
        c = None
        try:
            c = h.login(p, certs, fk.USER, source=source, tls_version=TLS12 if i % 3 else TLS13,
                        implicit=i % 4 < 2, epsv=i % 5 < 2, timeout=60)
            barrier.wait()     # every session logged in: the transfers overlap
            got, size, resp = h.retr(c, "/down.bin")
            assert resp.startswith("226") and got == down.sha and size == down.size, resp
            data = os.urandom(128 * KiB + i)
            assert h.stor(c, f"/upload/shared-{i}.bin", data).startswith("226")
            upload_check(site, f"shared-{i}.bin", data)
            got, size, resp = h.retr(c, "/small.bin")   # a later ticket of the session
            assert got == site.files["small.bin"].sha, resp
            c.quit()
        except Exception as e:  # reported below, with the session's parameters
            with lock:
                errors.append(f"session {i} from {source}: {type(e).__name__}: {e}")
            with contextlib.suppress(threading.BrokenBarrierError):
                barrier.abort()
        finally:
            if c is not None:
                c.close_quietly()

    threads = [threading.Thread(target=session, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    real = [e for e in errors if "BrokenBarrierError" not in e] or errors
    assert not real, f"{len(errors)} sessions failed, e.g.: " + "; ".join(real[:5])
    assert list(p.passive_ports()) == [port]
    s = metrics(p)
    assert metric(s, MATCHED) == 3 * n
    for reason in ("address", "fresh_handshake", "not_waiting", "port", "tls_handshake"):
        assert refused(s, reason) == 0, (reason, refused(s, reason))


# --------------------------------------------------------------------------
# Real clients
# --------------------------------------------------------------------------

def test_curl_lftp_gftp_through_one_port(make_proxy, certs, site, workdir, tmp_path):
    p = shared_proxy(make_proxy, site)
    down = site.files["down.bin"]
    # curl: explicit TLS 1.2 with EPSV, implicit TLS 1.3 with PASV; download, then upload.
    for implicit, extra in ((False, ["--tls-max", "1.2"]),
                            (True, ["--tlsv1.3", "--disable-epsv"])):
        port = p.implicit_port if implicit else p.port
        out = tmp_path / f"curl-{implicit}.bin"
        r = h.curl(port, "/down.bin", user=fk.USER, implicit=implicit, ca=certs.ca,
                   extra=extra + ["-o", str(out)])
        assert r.returncode == 0, r.stderr[-2000:]
        assert h.sha_file(out) == down.sha
        up = tmp_path / f"curl-up-{implicit}.bin"
        up.write_bytes(os.urandom(200 * KiB))
        r = h.curl(port, f"/upload/curl-{implicit}.bin", user=fk.USER, implicit=implicit,
                   ca=certs.ca, extra=extra + ["-T", str(up)])
        assert r.returncode == 0, r.stderr[-2000:]
        upload_check(site, f"curl-{implicit}.bin", up.read_bytes())
    # lftp: several data connections in one session (a listing, two gets, a put).
    src = tmp_path / "lftp-up.bin"
    src.write_bytes(os.urandom(150 * KiB))
    r = h.lftp(p.port, ["ls /", f"get /down.bin -o {tmp_path}/lftp-1.bin",
                        f"get /small.bin -o {tmp_path}/lftp-2.bin",
                        f"put {src} -o /upload/lftp.bin"],
               user=fk.USER, ca=certs.ca, check_hostname=False, workdir=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert h.sha_file(tmp_path / "lftp-1.bin") == down.sha
    assert h.sha_file(tmp_path / "lftp-2.bin") == site.files["small.bin"].sha
    upload_check(site, "lftp.bin", src.read_bytes())
    # gftp-text: explicit FTPS, a listing, a get and a put.
    gdir = tmp_path / "gftp"
    gdir.mkdir()
    (gdir / "gftp-up.bin").write_bytes(os.urandom(100 * KiB))
    r = h.gftp(p.port, ["ls", "get down.bin", "cd /upload", "put gftp-up.bin"],
               user=fk.USER, workdir=gdir, ca=certs.ca, timeout=60)
    assert (gdir / "down.bin").exists(), r.stdout[-2000:] + r.stderr[-2000:]
    assert h.sha_file(gdir / "down.bin") == down.sha
    upload_check(site, "gftp-up.bin", (gdir / "gftp-up.bin").read_bytes())
    s = metrics(p)
    assert metric(s, MATCHED) >= 11
    assert refused(s, "fresh_handshake") == 0 and refused(s, "not_waiting") == 0


# --------------------------------------------------------------------------
# What is refused, and what keeps working
# --------------------------------------------------------------------------

def context(certs, version, no_ticket: bool = False) -> ssl.SSLContext:
    ctx = h.client_context(certs.ca, min_version=version, max_version=version)
    if no_ticket:              # TLS 1.2 resumption by session id, not by ticket
        ctx.options |= ssl.OP_NO_TICKET
    return ctx


def try_data(c: h.FtpsClient, port: int, source: str, session) -> bool:
    """A data connection to port from source offering session (None: a fresh
    handshake); True when the proxy completed the handshake and kept it."""
    try:
        conn = h.data_connect(c, port, source=(source, 0))
        t = c.context.wrap_socket(conn, server_hostname=c.host, session=session)
    except (ssl.SSLError, OSError):   # reset before or during the handshake
        return False
    closed, _ = h.closed_within(t, 1.0)
    with contextlib.suppress(OSError):
        t.close()
    return not closed


def download_on(c: h.FtpsClient, port: int, source: str, name: str, sha: str) -> None:
    """RETR name through a data connection to port that resumes c's session."""
    conn = h.data_connect(c, port, source=(source, 0))
    c.sendcmd("TYPE I")
    r = c.cmd(f"RETR /{name}")
    assert r.code == 150, r
    t = h.wrap_data(c, conn)
    assert t.session_reused
    hs = hashlib.sha256()
    h.read_all(t, hs=hs)
    h.finish_tls(t)
    assert hs.hexdigest() == sha
    assert c.reply().code == 226


@pytest.mark.parametrize("version,no_ticket", [(TLS12, False), (TLS12, True), (TLS13, False)],
                         ids=["tls12-ticket", "tls12-session-id", "tls13"])
def test_theft_and_foreign_sessions_refused(make_proxy, certs, site, version, no_ticket):
    p = shared_proxy(make_proxy, site)
    ctx = context(certs, version, no_ticket)
    small = site.files["small.bin"]
    a = h.login(p, certs, fk.USER, source="127.0.0.1", context=ctx)   # the victim
    b = h.login(p, certs, fk.USER, source="127.0.0.1", context=ctx)   # not waiting
    c = h.login(p, certs, fk.USER, source="127.0.0.2", context=ctx)   # waiting elsewhere
    try:
        download_on(b, h.pasv_port(b), "127.0.0.1", "small.bin", small.sha)   # b has a session
        port = h.pasv_port(a)
        assert h.epsv_port(c) == port
        before = metrics(p)
        mark = p.log_mark()
        cases = [  # (who connects, from, offering which session, reason)
            ("thief, same address, fresh handshake", "127.0.0.1", None, "fresh_handshake"),
            ("thief, other address, fresh handshake", "127.0.0.2", None, "fresh_handshake"),
            ("a's own session from another address", "127.0.0.2", a.sock.session, "address"),
            ("c's session from a's address", "127.0.0.1", c.sock.session, "address"),
            ("b's session: b is not waiting", "127.0.0.1", b.sock.session, "not_waiting"),
            ("a's session from an address nobody waits for (no TLS at all)", "127.0.0.3",
             a.sock.session, "address"),
        ]
        for what, source, session, _ in cases:
            assert not try_data(a, port, source, session), f"{what}: accepted"
        after = metrics(p)
        for reason in ("fresh_handshake", "address", "not_waiting"):
            want = sum(1 for *_, r in cases if r == reason)
            assert refused(after, reason) - refused(before, reason) == want, reason
        log = p.log_since(mark)
        for reason in ("fresh_handshake", "address", "not_waiting"):
            assert f"reason={reason}" in log, reason
        # The victims were not disturbed: a and c still get their data.
        download_on(a, port, "127.0.0.1", "small.bin", small.sha)
        download_on(c, port, "127.0.0.2", "small.bin", small.sha)
        # a's session, now that a waits no more, is refused too ...
        port2 = h.pasv_port(c)
        assert h.pasv_port(b) == port2            # b waits, from a's address
        before = metrics(p)
        assert not try_data(a, port2, "127.0.0.1", a.sock.session)
        assert refused(metrics(p), "not_waiting") - refused(before, "not_waiting") == 1
        download_on(c, port2, "127.0.0.2", "small.bin", small.sha)
        download_on(b, port2, "127.0.0.1", "small.bin", small.sha)
        # ... and a's later sessions (TLS 1.3: later tickets) keep working.
        for name in ("small.bin", "down.bin", "small.bin"):
            download_on(a, h.epsv_port(a), "127.0.0.1", name, site.files[name].sha)
        assert metric(metrics(p), MATCHED) >= 7
    finally:
        for x in (a, b, c):
            x.close_quietly()


# --------------------------------------------------------------------------
# Sessions that cannot be told apart
# --------------------------------------------------------------------------

def test_unshareable_sessions_get_ports_of_their_own(make_proxy, certs, site):
    p = shared_proxy(make_proxy, site, pool=4, require_protected_data="no")
    sessions = [h.login(p, certs, fk.USER) for _ in range(2)]       # PROT P, resuming
    plain = [h.login(p, certs, fk.USER, prot_p=False) for _ in range(2)]
    try:
        for c in plain:
            assert c.cmd("PBSZ 0").code == 200 and c.cmd("PROT C").code == 200
        shared = {h.pasv_port(c) for c in sessions}
        own = [h.pasv_port(c) for c in plain]
        assert len(shared) == 1, shared
        assert len(set(own)) == 2 and not shared & set(own), (shared, own)
        for c in plain:
            c._prot_p = False
            got, _, _ = h.retr(c, "/small.bin")
            assert got == site.files["small.bin"].sha
    finally:
        for c in sessions + plain:
            c.close_quietly()

    q = shared_proxy(make_proxy, site, pool=3, require_session_reuse="no")
    cs = [h.login(q, certs, fk.USER, reuse=False) for _ in range(3)]
    try:
        ports = [h.pasv_port(c) for c in cs]
        assert len(set(ports)) == 3, ports
        got, _, _ = h.retr(cs[0], "/small.bin")     # a fresh handshake: fine here
        assert got == site.files["small.bin"].sha
    finally:
        for c in cs:
            c.close_quietly()


def test_backend_done_before_the_handshake(make_proxy, certs, site):
    """The backend may send a whole small file and its 226 before the
    client's data handshake ends (curl and ftplib start TLS only after the
    150): on a shared port the data connection is the session's only once
    its handshake is done, so the 226 must wait for it, and the bytes in the
    backend socket with it."""
    p = shared_proxy(make_proxy, site)
    small = site.files["small.bin"]
    c = h.login(p, certs, fk.USER)
    try:
        for _ in range(2):
            conn = h.data_connect(c, h.pasv_port(c), source=("127.0.0.1", 0))
            c.sendcmd("TYPE I")
            done = site.log_text().count('"226 ')
            assert c.cmd("RETR /small.bin").code == 150
            # vsftpd logs its replies: it has sent the file and its 226.
            h.wait_until(lambda: site.log_text().count('"226 ') > done, 10,
                         what="the backend's 226")
            time.sleep(0.2)   # and the proxy has read that 226
            t = h.wrap_data(c, conn)
            hs = hashlib.sha256()
            assert h.read_all(t, hs=hs) == small.size
            h.finish_tls(t)
            assert hs.hexdigest() == small.sha
            assert c.reply().code == 226
    finally:
        c.close_quietly()


@pytest.mark.parametrize("version", [TLS12, TLS13], ids=["tls12", "tls13"])
def test_sessions_of_before_a_reload_share_the_port(make_proxy, certs, site, version):
    """A reload makes new TLS contexts; the shared port's handshakes run in
    the newest one. A session that began before the reload still resumes
    there (ticket keys live with the worker), waiting on the same port as a
    session that began after it."""
    p = shared_proxy(make_proxy, site)
    small = site.files["small.bin"]
    old = h.login(p, certs, fk.USER, tls_version=version)
    try:
        mark = p.log_mark()
        p.signal(signal.SIGHUP)
        p.wait_log(r"ev=reloaded trigger=SIGHUP", mark, timeout=10)
        new = h.login(p, certs, fk.USER, tls_version=version, source="127.0.0.2")
        try:
            port = h.pasv_port(old)
            assert h.pasv_port(new) == port        # the newest waiter's context
            download_on(old, port, "127.0.0.1", "small.bin", small.sha)
            download_on(new, port, "127.0.0.2", "small.bin", small.sha)
            download_on(old, h.epsv_port(old), "127.0.0.1", "small.bin", small.sha)
        finally:
            new.close_quietly()
    finally:
        old.close_quietly()


def test_two_workers_share_one_port_each(make_proxy, certs, site):
    """workers = 2 with passive_ports of 2 ports: each worker shares its own
    port among its sessions (ports >= workers), and every session waiting at
    once gets its data through its worker's port."""
    p = shared_proxy(make_proxy, site, pool=2, workers=2)
    small = site.files["small.bin"]
    cs = [h.login(p, certs, fk.USER, source=f"127.0.0.{1 + i % 2}") for i in range(12)]
    try:
        ports = [h.pasv_port(c) for c in cs]      # all twelve wait at once
        assert set(ports) <= set(p.passive_ports()), ports
        for c, port in zip(cs, ports):
            download_on(c, port, c.sock.getsockname()[0], "small.bin", small.sha)
        print(f"ports of the 12 sessions: {sorted(ports)}")
    finally:
        for c in cs:
            c.close_quietly()
    assert metric(metrics(p), MATCHED) == 12
