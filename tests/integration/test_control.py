"""Issue 2: the control channel. TLS termination (explicit and implicit),
virtual-host routing (USER host|user, HOST, SNI, default_backend), the
certificate choice, the pre-login dialogue, relaying to real vsftpd
backends, and bad input / timeouts / slow peers.

Written against DESIGN.md and issue 2. Reply CODES are checked, not texts,
except where the spec demands words (the 530 for an unknown host names it;
the require_tls refusal mentions AUTH TLS). Where DESIGN.md is silent, a
test accepts any code of the right class and says so.

Which backend answered is proved by content only that backend has:
SIZE /alpha-only.txt is 11 bytes on alpha and 550 on beta; SIZE
/beta-only.txt is 26 bytes on beta and 550 on alpha.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time

import pytest

import harness as h
from conftest import ALPHA_HOSTS, BETA_HOSTS, default_backends
from harness import PW, FtpsClient, PlainControl, Vsftpd, backend_section

ALPHA_SIZE = 11
BETA_SIZE = 26
# Features the proxy adds after login, and its own list before login.
PROXY_FEAT_AFTER = ["AUTH TLS", "PBSZ", "PROT", "HOST", "EPSV"]
PROXY_FEAT_BEFORE = ["AUTH TLS", "PBSZ", "PROT", "HOST", "EPSV", "PASV", "UTF8"]


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------

def site_of(c) -> str:
    """'alpha' or 'beta': which backend this logged-in session talks to."""
    a = c.cmd("SIZE /alpha-only.txt")
    b = c.cmd("SIZE /beta-only.txt")
    if a.code == 213 and a.text.split()[1] == str(ALPHA_SIZE) and b.code == 550:
        return "alpha"
    if b.code == 213 and b.text.split()[1] == str(BETA_SIZE) and a.code == 550:
        return "beta"
    return f"neither: SIZE alpha -> {a!s}; SIZE beta -> {b!s}"


class NoBackendContact:
    """with NoBackendContact(alpha, beta): ... asserts that no backend saw a
    new control connection during the block."""

    def __init__(self, *backends: Vsftpd):
        self.backends = backends

    def __enter__(self):
        self.marks = [b.log_mark() for b in self.backends]
        return self

    def __exit__(self, exc_type, *rest):
        if exc_type is not None:
            return False
        time.sleep(0.3)   # a connection the proxy started would be logged by now
        for b, m in zip(self.backends, self.marks):
            n = b.connects_since(m)
            assert n == 0, f"backend {b.name} was contacted {n} time(s)"
        return False


def is_class(code: int, first_digit: int) -> bool:
    return code // 100 == first_digit


# --------------------------------------------------------------------------
# Routing: each path lands on the right backend
# --------------------------------------------------------------------------

@pytest.mark.parametrize("site,hostname", [("alpha", "ftp.alpha.test"),
                                           ("beta", "ftp.beta.test")])
def test_route_user_prefix_ftplib(proxy, certs, alpha, beta, site, hostname,
                                  proxy_log_on_failure):
    backend = {"alpha": alpha, "beta": beta}[site]
    mark = backend.log_mark()
    secret = f"pw-{site}-Zq93xK"
    with h.connect(proxy, certs) as c:
        assert c.greeting.code == 220
        assert c.tls_login(f"{hostname}|anonymous", secret).code == 230
        assert site_of(c) == site
        assert c.cmd("PWD").code == 257
    # The backend saw USER without the host part.
    cmds = backend.commands_since(mark)
    assert "USER anonymous" in cmds, cmds
    assert not any("|" in x for x in cmds), cmds
    assert secret not in proxy.log_text(), "the password reached the proxy log"


def test_route_user_prefix_wildcard_and_case(proxy, certs, alpha, beta):
    with h.connect(proxy, certs) as c:
        assert c.tls_login("WWW.Alpha.TEST|anonymous").code == 230
        assert site_of(c) == "alpha"
    with h.connect(proxy, certs) as c:
        assert c.tls_login("FTP.BETA.test|anonymous").code == 230
        assert site_of(c) == "beta"
    # '*.alpha.test' matches exactly one label: not two, not zero.
    for name in ("a.b.alpha.test", "alpha.test"):
        with NoBackendContact(alpha, beta), h.connect(proxy, certs) as c:
            assert c.start_tls().code == 234
            r = c.user_pass(f"{name}|anonymous")
            assert r.code == 530, f"{name}: {r}"


def test_route_user_prefix_curl(proxy, certs):
    r = h.curl(proxy.port, "/alpha-only.txt", user="ftp.alpha.test|anonymous", ca=certs.ca,
               head=True)
    assert r.returncode == 0, r.stderr
    assert h.content_length(r) == ALPHA_SIZE
    # curl sends AUTH SSL first; the proxy accepts it (no fallback to AUTH TLS).
    sent = h.curl_sent(r)
    assert sent[0] == "AUTH SSL" and "AUTH TLS" not in sent, sent
    r = h.curl(proxy.port, "/beta-only.txt", user="ftp.beta.test|anonymous", ca=certs.ca,
               head=True)
    assert r.returncode == 0, r.stderr
    assert h.content_length(r) == BETA_SIZE
    # The file of the other site is not there: it really is beta.
    r = h.curl(proxy.port, "/alpha-only.txt", user="ftp.beta.test|anonymous", ca=certs.ca,
               head=True)
    assert r.returncode != 0


def test_route_user_prefix_lftp(proxy, certs, workdir):
    r = h.lftp(proxy.port, ["quote SIZE /alpha-only.txt", "cd /alpha-dir"],
               user="ftp.alpha.test|anonymous", ca=certs.ca, workdir=workdir,
               settings=["set dns:order inet"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"213 {ALPHA_SIZE}" in r.stdout
    assert "AUTH TLS" in h.lftp_sent(r)
    r = h.lftp(proxy.port, ["quote SIZE /beta-only.txt"], user="ftp.beta.test|anonymous",
               ca=certs.ca, workdir=workdir)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"213 {BETA_SIZE}" in r.stdout


def test_route_host_before_auth(proxy, certs):
    with h.connect(proxy, certs) as c:
        assert c.host_cmd("ftp.beta.test").code == 220
        assert c.start_tls().code == 234
        assert c.user_pass("anonymous").code == 230
        assert site_of(c) == "beta"


def test_route_host_after_auth(proxy, certs):
    with h.connect(proxy, certs) as c:
        assert c.start_tls().code == 234
        assert c.host_cmd("ftp.alpha.test").code == 220
        assert c.user_pass("anonymous").code == 230
        assert site_of(c) == "alpha"


def test_route_host_last_one_wins(proxy, certs):
    with h.connect(proxy, certs) as c:
        assert c.host_cmd("ftp.alpha.test").code == 220
        assert c.start_tls().code == 234
        assert c.host_cmd("ftp.beta.test").code == 220
        assert c.user_pass("anonymous").code == 230
        assert site_of(c) == "beta"


def test_route_host_unknown_is_504_and_ignored(proxy, certs, alpha, beta):
    with h.connect(proxy, certs) as c:
        assert c.start_tls().code == 234
        assert c.host_cmd("ftp.beta.test").code == 220
        assert c.host_cmd("nosuch.test").code == 504
        # The refused HOST is ignored: the earlier one still routes.
        assert c.user_pass("anonymous").code == 230
        assert site_of(c) == "beta"
    with h.connect(proxy, certs) as c:
        assert c.start_tls().code == 234
        assert c.host_cmd("nosuch.test").code == 504
        assert c.user_pass("ftp.alpha.test|anonymous").code == 230
        assert site_of(c) == "alpha"


@pytest.mark.parametrize("implicit", [False, True], ids=["explicit", "implicit"])
def test_route_sni(proxy, certs, implicit):
    with h.connect(proxy, certs, sni="ftp.beta.test", implicit=implicit) as c:
        assert c.tls_login("anonymous").code == 230
        assert site_of(c) == "beta"
    with h.connect(proxy, certs, sni="files.alpha.test", implicit=implicit) as c:
        assert c.tls_login("anonymous").code == 230
        assert site_of(c) == "alpha"


def test_route_sni_naming_no_site_is_ignored(proxy, certs):
    # proxy.test (the shared name) matches no site: routing ignores it.
    with h.connect(proxy, certs, sni="proxy.test") as c:
        assert c.tls_login("ftp.alpha.test|anonymous").code == 230
        assert site_of(c) == "alpha"
    with h.connect(proxy, certs, sni="proxy.test") as c:
        assert c.start_tls().code == 234
        assert c.host_cmd("ftp.beta.test").code == 220
        assert c.user_pass("anonymous").code == 230
        assert site_of(c) == "beta"


def test_route_sni_curl(proxy, certs):
    # curl connects to 127.0.0.1 but uses ftp.beta.test as SNI and checks the
    # certificate for that name; USER carries no host part.
    r = h.curl(proxy.port, "/beta-only.txt", user="anonymous", sni="ftp.beta.test",
               ca=certs.ca, head=True)
    assert r.returncode == 0, r.stderr
    assert h.content_length(r) == BETA_SIZE
    r = h.curl(proxy.implicit_port, "/alpha-only.txt", user="anonymous",
               sni="ftp.alpha.test", ca=certs.ca, head=True, implicit=True)
    assert r.returncode == 0, r.stderr
    assert h.content_length(r) == ALPHA_SIZE


def test_route_by_sni_off(make_proxy, certs, alpha, beta):
    p = make_proxy(proxy={"route_by_sni": "no"})
    with NoBackendContact(alpha, beta), h.connect(p, certs, sni="ftp.beta.test") as c:
        assert c.start_tls().code == 234
        # DESIGN: the certificate still comes from the SNI name's site
        # (the certificate rule does not depend on route_by_sni).
        assert c.peer_cert_der() == certs.beta().der
        assert c.user_pass("anonymous").code == 530
    with h.connect(p, certs, sni="ftp.beta.test") as c:
        assert c.tls_login("ftp.beta.test|anonymous").code == 230
        assert site_of(c) == "beta"


def test_route_default_backend(make_proxy, certs):
    p = make_proxy(proxy={"default_backend": "beta"})
    with h.connect(p, certs) as c:
        assert c.tls_login("anonymous").code == 230
        assert site_of(c) == "beta"
    # A named site still wins over the default.
    with h.connect(p, certs) as c:
        assert c.tls_login("ftp.alpha.test|anonymous").code == 230
        assert site_of(c) == "alpha"
    r = h.curl(p.port, "/beta-only.txt", user="anonymous", ca=certs.ca, head=True)
    assert r.returncode == 0, r.stderr
    assert h.content_length(r) == BETA_SIZE


def test_route_host_lftp(make_proxy, certs, beta, workdir):
    """lftp sends HOST after AUTH TLS when the pre-login FEAT lists HOST.
    Here a site is named `localhost` (which lftp can resolve), route_by_sni
    is off so that only HOST can route, and the site has no certificate of
    its own, so the central one (which covers localhost) is served."""
    p = make_proxy(proxy={"route_by_sni": "no"},
                   backends={"local": backend_section(beta, ["localhost"])})
    r = h.lftp(p.port, ["quote SIZE /beta-only.txt"], user="anonymous", host="localhost",
               ca=certs.ca, workdir=workdir, settings=["set dns:order inet"])
    assert r.returncode == 0, r.stderr[-3000:]
    sent = h.lftp_sent(r)
    assert "HOST localhost" in sent, sent
    assert sent.index("AUTH TLS") < sent.index("HOST localhost") < sent.index("USER anonymous")
    assert f"213 {BETA_SIZE}" in r.stdout


def test_concurrent_sessions_keep_their_backends(proxy, certs):
    with h.connect(proxy, certs) as a, h.connect(proxy, certs, sni="ftp.beta.test") as b:
        assert a.tls_login("ftp.alpha.test|anonymous").code == 230
        assert b.tls_login("anonymous").code == 230
        for _ in range(3):
            assert site_of(a) == "alpha"
            assert site_of(b) == "beta"


# --------------------------------------------------------------------------
# Certificates: each path serves the expected certificate
# --------------------------------------------------------------------------

@pytest.mark.parametrize("implicit", [False, True], ids=["explicit", "implicit"])
def test_cert_sni_site(proxy, certs, implicit):
    with h.connect(proxy, certs, sni="ftp.beta.test", implicit=implicit) as c:
        if not implicit:
            assert c.start_tls().code == 234
        assert c.peer_cert_der() == certs.beta().der
    with h.connect(proxy, certs, sni="www.alpha.test", implicit=implicit) as c:
        if not implicit:
            assert c.start_tls().code == 234
        assert c.peer_cert_der() == certs.alpha().der


def test_cert_host_before_auth(proxy, certs):
    with h.connect(proxy, certs) as c:      # no SNI
        assert c.host_cmd("ftp.alpha.test").code == 220
        assert c.start_tls().code == 234
        assert c.peer_cert_der() == certs.alpha().der
        assert c.user_pass("anonymous").code == 230
        assert site_of(c) == "alpha"


def test_cert_host_after_auth_is_central(proxy, certs):
    with h.connect(proxy, certs) as c:
        assert c.start_tls().code == 234
        assert c.host_cmd("ftp.alpha.test").code == 220
        # The handshake is over: HOST after AUTH routes but cannot change it.
        assert c.peer_cert_der() == certs.central().der


@pytest.mark.parametrize("implicit", [False, True], ids=["explicit", "implicit"])
@pytest.mark.parametrize("sni", [None, "proxy.test"], ids=["nosni", "sharedname"])
def test_cert_central_when_no_site_named(proxy, certs, implicit, sni):
    with h.connect(proxy, certs, sni=sni, implicit=implicit) as c:
        if not implicit:
            assert c.start_tls().code == 234
        assert c.peer_cert_der() == certs.central().der


def test_cert_site_without_own_cert_gets_central(make_proxy, certs):
    p = make_proxy(own_certs=False)
    with h.connect(p, certs, sni="ftp.beta.test", check_hostname=False) as c:
        assert c.start_tls().code == 234
        assert c.peer_cert_der() == certs.central().der
        assert c.user_pass("anonymous").code == 230
        assert site_of(c) == "beta"
    with h.connect(p, certs) as c:
        assert c.host_cmd("ftp.alpha.test").code == 220
        assert c.start_tls().code == 234
        assert c.peer_cert_der() == certs.central().der


def test_cert_verifies_with_curl_and_hostname_check(proxy, certs):
    # curl checks the chain against the test CA and the name in the URL.
    for sni, path, size in (("ftp.alpha.test", "/alpha-only.txt", ALPHA_SIZE),
                            ("ftp.beta.test", "/beta-only.txt", BETA_SIZE)):
        r = h.curl(proxy.port, path, user="anonymous", sni=sni, ca=certs.ca, head=True)
        assert r.returncode == 0, r.stderr
        assert h.content_length(r) == size
    # 127.0.0.1 (no SNI): the central certificate, which names 127.0.0.1.
    r = h.curl(proxy.port, "/alpha-only.txt", user="ftp.alpha.test|anonymous", ca=certs.ca,
               head=True)
    assert r.returncode == 0, r.stderr


# --------------------------------------------------------------------------
# Listeners
# --------------------------------------------------------------------------

@pytest.mark.parametrize("mech", ["TLS", "SSL", "TLS-C", "tls"])
def test_explicit_auth_mechanisms(proxy, certs, mech):
    with h.connect(proxy, certs) as c:
        assert c.greeting.code == 220
        assert c.start_tls(mech).code == 234
        assert c.tls_version() in ("TLSv1.2", "TLSv1.3")
        assert c.user_pass("ftp.beta.test|anonymous").code == 230
        assert site_of(c) == "beta"


def test_explicit_auth_unknown_mechanism(proxy, certs):
    with h.connect(proxy, certs) as c:
        r = c.cmd("AUTH KERBEROS_V4")
        # RFC 2228: 504 for an unsupported mechanism (any 5xx accepted).
        assert is_class(r.code, 5), r
        assert c.start_tls().code == 234


def test_implicit_listener(proxy, certs):
    with h.connect(proxy, certs, implicit=True) as c:
        assert c.greeting.code == 220
        assert c.tls_version() in ("TLSv1.2", "TLSv1.3")
        assert c.tls_login("ftp.alpha.test|anonymous").code == 230
        assert site_of(c) == "alpha"
    r = h.curl(proxy.implicit_port, "/beta-only.txt", user="ftp.beta.test|anonymous",
               ca=certs.ca, head=True, implicit=True)
    assert r.returncode == 0, r.stderr
    assert h.content_length(r) == BETA_SIZE
    assert not any(s.startswith("AUTH") for s in h.curl_sent(r))


def test_implicit_lftp(proxy, certs, workdir):
    r = h.lftp(proxy.implicit_port, ["quote SIZE /beta-only.txt"],
               user="ftp.beta.test|anonymous", ca=certs.ca, implicit=True, workdir=workdir)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"213 {BETA_SIZE}" in r.stdout


@pytest.mark.skipif(not h.has_ipv6_loopback(), reason="this machine has no ::1")
def test_ipv6_listeners(make_proxy, certs):
    p6 = h.free_port("::1")
    i6 = h.free_port("::1")
    p = make_proxy(proxy={"listen": [f"127.0.0.1:{h.free_port()}", f"[::1]:{p6}"],
                          "listen_implicit": f"[::1]:{i6}"})
    with h.connect(p, certs, host="::1", port=p6) as c:
        assert c.greeting.code == 220
        assert c.sock.family == socket.AF_INET6
        assert c.tls_login("ftp.alpha.test|anonymous").code == 230
        assert site_of(c) == "alpha"
    with h.connect(p, certs, host="::1", port=i6, implicit=True, sni="ftp.beta.test") as c:
        assert c.tls_login("anonymous").code == 230
        assert site_of(c) == "beta"
        assert c.peer_cert_der() == certs.beta().der
    r = h.curl(p6, "/alpha-only.txt", user="ftp.alpha.test|anonymous", host="::1",
               ca=certs.ca, head=True)
    assert r.returncode == 0, r.stderr
    assert h.content_length(r) == ALPHA_SIZE
    # The IPv4 listener of the same proxy works too.
    with h.connect(p, certs) as c:
        assert c.tls_login("ftp.beta.test|anonymous").code == 230


# --------------------------------------------------------------------------
# Refusals: names that do not route, contradict each other, or come too late
# --------------------------------------------------------------------------

def test_unknown_host_in_user(proxy, certs, alpha, beta):
    with NoBackendContact(alpha, beta), h.connect(proxy, certs) as c:
        assert c.start_tls().code == 234
        r = c.user_pass("nosuch.example|anonymous")
        assert r.code == 530, r
        # DESIGN: "refused with a 530 that names it"; nothing falls through.
        assert "nosuch.example" in r.text, r
    with NoBackendContact(alpha, beta):
        r = h.curl(proxy.port, "/alpha-only.txt", user="nosuch.example|anonymous",
                   ca=certs.ca, head=True)
        assert r.returncode != 0
        assert any(x.startswith("530") for x in h.curl_replies(r)), r.stderr


def test_unknown_host_does_not_fall_through_to_default(make_proxy, certs, alpha, beta):
    p = make_proxy(proxy={"default_backend": "beta"})
    with NoBackendContact(alpha, beta), h.connect(p, certs) as c:
        assert c.start_tls().code == 234
        r = c.user_pass("nosuch.example|anonymous")
        assert r.code == 530, r


def test_no_host_and_no_default(proxy, certs, alpha, beta):
    with NoBackendContact(alpha, beta), h.connect(proxy, certs) as c:
        assert c.start_tls().code == 234
        r = c.user_pass("anonymous")
        assert r.code == 530, r
        # The session goes on: the client can still name a site.
        assert c.cmd("NOOP").code == 200


@pytest.mark.parametrize("host_first", [True, False], ids=["host-before-auth", "host-after-auth"])
def test_user_prefix_contradicts_host(proxy, certs, alpha, beta, host_first):
    with NoBackendContact(alpha, beta), h.connect(proxy, certs) as c:
        if host_first:
            assert c.host_cmd("ftp.alpha.test").code == 220
        assert c.start_tls().code == 234
        if not host_first:
            assert c.host_cmd("ftp.alpha.test").code == 220
        r = c.user_pass("ftp.beta.test|anonymous")
        assert r.code == 530, r
    # Same site under another of its names agrees with HOST.
    with h.connect(proxy, certs) as c:
        assert c.start_tls().code == 234
        assert c.host_cmd("ftp.alpha.test").code == 220
        assert c.user_pass("www.alpha.test|anonymous").code == 230
        assert site_of(c) == "alpha"


def test_user_prefix_contradicts_sni(proxy, certs, alpha, beta):
    with NoBackendContact(alpha, beta), h.connect(proxy, certs, sni="ftp.alpha.test") as c:
        assert c.start_tls().code == 234
        r = c.user_pass("ftp.beta.test|anonymous")
        assert r.code == 530, r
    with NoBackendContact(alpha, beta), h.connect(proxy, certs, sni="ftp.beta.test",
                                                implicit=True) as c:
        r = c.user_pass("ftp.alpha.test|anonymous")
        assert r.code == 530, r
    # A prefix naming the SNI's own site is fine.
    with h.connect(proxy, certs, sni="ftp.alpha.test") as c:
        assert c.tls_login("other.alpha.test|anonymous").code == 230
        assert site_of(c) == "alpha"


def test_host_contradicts_sni(proxy, certs):
    with h.connect(proxy, certs, sni="ftp.alpha.test") as c:
        assert c.start_tls().code == 234
        assert c.host_cmd("ftp.beta.test").code == 504
        # Another name of the SNI's site is accepted.
        assert c.host_cmd("www.alpha.test").code == 220
        # The refused HOST is ignored for routing: SNI (and the HOST) say alpha.
        assert c.user_pass("anonymous").code == 230
        assert site_of(c) == "alpha"


@pytest.mark.parametrize("arg", ["ftp.alpha.test:21", "ftp.alpha.test:2121", "[::1]:21"])
def test_host_with_port(proxy, certs, arg):
    with h.connect(proxy, certs) as c:
        assert c.start_tls().code == 234
        assert c.host_cmd(arg).code == 501
        assert c.cmd("NOOP").code == 200


def test_host_after_login(proxy, certs):
    with h.connect(proxy, certs) as c:
        assert c.tls_login("ftp.alpha.test|anonymous").code == 230
        assert c.host_cmd("ftp.beta.test").code == 503
        assert c.host_cmd("ftp.alpha.test").code == 503
        assert site_of(c) == "alpha"


def test_host_without_argument(proxy, certs):
    with h.connect(proxy, certs) as c:
        assert c.start_tls().code == 234
        r = c.cmd("HOST")
        # DESIGN is silent: a syntax error in the argument, 501 (any 5xx).
        assert is_class(r.code, 5), r
        assert c.cmd("NOOP").code == 200


def test_pass_before_user(proxy, certs, alpha, beta):
    with NoBackendContact(alpha, beta), h.connect(proxy, certs) as c:
        assert c.start_tls().code == 234
        assert c.cmd(f"PASS {PW}").code == 503
        assert c.cmd("NOOP").code == 200


@pytest.mark.parametrize("tls", [True, False], ids=["tls", "plain"])
def test_other_commands_before_login(proxy, certs, alpha, beta, tls):
    cmds = ["CWD /", "PWD", "LIST", "NLST", "PASV", "EPSV", "PORT 127,0,0,1,4,1",
            "RETR /alpha-only.txt", "SIZE /alpha-only.txt", "STOR /upload/x", "MKD /x",
            "DELE /x", "SITE HELP", "STAT", "XYZW", "ACCT x"]
    with NoBackendContact(alpha, beta), h.connect(proxy, certs) as c:
        if tls:
            assert c.start_tls().code == 234
        for cmd in cmds:
            r = c.cmd(cmd)
            assert r.code == 530, f"{cmd}: {r}"
        # CCC and REIN are the proxy's to refuse after login too; before
        # login "anything else" is 530, but any refusal (5xx) is accepted.
        for cmd in ("CCC", "REIN"):
            r = c.cmd(cmd)
            assert is_class(r.code, 5), f"{cmd}: {r}"
        # A verb that is no FTP verb at all (over 4 letters) may be a syntax
        # error instead (500); DESIGN's "anything else" is read as commands.
        r = c.cmd("XYZZY")
        assert r.code in (500, 530), r
        assert c.cmd("NOOP").code == 200


def test_commands_answered_before_login(proxy, certs):
    with h.connect(proxy, certs) as c:
        assert c.cmd("NOOP").code == 200
        assert c.cmd("SYST").code == 215
        assert c.cmd("OPTS UTF8 ON").code == 200
        assert c.cmd("FEAT").code == 211
        assert c.start_tls().code == 234
        assert c.cmd("PBSZ 0").code == 200
        assert c.cmd("PROT P").code == 200
        assert c.cmd("NOOP").code == 200
        assert c.cmd("SYST").code == 215
        r = c.cmd("QUIT")
        assert r.code == 221
        c.expect_closed(5)


def test_quit_before_tls(proxy):
    with PlainControl(proxy.port) as c:
        assert c.greeting.code == 220
        assert c.cmd("QUIT").code == 221


# --------------------------------------------------------------------------
# After login: relay, and what the proxy answers itself
# --------------------------------------------------------------------------

def test_multiline_replies_relayed_whole(proxy, certs):
    with h.connect(proxy, certs) as c:
        assert c.tls_login("ftp.alpha.test|anonymous").code == 230
        for cmd, code in (("HELP", 214), ("STAT", 211)):
            r = c.cmd(cmd)
            assert r.code == code, r
            assert len(r.lines) > 2, f"{cmd}: expected a multi-line reply: {r}"
            # In step: the next reply belongs to the next command.
            assert c.cmd("NOOP").code == 200
        assert site_of(c) == "alpha"


def test_post_login_tls_commands_answered_by_proxy(proxy, certs, alpha):
    with h.connect(proxy, certs) as c:
        assert c.tls_login("ftp.alpha.test|anonymous").code == 230
        mark = alpha.log_mark()
        assert c.cmd("PBSZ 0").code == 200
        assert c.cmd("PROT P").code == 200
        # require_protected_data = yes (default): PROT C is refused with 534.
        assert c.cmd("PROT C").code == 534
        for cmd in ("CCC", "REIN", "AUTH TLS"):
            r = c.cmd(cmd)
            assert is_class(r.code, 5), f"{cmd}: {r}"
        # Still encrypted, still logged in, still alpha.
        assert c.tls_version() is not None
        assert c.cmd("NOOP").code == 200
        assert site_of(c) == "alpha"
        seen = [x.split()[0].upper() for x in alpha.commands_since(mark)]
        for verb in ("PBSZ", "PROT", "CCC", "REIN", "AUTH", "HOST"):
            assert verb not in seen, f"backend saw {verb}: {seen}"


def test_backend_logs_in_at_user(make_proxy, certs, workdir):
    """vsftpd with no_anon_password=YES answers USER with 230 (no PASS):
    the session is logged in from that reply on."""
    nopw = Vsftpd(workdir, "nopw", files={"nopw-only.txt": b"nopw\n"}, dirs=[],
                  extra={"no_anon_password": "YES"})
    with nopw:
        p = make_proxy(backends={"nopw": backend_section(nopw, ["ftp.nopw.test"])})
        with h.connect(p, certs) as c:
            assert c.start_tls().code == 234
            assert c.cmd("USER ftp.nopw.test|anonymous").code == 230
            assert c.cmd("SIZE /nopw-only.txt").text.startswith("213 5")
            assert c.host_cmd("ftp.nopw.test").code == 503     # logged in: too late
            assert c.cmd("PBSZ 0").code == 200


def test_client_from_another_loopback_address(proxy, certs):
    mark = proxy.log_mark()
    with h.connect(proxy, certs, source=h.OTHER_CLIENT_ADDR) as c:
        assert c.sock.getsockname()[0] == h.OTHER_CLIENT_ADDR
        assert c.tls_login("ftp.beta.test|anonymous").code == 230
        assert site_of(c) == "beta"
    assert h.OTHER_CLIENT_ADDR in proxy.log_since(mark)


# --------------------------------------------------------------------------
# FEAT
# --------------------------------------------------------------------------

@pytest.mark.parametrize("tls", [False, True], ids=["before-auth", "after-auth"])
def test_feat_before_login(proxy, certs, tls):
    with h.connect(proxy, certs) as c:
        if tls:
            assert c.start_tls().code == 234
        r = c.cmd("FEAT")
        assert r.code == 211, r
        for f in PROXY_FEAT_BEFORE:
            assert h.feat_has(r, f), f"{f} missing from {r}"


def _backend_feat(v: Vsftpd) -> h.Reply:
    with PlainControl(v.port) as c:
        assert c.cmd("USER anonymous").code == 331
        assert c.cmd("PASS x").code == 230
        return c.cmd("FEAT")


def _check_feat_after_login(feat: h.Reply, backend_feat: h.Reply):
    assert feat.code == 211, feat
    lines = [l.upper() for l in h.feat_lines(feat)]
    backend = [l.upper() for l in h.feat_lines(backend_feat)]
    dropped = ("AUTH", "PBSZ", "PROT", "CCC")
    kept = [b for b in backend if b.split()[0] not in dropped]
    for b in kept:
        if b == "EPRT":
            # Not in DESIGN's list of dropped lines, but with allow_active = no
            # the proxy refuses EPRT, so not advertising it is right too.
            continue
        assert b in lines, f"backend feature {b!r} missing: {feat}"
    for f in PROXY_FEAT_AFTER:
        assert h.feat_has(feat, f), f"{f} missing: {feat}"
    # Nothing the backend lacks, beyond the proxy's own five.
    allowed = set(kept) | set(PROXY_FEAT_AFTER)
    extra = [l for l in lines if l not in allowed]
    assert not extra, f"advertised but neither the backend's nor the proxy's: {extra}"
    assert not any(l.startswith("CCC") for l in lines), feat
    # The proxy's TLS lines appear once, the backend's never.
    assert sum(l.startswith("AUTH") for l in lines) == 1, feat
    assert lines.count("PBSZ") == 1 and lines.count("PROT") == 1, feat


def test_feat_after_login(proxy, certs, alpha):
    with h.connect(proxy, certs) as c:
        assert c.tls_login("ftp.alpha.test|anonymous").code == 230
        feat = c.cmd("FEAT")
    backend_feat = _backend_feat(alpha)
    assert not h.feat_has(backend_feat, "MLST")   # vsftpd has no MLSD/MLST ...
    assert not h.feat_has(feat, "MLST")           # ... so neither may the proxy
    _check_feat_after_login(feat, backend_feat)


def test_feat_after_login_drops_backend_tls_lines(make_proxy, certs, workdir, alpha):
    """A backend that itself advertises AUTH TLS/PBSZ/PROT (vsftpd with TLS
    available but not forced): those lines are the proxy's, once."""
    gamma = Vsftpd(workdir, "gamma", tls=True, force_tls=False, cert=certs.backend_tls(),
                   files={"gamma-only.txt": b"g\n"}, dirs=[])
    with gamma:
        backend_feat = _backend_feat(gamma)
        assert h.feat_has(backend_feat, "AUTH TLS") and h.feat_has(backend_feat, "PBSZ")
        assert h.feat_has(backend_feat, "PROT")
        p = make_proxy(backends={
            "alpha": backend_section(alpha, ALPHA_HOSTS),
            "gamma": backend_section(gamma, ["ftp.gamma.test"])})
        with h.connect(p, certs) as c:
            assert c.tls_login("ftp.gamma.test|anonymous").code == 230
            assert c.cmd("SIZE /gamma-only.txt").text.startswith("213 2")
            feat = c.cmd("FEAT")
            _check_feat_after_login(feat, backend_feat)


