"""Issue 6: operations. The PROXY protocol behind a real HAProxy (Debian's
`haproxy`, TCP mode, `send-proxy-v2` and `send-proxy`), Prometheus metrics,
JSON logs, graceful shutdown, and the scale-out example of config/haproxy/
run as written on loopback (two instances on 127.0.0.1 and 127.0.0.2).

Addresses: HAProxy connects to ftpsgate from 127.0.0.1, so the FTP clients
here use 127.0.0.2 (CLIENT) or 127.0.0.3 as their own source address: a log
line, a limit or a data-connection check that shows or uses 127.0.0.2 took
it from the PROXY header, not from the TCP peer.

Data connections never pass through HAProxy: clients connect to ftpsgate's
passive port directly, from their own address, as in production.
"""

from __future__ import annotations

import csv
import ftplib
import hashlib
import io
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Optional

import pytest

import harness as h
from conftest import ALPHA_HOSTS
from harness import FtpsClient, Vsftpd, backend_section

HAPROXY_BIN = shutil.which("haproxy") or "/usr/sbin/haproxy"
EXAMPLE_DIR = h.ROOT / "config" / "haproxy"

CLIENT = "127.0.0.2"          # the FTP client's own address
CLIENT3 = "127.0.0.3"         # a second client address
OPS_HOST = "ftp.ops.test"
USER = f"{OPS_HOST}|anonymous"
PW = "Ops-Pw-7Qz4kX"          # must never reach a log
SMALL = 1 << 20               # blob.bin
BIG = 24 << 20                # big.bin: long enough to signal in the middle

# The metric families DESIGN.md and issue 6 name, with their label names.
FAMILIES = {
    "ftpsgate_sessions_active": ("gauge", ()),
    "ftpsgate_backend_sessions_active": ("gauge", ("backend",)),
    "ftpsgate_sessions_total": ("counter", ("backend",)),
    "ftpsgate_logins_failed_total": ("counter", ("backend",)),
    "ftpsgate_bytes_total": ("counter", ("backend", "direction")),
    "ftpsgate_transfers_total": ("counter", ("backend", "result")),
    "ftpsgate_tls_handshake_failures_total": ("counter", ("reason",)),
    "ftpsgate_backend_connect_failures_total": ("counter", ("backend",)),
    "ftpsgate_data_connections_refused_total": ("counter", ("reason",)),
    "ftpsgate_connections_refused_total": ("counter", ("reason",)),
    "ftpsgate_reloads_total": ("counter", ("result",)),
    "ftpsgate_certificate_expiry_timestamp_seconds": ("gauge", ("site",)),
}


# --------------------------------------------------------------------------
# The backend: a vsftpd with files big enough to transfer
# --------------------------------------------------------------------------

def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def blobs() -> dict:
    rnd = os.urandom
    return {"blob.bin": rnd(SMALL), "big.bin": rnd(BIG)}


@pytest.fixture(scope="module")
def ops_site(workdir, blobs):
    v = Vsftpd(workdir, "ops", files=dict(blobs), dirs=[], pasv_ports=40)
    v.start()
    yield v
    v.stop()


def ops_backends(ops_site: Vsftpd, **more) -> dict:
    d = {"ops": backend_section(ops_site, [OPS_HOST])}
    d.update(more)
    return d


# --------------------------------------------------------------------------
# HAProxy
# --------------------------------------------------------------------------

class HAProxy:
    """A real haproxy (Debian's package) in the foreground (-db) with a
    given configuration; its runtime API socket answers `show stat`."""

    def __init__(self, workdir: Path, text: str, ports: list, stats_sock: Path):
        self.dir = Path(tempfile.mkdtemp(prefix="haproxy-", dir=workdir))
        self.cfg_path = self.dir / "haproxy.cfg"
        self.log_path = self.dir / "haproxy.log"
        self.text = text
        self.ports = ports
        self.stats_sock = stats_sock
        self.proc: Optional[subprocess.Popen] = None

    def start(self) -> "HAProxy":
        if not os.access(HAPROXY_BIN, os.X_OK):
            raise h.HarnessError("haproxy is not installed (Debian package haproxy; "
                                 "scripts/test installs it)")
        self.cfg_path.write_text(self.text)
        r = h.run([HAPROXY_BIN, "-c", "-f", str(self.cfg_path)], timeout=20)
        if r.returncode != 0:
            raise h.HarnessError(f"haproxy -c refused the configuration:\n{r.stdout}{r.stderr}\n"
                                 f"{self.text}")
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen([HAPROXY_BIN, "-db", "-f", str(self.cfg_path)],
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         start_new_session=True)
        finally:
            log.close()
        h.wait_until(lambda: self.proc.poll() is not None or
                     all(h.is_listening(p) for p in self.ports), h.T_START,
                     what=f"haproxy to listen on {self.ports}")
        if self.proc.poll() is not None:
            raise h.HarnessError(f"haproxy exited {self.proc.returncode}:\n{self.log_text()}")
        return self

    def stop(self) -> None:
        if self.proc is not None:
            h.kill_tree(self.proc)
            self.proc = None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def api(self, command: str) -> str:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(h.T_IO)
            s.connect(str(self.stats_sock))
            s.sendall(command.encode() + b"\n")
            out = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                out += chunk
        return out.decode(errors="replace")

    def servers(self) -> dict:
        """(backend, server) -> the `show stat` row of that server."""
        text = self.api("show stat").lstrip("# ")
        rows = csv.DictReader(io.StringIO(text))
        return {(r["pxname"], r["svname"]): r for r in rows
                if r.get("svname") not in ("FRONTEND", "BACKEND", None)}

    def wait_checks_pass(self, backend: str, names: list, timeout: float = 15.0) -> dict:
        """Until every named server of `backend` is UP after a passed
        layer-7 check (our tcp-check saw the 220 greeting)."""
        def ok():
            s = self.servers()
            rows = [s.get((backend, n)) for n in names]
            if all(r is not None and r["status"] == "UP" and r["check_status"] == "L7OK"
                   for r in rows):
                return s
            return None
        return h.wait_until(ok, timeout, interval=0.2,
                            what=f"haproxy health checks of {backend} {names} to pass")


@pytest.fixture
def make_haproxy(request, workdir):
    made: list[HAProxy] = []

    def make(text: str, ports: list, stats_sock: Path) -> HAProxy:
        hp = HAProxy(workdir, text, ports, stats_sock)
        made.append(hp)
        return hp.start()

    yield make
    for hp in made:
        if getattr(getattr(request.node, "rep_call", None), "failed", False):
            print(f"\n--- haproxy log ({hp.log_path}) ---\n{hp.log_text()[-4000:]}")
        hp.stop()


