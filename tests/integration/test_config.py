"""Issue 2 §3 and the command line: `ftpsgate -t -c FILE` and start-up with
real files (exit codes, messages naming file, line and key), list keys that
accumulate, and a clean exit on SIGTERM.

DESIGN.md: exit 0 on a clean shutdown, 1 on a configuration error, 2 on bad
command-line usage; `-t` exits 0 when it can serve, 1 when not; errors name
the file, the line, the key and what was expected."""

from __future__ import annotations

import re
import signal

import pytest

import harness as h
from conftest import ALPHA_HOSTS, BETA_HOSTS
from harness import Proxy, backend_section


def _proxy(workdir, certs, alpha, beta, proxy=None, backends=None, extra_ini=""):
    if backends is None:
        backends = {"alpha": backend_section(alpha, ALPHA_HOSTS, certs.alpha()),
                    "beta": backend_section(beta, BETA_HOSTS, certs.beta())}
    return Proxy(workdir, certs.central(), backends, proxy=proxy, extra_ini=extra_ini,
                 ca=certs.ca)


def _line_of(text: str, needle: str) -> int:
    for i, l in enumerate(text.splitlines(), 1):
        if needle in l:
            return i
    raise AssertionError(f"{needle!r} not in config")


def _out(r) -> str:
    return r.stdout + r.stderr


def test_check_valid_config(workdir, certs, alpha, beta):
    p = _proxy(workdir, certs, alpha, beta)
    r = p.check()
    assert r.returncode == 0, _out(r)


def test_version_and_usage():
    r = h.run([str(h.PROXY_BIN), "--version"], timeout=10)
    assert r.returncode == 0, _out(r)
    out = _out(r).lower()
    assert "openssl" in out and "libuv" in out, out
    r = h.run([str(h.PROXY_BIN), "--no-such-option"], timeout=10)
    assert r.returncode == 2, _out(r)


@pytest.mark.parametrize("case", [
    "unknown_key", "bad_number", "bad_bool", "bad_address", "bad_port_range",
    "missing_cert", "unknown_default_backend", "hostname_twice",
])
def test_check_reports_errors_with_file_line_key(workdir, certs, alpha, beta, case):
    proxy, backends, key, needle = None, None, None, None
    if case == "unknown_key":
        proxy, key = {"no_such_key": "1"}, "no_such_key"
    elif case == "bad_number":
        proxy, key = {"login_timeout": "soon"}, "login_timeout"
    elif case == "bad_bool":
        proxy, key = {"route_by_sni": "perhaps"}, "route_by_sni"
    elif case == "bad_address":
        proxy, key = {"listen": "127.0.0.1:99999"}, "listen"
    elif case == "bad_port_range":
        proxy, key = {"passive_ports": "50010-50000"}, "passive_ports"
    elif case == "missing_cert":
        proxy, key = {"certificate": "/nonexistent/central.crt"}, "certificate"
    elif case == "unknown_default_backend":
        proxy, key = {"default_backend": "gamma"}, "default_backend"
    elif case == "hostname_twice":
        backends = {"alpha": backend_section(alpha, ALPHA_HOSTS),
                    "beta": backend_section(beta, ["ftp.beta.test", "ftp.alpha.test"])}
        key, needle = "hostnames", "ftp.alpha.test"
    p = _proxy(workdir, certs, alpha, beta, proxy=proxy, backends=backends)
    r = p.check()
    out = _out(r)
    assert r.returncode == 1, out
    assert str(p.conf_path) in out or p.conf_path.name in out, out
    assert key in out, out
    text = p.ini_text()
    if needle is None:
        lines = [_line_of(text, f"{key} =")]
    else:   # either claim may be the one reported
        lines = [i for i, l in enumerate(text.splitlines(), 1)
                 if l.startswith("hostnames") and needle in l]
    # FILE:LINE, not any ":3" (an address's port would do)
    assert any(re.search(rf"{re.escape(p.conf_path.name)}:{n}(?!\d)", out) for n in lines), \
        f"none of lines {lines} named with the file: {out}"
    # The same config refuses to start, with exit status 1.
    r = h.run([str(h.PROXY_BIN), "-c", str(p.conf_path)], timeout=10)
    assert r.returncode == 1, _out(r)


def test_check_duplicate_backend_name(workdir, certs, alpha, beta):
    extra = f"[backend:alpha]\nhostnames = other.test\naddress = {beta.address}\n"
    p = _proxy(workdir, certs, alpha, beta, extra_ini=extra)
    r = p.check()
    assert r.returncode == 1, _out(r)
    assert "alpha" in _out(r)


def test_check_key_not_matching_certificate(workdir, certs, alpha, beta):
    bad = certs.mismatched_key("alpha")
    p = _proxy(workdir, certs, alpha, beta, backends={
        "alpha": backend_section(alpha, ALPHA_HOSTS, bad),
        "beta": backend_section(beta, BETA_HOSTS)})
    r = p.check()
    assert r.returncode == 3, _out(r)  # a site error: alpha is degraded, the rest serves
    assert "1 site degraded (alpha)" in r.stdout.strip().splitlines()[-1], _out(r)


def test_check_every_problem_in_one_pass(workdir, certs, alpha, beta):
    p = _proxy(workdir, certs, alpha, beta,
               proxy={"login_timeout": "soon", "route_by_sni": "perhaps", "bogus": "1"})
    r = p.check()
    out = _out(r)
    assert r.returncode == 1
    for key in ("login_timeout", "route_by_sni", "bogus"):
        assert key in out, out


def test_overlong_ini_line_is_reported(workdir, certs, alpha, beta):
    """inih cuts lines at 199 characters; the loader must say so (DESIGN)."""
    names = [f"host{i:03d}.alpha-long-names.test" for i in range(12)]
    p = _proxy(workdir, certs, alpha, beta, backends={
        "alpha": backend_section(alpha, ALPHA_HOSTS + names),
        "beta": backend_section(beta, BETA_HOSTS)})
    text = p.ini_text()
    line = _line_of(text, "host000.")
    assert len(text.splitlines()[line - 1]) > 199
    r = p.check()
    out = _out(r)
    assert r.returncode == 1, out
    assert f":{line}" in out or f"line {line}" in out, out


def test_list_keys_accumulate(workdir, certs, alpha, beta):
    """A repeated key and indented continuation lines add to the list."""
    p = Proxy(workdir, certs.central(), {"alpha": backend_section(alpha, ALPHA_HOSTS)},
              ca=certs.ca,
              extra_ini=("[backend:beta]\n"
                         "hostnames = ftp.beta.test\n"
                         "hostnames = b2.beta-other.test\n"
                         "    b3.beta-other.test\n"
                         f"address = {beta.address}\n"))
    assert p.check().returncode == 0
    p.start()
    try:
        for name in ("b2.beta-other.test", "b3.beta-other.test", "ftp.beta.test"):
            with h.ftps(p.port, ca=certs.ca) as c:
                assert c.tls_login(f"{name}|anonymous").code == 230, name
                assert c.cmd("SIZE /beta-only.txt").code == 213
    finally:
        assert p.stop() == 0


def test_sigterm_exits_zero(workdir, certs, alpha, beta):
    p = _proxy(workdir, certs, alpha, beta, proxy={"shutdown_grace": "1"})
    p.start()
    with h.ftps(p.port, ca=certs.ca) as c:
        assert c.tls_login("ftp.alpha.test|anonymous").code == 230
        p.signal(signal.SIGTERM)
        # A running session may finish for up to shutdown_grace seconds.
        p.proc.wait(1 + 5)
    assert p.proc.returncode == 0, p.log_text()[-2000:]
    p.stop()
