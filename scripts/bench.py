#!/usr/bin/env python3
"""scripts/bench.py - ftpsgate against vsftpd's own TLS, on loopback (issue 7).

Run it through scripts/bench, which installs what is missing and builds
build-bench/ (a release build) first. It sets up:

  backend   a plaintext vsftpd (what ftpsgate fronts);
  baseline  the same vsftpd content served by vsftpd with its own TLS (what a
            user has without ftpsgate): anonymous, allow_anon_ssl,
            force_anon_data_ssl, force_anon_logins_ssl, require_ssl_reuse=YES;
  ftpsgate  build-bench/ftpsgate in front of the backend (USER host|user);

and runs the same work against ftpsgate and the baseline alternately (the side
that goes first swaps every round) for --rounds rounds. Every figure is printed
as median (min-max) with the ratio ftpsgate/baseline, and written to
bench-results/bench-DATE.json and .md.

CPU accounting reads /proc/PID/stat: utime+stime of ftpsgate (all threads);
for vsftpd the listener's utime+stime+cutime+cstime, read after the session
processes have ended and been reaped by the listener (their time, and their
own children's, then shows up in the listener's cutime+cstime).

Memory is the sum of Pss from /proc/PID/smaps_rollup of every serving process,
minus the same sum before the sessions were opened, divided by the sessions.

See `scripts/bench --help` for the options.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import re
import resource
import select
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "integration"))
import harness as H  # noqa: E402  (the integration harness; never edited from here)

LIB = Path(__file__).resolve().parent / "bench_lib"
CLK = os.sysconf("SC_CLK_TCK")
GIB = 1 << 30
MIB = 1 << 20
HOST = H.LOOPBACK
SITE = "bench.test"
PROXY_USER = f"{SITE}|anonymous"
PASSWORD = "bench@example.org"

# Figures in table order: key -> (title, unit, better, target, target text).
# better: "higher" or "lower"; target: ("ratio_max"|"ratio_min"|"abs_max", value) or None.
FIGURES = [
    ("download_mbps", "download {dl}, MB/s", "higher", ("ratio_min", 1.5), "≥ 1.5×"),
    ("download_cpu", "download CPU-s/GiB (ftpsgate own vs baseline serving)", "lower",
     ("ratio_max", 0.4), "≤ 0.4×"),
    ("download_cpu_backend", "  download CPU-s/GiB, backend vsftpd behind ftpsgate", "lower", None, ""),
    ("download_cpu_sum", "  download CPU-s/GiB, ftpsgate + backend", "lower", None, ""),
    ("download_plain_mbps", "  download MB/s, plaintext backend alone (reference)", "higher", None, ""),
    ("upload_mbps", "upload {ul}, MB/s", "higher", ("ratio_min", 1.5), "≥ 1.5×"),
    ("upload_cpu", "upload CPU-s/GiB (ftpsgate own vs baseline serving)", "lower",
     ("ratio_max", 0.4), "≤ 0.4×"),
    ("upload_cpu_backend", "  upload CPU-s/GiB, backend vsftpd behind ftpsgate", "lower", None, ""),
    ("upload_cpu_sum", "  upload CPU-s/GiB, ftpsgate + backend", "lower", None, ""),
    ("upload_plain_mbps", "  upload MB/s, plaintext backend alone (reference)", "higher", None, ""),
    ("logins_seq", "FTPS logins/s, sequential", "higher", ("ratio_min", 1.5), "≥ 1.5×"),
    ("logins_conc", "FTPS logins/s, 8 concurrent clients", "higher", ("ratio_min", 1.5), "≥ 1.5×"),
    ("login_cpu_ms", "  server CPU-ms per login, 8 concurrent (ftpsgate own vs baseline)", "lower",
     None, ""),
    ("login_cpu_backend_ms", "  backend vsftpd CPU-ms per login behind ftpsgate, 8 concurrent",
     "lower", None, ""),
    ("logins_plain_seq", "  plaintext logins/s to the backend alone, sequential (reference)",
     "higher", None, ""),
    ("logins_plain_conc", "  plaintext logins/s to the backend alone, 8 concurrent (reference)",
     "higher", None, ""),
    ("mem_kib", "memory KiB per idle TLS session, {n} open (ftpsgate own vs baseline all)",
     "lower", ("abs_max", 64.0), "≤ 64 KiB"),
    ("mem_anon_kib", "  same, anonymous memory only (Pss_Anon)", "lower", None, ""),
    ("mem_backend_kib", "  memory KiB per session, backend vsftpd behind ftpsgate", "lower", None, ""),
    ("mem_sum_kib", "  memory KiB per session, ftpsgate + backend", "lower", None, ""),
    ("small_median_ms", "4 KiB download in an open session, median ms", "lower",
     ("ratio_max", 0.8), "≤ 0.8×"),
    ("small_p90_ms", "4 KiB download in an open session, p90 ms", "lower", None, ""),
    ("datapath_frac_down", "data path per core / cipher speed, download", "higher", None, ""),
    ("datapath_frac_up", "data path per core / cipher speed, upload", "higher", None, ""),
]
FIG = {f[0]: f for f in FIGURES}


class BenchError(Exception):
    pass


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --------------------------------------------------------------------------
# /proc readers
# --------------------------------------------------------------------------

def proc_cpu(pid: int, children: bool = False) -> float:
    """CPU seconds of pid (all threads); with children=True plus the reaped
    children's cutime+cstime."""
    rest = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # rest[0] is field 3 (state): utime is field 14 -> rest[11].
    ticks = int(rest[11]) + int(rest[12])
    if children:
        ticks += int(rest[13]) + int(rest[14])
    return ticks / CLK


def smaps(pid: int) -> dict:
    out = {}
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            k, _, v = line.partition(":")
            if v.strip().endswith("kB"):
                out[k.strip()] = int(v.split()[0])
    except (OSError, ValueError):
        pass
    return out


def mem_sum(pids) -> dict:
    """Summed Pss, Pss_Anon, Rss (kB) and the process count."""
    tot = {"Pss": 0, "Pss_Anon": 0, "Rss": 0, "procs": 0}
    for p in pids:
        m = smaps(p)
        if not m:
            continue
        tot["procs"] += 1
        for k in ("Pss", "Pss_Anon", "Rss"):
            tot[k] += m.get(k, 0)
    return tot


def tree(pid: int) -> list[int]:
    return [pid] + sorted(H.descendants(pid))


def status_field(pid: int, name: str) -> Optional[str]:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(name + ":"):
                return line.split(":", 1)[1].strip()
    return None


def machine_busy() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = f[3] + (f[4] if len(f) > 4 else 0)
    return sum(f) - idle, sum(f)


# --------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------

def cmd_out(cmd, shell=False) -> str:
    try:
        r = subprocess.run(cmd, shell=shell, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           stdin=subprocess.DEVNULL, timeout=30, text=True)
        return r.stdout.strip()
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unavailable ({e})"


def write_random(path: Path, size: int) -> None:
    """size bytes from the kernel's CSPRNG (incompressible), 4 MiB at a time."""
    chunk = 4 * MIB
    with open(path, "wb") as f:
        left = size
        while left > 0:
            n = min(chunk, left)
            f.write(os.urandom(n))
            left -= n
    os.chmod(path, 0o644)