# --------------------------------------------------------------------------
# require_tls, TLS versions
# --------------------------------------------------------------------------

def test_require_tls_refuses_plain_user(proxy, alpha, beta):
    with NoBackendContact(alpha, beta), PlainControl(proxy.port) as c:
        r = c.cmd("USER ftp.alpha.test|anonymous")
        assert is_class(r.code, 5), r
        assert "AUTH TLS" in r.text.upper(), r
        r = c.cmd(f"PASS {PW}")
        assert is_class(r.code, 5), r
        # Still open, and TLS can still be started.
        assert c.cmd("AUTH TLS").code == 234


def test_require_tls_off_allows_plain_login(make_proxy, certs):
    p = make_proxy(proxy={"require_tls": "no"})
    with PlainControl(p.port) as c:
        r = c.cmd("USER ftp.beta.test|anonymous")
        assert r.code == 331, r
        assert c.cmd(f"PASS {PW}").code == 230
        assert site_of(c) == "beta"


@pytest.mark.parametrize("implicit", [False, True], ids=["explicit", "implicit"])
def test_tls11_refused(proxy, certs, workdir, implicit):
    # Precondition: this client can offer TLS 1.1 at all (checked against
    # openssl s_server), so a refusal below is the proxy's doing.
    assert h.client_can_offer_tls11(workdir, certs), "client cannot offer TLS 1.1 here"
    ctx = h.tls11_client_context()
    c = FtpsClient(context=ctx, implicit=implicit, timeout=5)
    try:
        if implicit:
            with pytest.raises((ssl.SSLError, ConnectionError, EOFError, OSError)):
                c.connect(proxy.host, proxy.implicit_port)
        else:
            c.connect(proxy.host, proxy.port)
            with pytest.raises((ssl.SSLError, ConnectionError, EOFError, OSError)):
                r = c.start_tls()
                assert r.code == 234
                c.cmd("NOOP")
    finally:
        c.close_quietly()
    # The proxy is fine, and TLS 1.2 is accepted.
    ctx12 = h.client_context(certs.ca)
    ctx12.maximum_version = ssl.TLSVersion.TLSv1_2
    with h.connect(proxy, certs, context=ctx12, implicit=implicit) as c:
        assert c.tls_login("ftp.alpha.test|anonymous").code == 230
        assert c.tls_version() == "TLSv1.2"