def haproxy_cfg(stats_sock: Path, explicit: tuple, implicit: tuple, servers: list,
                send: str = "send-proxy-v2") -> str:
    """One explicit and one implicit frontend, each to `servers`
    [(name, explicit_addr, implicit_addr)] with the PROXY protocol; the
    explicit servers are health-checked with a PROXY header + 220 greeting,
    the implicit ones follow them."""
    ex = "\n".join(f"    server {n} {e} {send} check-send-proxy check inter 1s fall 2 rise 1"
                   for n, e, _ in servers)
    im = "\n".join(f"    server {n} {i} {send} track be_explicit/{n}" for n, _, i in servers)
    return f"""\
global
    log stderr format raw local0 info
    stats socket {stats_sock} mode 600 level admin

defaults
    mode tcp
    log global
    option tcplog
    timeout connect 5s
    timeout client 5m
    timeout server 5m
    timeout check 5s

frontend fe_explicit
    bind {explicit[0]}:{explicit[1]}
    default_backend be_explicit

backend be_explicit
    balance leastconn
    option tcp-check
    tcp-check connect default
    tcp-check expect rstring ^220
    tcp-check send QUIT\\r\\n
{ex}

frontend fe_implicit
    bind {implicit[0]}:{implicit[1]}
    default_backend be_implicit

backend be_implicit
    balance leastconn
{im}
"""


class Gate:
    """ftpsgate with a PROXY protocol setting behind HAProxy on loopback."""

    host = h.LOOPBACK        # HAProxy's listeners (h.connect() and h.login() take a Gate)

    def __init__(self, proxy: h.Proxy, hap: HAProxy, port: int, implicit_port: int):
        self.proxy, self.hap, self.port, self.implicit_port = proxy, hap, port, implicit_port

    @property
    def metrics_addr(self) -> str:
        return self.proxy.opts["metrics_listen"]


def behind_haproxy(make_proxy, make_haproxy, workdir, backends: dict, *, pp: str = "v2",
                   send: str = "send-proxy-v2", proxy: Optional[dict] = None) -> Gate:
    opts = {"proxy_protocol": pp, "proxy_protocol_from": "127.0.0.1/32",
            "metrics_listen": f"{h.LOOPBACK}:{h.free_port()}"}
    opts.update(proxy or {})
    p = make_proxy(proxy=opts, backends=backends)
    fe, fi = h.free_port(), h.free_port()
    sock = Path(tempfile.mkdtemp(prefix="hapsock-", dir=workdir)) / "stats.sock"
    text = haproxy_cfg(sock, (h.LOOPBACK, fe), (h.LOOPBACK, fi),
                       [("p", f"{p.host}:{p.port}", f"{p.host}:{p.implicit_port}")], send)
    hap = make_haproxy(text, [fe, fi], sock)
    hap.wait_checks_pass("be_explicit", ["p"])
    return Gate(p, hap, fe, fi)


# --------------------------------------------------------------------------
# Clients
# --------------------------------------------------------------------------

class OpsClient(FtpsClient):
    """FtpsClient that resumes the control session on data connections (the
    proxy's require_session_reuse) and records the 227 replies it got."""

    def __init__(self, certs, **kw):
        kw.setdefault("ca", certs.ca)
        kw.setdefault("reuse_session", True)
        super().__init__(**kw)
        self.pasv_replies: list[str] = []

    def sendcmd(self, cmd):
        r = super().sendcmd(cmd)
        if cmd.upper().startswith("PASV"):
            self.pasv_replies.append(r)
        return r


def client_port(c: FtpsClient) -> int:
    return c.sock.getsockname()[1]


def proxy_v2_header(src: str, dst: str, sport: int, dport: int) -> bytes:
    sig = b"\r\n\r\n\x00\r\nQUIT\n"
    addrs = (socket.inet_aton(src) + socket.inet_aton(dst) +
             sport.to_bytes(2, "big") + dport.to_bytes(2, "big"))
    return sig + bytes([0x21, 0x11]) + len(addrs).to_bytes(2, "big") + addrs


def raw_connect(port: int, source: Optional[str] = None) -> socket.socket:
    return socket.create_connection((h.LOOPBACK, port), h.T_IO,
                                    source_address=(source, 0) if source else None)


def closed_without_a_byte(s: socket.socket, timeout: float) -> tuple[bytes, float]:
    """Read until the peer closes; returns (what came, seconds it took)."""
    t0 = time.monotonic()
    closed, got = h.closed_within(s, timeout)
    assert closed, f"the connection stayed open for {timeout}s (got {got!r})"
    return got, time.monotonic() - t0


def data_connect_refused(port: int, source: str, timeout: float = 10) -> None:
    """Open a data connection from `source` and expect it closed without a
    byte (the proxy may reset it so fast that connect() itself fails)."""
    try:
        s = raw_connect(port, source=source)
    except ConnectionResetError:
        return
    with s:
        got, _ = closed_without_a_byte(s, timeout)
    assert got == b"", f"the refused data connection got {got!r}"


def session_with_data_refused(p: h.Proxy, certs) -> None:
    """A session from 127.0.0.1 whose data connection comes from CLIENT
    (127.0.0.2): refused."""
    c = h.login(p, certs, USER, PW, source=h.LOOPBACK)
    try:
        data_connect_refused(h.pasv_port(c), CLIENT)
    finally:
        c.close_quietly()


# --------------------------------------------------------------------------
# Logs
# --------------------------------------------------------------------------

def ev_of(evs: list, ev: str, **match) -> list[dict]:
    return [e for e in evs if e.get("ev") == ev and
            all(str(e.get(k)) == str(v) for k, v in match.items())]


def client_ip(e: dict) -> str:
    return h.split_addr(e["client"])[0] if "client" in e else ""


# --------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------

_LABELS = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"')
_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)( -?\d+)?$')


def scrape(addr: str) -> tuple[str, str]:
    with urllib.request.urlopen(f"http://{addr}/metrics", timeout=h.T_IO) as r:
        assert r.status == 200
        return r.read().decode("utf-8"), r.headers.get("Content-Type", "")


def unescape_label(v: str) -> str:
    return re.sub(r'\\(.)', lambda m: {"n": "\n"}.get(m.group(1), m.group(1)), v)


def parse_labels(s: str) -> dict:
    """Strict: the whole label set must be name="value" pairs, comma-separated."""
    labels, pos = {}, 0
    while pos < len(s):
        m = _LABELS.match(s, pos)
        assert m, f"bad label syntax at {s[pos:]!r}"
        assert m.group(1) not in labels, f"label {m.group(1)} twice in {s!r}"
        labels[m.group(1)] = unescape_label(m.group(2))
        pos = m.end()
        if pos < len(s):
            assert s[pos] == ",", f"expected ',' at {s[pos:]!r}"
            pos += 1
    return labels