def raise_nofile(want: int) -> tuple[int, int]:
    """Raise RLIMIT_NOFILE for this process and so for everything it starts
    (the proxy, vsftpd, the clients). Root may raise the hard limit too."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if want > hard and os.geteuid() == 0:
        try:
            nr_open = int(Path("/proc/sys/fs/nr_open").read_text())
        except (OSError, ValueError):
            nr_open = 1 << 20
        hard = min(want, nr_open)
    new = min(want, hard)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(new, soft), hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def can_raise_hard() -> bool:
    """CAP_SYS_RESOURCE (bit 24) in the effective set: may raise hard limits."""
    v = status_field(os.getpid(), "CapEff")
    return bool(v) and bool(int(v, 16) & (1 << 24))


def stats(vals: list[float]) -> Optional[dict]:
    vals = [v for v in vals if v is not None]
    if not vals:
        return None
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "n": len(vals),
            "values": vals}


# vsftpd runs under bench_lib/reaper.c, a child subreaper: vs.proc is the
# reaper, its one long-lived child the vsftpd listener. A vsftpd session
# process sometimes exits before its own children; those are re-parented (to
# init without the reaper) and their CPU never reaches the listener's cutime
# (measured here: about half of a TLS download's CPU). Under the reaper they
# are reaped there, so reaper + listener, children included, is every
# vsftpd process's CPU.

def vs_listener(vs: H.Vsftpd) -> int:
    pid = getattr(vs, "_bench_listener", None)
    if pid is None:
        kids = [int(p) for p in Path(f"/proc/{vs.proc.pid}/task/{vs.proc.pid}/children")
                .read_text().split()]
        if len(kids) != 1:
            raise BenchError(f"vsftpd {vs.name}: expected one listener under the reaper, "
                             f"found {kids}")
        pid = vs._bench_listener = kids[0]
    return pid


def vs_cpu(vs: H.Vsftpd) -> float:
    """CPU seconds of every process this vsftpd ran, ended ones included
    (valid once wait_reaped() has returned)."""
    return proc_cpu(vs.proc.pid, children=True) + proc_cpu(vs_listener(vs), children=True)


def wait_reaped(vs: H.Vsftpd, timeout: float = 60.0) -> None:
    """Until no vsftpd session process is left (all ended and reaped by the
    listener or the reaper), so that cutime/cstime hold their CPU."""
    lst = vs_listener(vs)
    H.wait_until(lambda: H.descendants(vs.proc.pid) == {lst}, timeout, interval=0.02,
                 what=f"vsftpd {vs.name} sessions to be reaped")


# --------------------------------------------------------------------------
# The test world
# --------------------------------------------------------------------------

VSFTPD_EXTRA = {
    # Protocol logging writes a log line per command; off on both vsftpd
    # instances (the transfer log stays on, as in Debian's default).
    "log_ftp_protocol": "NO",
    "idle_session_timeout": "600",
    "data_connection_timeout": "120",
}


class Side:
    """One thing a client talks to: its name, port and login user."""

    def __init__(self, name: str, port: int, user: str):
        self.name = name
        self.port = port
        self.user = user


class World:
    def __init__(self, args, work: Path):
        self.args = args
        self.work = work
        self.procs: list[subprocess.Popen] = []    # clients/stubs we started
        self.proxies: list[H.Proxy] = []
        self.vsftpds: list[H.Vsftpd] = []
        self.binary = Path(args.binary)
        self.ftpsload = work / "ftpsload"
        self.small_data = os.urandom(4096)

    # Setup ------------------------------------------------------------------

    def build_client(self) -> None:
        cc = shutil.which("cc") or shutil.which("gcc")
        if not cc:
            raise BenchError("no C compiler (cc/gcc) for the benchmark client")
        for src, out, libs in (("ftpsload.c", self.ftpsload, ["-lssl", "-lcrypto"]),
                               ("reaper.c", self.work / "reaper", [])):
            r = subprocess.run([cc, "-O2", "-o", str(out), str(LIB / src), *libs],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            if r.returncode != 0:
                raise BenchError(f"building {src} failed:\n{r.stdout}")
        # The harness starts [H.VSFTPD_BIN, conf]: point it (in this process
        # only) at a script that runs vsftpd under the reaper.
        wrapper = self.work / "vsftpd-reaped"
        wrapper.write_text(f"#!/bin/sh\nexec {shlex.quote(str(self.work / 'reaper'))} "
                           f"{shlex.quote(str(H.VSFTPD_BIN))} \"$@\"\n")
        wrapper.chmod(0o755)
        H.VSFTPD_BIN = str(wrapper)

    def start(self) -> None:
        a = self.args
        self.certs = H.CertFactory(self.work / "certs")
        self.central = self.certs.central()
        vcert = self.certs.backend_tls()
        files = {"small.bin": self.small_data}
        self.backend = H.Vsftpd(self.work, "backend", pasv_ports=64, files=files, dirs=[],
                                extra=VSFTPD_EXTRA)
        self.vsftpds.append(self.backend)
        self.backend.start()
        self.baseline = H.Vsftpd(self.work, "baseline", tls=True, cert=vcert,
                                 require_ssl_reuse=True, pasv_ports=64, files=files, dirs=[],
                                 extra=VSFTPD_EXTRA)
        self.vsftpds.append(self.baseline)
        self.baseline.start()
        # The same content for both: the big file is hard-linked into both roots.
        data = self.work / "data"
        data.mkdir(exist_ok=True)
        t0 = time.monotonic()
        self.big = data / "big.bin"
        write_random(self.big, a.download_mib * MIB)
        self.up = data / "up.bin"
        write_random(self.up, a.upload_mib * MIB)
        for vs in (self.backend, self.baseline):
            os.link(self.big, vs.root / "big.bin")
        log(f"test files: {a.download_mib} MiB + {a.upload_mib} MiB random in "
            f"{time.monotonic() - t0:.1f}s under {self.work}")
        self.proxy = self.new_proxy()
        self.sides = {
            "ftpsgate": Side("ftpsgate", self.proxy.port, PROXY_USER),
            "baseline": Side("baseline", self.baseline.port, "anonymous"),
        }

    def new_proxy(self, backend_address: Optional[str] = None, sessions: int = 0) -> H.Proxy:
        a = self.args
        lo, hi = H.free_port_range(max(64, 16 * a.workers))
        cap = max(4096, 2 * max(a.sessions, sessions) + 1024)
        backends = {"site": H.backend_section(self.backend if backend_address is None else None,
                                              hostnames=[SITE], address=backend_address)}
        px = H.Proxy(self.work, self.central, backends, implicit=False, binary=self.binary,
                     ca=self.certs.ca, name="ftpsgate",
                     proxy={"log_level": "info", "workers": str(a.workers),
                            "max_sessions": str(cap), "max_sessions_per_ip": str(cap),
                            "passive_ports": f"{lo}-{hi}", "banner": "ftpsgate bench",
                            "login_timeout": "120", "idle_timeout": "900",
                            "data_timeout": "60", "connect_timeout": "10",
                            "shutdown_grace": "2"})
        self.proxies.append(px)
        px.start(timeout=30)
        return px

    def stop_proxy(self, px: H.Proxy) -> Optional[int]:
        rc = px.stop(timeout=15)
        return rc

    def cleanup(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                H._kill_group(p, signal.SIGKILL)
                with contextlib.suppress(Exception):
                    p.wait(10)
        for px in self.proxies:
            with contextlib.suppress(Exception):
                px.stop(timeout=10)
        for vs in self.vsftpds:
            with contextlib.suppress(Exception):
                vs.stop(timeout=10)

    # CPU snapshots --------------------------------------------------------

    def cpu_snapshot(self, proxy: Optional[H.Proxy] = None) -> dict:
        """Serving-process CPU seconds; waits for vsftpd sessions to be reaped."""
        proxy = proxy or self.proxy
        wait_reaped(self.backend)
        wait_reaped(self.baseline)
        return {"ftpsgate": proc_cpu(proxy.pid),
                "backend": vs_cpu(self.backend),
                "baseline": vs_cpu(self.baseline),
                "client": _children_cpu()}

    # Processes we start ---------------------------------------------------

    def popen(self, cmd, **kw) -> subprocess.Popen:
        p = subprocess.Popen(cmd, start_new_session=True, **kw)
        self.procs.append(p)
        return p

    def run(self, cmd, timeout: float) -> subprocess.CompletedProcess:
        p = self.popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True)
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            H._kill_group(p, signal.SIGKILL)
            p.communicate()
            raise BenchError(f"{cmd[0]} did not finish within {timeout}s")
        finally:
            self.procs.remove(p)
        return subprocess.CompletedProcess(cmd, p.returncode, out, err)


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


# --------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------

CIPHER_RX = re.compile(r"SSL connection using (\S+) / (\S+)")


def cipher_to_speed_name(c: str) -> Optional[str]:
    u = c.upper()
    if "CHACHA20" in u:
        return "chacha20-poly1305"
    if "AES_256_GCM" in u or "AES256-GCM" in u:
        return "aes-256-gcm"
    if "AES_128_GCM" in u or "AES128-GCM" in u:
        return "aes-128-gcm"
    return None


def curl_transfer(w: World, side: Side, kind: str, tag: str, tls: bool = True) -> dict:
    """One curl download of big.bin or upload of up.bin; returns MB/s, CPU
    seconds of each serving process, the cipher."""
    a = w.args
    size = (a.download_mib if kind == "download" else a.upload_mib) * MIB
    if kind == "download":
        path, extra = "/big.bin", ["-o", "/dev/null"]
    else:
        name = f"up-{side.name}-{tag}.bin"
        path, extra = f"/upload/{name}", ["-T", str(w.up)]
    url = f"ftp://{HOST}:{side.port}{path}"
    cmd = ["curl", "-sS", "-v", "-k", "--connect-timeout", "10", "--max-time",
           str(a.transfer_timeout), "-u", f"{side.user}:{PASSWORD}", *extra,
           "-w", "BENCH %{size_download} %{size_upload} %{time_total}\n", url]
    if tls:
        cmd.insert(3, "--ssl-reqd")
    s0 = w.cpu_snapshot()
    b0 = machine_busy()
    r = w.run(cmd, timeout=a.transfer_timeout + 30)
    b1 = machine_busy()
    s1 = w.cpu_snapshot()
    m = re.search(r"BENCH (\d+) (\d+) ([\d.]+)", r.stdout)
    if r.returncode != 0 or not m:
        raise BenchError(f"curl {kind} via {side.name} failed (exit {r.returncode}):\n"
                         + "\n".join(r.stderr.splitlines()[-15:]))
    moved = int(m.group(1)) if kind == "download" else int(m.group(2))
    if moved != size:
        raise BenchError(f"curl {kind} via {side.name} moved {moved} bytes, not {size}")
    if kind == "upload":
        root = w.baseline.root if side.name == "baseline" else w.backend.root
        f = root / "upload" / name
        got = f.stat().st_size if f.exists() else -1
        with contextlib.suppress(OSError):
            f.unlink()
        if got != size:
            raise BenchError(f"upload via {side.name}: the server stored {got} bytes, not {size}")
    secs = float(m.group(3))
    d = {k: s1[k] - s0[k] for k in s0}
    ciphers = CIPHER_RX.findall(r.stderr)
    return {"mbps": size / secs / 1e6, "seconds": secs, "bytes": size,
            "cpu": d, "cipher": ciphers[-1] if ciphers else None,
            "machine_busy": (b1[0] - b0[0]) / max(1, b1[1] - b0[1])}


def record_transfer(res: dict, side: str, kind: str, t: dict) -> None:
    gib = t["bytes"] / GIB
    res.setdefault(f"{kind}_mbps", {}).setdefault(side, []).append(t["mbps"])
    if side == "ftpsgate":
        own = t["cpu"]["ftpsgate"] / gib
        be = t["cpu"]["backend"] / gib
        res.setdefault(f"{kind}_cpu", {}).setdefault(side, []).append(own)
        res.setdefault(f"{kind}_cpu_backend", {}).setdefault(side, []).append(be)
        res.setdefault(f"{kind}_cpu_sum", {}).setdefault(side, []).append(own + be)
        if t["cpu"]["ftpsgate"] > 0:
            res.setdefault(f"_{kind}_bytes_per_cpu", {}).setdefault(side, []).append(
                t["bytes"] / t["cpu"]["ftpsgate"])
    else:
        serving = t["cpu"]["baseline"] / gib
        for k in (f"{kind}_cpu", f"{kind}_cpu_sum"):
            res.setdefault(k, {}).setdefault(side, []).append(serving)
        if t["cpu"]["baseline"] > 0:
            res.setdefault(f"_{kind}_bytes_per_cpu", {}).setdefault(side, []).append(
                t["bytes"] / t["cpu"]["baseline"])
    res.setdefault(f"_{kind}_client_cpu_per_gib", {}).setdefault(side, []).append(
        t["cpu"]["client"] / gib)
    res.setdefault(f"_{kind}_machine_busy", {}).setdefault(side, []).append(t["machine_busy"])
    if t["cipher"]:
        res.setdefault("_ciphers", {}).setdefault(side, set()).add(" / ".join(t["cipher"]))


def login_run(w: World, side: Side, procs: int, plain: bool = False) -> dict:
    a = w.args
    mode = "plainlogin" if plain else "login"
    s0 = w.cpu_snapshot()
    r = w.run([str(w.ftpsload), mode, HOST, str(side.port), side.user, str(a.login_seconds),
               str(procs)], timeout=a.login_seconds + 60)
    s1 = w.cpu_snapshot()
    m = re.search(r"logins=(\d+) failures=(\d+) elapsed=([\d.]+) client_cpu=([\d.]+)", r.stdout)
    if r.returncode != 0 or not m:
        raise BenchError(f"ftpsload {mode} via {side.name} failed: {r.stdout} {r.stderr}")
    n, fails, el, ccpu = int(m.group(1)), int(m.group(2)), float(m.group(3)), float(m.group(4))
    if n == 0 or fails > max(2, n // 100):
        raise BenchError(f"ftpsload {mode} via {side.name}: {n} logins, {fails} failures")
    d = {k: s1[k] - s0[k] for k in s0}
    return {"rate": n / el, "logins": n, "failures": fails, "elapsed": el,
            "client_cpu_frac": ccpu / el / (os.cpu_count() or 1),
            "cpu_ms_per_login": {k: v * 1000 / n for k, v in d.items() if k != "client"}}


class Holder:
    """ftpsload hold: N idle logged-in sessions until release()."""

    def __init__(self, w: World, port: int, user: str, n: int, procs: int, timeout: float):
        self.w = w
        self.p = w.popen([str(w.ftpsload), "hold", HOST, str(port), user, str(n), str(procs)],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
        t0 = time.monotonic()
        ready, _, _ = select.select([self.p.stdout], [], [], timeout)
        line = self.p.stdout.readline() if ready else ""
        self.open_seconds = time.monotonic() - t0
        m = re.match(r"ready (\d+) failures=(\d+)", line)
        if not m:
            self.release()
            raise BenchError(f"ftpsload hold {n} on port {port}: no 'ready' within {timeout}s "
                             f"({line!r})")
        self.ok, self.failures = int(m.group(1)), int(m.group(2))

    def release(self, timeout: float = 300) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.p.stdin.close()
        try:
            self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            H._kill_group(self.p, signal.SIGKILL)
            self.p.wait(10)
        with contextlib.suppress(ValueError):
            self.w.procs.remove(self.p)


def memory_run(w: World, side: str, n: int) -> dict:
    """Idle-session memory: a fresh ftpsgate each time (glibc keeps freed heap,
    so a proxy that already held sessions would look free), the baseline's
    listener as it is (its sessions are fresh processes anyway)."""
    a = w.args
    out: dict = {"sessions": n}
    if side == "ftpsgate":
        px = w.new_proxy()
        try:
            warm = Holder(w, px.port, PROXY_USER, 8, 1, 60)
            warm.release()
            wait_reaped(w.backend)
            time.sleep(0.3)
            before_px = mem_sum([px.pid])
            before_be = mem_sum(tree(w.backend.proc.pid))
            h = Holder(w, px.port, PROXY_USER, n, a.open_procs, a.hold_timeout)
            try:
                time.sleep(1.0)
                after_px = mem_sum([px.pid])
                after_be = mem_sum(tree(w.backend.proc.pid))
                out.update(open_seconds=h.open_seconds, held=h.ok, failures=h.failures,
                           proxy_threads=status_field(px.pid, "Threads"),
                           proxy_fds=px.fd_count(), backend_procs=after_be["procs"])
            finally:
                h.release()
            wait_reaped(w.backend, 120)
            time.sleep(0.3)
            closed_px = mem_sum([px.pid])
        finally:
            w.stop_proxy(px)
        held = max(1, out["held"])
        out["kib"] = (after_px["Pss"] - before_px["Pss"]) / held
        out["anon_kib"] = (after_px["Pss_Anon"] - before_px["Pss_Anon"]) / held
        out["backend_kib"] = (after_be["Pss"] - before_be["Pss"]) / held
        out["sum_kib"] = out["kib"] + out["backend_kib"]
        out["raw"] = {"proxy_before": before_px, "proxy_after": after_px,
                      "proxy_after_close": closed_px, "backend_before": before_be,
                      "backend_after": after_be}
    else:
        vs = w.baseline
        warm = Holder(w, vs.port, "anonymous", 8, 1, 60)
        warm.release()
        wait_reaped(vs)
        time.sleep(0.3)
        before = mem_sum(tree(vs.proc.pid))
        h = Holder(w, vs.port, "anonymous", n, a.open_procs, a.hold_timeout)
        try:
            time.sleep(1.0)
            after = mem_sum(tree(vs.proc.pid))
            out.update(open_seconds=h.open_seconds, held=h.ok, failures=h.failures,
                       procs=after["procs"])
        finally:
            h.release()
        wait_reaped(vs, 120)
        held = max(1, out["held"])
        out["kib"] = (after["Pss"] - before["Pss"]) / held
        out["anon_kib"] = (after["Pss_Anon"] - before["Pss_Anon"]) / held
        out["sum_kib"] = out["kib"]
        out["raw"] = {"before": before, "after": after}
    if out["held"] < n:
        raise BenchError(f"memory via {side}: only {out['held']} of {n} sessions opened "
                         f"({out['failures']} failures)")
    return out


def small_run(w: World, side: Side) -> dict:
    """N sequential 4 KiB downloads in one logged-in session, each a new data
    connection whose TLS resumes the control session; times each retrbinary."""
    a = w.args
    c = H.FtpsClient(verify=False, reuse_session=True, timeout=30)
    times = []
    try:
        c.connect(HOST, side.port)
        r = c.tls_login(side.user, PASSWORD, prot_p=True)
        if r.code != 230:
            raise BenchError(f"small files via {side.name}: login answered {r}")
        c.voidcmd("TYPE I")
        for _ in range(a.small_count):
            buf = bytearray()
            t0 = time.perf_counter()
            c.retrbinary("RETR small.bin", buf.extend)
            times.append((time.perf_counter() - t0) * 1000)
            if bytes(buf) != w.small_data:
                raise BenchError(f"small files via {side.name}: wrong content")
        reused = sum(c.data_session_reused)
        with contextlib.suppress(Exception):
            c.quit()
    finally:
        c.close_quietly()
    times.sort()
    p90 = times[min(len(times) - 1, int(round(0.9 * (len(times) - 1))))]
    return {"median_ms": statistics.median(times), "p90_ms": p90, "count": len(times),
            "resumed": reused}


def openssl_speed(seconds: int) -> dict:
    out = {}
    for name in ("aes-128-gcm", "aes-256-gcm", "chacha20-poly1305"):
        r = subprocess.run(["openssl", "speed", "-mr", "-evp", name, "-bytes", "16384",
                            "-seconds", str(seconds)], stdout=subprocess.PIPE,
                           stderr=subprocess.DEVNULL, text=True, timeout=60 + 4 * seconds)
        m = re.search(r"^\+F:\d+:[^:]+:([\d.]+)", r.stdout, re.M)
        out[name] = float(m.group(1)) if m else None
    return out


def big_sessions_check(w: World, n: int) -> dict:
    """n idle sessions in one ftpsgate, fd limit raised, a one-process stub
    backend (see bench_lib/stub_backend.py for why not vsftpd)."""
    a = w.args
    port = H.free_port()
    stub = w.popen([sys.executable, str(LIB / "stub_backend.py"), str(port)],
                   stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                   text=True)
    res: dict = {"sessions": n, "backend": "one-process stub (bench_lib/stub_backend.py)"}
    try:
        ready, _, _ = select.select([stub.stdout], [], [], 20)
        if not ready or not stub.stdout.readline().startswith("listening"):
            raise BenchError("stub backend did not start")
        px = w.new_proxy(backend_address=f"{HOST}:{port}", sessions=n)
        try:
            need = 2 * n + 1024
            with contextlib.suppress(OSError, ValueError):
                cur = resource.prlimit(px.pid, resource.RLIMIT_NOFILE)
                if cur[0] < need:
                    resource.prlimit(px.pid, resource.RLIMIT_NOFILE,
                                     (max(need, cur[0]), max(need, cur[1])))
            res["proxy_nofile"] = resource.prlimit(px.pid, resource.RLIMIT_NOFILE)[0]
            # Two descriptors per proxied session (client and backend) plus
            # the listeners, the loop's own and the log.
            res["fds_needed"] = 2 * n + (px.fd_count() or 0)
            res["fd_limited"] = res["fds_needed"] > res["proxy_nofile"]
            if res["fd_limited"]:
                log(f"  note: {n} sessions need about {res['fds_needed']} descriptors in the "
                    f"proxy; its RLIMIT_NOFILE is {res['proxy_nofile']} and the hard limit "
                    f"cannot be raised here{'' if can_raise_hard() else ' (no CAP_SYS_RESOURCE)'}")
            warm = Holder(w, px.port, PROXY_USER, 8, 1, 60)
            warm.release()
            time.sleep(0.3)
            before = mem_sum([px.pid])
            h = Holder(w, px.port, PROXY_USER, n, a.open_procs * 2, a.hold_timeout)
            try:
                time.sleep(1.0)
                after = mem_sum([px.pid])
                res.update(held=h.ok, failures=h.failures, open_seconds=h.open_seconds,
                           proxy_alive=px.alive(), proxy_processes=1 + len(H.descendants(px.pid)),
                           proxy_threads=status_field(px.pid, "Threads"),
                           proxy_fds=px.fd_count(), before=before, after=after)
            finally:
                h.release()
            res["alive_after"] = px.alive()
            errs = [l for l in px.log_text().splitlines()
                    if re.search(r"open files|EMFILE|level=error|\berror\b", l)]
            res["proxy_log_errors"] = len(errs)
            res["proxy_log_error_sample"] = errs[:3]
        finally:
            rc = w.stop_proxy(px)
            res["proxy_exit"] = rc
    finally:
        H._kill_group(stub, signal.SIGKILL)
        stub.wait(10)
        w.procs.remove(stub)
    held = max(1, res.get("held", 0))
    res["kib"] = (res["after"]["Pss"] - res["before"]["Pss"]) / held
    res["anon_kib"] = (res["after"]["Pss_Anon"] - res["before"]["Pss_Anon"]) / held
    res["ok"] = bool(res.get("held") == n and res.get("alive_after") and res["proxy_processes"] == 1)
    if res["fd_limited"] and res.get("held", 0) < n:
        res["why_not"] = (f"RLIMIT_NOFILE: {n} proxied sessions need about {res['fds_needed']} "
                          f"descriptors, the limit is {res['proxy_nofile']}")
    return res


# --------------------------------------------------------------------------
# Optional profiles (--perf, --callgrind)
# --------------------------------------------------------------------------

def perf_profile(w: World) -> dict:
    """perf record (cpu-clock) on ftpsgate during one download and one upload:
    the split by library (kernel, libcrypto, libc, ...) and the top symbols by
    self time. Debian's libcrypto has no symbols for its assembly (AES-GCM
    shows as addresses around 0x243xxx); callgrind below names the callers."""
    out = {}
    if not shutil.which("perf"):
        return {"error": "perf not installed"}
    for kind in ("download", "upload"):
        data = w.work / f"perf-{kind}.data"
        rec = w.popen(["perf", "record", "-e", "cpu-clock", "-F", "1999", "-o", str(data),
                       "-p", str(w.proxy.pid)], stdin=subprocess.DEVNULL,
                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        time.sleep(1.0)
        try:
            t = curl_transfer(w, w.sides["ftpsgate"], kind, "perf")
        finally:
            rec.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                rec.wait(30)
            w.procs.remove(rec)
        lines = [f"{t['mbps']:.0f} MB/s, ftpsgate {t['cpu']['ftpsgate']:.2f} CPU-s for "
                 f"{t['bytes'] / MIB:.0f} MiB"]
        for sort, limit in (("dso", "0.5"), ("dso,sym", "0.8")):
            rep = subprocess.run(["perf", "report", "-i", str(data), "--stdio", "--no-children",
                                  "--sort", sort, "--percent-limit", limit],
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                 timeout=120)
            lines.append(f"by {sort}:")
            lines += [l.rstrip() for l in rep.stdout.splitlines()
                      if l.strip() and not l.startswith("#")][:20]
        out[kind] = lines
    return out


def callgrind_profile(w: World) -> dict:
    """A second ftpsgate under valgrind --tool=callgrind, instrumentation off
    during start-up (the certificate checks), then one phase at a time, each
    dumped separately: a 64 MiB download, a 64 MiB upload, 50 full logins and
    100 small downloads. Instruction counts are repeatable on a noisy
    machine. Returns the top functions by self and inclusive Ir per phase."""
    if not shutil.which("valgrind") or not shutil.which("callgrind_control"):
        return {"error": "valgrind (callgrind_control) not installed"}
    cg_dir = w.work / "callgrind"
    cg_dir.mkdir(exist_ok=True)
    cg_out = cg_dir / "cg.out"
    wrapper = w.work / "ftpsgate-callgrind"
    wrapper.write_text("#!/bin/sh\nexec valgrind --tool=callgrind --quiet --instr-atstart=no "
                       f"--callgrind-out-file={shlex.quote(str(cg_out))} "
                       f"{shlex.quote(str(w.binary))} \"$@\"\n")
    wrapper.chmod(0o755)
    saved = w.binary
    w.binary = wrapper
    try:
        px = w.new_proxy()
    finally:
        w.binary = saved
    src = w.work / "data" / "cg.bin"
    write_random(src, 64 * MIB)
    os.link(src, w.backend.root / "cg.bin")
    side = Side("ftpsgate-callgrind", px.port, PROXY_USER)
    out: dict = {}

    def ctl(*a):
        subprocess.run(["callgrind_control", *a, str(px.pid)], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=60)

    def small_files():
        c = H.FtpsClient(verify=False, reuse_session=True, timeout=60)
        try:
            c.connect(HOST, px.port)
            c.tls_login(PROXY_USER, PASSWORD, prot_p=True)
            for _ in range(100):
                c.retrbinary("RETR small.bin", lambda b: None)
            c.quit()
        finally:
            c.close_quietly()

    phases = [
        ("download 64 MiB", lambda: w.run(["curl", "-sS", "--ssl-reqd", "-k", "-u",
                                            f"{PROXY_USER}:{PASSWORD}", "-o", "/dev/null",
                                            f"ftp://{HOST}:{px.port}/cg.bin"], timeout=600)),
        ("upload 64 MiB", lambda: w.run(["curl", "-sS", "--ssl-reqd", "-k", "-u",
                                          f"{PROXY_USER}:{PASSWORD}", "-T", str(src),
                                          f"ftp://{HOST}:{px.port}/upload/cg-up.bin"],
                                         timeout=600)),
        ("50 logins", lambda: [w.run([str(w.ftpsload), "hold", HOST, str(px.port), PROXY_USER,
                                      "1", "1"], timeout=120) for _ in range(50)]),
        ("100 small downloads", small_files),
    ]
    try:
        for i, (name, fn) in enumerate(phases):
            ctl("-z")                      # zero the counters
            ctl("-i", "on")
            fn()
            ctl("-i", "off")
            ctl(f"--dump=phase{i}")
    finally:
        w.stop_proxy(px)
        with contextlib.suppress(OSError):
            (w.backend.root / "upload" / "cg-up.bin").unlink()
    parts = sorted(cg_dir.glob("cg.out*"), key=lambda p: p.stat().st_mtime)
    dumps = {}
    for f in parts:
        with contextlib.suppress(OSError):
            m = re.search(r"^desc: Trigger: Client Request: phase(\d+)|^desc: Trigger: .*phase(\d+)",
                          f.read_text(errors="replace")[:4000], re.M)
            if m:
                dumps[int(m.group(1) or m.group(2))] = f
    for i, (name, _) in enumerate(phases):
        f = dumps.get(i)
        if not f:
            out[name] = ["no dump"]
            continue
        lines = []
        for incl in (False, True):
            ann = subprocess.run(["callgrind_annotate", f"--inclusive={'yes' if incl else 'no'}",
                                  str(f)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                 text=True, timeout=120)
            body = ann.stdout.split("file:function", 1)[-1].splitlines()[2:]
            rows = [l.rstrip() for l in body if re.match(r"^\s*[\d,]+ \(", l)]
            if incl:   # the inclusive view: only named functions, they show the callers
                rows = [l for l in rows if "???:0x" not in l][:25]
                lines.append("inclusive (named functions):")
            else:
                tot = re.search(r"^([\d,]+) \(100.0%\)\s+PROGRAM TOTALS", ann.stdout, re.M)
                lines.append(f"total Ir {tot.group(1) if tot else '?'}; self:")
                rows = rows[:15]
            lines += rows
        out[name] = lines
    return out


# --------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------

def fmt(v: Optional[float]) -> str:
    if v is None:
        return "n/a"
    if abs(v) >= 100:
        return f"{v:.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    if abs(v) >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def cell(s: Optional[dict]) -> str:
    if not s:
        return "n/a"
    if s["n"] == 1:
        return fmt(s["median"])
    return f"{fmt(s['median'])} ({fmt(s['min'])}–{fmt(s['max'])})"


def verdict(key: str, f: Optional[dict], b: Optional[dict]) -> tuple[Optional[float], str]:
    _, _, _, target, _ = FIG[key]
    ratio = None
    if f and b and b["median"]:
        ratio = f["median"] / b["median"]
    if target is None:
        return ratio, ""
    kind, val = target
    if kind == "abs_max":
        if not f:
            return ratio, "n/a"
        return ratio, ("yes" if f["median"] <= val else
                       f"no ({f['median'] / val:.2f}× the target)")
    if ratio is None:
        return ratio, "n/a"
    if kind == "ratio_min":
        return ratio, "yes" if ratio >= val else f"no (needs {val / ratio:.2f}× more)"
    return ratio, "yes" if ratio <= val else f"no ({ratio / val:.2f}× over)"


def size_text(mib: int) -> str:
    return f"{mib // 1024} GiB" if mib % 1024 == 0 else f"{mib} MiB"


def build_table(summary: dict, args) -> list[list[str]]:
    rows = []
    for key, title, _, _, ttext in FIGURES:
        title = title.format(dl=size_text(args.download_mib), ul=size_text(args.upload_mib),
                             n=f"{args.sessions:,}")
        s = summary.get(key, {})
        f, b = s.get("ftpsgate"), s.get("baseline")
        if not f and not b:
            continue
        ratio, met = verdict(key, f, b)
        rows.append([title, cell(f), cell(b), f"{ratio:.2f}×" if ratio is not None else "",
                     ttext, met])
    return rows


def md_table(rows: list[list[str]]) -> str:
    head = ["figure", "ftpsgate median (min–max)", "baseline median (min–max)",
            "ratio", "target", "met?"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        r = list(r)
        if r[0].startswith("  "):          # a sub-row of the figure above it
            r[0] = "↳ " + r[0].strip()
        r = [("—" if c == "n/a" else c) for c in r]
        out.append("| " + " | ".join(r) + " |")
    return "\n".join(out)


def text_table(rows: list[list[str]]) -> str:
    head = ["figure", "ftpsgate", "baseline", "ratio", "target", "met?"]
    allr = [head] + rows
    wid = [max(len(r[i]) for r in allr) for i in range(len(head))]
    line = lambda r: "  ".join(c.ljust(wid[i]) for i, c in enumerate(r)).rstrip()
    return "\n".join([line(head), line(["-" * x for x in wid])] + [line(r) for r in rows])


def machine_info(args) -> dict:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for l in Path("/proc/cpuinfo").read_text().splitlines():
            if l.startswith("model name"):
                cpu = l.split(":", 1)[1].strip()
                break
    vs = cmd_out("vsftpd -v 0>&1", shell=True)
    return {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "cpu_model": cpu,
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "memory_mib": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // MIB,
        "openssl": cmd_out(["openssl", "version"]),
        "curl": " ".join(cmd_out(["curl", "--version"]).split()[:2]),
        "vsftpd": f"{vs} (Debian {cmd_out(['dpkg-query', '-W', '-f=${Version}', 'vsftpd'])})",
        "ftpsgate": cmd_out([str(args.binary), "--version"]),
        "python": platform.python_version(),
        "loadavg_start": Path("/proc/loadavg").read_text().split()[:3],
    }


# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------

def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="scripts/bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5, help="alternated rounds (default 5)")
    p.add_argument("--quick", action="store_true",
                   help="a short smoke run: 1 round, 64 MiB/32 MiB files, 1 s of logins, "
                        "100 sessions, 100 small files, a 1,000-session check")
    p.add_argument("--workers", type=int, default=1, help="ftpsgate workers = N (default 1)")
    p.add_argument("--sessions", type=int, default=1000,
                   help="idle sessions for the memory figure (default 1000)")
    p.add_argument("--big-sessions", type=int, default=10000,
                   help="idle sessions for the one-process check, 0 to skip (default 10000)")
    p.add_argument("--download-mib", type=int, default=1024)
    p.add_argument("--upload-mib", type=int, default=512)
    p.add_argument("--login-seconds", type=float, default=2.0,
                   help="seconds per login-rate measurement (default 2)")
    p.add_argument("--small-count", type=int, default=500)
    p.add_argument("--speed-seconds", type=int, default=2, help="openssl speed per cipher")
    p.add_argument("--open-procs", type=int, default=8,
                   help="client processes opening the idle sessions (default 8)")
    p.add_argument("--perf", action="store_true",
                   help="also perf-record ftpsgate during one download and one upload")
    p.add_argument("--callgrind", action="store_true",
                   help="also run a second ftpsgate under callgrind (64 MiB down/up, 50 logins)")
    p.add_argument("--binary", default=os.environ.get("FTPSGATE_BIN",
                                                      str(ROOT / "build-bench" / "ftpsgate")))
    p.add_argument("--out", default=str(ROOT / "bench-results"))
    p.add_argument("--workdir", default=None,
                   help="where the test files go (default: /dev/shm if it has room, else $TMPDIR)")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds = 1
        args.download_mib, args.upload_mib = 64, 32
        args.login_seconds = 1.0
        args.sessions = min(args.sessions, 100)
        args.big_sessions = min(args.big_sessions, 1000)
        args.small_count = 100
        args.speed_seconds = 1
    args.transfer_timeout = max(120, args.download_mib // 4)
    args.hold_timeout = max(120, args.big_sessions / 20, args.sessions / 20)
    if args.rounds < 1 or args.workers < 1:
        p.error("--rounds and --workers must be at least 1")
    return args


def pick_workdir(args) -> Path:
    need = (args.download_mib + 3 * args.upload_mib + 256) * MIB
    if args.workdir:
        base = args.workdir
    else:
        base = tempfile.gettempdir()
        with contextlib.suppress(OSError):
            st = os.statvfs("/dev/shm")
            if st.f_bavail * st.f_frsize > need + 2 * GIB:
                base = "/dev/shm"
    st = os.statvfs(base)
    if st.f_bavail * st.f_frsize < need:
        raise BenchError(f"{base} has less than {need // MIB} MiB free")
    return Path(tempfile.mkdtemp(prefix="ftpsgate-bench-", dir=base))


def pid_headroom() -> int:
    try:
        pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    except (OSError, ValueError):
        pid_max = 32768
    tasks = sum(len(os.listdir(f"/proc/{d}/task")) for d in os.listdir("/proc")
                if d.isdigit() and os.path.isdir(f"/proc/{d}/task"))
    return pid_max - tasks


def main(argv=None) -> int:
    args = parse_args(argv)
    t_start = time.monotonic()
    busy0 = machine_busy()

    def on_term(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)

    if not Path(args.binary).is_file():
        print(f"bench: no proxy binary at {args.binary} (run scripts/bench, which builds it)",
              file=sys.stderr)
        return 1
    nofile = raise_nofile(max(65536, 3 * max(args.big_sessions, args.sessions) + 4096))
    # vsftpd holds 2 processes per plaintext session and 2-3 per TLS session.
    if 3 * args.sessions + 2000 > pid_headroom():
        print(f"bench: --sessions {args.sessions} needs about {3 * args.sessions} vsftpd "
              f"processes (vsftpd forks 2-3 per session); only {pid_headroom()} pids are free "
              "(kernel.pid_max). Use --big-sessions N for ftpsgate alone with N sessions "
              "(a one-process stub backend).", file=sys.stderr)
        return 1

    info = machine_info(args)
    info["nofile"] = list(nofile)
    info["workers"] = args.workers
    log(f"ftpsgate bench: {args.rounds} rounds, workers={args.workers}, "
        f"{info['cpu_model']} x{info['cores']}, kernel {info['kernel']}, "
        f"load {' '.join(info['loadavg_start'])}")

    work = pick_workdir(args)
    w = World(args, work)
    res: dict = {}
    extra: dict = {}
    errors: list[str] = []
    rc = 0
    try:
        w.build_client()
        log("openssl speed (one core, 16 KiB blocks)")
        extra["openssl_speed_bytes_per_s"] = openssl_speed(args.speed_seconds)
        log("  " + ", ".join(f"{k} {v / 1e9:.2f} GB/s" for k, v in
                             extra["openssl_speed_bytes_per_s"].items() if v))
        w.start()
        log(f"backend vsftpd :{w.backend.port}, baseline vsftpd+TLS :{w.baseline.port}, "
            f"ftpsgate :{w.proxy.port} (pid {w.proxy.pid})")
        sides = w.sides
        plain = Side("plain", w.backend.port, "anonymous")

        def attempt(what: str, fn: Callable):
            try:
                return fn()
            except BenchError as e:
                errors.append(f"{what}: {e}")
                log(f"  ERROR {what}: {e}")
                return None

        def put(key, side, val):
            if val is not None:
                res.setdefault(key, {}).setdefault(side, []).append(val)

        for rnd in range(1, args.rounds + 1):
            order = ["ftpsgate", "baseline"] if rnd % 2 else ["baseline", "ftpsgate"]
            log(f"round {rnd}/{args.rounds} (order: {', '.join(order)})")
            for kind in ("download", "upload"):
                for name in order:
                    t = attempt(f"{kind} {name} r{rnd}",
                                lambda: curl_transfer(w, sides[name], kind, f"r{rnd}"))
                    if t:
                        record_transfer(res, name, kind, t)
                        c = t["cpu"]
                        cpu = (f"ftpsgate {c['ftpsgate']:.2f}s + backend {c['backend']:.2f}s"
                               if name == "ftpsgate" else f"vsftpd {c['baseline']:.2f}s")
                        log(f"  {kind:8s} {name:8s} {t['mbps']:7.1f} MB/s  CPU {cpu}  "
                            f"({t['cipher'][1] if t['cipher'] else '?'})")
                t = attempt(f"{kind} plain r{rnd}",
                            lambda: curl_transfer(w, plain, kind, f"r{rnd}", tls=False))
                if t:
                    put(f"{kind}_plain_mbps", "ftpsgate", t["mbps"])
                    log(f"  {kind:8s} plain    {t['mbps']:7.1f} MB/s (backend alone, no TLS)")
            for procs, key in ((1, "logins_seq"), (8, "logins_conc")):
                for name in order:
                    L = attempt(f"{key} {name} r{rnd}", lambda: login_run(w, sides[name], procs))
                    if L:
                        put(key, name, L["rate"])
                        put(f"_{key}_client_cpu_frac", name, L["client_cpu_frac"])
                        cm = L["cpu_ms_per_login"]
                        if procs == 8:
                            if name == "ftpsgate":
                                put("login_cpu_ms", name, cm["ftpsgate"])
                                put("login_cpu_backend_ms", name, cm["backend"])
                            else:
                                put("login_cpu_ms", name, cm["baseline"])
                        log(f"  logins x{procs} {name:8s} {L['rate']:7.1f}/s  client CPU "
                            f"{100 * L['client_cpu_frac']:.0f}% of the machine  CPU-ms/login "
                            + (f"ftpsgate {cm['ftpsgate']:.2f} backend {cm['backend']:.2f}"
                               if name == "ftpsgate" else f"vsftpd {cm['baseline']:.2f}"))
                L = attempt(f"{key} plain r{rnd}", lambda: login_run(w, plain, procs, plain=True))
                if L:
                    put(key.replace("logins_", "logins_plain_"), "ftpsgate", L["rate"])
                    log(f"  logins x{procs} plain    {L['rate']:7.1f}/s (backend alone, no TLS)")
            for name in order:
                S = attempt(f"small {name} r{rnd}", lambda: small_run(w, sides[name]))
                if S:
                    put("small_median_ms", name, S["median_ms"])
                    put("small_p90_ms", name, S["p90_ms"])
                    put("_small_resumed", name, S["resumed"] / S["count"])
                    log(f"  small    {name:8s} median {S['median_ms']:.2f} ms  p90 "
                        f"{S['p90_ms']:.2f} ms  ({S['resumed']}/{S['count']} resumed)")
            for name in order:
                M = attempt(f"memory {name} r{rnd}", lambda: memory_run(w, name, args.sessions))
                if M:
                    put("mem_kib", name, M["kib"])
                    put("mem_anon_kib", name, M["anon_kib"])
                    put("mem_sum_kib", name, M["sum_kib"])
                    if name == "ftpsgate":
                        put("mem_backend_kib", name, M["backend_kib"])
                    extra.setdefault("memory_runs", []).append({"side": name, "round": rnd, **M})
                    more = (f"ftpsgate {M['kib']:.1f} KiB + backend {M['backend_kib']:.1f} KiB, "
                            f"{M['proxy_threads']} threads"
                            if name == "ftpsgate" else f"{M['procs']} processes")
                    log(f"  memory   {name:8s} {M['kib']:7.1f} KiB/session over {M['held']} "
                        f"sessions ({more}; opened in {M['open_seconds']:.1f}s)")
            log(f"  elapsed {time.monotonic() - t_start:.0f}s")

        if args.big_sessions:
            log(f"one-process check: {args.big_sessions} idle sessions in one ftpsgate")
            try:
                B = big_sessions_check(w, args.big_sessions)
                extra["big_sessions"] = B
                log(f"  held {B.get('held')} of {B['sessions']} in {B['proxy_processes']} process "
                    f"({B.get('proxy_threads')} threads, {B.get('proxy_fds')} fds, nofile "
                    f"{B.get('proxy_nofile')}), {B['kib']:.1f} KiB/session PSS "
                    f"({B['anon_kib']:.1f} anon), opened in {B.get('open_seconds', 0):.1f}s, "
                    f"exit {B.get('proxy_exit')}")
            except BenchError as e:
                errors.append(f"big sessions: {e}")
                log(f"  ERROR big sessions: {e}")
        if args.perf:
            log("perf record on ftpsgate (one download, one upload)")
            extra["perf"] = perf_profile(w)
            for k, lines in extra["perf"].items():
                if isinstance(lines, list):
                    print(f"--- perf, {k}\n" + "\n".join(lines))
        if args.callgrind:
            log("callgrind on a second ftpsgate (64 MiB down, 64 MiB up, 50 logins, "
                "100 small downloads)")
            extra["callgrind"] = callgrind_profile(w)
            for k, lines in extra["callgrind"].items():
                print(f"--- callgrind, {k}\n" + ("\n".join(lines) if isinstance(lines, list)
                                                 else str(lines)))
    except KeyboardInterrupt as e:
        errors.append(f"interrupted ({e})")
        rc = 130
    except (BenchError, H.HarnessError, TimeoutError, OSError) as e:
        errors.append(f"fatal: {e}")
        log(f"FATAL: {e}")
        rc = 1
    finally:
        log("stopping every process the bench started")
        w.cleanup()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            log(f"kept {work}")

    # Derived figures: the data path per core as a fraction of the cipher.
    speeds = extra.get("openssl_speed_bytes_per_s", {})
    ciphers = {k: sorted(v) for k, v in res.pop("_ciphers", {}).items()}
    extra["ciphers"] = ciphers
    neg = None
    for c in ciphers.get("ftpsgate", []):
        neg = cipher_to_speed_name(c) or neg
    extra["negotiated_cipher_speed_name"] = neg
    if neg and speeds.get(neg):
        for kind, key in (("download", "datapath_frac_down"), ("upload", "datapath_frac_up")):
            for side, vals in res.get(f"_{kind}_bytes_per_cpu", {}).items():
                for v in vals:
                    put_frac = v / speeds[neg]
                    res.setdefault(key, {}).setdefault(side, []).append(put_frac)

    summary = {k: {s: stats(v) for s, v in d.items()} for k, d in res.items()}
    rows = build_table(summary, args)
    elapsed = time.monotonic() - t_start
    busy1 = machine_busy()
    info["loadavg_end"] = Path("/proc/loadavg").read_text().split()[:3]
    info["machine_busy_during_run"] = (busy1[0] - busy0[0]) / max(1, busy1[1] - busy0[1])
    info["run_seconds"] = elapsed

    notes = make_notes(args, info, summary, extra, errors)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    outdir = Path(args.out)
    outdir.mkdir(parents=True, exist_ok=True)
    doc = {"machine": info, "args": {k: v for k, v in vars(args).items()},
           "summary": summary, "extra": extra, "errors": errors, "table": rows, "notes": notes}
    jpath = outdir / f"bench-{stamp}.json"
    jpath.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    md = render_md(info, args, rows, notes, extra, errors)
    mpath = outdir / f"bench-{stamp}.md"
    mpath.write_text(md)
    print()
    print(text_table(rows))
    print()
    for n in notes:
        print(f"- {n}")
    if errors:
        print("\nerrors:")
        for e in errors:
            print(f"  {e}")
    print(f"\nwrote {jpath.relative_to(ROOT) if jpath.is_relative_to(ROOT) else jpath} and "
          f"{mpath.name}; run time {elapsed:.0f}s")
    if errors and rc == 0:
        rc = 1
    return rc


def make_notes(args, info, summary, extra, errors) -> list[str]:
    n = []
    sp = extra.get("openssl_speed_bytes_per_s", {})
    if sp:
        n.append("crypto ceiling, openssl speed -evp, 16 KiB blocks, one core: " + ", ".join(
            f"{k} {v / 1e9:.2f} GB/s ({GIB / v:.2f} CPU-s/GiB)" for k, v in sp.items() if v))
    for side, cs in extra.get("ciphers", {}).items():
        n.append(f"{side} negotiated (curl -v): {', '.join(cs)}")
    neg = extra.get("negotiated_cipher_speed_name")
    for kind in ("down", "up"):
        s = summary.get(f"datapath_frac_{kind}", {}).get("ftpsgate")
        if s and neg:
            bpc = summary.get(f"_{'download' if kind == 'down' else 'upload'}_bytes_per_cpu",
                              {}).get("ftpsgate")
            n.append(f"ftpsgate data path, {kind}load: {bpc['median'] / 1e6:.0f} MB per "
                     f"CPU-second = {100 * s['median']:.0f}% of {neg} on one core")
    cc = summary.get("_logins_conc_client_cpu_frac", {})
    if cc:
        n.append("login client (ftpsload, C) CPU during the 8-client runs: " + ", ".join(
            f"{k} {100 * v['median']:.0f}% of the machine" for k, v in cc.items() if v))
    B = extra.get("big_sessions")
    if B:
        n.append(f"one-process check: {B.get('held')} of {B['sessions']} idle TLS sessions held "
                 f"by {B.get('proxy_processes')} ftpsgate process "
                 f"({B.get('proxy_threads')} threads, {B.get('proxy_fds')} fds, RLIMIT_NOFILE "
                 f"{B.get('proxy_nofile')}), {B['kib']:.1f} KiB PSS per session "
                 f"({B['anon_kib']:.1f} KiB anonymous), backend: {B['backend']}; "
                 f"{'met' if B['ok'] else 'NOT met'}"
                 + (f" ({B['why_not']})" if B.get("why_not") else ""))
    busy = info.get("machine_busy_during_run")
    n.append(f"machine CPU busy during the run (all processes, /proc/stat): {100 * busy:.0f}%; "
             f"load average {' '.join(info['loadavg_start'])} at start, "
             f"{' '.join(info['loadavg_end'])} at end. Other work on the machine makes MB/s "
             "and logins/s noisy; CPU-s/GiB and the alternated ratios hold up better.")
    n.append("MB/s is 10^6 bytes per second of curl's time_total (login included). CPU-s/GiB: "
             "ftpsgate's own utime+stime (all threads); for vsftpd utime+stime+cutime+cstime of "
             "its listener and of a child subreaper it runs under (bench_lib/reaper.c), read "
             "after every session process has been reaped: vsftpd session processes often exit "
             "before their children, which are then re-parented and whose CPU would otherwise "
             "never reach the listener's cutime (about half of a TLS download's CPU here). "
             "The CPU target compares ftpsgate's own CPU with the baseline vsftpd's serving "
             "processes; the backend's share and the sum are shown below it.")
    n.append("memory: sum of Pss (smaps_rollup) over the serving processes, after minus before "
             f"{args.sessions} idle logged-in sessions (AUTH TLS, USER, PASS), divided by the "
             "sessions; ftpsgate is started fresh for each memory round. Pss_Anon is shown "
             "because ftpsgate's share of shared-library pages shrinks while the backend's "
             f"{2 * args.sessions:,} session processes map the same libraries.")
    return n


def render_md(info, args, rows, notes, extra, errors) -> str:
    out = [f"# ftpsgate benchmark, {info['date']}", ""]
    out.append(f"Machine: {info['cpu_model']}, {info['cores']} cores, {info['memory_mib']} MiB, "
               f"kernel {info['kernel']}. {info['openssl']}; {info['curl']}; {info['vsftpd']}; "
               f"{info['ftpsgate']}.")
    out.append("")
    out.append(f"`scripts/bench --rounds {args.rounds} --workers {args.workers} --sessions "
               f"{args.sessions}`{' --quick' if args.quick else ''}: "
               f"{args.download_mib} MiB download, {args.upload_mib} MiB upload, "
               f"{args.login_seconds:g} s per login run, {args.small_count} small files; "
               f"medians of {args.rounds} alternated rounds on loopback; ratio = "
               f"ftpsgate / baseline (vsftpd's own TLS). Run time {info['run_seconds']:.0f} s.")
    out.append("")
    out.append(md_table(rows))
    out.append("")
    out += [f"- {n}" for n in notes]
    if errors:
        out += ["", "Errors:", ""] + [f"- {e}" for e in errors]
    for k in ("perf", "callgrind"):
        if k in extra:
            out += ["", f"## {k}", "", "```"]
            for sub, lines in extra[k].items():
                out.append(f"-- {sub}")
                out += lines if isinstance(lines, list) else [str(lines)]
            out.append("```")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.exit(main())