def test_tls13_accepted(proxy, certs):
    ctx = h.client_context(certs.ca)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    with h.connect(proxy, certs, context=ctx) as c:
        assert c.tls_login("ftp.beta.test|anonymous").code == 230
        assert c.tls_version() == "TLSv1.3"


# --------------------------------------------------------------------------
# One reply, one TLS record
# --------------------------------------------------------------------------

# (command, code) after the TLS handshake: the proxy's own replies (PBSZ,
# PROT, FEAT before login) and relayed ones, single-line and multi-line.
RECORD_DIALOGUE = [("PBSZ 0", 200), ("PROT P", 200), ("FEAT", 211),
                   ("USER ftp.alpha.test|anonymous", 331), (f"PASS {PW}", 230),
                   ("FEAT", 211), ("SYST", 215), ("HELP", 214), ("STAT", 211),
                   ("SIZE /no-such-file", 550), ("PWD", 257), ("NOOP", 200), ("QUIT", 221)]


def whole_reply(record: bytes) -> h.Reply:
    """The one reply a record holds, whole: AssertionError when the record
    ends inside a reply or holds more than one."""
    text = record.decode(errors="replace")
    assert text.endswith("\r\n"), f"a record ends inside a reply: {text!r}"
    lines = text[:-2].split("\r\n")
    code = lines[0][:3]
    assert code.isdigit() and lines[0][3:4] in (" ", "-"), f"not a reply: {text!r}"
    ends = [i for i, l in enumerate(lines) if l[:3] == code and l[3:4] == " "]
    assert ends == [len(lines) - 1], f"not exactly one reply in the record: {text!r}"
    return h.parse_reply("\n".join(lines))


