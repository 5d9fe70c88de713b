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

The work comes in items (ITEMS below; --work picks some, --help lists them):
transfers, relay (the same transfers through bench_lib/relay.c, a bare
OpenSSL+epoll relay, as the reference for ftpsgate's CPU per GiB), logins,
logins-workers (workers = 1 against 2, in front of bench_lib/stubftp.c),
small, memory and big-sessions. Some rows compare ftpsgate with another
reference than the baseline; their titles name it after "vs".

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
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "integration"))
import harness as H  # noqa: E402  (the integration harness; never edited from here)

LIB = Path(__file__).resolve().parent / "bench_lib"
# The C helpers in bench_lib/: name -> (source, libraries). See each file's head.
TOOLS = {
    "ftpsload": ("ftpsload.c", ["-lssl", "-lcrypto"]),   # FTPS login load
    "reaper": ("reaper.c", []),                          # vsftpd under a subreaper
    "relay": ("relay.c", ["-lssl", "-lcrypto"]),         # the bare relay
    "relaypeer": ("relaypeer.c", ["-lssl", "-lcrypto"]), # its client, source and sink
    "stubftp": ("stubftp.c", []),                        # one-process stub backend
}
CLK = os.sysconf("SC_CLK_TCK")
GIB = 1 << 30
MIB = 1 << 20
HOST = H.LOOPBACK
SITE = "bench.test"
PROXY_USER = f"{SITE}|anonymous"
PASSWORD = "bench@example.org"

@dataclass(frozen=True)
class Figure:
    """One row of the table.

    key: the result key (res[key][side] is a list, one value per round);
    title: the row's text ("  " first: a sub-row of the row above); better:
    "higher" or "lower"; target: ("ratio_max"|"ratio_min"|"abs_max", value)
    or None, with its text; item: the work item that measures it (rows of
    items not run are left out); sides: the two columns, the ratio being
    sides[0] / sides[1]; row: a unique row id when key is shown twice."""
    key: str
    title: str
    better: str
    target: Optional[tuple]
    ttext: str
    item: str
    sides: tuple = ("ftpsgate", "baseline")
    row: Optional[str] = None

    @property
    def id(self) -> str:
        return self.row or self.key


F = Figure
W21 = ("workers2", "workers1")
PC4 = ("preconnect4", "baseline")
PC0 = ("preconnect0", "baseline")
SHR = ("shared1", "range")
# Figures in table order.
FIGURES = [
    F("download_mbps", "download {dl}, MB/s", "higher", ("ratio_min", 1.5), "≥ 1.5×", "transfers"),
    F("download_cpu", "download CPU-s/GiB (ftpsgate own vs baseline serving)", "lower",
      ("ratio_max", 0.4), "≤ 0.4×", "transfers"),
    F("download_cpu_backend", "  download CPU-s/GiB, backend vsftpd behind ftpsgate", "lower", None,
      "", "transfers"),
    F("download_cpu_sum", "  download CPU-s/GiB, ftpsgate + backend", "lower", None, "",
      "transfers"),
    F("download_plain_mbps", "  download MB/s, plaintext backend alone (reference)", "higher", None,
      "", "transfers"),
    F("upload_mbps", "upload {ul}, MB/s", "higher", ("ratio_min", 1.5), "≥ 1.5×", "transfers"),
    F("upload_cpu", "upload CPU-s/GiB (ftpsgate own vs baseline serving)", "lower",
      ("ratio_max", 0.4), "≤ 0.4×", "transfers"),
    F("upload_cpu_backend", "  upload CPU-s/GiB, backend vsftpd behind ftpsgate", "lower", None, "",
      "transfers"),
    F("upload_cpu_sum", "  upload CPU-s/GiB, ftpsgate + backend", "lower", None, "", "transfers"),
    F("upload_plain_mbps", "  upload MB/s, plaintext backend alone (reference)", "higher", None, "",
      "transfers"),
    F("download_cpu", "download CPU-s/GiB, ftpsgate own vs the bare relay (bench_lib/relay.c)",
      "lower", ("ratio_max", 1.1), "≤ 1.1×", "relay", ("ftpsgate", "relay"), "download_cpu_relay"),
    F("download_mbps", "  download {dl} MB/s, ftpsgate vs the bare relay", "higher", None, "",
      "relay", ("ftpsgate", "relay"), "download_mbps_relay"),
    F("upload_cpu", "upload CPU-s/GiB, ftpsgate own vs the bare relay (bench_lib/relay.c)",
      "lower", ("ratio_max", 1.1), "≤ 1.1×", "relay", ("ftpsgate", "relay"), "upload_cpu_relay"),
    F("upload_mbps", "  upload {ul} MB/s, ftpsgate vs the bare relay", "higher", None, "",
      "relay", ("ftpsgate", "relay"), "upload_mbps_relay"),
    F("logins_seq", "FTPS logins/s, sequential", "higher", ("ratio_min", 1.5), "≥ 1.5×", "logins"),
    F("logins_conc", "FTPS logins/s, 8 concurrent clients", "higher", ("ratio_min", 1.5), "≥ 1.5×",
      "logins"),
    F("login_cpu_ms", "  server CPU-ms per login, 8 concurrent (ftpsgate own vs baseline)", "lower",
      None, "", "logins"),
    F("login_cpu_backend_ms", "  backend vsftpd CPU-ms per login behind ftpsgate, 8 concurrent",
      "lower", None, "", "logins"),
    F("logins_plain_seq", "  plaintext logins/s to the backend alone, sequential (reference)",
      "higher", None, "", "logins"),
    F("logins_plain_conc", "  plaintext logins/s to the backend alone, 8 concurrent (reference)",
      "higher", None, "", "logins"),
    F("workers_cpu_ms_rsa", "ftpsgate CPU-ms per login, RSA-2048, 8 concurrent, stub backend: "
      "workers = 2 vs workers = 1", "lower", ("ratio_max", 1.10), "≤ 1.10×", "logins-workers", W21),
    F("workers_rate_rsa", "  FTPS logins/s, RSA-2048: workers = 2 vs 1 (ratio: the scaling)",
      "higher", None, "", "logins-workers", W21),
    F("workers_busy_rsa", "  machine CPU busy, % of {cores} cores, RSA-2048: workers = 2 vs 1",
      "lower", None, "", "logins-workers", W21),
    F("workers_cpu_ms_ec", "ftpsgate CPU-ms per login, ECDSA P-256, 8 concurrent, stub backend: "
      "workers = 2 vs workers = 1", "lower", ("ratio_max", 1.10), "≤ 1.10×", "logins-workers", W21),
    F("workers_rate_ec", "  FTPS logins/s, ECDSA P-256: workers = 2 vs 1 (ratio: the scaling)",
      "higher", None, "", "logins-workers", W21),
    F("workers_busy_ec", "  machine CPU busy, % of {cores} cores, ECDSA P-256: workers = 2 vs 1",
      "lower", None, "", "logins-workers", W21),
    F("pc_seq", "FTPS logins/s, sequential, preconnect = 4 vs vsftpd's own TLS", "higher",
      ("ratio_min", 2.0), "≥ 2×", "logins-preconnect", PC4, "pc_seq_4"),
    F("pc_seq", "  FTPS logins/s, sequential, preconnect = 0 vs vsftpd's own TLS", "higher",
      None, "", "logins-preconnect", PC0, "pc_seq_0"),
    F("pc_lat", "login latency ms, sequential, preconnect = 4 vs vsftpd's own TLS", "lower",
      ("ratio_max", 0.5), "≤ 0.5×", "logins-preconnect", PC4, "pc_lat_4"),
    F("pc_lat", "  login latency ms, preconnect = 0 vs vsftpd's own TLS", "lower", None, "",
      "logins-preconnect", PC0, "pc_lat_0"),
    F("pc_lat", "  login latency ms, preconnect = 4 vs plaintext vsftpd (no TLS)", "lower",
      None, "", "logins-preconnect", ("preconnect4", "plain"), "pc_lat_plain"),
    F("pc_conc", "FTPS logins/s, 8 concurrent, preconnect = 4 vs vsftpd's own TLS", "higher",
      ("ratio_min", 1.5), "≥ 1.5×", "logins-preconnect", PC4, "pc_conc_4"),
    F("pc_conc", "  FTPS logins/s, 8 concurrent, preconnect = 0 vs vsftpd's own TLS", "higher",
      None, "", "logins-preconnect", PC0, "pc_conc_0"),
    F("mem_kib", "memory KiB per idle TLS session, {n} open (ftpsgate own vs baseline all)",
      "lower", ("abs_max", 24.0), "≤ 24 KiB", "memory"),
    F("mem_anon_kib", "  same, anonymous memory only (Pss_Anon)", "lower", None, "", "memory"),
    F("mem_backend_kib", "  memory KiB per session, backend vsftpd behind ftpsgate", "lower", None,
      "", "memory"),
    F("mem_sum_kib", "  memory KiB per session, ftpsgate + backend", "lower", None, "", "memory"),
    F("small_median_ms", "4 KiB download in an open session, median ms", "lower",
      ("ratio_max", 0.8), "≤ 0.8×", "small"),
    F("small_p90_ms", "4 KiB download in an open session, p90 ms", "lower", None, "", "small"),
    F("small_cpu_ms", "4 KiB download: CPU-ms per transfer, ftpsgate's own vs baseline serving",
      "lower", ("ratio_max", 0.5), "≤ 0.5×", "small"),
    F("small_cpu_backend_ms", "  4 KiB download: CPU-ms per transfer, backend vsftpd behind "
      "ftpsgate", "lower", None, "", "small"),
    F("small_syscalls", "  4 KiB download: ftpsgate system calls per transfer (--strace)",
      "lower", None, "", "small"),
    F("shared_down_cpu", "{sc} concurrent downloads: ftpsgate CPU-s/GiB, passive_ports = 1 port "
      "shared vs a 64-port range", "lower", ("ratio_max", 1.1), "≤ 1.1×", "shared-ports", SHR),
    F("shared_down_mbps", "  {sc} concurrent downloads, total MB/s: 1 shared port vs range",
      "higher", None, "", "shared-ports", SHR),
    F("shared_up_cpu", "{sc} concurrent uploads: ftpsgate CPU-s/GiB, 1 shared port vs range",
      "lower", ("ratio_max", 1.1), "≤ 1.1×", "shared-ports", SHR),
    F("shared_up_mbps", "  {sc} concurrent uploads, total MB/s: 1 shared port vs range",
      "higher", None, "", "shared-ports", SHR),
    F("shared_held", "passive transfers waiting at once with passive_ports = 4 ports "
      "(of {sh} sessions, stub backend): shared vs not", "higher", None, "", "shared-ports",
      ("shared4", "unshared4")),
    F("datapath_frac_down", "data path per core / cipher speed, download", "higher", None, "",
      "transfers"),
    F("datapath_frac_up", "data path per core / cipher speed, upload", "higher", None, "",
      "transfers"),
]
del F
FIG = {f.id: f for f in FIGURES}
assert len(FIG) == len(FIGURES), "two rows with one id"


