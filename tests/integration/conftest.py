"""pytest fixtures for the ftpsgate integration tests (see harness.py).

Session-wide: one certificate set (throw-away CA, central, alpha, beta) and
two plaintext vsftpd backends, `alpha` and `beta`, with distinct content.
Per module: `proxy`, an ftpsgate in front of both with each site's own
certificate. Per test: `make_proxy(...)` for special configurations.

Every proxy a fixture started is checked when it is torn down: it must still
be running (no crash during the test), exit 0 on SIGTERM within the grace
time, and have no sanitizer report in its log. On a failing test the tail of
each proxy's log is printed, so the report shows what the proxy said.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import CertFactory, Proxy, Vsftpd, backend_section  # noqa: E402

ALPHA_HOSTS = ["ftp.alpha.test", "*.alpha.test"]
BETA_HOSTS = ["ftp.beta.test"]


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


def _failed(request) -> bool:
    node = request.node
    return any(getattr(getattr(node, f"rep_{w}", None), "failed", False)
               for w in ("setup", "call"))


@pytest.fixture(scope="session")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("work")


@pytest.fixture(scope="session")
def certs(tmp_path_factory) -> CertFactory:
    f = CertFactory(tmp_path_factory.mktemp("certs"))
    f.central()
    f.alpha()
    f.beta()
    return f


@pytest.fixture(scope="session")
def ca(certs):
    return certs.ca


def _start_vsftpd(workdir, name, **kw):
    v = Vsftpd(workdir, name, **kw)
    v.start()
    return v


@pytest.fixture(scope="session")
def alpha(workdir):
    v = _start_vsftpd(workdir, "alpha")
    yield v
    v.stop()


@pytest.fixture(scope="session")
def beta(workdir):
    v = _start_vsftpd(workdir, "beta")
    yield v
    v.stop()


def default_backends(alpha: Vsftpd, beta: Vsftpd, certs: CertFactory,
                     own_certs: bool = True) -> dict:
    """[backend:alpha] and [backend:beta]; each with its own certificate
    unless own_certs=False. No health checks: tests count the connections
    the backends see (test_backends.py tests the checks)."""
    return {
        "alpha": backend_section(alpha, ALPHA_HOSTS, certs.alpha() if own_certs else None,
                                 health_check=0),
        "beta": backend_section(beta, BETA_HOSTS, certs.beta() if own_certs else None,
                                health_check=0),
    }


def proxy_problems(p: Proxy) -> list[str]:
    """Stop p and say what was wrong with how it lived and died."""
    problems = []
    if p.proc is not None and not p.alive():
        problems.append(f"ftpsgate died during the test (exit {p.proc.returncode})")
    was_running = p.proc is not None and p.alive()
    rc = p.stop()
    if was_running and p.killed_after_timeout:
        problems.append("ftpsgate did not exit within the timeout after SIGTERM")
    elif was_running and rc != 0:
        problems.append(f"ftpsgate exited {rc} after SIGTERM, expected 0")
    san = p.sanitizer_reports()
    if san:
        problems.append("sanitizer reports:\n" + "\n".join(san[:20]))
    return problems


def _log_tail(p: Proxy, n: int = 60) -> str:
    lines = p.log_text().splitlines()
    return "\n".join(lines[-n:])


class ProxyFactory:
    def __init__(self, workdir, certs, alpha, beta):
        self.workdir, self.certs, self.alpha, self.beta = workdir, certs, alpha, beta
        self.made: list[Proxy] = []

    def __call__(self, proxy: dict | None = None, backends: dict | None = None,
                 start: bool = True, own_certs: bool = True, **kw) -> Proxy:
        if backends is None:
            backends = default_backends(self.alpha, self.beta, self.certs, own_certs)
        kw.setdefault("ca", self.certs.ca)
        p = Proxy(self.workdir, self.certs.central(), backends, proxy=proxy, **kw)
        self.made.append(p)
        if start:
            p.start()
        return p


@pytest.fixture
def make_proxy(request, workdir, certs, alpha, beta):
    """make_proxy(proxy={...overrides}, backends={...}, start=True) -> Proxy."""
    f = ProxyFactory(workdir, certs, alpha, beta)
    yield f
    problems = []
    for p in f.made:
        if _failed(request):
            print(f"\n--- ftpsgate log ({p.log_path}) ---\n{_log_tail(p)}\n--- config ---\n"
                  f"{p.ini_text()}")
        problems += proxy_problems(p)
    if problems:
        pytest.fail("; ".join(problems), pytrace=False)


@contextlib.contextmanager
def running(p: Proxy):
    """Starts p for a fixture's lifetime; at the end, fails the fixture with
    its log tail if it did not live and die well (proxy_problems())."""
    p.start()
    try:
        yield p
    finally:
        problems = proxy_problems(p)
        if problems:
            print(f"\n--- ftpsgate log ---\n{_log_tail(p, 200)}")
            pytest.fail("; ".join(problems), pytrace=False)


@contextlib.contextmanager
def log_on_failure(request, p: Proxy):
    """Prints what a shared proxy logged during the test if the test fails."""
    mark = p.log_mark()
    yield p
    if _failed(request):
        print(f"\n--- ftpsgate log (this test) ---\n{p.log_since(mark)[-12000:]}")


@pytest.fixture(scope="module")
def proxy(request, workdir, certs, alpha, beta):
    """The module's shared ftpsgate: alpha and beta, each with its own
    certificate, explicit and implicit listeners on 127.0.0.1."""
    with running(Proxy(workdir, certs.central(), default_backends(alpha, beta, certs),
                       ca=certs.ca)) as p:
        yield p


@pytest.fixture
def proxy_log_on_failure(request, proxy):
    """Use in tests on the shared proxy to print its log if the test fails."""
    with log_on_failure(request, proxy):
        yield proxy


def pytest_configure(config):
    config.addinivalue_line("markers", "soak: the bounded soak test (SOAK_SECONDS, default "
                                       "120); leave it out with -m 'not soak'")