def exposition_problems(text: str) -> list[str]:
    """What is wrong with `text` as Prometheus text format 0.0.4."""
    problems = []
    helps, types, seen_series = {}, {}, set()
    order, current = [], None
    if not text.endswith("\n"):
        problems.append("does not end with a newline")
    for n, line in enumerate(text.split("\n")[:-1], 1):
        if line == "":
            continue
        if line.startswith("#"):
            m = re.match(r"^# (HELP|TYPE) ([a-zA-Z_:][a-zA-Z0-9_:]*) (.*)$", line)
            if not m:
                if line.startswith("# HELP") or line.startswith("# TYPE"):
                    problems.append(f"line {n}: malformed {line!r}")
                continue
            kind, name, rest = m.groups()
            table = helps if kind == "HELP" else types
            if name in table:
                problems.append(f"line {n}: second # {kind} for {name}")
            table[name] = rest
            if kind == "TYPE" and rest not in ("counter", "gauge", "histogram", "summary",
                                               "untyped"):
                problems.append(f"line {n}: unknown type {rest!r}")
            if kind == "HELP" and re.search(r"\\[^\\n]", rest):
                problems.append(f"line {n}: bad escape in HELP text")
            if name != current:
                if name in order:
                    problems.append(f"line {n}: family {name} is not contiguous")
                order.append(name)
                current = name
            continue
        m = _SAMPLE.match(line)
        if not m:
            problems.append(f"line {n}: not a sample: {line!r}")
            continue
        name, _, lbl, value, _ts = m.groups()
        if name != current:
            problems.append(f"line {n}: sample {name} outside its family's block "
                            f"(after # lines of {current})")
        if name not in types:
            problems.append(f"line {n}: sample {name} before its # TYPE")
        try:
            float(value)
        except ValueError:
            problems.append(f"line {n}: value {value!r} is not a number")
        try:
            labels = parse_labels(lbl or "")
        except AssertionError as e:
            problems.append(f"line {n}: {e}")
            continue
        key = (name, tuple(sorted(labels.items())))
        if key in seen_series:
            problems.append(f"line {n}: series {key} twice")
        seen_series.add(key)
    for name, t in types.items():
        if name not in helps:
            problems.append(f"{name}: # TYPE without # HELP")
        if t == "counter" and not name.endswith("_total"):
            problems.append(f"{name}: a counter whose name does not end in _total")
    for name in helps:
        if name not in types:
            problems.append(f"{name}: # HELP without # TYPE")
    return problems


def samples(text: str) -> dict:
    """(name, ((label, value), ...)) -> float."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if m:
            name, _, lbl, value, _ = m.groups()
            out[(name, tuple(sorted(parse_labels(lbl or "").items())))] = float(value)
    return out


def metric(s: dict, name: str, **labels) -> float:
    return s.get((name, tuple(sorted(labels.items()))), 0.0)


def metric_sum(s: dict, name: str) -> float:
    return sum(v for (n, _), v in s.items() if n == name)


def series_of(s: dict, name: str) -> dict:
    return {lbl: v for (n, lbl), v in s.items() if n == name}


def wait_metric(addr: str, pred, what: str, timeout: float = 5.0) -> dict:
    def f():
        s = samples(scrape(addr)[0])
        return s if pred(s) else None
    return h.wait_until(f, timeout, interval=0.1, what=what)


def not_after(cert_path: Path) -> int:
    out = h.openssl("x509", "-in", str(cert_path), "-noout", "-enddate").strip()
    return int(ssl.cert_time_to_seconds(out.split("=", 1)[1]))


# --------------------------------------------------------------------------
# PROXY protocol behind a real HAProxy
# --------------------------------------------------------------------------

@pytest.mark.parametrize("pp,send", [("v2", "send-proxy-v2"), ("v1", "send-proxy"),
                                     ("any", "send-proxy-v2"), ("any", "send-proxy")])
def test_haproxy_curl_transfers_log_client_address(make_proxy, make_haproxy, workdir, certs,
                                                   ops_site, blobs, tmp_path, pp, send):
    """curl -> HAProxy (PROXY header) -> ftpsgate -> vsftpd, with curl's data
    connections straight to ftpsgate's passive port: explicit and implicit
    FTPS, download and upload byte-exact; every session line names the
    client's own address (127.0.0.2), never HAProxy's."""
    g = behind_haproxy(make_proxy, make_haproxy, workdir, ops_backends(ops_site), pp=pp,
                       send=send)
    mark = g.proxy.log_mark()
    out = tmp_path / "down.bin"
    r = h.curl(g.port, "/blob.bin", user=USER, password=PW, ca=certs.ca,
               extra=["--interface", CLIENT, "-o", str(out)])
    assert r.returncode == 0, r.stderr[-3000:]
    assert sha(out.read_bytes()) == sha(blobs["blob.bin"])
    r = h.curl(g.implicit_port, "/big.bin", user=USER, password=PW, ca=certs.ca, implicit=True,
               extra=["--interface", CLIENT, "-o", str(out)])
    assert r.returncode == 0, r.stderr[-3000:]
    assert sha(out.read_bytes()) == sha(blobs["big.bin"])
    up = os.urandom(3 << 20)
    src = tmp_path / "up.bin"
    src.write_bytes(up)
    r = h.curl(g.port, f"/upload/pp-{pp}-{send}.bin", user=USER, password=PW, ca=certs.ca,
               extra=["--interface", CLIENT, "-T", str(src)])
    assert r.returncode == 0, r.stderr[-3000:]
    assert sha((ops_site.root / "upload" / f"pp-{pp}-{send}.bin").read_bytes()) == sha(up)

    h.wait_until(lambda: len(ev_of(g.proxy.events(mark), "close", user="anonymous")) >= 3,
                 5, what="three sessions closed")
    evs = g.proxy.events(mark)
    sessions = {e["sid"] for e in ev_of(evs, "login")}
    assert len(sessions) == 3, ev_of(evs, "login")
    for e in evs:
        if e.get("sid") in sessions:
            assert client_ip(e) == CLIENT, f"session line without the client's address: {e}"
    xfers = ev_of(evs, "transfer")
    assert sorted((x["direction"], int(x["bytes"]), x["result"]) for x in xfers) == sorted([
        ("download", SMALL, "ok"), ("download", BIG, "ok"), ("upload", 3 << 20, "ok")]), xfers
    assert not ev_of(evs, "data_refused")
    # HAProxy's health checks (PROXY header, then 220) reached ftpsgate as
    # sessions of HAProxy itself.
    checks = [e for e in ev_of(g.proxy.events(), "connect") if client_ip(e) == h.LOOPBACK]
    assert checks, "no health-check connection from HAProxy was served"
    assert not ev_of(evs, "refused"), ev_of(evs, "refused")


def test_haproxy_v2_ftplib_exact_client_port(make_proxy, make_haproxy, workdir, certs, ops_site,
                                             blobs):
    """ftplib through HAProxy: the address AND port the proxy logs are the
    client's own socket's, carried by the v2 header; both data directions
    work from the client's address."""
    g = behind_haproxy(make_proxy, make_haproxy, workdir, ops_backends(ops_site))
    mark = g.proxy.log_mark()
    c = h.login(g, certs, USER, PW, source=CLIENT)
    try:
        me = f"{CLIENT}:{client_port(c)}"
        assert h.retr(c, "blob.bin")[:2] == (sha(blobs["blob.bin"]), SMALL)
        data = os.urandom(2 << 20)
        h.stor(c, "upload/ftplib-v2.bin", data)
        assert c.cmd("QUIT").code == 221
    finally:
        c.close_quietly()
    assert sha((ops_site.root / "upload" / "ftplib-v2.bin").read_bytes()) == sha(data)
    h.wait_until(lambda: ev_of(g.proxy.events(mark), "close", client=me), 5,
                 what=f"the session of {me} to close")
    mine = [e for e in g.proxy.events(mark) if e.get("client") == me]
    assert {e["ev"] for e in mine} >= {"connect", "login", "transfer", "close"}, mine
    assert [(x["direction"], int(x["bytes"])) for x in ev_of(mine, "transfer")] == [
        ("download", SMALL), ("upload", 2 << 20)]


