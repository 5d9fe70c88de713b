"""Self-tests of the test world, without the proxy: the certificates are what
they claim to be, vsftpd runs here in both modes, and every client helper
works against vsftpd directly. If one of these fails, the proxy tests that
rely on it cannot be trusted, whatever they say."""

from __future__ import annotations

import io
import ssl

import pytest

import harness as h
from harness import Vsftpd


# --------------------------------------------------------------------------
# ports and certificates
# --------------------------------------------------------------------------

def test_free_port_range_is_contiguous_and_free():
    lo, hi = h.free_port_range(8)
    assert hi - lo == 7
    assert all(h._port_is_free(p) for p in range(lo, hi + 1))
    assert h.free_port() != h.free_port()


def _text(cert):
    return h.openssl("x509", "-in", str(cert.cert), "-noout", "-text")


def _verifies(certs, cert) -> bool:
    r = h.run(["openssl", "verify", "-CAfile", str(certs.ca.cert), str(cert.cert)])
    return r.returncode == 0


def _key_matches(cert) -> bool:
    a = h.openssl("x509", "-in", str(cert.cert), "-noout", "-pubkey")
    b = h.openssl("pkey", "-in", str(cert.key), "-pubout")
    return a == b


def test_standard_certificates(certs):
    central, alpha, beta = certs.central(), certs.alpha(), certs.beta()
    t = _text(central)
    assert "DNS:proxy.test" in t and "DNS:localhost" in t and "IP Address:127.0.0.1" in t
    t = _text(alpha)
    assert "DNS:ftp.alpha.test" in t and "DNS:*.alpha.test" in t and "rsaEncryption" in t
    t = _text(beta)
    assert "DNS:ftp.beta.test" in t and "id-ecPublicKey" in t and "prime256v1" in t
    for c in (central, alpha, beta):
        assert _verifies(certs, c), c.name
        assert _key_matches(c), c.name
    assert len({central.der, alpha.der, beta.der}) == 3


def test_broken_certificates(certs):
    exp = certs.expired()
    assert h.run(["openssl", "x509", "-in", str(exp.cert), "-noout", "-checkend", "0"]).returncode == 1
    fut = certs.not_yet_valid()
    assert "notBefore=Jan  1 00:00:00 2040 GMT" in h.openssl("x509", "-in", str(fut.cert), "-noout",
                                                             "-startdate")
    wrong = certs.wrong_name("ftp.alpha.test")
    assert "ftp.alpha.test" not in h.cert_subject_names(wrong.cert)
    assert _verifies(certs, wrong)
    bad = certs.mismatched_key("alpha")
    assert not _key_matches(bad)
    chained = certs.make("chained", "chain.test", dns=["chain.test"], chain=True)
    assert chained.cert.read_text().count("BEGIN CERTIFICATE") == 2


# --------------------------------------------------------------------------
# vsftpd, plaintext (the proxy's backends)
# --------------------------------------------------------------------------

def _plain_login(v: Vsftpd):
    import ftplib
    f = ftplib.FTP(timeout=h.T_IO)
    f.connect(v.host, v.port)
    f.login("anonymous", "x@example.org")
    return f


def test_vsftpd_plain_content_and_transfers(alpha, beta):
    mark = alpha.log_mark()
    f = _plain_login(alpha)
    try:
        assert f.size("/alpha-only.txt") == 11
        assert f.sendcmd("CWD /alpha-dir").startswith("250")
        with pytest.raises(Exception):
            f.size("/beta-only.txt")
        buf = io.BytesIO()
        f.retrbinary("RETR /hello.txt", buf.write)
        assert buf.getvalue() == b"hello from alpha\n"
        f.storbinary("STOR /upload/plain-up.bin", io.BytesIO(b"x" * 100000))
        assert f.size("/upload/plain-up.bin") == 100000
        feat = f.sendcmd("FEAT")
        assert "AUTH" not in feat and "EPSV" in feat
    finally:
        f.close()
    assert "USER anonymous" in alpha.commands_since(mark)
    assert alpha.connects_since(mark) == 1
    g = _plain_login(beta)
    try:
        assert g.size("/beta-only.txt") == 26
    finally:
        g.close()


def test_vsftpd_plain_curl_and_lftp(alpha, workdir):
    r = h.curl(alpha.port, "/alpha-only.txt", user="anonymous", head=True, tls=False)
    assert r.returncode == 0, r.stderr
    assert h.content_length(r) == 11
    r = h.curl(alpha.port, "/beta-only.txt", user="anonymous", head=True, tls=False)
    assert r.returncode != 0
    r = h.lftp(alpha.port, ["quote SIZE /alpha-only.txt"], user="anonymous", tls=False,
               workdir=workdir)
    assert r.returncode == 0, r.stderr
    assert "213 11" in r.stdout
    assert "USER anonymous" in h.lftp_sent(r)


# --------------------------------------------------------------------------
# vsftpd serving its own FTPS (for the benchmark comparison and TLS checks)
# --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tls_vsftpd(workdir, certs):
    v = Vsftpd(workdir, "tlsexplicit", tls=True, cert=certs.backend_tls(),
               files={"t.txt": b"tls file\n"}, dirs=[])
    v.start()
    yield v
    v.stop()


@pytest.fixture(scope="module")
def tls_vsftpd_implicit(workdir, certs):
    v = Vsftpd(workdir, "tlsimplicit", tls=True, implicit=True, cert=certs.backend_tls(),
               files={"t.txt": b"tls file\n"}, dirs=[])
    v.start()
    yield v
    v.stop()


