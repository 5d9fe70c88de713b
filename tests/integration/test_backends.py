"""Backends with several addresses, health checks and warm connections
(DESIGN.md, "Backends: several addresses, health, warm connections").

Two real vsftpd servers, b1 and b2, serve one site: each also holds a file
of its own name, so SIZE tells which one a session reached; both hold the
same shared.bin, whose sha256 every transfer checks."""
from __future__ import annotations

import concurrent.futures as cf
import contextlib
import ftplib
import hashlib
import os
import select
import signal
import socket
import threading
import time

import pytest

import harness as h
from test_ops import metric, samples, scrape, wait_metric

SITE = "ftp.pair.test"
SHARED = os.urandom(200 * 1024)
SHARED_SHA = hashlib.sha256(SHARED).hexdigest()


def server(workdir, name, **extra) -> h.Vsftpd:
    v = h.Vsftpd(workdir, name, files={f"{name}-only.txt": name.encode(), "shared.bin": SHARED},
                 extra=extra or None)
    return v.start()


@pytest.fixture
def pair(workdir):
    b1, b2 = server(workdir, "b1"), server(workdir, "b2")
    yield b1, b2
    b1.stop()
    b2.stop()


def start(make_proxy, addresses, **section):
    mport = h.free_port()
    p = make_proxy(proxy={"metrics_listen": f"127.0.0.1:{mport}", "default_backend": "pair"},
                   backends={"pair": h.backend_section(None, [SITE], address=", ".join(addresses),
                                                       **section)})
    p.metrics = f"127.0.0.1:{mport}"
    return p


def where(c) -> str:
    """b1 or b2: the server this logged-in session talks to."""
    for name in ("b1", "b2"):
        with contextlib.suppress(Exception):
            if c.size(f"/{name}-only.txt") == 2:
                return name
    return "neither"


def login(p, certs) -> h.FtpsClient:
    return h.login(p, certs, f"{SITE}|anonymous")


def check_transfer(c) -> None:
    sha, n, resp = h.retr(c, "/shared.bin")
    assert (sha, n) == (SHARED_SHA, len(SHARED)) and resp.startswith("226"), resp


def test_sessions_spread_fail_over_and_come_back(make_proxy, certs, pair):
    b1, b2 = pair
    p = start(make_proxy, [b1.address, b2.address], health_check=1)
    m = samples(scrape(p.metrics)[0])
    for b in (b1, b2):
        assert metric(m, "ftpsgate_backend_up", backend="pair", address=b.address) == 1
        assert metric(m, "ftpsgate_backend_sessions", backend="pair", address=b.address) == 0

    # The address with the fewest sessions takes each new one: 4 sessions, 2 and 2.
    sessions = [login(p, certs) for _ in range(4)]
    on = {"b1": [], "b2": []}
    for c in sessions:
        on[where(c)].append(c)
    assert len(on["b1"]) == 2 and len(on["b2"]) == 2, {k: len(v) for k, v in on.items()}
    m = samples(scrape(p.metrics)[0])
    for b in (b1, b2):
        assert metric(m, "ftpsgate_backend_sessions", backend="pair", address=b.address) == 2

    # b1 dies under load: logins keep coming from 8 threads while it goes.
    mark = p.log_mark()

    def one_login(i):
        time.sleep(0.05 * (i % 10))
        c = login(p, certs)            # must succeed, b1 dead or not
        try:
            got = where(c)
            try:
                check_transfer(c)
            except Exception as e:     # only a session b1 held when it died may end
                assert got == "b1", (got, e)
                return "b1 died"
            return got
        finally:
            c.close_quietly()

    with cf.ThreadPoolExecutor(8) as ex:
        futs = [ex.submit(one_login, i) for i in range(40)]
        time.sleep(0.2)
        b1.stop()
        results = [f.result() for f in futs]   # every login succeeds: none raises
    assert all(r in ("b1", "b2", "b1 died") for r in results), results
    assert results[-8:] == ["b2"] * 8, results

    # Sessions that were on b1 end with 421; those on b2 go on undisturbed.
    for c in on["b1"]:   # told at once, unasked
        c.sock.settimeout(10)
        with pytest.raises(ftplib.error_temp, match="^421"):
            c.getresp()
        c.close_quietly()
    for c in on["b2"]:
        assert c.voidcmd("NOOP").startswith("200")
        check_transfer(c)

    # The checks take it out: logged, and the gauge says 0.
    p.wait_log(r"ev=backend_down .*address=" + b1.address.replace(".", r"\."), mark, timeout=10)
    wait_metric(p.metrics, lambda s: metric(s, "ftpsgate_backend_up", backend="pair",
                                            address=b1.address) == 0, "b1 down", 5)
    for _ in range(4):   # out of the rotation: new sessions go straight to b2
        c = login(p, certs)
        assert where(c) == "b2"
        c.close_quietly()

    # Back after a restart on the same port.
    mark = p.log_mark()
    b1.start()
    p.wait_log(r"ev=backend_up .*address=" + b1.address.replace(".", r"\."), mark, timeout=10)
    wait_metric(p.metrics, lambda s: metric(s, "ftpsgate_backend_up", backend="pair",
                                            address=b1.address) == 1, "b1 up", 5)
    # b2 holds 2 sessions, b1 none: the next two go to b1.
    back = [login(p, certs) for _ in range(2)]
    assert [where(c) for c in back] == ["b1", "b1"]
    m = samples(scrape(p.metrics)[0])
    assert metric(m, "ftpsgate_backend_sessions", backend="pair", address=b1.address) == 2
    assert metric(m, "ftpsgate_backend_sessions", backend="pair", address=b2.address) == 2
    for c in back + on["b2"]:
        c.close_quietly()
    wait_metric(p.metrics, lambda s: metric(s, "ftpsgate_backend_sessions", backend="pair",
                                            address=b2.address) == 0, "sessions gone", 5)


