"""Issue 4: certificates an operator can trust. `ftpsgate -t` with every
error and warning it promises (exit status and the words that name the file,
the site and the host), per-site certificate selection by SNI and by a HOST
sent before AUTH TLS (ECDSA and RSA, control and data connections), and live
reload: SIGHUP replacing the central certificate under an open session, a
broken configuration that leaves the old one in force, listeners added and
removed, and certificate files rewritten on disk (certbot, Kubernetes)
picked up without a signal.

Every certificate is made here with `openssl`: the session's CertFactory
(throw-away CA, alpha RSA, beta ECDSA, central) plus the few this file needs
on top (an intermediate CA, a self-signed leaf), built by the helpers below.

Texts checked are the ones DESIGN.md and issue 4 promise: a finding is one
line starting `error: ` or `warning: ` that names the file, the site
("central certificate" or "site NAME") and the host concerned; the last line
counts them. The phrases matched ("expired on", "not valid yet", "self-signed",
"the chain does not verify", "not covered by the site's certificate" ...) are
the proxy's own wording of each problem.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import ssl
import threading
import time
from pathlib import Path

import pytest

import harness as h
from conftest import ALPHA_HOSTS, BETA_HOSTS
from harness import Cert, backend_section

CONTENT = {"alpha": b"alpha only\n", "beta": b"this file is only on beta\n"}
# DER of the SubjectPublicKeyInfo algorithm OIDs: which key a certificate has.
OID_EC = bytes.fromhex("2a8648ce3d0201")           # id-ecPublicKey
OID_RSA = bytes.fromhex("2a864886f70d010101")      # rsaEncryption
CENTRAL_DNS = ["proxy.test", "localhost"]
CENTRAL_IPS = ["127.0.0.1", "::1"]
# How long a change on disk may take to be served: the proxy waits for 1.5 s
# of quiet, then reloads.
T_WATCH = 8.0


# --------------------------------------------------------------------------
# Helpers (candidates for harness.py: see the notes on each)
# --------------------------------------------------------------------------

def make_intermediate(certs: h.CertFactory, name: str) -> Cert:
    """An intermediate CA signed by the test CA (harness candidate:
    CertFactory.intermediate())."""
    d = certs.dir
    c = Cert(name, d / f"{name}.crt", d / f"{name}.key")
    if c.cert.exists():
        return c
    h.openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
              "-out", str(c.key))
    csr = d / f"{name}.csr"
    h.openssl("req", "-new", "-key", str(c.key), "-out", str(csr),
              "-subj", "/CN=ftpsgate test intermediate CA")
    ext = d / f"{name}.ext"
    ext.write_text("basicConstraints=critical,CA:TRUE,pathlen:0\n"
                   "keyUsage=critical,keyCertSign,cRLSign\n"
                   "subjectKeyIdentifier=hash\n"
                   "authorityKeyIdentifier=keyid\n")
    h.openssl("x509", "-req", "-in", str(csr), "-CA", str(certs.ca.cert),
              "-CAkey", str(certs.ca.key), "-CAcreateserial", "-days", "3650",
              "-sha256", "-extfile", str(ext), "-out", str(c.cert))
    return c


def make_leaf_signed_by(certs: h.CertFactory, issuer: Cert, name: str, cn: str,
                        dns: list[str], with_chain: bool) -> Cert:
    """A leaf signed by `issuer` (an intermediate); with_chain=True appends
    the intermediate after the leaf, as DESIGN wants certificate files
    (harness candidate: CertFactory.make(issuer=...))."""
    d = certs.dir
    c = Cert(name, d / f"{name}.crt", d / f"{name}.key")
    if c.cert.exists():
        return c
    h.openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
              "-out", str(c.key))
    csr = d / f"{name}.csr"
    h.openssl("req", "-new", "-key", str(c.key), "-out", str(csr), "-subj", f"/CN={cn}")
    ext = d / f"{name}.ext"
    ext.write_text("basicConstraints=critical,CA:FALSE\n"
                   "keyUsage=critical,digitalSignature\n"
                   "extendedKeyUsage=serverAuth\n"
                   "authorityKeyIdentifier=keyid\n"
                   f"subjectAltName={','.join('DNS:' + x for x in dns)}\n")
    h.openssl("x509", "-req", "-in", str(csr), "-CA", str(issuer.cert),
              "-CAkey", str(issuer.key), "-CAcreateserial", "-days", "365",
              "-sha256", "-extfile", str(ext), "-out", str(c.cert))
    if with_chain:
        c.cert.write_text(c.cert.read_text() + issuer.cert.read_text())
    return c


def make_self_signed(certs: h.CertFactory, name: str, cn: str, dns: list[str]) -> Cert:
    """A self-signed leaf (harness candidate: CertFactory.self_signed())."""
    d = certs.dir
    c = Cert(name, d / f"{name}.crt", d / f"{name}.key")
    if c.cert.exists():
        return c
    h.openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
              "-nodes", "-sha256", "-days", "365", "-subj", f"/CN={cn}",
              "-keyout", str(c.key), "-out", str(c.cert),
              "-addext", "basicConstraints=critical,CA:FALSE",
              "-addext", f"subjectAltName={','.join('DNS:' + x for x in dns)}")
    return c


def cert_like_central(certs: h.CertFactory, name: str, **kw) -> Cert:
    """Another certificate for the central names (proxy.test, localhost,
    127.0.0.1, ::1): a different DER, the same coverage."""
    kw.setdefault("key_type", "ec")
    return certs.make(name, "proxy.test", dns=CENTRAL_DNS, ips=CENTRAL_IPS, **kw)


def cert_like_alpha(certs: h.CertFactory, name: str, **kw) -> Cert:
    """Another certificate for both of alpha's names (ftp.alpha.test,
    *.alpha.test), so that only the problem under test is reported."""
    kw.setdefault("key_type", "ec")
    return certs.make(name, "ftp.alpha.test", dns=ALPHA_HOSTS, **kw)


def out_of(r) -> str:
    return r.stdout + r.stderr


def findings(r, kind: str) -> list[str]:
    """The `error: ` (kind='error') or `warning: ` lines of a -t report."""
    return [l for l in r.stdout.splitlines() if l.startswith(kind + ": ")]


def summary(r) -> tuple[int, int, str]:
    """(errors, warnings, whole line) from the last line of a -t report:
    `ftpsgate: FILE: N errors, M warnings: ...`."""
    lines = r.stdout.strip().splitlines()
    assert lines, f"-t printed nothing: {out_of(r)}"
    last = lines[-1]
    m = re.match(r"ftpsgate: (.+): (\d+) errors?, (\d+) warnings?: ", last)
    assert m, f"last line is not the summary: {last!r}"
    return int(m.group(2)), int(m.group(3)), last


def finding_with(r, kind: str, *words: str) -> str:
    """The one finding line of `kind` that contains every word; fails with
    the whole report otherwise."""
    hits = [l for l in findings(r, kind) if all(w in l for w in words)]
    assert hits, (f"no {kind} line naming all of {words!r}; the report was:\n"
                  f"{out_of(r)}")
    return hits[0]


def wait_started(p: h.Proxy) -> None:
    """Listeners are open before the signal handlers are installed: a SIGHUP
    before `ev=started` would end the process (the default action)."""
    p.wait_log(r"ev=started\b", timeout=h.T_START)


def sighup_and_wait(p: h.Proxy, outcome: str = "reloaded") -> str:
    """SIGHUP, then wait for `ev=reloaded trigger=SIGHUP` (or outcome=
    'reload_failed'); returns the log written since the signal."""
    mark = p.log_mark()
    p.signal(signal.SIGHUP)
    p.wait_log(rf'ev={outcome} trigger="?SIGHUP', mark, timeout=5)
    return p.log_since(mark)


def listen_inode(port: int) -> int | None:
    """Inode of the socket listening on 127.0.0.1:port (from /proc/net/tcp):
    the same number before and after a reload means the very same socket
    (harness candidate, beside is_listening())."""
    want = f"0100007F:{port:04X}"
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        f = line.split()
        if len(f) > 9 and f[1] == want and f[3] == "0A":
            return int(f[9])
    return None


class Hammer:
    """Connects to a port in a loop on a thread (greeting, QUIT, close),
    counting successes and keeping every failure, until stopped
    (harness candidate)."""

    def __init__(self, port: int):
        self.port = port
        self.ok = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            try:
                with socket.create_connection((h.LOOPBACK, self.port), timeout=3) as s:
                    f = s.makefile("rb")
                    line = f.readline()
                    if not line.startswith(b"220"):
                        raise RuntimeError(f"greeting {line!r}")
                    s.sendall(b"QUIT\r\n")
                    f.readline()
                self.ok += 1
            except Exception as e:   # noqa: BLE001 -- every failure is the finding
                self.failures.append(f"{time.monotonic():.3f}: {type(e).__name__}: {e}")
            time.sleep(0.01)

    def wait_more(self, n: int, timeout: float = 5.0) -> None:
        start = self.ok
        h.wait_until(lambda: self.ok >= start + n or self.failures, timeout,
                     what=f"{n} more connections to port {self.port}")

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join(10)


# --------------------------------------------------------------------------
# Certificates made for this file
# --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def xc(certs):
    """The extra certificates of this file, made once (names prefixed t4-)."""
    inter = make_intermediate(certs, "t4-intermediate")
    return {
        "expired": cert_like_alpha(certs, "t4-alpha-expired",
                                   startdate="20200101000000Z", enddate="20210101000000Z"),
        "future": cert_like_alpha(certs, "t4-alpha-future",
                                  startdate="20400101000000Z", enddate="20410101000000Z"),
        "soon": cert_like_alpha(certs, "t4-alpha-soon", days=10),
        "central_expired": cert_like_central(certs, "t4-central-expired",
                                             startdate="20200101000000Z",
                                             enddate="20210101000000Z"),
        "central_soon": cert_like_central(certs, "t4-central-soon", days=10),
        "central_future": cert_like_central(certs, "t4-central-future",
                                            startdate="20400101000000Z",
                                            enddate="20410101000000Z"),
        "self_signed": make_self_signed(certs, "t4-alpha-selfsigned", "ftp.alpha.test",
                                        ALPHA_HOSTS),
        "alpha_ftp_only": certs.make("t4-alpha-ftp-only", "ftp.alpha.test",
                                     dns=["ftp.alpha.test"], key_type="ec"),
        "leaf_no_chain": make_leaf_signed_by(certs, inter, "t4-alpha-via-inter-bare",
                                             "ftp.alpha.test", ALPHA_HOSTS, with_chain=False),
        "leaf_chain": make_leaf_signed_by(certs, inter, "t4-alpha-via-inter-chain",
                                          "ftp.alpha.test", ALPHA_HOSTS, with_chain=True),
        "garbage": _garbage(certs.dir / "t4-garbage.pem"),
    }


def _garbage(path: Path) -> Path:
    path.write_text("this is not PEM at all\n")
    return path


def run_check(make_proxy, alpha, beta, certs, *, alpha_cert="own", beta_cert="own",
              alpha_hosts=ALPHA_HOSTS, beta_hosts=BETA_HOSTS, proxy=None):
    """`ftpsgate -t` on alpha + beta; a cert argument is "own" (the site's
    usual certificate), None (no certificate of its own) or a Cert."""
    def pick(v, own):
        return own if v == "own" else v
    backends = {
        "alpha": backend_section(alpha, alpha_hosts, pick(alpha_cert, certs.alpha())),
        "beta": backend_section(beta, beta_hosts, pick(beta_cert, certs.beta())),
    }
    p = make_proxy(proxy=proxy, backends=backends, start=False)
    return p, p.check()


def assert_counts_match(r) -> None:
    """The summary counts exactly the finding lines printed."""
    errors, warnings, last = summary(r)
    assert errors == len(findings(r, "error")), f"{last}\n{out_of(r)}"
    assert warnings == len(findings(r, "warning")), f"{last}\n{out_of(r)}"


# --------------------------------------------------------------------------
# ftpsgate -t: the report
# --------------------------------------------------------------------------

def test_check_report_names_every_certificate_listener_and_host(make_proxy, alpha, beta,
                                                                certs):
    p, r = run_check(make_proxy, alpha, beta, certs)
    out = r.stdout
    assert r.returncode == 0, out_of(r)
    assert findings(r, "error") == [] and findings(r, "warning") == [], out
    errors, warnings, last = summary(r)
    assert (errors, warnings) == (0, 0), last
    assert str(p.conf_path) in last and "can serve" in last, last
    central, a, b = certs.central(), certs.alpha(), certs.beta()
    # Each certificate: file and label, subject, SANs, issuer, notAfter and days left.
    for c, label, cn in ((central, "central certificate", "proxy.test"),
                         (a, "site alpha", "ftp.alpha.test"),
                         (b, "site beta", "ftp.beta.test")):
        m = re.search(rf"^certificate {re.escape(str(c.cert))} \({label}\)\n"
                      rf"\s+subject\s+CN ?= ?{re.escape(cn)}\n"
                      rf"\s+SANs\s+(.*)\n"
                      rf"\s+issuer\s+CN ?= ?ftpsgate test CA\n"
                      rf"\s+notAfter\s+(\d{{4}}-\d\d-\d\d [^(]*)\((\d+) days left\)", out, re.M)
        assert m, f"no description of {label} ({c.cert}):\n{out}"
        assert f"DNS:{cn}" in m.group(1), m.group(0)
        assert 820 <= int(m.group(3)) <= 825, m.group(0)
    assert "DNS:*.alpha.test" in out and "IP:127.0.0.1" in out, out
    # Every listener.
    assert re.search(rf"^\s+{re.escape(p.opts['listen'])} explicit", out, re.M), out
    assert re.search(rf"^\s+{re.escape(p.opts['listen_implicit'])} implicit", out, re.M), out
    # Which certificate a client naming each host (or nothing) gets.
    assert re.search(rf"^\s+\(no name\)\s+->\s+{re.escape(str(central.cert))}", out, re.M), out
    for host, c, site in (("ftp.alpha.test", a, "alpha"), ("*.alpha.test", a, "alpha"),
                          ("ftp.beta.test", b, "beta")):
        assert re.search(rf"^\s+{re.escape(host)}\s+->\s+{re.escape(str(c.cert))} "
                         rf"\(site {site}\), covered$", out, re.M), f"{host}:\n{out}"


# --------------------------------------------------------------------------
# ftpsgate -t: configuration errors (exit 1), site errors (exit 3), and
# warnings for chains (DESIGN.md, "Certificates")
# --------------------------------------------------------------------------

# case -> what differs from the good configuration, and `words`: what ONE
# finding line must hold. alpha_cert: "x:NAME" (an extra certificate from
# xc), "mismatch" (alpha's certificate with another key), ("cert"|"key",
# PATH) (alpha's pair with that part replaced); proxy_cert: "x:NAME" as the
# central one, ("cert"|"key", PATH) the central pair with that part
# replaced; alpha_hosts/beta_hosts; proxy: [proxy] overrides. In strings,
# {a}/{b}/{central} are the usual certificates' files, {x:NAME} an extra
# one's, {garbage} the non-PEM file, {mismatch_key} the key that fits nothing.
# `exit`: 1 (a configuration error: -t fails, start-up refuses), 3 (a site
# error: site alpha is degraded, -t says so, start-up serves every site) or
# 0 (a warning); `kind`: the finding's prefix.
CHECK_CASES = {
    "site_certificate_missing": dict(
        exit=3, kind="error", alpha_cert=("cert", "/nonexistent/t4/site.crt"),
        words=["/nonexistent/t4/site.crt", "cannot read", "alpha"]),
    "site_certificate_not_pem": dict(
        exit=3, kind="error", alpha_cert=("cert", "{garbage}"),
        words=["{garbage}", "site alpha", "no PEM certificate"]),
    "site_key_not_pem": dict(
        exit=3, kind="error", alpha_cert=("key", "{garbage}"),
        words=["{garbage}", "site alpha", "cannot read the private key"]),
    "site_key_does_not_match": dict(
        exit=3, kind="error", alpha_cert="mismatch",
        words=["{mismatch_key}", "site alpha", "does not match", "{a}"]),
    "site_expired": dict(
        exit=3, kind="error", alpha_cert="x:expired",
        words=["{x:expired}", "site alpha", "expired on 2021-01-01"]),
    "site_not_yet_valid": dict(
        exit=3, kind="error", alpha_cert="x:future",
        words=["{x:future}", "site alpha", "not valid yet", "2040-01-01"]),
    "site_host_not_covered": dict(
        exit=3, kind="error", alpha_cert="x:alpha_ftp_only",
        words=["{x:alpha_ftp_only}", "site alpha", "host *.alpha.test",
               "not covered by the site's certificate"]),
    "site_host_not_covered_plain_name": dict(
        exit=3, kind="error", degraded="beta", beta_hosts=["ftp.beta.test", "files.beta.test"],
        words=["{b}", "site beta", "host files.beta.test",
               "not covered by the site's certificate"]),
    # RFC 6125: '*.alpha.test' in a certificate covers one label only.
    "site_wildcard_two_labels_down": dict(
        exit=3, kind="error", alpha_hosts=["ftp.alpha.test", "*.sub.alpha.test"],
        words=["{a}", "site alpha", "host *.sub.alpha.test",
               "not covered by the site's certificate"]),
    "central_expired": dict(
        exit=1, kind="error", proxy_cert="x:central_expired",
        words=["{x:central_expired}", "central certificate", "expired on 2021-01-01"]),
    "central_not_yet_valid": dict(
        exit=1, kind="error", proxy_cert="x:central_future",
        words=["{x:central_future}", "central certificate", "not valid yet"]),
    "central_key_does_not_match": dict(
        exit=1, kind="error", proxy_cert=("key", "{mismatch_key}"),
        words=["{mismatch_key}", "central certificate", "does not match", "{central}"]),
    "central_certificate_not_pem": dict(
        exit=1, kind="error", proxy_cert=("cert", "{garbage}"),
        words=["{garbage}", "central certificate", "no PEM certificate"]),
    # Private CAs are common and their clients trust them: a warning.
    "site_chain_lacks_intermediate": dict(
        exit=0, kind="warning", alpha_cert="x:leaf_no_chain",
        words=["{x:leaf_no_chain}", "site alpha", "the chain does not verify"]),
    # Without ca_file the private test CA is in no store.
    "central_chain_unknown_ca": dict(
        exit=0, kind="warning", proxy={"ca_file": None},
        words=["{central}", "central certificate", "the chain does not verify"]),
}


def _resolve(certs, xc, s: str) -> str:
    def one(m):
        k = m.group(1)
        if k.startswith("x:"):
            return str(xc[k[2:]].cert)
        return {"a": str(certs.alpha().cert), "b": str(certs.beta().cert),
                "central": str(certs.central().cert), "garbage": str(xc["garbage"]),
                "mismatch_key": str(certs.mismatched_key("alpha").key)}[k]
    return re.sub(r"\{([^}]+)\}", one, s)


def _replaced(certs, xc, base: Cert, spec: tuple) -> Cert:
    part, path = spec
    path = Path(_resolve(certs, xc, path))
    return (Cert("t4-broken", path, base.key) if part == "cert"
            else Cert("t4-broken", base.cert, path))


def _case_args(certs, xc, case: dict) -> dict:
    kw = {}
    ac = case.get("alpha_cert")
    if ac == "mismatch":
        kw["alpha_cert"] = certs.mismatched_key("alpha")
    elif isinstance(ac, tuple):
        kw["alpha_cert"] = _replaced(certs, xc, certs.alpha(), ac)
    elif isinstance(ac, str) and ac.startswith("x:"):
        kw["alpha_cert"] = xc[ac[2:]]
    for k in ("alpha_hosts", "beta_hosts"):
        if k in case:
            kw[k] = case[k]
    proxy = dict(case.get("proxy", {}))
    pc = case.get("proxy_cert")
    if isinstance(pc, tuple):
        c = _replaced(certs, xc, certs.central(), pc)
        proxy.update(certificate=str(c.cert), private_key=str(c.key))
    elif pc is not None:
        c = xc[pc[2:]]
        proxy.update(certificate=str(c.cert), private_key=str(c.key))
    kw["proxy"] = proxy or None
    return kw


@pytest.mark.parametrize("case", list(CHECK_CASES))
def test_check_finding(make_proxy, alpha, beta, certs, xc, case):
    spec = CHECK_CASES[case]
    p, r = run_check(make_proxy, alpha, beta, certs, **_case_args(certs, xc, spec))
    assert r.returncode == spec["exit"], \
        f"{case}: exit {r.returncode}, expected {spec['exit']}:\n{out_of(r)}"
    words = [_resolve(certs, xc, w) for w in spec["words"]]
    finding_with(r, spec["kind"], *words)
    errors, _, last = summary(r)
    assert str(p.conf_path) in last, last
    assert_counts_match(r)
    if spec["exit"] == 1:
        assert errors >= 1 and "cannot serve" in last, last
        # A configuration error refuses to start, as -t said.
        s = h.run([str(h.PROXY_BIN), "-c", str(p.conf_path)], timeout=10)
        assert s.returncode == 1, f"{case}: start-up exit {s.returncode}:\n{out_of(s)}"
    elif spec["exit"] == 3:
        site = spec.get("degraded", "alpha")
        assert errors >= 1 and "can serve" in last and "cannot" not in last, last
        assert re.search(rf"1 site degraded \({site}\)", last), last
    else:
        assert errors == 0 and last.endswith("the configuration can serve"), last


def test_check_intermediate_appended_is_ok(make_proxy, alpha, beta, certs, xc):
    """The same leaf as site_chain_lacks_intermediate, with the intermediate
    after it in the file: no finding at all."""
    p, r = run_check(make_proxy, alpha, beta, certs, alpha_cert=xc["leaf_chain"])
    assert r.returncode == 0, out_of(r)
    assert findings(r, "error") == [] and findings(r, "warning") == [], out_of(r)
    assert summary(r)[:2] == (0, 0)


@pytest.mark.parametrize("which", ["expired", "future"])
def test_check_date_problem_is_reported_once(make_proxy, alpha, beta, certs, xc, which):
    """An expired (or not yet valid) certificate whose chain is fine gets its
    date finding and nothing else: no second error telling the operator to
    fix a chain that is not broken ("put the intermediate certificates after
    the leaf")."""
    p, r = run_check(make_proxy, alpha, beta, certs, alpha_cert=xc[which])
    assert r.returncode == 3, out_of(r)
    errs = findings(r, "error")
    assert len(errs) == 1, "expected exactly one error:\n" + "\n".join(errs)


def test_check_site_certificate_finding_names_the_host(make_proxy, alpha, beta, certs, xc):
    """DESIGN: every finding names the file, the site AND the host concerned.
    An expired site certificate concerns the site's host names."""
    p, r = run_check(make_proxy, alpha, beta, certs, alpha_cert=xc["expired"])
    line = finding_with(r, "error", str(xc["expired"].cert), "site alpha", "expired on")
    assert any(host in line for host in ALPHA_HOSTS), \
        f"the expired-certificate error names no host of site alpha: {line}"


# --------------------------------------------------------------------------
# ftpsgate -t: each warning (exit 0)
# --------------------------------------------------------------------------

def test_check_warning_site_expires_within_21_days(make_proxy, alpha, beta, certs, xc):
    p, r = run_check(make_proxy, alpha, beta, certs, alpha_cert=xc["soon"])
    assert r.returncode == 0, out_of(r)
    line = finding_with(r, "warning", str(xc["soon"].cert), "site alpha", "expires on")
    assert re.search(r"in (9|10) days", line), line
    assert findings(r, "error") == [], out_of(r)
    assert summary(r)[:2] == (0, 1)
    assert "can serve" in summary(r)[2]


def test_check_warning_central_expires_within_21_days(make_proxy, alpha, beta, certs, xc):
    c = xc["central_soon"]
    p, r = run_check(make_proxy, alpha, beta, certs,
                     proxy={"certificate": str(c.cert), "private_key": str(c.key)})
    assert r.returncode == 0, out_of(r)
    line = finding_with(r, "warning", str(c.cert), "central certificate", "expires on")
    assert re.search(r"in (9|10) days", line), line
    assert summary(r)[:2] == (0, 1)


def test_check_warning_self_signed(make_proxy, alpha, beta, certs, xc):
    c = xc["self_signed"]
    p, r = run_check(make_proxy, alpha, beta, certs, alpha_cert=c)
    assert r.returncode == 0, out_of(r)
    finding_with(r, "warning", str(c.cert), "site alpha", "self-signed")
    assert findings(r, "error") == [], out_of(r)
    assert summary(r)[:2] == (0, 1)


def test_check_warning_site_without_certificate_not_covered_by_central(
        make_proxy, alpha, beta, certs):
    """DESIGN: a site without its own certificate whose names the central
    one does not cover is a warning, not an error (host|user logins via a
    covered name work)."""
    p, r = run_check(make_proxy, alpha, beta, certs, alpha_cert=None)
    assert r.returncode == 0, out_of(r)
    central = str(certs.central().cert)
    for host in ALPHA_HOSTS:
        finding_with(r, "warning", central, "site alpha", f"host {host}",
                     "not covered by the central certificate")
    assert findings(r, "error") == [], out_of(r)
    assert summary(r)[:2] == (0, 2)
    assert_counts_match(r)


def test_check_warnings_and_errors_together(make_proxy, alpha, beta, certs, xc):
    """One pass reports everything: a warning on one site and a site error
    on the other (exit 3: it can serve, beta degraded), both counted."""
    p, r = run_check(make_proxy, alpha, beta, certs, alpha_cert=xc["soon"],
                     beta_cert=certs.mismatched_key("beta"))
    assert r.returncode == 3, out_of(r)
    finding_with(r, "warning", "site alpha", "expires on")
    finding_with(r, "error", "site beta", "does not match")
    assert_counts_match(r)


# --------------------------------------------------------------------------
# Selection: SNI and HOST before AUTH TLS, ECDSA (beta) and RSA (alpha)
# --------------------------------------------------------------------------

TLS_VERSIONS = {"tls1.2": ssl.TLSVersion.TLSv1_2, "tls1.3": ssl.TLSVersion.TLSv1_3}


@pytest.mark.parametrize("tls", list(TLS_VERSIONS))
@pytest.mark.parametrize("how", ["sni", "early_host"])
@pytest.mark.parametrize("site,name,oid", [("alpha", "ftp.alpha.test", OID_RSA),
                                           ("beta", "ftp.beta.test", OID_EC)],
                         ids=["alpha_rsa", "beta_ecdsa"])
def test_site_certificate_on_control_and_data(proxy, certs, site, name, oid, how, tls,
                                              proxy_log_on_failure):
    want = getattr(certs, site)()
    assert oid in want.der, "the test certificate has not the key type the test is about"
    # Routed by the SNI name or the HOST: no host part in USER.
    c = h.login(proxy, certs, "anonymous", sni=name if how == "sni" else None,
                early_host=name if how == "early_host" else None,
                tls_version=TLS_VERSIONS[tls])
    try:
        assert c.tls_version() == {"tls1.2": "TLSv1.2", "tls1.3": "TLSv1.3"}[tls]
        assert c.peer_cert_der() == want.der, "control connection: not the site's certificate"
        assert h.retr_bytes(c, f"/{site}-only.txt") == CONTENT[site]
        assert h.retr_bytes(c, f"/{site}-only.txt") == CONTENT[site]
        assert c.data_certs == [want.der, want.der], \
            "data connections must show the control connection's certificate"
        assert all(c.data_session_reused), c.data_session_reused
    finally:
        c.close_quietly()


def test_no_name_gets_central_on_control_and_data(proxy, certs, proxy_log_on_failure):
    h.check_served(proxy, certs, "ftp.beta.test|anonymous", certs.central().der, "/beta-only.txt",
                   CONTENT["beta"])


def test_sni_selection_implicit_listener(proxy, certs, proxy_log_on_failure):
    h.check_served(proxy, certs, "anonymous", certs.alpha().der, "/alpha-only.txt",
                   CONTENT["alpha"], sni="www.alpha.test", implicit=True)


# --------------------------------------------------------------------------
# Start-up and reload
# --------------------------------------------------------------------------

def test_expired_site_certificate_at_startup_is_logged_and_others_serve(
        make_proxy, alpha, beta, certs, xc):
    expired = xc["expired"]
    p = make_proxy(backends={"alpha": backend_section(alpha, ALPHA_HOSTS, expired),
                             "beta": backend_section(beta, BETA_HOSTS, certs.beta())})
    wait_started(p)
    log = p.log_text()
    assert re.search(r"^\S+ error ev=certificate_check .*"
                     + re.escape(str(expired.cert)) + r": site alpha: expired on", log, re.M), log
    # Beta, by SNI: its own certificate, on control and data.
    h.check_served(p, certs, "anonymous", certs.beta().der, "/beta-only.txt",
                   CONTENT["beta"], sni="ftp.beta.test")
    # Alpha itself through the central certificate (USER host|user).
    h.check_served(p, certs, "ftp.alpha.test|anonymous", certs.central().der, "/alpha-only.txt",
                   CONTENT["alpha"])


def test_reload_logs_certificate_findings_and_applies(make_proxy, alpha, beta, certs, xc):
    """A reload to a certificate that loads but is expired: applied (it is
    not 'cannot be loaded'), the error logged naming the site, beta serves."""
    p = make_proxy()
    wait_started(p)
    p.backends["alpha"] = backend_section(alpha, ALPHA_HOSTS, xc["expired"])
    p.write_config()
    log = sighup_and_wait(p)
    assert re.search(r"^\S+ error ev=certificate_check .*site alpha: expired on", log, re.M), log
    c = h.login(p, certs, "anonymous", sni="ftp.beta.test")
    try:
        assert c.peer_cert_der() == certs.beta().der
    finally:
        c.close_quietly()


def test_sighup_replaces_central_certificate_open_session_keeps_old(
        make_proxy, certs):
    old = certs.central()
    new = cert_like_central(certs, "t4-central-new")
    assert new.der != old.der
    p = make_proxy()
    wait_started(p)
    a = h.login(p, certs, "ftp.alpha.test|anonymous")
    try:
        assert a.peer_cert_der() == old.der
        assert h.retr_bytes(a, "/alpha-only.txt") == CONTENT["alpha"]
        # Point the configuration at the new central certificate; SIGHUP.
        p.opts.update(certificate=str(new.cert), private_key=str(new.key))
        p.write_config()
        sighup_and_wait(p)
        # A new session gets the new certificate, on control and data.
        b = h.login(p, certs, "ftp.beta.test|anonymous")
        try:
            assert b.peer_cert_der() == new.der, "a new session must see the new certificate"
            assert h.retr_bytes(b, "/beta-only.txt") == CONTENT["beta"]
            assert b.data_certs == [new.der]
        finally:
            b.close_quietly()
        # The session opened before the reload still transfers, and its data
        # connection still shows the certificate of its control connection.
        assert a.cmd("NOOP").code == 200
        assert h.retr_bytes(a, "/alpha-only.txt") == CONTENT["alpha"]
        assert a.data_certs == [old.der, old.der], "data certificate changed under the session"
        assert all(a.data_session_reused), a.data_session_reused
        assert a.cmd("SIZE /alpha-only.txt").code == 213
    finally:
        a.close_quietly()


@pytest.mark.parametrize("breakage", ["ini_syntax", "key_mismatch", "certificate_missing"])
def test_reload_that_cannot_load_keeps_old_configuration(make_proxy, certs, breakage):
    """The new configuration also names a new central certificate; it fails
    to load, so the old certificate (and everything else) stays in force.
    Fixing the file and reloading again then applies it."""
    old, new = certs.central(), cert_like_central(certs, "t4-central-new")
    p = make_proxy()
    wait_started(p)
    p.opts.update(certificate=str(new.cert), private_key=str(new.key))
    if breakage == "ini_syntax":
        p.extra_ini = "this line is not INI\n"
    elif breakage == "key_mismatch":
        p.opts["private_key"] = str(old.key)
    else:
        p.opts["certificate"] = "/nonexistent/t4/central.crt"
    p.write_config()
    log = sighup_and_wait(p, "reload_failed")
    assert "ev=config_error" in log, log
    assert "ev=reloaded" not in log, log
    assert p.alive()
    for port, implicit in ((p.port, False), (p.implicit_port, True)):
        c = h.login(p, certs, "ftp.alpha.test|anonymous", implicit=implicit)
        try:
            assert c.peer_cert_der() == old.der, "the failed reload changed the certificate"
            assert h.retr_bytes(c, "/alpha-only.txt") == CONTENT["alpha"]
            assert c.data_certs == [old.der]
        finally:
            c.close_quietly()
    # Repaired: the next SIGHUP applies it.
    p.extra_ini = ""
    p.opts.update(certificate=str(new.cert), private_key=str(new.key))
    p.write_config()
    sighup_and_wait(p)
    c = h.login(p, certs, "ftp.alpha.test|anonymous")
    try:
        assert c.peer_cert_der() == new.der
    finally:
        c.close_quietly()


def test_reload_adds_and_removes_listeners(make_proxy, certs):
    stay, gone, added, added_implicit = (h.free_port() for _ in range(4))
    p = make_proxy(proxy={"listen": f"127.0.0.1:{stay}, 127.0.0.1:{gone}",
                          "listen_implicit": None})
    wait_started(p)
    inode = listen_inode(stay)
    assert inode is not None and h.is_listening(gone)
    # A session through the listener that goes away.
    s = h.login(p, certs, "ftp.alpha.test|anonymous", port=gone)
    try:
        assert h.retr_bytes(s, "/alpha-only.txt") == CONTENT["alpha"]
        with Hammer(stay) as hammer:
            hammer.wait_more(3)
            p.opts["listen"] = f"127.0.0.1:{stay}, 127.0.0.1:{added}"
            p.opts["listen_implicit"] = f"127.0.0.1:{added_implicit}"
            p.write_config()
            log = sighup_and_wait(p)
            hammer.wait_more(3)
        assert hammer.failures == [], hammer.failures[:5]
        assert hammer.ok >= 6
        # The listener that stayed is the very same socket.
        assert listen_inode(stay) == inode, "the listener that stays was reopened"
        assert re.search(rf"ev=listener_closed listen=127\.0\.0\.1:{gone}\b", log), log
        assert re.search(rf"ev=listening listen=127\.0\.0\.1:{added} mode=explicit", log), log
        assert re.search(rf"ev=listening listen=127\.0\.0\.1:{added_implicit} mode=implicit",
                         log), log
        assert not re.search(rf"ev=(listening|listener_closed) listen=127\.0\.0\.1:{stay}\b",
                             log), "the listener that stays was closed or reopened:\n" + log
        # Removed: nobody listens; added: both serve.
        assert not h.is_listening(gone)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((h.LOOPBACK, gone), timeout=3).close()
        for port, implicit, sni in ((added, False, "ftp.beta.test"),
                                    (added_implicit, True, "ftp.beta.test")):
            h.check_served(p, certs, "anonymous", certs.beta().der, "/beta-only.txt",
                           CONTENT["beta"], port=port, implicit=implicit, sni=sni)
        # The session that came through the removed listener goes on.
        assert s.cmd("NOOP").code == 200
        assert h.retr_bytes(s, "/alpha-only.txt") == CONTENT["alpha"]
        assert s.data_certs == [certs.central().der] * 2
    finally:
        s.close_quietly()


# --------------------------------------------------------------------------
# Certificate files changed on disk: reload without a signal
# --------------------------------------------------------------------------

def _write(path: Path, data: bytes) -> None:
    """Rewrite a file in place (truncate, write), as `cp` or an editor would."""
    with open(path, "wb") as f:
        f.write(data)


def _replace(path: Path, data: bytes) -> None:
    """Write a temporary file beside path, then rename it over path."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _k8s_layout(d: Path, c: Cert, version: str) -> None:
    """A Kubernetes secret volume: ..VERSION/tls.{crt,key}, ..data -> ..VERSION,
    tls.crt -> ..data/tls.crt. A new version is swapped in atomically by
    renaming a new ..data symlink over the old one."""
    v = d / f"..{version}"
    v.mkdir()
    shutil.copyfile(c.cert, v / "tls.crt")
    shutil.copyfile(c.key, v / "tls.key")
    tmp = d / "..data_tmp"
    tmp.symlink_to(v.name)
    os.replace(tmp, d / "..data")
    for f in ("tls.crt", "tls.key"):
        if not (d / f).is_symlink():
            (d / f).symlink_to(f"..data/{f}")


@pytest.mark.parametrize("how", ["rewrite_in_place", "rename_over", "k8s_data_symlink"])
def test_certificate_changed_on_disk_is_picked_up(make_proxy, alpha, beta, certs, tmp_path, how):
    old = certs.alpha()
    new = cert_like_alpha(certs, "t4-alpha-renewed")
    d = tmp_path / "live"
    d.mkdir()
    if how == "k8s_data_symlink":
        _k8s_layout(d, old, "2024_01")
        live = Cert("live", d / "tls.crt", d / "tls.key")
    else:
        live = Cert("live", d / "alpha.crt", d / "alpha.key")
        shutil.copyfile(old.cert, live.cert)
        shutil.copyfile(old.key, live.key)
    p = make_proxy(backends={"alpha": backend_section(alpha, ALPHA_HOSTS, live),
                             "beta": backend_section(beta, BETA_HOSTS, certs.beta())})
    wait_started(p)
    a = h.login(p, certs, "anonymous", sni="ftp.alpha.test")
    try:
        assert a.peer_cert_der() == old.der
        mark = p.log_mark()
        # certbot-like: the key first, the certificate a moment later (under
        # the 1.5 s debounce), so that they must be loaded together.
        if how == "k8s_data_symlink":
            _k8s_layout(d, new, "2024_02")
        else:
            put = _write if how == "rewrite_in_place" else _replace
            put(live.key, new.key.read_bytes())
            time.sleep(0.4)
            put(live.cert, new.cert.read_bytes())
        p.wait_log(r'ev=reloaded trigger="files changed"', mark, timeout=T_WATCH)
        log = p.log_since(mark)
        assert "reload_failed" not in log, \
            "the key was loaded without its certificate (no debounce):\n" + log
        assert "ev=certificate_check" not in log, log
        c = h.login(p, certs, "anonymous", sni="ftp.alpha.test")
        try:
            assert c.peer_cert_der() == new.der, "the renewed certificate is not served"
            assert h.retr_bytes(c, "/alpha-only.txt") == CONTENT["alpha"]
            assert c.data_certs == [new.der]
        finally:
            c.close_quietly()
        # The session from before keeps its certificate on new data connections.
        assert h.retr_bytes(a, "/alpha-only.txt") == CONTENT["alpha"]
        assert a.data_certs == [old.der]
    finally:
        a.close_quietly()
    assert p.log_since(mark).count("ev=reloaded") == 1, p.log_since(mark)
