"""Issue 10: edge cases a user or an operator would hit.

* Command lines of 4,093 to 4,096 bytes: the proxy takes them (its limit is
  4,096), but vsftpd takes at most 4,094 with the CRLF, answers 500 and
  closes. Lines the backend cannot take get the proxy's own 500, and the
  session goes on.
* Metrics that are missing until first used: every per-backend and
  per-reason series is there at 0 from start-up, one for a backend a reload
  adds, none for one it removes.
"""

from __future__ import annotations

import signal

import pytest

import harness as h
from conftest import ALPHA_HOSTS, BETA_HOSTS
from harness import backend_section
from test_ops import metric, samples, scrape, series_of


@pytest.mark.parametrize("n", [4090, 4092, 4093, 4094, 4095, 4096])
def test_long_command_line_never_ends_the_session(proxy, certs, n):
    c = h.login(proxy, certs, "ftp.alpha.test|anonymous")
    try:
        line = "SIZE /" + "a" * (n - 6)
        assert len(line) == n
        r = c.cmd(line)
        assert r.code in (550, 500), r  # no such file, or too long: never 421
        if n > 4092:
            assert r.code == 500 and "too long" in str(r), r
        assert c.cmd("NOOP").code == 200
        assert c.cmd("SIZE /alpha-only.txt").code == 213
    finally:
        c.close_quietly()


def test_line_over_4096_still_gets_500(proxy, certs):
    c = h.login(proxy, certs, "ftp.alpha.test|anonymous")
    try:
        c.send_raw(b"SIZE /" + b"a" * 5000 + b"\r\n")
        r = c.reply()
        assert r.code == 500, r
        assert c.cmd("NOOP").code == 200
    finally:
        c.close_quietly()


BACKEND_FAMILIES = [
    ("ftpsgate_sessions_total", {}),
    ("ftpsgate_backend_sessions_active", {}),
    ("ftpsgate_logins_failed_total", {}),
    ("ftpsgate_backend_connect_failures_total", {}),
    ("ftpsgate_bytes_total", {"direction": "download"}),
    ("ftpsgate_bytes_total", {"direction": "upload"}),
    ("ftpsgate_transfers_total", {"result": "ok"}),
    ("ftpsgate_transfers_total", {"result": "failed"}),
    ("ftpsgate_transfers_total", {"result": "aborted"}),
    ("ftpsgate_transfers_total", {"result": "refused"}),
    ("ftpsgate_site_degraded", {}),
    ("ftpsgate_certificate_expiry_timestamp_seconds", {}),
]
REASONS = {
    "ftpsgate_data_connections_refused_total": ["address", "second_connection",
                                                "session_reuse", "tls_handshake"],
    "ftpsgate_connections_refused_total": ["max_sessions", "max_sessions_per_ip",
                                           "backend_max_sessions", "proxy_header_invalid",
                                           "proxy_header_timeout", "proxy_source_untrusted"],
    "ftpsgate_reloads_total": ["ok", "failed"],
}


def has_series(s: dict, name: str, **labels) -> bool:
    return (name, tuple(sorted(labels.items()))) in s


def backend_series(s: dict, backend: str) -> list[str]:
    """The backend's series that are there, as 'name{labels}'."""
    out = []
    for name, extra in BACKEND_FAMILIES:
        key = "site" if name in ("ftpsgate_site_degraded",
                                 "ftpsgate_certificate_expiry_timestamp_seconds") else "backend"
        if has_series(s, name, **{key: backend}, **extra):
            out.append(f"{name}{extra}")
    return out


def test_metrics_series_exist_at_zero_from_startup(make_proxy, alpha, beta, certs):
    addr = f"{h.LOOPBACK}:{h.free_port()}"
    p = make_proxy(proxy={"metrics_listen": addr})
    p.wait_log(r"ev=started\b", timeout=h.T_START)
    s = samples(scrape(addr)[0])
    for backend in ("alpha", "beta"):
        assert len(backend_series(s, backend)) == len(BACKEND_FAMILIES), \
            (backend, backend_series(s, backend))
        assert metric(s, "ftpsgate_sessions_total", backend=backend) == 0
    for name, reasons in REASONS.items():
        key = "result" if name == "ftpsgate_reloads_total" else "reason"
        for r in reasons:
            assert has_series(s, name, **{key: r}), (name, r)
            assert metric(s, name, **{key: r}) == 0, (name, r)
    tls = series_of(s, "ftpsgate_tls_handshake_failures_total")
    assert tls and all(v == 0 for v in tls.values()), tls
    # A reload that adds gamma and removes beta.
    p.backends = {"alpha": backend_section(alpha, ALPHA_HOSTS, certs.alpha()),
                  "gamma": backend_section(beta, ["ftp.gamma.test"])}
    p.write_config()
    mark = p.log_mark()
    p.signal(signal.SIGHUP)
    p.wait_log(r"ev=reloaded trigger=SIGHUP", mark, timeout=10)
    s = samples(scrape(addr)[0])
    assert len(backend_series(s, "gamma")) == len(BACKEND_FAMILIES), backend_series(s, "gamma")
    assert backend_series(s, "beta") == [], backend_series(s, "beta")
    assert len(backend_series(s, "alpha")) == len(BACKEND_FAMILIES)
    assert metric(s, "ftpsgate_reloads_total", result="ok") == 1