def test_haproxy_data_connection_checked_against_header_address(make_proxy, make_haproxy,
                                                                workdir, certs, ops_site, blobs):
    """The data-connection address check uses the PROXY header's address: a
    data connection from HAProxy's own address (the control connection's
    TCP peer) is refused, one from the client's address is served."""
    g = behind_haproxy(make_proxy, make_haproxy, workdir, ops_backends(ops_site))
    c = h.login(g, certs, USER, PW, source=CLIENT)
    try:
        port = h.pasv_port(c)
        data_connect_refused(port, h.LOOPBACK)
        right = raw_connect(port, source=CLIENT)
        c.putcmd("RETR blob.bin")
        assert c.reply().code in (125, 150)
        tls = h.wrap_data(c, right)
        d = hashlib.sha256()
        n = h.read_all(tls, None, d)
        h.finish_tls(tls)
        assert (d.hexdigest(), n) == (sha(blobs["blob.bin"]), SMALL)
        assert c.reply().code == 226
    finally:
        c.close_quietly()
    evs = g.proxy.events()
    refused = ev_of(evs, "data_refused")
    assert len(refused) == 1 and refused[0]["from"].startswith(h.LOOPBACK + ":"), refused
    assert client_ip(refused[0]) == CLIENT
    s = samples(scrape(g.metrics_addr)[0])
    assert metric(s, "ftpsgate_data_connections_refused_total", reason="address") == 1


def test_haproxy_per_ip_limit_counts_header_address(make_proxy, make_haproxy, workdir, certs,
                                                     ops_site):
    """max_sessions_per_ip counts the PROXY header's address: every control
    connection comes from HAProxy (127.0.0.1), yet 127.0.0.2 is limited to
    two while 127.0.0.3 still gets in."""
    g = behind_haproxy(make_proxy, make_haproxy, workdir, ops_backends(ops_site),
                       proxy={"max_sessions_per_ip": "2"})
    mark = g.proxy.log_mark()
    held = []
    try:
        for _ in range(2):
            c = OpsClient(certs)
            held.append(c)
            assert c.connect(h.LOOPBACK, g.port, source_address=(CLIENT, 0)).code == 220
        third = OpsClient(certs)
        held.append(third)
        assert third.connect(h.LOOPBACK, g.port, source_address=(CLIENT, 0)).code == 421
        other = OpsClient(certs)
        held.append(other)
        assert other.connect(h.LOOPBACK, g.port, source_address=(CLIENT3, 0)).code == 220
        assert other.tls_login(USER, PW).code == 230
    finally:
        for c in held:
            c.close_quietly()
    refused = ev_of(g.proxy.events(mark), "refused")
    assert len(refused) == 1 and client_ip(refused[0]) == CLIENT, refused
    assert refused[0]["reason"] == "max_sessions_per_ip"


def pp_proxy(make_proxy, ops_site, pp="v2", frm="127.0.0.1/32"):
    return make_proxy(proxy={"proxy_protocol": pp, "proxy_protocol_from": frm,
                             "metrics_listen": f"{h.LOOPBACK}:{h.free_port()}"},
                      backends=ops_backends(ops_site))


@pytest.mark.parametrize("case", ["ftp-command", "v1-to-v2", "bad-v2-family", "http"])
def test_missing_or_malformed_header_refused_without_greeting(make_proxy, ops_site, case):
    """From a trusted address, anything but a valid header of the configured
    version is closed at once without a greeting, on both listeners, with
    one log line naming the reason."""
    p = pp_proxy(make_proxy, ops_site)
    first = {
        "ftp-command": b"USER anonymous\r\n",
        "v1-to-v2": b"PROXY TCP4 127.0.0.2 127.0.0.1 40000 21\r\n",
        "bad-v2-family": proxy_v2_header(CLIENT, h.LOOPBACK, 40000, 21)[:13] + b"\x99"
        + proxy_v2_header(CLIENT, h.LOOPBACK, 40000, 21)[14:],
        "http": b"GET / HTTP/1.0\r\n\r\n",
    }[case]
    mark = p.log_mark()
    for port in (p.port, p.implicit_port):
        s = raw_connect(port)
        s.sendall(first)
        got, took = closed_without_a_byte(s, 8)
        s.close()
        assert got == b"", f"{case} on {port}: the proxy sent {got!r}"
        assert took < 3, f"{case}: closed only after {took:.1f}s"
    h.wait_until(lambda: len(ev_of(p.events(mark), "refused")) == 2, 5, what="two refusals")
    refused = ev_of(p.events(mark), "refused")
    # The log's reason is the metric's label; msg says it in words (issue 10).
    assert all(e["reason"] == "proxy_header_invalid" and "PROXY header" in e["msg"]
               for e in refused), refused
    assert not ev_of(p.events(mark), "connect")
    s = samples(scrape(p.opts["metrics_listen"])[0])
    assert metric(s, "ftpsgate_connections_refused_total", reason="proxy_header_invalid") == 2


def test_silent_connection_refused_after_header_timeout(make_proxy, ops_site):
    p = pp_proxy(make_proxy, ops_site, pp="any")
    mark = p.log_mark()
    s = raw_connect(p.port)
    got, took = closed_without_a_byte(s, 12)
    s.close()
    assert got == b""
    assert 4 <= took <= 8, f"closed after {took:.1f}s, the header timeout is 5s"
    refused = ev_of(p.events(mark), "refused")
    assert len(refused) == 1 and refused[0]["reason"] == "proxy_header_timeout", refused
    assert "5 seconds" in refused[0]["msg"], refused


def test_untrusted_source_refused_even_with_a_valid_header(make_proxy, ops_site):
    """proxy_protocol_from = 127.0.0.1/32: a valid header from 127.0.0.2 is
    not believed; the connection is closed without a greeting."""
    p = pp_proxy(make_proxy, ops_site)
    mark = p.log_mark()
    s = raw_connect(p.port, source=CLIENT)
    sport = s.getsockname()[1]
    s.sendall(proxy_v2_header("198.51.100.9", h.LOOPBACK, 40000, p.port))
    got, _ = closed_without_a_byte(s, 8)
    s.close()
    assert got == b""
    refused = ev_of(p.events(mark), "refused")
    assert len(refused) == 1, refused
    assert refused[0]["client"] == f"{CLIENT}:{sport}", refused
    assert refused[0]["reason"] == "proxy_source_untrusted", refused
    assert "proxy_protocol_from" in refused[0]["msg"], refused
    assert "198.51.100.9" not in p.log_since(mark)
    s = samples(scrape(p.opts["metrics_listen"])[0])
    assert metric(s, "ftpsgate_connections_refused_total", reason="proxy_source_untrusted") == 1


def test_v2_local_header_is_served_as_the_balancer(make_proxy, ops_site):
    p = pp_proxy(make_proxy, ops_site)
    mark = p.log_mark()
    s = raw_connect(p.port)
    sport = s.getsockname()[1]
    s.sendall(b"\r\n\r\n\x00\r\nQUIT\n\x20\x00\x00\x00")
    f = s.makefile("rb")
    assert f.readline().startswith(b"220")
    s.sendall(b"QUIT\r\n")
    assert f.readline().startswith(b"221")
    f.close()
    s.close()
    assert ev_of(p.events(mark), "connect", client=f"{h.LOOPBACK}:{sport}")


# --------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------