def test_failed_connect_tries_the_next_address(make_proxy, certs, pair):
    b1, b2 = pair
    dead = f"127.0.0.1:{h.free_port()}"
    p = start(make_proxy, [dead, b2.address], health_check=0)
    mark = p.log_mark()
    for _ in range(3):   # checks are off: the dead one stays in the rotation and is tried
        c = login(p, certs)
        assert where(c) == "b2"
        check_transfer(c)
        c.close_quietly()
    assert p.log_lines(mark, "ev=backend_unreachable", dead), p.log_since(mark)


def test_all_addresses_down_each_is_tried_then_421(make_proxy, certs):
    dead = [f"127.0.0.1:{h.free_port()}" for _ in range(2)]
    p = start(make_proxy, dead, health_check=1)
    mark = p.log_mark()
    p.wait_log(r"ev=backend_down .*address=" + dead[1].replace(".", r"\."), mark, timeout=10)
    mark = p.log_mark()
    with contextlib.closing(h.connect(p, certs)) as c:
        assert c.start_tls().code == 234
        r = c.user_pass(f"{SITE}|anonymous")
        assert r.code == 421, r
    for a in dead:   # out of the rotation, and still tried
        assert p.log_lines(mark, "ev=backend_unreachable", a), p.log_since(mark)


def test_check_lists_addresses_and_refuses_bad_lists(make_proxy, certs, pair):
    b1, b2 = pair
    p = start(make_proxy, [b1.address, b2.address], health_check=5, preconnect=4)
    r = p.check()
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"pair: {b1.address}, {b2.address}" in r.stdout, r.stdout
    assert "health_check 5 s" in r.stdout and "preconnect 4" in r.stdout, r.stdout

    p.backends["pair"]["address"] = f"{b1.address}, {b2.address}, {b1.address}"
    r = p.check()
    assert r.returncode == 1
    assert f"{b1.address} is listed twice" in r.stdout, r.stdout

    # A list may go on over repeated keys (the pair section is the file's last).
    many = [f"127.0.0.{i // 250 + 10}:{i % 250 + 1000}" for i in range(65)]
    p.backends["pair"]["address"] = many[0]
    p.extra_ini = "".join(f"address = {a}\n" for a in many[1:])
    r = p.check()
    assert r.returncode == 1
    assert "lists 65 addresses; give at most 64" in r.stdout, r.stdout
    p.extra_ini = "".join(f"address = {a}\n" for a in many[1:64])
    r = p.check()
    assert r.returncode == 0, r.stdout
    assert f"pair: {', '.join(many[:64])} (" in r.stdout, r.stdout


def test_preconnect_survives_backend_idle_timeout(make_proxy, certs, workdir):
    # vsftpd closes a connection idle for 2 s with "421 Timeout.": the warm
    # connections die again and again, and no login may notice.
    b1 = server(workdir, "b1", idle_session_timeout="2")
    try:
        mark = b1.log_mark()
        p = start(make_proxy, [b1.address], health_check=0, preconnect=2)
        # Warm connections are made before any login.
        h.wait_until(lambda: b1.connects_since(mark) >= 2, 5, what="warm connections")
        time.sleep(5)   # longer than the backend's timeout: the first ones are gone
        plog = p.log_mark()
        for i in range(12):
            c = login(p, certs)
            assert where(c) == "b1"
            check_transfer(c)
            c.close_quietly()
            time.sleep(0.4)
        assert not p.log_lines(plog, "ev=backend_closed"), p.log_since(plog)
        # Warm connections served the logins (the pool keeps up with one at a time).
        assert len(p.log_lines(plog, "ev=backend_connected", "warm=yes")) >= 6, p.log_since(plog)
        assert not p.log_lines(plog, "ev=close", 'reason="backend'), p.log_since(plog)
    finally:
        b1.stop()


