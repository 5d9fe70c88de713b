#!/usr/bin/python3
"""Runs ftpsgate under valgrind memcheck over a small scripted set of
sessions, then SIGTERM, and judges valgrind's verdict (issue 5).

    /usr/bin/python3 tests/integration/valgrind_session.py [--bin build/ftpsgate]
        [--workdir DIR] [--results FILE.json] [--keep]

The sessions: logins (explicit and implicit), downloads and uploads with
ftplib and curl (sha256 checked), ABOR in the middle of a download, refused
data connections (no resumption of the control session; another address),
bad commands (unknown before login, an overlong line, a NUL byte, PORT,
PROT C, unknown HOST and USER host), a backend that is down, clients that
vanish mid-download and mid-upload, TLS garbage, a PASV never used, then a
session left open across SIGTERM. Two workers, so that worker threads start
and stop under valgrind too.

Pass: every step did what it should, the proxy exited 0 after SIGTERM, and
valgrind (--error-exitcode=99, --errors-for-leak-kinds=definite,indirect)
reported no error and no definitely or indirectly lost bytes. Possibly lost
and still reachable memory is printed, not judged. Exit status 0 on a pass,
1 otherwise; --results writes {"steps": {name: ok}, "memcheck": ok, ...}.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import faultkit as fk  # noqa: E402
import harness as h  # noqa: E402
from faultkit import USER  # noqa: E402
from harness import KiB, MiB  # noqa: E402
from harness import PlainControl  # noqa: E402

VALGRIND = ["valgrind", "--tool=memcheck", "--leak-check=full",
            "--errors-for-leak-kinds=definite,indirect",
            "--show-leak-kinds=definite,indirect", "--error-exitcode=99",
            "--num-callers=30", "--track-origins=no"]
T_VG = 60.0          # start-up and shutdown under valgrind


class Steps:
    def __init__(self):
        self.results: dict[str, bool] = {}

    def run(self, name, fn, *args):
        t0 = time.monotonic()
        try:
            fn(*args)
            ok = True
            detail = ""
        except Exception as e:      # a failed step is reported, the rest still runs
            ok = False
            detail = f": {type(e).__name__}: {e}\n" + "".join(traceback.format_exc(limit=4))
        self.results[name] = ok
        print(f"  [{'ok' if ok else 'FAIL'}] {name} ({time.monotonic() - t0:.1f}s){detail}",
              flush=True)


# --------------------------------------------------------------------------
# Steps
# --------------------------------------------------------------------------

def step_ftplib(p, certs, site):
    c = h.login(p, certs, USER, timeout=30)
    try:
        got, n, _ = h.retr(c, "/blob.bin")
        assert got == site.files["blob.bin"].sha
        data = os.urandom(300 * KiB)
        assert h.stor(c, "/upload/vg-up.bin", data).startswith("226")
        assert (site.root / "upload" / "vg-up.bin").read_bytes() == data
        lines = []
        c.retrlines("LIST /", lines.append)
        assert any("blob.bin" in l for l in lines), lines
        assert c.cmd("QUIT").code == 221
    finally:
        c.close_quietly()


def step_implicit(p, certs, site):
    c = h.login(p, certs, USER, implicit=True, timeout=30)
    try:
        assert h.retr(c, "/blob.bin")[0] == site.files["blob.bin"].sha
        c.quit()
    finally:
        c.close_quietly()


def step_curl(p, certs, site, tmp):
    out = tmp / "curl-big.bin"
    r = h.curl(p.port, "/big.bin", user=USER, ca=certs.ca, extra=["-o", str(out)], timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    assert h.sha_file(out) == site.files["big.bin"].sha
    src = tmp / "curl-up.bin"
    src.write_bytes(os.urandom(MiB))
    r = h.curl(p.implicit_port, "/upload/vg-curl.bin", user=USER, ca=certs.ca, implicit=True,
               extra=["-T", str(src)], timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (site.root / "upload" / "vg-curl.bin").read_bytes() == src.read_bytes()


def goes_on(c, site) -> None:
    """The session still answers and downloads whole; then it quits."""
    assert c.cmd("NOOP").code == 200
    assert h.retr(c, "/blob.bin")[0] == site.files["blob.bin"].sha
    c.quit()


def step_abor(p, certs, site):
    c = h.login(p, certs, USER, timeout=30)
    try:
        conn, _ = c.ntransfercmd("RETR /big.bin")
        h.read_all(conn, 512 * KiB)
        c.send_raw(b"ABOR\r\n")
        with contextlib.suppress(OSError):
            conn.close()
        codes = [c.reply().code]
        if codes[0] != 225:
            codes.append(c.reply().code)
        assert codes in ([426, 226], [426, 225], [226, 225]), codes
        goes_on(c, site)
    finally:
        c.close_quietly()


def step_refused_data(p, certs, site):
    c = h.login(p, certs, USER, timeout=30)
    try:
        # Not resuming the control session.
        port = h.pasv_port(c)
        raw = socket.create_connection((p.host, port), 10)
        assert c.cmd("RETR /blob.bin").code == 150
        with contextlib.suppress(OSError):
            t = c.context.wrap_socket(raw, server_hostname=None)
            t.settimeout(10)
            assert t.recv(100) == b""
        raw.close()
        assert c.reply().code == 522
        # From another address.
        port = h.pasv_port(c)
        with contextlib.suppress(ConnectionResetError):
            with socket.create_connection((p.host, port), 10,
                                          source_address=(h.OTHER_CLIENT_ADDR, 0)) as s:
                assert h.closed_within(s, 10)[0]
        goes_on(c, site)
    finally:
        c.close_quietly()


def step_bad_commands(p, certs, site):
    with PlainControl(p.port, timeout=30) as c:
        assert c.cmd("LIST").code == 530
        assert c.cmd("X" * 5000).code == 500
        c.send(b"NO\x00OP\r\n")
        assert c.reply().code // 100 == 5
        assert c.cmd("HOST nosuch.test").code == 504
        assert c.cmd("USER anonymous").code // 100 == 5          # require_tls
    c = h.connect(p, certs, timeout=30)
    try:
        c.start_tls()
        assert c.user_pass("nosuch.test|anonymous").code == 530
        assert c.tls_login(USER).code == 230
        assert c.cmd("PORT 127,0,0,1,200,10").code == 502
        assert c.cmd("PROT C").code == 503                     # before PBSZ
        assert c.cmd("PBSZ 0").code == 200
        assert c.cmd("PROT C").code == 534
        assert c.cmd("EPSV 7").code // 100 == 5
        assert c.cmd("FEAT").code == 211
        c.quit()
    finally:
        c.close_quietly()


def step_backend_down(p, certs, site):
    c = h.connect(p, certs, timeout=30)
    try:
        c.start_tls()
        assert c.user_pass("ftp.down.test|anonymous").code == 421
        c.expect_closed(15)
    finally:
        c.close_quietly()


def step_vanish(p, certs, site):
    c = h.login(p, certs, USER, timeout=30)
    conn, _ = c.ntransfercmd("RETR /big.bin")
    h.read_all(conn, 256 * KiB)
    fk.rst_close(conn)
    fk.vanish(c, rst=True)
    c = h.login(p, certs, USER, timeout=30)
    conn, _ = c.ntransfercmd("STOR /upload/vg-cut.bin")
    conn.sendall(os.urandom(256 * KiB))
    conn.close()
    fk.vanish(c)
    time.sleep(1)


def step_tls_garbage(p, certs, site):
    with socket.create_connection((p.host, p.implicit_port), 10) as s:
        s.sendall(os.urandom(2048))
        assert h.closed_within(s, 15)[0]
    with PlainControl(p.port, timeout=30) as c:
        assert c.cmd("AUTH TLS").code == 234
        c.send(b"\x16\x03\x01\x00\xc8" + os.urandom(200))      # a whole record of noise
        assert h.closed_within(c.sock, 15)[0]


def step_pasv_unused(p, certs, site):
    c = h.login(p, certs, USER, timeout=30)
    try:
        h.pasv_port(c)
        assert c.cmd("QUIT").code == 221
    finally:
        c.close_quietly()


# --------------------------------------------------------------------------
# valgrind's verdict
# --------------------------------------------------------------------------

def verdict(log: str) -> dict:
    def num(rx):
        m = re.findall(rx, log)
        return int(m[-1].replace(",", "")) if m else None
    v = {
        "errors": num(r"ERROR SUMMARY: ([\d,]+) errors"),
        "definitely_lost": num(r"definitely lost: ([\d,]+) bytes"),
        "indirectly_lost": num(r"indirectly lost: ([\d,]+) bytes"),
        "possibly_lost": num(r"possibly lost: ([\d,]+) bytes"),
        "still_reachable": num(r"still reachable: ([\d,]+) bytes"),
        "all_freed": "All heap blocks were freed" in log,
    }
    if v["all_freed"]:
        for k in ("definitely_lost", "indirectly_lost", "possibly_lost", "still_reachable"):
            v[k] = v[k] or 0
    return v


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", default=str(h.PROXY_BIN), help="the ftpsgate binary")
    ap.add_argument("--workdir", help="keep everything here (default: a temp dir)")
    ap.add_argument("--results", help="write the results as JSON here")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir")
    args = ap.parse_args()
    if shutil.which("valgrind") is None:
        print("valgrind: not installed")
        return 1
    work = Path(args.workdir or tempfile.mkdtemp(prefix="ftpsgate-vg-"))
    work.mkdir(parents=True, exist_ok=True)
    vglog = work / "valgrind.log"
    certs = h.CertFactory(work / "certs")
    certs.central()
    site = h.Site(work, "vg", [fk.SITE], sizes={"blob.bin": 256 * KiB, "big.bin": 8 * MiB}).start()
    steps = Steps()
    result = {"steps": steps.results, "memcheck": False, "exit": None, "valgrind": {}}
    p = None
    try:
        lo, hi = h.free_port_range(10)
        dead = f"127.0.0.1:{h.free_port()}"
        p = h.Proxy(work, certs.central(), {
            "hard": site.section(),
            "down": h.backend_section(address=dead, hostnames=["ftp.down.test"])},
            ca=certs.ca, binary=Path(args.bin),
            proxy={"passive_ports": f"{lo}-{hi}", "workers": "2", "login_timeout": "30",
                   "data_timeout": "15", "connect_timeout": "5", "shutdown_grace": "3"})
        p.wrapper = VALGRIND + [f"--log-file={vglog}"]
        t0 = time.monotonic()
        p.start(timeout=T_VG)
        print(f"valgrind: ftpsgate up after {time.monotonic() - t0:.1f}s (pid {p.pid}); "
              f"log {vglog}", flush=True)
        tmp = work / "client"
        tmp.mkdir(exist_ok=True)
        steps.run("ftplib login, download, upload, LIST", step_ftplib, p, certs, site)
        steps.run("implicit TLS download", step_implicit, p, certs, site)
        steps.run("curl download 8 MiB and implicit upload", step_curl, p, certs, site, tmp)
        steps.run("ABOR mid-download", step_abor, p, certs, site)
        steps.run("refused data connections", step_refused_data, p, certs, site)
        steps.run("bad commands", step_bad_commands, p, certs, site)
        steps.run("backend down", step_backend_down, p, certs, site)
        steps.run("client vanishes mid-transfer", step_vanish, p, certs, site)
        steps.run("TLS garbage", step_tls_garbage, p, certs, site)
        steps.run("PASV never used", step_pasv_unused, p, certs, site)
        # A session still open at SIGTERM: ended by the shutdown.
        open_session = h.login(p, certs, USER, timeout=30)
        time.sleep(0.5)
        alive = p.alive()
        steps.results["alive through every step"] = alive
        p.signal(signal.SIGTERM)
        try:
            p.proc.wait(T_VG)
        except Exception:
            pass
        rc = p.stop(timeout=5)
        open_session.close_quietly()
        result["exit"] = rc
        # Exit status 0, or valgrind's 99 when it found errors (judged below).
        steps.results["exits by itself after SIGTERM"] = (rc in (0, 99)
                                                         and not p.killed_after_timeout)
    except Exception:
        traceback.print_exc()
        steps.results["setup"] = False
        if p is not None:
            p.stop(timeout=10)
    finally:
        site.stop()
    log = vglog.read_text(errors="replace") if vglog.exists() else ""
    v = verdict(log)
    result["valgrind"] = v
    result["memcheck"] = (v["errors"] == 0 and v["definitely_lost"] == 0
                          and v["indirectly_lost"] == 0 and result["exit"] == 0)
    print(f"valgrind: exit {result['exit']}; errors {v['errors']}; definitely lost "
          f"{v['definitely_lost']} B; indirectly lost {v['indirectly_lost']} B; possibly lost "
          f"{v['possibly_lost']} B; still reachable {v['still_reachable']} B")
    if not result["memcheck"]:
        print("---- valgrind log (tail) ----")
        print("\n".join(log.splitlines()[-150:]))
        if p is not None:
            print("---- ftpsgate log (tail) ----")
            print("\n".join(p.log_text().splitlines()[-60:]))
    ok = result["memcheck"] and all(steps.results.values())
    if args.results:
        Path(args.results).write_text(json.dumps(result, indent=1))
    if not args.workdir and not args.keep and ok:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"valgrind: files kept in {work}")
    print(f"valgrind: {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