@pytest.fixture
def metered(make_proxy, certs, alpha, ops_site):
    """ops (served the central certificate), alpha (its own certificate) and
    dead (nothing listens there), with metrics."""
    dead = backend_section(hostnames=["dead.test"], address=f"{h.LOOPBACK}:{h.free_port()}")
    return make_proxy(proxy={"metrics_listen": f"{h.LOOPBACK}:{h.free_port()}",
                             "log_level": "info"},
                      backends=ops_backends(ops_site, alpha=backend_section(
                          alpha, ALPHA_HOSTS, certs.alpha()), dead=dead))


def test_metrics_text_format(metered):
    text, ctype = scrape(metered.opts["metrics_listen"])
    assert ctype.startswith("text/plain") and "version=0.0.4" in ctype, ctype
    assert exposition_problems(text) == []
    for name, (typ, _) in FAMILIES.items():
        assert f"# HELP {name} " in text, f"no # HELP for {name}"
        assert f"# TYPE {name} {typ}\n" in text, f"no '# TYPE {name} {typ}'"
    # Every series carries exactly its family's labels.
    for (name, lbl), _ in samples(text).items():
        if name in FAMILIES:
            assert tuple(k for k, _ in lbl) == tuple(sorted(FAMILIES[name][1])), (name, lbl)
    # Other paths are not the metrics.
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(f"http://{metered.opts['metrics_listen']}/other", timeout=5)
    assert e.value.code == 404


def test_metrics_label_escaping_parser_self_check():
    """The checker above really checks escaping (no label value the proxy
    can emit contains a quote, backslash or newline: backend names are
    [A-Za-z0-9._-], reasons are fixed words)."""
    good = ('# HELP x_total a\n# TYPE x_total counter\n'
            'x_total{a="q\\"b\\\\c\\nd"} 1\n')
    assert exposition_problems(good) == []
    assert samples(good)[("x_total", (("a", 'q"b\\c\nd'),))] == 1
    for bad in ('x_total{a="q"b"} 1\n', 'x_total{a="q\\x"} 1\n', 'x_total{a="q\nb"} 1\n'):
        assert exposition_problems('# HELP x_total a\n# TYPE x_total counter\n' + bad)


def test_metrics_counters_move(metered, certs, ops_site, blobs):
    p = metered
    addr = p.opts["metrics_listen"]
    s0 = samples(scrape(addr)[0])
    assert metric(s0, "ftpsgate_sessions_active") == 0
    assert metric_sum(s0, "ftpsgate_sessions_total") == 0

    # A session with a download and an upload.
    up = os.urandom(2 << 20)
    c = h.login(p, certs, USER, PW, source=None)
    try:
        s = samples(scrape(addr)[0])
        assert metric(s, "ftpsgate_sessions_active") == 1
        assert metric(s, "ftpsgate_backend_sessions_active", backend="ops") == 1
        assert h.retr(c, "blob.bin")[:2] == (sha(blobs["blob.bin"]), SMALL)
        h.stor(c, "upload/metrics.bin", up)
        c.cmd("QUIT")
    finally:
        c.close_quietly()

    # A failed login (vsftpd here is anonymous-only: 530 at USER).
    with h.ftps(p.port, ca=certs.ca) as c:
        assert c.start_tls().code == 234
        assert c.user_pass(f"{OPS_HOST}|nosuchuser", PW).code == 530

    # A TLS handshake that fails: plaintext on the implicit listener.
    with raw_connect(p.implicit_port) as s:
        s.sendall(b"USER anonymous\r\n")
        closed_without_a_byte(s, 8)

    # A refused data connection: from another address than the control one.
    session_with_data_refused(p, certs)

    # A backend that cannot be reached.
    with h.ftps(p.port, ca=certs.ca) as c:
        assert c.start_tls().code == 234
        assert c.user_pass("dead.test|anonymous", PW).code == 421

    # Reloads: one good, one with a broken file (the old one stays), then good.
    p.signal(signal.SIGHUP)
    wait_metric(addr, lambda s: metric(s, "ftpsgate_reloads_total", result="ok") == 1,
                "reloads_total{result=ok} 1")
    good = p.conf_path.read_text()
    p.conf_path.write_text(good + "\nthis is not an INI line\n")
    p.signal(signal.SIGHUP)
    wait_metric(addr, lambda s: metric(s, "ftpsgate_reloads_total", result="failed") == 1,
                "reloads_total{result=failed} 1")
    p.conf_path.write_text(good)

    s = wait_metric(addr, lambda s: metric(s, "ftpsgate_sessions_active") == 0,
                    "sessions_active back to 0")
    assert metric(s, "ftpsgate_sessions_total", backend="ops") == 3
    assert metric(s, "ftpsgate_sessions_total", backend="dead") == 1
    assert metric(s, "ftpsgate_backend_sessions_active", backend="ops") == 0
    assert metric(s, "ftpsgate_logins_failed_total", backend="ops") == 1
    assert metric(s, "ftpsgate_bytes_total", backend="ops", direction="download") == SMALL
    assert metric(s, "ftpsgate_bytes_total", backend="ops", direction="upload") == len(up)
    assert metric(s, "ftpsgate_transfers_total", backend="ops", result="ok") == 2
    assert metric_sum(s, "ftpsgate_transfers_total") == 2
    tls = series_of(s, "ftpsgate_tls_handshake_failures_total")
    assert sum(tls.values()) == 1, tls
    (reason,) = [dict(k)["reason"] for k, v in tls.items() if v]  # others are there at 0
    assert re.fullmatch(r"[a-z0-9_]+", reason), reason
    assert metric(s, "ftpsgate_data_connections_refused_total", reason="address") == 1
    assert metric(s, "ftpsgate_backend_connect_failures_total", backend="dead") == 1
    assert metric_sum(s, "ftpsgate_backend_connect_failures_total") == 1
    assert metric(s, "ftpsgate_reloads_total", result="ok") == 1
    assert metric(s, "ftpsgate_reloads_total", result="failed") == 1
    # Certificate expiry: the notAfter of what each site is served.
    central, alpha_na = not_after(certs.central().cert), not_after(certs.alpha().cert)
    exp = "ftpsgate_certificate_expiry_timestamp_seconds"
    assert metric(s, exp, site="(central)") == central
    assert metric(s, exp, site="alpha") == alpha_na
    assert metric(s, exp, site="ops") == central
    assert exposition_problems(scrape(addr)[0]) == []


def test_metrics_certificate_expiry_follows_reload(make_proxy, certs, alpha, ops_site):
    """A reload that gives a site its own certificate changes its expiry;
    a site the reload removes is no longer reported (an alert on a site
    that is not served any more would be a false alarm)."""
    addr = f"{h.LOOPBACK}:{h.free_port()}"
    p = make_proxy(proxy={"metrics_listen": addr},
                   backends=ops_backends(ops_site, alpha=backend_section(alpha, ALPHA_HOSTS,
                                                                         certs.alpha())))
    exp = "ftpsgate_certificate_expiry_timestamp_seconds"
    s = samples(scrape(addr)[0])
    assert metric(s, exp, site="ops") == not_after(certs.central().cert)
    own = certs.make("ops-own", OPS_HOST, dns=[OPS_HOST], days=400)
    p.backends = {"ops": backend_section(ops_site, [OPS_HOST], own)}
    p.write_config()
    p.signal(signal.SIGHUP)
    s = wait_metric(addr, lambda s: metric(s, "ftpsgate_reloads_total", result="ok") == 1,
                    "the reload")
    assert metric(s, exp, site="ops") == not_after(own.cert)
    assert ("site", "alpha") not in [k for lbl in series_of(s, exp) for k in lbl], \
        f"site alpha was removed by the reload but is still reported: {series_of(s, exp)}"