@pytest.mark.parametrize("tls", ["tls1.2", "tls1.3"])
@pytest.mark.parametrize("implicit", [False, True], ids=["explicit", "implicit"])
def test_each_reply_in_one_tls_record(proxy, certs, implicit, tls, proxy_log_on_failure):
    """Every reply on the control connection travels in exactly one TLS
    record, the proxy's own and the backend's relayed ones: gftp reads one
    record and expects a whole reply in it (a relayed reply once went out as
    two records, its text and then its CRLF, and gftp never logged in). The
    client here frames the records itself (h.RecordClient)."""
    v = {"tls1.2": ssl.TLSVersion.TLSv1_2, "tls1.3": ssl.TLSVersion.TLSv1_3}[tls]
    ctx = h.client_context(certs.ca, min_version=v, max_version=v)
    if implicit:
        sock = socket.create_connection((proxy.host, proxy.implicit_port), h.T_IO)
    else:
        plain = PlainControl(proxy.port)
        assert plain.cmd("AUTH TLS").code == 234
        sock = plain.sock
    with sock:
        rc = h.RecordClient(sock, ctx)
        if implicit:
            assert whole_reply(rc.record()).code == 220
        for cmd, code in RECORD_DIALOGUE:
            rc.send(cmd.encode() + b"\r\n")
            r = whole_reply(rc.record())
            assert r.code == code, f"{cmd}: {r}"
            if cmd == "HELP" or cmd == "FEAT":
                assert len(r.lines) > 2, f"{cmd}: a multi-line reply expected: {r}"