def _exercise(c: h.FtpsClient, certs):
    assert c.peer_cert_der() == certs.backend_tls().der
    c.prot_p()
    assert c.size("/t.txt") == 9
    buf = io.BytesIO()
    c.retrbinary("RETR /t.txt", buf.write)
    assert buf.getvalue() == b"tls file\n"
    c.storbinary("STOR /upload/tls-up.bin", io.BytesIO(b"y" * 70000))
    assert c.size("/upload/tls-up.bin") == 70000
    assert c.data_certs and all(d == certs.backend_tls().der for d in c.data_certs)


def test_vsftpd_tls_explicit_ftplib(tls_vsftpd, certs):
    with h.ftps(tls_vsftpd.port, ca=certs.ca, sni="localhost", check_hostname=True) as c:
        assert c.greeting.code == 220
        assert c.tls_login("anonymous").code == 230
        _exercise(c, certs)


def test_vsftpd_tls_refuses_plain_login(tls_vsftpd):
    # force_anon_logins_ssl: vsftpd answers 530 and hangs up.
    with h.PlainControl(tls_vsftpd.port) as c:
        assert c.cmd("USER anonymous").code == 530


def test_vsftpd_tls_implicit_ftplib(tls_vsftpd_implicit, certs):
    with h.ftps(tls_vsftpd_implicit.port, ca=certs.ca, implicit=True) as c:
        assert c.greeting.code == 220
        assert c.tls_version() in ("TLSv1.2", "TLSv1.3")
        assert c.tls_login("anonymous").code == 230
        _exercise(c, certs)


def test_vsftpd_tls_curl(tls_vsftpd, tls_vsftpd_implicit, certs):
    r = h.curl(tls_vsftpd.port, "/t.txt", user="anonymous", ca=certs.ca)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "tls file\n"
    assert h.curl_sent(r)[0] == "AUTH SSL"
    r = h.curl(tls_vsftpd_implicit.port, "/t.txt", user="anonymous", ca=certs.ca, implicit=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "tls file\n"
    r = h.curl(tls_vsftpd.port, "/t.txt", user="anonymous", ca=certs.ca, sni="localhost",
               head=True)
    assert r.returncode == 0, r.stderr
    assert h.content_length(r) == 9


def test_vsftpd_tls_lftp(tls_vsftpd, certs, workdir):
    r = h.lftp(tls_vsftpd.port, ["quote SIZE /t.txt", "cat /t.txt"], user="anonymous",
               ca=certs.ca, workdir=workdir)
    assert r.returncode == 0, r.stderr
    assert "213 9" in r.stdout and "tls file" in r.stdout
    assert "AUTH TLS" in h.lftp_sent(r)


@pytest.mark.parametrize("version", ["TLSv1_2", "TLSv1_3"])
def test_vsftpd_session_reuse_helper(workdir, certs, version):
    """With require_ssl_reuse=YES vsftpd refuses data connections that do not
    resume the control session: FtpsClient(reuse_session=True) must pass
    (TLS 1.2 session ids and TLS 1.3 tickets alike), a client without it
    must not."""
    v = Vsftpd(workdir, f"tlsreuse{version[-1]}", tls=True, cert=certs.backend_tls(),
               require_ssl_reuse=True, files={"t.txt": b"tls file\n"}, dirs=[])

    def ctx():
        c = h.client_context(certs.ca)
        c.minimum_version = c.maximum_version = getattr(ssl.TLSVersion, version)
        return c
    with v:
        with h.ftps(v.port, context=ctx(), reuse_session=True) as c:
            assert c.tls_login("anonymous", prot_p=True).code == 230
            assert c.tls_version() == version.replace("_", ".")
            for _ in range(2):
                buf = io.BytesIO()
                c.retrbinary("RETR /t.txt", buf.write)
                assert buf.getvalue() == b"tls file\n"
            assert c.data_session_reused == [True, True]
        with h.ftps(v.port, context=ctx(), reuse_session=False) as c:
            assert c.tls_login("anonymous", prot_p=True).code == 230
            with pytest.raises(Exception):
                c.retrbinary("RETR /t.txt", lambda b: None)


def test_vsftpd_tls_optional_feat(workdir, certs):
    """A vsftpd with TLS on but not forced: advertises AUTH/PBSZ/PROT in FEAT
    and still lets anonymous users in without TLS (a backend whose FEAT the
    proxy must filter)."""
    v = Vsftpd(workdir, "gamma", tls=True, force_tls=False, cert=certs.backend_tls())
    with v:
        with h.PlainControl(v.port) as c:
            feat = c.cmd("FEAT")
            assert h.feat_has(feat, "AUTH TLS") and h.feat_has(feat, "PBSZ")
            assert h.feat_has(feat, "PROT")
            assert c.cmd("USER anonymous").code == 331
            assert c.cmd("PASS x").code == 230


def test_client_can_offer_tls11(workdir, certs):
    assert h.client_can_offer_tls11(workdir, certs)


def test_kill_only_own_processes(workdir):
    """vsftpd's session processes (which setsid()) die with their listener."""
    v = Vsftpd(workdir, "killcheck", files={"k.txt": b"k"}, dirs=[])
    v.start()
    c = h.PlainControl(v.port)
    try:
        kids = h.wait_until(lambda: h.descendants(v.proc.pid), 5, what="session process")
        v.stop()
        h.wait_until(lambda: not any(_alive(k) for k in kids), 5, what="sessions gone")
    finally:
        c.close()
        v.stop()


def _alive(pid: int) -> bool:
    try:
        st = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
        return st != "Z"
    except OSError:
        return False