# --------------------------------------------------------------------------
# JSON logs
# --------------------------------------------------------------------------

ISO_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z$")


def test_json_logs(make_proxy, certs, ops_site, blobs, tmp_path):
    p = make_proxy(proxy={"log_format": "json", "log_level": "debug",
                          "max_sessions_per_ip": "2"},
                   backends=ops_backends(ops_site))
    weird_pw = 'pw"with\\odd-Zx81'
    up = os.urandom(1 << 20)
    # One ftplib session: a download and an upload.
    c = h.login(p, certs, USER, PW, source=h.LOOPBACK)
    me = f"{h.LOOPBACK}:{client_port(c)}"
    try:
        assert h.retr(c, "blob.bin")[1] == SMALL
        h.stor(c, "upload/json.bin", up)
        # A second connection is held; the third from this address is refused.
        with h.ftps(p.port, ca=certs.ca) as second:
            assert second.greeting.code == 220
            third = OpsClient(certs)
            try:
                assert third.connect(h.LOOPBACK, p.port).code == 421
                refused_port = client_port(third)
            finally:
                third.close_quietly()
        c.cmd("QUIT")
    finally:
        c.close_quietly()
    # curl: one download.
    r = h.curl(p.port, "/blob.bin", user=USER, password=PW, ca=certs.ca,
               extra=["-o", str(tmp_path / "c.bin")])
    assert r.returncode == 0, r.stderr[-2000:]
    # A failed login with a user name that needs escaping, and odd password.
    with h.ftps(p.port, ca=certs.ca) as f:
        assert f.start_tls().code == 234
        assert f.user_pass(f'{OPS_HOST}|we"ird\\user', weird_pw).code == 530
    # A data connection from the wrong address (a warn line of the session).
    session_with_data_refused(p, certs)
    h.wait_until(lambda: len([e for e in p.events() if e.get("ev") == "close"]) >= 6, 5,
                 what="six sessions closed")

    text = p.log_text()
    assert PW not in text and weird_pw not in text and "odd-Zx81" not in text, \
        "a password reached the log"
    evs = []
    for n, line in enumerate(text.splitlines(), 1):
        if "Sanitizer" in line:
            continue
        try:
            e = json.loads(line)
        except ValueError as err:
            raise AssertionError(f"log line {n} is not JSON ({err}): {line!r}")
        assert isinstance(e, dict), line
        assert ISO_Z.match(str(e.get("time", ""))), f"line {n}: time {e.get('time')!r}"
        assert e.get("level") in ("error", "warn", "info", "debug"), f"line {n}: {line}"
        assert isinstance(e.get("ev"), str) and e["ev"], f"line {n}: no ev: {line}"
        evs.append(e)
    logged_in, incomplete = set(), []
    for e in evs:
        if "sid" not in e:
            continue
        assert re.fullmatch(r"\d+\.\d+\.\d+\.\d+:\d+", str(e.get("client", ""))), e
        if e["ev"] == "login":
            logged_in.add(e["sid"])
        if e["sid"] in logged_in and not all(e.get(k) for k in ("site", "backend", "user")):
            incomplete.append(e)     # asserted last, after the other checks
    # Transfers: one line each, with what an operator needs.
    xfers = [e for e in evs if e["ev"] == "transfer"]
    assert len(xfers) == 3, xfers
    for x in xfers:
        for k in ("sid", "client", "site", "backend", "user", "command", "path", "direction",
                  "bytes", "duration_ms", "reply", "result"):
            assert k in x, f"transfer line without {k}: {x}"
        assert x["backend"] == "ops" and x["site"] == OPS_HOST and x["user"] == "anonymous"
        assert x["result"] == "ok" and int(x["reply"]) == 226
        assert int(x["duration_ms"]) >= 0
    mine = [x for x in xfers if x["client"] == me]
    assert [(x["command"], x["path"], x["direction"], int(x["bytes"])) for x in mine] == [
        ("RETR", "blob.bin", "download", SMALL), ("STOR", "upload/json.bin", "upload", len(up))]
    # The refused connection: one line, with its reason.
    refused = [e for e in evs if e.get("client") == f"{h.LOOPBACK}:{refused_port}"]
    assert [e["ev"] for e in refused if e["ev"] == "refused"] == ["refused"], refused
    assert [e for e in refused if e["ev"] == "refused"][0]["reason"] == "max_sessions_per_ip"
    assert not [e for e in refused if e["ev"] in ("connect", "login")], refused
    # The odd user name round-trips through the JSON escaping.
    failed = [e for e in evs if e["ev"] == "login_failed"]
    assert len(failed) == 1 and failed[0]["user"] == 'we"ird\\user', failed
    refused_data = [e for e in evs if e["ev"] == "data_refused"]
    assert len(refused_data) == 1 and refused_data[0]["level"] == "warn", refused_data
    # Every line of a logged-in session names its site, backend and user.
    assert not incomplete, (
        f"{len(incomplete)} session line(s) after login lack site/backend/user, events "
        f"{sorted({e['ev'] for e in incomplete})}; first: {incomplete[0]}")


# --------------------------------------------------------------------------
# Graceful shutdown
# --------------------------------------------------------------------------

def connect_refused(port: int) -> bool:
    try:
        socket.create_connection((h.LOOPBACK, port), 2).close()
        return False
    except ConnectionRefusedError:
        return True


def exited(p: h.Proxy, timeout: float) -> int:
    """Wait for the proxy to exit on its own; returns its status and takes
    it off the fixture's hands (so teardown does not call it a crash)."""
    p.proc.wait(timeout)
    return p.stop()