# --------------------------------------------------------------------------
# Backends that fail
# --------------------------------------------------------------------------

def test_backend_down_gives_421_other_still_serves(make_proxy, certs, beta):
    dead = h.free_port()          # nothing listens there
    assert not h.is_listening(dead)
    p = make_proxy(backends={
        "alpha": backend_section(address=f"127.0.0.1:{dead}", hostnames=ALPHA_HOSTS),
        "beta": backend_section(beta, BETA_HOSTS, certs.beta())})
    mark = p.log_mark()
    with h.connect(p, certs) as c:
        assert c.start_tls().code == 234
        t0 = time.monotonic()
        r = c.cmd("USER ftp.alpha.test|anonymous")
        assert r.code == 421, r
        assert time.monotonic() - t0 < 3 + 2   # connect_timeout is 3
    # A log line names the backend.
    log = p.log_since(mark)
    assert "alpha" in log, log[-2000:]
    with h.connect(p, certs) as c:
        assert c.tls_login("ftp.beta.test|anonymous").code == 230
        assert site_of(c) == "beta"
    r = h.curl(p.port, "/alpha-only.txt", user="ftp.alpha.test|anonymous", ca=certs.ca,
               head=True)
    assert r.returncode != 0
    assert any(x.startswith("421") for x in h.curl_replies(r)), r.stderr