class DyingRelay:
    """A TCP relay in front of a real vsftpd whose first `n` connections die
    when the proxy sends `verb`: with "421 Timeout." (what vsftpd says when
    its idle timer runs out, at the worst moment: as USER arrives) or with
    no word at all; or, with after_reply, just after relaying the reply to
    `verb` (the 331 to USER: the client's PASS is on its way). Later
    connections are relayed untouched."""

    def __init__(self, upstream: h.Vsftpd, verb: bytes, n: int, say: bytes = b"",
                 after_reply: bool = False):
        self.up = (upstream.host, upstream.port)
        self.verb, self.left, self.say, self.after_reply = verb, n, say, after_reply
        self.killed = 0
        self.accepted = 0
        self.sock = socket.create_server((h.LOOPBACK, 0))
        self.address = f"{h.LOOPBACK}:{self.sock.getsockname()[1]}"
        self.stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        self.sock.settimeout(0.1)
        while not self.stop.is_set():
            try:
                a, _ = self.sock.accept()
            except (socket.timeout, OSError):
                continue
            self.accepted += 1
            doomed = self.left > 0
            self.left -= 1
            threading.Thread(target=self._relay, args=(a, doomed), daemon=True).start()

    def _relay(self, a: socket.socket, doomed: bool):
        b = socket.create_connection(self.up)
        asked = False
        try:
            while not self.stop.is_set():
                r, _, _ = select.select([a, b], [], [], 0.1)
                for s in r:
                    data = s.recv(65536)
                    if not data:
                        return
                    if s is b and asked:     # the reply to verb: relayed, then death
                        a.sendall(data)
                        self.killed += 1
                        return
                    if s is a and doomed and self.after_reply and data.upper().startswith(self.verb):
                        asked = True
                    elif s is a and doomed and data.upper().startswith(self.verb):
                        if self.say:
                            a.sendall(self.say)
                        self.killed += 1
                        return
                    (b if s is a else a).sendall(data)
        except OSError:
            return
        finally:
            a.close()
            b.close()

    def close(self):
        self.stop.set()
        self.sock.close()


def test_warm_connection_timed_out_at_user_is_replaced(make_proxy, certs, pair):
    b1, b2 = pair
    relay = DyingRelay(b1, b"USER", 2, b"421 Timeout.\r\n")
    try:
        p = start(make_proxy, [relay.address], health_check=0, preconnect=2)
        h.wait_until(lambda: len(p.log_lines(0, "ev=warm_ready")) >= 2, 5,
                     what="2 warm connections greeted")  # accepted is not yet ready
        mark = p.log_mark()
        for _ in range(3):    # two meet a dying warm connection, none notices
            c = login(p, certs)
            assert where(c) == "b1"
            check_transfer(c)
            c.close_quietly()
        assert relay.killed == 2
        assert len(p.log_lines(mark, "ev=warm_replaced")) == 2, p.log_since(mark)
        assert not p.log_lines(mark, "ev=close", 'reason="backend'), p.log_since(mark)
    finally:
        relay.close()


OOPS = b"500 OOPS: child died\r\n"   # vsftpd, as its session process dies


@pytest.mark.parametrize("verb,say,after", [(b"PASS", b"", False), (b"PASS", OOPS, False),
                                             (b"USER", OOPS, False), (b"USER", b"", True)],
                         ids=["pass-silent", "pass-oops", "user-oops", "after-331"])
def test_backend_dying_at_pass_moves_the_login_on(make_proxy, certs, pair, verb, say, after):
    b1, b2 = pair
    relay = DyingRelay(b1, verb, 1, say, after_reply=after)
    try:
        p = start(make_proxy, [relay.address, b2.address], health_check=0)
        mark = p.log_mark()
        for _ in range(4):   # turns alternate: the relay gets a login, and it dies at PASS
            c = login(p, certs)
            check_transfer(c)
            c.close_quietly()
        assert relay.killed == 1
        assert p.log_lines(mark, "ev=backend_redial", relay.address), p.log_since(mark)
    finally:
        relay.close()


def test_oops_with_no_other_address_reaches_the_client(make_proxy, certs, pair):
    """A vsftpd that cannot run the session ("500 OOPS: ..." at login) and
    no other address to try: the session ends with 421 naming the server's
    reason."""
    b1, b2 = pair
    relay = DyingRelay(b1, b"USER", 1, OOPS)
    try:
        p = start(make_proxy, [relay.address], health_check=0)
        with pytest.raises(AssertionError, match=r": 421 .*\(500 OOPS: child died\)"):
            login(p, certs)
        assert relay.killed == 1
    finally:
        relay.close()


