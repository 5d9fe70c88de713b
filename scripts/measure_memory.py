#!/usr/bin/python3
"""scripts/measure_memory.py - resident memory of ftpsgate during a 1 GiB
download, and its throughput against vsftpd's own TLS. Not a test: a
measurement for the issue's note.

    /usr/bin/python3 scripts/measure_memory.py [--size-mib 1024] [--bin build/ftpsgate]

What it does, on loopback, with the integration harness (real vsftpd, real
certificates, the proxy from FTPSGATE_BIN or --bin):
  1. makes a random file of --size-mib MiB (sha256 computed while writing);
  2. starts a plaintext vsftpd with it behind ftpsgate (log_level = info),
     and a vsftpd serving its own explicit FTPS (Vsftpd(tls=True)) with the
     same file;
  3. downloads it through the proxy with curl (explicit FTPS, --ssl-reqd,
     certificate verified against the test CA) while a thread reads the
     proxy's VmRSS from /proc/PID/status every 100 ms; checks sha256;
  4. downloads it from vsftpd's own TLS with curl (and once from the
     plaintext vsftpd, for reference); checks sha256;
  5. repeats 3-4 --runs times, alternating, and prints the RSS at start,
     before the transfers and its peak during them, and every download's
     throughput.
Everything it starts is stopped at the end (by pid); the work dir is removed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "integration"))

import harness as h  # noqa: E402

MiB = 1024 * 1024


def vm_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS line")


class Sampler(threading.Thread):
    def __init__(self, pid: int, interval: float = 0.1):
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.samples: list[tuple[float, int]] = []
        self.stop_ev = threading.Event()

    def run(self):
        t0 = time.monotonic()
        while not self.stop_ev.is_set():
            try:
                self.samples.append((time.monotonic() - t0, vm_rss_kib(self.pid)))
            except (OSError, RuntimeError):
                break
            self.stop_ev.wait(self.interval)

    def stop(self):
        self.stop_ev.set()
        self.join(5)


def place(src: Path, dest: Path) -> None:
    try:
        os.link(src, dest)
    except OSError:
        shutil.copyfile(src, dest)
    os.chmod(dest, 0o644)


def curl_get(port: int, name: str, out: Path, *, user: str, ca, tls: bool = True,
             timeout: float = 600) -> tuple[float, float]:
    """curl download to `out`; returns (seconds, bytes/s as curl measured)."""
    if out.exists():
        out.unlink()
    t0 = time.monotonic()
    r = h.curl(port, f"/{name}", user=user, ca=ca, tls=tls, timeout=timeout,
               extra=["-o", str(out), "-w", "%{speed_download} %{time_total}\n"])
    dt = time.monotonic() - t0
    if r.returncode != 0:
        raise SystemExit(f"curl failed ({r.returncode}):\n{r.stderr[-3000:]}")
    speed = float(r.stdout.split()[-2])
    return dt, speed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--bin", default=os.environ.get("FTPSGATE_BIN", str(ROOT / "build" / "ftpsgate")))
    ap.add_argument("--runs", type=int, default=3, help="downloads through the proxy and "
                    "from vsftpd's TLS, alternating")
    ap.add_argument("--keep", action="store_true", help="keep the work dir")
    a = ap.parse_args()
    size = a.size_mib * MiB
    binary = Path(a.bin).resolve()
    if not os.access(binary, os.X_OK):
        raise SystemExit(f"{binary}: not found; build first (meson setup build && meson compile -C build)")

    work = Path(tempfile.mkdtemp(prefix="ftpsgate-mem-"))
    started = []
    try:
        certs = h.CertFactory(work / "certs")
        print(f"making a {a.size_mib} MiB random file ...", flush=True)
        src = work / "big.bin"
        sha = h.random_file(src, size)

        plain = h.Vsftpd(work, "memsite", files={}, dirs=[])
        plain.start()
        started.append(plain)
        place(src, plain.root / "big.bin")
        tlsv = h.Vsftpd(work, "memtls", tls=True, cert=certs.backend_tls(), files={}, dirs=[])
        tlsv.start()
        started.append(tlsv)
        place(src, tlsv.root / "big.bin")

        proxy = h.Proxy(work, certs.central(),
                        {"mem": h.backend_section(plain, ["ftp.mem.test"])},
                        proxy={"log_level": "info", "data_timeout": "60"},
                        binary=binary, ca=certs.ca)
        proxy.start()
        started.append(proxy)
        time.sleep(0.3)
        rss_start = vm_rss_kib(proxy.pid)

        # Warm-up: one small session with a data connection (OpenSSL and the
        # allocator's first arenas), so that "before" is the proxy at rest.
        (plain.root / "small.txt").write_bytes(b"warm-up\n")
        os.chmod(plain.root / "small.txt", 0o644)
        out = work / "out.bin"
        curl_get(proxy.port, "small.txt", out, user="ftp.mem.test|anonymous", ca=certs.ca)
        time.sleep(0.3)
        rss_before = vm_rss_kib(proxy.pid)

        # Alternating runs: proxy (RSS sampled), then vsftpd's own TLS.
        proxy_runs, tls_runs, peaks, oks = [], [], [], []
        nsamples = 0
        for i in range(a.runs):
            sampler = Sampler(proxy.pid)
            sampler.start()
            proxy_runs.append(curl_get(proxy.port, "big.bin", out,
                                       user="ftp.mem.test|anonymous", ca=certs.ca))
            time.sleep(0.3)
            sampler.stop()
            peaks.append(max(k for _, k in sampler.samples))
            nsamples += len(sampler.samples)
            oks.append(out.stat().st_size == size and h.sha_file(out) == sha)
            tls_runs.append(curl_get(tlsv.port, "big.bin", out, user="anonymous", ca=certs.ca))
            oks.append(out.stat().st_size == size and h.sha_file(out) == sha)
        rss_after = vm_rss_kib(proxy.pid)
        plain_run = curl_get(plain.port, "big.bin", out, user="anonymous", ca=None, tls=False)
        oks.append(out.stat().st_size == size and h.sha_file(out) == sha)
        out.unlink()

        def mibs(bps: float) -> str:
            return f"{bps / MiB:6.1f} MiB/s"

        def runs(rs) -> str:
            return ", ".join(f"{mibs(sp)} ({dt:.2f}s)" for dt, sp in rs)

        peak = max(peaks)
        print()
        print(f"ftpsgate: {binary} (pid {proxy.pid}); file {a.size_mib} MiB, sha256 {sha[:16]}...")
        print(f"proxy VmRSS at start:               {rss_start / 1024:8.1f} MiB ({rss_start} kB)")
        print(f"proxy VmRSS before the transfers:   {rss_before / 1024:8.1f} MiB ({rss_before} kB)")
        print(f"proxy VmRSS peak during transfers:  {peak / 1024:8.1f} MiB ({peak} kB; per run "
              f"{', '.join(str(k) for k in peaks)} kB; {nsamples} samples every 100 ms)")
        print(f"proxy VmRSS after the transfers:    {rss_after / 1024:8.1f} MiB ({rss_after} kB)")
        print()
        print("curl downloads of the file (explicit FTPS, TLS 1.3, certificate verified), "
              "curl's speed_download (wall time):")
        print(f"  through ftpsgate (plain vsftpd behind): {runs(proxy_runs)}")
        print(f"  vsftpd's own TLS (direct):              {runs(tls_runs)}")
        print(f"  plaintext vsftpd (direct, reference):   {runs([plain_run])}")
        print(f"sha256 of every download: {'ok' if all(oks) else 'MISMATCH'}")
        return 0 if all(oks) else 1
    finally:
        for s in reversed(started):
            s.stop()
        if a.keep:
            print(f"work dir kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