def test_stalled_backend_does_not_block_others(make_proxy, certs):
    """A backend that accepts TCP but never greets: its client ends with a
    4xx (DESIGN is silent on which deadline: connect_timeout or
    login_timeout; 421 or a close is accepted), and meanwhile other sessions
    are served without delay."""
    stall = socket.socket()
    stall.bind(("127.0.0.1", 0))
    stall.listen(16)          # never accept(): the kernel completes handshakes
    try:
        p = make_proxy(proxy={"login_timeout": "4", "connect_timeout": "2"},
                       backends={**default_backends_from(make_proxy, certs),
                                 "stall": backend_section(address="127.0.0.1:%d" %
                                                          stall.getsockname()[1],
                                                          hostnames=["ftp.stall.test"])})
        result = {}

        def stalled_client():
            t0 = time.monotonic()
            try:
                with h.connect(p, certs, timeout=15) as c:
                    c.start_tls()
                    result["reply"] = c.cmd("USER ftp.stall.test|anonymous")
            except (EOFError, OSError) as e:
                result["reply"] = e
            result["t"] = time.monotonic() - t0

        th = threading.Thread(target=stalled_client, daemon=True)
        th.start()
        time.sleep(0.5)
        t0 = time.monotonic()
        with h.connect(p, certs) as c:
            assert c.tls_login("ftp.alpha.test|anonymous").code == 230
            assert site_of(c) == "alpha"
        assert time.monotonic() - t0 < 2.0
        th.join(15)
        assert not th.is_alive(), "stalled session never ended"
        rep = result["reply"]
        assert not isinstance(rep, h.Reply) or is_class(rep.code, 4), rep
        assert result["t"] < 4 + 3
    finally:
        stall.close()