class BenchError(Exception):
    pass


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --------------------------------------------------------------------------
# /proc readers
# --------------------------------------------------------------------------

def proc_cpu(pid: int, children: bool = False, user_only: bool = False) -> float:
    """CPU seconds of pid (all threads); with children=True plus the reaped
    children's cutime+cstime; with user_only=True its utime alone."""
    rest = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # rest[0] is field 3 (state): utime is field 14 -> rest[11].
    if user_only:
        return int(rest[11]) / CLK
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


def read_listening(p: subprocess.Popen, what: str, timeout: float = 20) -> int:
    """The port from the "listening PORT" line a helper prints when ready."""
    ready, _, _ = select.select([p.stdout], [], [], timeout)
    line = p.stdout.readline() if ready else ""
    m = re.match(r"listening (\d+)", line)
    if not m:
        err = ""
        if p.poll() is not None:
            err = p.stderr.read() if p.stderr else ""
        raise BenchError(f"{what} did not start ({line!r} {err.strip()})")
    return int(m.group(1))


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
        self.tools_dir = Path(args.tools_dir)
        self.ftpsload = self.tool("ftpsload")
        self.small_data = os.urandom(4096)
        self.items: set[str] = set(args.work)
        self.extra: dict = {}        # details for the JSON (and the notes)
        self.errors: list[str] = []  # measurements that failed
        self._stub: Optional[tuple[subprocess.Popen, int]] = None
        self.relay_suite = ""        # the TLS 1.3 suite of the bare relay
        self.workers_px: dict = {}   # (certificate, workers) -> the proxy

    # Setup ------------------------------------------------------------------

    def build_client(self) -> None:
        """The C helpers under bench_lib/, built with cc -O2 into the tools
        folder (build-bench/bench-tools by default) when missing or older
        than their source."""
        cc = shutil.which("cc") or shutil.which("gcc")
        if not cc:
            raise BenchError("no C compiler (cc/gcc) for the benchmark client")
        self.tools_dir.mkdir(parents=True, exist_ok=True)
        for name, (src, libs) in TOOLS.items():
            out = self.tool(name)
            if out.exists() and out.stat().st_mtime >= (LIB / src).stat().st_mtime:
                continue
            r = subprocess.run([cc, "-O2", "-o", str(out), str(LIB / src), *libs],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            if r.returncode != 0:
                raise BenchError(f"building {src} failed:\n{r.stdout}")
        # The harness starts [H.VSFTPD_BIN, conf]: point it (in this process
        # only) at a script that runs vsftpd under the reaper.
        wrapper = self.work / "vsftpd-reaped"
        wrapper.write_text(f"#!/bin/sh\nexec {shlex.quote(str(self.tool('reaper')))} "
                           f"{shlex.quote(str(H.VSFTPD_BIN))} \"$@\"\n")
        wrapper.chmod(0o755)
        H.VSFTPD_BIN = str(wrapper)

    def tool(self, name: str) -> Path:
        return self.tools_dir / name

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
        if self.items & {"transfers", "relay"} or a.perf:
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

    def new_proxy(self, backend_address: Optional[str] = None, sessions: int = 0,
                  workers: Optional[int] = None, central: Optional[H.Cert] = None,
                  section: Optional[dict] = None, opts: Optional[dict] = None) -> H.Proxy:
        a = self.args
        workers = workers or a.workers
        lo, hi = H.free_port_range(max(64, 16 * workers))
        cap = max(4096, 2 * max(a.sessions, sessions) + 1024)
        # No health checks: their connections would be counted as the backend's work.
        backends = {"site": H.backend_section(self.backend if backend_address is None else None,
                                              hostnames=[SITE], address=backend_address,
                                              health_check=0, **(section or {}))}
        px = H.Proxy(self.work, central or self.central, backends, implicit=False,
                     binary=self.binary, ca=self.certs.ca, name="ftpsgate",
                     proxy={"log_level": "info", "workers": str(workers),
                            "max_sessions": str(cap), "max_sessions_per_ip": str(cap),
                            "passive_ports": f"{lo}-{hi}", "banner": "ftpsgate bench",
                            "login_timeout": "120", "idle_timeout": "900",
                            "data_timeout": "60", "connect_timeout": "10",
                            "shutdown_grace": "2", **(opts or {})})
        self.proxies.append(px)
        px.start(timeout=30)
        return px

    def stub(self) -> tuple[subprocess.Popen, int]:
        """The one-process stub backend (bench_lib/stubftp.c), started on
        first use: (process, port)."""
        if self._stub is None or self._stub[0].poll() is not None:
            with open(self.work / "stubftp.log", "ab") as err:  # not a pipe nobody reads
                p = self.popen([str(self.tool("stubftp")), "0"], stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=err, text=True)
            self._stub = (p, read_listening(p, "stub backend"))
        return self._stub

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
                "ftpsgate_user": proc_cpu(proxy.pid, user_only=True),
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
    elif side == "relay":
        own = t["cpu"]["relay"] / gib
        res.setdefault(f"{kind}_cpu", {}).setdefault(side, []).append(own)
        if t["cpu"]["relay"] > 0:
            res.setdefault(f"_{kind}_bytes_per_cpu", {}).setdefault(side, []).append(
                t["bytes"] / t["cpu"]["relay"])
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

    def __init__(self, w: World, port: int, user: str, n: int, procs: int, timeout: float,
                 mode: str = "hold"):
        self.w = w
        self.p = w.popen([str(w.ftpsload), mode, HOST, str(port), user, str(n), str(procs)],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
        t0 = time.monotonic()
        ready, _, _ = select.select([self.p.stdout], [], [], timeout)
        line = self.p.stdout.readline() if ready else ""
        self.open_seconds = time.monotonic() - t0
        m = re.match(r"ready (\d+) failures=(\d+)(?: ports=(\d+))?", line)
        if not m:
            self.release()
            raise BenchError(f"ftpsload hold {n} on port {port}: no 'ready' within {timeout}s "
                             f"({line!r})")
        self.ok, self.failures = int(m.group(1)), int(m.group(2))
        self.ports = int(m.group(3) or 0)

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


def sched_cpu(pid: int) -> float:
    """CPU seconds of pid's live threads from /proc/PID/task/*/schedstat
    (nanoseconds, where /proc/PID/stat counts 10 ms ticks)."""
    tot = 0
    for t in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, ValueError, IndexError):
            tot += int((t / "schedstat").read_text().split()[0])
    return tot / 1e9


def tree_cpu(pid: int) -> float:
    """CPU seconds of the live processes under pid (not pid itself)."""
    tot = 0.0
    for p in H.descendants(pid):
        with contextlib.suppress(OSError, ValueError, IndexError):
            tot += sched_cpu(p)
    return tot


def small_cpu(w: World, side: Side) -> dict:
    """CPU seconds so far of what serves side: ftpsgate's own process and
    the backend's session processes, or the baseline's session processes
    (vsftpd forks one process tree per session; it lives through the run)."""
    if side.name == "ftpsgate":
        return {"server": sched_cpu(w.proxy.pid), "backend": tree_cpu(w.backend.proc.pid)}
    return {"server": tree_cpu(w.baseline.proc.pid), "backend": 0.0}


def strace_start(w: World, out: Path) -> subprocess.Popen:
    """strace -c -f attached to ftpsgate (every thread), summary into out."""
    p = w.popen(["strace", "-c", "-f", "-o", str(out), "-p", str(w.proxy.pid)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                text=True)
    # strace prints "Process N attached" per thread once it holds them all.
    t0 = time.monotonic()
    want = len(list(Path(f"/proc/{w.proxy.pid}/task").iterdir()))
    seen = 0
    while seen < want and time.monotonic() - t0 < 10:
        line = p.stderr.readline()
        if not line:
            break
        seen += "attached" in line
    return p


def strace_stop(p: subprocess.Popen, out: Path) -> dict:
    """Stops strace and reads its summary: total calls and the top ones."""
    p.send_signal(signal.SIGINT)
    with contextlib.suppress(subprocess.TimeoutExpired):
        p.wait(15)
    calls, total = {}, 0
    for line in out.read_text().splitlines():
        f = line.split()
        if len(f) >= 5 and f[0].replace(".", "").isdigit() and f[-1] != "total":
            try:
                calls[f[-1]] = int(f[3])
            except ValueError:
                continue
        elif len(f) >= 4 and f[-1] == "total":
            total = int(f[3])
    return {"total": total or sum(calls.values()), "calls": calls}


def small_run(w: World, side: Side, trace: bool = False) -> dict:
    """N sequential 4 KiB downloads in one logged-in session, each a new data
    connection whose TLS resumes the control session; times each retrbinary.
    Also the serving CPU over the N transfers (login excluded) and, with
    trace on the ftpsgate side, its system calls (strace -c -f)."""
    a = w.args
    c = H.FtpsClient(verify=False, reuse_session=True, timeout=30)
    times = []
    st = None
    try:
        c.connect(HOST, side.port)
        r = c.tls_login(side.user, PASSWORD, prot_p=True)
        if r.code != 230:
            raise BenchError(f"small files via {side.name}: login answered {r}")
        c.voidcmd("TYPE I")
        buf = bytearray()
        c.retrbinary("RETR small.bin", buf.extend)  # warm-up, not counted
        if trace:
            st_out = w.work / "strace-small.txt"
            st = strace_start(w, st_out)
        cpu0 = small_cpu(w, side)
        for _ in range(a.small_count):
            buf = bytearray()
            t0 = time.perf_counter()
            c.retrbinary("RETR small.bin", buf.extend)
            times.append((time.perf_counter() - t0) * 1000)
            if bytes(buf) != w.small_data:
                raise BenchError(f"small files via {side.name}: wrong content")
        time.sleep(0.05)  # the last data connection's closes
        cpu1 = small_cpu(w, side)
        if st is not None:
            calls = strace_stop(st, st_out)
            st = None
        reused = sum(c.data_session_reused) - 1
        with contextlib.suppress(Exception):
            c.quit()
    finally:
        if st is not None:
            H._kill_group(st, signal.SIGKILL)
        c.close_quietly()
    times.sort()
    p90 = times[min(len(times) - 1, int(round(0.9 * (len(times) - 1))))]
    n = len(times)
    out = {"median_ms": statistics.median(times), "p90_ms": p90, "count": n,
           "resumed": reused, "cpu_ms": (cpu1["server"] - cpu0["server"]) * 1000 / n,
           "backend_cpu_ms": (cpu1["backend"] - cpu0["backend"]) * 1000 / n}
    if trace:
        out["syscalls"] = calls["total"] / n
        out["syscall_top"] = {k: round(v / n, 2) for k, v in
                              sorted(calls["calls"].items(), key=lambda kv: -kv[1])[:12]}
    return out


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
    backend (see bench_lib/stubftp.c for why not vsftpd)."""
    a = w.args
    _, port = w.stub()
    res: dict = {"sessions": n, "backend": "one-process stub (bench_lib/stubftp.c)"}
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
    held = max(1, res.get("held", 0))
    res["kib"] = (res["after"]["Pss"] - res["before"]["Pss"]) / held
    res["anon_kib"] = (res["after"]["Pss_Anon"] - res["before"]["Pss_Anon"]) / held
    res["ok"] = bool(res.get("held") == n and res.get("alive_after") and res["proxy_processes"] == 1)
    if res["fd_limited"] and res.get("held", 0) < n:
        res["why_not"] = (f"RLIMIT_NOFILE: {n} proxied sessions need about {res['fds_needed']} "
                          f"descriptors, the limit is {res['proxy_nofile']}")
    return res


# --------------------------------------------------------------------------
# The bare relay (bench_lib/relay.c)
# --------------------------------------------------------------------------

def relay_cipher(w: World) -> str:
    """The TLS 1.3 suite that curl and ftpsgate negotiate here (one curl
    download of small.bin through ftpsgate, curl -v), for the relay to use."""
    r = w.run(["curl", "-sS", "-v", "--ssl-reqd", "-k", "--connect-timeout", "10", "-u",
               f"{PROXY_USER}:{PASSWORD}", "-o", "/dev/null",
               f"ftp://{HOST}:{w.proxy.port}/small.bin"], timeout=60)
    found = CIPHER_RX.findall(r.stderr)
    if r.returncode != 0 or not found:
        raise BenchError(f"curl through ftpsgate, to learn its cipher, failed (exit "
                         f"{r.returncode}):\n" + "\n".join(r.stderr.splitlines()[-10:]))
    version, suite = found[-1]
    if version != "TLSv1.3":
        raise BenchError(f"curl and ftpsgate negotiate {version} / {suite}; the bare relay "
                         "speaks TLS 1.3 only")
    return suite


def relay_transfer(w: World, kind: str) -> dict:
    """One download (relay down) or upload (relay up) through the bare relay:
    relaypeer source|sink as the plaintext end, relaypeer get|put as the TLS
    client, every byte checked. Returns what curl_transfer returns, the
    relay's CPU (its own getrusage) under cpu["relay"]."""
    a = w.args
    down = kind == "download"
    f = w.big if down else w.up
    size = f.stat().st_size
    pipes = dict(stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                 text=True)
    peer = w.popen([str(w.tool("relaypeer")), "source" if down else "sink", str(f)], **pipes)
    relay = None
    try:
        pport = read_listening(peer, f"relaypeer {'source' if down else 'sink'}")
        relay = w.popen([str(w.tool("relay")), "down" if down else "up", str(w.central.cert),
                         str(w.central.key), w.relay_suite, f"{HOST}:{pport}"], **pipes)
        rport = read_listening(relay, "relay")
        c0 = _children_cpu()
        b0 = machine_busy()
        r = w.run([str(w.tool("relaypeer")), "get" if down else "put", HOST, str(rport), str(f)],
                  timeout=a.transfer_timeout + 30)
        b1 = machine_busy()
        c1 = _children_cpu()
        out = {}
        for name, p in (("relay", relay), ("peer", peer)):
            try:
                o, e = p.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                raise BenchError(f"{name} did not end after the client") from None
            out[name] = (o, e, p.returncode)
    finally:
        for p in (relay, peer):
            if p is not None:
                if p.poll() is None:
                    H._kill_group(p, signal.SIGKILL)
                    p.wait(10)
                w.procs.remove(p)
    rm = re.search(r"relay mode=\S+ bytes=(\d+) seconds=([\d.]+) cpu=([\d.]+) utime=([\d.]+) "
                   r"stime=([\d.]+) version=(\S+) cipher=(\S+) reads=(\d+) writes=(\d+) "
                   r"waits=(\d+)", out["relay"][0])
    cm = re.search(r"peer mode=\S+ bytes=(\d+) seconds=([\d.]+) ok=1", r.stdout)
    pm = re.search(r"peer mode=\S+ bytes=(\d+) seconds=[\d.]+ ok=1", out["peer"][0])
    if r.returncode != 0 or not cm or not rm or not pm or out["relay"][2] != 0:
        raise BenchError(f"relay {kind} failed: client {r.stdout.strip()} {r.stderr.strip()}; "
                         f"relay {out['relay'][0].strip()} {out['relay'][1].strip()}; "
                         f"{'source' if down else 'sink'} {out['peer'][0].strip()} "
                         f"{out['peer'][1].strip()}")
    if int(rm.group(1)) != size or int(cm.group(1)) != size or int(pm.group(1)) != size:
        raise BenchError(f"relay {kind}: {rm.group(1)} bytes relayed, {cm.group(1)} at the "
                         f"client, {pm.group(1)} at the plaintext end, not {size}")
    if rm.group(7) != w.relay_suite:
        raise BenchError(f"relay {kind}: negotiated {rm.group(7)}, not {w.relay_suite}")
    secs = float(cm.group(2))
    return {"mbps": size / secs / 1e6, "seconds": secs, "bytes": size,
            "cpu": {"relay": float(rm.group(3)), "client": c1 - c0},
            "relay_utime": float(rm.group(4)), "relay_stime": float(rm.group(5)),
            "relay_calls": {"reads": int(rm.group(8)), "writes": int(rm.group(9)),
                            "waits": int(rm.group(10))},
            "cipher": (rm.group(6), rm.group(7)),
            "machine_busy": (b1[0] - b0[0]) / max(1, b1[1] - b0[1])}


# --------------------------------------------------------------------------
# Logins with workers = 1 and 2 (stub backend)
# --------------------------------------------------------------------------

WORKER_CERTS = (("rsa", "RSA-2048"), ("ec", "ECDSA P-256"))


def workers_setup(w: World) -> None:
    """Four ftpsgate processes in front of the stub backend: workers = 1 and
    2, each with the RSA-2048 central certificate and with an ECDSA P-256
    one for the same names (both from harness.CertFactory)."""
    _, port = w.stub()
    ec = w.certs.make("central-ecdsa", "proxy.test", dns=["proxy.test", "localhost"],
                      ips=["127.0.0.1", "::1"], key_type="ec")
    for cert_key, cert in (("rsa", w.central), ("ec", ec)):
        for n in (1, 2):
            w.workers_px[cert_key, n] = w.new_proxy(backend_address=f"{HOST}:{port}",
                                                    workers=n, central=cert)


def stub_login_run(w: World, px: H.Proxy, procs: int) -> dict:
    """ftpsload logins through px for --login-seconds: the rate, ftpsgate's
    own CPU-ms per login (all threads), the stub's, and how busy the machine
    was."""
    a = w.args
    stub, _ = w.stub()
    p0, s0, b0 = proc_cpu(px.pid), proc_cpu(stub.pid), machine_busy()
    r = w.run([str(w.ftpsload), "login", HOST, str(px.port), PROXY_USER, str(a.login_seconds),
               str(procs)], timeout=a.login_seconds + 60)
    time.sleep(0.2)  # the last QUITs' closes
    p1, s1, b1 = proc_cpu(px.pid), proc_cpu(stub.pid), machine_busy()
    m = re.search(r"logins=(\d+) failures=(\d+) elapsed=([\d.]+) client_cpu=([\d.]+)", r.stdout)
    if r.returncode != 0 or not m:
        raise BenchError(f"ftpsload login via ftpsgate (stub backend) failed: {r.stdout} "
                         f"{r.stderr}")
    n, fails, el = int(m.group(1)), int(m.group(2)), float(m.group(3))
    if n == 0 or fails > max(2, n // 100):
        raise BenchError(f"ftpsload login via ftpsgate (stub backend): {n} logins, {fails} "
                         "failures")
    return {"rate": n / el, "logins": n, "failures": fails, "elapsed": el,
            "cpu_ms": (p1 - p0) * 1000 / n, "stub_cpu_ms": (s1 - s0) * 1000 / n,
            "client_cpu_ms": float(m.group(4)) * 1000 / n,
            "busy": (b1[0] - b0[0]) / max(1, b1[1] - b0[1])}


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
# Work items
# --------------------------------------------------------------------------
#
# A work item is a function (World, round) -> figures: {key: {side: [values]}},
# usually one value per side and round, keys as in FIGURES (keys starting
# with "_" only go to the JSON). Items run in ITEMS order in every round, and
# alternate their sides through order(); "once" items run after the rounds
# (round 0). To add one: write the function, add an Item below and its rows to
# FIGURES (with item=its name).

def add(figs: dict, key: str, side: str, val) -> None:
    if val is not None:
        figs.setdefault(key, {}).setdefault(side, []).append(val)


def merge(res: dict, figs: Optional[dict]) -> None:
    for key, by_side in (figs or {}).items():
        for side, vals in by_side.items():
            if isinstance(vals, set):
                res.setdefault(key, {}).setdefault(side, set()).update(vals)
            else:
                res.setdefault(key, {}).setdefault(side, []).extend(vals)


def order(sides: list, rnd: int) -> list:
    """The sides in the order of round rnd: the first one goes last next time."""
    k = (rnd - 1) % len(sides) if sides else 0
    return sides[k:] + sides[:k]


def attempt(w: World, what: str, fn: Callable):
    """fn(), or None when it fails: the failure is logged and reported, the
    other measurements go on."""
    try:
        return fn()
    except BenchError as e:
        w.errors.append(f"{what}: {e}")
        log(f"  ERROR {what}: {e}")
        return None


def speed_setup(w: World) -> None:
    if "openssl_speed_bytes_per_s" not in w.extra:
        log("openssl speed (one core, 16 KiB blocks)")
        w.extra["openssl_speed_bytes_per_s"] = openssl_speed(w.args.speed_seconds)
        log("  " + ", ".join(f"{k} {v / 1e9:.2f} GB/s" for k, v in
                             w.extra["openssl_speed_bytes_per_s"].items() if v))


def relay_setup(w: World) -> None:
    speed_setup(w)
    w.relay_suite = relay_cipher(w)
    log(f"bare relay: TLS 1.3 with {w.relay_suite}, as curl and ftpsgate negotiate it here")


def transfers_round(w: World, rnd: int) -> dict:
    """Items "transfers" and "relay": one download and one upload per side,
    the sides alternated: ftpsgate always, vsftpd's own TLS and the
    plaintext backend alone for "transfers", the bare relay for "relay"."""
    figs: dict = {}
    sides = ["ftpsgate"] + (["baseline"] if "transfers" in w.items else []) \
        + (["relay"] if "relay" in w.items else [])
    # A warm-up, not counted: the first large transfer after the previous
    # round's memory item (thousands of sessions and processes just ended)
    # cost whichever side went first 1.9 to 2.7 times its CPU in other rounds,
    # in kernel time, even with the machine otherwise idle.
    t = attempt(w, f"warm-up r{rnd}", lambda: curl_transfer(
        w, Side("plain", w.backend.port, "anonymous"), "download", f"w{rnd}", tls=False))
    if t:
        log(f"  warm-up  plain    {t['mbps']:7.1f} MB/s (not counted)")
    for kind in ("download", "upload"):
        for name in order(sides, rnd):
            if name == "relay":
                t = attempt(w, f"{kind} relay r{rnd}", lambda: relay_transfer(w, kind))
            else:
                t = attempt(w, f"{kind} {name} r{rnd}",
                            lambda: curl_transfer(w, w.sides[name], kind, f"r{rnd}"))
            if not t:
                continue
            record_transfer(figs, name, kind, t)
            if name == "relay":
                w.extra.setdefault("relay_runs", []).append(
                    {"round": rnd, "kind": kind, "cpu": t["cpu"]["relay"],
                     "utime": t["relay_utime"], "stime": t["relay_stime"], "mbps": t["mbps"],
                     **t["relay_calls"]})
            c = t["cpu"]
            cpu = {"ftpsgate": lambda: f"ftpsgate {c['ftpsgate']:.2f}s (user "
                                       f"{c['ftpsgate_user']:.2f}s) + backend {c['backend']:.2f}s",
                   "baseline": lambda: f"vsftpd {c['baseline']:.2f}s",
                   "relay": lambda: f"relay {c['relay']:.2f}s (user {t['relay_utime']:.2f}s; "
                                    f"{t['relay_calls']['reads']} reads, "
                                    f"{t['relay_calls']['writes']} writes, "
                                    f"{t['relay_calls']['waits']} waits)"}[name]()
            log(f"  {kind:8s} {name:8s} {t['mbps']:7.1f} MB/s  CPU {cpu}  "
                f"({t['cipher'][1] if t['cipher'] else '?'})")
        if "transfers" in w.items:
            plain = Side("plain", w.backend.port, "anonymous")
            t = attempt(w, f"{kind} plain r{rnd}",
                        lambda: curl_transfer(w, plain, kind, f"r{rnd}", tls=False))
            if t:
                add(figs, f"{kind}_plain_mbps", "ftpsgate", t["mbps"])
                log(f"  {kind:8s} plain    {t['mbps']:7.1f} MB/s (backend alone, no TLS)")
    return figs


def logins_round(w: World, rnd: int) -> dict:
    """Full FTPS logins (ftpsload), sequential and 8 concurrent clients,
    ftpsgate and the baseline alternated; the plaintext backend alone."""
    figs: dict = {}
    plain = Side("plain", w.backend.port, "anonymous")
    for procs, key in ((1, "logins_seq"), (8, "logins_conc")):
        for name in order(["ftpsgate", "baseline"], rnd):
            L = attempt(w, f"{key} {name} r{rnd}", lambda: login_run(w, w.sides[name], procs))
            if not L:
                continue
            add(figs, key, name, L["rate"])
            add(figs, f"_{key}_client_cpu_frac", name, L["client_cpu_frac"])
            cm = L["cpu_ms_per_login"]
            if procs == 8:
                if name == "ftpsgate":
                    add(figs, "login_cpu_ms", name, cm["ftpsgate"])
                    add(figs, "login_cpu_backend_ms", name, cm["backend"])
                else:
                    add(figs, "login_cpu_ms", name, cm["baseline"])
            log(f"  logins x{procs} {name:8s} {L['rate']:7.1f}/s  client CPU "
                f"{100 * L['client_cpu_frac']:.0f}% of the machine  CPU-ms/login "
                + (f"ftpsgate {cm['ftpsgate']:.2f} backend {cm['backend']:.2f}"
                   if name == "ftpsgate" else f"vsftpd {cm['baseline']:.2f}"))
        L = attempt(w, f"{key} plain r{rnd}", lambda: login_run(w, plain, procs, plain=True))
        if L:
            add(figs, key.replace("logins_", "logins_plain_"), "ftpsgate", L["rate"])
            log(f"  logins x{procs} plain    {L['rate']:7.1f}/s (backend alone, no TLS)")
    return figs


PRECONNECT = (0, 4)


def preconnect_setup(w: World) -> None:
    """Item "logins-preconnect": a proxy per preconnect value, both in front
    of a vsftpd of their own (configured as the backend): warm connections
    are sessions that never end, and the CPU figures of the other items
    wait for the backend's sessions to be reaped."""
    vs = H.Vsftpd(w.work, "backend-pc", pasv_ports=64, files={"small.bin": w.small_data},
                  dirs=[], extra=VSFTPD_EXTRA)
    w.vsftpds.append(vs)
    vs.start()
    w.pc_px = {n: w.new_proxy(backend_address=vs.address, section={"preconnect": n})
               for n in PRECONNECT}
    time.sleep(1.5)   # the first warm connections are made


def preconnect_round(w: World, rnd: int) -> dict:
    """Full FTPS logins (ftpsload) through ftpsgate with preconnect = 0 and 4
    and to vsftpd's own TLS, alternated: logins/s sequential (and the mean
    login latency, 1 / that rate) and with 8 concurrent clients; the
    plaintext backend alone for reference."""
    figs: dict = {}
    sides = {f"preconnect{n}": Side(f"preconnect{n}", w.pc_px[n].port, PROXY_USER)
             for n in PRECONNECT}
    sides["baseline"] = w.sides["baseline"]
    plain = Side("plain", w.backend.port, "anonymous")
    for procs, key in ((1, "pc_seq"), (8, "pc_conc")):
        for name in order(list(sides), rnd):
            L = attempt(w, f"{key} {name} r{rnd}", lambda: login_run(w, sides[name], procs))
            if not L:
                continue
            add(figs, key, name, L["rate"])
            if procs == 1:
                add(figs, "pc_lat", name, 1000.0 * L["elapsed"] / L["logins"])
            log(f"  logins x{procs} {name:11s} {L['rate']:7.1f}/s"
                + (f"  {1000.0 * L['elapsed'] / L['logins']:.2f} ms per login"
                   if procs == 1 else ""))
        if procs == 1:
            L = attempt(w, f"pc_lat plain r{rnd}", lambda: login_run(w, plain, 1, plain=True))
            if L:
                add(figs, "pc_lat", "plain", 1000.0 * L["elapsed"] / L["logins"])
                log(f"  logins x1 plain       {L['rate']:7.1f}/s  "
                    f"{1000.0 * L['elapsed'] / L['logins']:.2f} ms per login (no TLS)")
    return figs


def workers_round(w: World, rnd: int) -> dict:
    """Item "logins-workers": 8 concurrent full logins through ftpsgate with
    workers = 1 and workers = 2 (alternated), stub backend, for the RSA-2048
    and the ECDSA P-256 central certificate."""
    figs: dict = {}
    for ck, cname in WORKER_CERTS:
        for n in order([1, 2], rnd):
            L = attempt(w, f"logins workers={n} {cname} r{rnd}",
                        lambda: stub_login_run(w, w.workers_px[ck, n], 8))
            if not L:
                continue
            side = f"workers{n}"
            add(figs, f"workers_cpu_ms_{ck}", side, L["cpu_ms"])
            add(figs, f"workers_rate_{ck}", side, L["rate"])
            add(figs, f"workers_busy_{ck}", side, 100 * L["busy"])
            add(figs, f"_workers_stub_cpu_ms_{ck}", side, L["stub_cpu_ms"])
            add(figs, f"_workers_client_cpu_ms_{ck}", side, L["client_cpu_ms"])
            log(f"  logins x8 {cname:11s} workers={n} {L['rate']:7.1f}/s  CPU-ms/login ftpsgate "
                f"{L['cpu_ms']:.3f} stub {L['stub_cpu_ms']:.3f} client {L['client_cpu_ms']:.3f}; "
                f"machine {100 * L['busy']:.0f}% busy")
    return figs


def small_round(w: World, rnd: int) -> dict:
    """4 KiB downloads in one open session, each a new resumed data connection."""
    figs: dict = {}
    for name in order(["ftpsgate", "baseline"], rnd):
        S = attempt(w, f"small {name} r{rnd}", lambda: small_run(w, w.sides[name]))
        if S:
            add(figs, "small_median_ms", name, S["median_ms"])
            add(figs, "small_p90_ms", name, S["p90_ms"])
            add(figs, "small_cpu_ms", name, S["cpu_ms"])
            if name == "ftpsgate":
                add(figs, "small_cpu_backend_ms", name, S["backend_cpu_ms"])
            add(figs, "_small_resumed", name, S["resumed"] / S["count"])
            log(f"  small    {name:8s} median {S['median_ms']:.2f} ms  p90 "
                f"{S['p90_ms']:.2f} ms  CPU-ms/transfer {S['cpu_ms']:.3f}"
                + (f" (+ backend {S['backend_cpu_ms']:.3f})" if name == "ftpsgate" else "")
                + f"  ({S['resumed']}/{S['count']} resumed)")
    if w.args.strace:
        # A separate run: strace slows every call it sees, so the timed and
        # CPU figures above come from untraced runs.
        S = attempt(w, f"small strace r{rnd}",
                    lambda: small_run(w, w.sides["ftpsgate"], trace=True))
        if S:
            add(figs, "small_syscalls", "ftpsgate", S["syscalls"])
            w.extra.setdefault("small_syscalls", []).append(
                {"round": rnd, "per_transfer": S["syscalls"], "top": S["syscall_top"]})
            log(f"  small    strace   {S['syscalls']:.1f} system calls per 4 KiB RETR: "
                + ", ".join(f"{k} {v}" for k, v in S["syscall_top"].items()))
    return figs


def memory_round(w: World, rnd: int) -> dict:
    """Memory per idle TLS session, --sessions of them, a fresh ftpsgate each time."""
    figs: dict = {}
    for name in order(["ftpsgate", "baseline"], rnd):
        M = attempt(w, f"memory {name} r{rnd}", lambda: memory_run(w, name, w.args.sessions))
        if not M:
            continue
        add(figs, "mem_kib", name, M["kib"])
        add(figs, "mem_anon_kib", name, M["anon_kib"])
        add(figs, "mem_sum_kib", name, M["sum_kib"])
        if name == "ftpsgate":
            add(figs, "mem_backend_kib", name, M["backend_kib"])
        w.extra.setdefault("memory_runs", []).append({"side": name, "round": rnd, **M})
        more = (f"ftpsgate {M['kib']:.1f} KiB + backend {M['backend_kib']:.1f} KiB, "
                f"{M['proxy_threads']} threads"
                if name == "ftpsgate" else f"{M['procs']} processes")
        log(f"  memory   {name:8s} {M['kib']:7.1f} KiB/session over {M['held']} "
            f"sessions ({more}; opened in {M['open_seconds']:.1f}s)")
    return figs


def big_sessions_once(w: World, rnd: int) -> dict:
    """--big-sessions idle sessions in one ftpsgate process (a note, no row)."""
    n = w.args.big_sessions
    if not n:
        return {}
    log(f"one-process check: {n} idle sessions in one ftpsgate")
    B = attempt(w, "big sessions", lambda: big_sessions_check(w, n))
    if B:
        w.extra["big_sessions"] = B
        log(f"  held {B.get('held')} of {B['sessions']} in {B['proxy_processes']} process "
            f"({B.get('proxy_threads')} threads, {B.get('proxy_fds')} fds, nofile "
            f"{B.get('proxy_nofile')}), {B['kib']:.1f} KiB/session PSS "
            f"({B['anon_kib']:.1f} anon), opened in {B.get('open_seconds', 0):.1f}s, "
            f"exit {B.get('proxy_exit')}")
    return {}


# Item "shared-ports" (issue 14) ----------------------------------------------

SHARED_CONC = 8   # concurrent transfers per measurement


def shared_setup(w: World) -> None:
    """The file and the two proxies of "shared-ports": passive_ports of one
    port with shared_passive_ports = yes, and a 64-port range without."""
    a = w.args
    data = w.work / "data"
    data.mkdir(exist_ok=True)
    w.shared_file = data / "shared.bin"
    write_random(w.shared_file, a.shared_mib * MIB)
    os.link(w.shared_file, w.backend.root / "shared.bin")
    lo, _ = H.free_port_range(1)
    rlo, rhi = H.free_port_range(64)
    cap = str(4 * SHARED_CONC + 64)
    common = {"max_passive_per_ip": cap, "max_transfers_per_ip": cap, "workers": "1"}
    w.shared_px = {
        "shared1": w.new_proxy(opts={"passive_ports": f"{lo}-{lo}", "shared_passive_ports": "yes",
                                     **common}),
        "range": w.new_proxy(opts={"passive_ports": f"{rlo}-{rhi}", **common}),
    }
    log(f"shared-ports: {SHARED_CONC} concurrent transfers of {a.shared_mib} MiB, 1 shared "
        f"port ({lo}) vs a range ({rlo}-{rhi})")


def shared_transfers(w: World, px: H.Proxy, kind: str, tag: str) -> dict:
    """SHARED_CONC curl transfers at once through px: total MB/s over the
    wall time, ftpsgate's CPU seconds, every transfer checked by size."""
    a = w.args
    size = a.shared_mib * MIB
    cmds = []
    for i in range(SHARED_CONC):
        if kind == "download":
            path, extra = "/shared.bin", ["-o", "/dev/null"]
        else:
            path, extra = f"/upload/shared-{tag}-{i}.bin", ["-T", str(w.shared_file)]
        cmds.append(["curl", "-sS", "-k", "--ssl-reqd", "--connect-timeout", "10", "--max-time",
                     str(a.transfer_timeout), "-u", f"{PROXY_USER}:{PASSWORD}", *extra,
                     "-w", "BENCH %{size_download} %{size_upload}\n",
                     f"ftp://{HOST}:{px.port}{path}"])
    wait_reaped(w.backend)
    c0 = proc_cpu(px.pid)
    t0 = time.monotonic()
    procs = [w.popen(c, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                     stderr=subprocess.PIPE, text=True) for c in cmds]
    outs = []
    for p in procs:
        try:
            outs.append(p.communicate(timeout=a.transfer_timeout + 30) + (p.returncode,))
        except subprocess.TimeoutExpired:
            H._kill_group(p, signal.SIGKILL)
            outs.append(p.communicate() + (-9,))
        w.procs.remove(p)
    secs = time.monotonic() - t0
    wait_reaped(w.backend)
    cpu = proc_cpu(px.pid) - c0
    for i, (out, err, rc) in enumerate(outs):
        m = re.search(r"BENCH (\d+) (\d+)", out)
        moved = int(m.group(1) if kind == "download" else m.group(2)) if m else -1
        if rc != 0 or moved != size:
            raise BenchError(f"shared-ports {kind} {i} via {tag}: exit {rc}, {moved} bytes:\n"
                             + "\n".join(err.splitlines()[-8:]))
        if kind == "upload":
            f = w.backend.root / "upload" / f"shared-{tag}-{i}.bin"
            got = f.stat().st_size if f.exists() else -1
            with contextlib.suppress(OSError):
                f.unlink()
            if got != size:
                raise BenchError(f"shared-ports upload {i} via {tag}: stored {got} bytes")
    total = size * SHARED_CONC
    return {"mbps": total / secs / 1e6, "cpu_per_gib": cpu / (total / GIB), "seconds": secs}


def shared_hold(w: World, shared: bool) -> dict:
    """--shared-hold sessions each waiting for a data connection (PASV
    answered) at once, through a proxy with passive_ports of 4 ports, stub
    backend: how many got their 227, on how many ports."""
    a = w.args
    _, port = w.stub()
    lo, hi = H.free_port_range(4)
    n = a.shared_hold
    cap = str(2 * n + 1024)
    px = w.new_proxy(backend_address=f"{HOST}:{port}", sessions=n,
                     opts={"passive_ports": f"{lo}-{hi}",
                           "shared_passive_ports": "yes" if shared else "no",
                           "max_passive_per_ip": cap, "max_transfers_per_ip": cap,
                           "data_timeout": "600", "log_level": "error"})
    try:
        hold = Holder(w, px.port, PROXY_USER, n, a.open_procs, a.hold_timeout, mode="holdpasv")
        try:
            time.sleep(0.5)
            alive = px.alive()
        finally:
            hold.release()
        return {"held": hold.ok, "refused": hold.failures, "ports": hold.ports, "alive": alive}
    finally:
        w.stop_proxy(px)


def shared_round(w: World, rnd: int) -> dict:
    """Item "shared-ports": concurrent downloads and uploads through one
    shared port and through a range (alternated); in the first round, the
    passive transfers held with 4 ports, shared and not."""
    figs: dict = {}
    for kind in ("download", "upload"):
        for side in order(list(SHR), rnd):
            T = attempt(w, f"shared-ports {kind} {side} r{rnd}",
                        lambda: shared_transfers(w, w.shared_px[side], kind, f"{side}{rnd}"))
            if not T:
                continue
            k = "down" if kind == "download" else "up"
            add(figs, f"shared_{k}_cpu", side, T["cpu_per_gib"])
            add(figs, f"shared_{k}_mbps", side, T["mbps"])
            log(f"  shared   {kind:8s} {side:7s} {T['mbps']:8.1f} MB/s total, ftpsgate "
                f"{T['cpu_per_gib']:.3f} CPU-s/GiB ({SHARED_CONC} at once)")
    if rnd == 1 and w.args.shared_hold:
        for shared in (True, False):
            side = "shared4" if shared else "unshared4"
            H_ = attempt(w, f"shared-ports hold {side}", lambda: shared_hold(w, shared))
            if H_:
                add(figs, "shared_held", side, H_["held"])
                w.extra.setdefault("shared_hold", {})[side] = H_
                log(f"  held     {side:9s} {H_['held']} of {w.args.shared_hold} passive "
                    f"transfers waiting at once on {H_['ports']} ports ({H_['refused']} refused)")
    return figs


def sites_once(w: World, rnd: int) -> dict:
    """ftpsgate with --sites N sites, each with its own file and certificate
    (bench_lib/sites_bench.py; a note, no row: there is nothing to compare)."""
    sys.path.insert(0, str(ROOT / "scripts" / "bench_lib"))
    import sites_bench
    def one(n: int) -> dict:
        try:
            return sites_bench.run(str(w.args.binary), n, Path(w.args.sites_cache).resolve(),
                                   w.work / f"sites-{n}", w.args.sites_reloads, say=log)
        except Exception as e:  # noqa: BLE001 - reported, the rest goes on
            raise BenchError(str(e)) from e
    runs = []
    for n in w.args.sites:
        log(f"sites: {n} sites, one INI file and one ECDSA certificate each")
        r = attempt(w, f"sites {n}", lambda n=n: one(n))
        if r:
            runs.append(r)
    w.extra["sites"] = runs
    return {}


@dataclass(frozen=True)
class Item:
    name: str
    help: str
    run: Callable[[World, int], dict]
    setup: Optional[Callable[[World], None]] = None  # once, before the first round
    once: bool = False                               # after the rounds, not in each


ITEMS = [
    Item("transfers", "download (--download-mib) and upload (--upload-mib) with curl through "
         "ftpsgate and through vsftpd's own TLS: MB/s, CPU-s/GiB; the plaintext backend "
         "alone; the data path against openssl speed", transfers_round, speed_setup),
    Item("relay", "the same download and upload through the bare relay (bench_lib/relay.c: "
         "OpenSSL and epoll, no FTP) in the same rounds: ftpsgate's CPU-s/GiB as a ratio of "
         "the relay's (target <= 1.1x)", transfers_round, relay_setup),
    Item("logins", "full FTPS logins/s (ftpsload), sequential and 8 concurrent, and CPU-ms "
         "per login, against the baseline", logins_round),
    Item("logins-workers", "8 concurrent logins/s and ftpsgate CPU-ms per login with "
         "workers = 1 and 2, stub backend, RSA-2048 and ECDSA P-256 certificates (target: "
         "CPU per login at 2 workers <= 1.10x that at 1)", workers_round, workers_setup),
    Item("logins-preconnect", "full FTPS logins/s sequential (and login latency) and 8 "
         "concurrent through ftpsgate with preconnect = 0 and 4, against vsftpd's own TLS "
         "(targets with preconnect: sequential >= 2x, latency <= 0.5x, concurrent >= 1.5x)",
         preconnect_round, preconnect_setup),
    Item("small", "4 KiB downloads in an open session (--small-count): median and p90 ms, "
         "serving CPU-ms per transfer (ftpsgate's own vs the baseline's session processes; "
         "targets <= 0.8x and <= 0.5x) and, with --strace, ftpsgate's system calls per "
         "transfer", small_round),
    Item("memory", "memory per idle TLS session (--sessions open), ftpsgate and vsftpd",
         memory_round),
    Item("big-sessions", "--big-sessions idle sessions in one ftpsgate process, stub "
         "backend (once, after the rounds)", big_sessions_once, once=True),
    Item("shared-ports", f"{SHARED_CONC} concurrent downloads and uploads (--shared-mib each) "
         "through passive_ports of 1 shared port vs a 64-port range: total MB/s and ftpsgate "
         "CPU-s/GiB (target: sharing <= 1.1x); and, in round 1, how many of --shared-hold "
         "sessions wait for a data connection at once with 4 ports, shared vs not",
         shared_round, shared_setup),
    Item("sites", "--sites N sites (one INI file and ECDSA certificate each, one private CA): "
         "-t and start-up time, RSS per site, reload time with nothing, one and every "
         "certificate changed, the longest NOOP reply and download pause during each, the "
         "event loop's CPU per reload, RSS after --sites-reloads reloads (once)", sites_once,
         once=True),
]
ITEM = {it.name: it for it in ITEMS}


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


def verdict(fig: Figure, f: Optional[dict], b: Optional[dict]) -> tuple[Optional[float], str]:
    target = fig.target
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
    """The rows of the work items that ran, with a value on either side."""
    rows = []
    for fig in FIGURES:
        if fig.item not in args.work:
            continue
        title = fig.title.format(dl=size_text(args.download_mib), ul=size_text(args.upload_mib),
                                 n=f"{args.sessions:,}", cores=os.cpu_count(),
                                 sc=SHARED_CONC, sh=f"{args.shared_hold:,}")
        s = summary.get(fig.key, {})
        f, b = s.get(fig.sides[0]), s.get(fig.sides[1])
        if not f and not b:
            continue
        ratio, met = verdict(fig, f, b)
        rows.append([title, cell(f), cell(b), f"{ratio:.2f}×" if ratio is not None else "",
                     fig.ttext, met])
    return rows


def md_table(rows: list[list[str]]) -> str:
    head = ["figure", "ftpsgate median (min–max)", "compared with, median (min–max)",
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
    head = ["figure", "ftpsgate", "compared with", "ratio", "target", "met?"]
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
    width = max(len(it.name) for it in ITEMS)
    epilog = "work items (--work, comma-separated; default: all of them, in this order):\n" + \
        "\n".join(textwrap.fill(it.help, 100, initial_indent=f"  {it.name.ljust(width)}  ",
                                subsequent_indent=" " * (width + 4)) for it in ITEMS)
    p = argparse.ArgumentParser(prog="scripts/bench", description=__doc__.split("\n\n")[0],
                                epilog=epilog,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default="all", metavar="ITEMS",
                   help="the work items to run, comma-separated, e.g. relay or "
                        "transfers,relay (default: all; the list is below)")
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
    p.add_argument("--strace", action="store_true",
                   help="item small: also count ftpsgate's system calls per 4 KiB RETR "
                        "(strace -c -f, in a separate untimed run)")
    p.add_argument("--perf", action="store_true",
                   help="also perf-record ftpsgate during one download and one upload")
    p.add_argument("--callgrind", action="store_true",
                   help="also run a second ftpsgate under callgrind (64 MiB down/up, 50 logins)")
    p.add_argument("--binary", default=os.environ.get("FTPSGATE_BIN",
                                                      str(ROOT / "build-bench" / "ftpsgate")))
    p.add_argument("--tools-dir", default=os.environ.get("BENCH_TOOLS_DIR",
                                                         str(ROOT / "build-bench" / "bench-tools")),
                   help="where the C helpers of bench_lib/ are built (default "
                        "build-bench/bench-tools)")
    p.add_argument("--out", default=str(ROOT / "bench-results"))
    p.add_argument("--workdir", default=None,
                   help="where the test files go (default: /dev/shm if it has room, else $TMPDIR)")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    p.add_argument("--shared-mib", type=int, default=64,
                   help="shared-ports: MiB per transfer (default 64)")
    p.add_argument("--shared-hold", type=int, default=2000,
                   help="shared-ports: sessions waiting on 4 ports, 0 to skip (default 2000)")
    p.add_argument("--sites", default="1000,10000",
                   help="site counts for the sites item, comma-separated (default 1000,10000)")
    p.add_argument("--sites-reloads", type=int, default=10,
                   help="reloads before the sites item's last RSS reading (default 10)")
    p.add_argument("--sites-cache", default=str(ROOT / "build-bench" / "sites-cache"),
                   help="where generated sites are kept between runs")
    args = p.parse_args(argv)
    args.sites = [int(x) for x in str(args.sites).split(",") if x.strip()]
    if args.quick:
        args.rounds = 1
        args.download_mib, args.upload_mib = 64, 32
        args.login_seconds = 1.0
        args.sessions = min(args.sessions, 100)
        args.big_sessions = min(args.big_sessions, 1000)
        args.small_count = 100
        args.speed_seconds = 1
        args.shared_mib = min(args.shared_mib, 16)
        args.shared_hold = min(args.shared_hold, 200)
        args.sites = [min(n, 1000) for n in args.sites][:1]
    args.transfer_timeout = max(120, args.download_mib // 4)
    args.hold_timeout = max(120, args.big_sessions / 20, args.sessions / 20)
    if args.rounds < 1 or args.workers < 1:
        p.error("--rounds and --workers must be at least 1")
    names = [n.strip() for n in args.work.split(",") if n.strip()]
    if names == ["all"]:
        names = list(ITEM)
    bad = [n for n in names if n not in ITEM]
    if bad or not names:
        p.error(f"--work: unknown item {', '.join(bad) or '(none given)'}; the items are "
                f"{', '.join(ITEM)} (or all)")
    args.work = [n for n in ITEM if n in names]  # table order, each once
    return args


def pick_workdir(args) -> Path:
    files = bool({"transfers", "relay"} & set(args.work)) or args.perf
    need = ((args.download_mib + 3 * args.upload_mib) * files + 256) * MIB
    if "shared-ports" in args.work:
        need += (SHARED_CONC + 1) * args.shared_mib * MIB
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
    if "memory" in args.work and 3 * args.sessions + 2000 > pid_headroom():
        print(f"bench: --sessions {args.sessions} needs about {3 * args.sessions} vsftpd "
              f"processes (vsftpd forks 2-3 per session); only {pid_headroom()} pids are free "
              "(kernel.pid_max). Use --big-sessions N for ftpsgate alone with N sessions "
              "(a one-process stub backend).", file=sys.stderr)
        return 1

    info = machine_info(args)
    info["nofile"] = list(nofile)
    info["workers"] = args.workers
    log(f"ftpsgate bench: {', '.join(args.work)}; {args.rounds} rounds, workers={args.workers}, "
        f"{info['cpu_model']} x{info['cores']}, kernel {info['kernel']}, "
        f"load {' '.join(info['loadavg_start'])}")

    work = pick_workdir(args)
    w = World(args, work)
    extra, errors = w.extra, w.errors
    res: dict = {}
    rc = 0
    try:
        w.build_client()
        w.start()
        log(f"backend vsftpd :{w.backend.port}, baseline vsftpd+TLS :{w.baseline.port}, "
            f"ftpsgate :{w.proxy.port} (pid {w.proxy.pid})")
        items = [ITEM[n] for n in args.work]
        for it in items:
            if it.setup:
                it.setup(w)
        for rnd in range(1, args.rounds + 1):
            log(f"round {rnd}/{args.rounds}")
            done: set = set()
            for it in items:
                if it.once or it.run in done:  # items may share one function
                    continue
                done.add(it.run)
                merge(res, it.run(w, rnd))
            log(f"  elapsed {time.monotonic() - t_start:.0f}s")
        for it in items:
            if it.once:
                merge(res, it.run(w, 0))
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
    for r in rows:
        if r[5]:
            print(f"target {'met' if r[5] == 'yes' else 'MISSED'}: {r[0].strip()}: {r[3]} "
                  f"(target {r[4]}{'' if r[5] == 'yes' else '; ' + r[5]})")
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
        how = "its own report" if side == "relay" else "curl -v"
        n.append(f"{side} negotiated ({how}): {', '.join(cs)}")
    if "relay" in args.work:
        n.append("bare relay: bench_lib/relay.c, one TLS 1.3 connection (the suite above, 16 KiB "
                 "records, no tickets), plaintext from or to one TCP connection, epoll, "
                 "ftpsgate's buffer sizes (1 MiB plaintext, 512 KiB ciphertext each way); its "
                 "plaintext end is bench_lib/relaypeer.c (sendfile of the same file, or a sink "
                 "that checks every byte) and its client relaypeer get/put (checks every byte; "
                 "16 KiB reads and 64 KiB writes, as curl). Its CPU is its own getrusage from "
                 "accept to the end; ftpsgate's is its utime+stime as above, login included.")
        for kind in ("download", "upload"):
            rs = summary.get(f"{kind}_cpu", {}).get("relay")
            fs = summary.get(f"{kind}_cpu", {}).get("ftpsgate")
            if rs and fs:
                n.append(f"{kind}: ftpsgate {fs['median']:.3f} CPU-s/GiB, the bare relay "
                         f"{rs['median']:.3f} (ratio {fs['median'] / rs['median']:.2f}×, "
                         f"{fs['median'] - rs['median']:+.3f} CPU-s/GiB)")
    if "logins-workers" in args.work:
        for ck, cname in WORKER_CERTS:
            parts = []
            for side, label in (("workers1", "workers = 1"), ("workers2", "workers = 2")):
                st = summary.get(f"_workers_stub_cpu_ms_{ck}", {}).get(side)
                cl = summary.get(f"_workers_client_cpu_ms_{ck}", {}).get(side)
                if st and cl:
                    parts.append(f"{label}: stub backend {st['median']:.3f}, client (ftpsload) "
                                 f"{cl['median']:.3f}")
            if parts:
                n.append(f"logins-workers, {cname}, other CPU-ms per login on the same "
                         f"{info['cores']} cores: " + "; ".join(parts))
        n.append("logins-workers: 8 ftpsload processes log in (AUTH TLS, USER, PASS, QUIT) "
                 "through ftpsgate with workers = 1 or 2, alternated, in front of the one-process "
                 "stub backend (bench_lib/stubftp.c); ftpsgate's CPU is utime+stime of all its "
                 "threads. Client, stub and ftpsgate share the machine's cores, so the scaling "
                 "of logins/s is bounded by them as well as by ftpsgate.")
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
    for S in extra.get("sites", []):
        n.append(f"sites: {S['sites']:,} sites (own INI file and ECDSA certificate each, "
                 f"ca_file set): -t {S['check_s']:.1f} s, start-up to the first 220 "
                 f"{S['start_s']:.1f} s, RSS {S['rss_mib']:.0f} MiB = "
                 f"{S['rss_per_site_kib']:.1f} KiB per site; reload with nothing / one / every "
                 f"certificate changed {S['reload_none_s']:.2f} / {S['reload_one_s']:.2f} / "
                 f"{S['reload_all_s']:.2f} s; the event loop's CPU per reload "
                 f"{S['loop_cpu_none_ms']:.1f} / {S['loop_cpu_one_ms']:.1f} / "
                 f"{S['loop_cpu_all_ms']:.1f} ms (target: no pause over 10 ms); longest NOOP "
                 f"reply during them {S['gap_none_noop_ms']:.0f} / {S['gap_one_noop_ms']:.0f} / "
                 f"{S['gap_all_noop_ms']:.0f} ms and download pause "
                 f"{S['gap_none_read_ms']:.0f} / {S['gap_one_read_ms']:.0f} / "
                 f"{S['gap_all_read_ms']:.0f} ms, against {S['gap_idle_noop_ms']:.0f} and "
                 f"{S['gap_idle_read_ms']:.0f} ms with no reload (this machine's noise); RSS "
                 f"{S['rss_first_reload_mib']:.0f} MiB after the first reloads, "
                 f"{S['rss_after_reloads_mib']:.0f} MiB after {S['reloads']}"
                 + (f"; probe errors: {S['probe_errors']}" if S.get("probe_errors") else ""))
    busy = info.get("machine_busy_during_run")
    n.append(f"machine CPU busy during the run (all processes, /proc/stat): {100 * busy:.0f}%; "
             f"load average {' '.join(info['loadavg_start'])} at start, "
             f"{' '.join(info['loadavg_end'])} at end. Other work on the machine makes MB/s "
             "and logins/s noisy; CPU-s/GiB and the alternated ratios hold up better.")
    if {"transfers", "relay"} & set(args.work):
        n.append("MB/s is 10^6 bytes per second of curl's time_total (login included). "
                 "CPU-s/GiB: ftpsgate's own utime+stime (all threads); for vsftpd "
                 "utime+stime+cutime+cstime of its listener and of a child subreaper it runs "
                 "under (bench_lib/reaper.c), read after every session process has been reaped: "
                 "vsftpd session processes often exit before their children, which are then "
                 "re-parented and whose CPU would otherwise never reach the listener's cutime "
                 "(about half of a TLS download's CPU here). The CPU target compares ftpsgate's "
                 "own CPU with the baseline vsftpd's serving processes; the backend's share and "
                 "the sum are shown below it.")
    if "small" in args.work:
        n.append("small: one login per side and round, then one uncounted download, then "
                 f"{args.small_count} downloads of a 4 KiB file, each a new data connection "
                 "whose TLS resumes the control session. CPU per transfer: ftpsgate's own "
                 "threads, and the baseline vsftpd's session processes (they live through "
                 "the run), from /proc/PID/task/*/schedstat (nanoseconds) before the first "
                 "and after the last; the login is not counted.")
        for r in extra.get("small_syscalls", [])[-1:]:
            n.append("small, --strace: strace -c -f on ftpsgate in a separate run (not timed): "
                     f"{r['per_transfer']:.1f} system calls per 4 KiB RETR, the most frequent: "
                     + ", ".join(f"{k} {v}" for k, v in r["top"].items()))
    if "memory" in args.work:
        n.append("memory: sum of Pss (smaps_rollup) over the serving processes, after minus "
                 f"before {args.sessions} idle logged-in sessions (AUTH TLS, USER, PASS), divided "
                 "by the sessions; ftpsgate is started fresh for each memory round. Pss_Anon is "
                 "shown because ftpsgate's share of shared-library pages shrinks while the "
                 f"backend's {2 * args.sessions:,} session processes map the same libraries.")
    return n


def render_md(info, args, rows, notes, extra, errors) -> str:
    out = [f"# ftpsgate benchmark, {info['date']}", ""]
    out.append(f"Machine: {info['cpu_model']}, {info['cores']} cores, {info['memory_mib']} MiB, "
               f"kernel {info['kernel']}. {info['openssl']}; {info['curl']}; {info['vsftpd']}; "
               f"{info['ftpsgate']}.")
    out.append("")
    work = "" if args.work == list(ITEM) else f" --work {','.join(args.work)}"
    out.append(f"`scripts/bench --rounds {args.rounds} --workers {args.workers} --sessions "
               f"{args.sessions}{work}`{' --quick' if args.quick else ''}: "
               f"{args.download_mib} MiB download, {args.upload_mib} MiB upload, "
               f"{args.login_seconds:g} s per login run, {args.small_count} small files; "
               f"medians of {args.rounds} alternated rounds on loopback; ratio = ftpsgate / "
               f"the column compared with: vsftpd's own TLS (the baseline), unless the figure "
               f"names another after \"vs\" (the bare relay; workers = 1). "
               f"Run time {info['run_seconds']:.0f} s.")
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
