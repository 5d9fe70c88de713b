"""Issue 10: one broken site never takes the others down, and -t, start-up
and reload reach the same verdict (DESIGN.md, "Certificates").

A site error (the site's own certificate unreadable, expired, not yet valid,
not matching its key, or not covering one of its names) degrades that site:
start-up and reload go ahead, the site is served with the central
certificate for the names its own cannot serve and still routes, an error is
logged at every load, and the metrics say so. A configuration error (the
central certificate unusable) refuses start-up and reload, as -t says.
"""

from __future__ import annotations

import re
import signal

import pytest

import harness as h
from conftest import ALPHA_HOSTS, BETA_HOSTS
from harness import backend_section
from test_ops import metric, samples, scrape

CONTENT = {"alpha": b"alpha only\n", "beta": b"this file is only on beta\n"}


def metrics_addr() -> str:
    return f"{h.LOOPBACK}:{h.free_port()}"


def check_serving(p, certs, *, alpha_cert: bytes) -> None:
    """Every site and the central certificate serve: beta by SNI with its own
    certificate, alpha by SNI with alpha_cert (the central one when alpha is
    degraded) and routed to alpha, and a client naming nothing gets the
    central certificate; control and data connections alike."""
    h.check_served(p, certs, "anonymous", certs.beta().der, "/beta-only.txt",
                   CONTENT["beta"], sni="ftp.beta.test")
    h.check_served(p, certs, "anonymous", alpha_cert, "/alpha-only.txt",
                   CONTENT["alpha"], sni="ftp.alpha.test", check_hostname=False)
    h.check_served(p, certs, "ftp.beta.test|anonymous", certs.central().der, "/beta-only.txt",
                   CONTENT["beta"])


def degraded_metrics(p) -> dict:
    s = samples(scrape(p.opts["metrics_listen"])[0])
    return {"all": metric(s, "ftpsgate_sites_degraded"),
            "alpha": metric(s, "ftpsgate_site_degraded", site="alpha"),
            "beta": metric(s, "ftpsgate_site_degraded", site="beta")}


def test_site_key_mismatch_at_startup_degrades_only_that_site(make_proxy, alpha, beta, certs):
    """Before issue 10 a site key that did not match its certificate stopped
    start-up (exit 1) for every site."""
    bad = certs.mismatched_key("alpha")
    p = make_proxy(proxy={"metrics_listen": metrics_addr()},
                   backends={"alpha": backend_section(alpha, ALPHA_HOSTS, bad),
                             "beta": backend_section(beta, BETA_HOSTS, certs.beta())})
    p.wait_log(r"ev=started\b", timeout=h.T_START)
    log = p.log_text()
    assert re.search(r"^\S+ error ev=certificate_check .*" + re.escape(str(bad.key))
                     + r": site alpha: the private key does not match", log, re.M), log
    assert re.search(r"^\S+ error ev=sites_degraded sites=1 names=alpha", log, re.M), log
    check_serving(p, certs, alpha_cert=certs.central().der)
    assert degraded_metrics(p) == {"all": 1, "alpha": 1, "beta": 0}
    # -t says the same: exit 3, alpha degraded.
    r = p.check()
    assert r.returncode == 3, r.stdout
    assert "1 site degraded (alpha)" in r.stdout.strip().splitlines()[-1], r.stdout


def test_site_error_by_sighup_is_applied_and_others_serve(make_proxy, alpha, beta, certs):
    """A reload to an expired site certificate goes ahead (reloads_total ok);
    the site is then served with the central certificate, beta keeps its
    own, and the error is logged at the reload."""
    expired = certs.expired("ftp.alpha.test")
    p = make_proxy(proxy={"metrics_listen": metrics_addr()})
    p.wait_log(r"ev=started\b", timeout=h.T_START)
    check_serving(p, certs, alpha_cert=certs.alpha().der)
    assert degraded_metrics(p) == {"all": 0, "alpha": 0, "beta": 0}
    p.backends["alpha"] = backend_section(alpha, ALPHA_HOSTS, expired)
    p.write_config()
    mark = p.log_mark()
    p.signal(signal.SIGHUP)
    p.wait_log(r"ev=reloaded trigger=SIGHUP", mark, timeout=10)
    log = p.log_since(mark)
    assert re.search(r"error ev=certificate_check .*site alpha: expired on", log), log
    assert "ev=reload_failed" not in log, log
    check_serving(p, certs, alpha_cert=certs.central().der)
    assert degraded_metrics(p) == {"all": 1, "alpha": 1, "beta": 0}
    s = samples(scrape(p.opts["metrics_listen"])[0])
    assert metric(s, "ftpsgate_reloads_total", result="ok") == 1
    # Repaired: served with its own again.
    p.backends["alpha"] = backend_section(alpha, ALPHA_HOSTS, certs.alpha())
    p.write_config()
    mark = p.log_mark()
    p.signal(signal.SIGHUP)
    p.wait_log(r"ev=reloaded trigger=SIGHUP", mark, timeout=10)
    check_serving(p, certs, alpha_cert=certs.alpha().der)
    assert degraded_metrics(p) == {"all": 0, "alpha": 0, "beta": 0}


@pytest.mark.parametrize("how", ["startup", "sighup"])
def test_central_error_is_a_configuration_error(make_proxy, alpha, beta, certs, how):
    """The central certificate expired: -t exits 1, start-up refuses, a
    reload is rejected and the generation in force keeps serving."""
    expired = certs.make("t10-central-expired", "proxy.test", dns=["proxy.test", "localhost"],
                         ips=["127.0.0.1"], key_type="ec", startdate="20200101000000Z",
                         enddate="20210101000000Z")
    if how == "startup":
        p = make_proxy(proxy={"certificate": str(expired.cert), "private_key": str(expired.key)},
                       start=False)
        assert p.check().returncode == 1
        r = h.run([str(h.PROXY_BIN), "-c", str(p.write_config())], timeout=10)
        assert r.returncode == 1, r.stderr
        assert re.search(r"error ev=config_error .*central certificate: expired on", r.stderr), \
            r.stderr
        return
    p = make_proxy()
    p.wait_log(r"ev=started\b", timeout=h.T_START)
    p.opts.update(certificate=str(expired.cert), private_key=str(expired.key))
    p.write_config()
    mark = p.log_mark()
    p.signal(signal.SIGHUP)
    p.wait_log(r"ev=reload_failed trigger=SIGHUP", mark, timeout=10)
    check_serving(p, certs, alpha_cert=certs.alpha().der)