def default_backends_from(factory, certs):
    return default_backends(factory.alpha, factory.beta, certs)


# --------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------

def test_long_line_gets_500_and_session_goes_on(proxy, certs, alpha):
    with h.connect(proxy, certs) as c:
        # Plaintext, before AUTH.
        c.send_raw(b"NOOP " + b"x" * 10000 + b"\r\n")
        assert c.reply().code == 500
        assert c.cmd("NOOP").code == 200
        # TLS, before login.
        assert c.start_tls().code == 234
        c.send_raw(b"USER " + b"a" * 10000 + b"\r\n")
        assert c.reply().code == 500
        assert c.cmd("NOOP").code == 200
        # After login: never relayed to the backend.
        assert c.user_pass("ftp.alpha.test|anonymous").code == 230
        mark = alpha.log_mark()
        c.send_raw(b"SIZE /" + b"b" * 10000 + b"\r\n")
        assert c.reply().code == 500
        assert c.cmd("NOOP").code == 200
        assert site_of(c) == "alpha"
        assert not any("bbbbbbbb" in x for x in alpha.commands_since(mark))


def test_telnet_iac_is_stripped(proxy, certs, alpha):
    IP_DM = b"\xff\xf4\xff\xf2"     # IAC IP, IAC DM: what clients send before ABOR
    with h.connect(proxy, certs) as c:
        c.send_raw(IP_DM + b"NOOP\r\n")
        assert c.reply().code == 200
        assert c.start_tls().code == 234
        c.send_raw(IP_DM + b"NOOP\r\n")
        assert c.reply().code == 200
        assert c.user_pass("ftp.alpha.test|anonymous").code == 230
        mark = alpha.log_mark()
        c.send_raw(IP_DM + b"SIZE /alpha-only.txt\r\n")
        r = c.reply()
        assert r.code == 213 and r.text.split()[1] == str(ALPHA_SIZE), r
        assert "SIZE /alpha-only.txt" in alpha.commands_since(mark)


def test_tls_garbage_ends_only_that_session(proxy, certs):
    with h.connect(proxy, certs) as good:
        assert good.tls_login("ftp.beta.test|anonymous").code == 230
        # Garbage instead of a ClientHello on the implicit listener.
        with socket.create_connection((proxy.host, proxy.implicit_port), 5) as s:
            s.sendall(b"\x16\x03\x01\x00\x05hello" + b"GARBAGE" * 100)
            assert h.closed_within(s, 5)[0]
        # Garbage instead of a ClientHello after AUTH TLS.
        with PlainControl(proxy.port) as bad:
            assert bad.cmd("AUTH TLS").code == 234
            bad.send(b"\x17\x03\x03\x00\x10" + b"\x00" * 16)
            assert h.closed_within(bad.sock, 5)[0]
        assert site_of(good) == "beta"
    assert proxy.alive()