@pytest.mark.parametrize("direction", ["download", "upload"])
def test_sigterm_lets_a_running_transfer_finish(make_proxy, certs, ops_site, blobs, direction):
    """A large transfer, slowed down by the client, is in the middle when
    SIGTERM arrives: new connections are refused from then on, the transfer
    completes byte-exact with its 226, and the proxy exits 0 as soon as the
    session ends (well within shutdown_grace)."""
    p = make_proxy(proxy={"shutdown_grace": "30"}, backends=ops_backends(ops_site))
    mark = p.log_mark()
    c = h.login(p, certs, USER, PW, source=None, timeout=30)
    name = f"upload/sigterm-{direction}.bin"
    data = blobs["big.bin"]
    signalled = None
    try:
        conn = c.transfercmd("RETR big.bin" if direction == "download" else f"STOR {name}")
        d = hashlib.sha256()
        n = 0
        chunk = 64 * 1024
        rate = 6e6                    # bytes/s: the 24 MiB transfer takes about 4s
        t_start = time.monotonic()
        while n < len(data):
            if direction == "download":
                b = conn.recv(chunk)
                if not b:
                    break
                d.update(b)
            else:
                b = data[n:n + chunk]
                conn.sendall(b)
            n += len(b)
            ahead = n / rate - (time.monotonic() - t_start)
            if ahead > 0:
                time.sleep(ahead)
            if signalled is None and n >= 4 << 20:
                p.signal(signal.SIGTERM)
                signalled = time.monotonic()
                h.wait_until(lambda: connect_refused(p.port), 3,
                             what="the listener to refuse new connections")
        if direction == "download":
            n += h.read_all(conn, None, d)      # anything after the file's end
        h.finish_tls(conn)
        final = c.reply()
        assert final.code == 226, final
        assert time.monotonic() - signalled > 1, "the transfer did not run across the signal"
        assert p.alive(), "the proxy exited before the session ended"
        assert connect_refused(p.port) and connect_refused(p.implicit_port)
        c.cmd("QUIT")
    finally:
        c.close_quietly()
    if direction == "download":
        assert (d.hexdigest(), n) == (sha(data), len(data))
    else:
        assert sha((ops_site.root / name).read_bytes()) == sha(data)
    assert exited(p, 10) == 0
    evs = p.events(mark)
    assert ev_of(evs, "transfer", result="ok", bytes=len(data))
    assert [e["ev"] for e in evs if e["ev"] in ("signal", "stopping", "stopped")] == [
        "signal", "stopping", "stopped"]


def test_sigterm_sessions_past_grace_get_421(make_proxy, certs, ops_site, blobs):
    """shutdown_grace = 2: an idle logged-in session and one whose download
    the client stopped reading are still there when the grace ends; both
    get 421 then, not before, and the proxy exits 0."""
    p = make_proxy(proxy={"shutdown_grace": "2", "data_timeout": "60"},
                   backends=ops_backends(ops_site))
    idle = h.login(p, certs, USER, PW, source=None, timeout=15)
    stuck = h.login(p, certs, USER, PW, source=None, timeout=15)
    try:
        conn = stuck.transfercmd("RETR big.bin")
        conn.recv(65536)              # started, then never read again
        t0 = time.monotonic()
        p.signal(signal.SIGTERM)
        h.wait_until(lambda: connect_refused(p.port), 3, what="new connections refused")
        for c in (idle, stuck):
            r = c.reply()
            took = time.monotonic() - t0
            assert r.code == 421, r
            assert 1.5 <= took <= 6, f"421 came {took:.1f}s after SIGTERM, grace is 2s"
        assert exited(p, 10) == 0
        conn.close()
    finally:
        idle.close_quietly()
        stuck.close_quietly()


# --------------------------------------------------------------------------
# Scale-out: the example in config/haproxy/, as written, on loopback
# --------------------------------------------------------------------------

def ini_get(text: str, section: str, key: str) -> Optional[str]:
    cur = None
    for line in text.splitlines():
        line = line.split(";", 1)[0].rstrip()
        m = re.match(r"^\[(.+)\]$", line.strip())
        if m:
            cur = m.group(1)
            continue
        m = re.match(r"^([a-z_]+)\s*=\s*(.*)$", line)
        if m and cur == section and m.group(1) == key:
            return m.group(2).strip()
    return None


def free_on_both(n: int = 1) -> int:
    """The first of n consecutive ports free on 127.0.0.1 and 127.0.0.2."""
    for _ in range(100):
        lo, _hi = h.free_port_range(n) if n > 1 else (h.free_port(), 0)
        if all(h._port_is_free(p, OTHER) for p in range(lo, lo + n)):
            return lo
    raise h.HarnessError("no port free on both loopback addresses")


OTHER = "127.0.0.2"


class IniProxy(h.Proxy):
    """ftpsgate run with a given INI text (the example's, substituted)."""

    def __init__(self, workdir: Path, certs, text: str, name: str):
        super().__init__(workdir, certs.central(), {}, name=name,
                         proxy={"listen": ini_get(text, "proxy", "listen"),
                                "listen_implicit": ini_get(text, "proxy", "listen_implicit")})
        self.text = text

    def ini_text(self) -> str:
        return self.text


