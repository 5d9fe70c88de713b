#!/usr/bin/env python3
"""sites_bench.py - ftpsgate with N sites (one INI file and one ECDSA
certificate each, from gen_sites.py, all from one private CA with ca_file
set), as DESIGN.md's "Sites at hosting scale" and issue 13 measure it:

  check_s          `ftpsgate -t` wall time
  start_s          start to the first 220 greeting
  rss_per_site_kib (RSS with N sites - RSS with 1 site) / N
  reload_*_s       SIGHUP to the `reloaded` log line: nothing changed, one
                   site's certificate touched, every certificate touched
  gap_*_ms         during each reload, a probe session's longest NOOP reply
                   time and a running download's longest pause between two
                   reads; gap_idle_ms is the same with no reload (the noise)
  loop_cpu_*_ms    CPU the event loop's thread spent on each kind of reload,
                   measured again with the probe stopped (schedstat of the
                   main thread). Unlike the gaps it does not count time the
                   thread waited for a CPU on a busy machine, and no single
                   pause of the loop can be longer than it
  rss_after_reloads_mib  RSS after --reloads reloads (every one changing
                   every certificate) against RSS after the first

Used by scripts/bench (item `sites`) and runnable alone:
  sites_bench.py --binary build/ftpsgate --sites 1000 [--workdir D]
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from ftplib import FTP, FTP_TLS
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent / "tests" / "integration"))
import harness as H  # noqa: E402

PROBE_HOST = "probe.test"
BIG_MIB = 256


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def loop_cpu_s(pid: int) -> float:
    """CPU time of the main thread (the first worker's event loop), in s."""
    return int(Path(f"/proc/{pid}/task/{pid}/schedstat").read_text().split()[0]) / 1e9


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proxy:
    """ftpsgate on a sites folder, its log in a file."""

    def __init__(self, binary: str, d: Path, backend: str, include: bool):
        self.binary, self.d = binary, d
        self.port = free_port()
        lo = free_port() // 100 * 100 % 50000 + 10000
        self.ini = d / ("bench.ini" if include else "bench-one.ini")
        self.ini.write_text(
            "[proxy]\n"
            f"listen = 127.0.0.1:{self.port}\n"
            f"certificate = {d}/central.crt\nprivate_key = {d}/central.key\n"
            f"ca_file = {d}/ca.crt\n"
            f"passive_ports = {lo}-{lo + 99}\n"
            "log_level = info\n"
            + ("include = sites.d/*.ini\n" if include else "")
            + f"\n[backend:probe]\nhostnames = {PROBE_HOST}\naddress = {backend}\n")
        self.log = d / ("proxy.log" if include else "proxy-one.log")
        self.p = None

    def check(self) -> float:
        t0 = time.monotonic()
        r = subprocess.run([self.binary, "-t", "-c", str(self.ini)], capture_output=True,
                           text=True)
        if r.returncode not in (0, 3):
            raise RuntimeError(f"-t exit {r.returncode}: {r.stdout[-2000:]}{r.stderr[-2000:]}")
        return time.monotonic() - t0

    def start(self) -> float:
        t0 = time.monotonic()
        self.logf = open(self.log, "w")
        self.p = subprocess.Popen([self.binary, "-c", str(self.ini)], stdout=self.logf,
                                  stderr=subprocess.STDOUT)
        while True:
            if self.p.poll() is not None:
                raise RuntimeError(f"ftpsgate exited {self.p.returncode}: "
                                   f"{self.log.read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=60) as s:
                    if s.recv(64).startswith(b"220"):
                        return time.monotonic() - t0
            except OSError:
                time.sleep(0.02)

    def reloaded(self) -> int:
        return self.log.read_text(errors="replace").count("ev=reloaded")

    def reload(self, timeout: float = 600) -> float:
        n = self.reloaded()
        t0 = time.monotonic()
        self.p.send_signal(signal.SIGHUP)
        while self.reloaded() <= n:
            if time.monotonic() - t0 > timeout:
                raise RuntimeError("no reloaded line")
            time.sleep(0.005)
        return time.monotonic() - t0

    def stop(self) -> None:
        if self.p is not None and self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(30)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        if self.p is not None:
            self.logf.close()


class ReusingFTP_TLS(FTP_TLS):
    """ftplib's data connections resume the control connection's session, as
    ftpsgate requires by default (require_session_reuse)."""

    def ntransfercmd(self, cmd, rest=None):
        conn, size = FTP.ntransfercmd(self, cmd, rest)
        if self._prot_p:
            conn = self.context.wrap_socket(conn, server_hostname=self.host,
                                            session=self.sock.session)
        return conn, size


class Probe:
    """Two sessions through the proxy: one sending NOOPs back to back, one
    downloading the big file again and again; each keeps its longest wait."""

    def __init__(self, port: int, ca: Path):
        self.port, self.ca = port, ca
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.noop_max = self.read_max = 0.0
        self.errors: list[str] = []
        self.threads = [threading.Thread(target=self._noops, daemon=True),
                        threading.Thread(target=self._downloads, daemon=True)]

    def _login(self) -> FTP_TLS:
        ctx = ssl.create_default_context(cafile=str(self.ca))
        ctx.check_hostname = False
        f = ReusingFTP_TLS(context=ctx, timeout=60)
        f.connect("127.0.0.1", self.port)
        f.auth()
        f.login(f"{PROBE_HOST}|anonymous", "bench@example.org")
        f.prot_p()
        return f

    def reset(self) -> None:
        with self.lock:
            self.noop_max = self.read_max = 0.0

    def _noops(self) -> None:
        try:
            f = self._login()
            while not self.stop.is_set():
                t0 = time.monotonic()
                f.voidcmd("NOOP")
                dt = time.monotonic() - t0
                with self.lock:
                    self.noop_max = max(self.noop_max, dt)
                time.sleep(0.002)
            f.quit()
        except Exception as e:  # noqa: BLE001 - reported with the figures
            self.errors.append(f"noop: {e}")

    def _downloads(self) -> None:
        try:
            f = self._login()
            while not self.stop.is_set():
                with f.transfercmd("RETR big.bin") as s:
                    last = time.monotonic()
                    while not self.stop.is_set():
                        b = s.recv(65536)
                        now = time.monotonic()
                        if not b:
                            break
                        with self.lock:
                            self.read_max = max(self.read_max, now - last)
                        last = now
                        time.sleep(0.0005)  # paced: the gap is the proxy's, not the client's
                    if self.stop.is_set():
                        f.abort()
                        break
                f.voidresp()
        except Exception as e:  # noqa: BLE001
            if not self.stop.is_set():
                self.errors.append(f"download: {e}")

    def window(self, fn) -> tuple[float, float, float]:
        """Runs fn() and returns (its result, longest NOOP ms, longest read gap ms)."""
        time.sleep(0.3)
        self.reset()
        r = fn()
        time.sleep(0.2)
        with self.lock:
            return r, self.noop_max * 1000, self.read_max * 1000


def touch(paths) -> None:
    t = time.time()
    for p in paths:
        os.utime(p, (t, t))


def run(binary: str, n: int, cache: Path, work: Path, reloads: int, say=print) -> dict:
    gen = HERE / "gen_sites.py"
    d = cache / f"sites-{n}"
    t0 = time.monotonic()
    subprocess.run([sys.executable, str(gen), str(d), str(n)], check=True)
    say(f"sites: {n} sites ready in {d} ({time.monotonic() - t0:.1f}s)")
    certs = sorted((d / "certs").glob("*.crt"))
    vs = H.Vsftpd(work, "sites-probe", pasv_ports=16,
                  files={"big.bin": os.urandom(BIG_MIB * 1024 * 1024)}, dirs=[])
    vs.start()
    res: dict = {"sites": n}
    one = Proxy(binary, d, vs.address, include=False)
    px = Proxy(binary, d, vs.address, include=True)
    probe = None
    try:
        one.start()
        time.sleep(0.5)
        rss_one = rss_kib(one.p.pid)
        one.stop()
        res["check_s"] = px.check()
        res["start_s"] = px.start()
        time.sleep(1.0)
        res["rss_mib"] = rss_kib(px.p.pid) / 1024
        res["rss_per_site_kib"] = (rss_kib(px.p.pid) - rss_one) / n
        say(f"sites: -t {res['check_s']:.2f}s, start {res['start_s']:.2f}s, "
            f"RSS {res['rss_mib']:.0f} MiB ({res['rss_per_site_kib']:.1f} KiB per site)")
        probe = Probe(px.port, d / "ca.crt")
        for t in probe.threads:
            t.start()
        _, res["gap_idle_noop_ms"], res["gap_idle_read_ms"] = probe.window(
            lambda: time.sleep(2.0))
        cases = [("none", lambda: None), ("one", lambda: touch(certs[:1])),
                 ("all", lambda: touch(certs))]
        for name, change in cases:
            def reload_after_change(change=change):
                change()
                return px.reload()
            (res[f"reload_{name}_s"], res[f"gap_{name}_noop_ms"],
             res[f"gap_{name}_read_ms"]) = probe.window(reload_after_change)
            say(f"sites: reload ({name} changed) {res[f'reload_{name}_s']:.2f}s, longest NOOP "
                f"{res[f'gap_{name}_noop_ms']:.1f} ms, longest read gap "
                f"{res[f'gap_{name}_read_ms']:.1f} ms")
        say(f"sites: no reload: longest NOOP {res['gap_idle_noop_ms']:.1f} ms, longest read gap "
            f"{res['gap_idle_read_ms']:.1f} ms")
        probe.stop.set()
        for t in probe.threads:
            t.join(30)
        res["probe_errors"] = probe.errors
        time.sleep(0.5)
        for name, change in cases:
            change()
            c0 = loop_cpu_s(px.p.pid)
            px.reload()
            time.sleep(0.3)
            res[f"loop_cpu_{name}_ms"] = (loop_cpu_s(px.p.pid) - c0) * 1000
        say("sites: the loop's CPU for a reload: " + ", ".join(
            f"{n} changed {res[f'loop_cpu_{n}_ms']:.1f} ms" for n, _ in cases))
        first = rss_kib(px.p.pid)
        for _ in range(max(0, reloads - 7)):
            touch(certs)
            px.reload()
        time.sleep(2.0)  # the last generation let go is freed on a thread of its own
        res["rss_first_reload_mib"] = first / 1024
        res["rss_after_reloads_mib"] = rss_kib(px.p.pid) / 1024
        res["reloads"] = max(reloads, 7)
        say(f"sites: RSS after the first reloads {first / 1024:.0f} MiB, after "
            f"{res['reloads']} reloads {res['rss_after_reloads_mib']:.0f} MiB")
    finally:
        if probe is not None:
            probe.stop.set()
        px.stop()
        one.stop()
        vs.stop()
    return res


def main() -> int:
    a = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    a.add_argument("--binary", default=os.environ.get("FTPSGATE_BIN", "build/ftpsgate"))
    a.add_argument("--sites", type=int, default=1000)
    a.add_argument("--reloads", type=int, default=10)
    a.add_argument("--cache", default="build-bench/sites-cache")
    a.add_argument("--workdir", default=None)
    args = a.parse_args()
    import tempfile
    work = Path(args.workdir or tempfile.mkdtemp(prefix="sites-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    res = run(os.path.abspath(args.binary), args.sites, Path(args.cache).resolve(), work,
              args.reloads)
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