# --------------------------------------------------------------------------
# Timeouts
# --------------------------------------------------------------------------

def test_login_timeout(make_proxy, certs):
    p = make_proxy(proxy={"login_timeout": "2", "idle_timeout": "30"})
    # A TLS session that never logs in, though it keeps talking.
    with h.connect(p, certs, timeout=8) as c:
        t0 = time.monotonic()
        assert c.start_tls().code == 234
        code = None
        while time.monotonic() - t0 < 7:
            r = c.cmd("NOOP")
            if r.code != 200:
                code = r.code
                break
            time.sleep(0.5)
        assert code == 421, f"no 421 within 7s (got {code})"
        assert 1.5 <= time.monotonic() - t0 <= 2 + 3
        c.expect_closed(5)
    # A plaintext session that says nothing.
    with PlainControl(p.port, timeout=8) as c:
        t0 = time.monotonic()
        assert c.reply().code == 421
        assert time.monotonic() - t0 <= 2 + 3
    # An implicit connection that never starts its handshake is closed (no
    # 421 is possible without TLS; the proxy may linger a few seconds
    # trying to say goodbye, hence the slack).
    with socket.create_connection((p.host, p.implicit_port), 8) as s:
        assert h.closed_within(s, 2 + 5)[0]
    # A logged-in session is not subject to login_timeout.
    with h.connect(p, certs) as c:
        assert c.tls_login("ftp.alpha.test|anonymous").code == 230
        time.sleep(2.8)
        assert c.cmd("NOOP").code == 200


def test_idle_timeout(make_proxy, certs):
    p = make_proxy(proxy={"idle_timeout": "2", "login_timeout": "20"})
    with h.connect(p, certs, timeout=8) as c:
        assert c.tls_login("ftp.alpha.test|anonymous").code == 230
        # Commands keep it alive past the timeout ...
        for _ in range(4):
            time.sleep(1)
            assert c.cmd("NOOP").code == 200
        # ... silence ends it with 421.
        t0 = time.monotonic()
        r = c.reply()
        assert r.code == 421, r
        assert 1.5 <= time.monotonic() - t0 <= 2 + 3
        c.expect_closed(5)


# --------------------------------------------------------------------------
# One slow peer delays no other session
# --------------------------------------------------------------------------

def test_slow_clients_do_not_block_others(proxy, certs):
    stalled = []
    try:
        # Half a command line, no CRLF.
        a = PlainControl(proxy.port)
        a.send(b"NOO")
        stalled.append(a)
        # AUTH TLS, then half a ClientHello.
        b = PlainControl(proxy.port)
        assert b.cmd("AUTH TLS").code == 234
        b.send(b"\x16\x03\x01\x02\x00\x01\x00")
        stalled.append(b)
        # Implicit: connected, nothing sent.
        stalled.append(socket.create_connection((proxy.host, proxy.implicit_port), 5))
        # Logged in, sends commands but never reads its replies.
        d = h.connect(proxy, certs)
        stalled.append(d)
        assert d.tls_login("ftp.alpha.test|anonymous").code == 230
        d.sock.settimeout(0.5)
        try:
            for _ in range(20000):
                d.sock.sendall(b"NOOP\r\n")
        except (socket.timeout, OSError):
            pass                  # its buffers are full: good
        for _ in range(3):
            t0 = time.monotonic()
            with h.connect(proxy, certs, timeout=5) as c:
                assert c.tls_login("ftp.beta.test|anonymous").code == 230
                assert site_of(c) == "beta"
            assert time.monotonic() - t0 < 2.0, "a slow client delayed another session"
        r = h.curl(proxy.implicit_port, "/alpha-only.txt", user="ftp.alpha.test|anonymous",
                   ca=certs.ca, head=True, implicit=True, timeout=10)
        assert r.returncode == 0, r.stderr
    finally:
        for s in stalled:
            if isinstance(s, FtpsClient):
                s.drop()
            else:
                s.close()


# --------------------------------------------------------------------------
# Resources
# --------------------------------------------------------------------------

def _quit_after_login(p, certs):
    with h.connect(p, certs) as c:
        assert c.tls_login("ftp.beta.test|anonymous").code == 230
        assert c.cmd("QUIT").code == 221


def _refused_login(p, certs):
    with h.connect(p, certs) as c:
        assert c.start_tls().code == 234
        assert c.user_pass("nosuch.test|anonymous").code == 530


def _vanish_logged_in(p, certs):
    c = h.connect(p, certs)
    assert c.tls_login("ftp.alpha.test|anonymous").code == 230
    c.drop()                        # TCP FIN, no close_notify, no QUIT


def _vanish_after_auth(p, certs):
    c = h.connect(p, certs)
    assert c.start_tls().code == 234
    c.drop()


def _vanish_implicit(p, certs):
    c = h.connect(p, certs, implicit=True)
    c.drop()


def _plain_connect_close(p, certs):
    socket.create_connection((p.host, p.port), 5).close()


def _implicit_connect_close(p, certs):
    socket.create_connection((p.host, p.implicit_port), 5).close()


@pytest.mark.parametrize("scenario", [
    _quit_after_login, _refused_login, _vanish_logged_in, _vanish_after_auth,
    _vanish_implicit, _plain_connect_close, _implicit_connect_close],
    ids=lambda f: f.__name__.strip("_"))
def test_session_end_releases_descriptors(make_proxy, certs, scenario):
    """Whatever way a session ends, its sockets are closed promptly (within
    2 s, with no other traffic to wake the proxy up) and the proxy's open
    descriptor count returns to where it was."""
    p = make_proxy(proxy={"login_timeout": "30", "idle_timeout": "30"})
    _quit_after_login(p, certs)       # warm up: OpenSSL loads lazily
    time.sleep(0.3)
    base = p.fd_count()
    for _ in range(3):
        scenario(p, certs)
        h.wait_until(lambda: p.fd_count() <= base, 2,
                     what=f"fd count back to {base} (now {p.fd_count()})")