def test_scale_out_example_two_instances_behind_haproxy(make_proxy, make_haproxy, workdir, certs,
                                                         blobs, tmp_path):
    texts = {f: (EXAMPLE_DIR / f).read_text()
             for f in ("haproxy.cfg", "ftpsgate-a.ini", "ftpsgate-b.ini")}
    a_ini, b_ini, hap_cfg = texts["ftpsgate-a.ini"], texts["ftpsgate-b.ini"], texts["haproxy.cfg"]
    # What the example is: two instances on 127.0.0.1 and 127.0.0.2, each
    # with its own passive address and range, behind HAProxy with PROXY v2.
    pa, pb = ini_get(a_ini, "proxy", "passive_address"), ini_get(b_ini, "proxy", "passive_address")
    assert (pa, pb) == ("127.0.0.1", "127.0.0.2")
    ra, rb = ini_get(a_ini, "proxy", "passive_ports"), ini_get(b_ini, "proxy", "passive_ports")
    (alo, ahi), (blo, bhi) = [tuple(map(int, r.split("-"))) for r in (ra, rb)]
    assert ahi < blo or bhi < alo, "the two passive ranges overlap"
    for t in (a_ini, b_ini):
        assert ini_get(t, "proxy", "proxy_protocol") == "v2"
    assert re.search(r"^\s*mode tcp\b", hap_cfg, re.M) and "send-proxy-v2" in hap_cfg

    # Substitutions, and only these: free ports for the example's ports, our
    # certificates and backends, a private runtime-API socket.
    sites = {}
    for name in ("alpha", "beta"):
        v = Vsftpd(workdir, f"scale-{name}", files={"blob.bin": blobs["blob.bin"]}, dirs=[],
                   pasv_ports=40)
        v.start()
        sites[name] = v
    portmap = {}
    for sect, site in (("backend:alpha", "alpha"), ("backend:beta", "beta")):
        host, port = h.split_addr(ini_get(a_ini, sect, "address"))
        assert ini_get(b_ini, sect, "address") == f"{host}:{port}"
        portmap[port] = sites[site].port
    everything = "\n".join(texts.values())
    addr_re = r"\b(127\.0\.0\.[12]):(\d+)\b(?!-)"     # an address, not a range in a comment
    for port in sorted({int(p) for _, p in re.findall(addr_re, everything)}):
        portmap.setdefault(port, free_on_both())
    ranges = {}
    for lo, hi in ((alo, ahi), (blo, bhi)):
        nlo = free_on_both(hi - lo + 1)
        ranges[f"{lo}-{hi}"] = f"{nlo}-{nlo + hi - lo}"
    example_alpha = certs.make("alpha-example", "ftp.alpha.example",
                               dns=["ftp.alpha.example", "*.alpha.example"])
    sock = Path(tempfile.mkdtemp(prefix="hapsock-", dir=workdir)) / "ftpsgate.sock"
    paths = {"/etc/ftpsgate/central.crt": str(certs.central().cert),
             "/etc/ftpsgate/central.key": str(certs.central().key),
             "/etc/ftpsgate/alpha.crt": str(example_alpha.cert),
             "/etc/ftpsgate/alpha.key": str(example_alpha.key),
             "/run/haproxy/ftpsgate.sock": str(sock)}

    def subst(t: str) -> str:
        for a, b in {**paths, **ranges}.items():
            t = t.replace(a, b)
        return re.sub(addr_re, lambda m: f"{m.group(1)}:{portmap[int(m.group(2))]}", t)

    a_txt, b_txt, hap_txt = subst(a_ini), subst(b_ini), subst(hap_cfg)
    inst = {}
    for key, txt in (("a", a_txt), ("b", b_txt)):
        p = IniProxy(workdir, certs, txt, f"scale-{key}")
        make_proxy.made.append(p)          # the fixture checks it at teardown
        p.start()
        inst[key] = p
    fronts = [int(m) for m in re.findall(r"^\s*bind 127\.0\.0\.1:(\d+)", hap_txt, re.M)]
    hap = make_haproxy(hap_txt, fronts, sock)
    explicit_port, implicit_port = fronts
    hap.wait_checks_pass("ftps_explicit", ["a", "b"])

    # Many sessions at once, each from its own client address.
    n_sessions = 16
    results: dict = {}

    def session(i: int) -> None:
        src = f"127.0.1.{i + 1}"
        site = "alpha" if i % 2 == 0 else "beta"
        user = f"ftp.{site}.example|anonymous"
        kind = ["ftplib", "ftplib-implicit", "curl", "ftplib"][i % 4]
        res = {"site": site, "kind": kind, "pasv": [], "ok": False, "transfers": 0}
        results[src] = res
        if kind == "curl":
            out = tmp_path / f"s{i}.bin"
            r = h.curl(explicit_port, "/blob.bin", user=user, ca=certs.ca,
                       extra=["--interface", src, "--disable-epsv", "--ftp-pasv",
                              "--no-ftp-skip-pasv-ip", "-o", str(out)])
            res["pasv"] = [l for l in h.curl_replies(r) if l.startswith("227")]
            res["error"] = r.stderr[-1500:]
            res["ok"] = r.returncode == 0 and sha(out.read_bytes()) == sha(blobs["blob.bin"])
            res["transfers"] = 1
            return
        c = OpsClient(certs, implicit=kind == "ftplib-implicit", timeout=20)
        try:
            c.connect(h.LOOPBACK, implicit_port if c.implicit else explicit_port,
                      source_address=(src, 0))
            assert c.tls_login(user, prot_p=True).code == 230
            c.trust_server_pasv_ipv4_address = True
            assert h.retr(c, "blob.bin")[:2] == (sha(blobs["blob.bin"]), SMALL)
            data = os.urandom(256 * 1024 + i)
            h.stor(c, f"upload/s{i}.bin", data)
            c.cmd("QUIT")
            res["pasv"] = list(c.pasv_replies)
            res["upload"] = (f"upload/s{i}.bin", sha(data))
            res["transfers"] = 2
            res["ok"] = True
        except Exception as e:  # noqa: BLE001 - reported below, per session
            res["error"] = repr(e)
        finally:
            c.close_quietly()

    threads = [threading.Thread(target=session, args=(i,)) for i in range(n_sessions)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    bad = {s: r for s, r in results.items() if not r["ok"]}
    assert len(results) == n_sessions and not bad, bad
    for src, r in results.items():
        if "upload" in r:
            path, digest = r["upload"]
            assert sha((sites[r["site"]].root / path).read_bytes()) == digest, src

    def closed() -> int:
        return sum(1 for p in inst.values() for e in p.events()
                   if e.get("ev") == "close" and client_ip(e).startswith("127.0.1."))
    h.wait_until(lambda: closed() == n_sessions, 10, what="every session's close line")

    own = {"a": (pa, range(*map(int, ranges[ra].split("-")))),
           "b": (pb, range(*map(int, ranges[rb].split("-"))))}
    owners = {"a": 0, "b": 0}
    logs = {k: p.events() for k, p in inst.items()}
    for k, evs in logs.items():
        assert not ev_of(evs, "data_refused"), (k, ev_of(evs, "data_refused"))
        assert not ev_of(evs, "refused"), (k, ev_of(evs, "refused"))
    for src, r in results.items():
        where = [k for k, evs in logs.items() if any(client_ip(e) == src for e in evs)]
        assert len(where) == 1, f"session of {src} appears in the logs of {where}"
        k = where[0]
        owners[k] += 1
        xfers = [e for e in logs[k] if e.get("ev") == "transfer" and client_ip(e) == src]
        assert len(xfers) == r["transfers"] and all(x["result"] == "ok" for x in xfers), xfers
        # The client was sent to the owner's own address and range.
        assert r["pasv"], f"{src}: no 227 reply recorded"
        for reply in r["pasv"]:
            ip, port = ftplib.parse227(reply if reply.startswith("227") else "227 " + reply)
            assert ip == own[k][0], f"{src} owned by {k} got {reply}"
            assert own[k][1].start <= port <= own[k][1].stop, f"{src}: port {port} not in {k}'s"
    print(f"sessions per instance: {owners}")
    assert min(owners.values()) >= 3, f"sessions were not spread: {owners}"
    # Metrics of both instances add up to the sessions made.
    total = 0
    for k, t in (("a", a_txt), ("b", b_txt)):
        s = samples(scrape(ini_get(t, "proxy", "metrics_listen"))[0])
        total += metric_sum(s, "ftpsgate_sessions_total")
        assert metric_sum(s, "ftpsgate_transfers_total") == sum(
            r["transfers"] for src, r in results.items()
            if any(client_ip(e) == src for e in logs[k]))
    assert total == n_sessions
    for v in sites.values():
        v.stop()


# --------------------------------------------------------------------------
# The container's health check script (config/container/healthcheck)
# --------------------------------------------------------------------------

@pytest.mark.parametrize("pp", ["no", "v1", "v2", "any"])
def test_container_healthcheck_script(make_proxy, ops_site, pp):
    """The image's HEALTHCHECK command, run on the host against a real
    proxy: the greeting probe (with the PROXY header the INI asks for) and
    the metrics probe succeed; against a stopped proxy both fail. (The
    image itself is built and run by scripts/container-test.)"""
    script = h.ROOT / "config" / "container" / "healthcheck"
    opts = {"metrics_listen": f"{h.LOOPBACK}:{h.free_port()}"}
    if pp != "no":
        opts.update(proxy_protocol=pp, proxy_protocol_from="127.0.0.0/8")
    p = make_proxy(proxy=opts, backends=ops_backends(ops_site))
    mark = p.log_mark()

    def probe(mode: str) -> subprocess.CompletedProcess:
        env = dict(os.environ, FTPSGATE_CONFIG=str(p.conf_path), FTPSGATE_HEALTHCHECK=mode)
        return h.run(["bash", str(script)], timeout=15, env=env)
    for mode in ("ftp", "metrics"):
        r = probe(mode)
        assert r.returncode == 0, f"{mode}: {r.stderr}"
    assert not ev_of(p.events(mark), "refused"), ev_of(p.events(mark), "refused")
    assert ev_of(p.events(mark), "close", reason="client quit")
    assert exited_after_sigterm(p) == 0
    for mode in ("ftp", "metrics"):
        assert probe(mode).returncode != 0, f"{mode} probe passed with the proxy stopped"


def exited_after_sigterm(p: h.Proxy) -> int:
    p.signal(signal.SIGTERM)
    return exited(p, 10)