def test_oops_after_login_ends_that_session_with_421(make_proxy, certs, workdir):
    """vsftpd's passive port: nine random tries in its range, then "500 OOPS:
    vsf_sysutil_bind" from one of its session processes and "500 OOPS:
    priv_sock_get_int" from the other as both exit. The proxy's EPSV to the
    backend gets the first: that client gets 421 with the reason at once, not
    a PASV sent to a dead server and a 425 at its RETR. The session holding
    the port goes on."""
    v = h.Vsftpd(workdir, "b1", pasv_ports=1,
                 files={"b1-only.txt": b"b1", "shared.bin": SHARED}).start()
    try:
        p = start(make_proxy, [v.address], health_check=0)
        a, b = login(p, certs), login(p, certs)
        assert a.cmd("PASV").code == 227
        assert a.cmd("NOOP").code == 200   # after vsftpd's answer: its one port is taken
        mark = p.log_mark()
        assert b.cmd("PASV").code == 227   # the proxy's answer: vsftpd's follows
        r = b.reply()
        assert r.code == 421 and "(500 OOPS: vsf_sysutil_bind)" in r.text, r
        with pytest.raises((EOFError, OSError)):
            b.reply()
        assert p.log_lines(mark, "ev=backend_oops", "vsf_sysutil_bind"), p.log_since(mark)
        assert not p.log_lines(mark, "ev=backend_passive_failed"), p.log_since(mark)
        check_transfer(a)
        a.close_quietly()
        b.close_quietly()
    finally:
        v.stop()


def test_preconnect_dropped_on_reload(make_proxy, certs, pair):
    b1, b2 = pair
    p = start(make_proxy, [b1.address], health_check=0, preconnect=3)
    h.wait_until(lambda: len(p.log_lines(0, "ev=warm_ready")) >= 3, 5,
                 what="3 warm connections greeted")
    # A login takes one (it does not wait for a connect and a greeting) and
    # the pool makes another.
    mark = p.log_mark()
    c = login(p, certs)
    check_transfer(c)
    assert p.log_lines(mark, "ev=backend_connected", "warm=yes"), p.log_since(mark)
    p.backends["pair"]["preconnect"] = 0
    p.write_config()
    mark = p.log_mark()
    p.signal(signal.SIGHUP)
    p.wait_log("ev=reloaded", mark, timeout=10)
    # vsftpd has a process per connection: the logged-in one stays, the warm ones go.
    h.wait_until(lambda: len(b1.session_procs()) <= 2, 5,
                 what="the warm connections to close")
    assert c.voidcmd("NOOP").startswith("200")
    c.close_quietly()


def test_preconnect_is_split_over_the_workers(make_proxy, certs, pair):
    # preconnect = 3 with 2 workers: ceil(3 / 2) = 2 warm connections each.
    b1, b2 = pair
    mark = b1.log_mark()
    p = make_proxy(proxy={"default_backend": "pair", "workers": "2"},
                   backends={"pair": h.backend_section(None, [SITE], address=b1.address,
                                                       health_check=0, preconnect=3)})
    h.wait_until(lambda: b1.connects_since(mark) >= 4, 5, what="4 warm connections")
    time.sleep(2.5)   # and no more than that (nothing replaced them)
    assert b1.connects_since(mark) == 4
    for _ in range(4):
        c = login(p, certs)
        check_transfer(c)
        c.close_quietly()


def test_reload_adds_and_removes_addresses(make_proxy, certs, pair):
    b1, b2 = pair
    p = start(make_proxy, [b1.address, b2.address], health_check=0)
    c = login(p, certs)    # a session that outlives its address's removal
    on = where(c)
    gone, stays = (b1, b2) if on == "b1" else (b2, b1)

    def reload(addresses):
        p.backends["pair"]["address"] = ", ".join(addresses)
        p.write_config()
        mark = p.log_mark()
        p.signal(signal.SIGHUP)
        p.wait_log("ev=reloaded", mark, timeout=10)

    reload([stays.address])
    m = samples(scrape(p.metrics)[0])
    assert ("ftpsgate_backend_up", (("address", gone.address), ("backend", "pair"))) not in m
    assert metric(m, "ftpsgate_backend_up", backend="pair", address=stays.address) == 1
    for _ in range(3):     # new sessions go to the address that stays
        n = login(p, certs)
        assert where(n) == stays.name
        n.close_quietly()
    check_transfer(c)      # the running one is untouched
    reload([stays.address, gone.address])
    m = samples(scrape(p.metrics)[0])
    assert metric(m, "ftpsgate_backend_up", backend="pair", address=gone.address) == 1
    assert metric(m, "ftpsgate_backend_sessions", backend="pair", address=gone.address) == 1
    c.close_quietly()
    wait_metric(p.metrics, lambda s: metric(s, "ftpsgate_backend_sessions", backend="pair",
                                            address=gone.address) == 0, "session gone", 5)
