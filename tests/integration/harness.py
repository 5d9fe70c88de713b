"""Integration-test harness for ftpsgate: real programs on loopback, no mocks.

What lives here (faultkit.py adds what the fault-injection tests need):
  * ports:        free_port(), free_port_range(n) (for passive ranges);
  * certificates: CertFactory makes a throw-away CA and leaf certificates with
                  the `openssl` command (also expired, not-yet-valid, wrong-name
                  and wrong-key variants);
  * Vsftpd:       a real vsftpd backend with its own config, port, passive
                  range, log and content; plaintext by default, or serving its
                  own FTPS (tls=True, explicit or implicit) for comparisons;
                  Site, a Vsftpd whose files are known by size and sha256;
  * Proxy:        writes an ftpsgate INI, runs build/ftpsgate in the foreground,
                  waits for its listeners, captures stderr, stops it; probes of
                  the running proxy (descriptors, passive ports) and its log
                  lines parsed (parse_log_line(), Proxy.events());
  * clients:      FtpsClient (ftplib.FTP_TLS: explicit/implicit, chosen SNI,
                  HOST before/after AUTH, EPSV/EPRT, peer certificate DER, raw
                  replies), curl(), lftp() and a raw plaintext control connection;
  * sessions:     connect() and login() through the proxy, retr() and stor()
                  with sha256, raw data connections (pasv_port(), data_connect(),
                  wrap_data(), read_all(), finish_tls()), closed_within().

Every wait has a timeout and every process is started in its own process
group, so a test kills exactly the processes it started (and their children,
e.g. vsftpd's per-session processes) and nothing else.

Run with Debian's /usr/bin/python3 and python3-pytest (scripts/test does).
"""

from __future__ import annotations

import contextlib
import ftplib
import hashlib
import io
import json
import os
import pwd
import random
import re
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

ROOT = Path(__file__).resolve().parents[2]

# The proxy binary: scripts/test points FTPSGATE_BIN at its own build dir.
PROXY_BIN = Path(os.environ.get("FTPSGATE_BIN", str(ROOT / "build" / "ftpsgate")))

VSFTPD_BIN = shutil.which("vsftpd") or "/usr/sbin/vsftpd"

LOOPBACK = "127.0.0.1"
OTHER_CLIENT_ADDR = "127.0.0.2"   # "another client address" on loopback

# Default timeouts (seconds). Every blocking call below takes one of these.
T_START = 10.0     # a server to come up
T_STOP = 8.0       # a server to exit after SIGTERM
T_IO = 10.0        # one socket read/connect
T_CLIENT = 30.0    # one curl/lftp run

PW = "test@example.org"      # any password: vsftpd's anonymous logins take it
KiB = 1024
MiB = 1024 * KiB
BLOCK = 256 * KiB            # one read or write of a transfer


class HarnessError(Exception):
    """Something in the test fixture (not the system under test) went wrong."""


# --------------------------------------------------------------------------
# Waiting
# --------------------------------------------------------------------------

def wait_until(pred, timeout: float, interval: float = 0.05, what: str = "condition"):
    """Poll pred() until it is truthy; return its value or raise TimeoutError."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.1f}s waiting for {what}")
        time.sleep(interval)


# --------------------------------------------------------------------------
# Ports
# --------------------------------------------------------------------------

# Ports handed out in this process, never handed out twice. Single ports come
# from the kernel's ephemeral range (bind to 0); ranges come from below it so
# that outgoing connections (whose source ports are ephemeral) cannot collide
# with a passive range later.
_given: set[int] = set()
_given_lock = threading.Lock()
_rng = random.Random(os.getpid() ^ int(time.time()))


def _ephemeral_range() -> tuple[int, int]:
    try:
        lo, hi = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(lo), int(hi)
    except (OSError, ValueError):
        return 32768, 60999


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _port_is_free(port: int, host: str = LOOPBACK) -> bool:
    s = socket.socket(_family(host), socket.SOCK_STREAM)
    try:
        s.bind((host, port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port nobody listens on now (bind to port 0, then release it)."""
    with _given_lock:
        for _ in range(100):
            s = socket.socket(_family(host), socket.SOCK_STREAM)
            try:
                s.bind((host, 0))
                port = s.getsockname()[1]
            finally:
                s.close()
            if port not in _given:
                _given.add(port)
                return port
    raise HarnessError("no free port found")


def free_port_range(n: int, host: str = LOOPBACK) -> tuple[int, int]:
    """A contiguous range [lo, hi] of n free ports, below the ephemeral range."""
    eph_lo, _ = _ephemeral_range()
    end = max(12000 + n, eph_lo - 1)
    # Large ranges (a shared-port backend's 300, the soak's 200) come from the
    # top 6,000 ports, small ones from below: a long run scatters hundreds of
    # small ranges at random, which would leave no wide gap anywhere.
    split = max(11000, end - 6000)
    base, top = (split, end - n) if n >= 100 else (10000, split - n)

    def take(lo: int) -> Optional[tuple[int, int]]:
        ports = range(lo, lo + n)
        if any(p in _given for p in ports):
            return None
        if all(_port_is_free(p, host) for p in ports):
            _given.update(ports)
            return lo, lo + n - 1
        return None

    with _given_lock:
        for _ in range(200):  # random first: test runs side by side rarely meet
            got = take(_rng.randrange(base, top))
            if got:
                return got
        # A long suite has handed out much of the space (ports are never
        # given twice): walk it for a window nobody has, from a random start.
        lo = _rng.randrange(base, top)
        for _ in range(2 * (top - base)):
            if lo > top:
                lo = base
            given = [p for p in range(lo, lo + n) if p in _given]
            if given:
                lo = given[-1] + 1
                continue
            got = take(lo)
            if got:
                return got
            lo += 1
    raise HarnessError(f"no free range of {n} ports found")


def _listening_ports() -> set[int]:
    """Local ports in LISTEN state, from /proc/net/tcp and tcp6."""
    ports = set()
    for f in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(f).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) > 3 and parts[3] == "0A":
                ports.add(int(parts[1].rsplit(":", 1)[1], 16))
    return ports


def is_listening(port: int) -> bool:
    """True when some socket listens on port. Reads /proc, so it opens no
    connection (a probe connection would be a session in the proxy's logs)."""
    return port in _listening_ports()


# --------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------

def _kill_group(proc: subprocess.Popen, sig: int) -> None:
    """Signal the process group that proc leads (we started it with
    start_new_session=True, so the group holds only it and its children)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def _ppid_map() -> dict[int, int]:
    m = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...; comm may contain spaces and parens.
        rest = stat.rsplit(")", 1)[1].split()
        m[int(d)] = int(rest[1])
    return m


def descendants(pid: int) -> set[int]:
    """All live descendants of pid (children, their children, ...)."""
    m = _ppid_map()
    kids: dict[int, list[int]] = {}
    for c, p in m.items():
        kids.setdefault(p, []).append(c)
    out, todo = set(), [pid]
    while todo:
        for c in kids.get(todo.pop(), []):
            if c not in out:
                out.add(c)
                todo.append(c)
    return out


def kill_tree(proc: subprocess.Popen, timeout: float = T_STOP, sig: int = signal.SIGTERM) -> int:
    """Stop a process we started and every process it started.

    vsftpd's session processes call setsid(), so they leave our process
    group; they are found through their parent chain instead, before the
    listener dies and they are re-parented. Only these pids are signalled.
    Returns the exit status of proc (negative: killed by that signal)."""
    kids = descendants(proc.pid) if proc.poll() is None else set()
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(timeout)
    _kill_group(proc, signal.SIGKILL)
    for k in kids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(k, signal.SIGKILL)
    return proc.returncode


def run(cmd: list[str], timeout: float = T_CLIENT, input: Optional[bytes] = None,
        env: Optional[dict] = None, cwd: Optional[str] = None) -> subprocess.CompletedProcess:
    """Run a client program with a hard timeout. On timeout the whole process
    group it started is killed and TimeoutError is raised (the test fails,
    it never hangs)."""
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True, env=env, cwd=cwd)
    try:
        out, err = proc.communicate(input=input, timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc, signal.SIGKILL)
        out, err = proc.communicate()
        raise TimeoutError(f"{cmd[0]} did not finish within {timeout}s\n"
                           f"stdout: {out.decode(errors='replace')}\n"
                           f"stderr: {err.decode(errors='replace')}")
    return subprocess.CompletedProcess(cmd, proc.returncode,
                                       out.decode(errors="replace"),
                                       err.decode(errors="replace"))


# --------------------------------------------------------------------------
# Certificates (openssl command line)
# --------------------------------------------------------------------------

@dataclass
class Cert:
    """A PEM certificate file and its private key file."""
    name: str
    cert: Path
    key: Path

    @property
    def der(self) -> bytes:
        """DER of the first (leaf) certificate in the file, for comparing with
        ssl.SSLSocket.getpeercert(binary_form=True)."""
        return pem_to_der(self.cert.read_text())


def pem_to_der(pem: str) -> bytes:
    m = re.search(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", pem, re.S)
    if not m:
        raise HarnessError("no certificate in PEM text")
    return ssl.PEM_cert_to_DER_cert(m.group(0))


def openssl(*args: str, cwd: Optional[Path] = None) -> str:
    r = run(["openssl", *args], timeout=30, cwd=str(cwd) if cwd else None)
    if r.returncode != 0:
        raise HarnessError(f"openssl {' '.join(args)} failed:\n{r.stderr}")
    return r.stdout


def cert_subject_names(cert_path: Path) -> str:
    """The subject and SAN text of a certificate, for messages."""
    return openssl("x509", "-in", str(cert_path), "-noout", "-subject", "-ext", "subjectAltName")


_CA_CNF = """\
[ ca ]
default_ca = testca

[ testca ]
dir              = {dir}
database         = $dir/index.txt
new_certs_dir    = $dir/newcerts
serial           = $dir/serial
default_md       = sha256
policy           = policy_any
unique_subject   = no
copy_extensions  = none
email_in_dn      = no

[ policy_any ]
commonName = supplied
"""


class CertFactory:
    """Makes certificates under `directory` with a throw-away CA.

    Leaves are signed with `openssl ca`, because `openssl x509 -req` in
    OpenSSL 3.0 cannot set arbitrary validity dates (expired and
    not-yet-valid certificates need -startdate/-enddate)."""

    def __init__(self, directory: Path):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        cadir = self.dir / "ca"
        (cadir / "newcerts").mkdir(parents=True, exist_ok=True)
        (cadir / "index.txt").touch()
        if not (cadir / "serial").exists():
            (cadir / "serial").write_text("1000\n")
        (cadir / "ca.cnf").write_text(_CA_CNF.format(dir=cadir))
        self.ca = Cert("ca", cadir / "ca.crt", cadir / "ca.key")
        if not self.ca.cert.exists():
            openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256",
                    "-keyout", str(self.ca.key), "-out", str(self.ca.cert),
                    "-days", "3650", "-subj", "/CN=ftpsgate test CA",
                    "-addext", "basicConstraints=critical,CA:TRUE",
                    "-addext", "keyUsage=critical,keyCertSign,cRLSign")

    def _newkey(self, path: Path, key_type: str) -> None:
        if key_type == "rsa":
            openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
                    "-out", str(path))
        elif key_type == "ec":
            openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-out", str(path))
        else:
            raise HarnessError(f"unknown key type {key_type}")
        os.chmod(path, 0o600)

    def make(self, name: str, cn: str, dns: Iterable[str] = (), ips: Iterable[str] = (),
             key_type: str = "rsa", days: int = 825,
             startdate: Optional[str] = None, enddate: Optional[str] = None,
             chain: bool = False) -> Cert:
        """Issue a leaf certificate `name`.crt/.key signed by the CA.

        dns/ips become subjectAltName entries; startdate/enddate are openssl
        dates (YYYYMMDDHHMMSSZ) that override `days`. chain=True appends the
        CA certificate after the leaf (leaf first, then chain, as DESIGN.md
        wants certificate files)."""
        with self._lock:
            c = Cert(name, self.dir / f"{name}.crt", self.dir / f"{name}.key")
            if c.cert.exists() and c.key.exists():
                return c
            self._newkey(c.key, key_type)
            csr = self.dir / f"{name}.csr"
            openssl("req", "-new", "-key", str(c.key), "-out", str(csr), "-subj", f"/CN={cn}")
            sans = [f"DNS:{d}" for d in dns] + [f"IP:{i}" for i in ips]
            ext = self.dir / f"{name}.ext"
            ext.write_text("basicConstraints=critical,CA:FALSE\n"
                           "keyUsage=critical,digitalSignature,keyEncipherment\n"
                           "extendedKeyUsage=serverAuth\n"
                           + (f"subjectAltName={','.join(sans)}\n" if sans else ""))
            args = ["ca", "-batch", "-notext", "-config", str(self.dir / "ca" / "ca.cnf"),
                    "-cert", str(self.ca.cert), "-keyfile", str(self.ca.key),
                    "-in", str(csr), "-out", str(c.cert), "-extfile", str(ext)]
            if startdate:
                args += ["-startdate", startdate]
            if enddate:
                args += ["-enddate", enddate]
            if not startdate and not enddate:
                args += ["-days", str(days)]
            openssl(*args)
            if chain:
                c.cert.write_text(c.cert.read_text() + self.ca.cert.read_text())
            return c

    # Standard certificates of the test world ------------------------------

    def central(self) -> Cert:
        """The proxy's central certificate: proxy.test, localhost, 127.0.0.1."""
        return self.make("central", "proxy.test", dns=["proxy.test", "localhost"],
                         ips=["127.0.0.1", "::1"])

    def alpha(self) -> Cert:
        """Site alpha's own certificate: RSA, ftp.alpha.test and *.alpha.test."""
        return self.make("alpha", "ftp.alpha.test", dns=["ftp.alpha.test", "*.alpha.test"])

    def beta(self) -> Cert:
        """Site beta's own certificate: ECDSA P-256, ftp.beta.test."""
        return self.make("beta", "ftp.beta.test", dns=["ftp.beta.test"], key_type="ec")

    def backend_tls(self) -> Cert:
        """The certificate a TLS-serving vsftpd uses (127.0.0.1, localhost)."""
        return self.make("vsftpd", "localhost", dns=["localhost"], ips=["127.0.0.1"])

    # Broken certificates (later issues: -t and certificate checks) --------

    def expired(self, host: str = "ftp.alpha.test") -> Cert:
        return self.make(f"expired-{host}", host, dns=[host],
                         startdate="20200101000000Z", enddate="20210101000000Z")

    def not_yet_valid(self, host: str = "ftp.alpha.test") -> Cert:
        return self.make(f"future-{host}", host, dns=[host],
                         startdate="20400101000000Z", enddate="20410101000000Z")

    def wrong_name(self, host: str = "ftp.alpha.test") -> Cert:
        """A valid certificate that does NOT cover `host` (it names other.test)."""
        return self.make(f"wrongname-for-{host}", "other.test", dns=["other.test"])

    def mismatched_key(self, base: str = "alpha") -> Cert:
        """`base`'s certificate paired with a different, freshly made key."""
        src = getattr(self, base)()
        key = self.dir / f"mismatch-{base}.key"
        with self._lock:
            if not key.exists():
                self._newkey(key, "rsa")
        return Cert(f"mismatch-{base}", src.cert, key)


# --------------------------------------------------------------------------
# vsftpd
# --------------------------------------------------------------------------

def _ftp_uid_gid() -> tuple[int, int]:
    try:
        pw = pwd.getpwnam("ftp")
        return pw.pw_uid, pw.pw_gid
    except KeyError:
        return os.getuid(), os.getgid()


# Per-site content. Sizes differ on purpose: SIZE of a file proves the site.
SITE_CONTENT = {
    "alpha": {"files": {"alpha-only.txt": b"alpha only\n",              # 11 bytes
                        "hello.txt": b"hello from alpha\n",
                        "alpha-dir/inside-alpha.txt": b"in alpha dir\n"},
              "dirs": ["alpha-dir"]},
    "beta": {"files": {"beta-only.txt": b"this file is only on beta\n",  # 26 bytes
                       "hello.txt": b"hello from the beta site\n",
                       "beta-dir/inside-beta.txt": b"in beta dir\n"},
             "dirs": ["beta-dir"]},
}


class _Process:
    """What a server this harness starts shares: with-blocks start and stop
    it, and its log file reads as text (empty before it exists)."""

    log_path: Path

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


class Vsftpd(_Process):
    """One real vsftpd on 127.0.0.1 with its own config, port, passive range,
    root directory and log.

    Anonymous users log in with any password (USER anonymous or ftp); uploads
    go to /upload. Findings about running vsftpd 3.0.3 (Debian) here, as root
    in a container:
      * listen=YES + background=NO keeps it in the foreground as one listener
        process that forks a process per session. Session processes call
        setsid(), so stop() kills the listener's descendants by pid
        (kill_tree), found before the listener dies.
      * seccomp_sandbox=NO: checked here, with YES plaintext sessions work
        but every TLS session dies in the handshake (the filter kills the
        session process on a syscall Debian 12's OpenSSL makes; the client
        sees "500 OOPS" text where a TLS record should be).
      * isolate=NO, isolate_network=NO: vsftpd otherwise clones new PID and
        network namespaces per session (CLONE_NEWPID/CLONE_NEWNET), which
        needs privileges containers often lack. This machine happens to
        tolerate YES (vsftpd falls back when clone() fails), others may not.
      * secure_chroot_dir must exist (else "500 OOPS: vsftpd: not found:
        directory given in 'secure_chroot_dir'"), root-owned and not
        writable by others; the package's /var/run/vsftpd/empty lives on a
        tmpfs that a fresh container may lack, so each instance makes its own.
      * background=NO is needed to keep the listener as our child (with YES
        it forks and the parent exits); listen=YES with listen_ipv6=NO is
        the standalone IPv4 mode on listen_address.
      * The anonymous root must not be writable by the ftp user (vsftpd
        refuses a writable chroot root), and the files must be world-readable
        (anon_world_readable_only); the writable /upload dir belongs to ftp.
        As root vsftpd chroots into anon_root, then becomes ftp_username
        (Debian's `ftp` user), so a 0700 parent directory is fine.
      * When not root, run_as_launching_user=YES is set instead: no chroot,
        no user switch (not exercised here: scripts/test runs as root).
      * A writable anon_root is refused at login, checked here: "500 OOPS:
        vsftpd: refusing to run with writable root inside chroot()".
      * TLS mode: Debian's vsftpd has no ssl_tlsv1_2 option; ssl_tlsv1=YES
        enables TLS 1.x including 1.2/1.3 through OpenSSL's generic method.
        ssl_ciphers=HIGH is set explicitly: upstream's default is
        DES-CBC3-SHA, which OpenSSL 3 lacks (Debian's build negotiates TLS
        1.2 and 1.3 without it too, checked). require_ssl_reuse defaults to
        NO here because Python's ftplib does not resume the control session
        on data connections (vsftpd would answer 522).
    """

    def __init__(self, workdir: Path, name: str = "alpha", *, tls: bool = False,
                 implicit: bool = False, force_tls: bool = True,
                 cert: Optional[Cert] = None, require_ssl_reuse: bool = False,
                 pasv_ports: int = 10, files: Optional[dict] = None,
                 dirs: Optional[list] = None, extra: Optional[dict] = None):
        self.name = name
        self.dir = Path(workdir) / f"vsftpd-{name}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.root = self.dir / "root"
        self.conf_path = self.dir / "vsftpd.conf"
        self.log_path = self.dir / "vsftpd.log"
        self.out_path = self.dir / "stderr.log"
        self.host = LOOPBACK
        self.port = free_port()
        self.pasv_min, self.pasv_max = free_port_range(pasv_ports)
        self.tls = tls
        self.implicit = implicit
        self.force_tls = force_tls
        self.cert = cert
        self.require_ssl_reuse = require_ssl_reuse
        content = SITE_CONTENT.get(name, {"files": {f"{name}-only.txt": f"{name}\n".encode()},
                                          "dirs": []})
        self.content = dict(content["files"] if files is None else files)
        self.dirs = list(content["dirs"] if dirs is None else dirs)
        self.extra = dict(extra or {})
        self.proc: Optional[subprocess.Popen] = None
        if tls and cert is None:
            raise HarnessError("Vsftpd(tls=True) needs cert=")

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def _make_tree(self) -> None:
        uid, gid = _ftp_uid_gid()
        self.root.mkdir(exist_ok=True)
        os.chmod(self.root, 0o755)
        for d in self.dirs:
            (self.root / d).mkdir(parents=True, exist_ok=True)
            os.chmod(self.root / d, 0o755)
        for rel, data in self.content.items():
            p = self.root / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)
            os.chmod(p, 0o644)
        up = self.root / "upload"
        up.mkdir(exist_ok=True)
        os.chmod(up, 0o755)
        if os.geteuid() == 0:
            os.chown(up, uid, gid)
        empty = self.dir / "empty"
        empty.mkdir(exist_ok=True)
        os.chmod(empty, 0o755)

    def config(self) -> dict:
        c = {
            "listen": "YES",
            "listen_ipv6": "NO",
            "listen_address": self.host,
            "listen_port": str(self.port),
            "background": "NO",
            "ftpd_banner": f"vsftpd backend {self.name} ready",
            "anonymous_enable": "YES",
            "no_anon_password": "NO",
            "local_enable": "NO",
            "anon_root": str(self.root),
            "write_enable": "YES",
            "anon_upload_enable": "YES",
            "anon_mkdir_write_enable": "YES",
            "anon_other_write_enable": "YES",
            "anon_umask": "022",
            "seccomp_sandbox": "NO",
            "isolate": "NO",
            "isolate_network": "NO",
            "secure_chroot_dir": str(self.dir / "empty"),
            "pasv_enable": "YES",
            "pasv_min_port": str(self.pasv_min),
            "pasv_max_port": str(self.pasv_max),
            "port_enable": "YES",
            "connect_from_port_20": "NO",
            "xferlog_enable": "YES",
            "xferlog_std_format": "NO",
            "vsftpd_log_file": str(self.log_path),
            "log_ftp_protocol": "YES",
            "dual_log_enable": "NO",
            "syslog_enable": "NO",
            "delay_failed_login": "0",
            "max_clients": "0",
            "max_per_ip": "0",
            "idle_session_timeout": "120",
            "data_connection_timeout": "60",
            "use_localtime": "NO",
        }
        if os.geteuid() != 0:
            c["run_as_launching_user"] = "YES"
        else:
            c["ftp_username"] = "ftp"
            c["nopriv_user"] = "nobody"
        if self.tls:
            c.update({
                "ssl_enable": "YES",
                "implicit_ssl": "YES" if self.implicit else "NO",
                "allow_anon_ssl": "YES",
                "force_anon_logins_ssl": "YES" if self.force_tls else "NO",
                "force_anon_data_ssl": "YES" if self.force_tls else "NO",
                "rsa_cert_file": str(self.cert.cert),
                "rsa_private_key_file": str(self.cert.key),
                "ssl_tlsv1": "YES",
                "ssl_sslv2": "NO",
                "ssl_sslv3": "NO",
                "ssl_ciphers": "HIGH",
                "require_ssl_reuse": "YES" if self.require_ssl_reuse else "NO",
            })
        c.update(self.extra)
        return c

    def start(self, timeout: float = T_START) -> "Vsftpd":
        if self.proc is not None:
            raise HarnessError(f"vsftpd {self.name} already started")
        self._make_tree()
        self.conf_path.write_text("".join(f"{k}={v}\n" for k, v in self.config().items()))
        if self.log_path.exists():
            self.log_path.unlink()
        out = open(self.out_path, "ab")
        try:
            self.proc = subprocess.Popen([VSFTPD_BIN, str(self.conf_path)],
                                         stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                         start_new_session=True)
        finally:
            out.close()
        try:
            wait_until(lambda: self.proc.poll() is not None or is_listening(self.port),
                       timeout, what=f"vsftpd {self.name} to listen on {self.port}")
            if self.proc.poll() is not None:
                raise HarnessError(f"vsftpd {self.name} exited with {self.proc.returncode}: "
                                   f"{self.out_path.read_text(errors='replace')}")
            greeting = self.greet(timeout)
            if not greeting.startswith("220"):
                raise HarnessError(f"vsftpd {self.name} greeted with {greeting!r}")
        except BaseException:
            self.stop()
            raise
        return self

    def greet(self, timeout: float = T_IO) -> str:
        """Connect, read the greeting line, disconnect (a 'CONNECT' in the log)."""
        with socket.create_connection((self.host, self.port), timeout=timeout) as s:
            if self.tls and self.implicit:
                ctx = client_context(verify=False)
                s = ctx.wrap_socket(s)
            f = s.makefile("rb")
            line = f.readline().decode(errors="replace")
            with contextlib.suppress(OSError):
                s.sendall(b"QUIT\r\n")
                f.readline()
            return line

    def stop(self, timeout: float = T_STOP) -> None:
        if self.proc is None:
            return
        # Session processes would outlive the listener: kill the whole tree.
        kill_tree(self.proc, timeout)
        self.proc = None

    # Log inspection -------------------------------------------------------

    def connect_count(self) -> int:
        """How many control connections vsftpd has logged so far."""
        return self.log_text().count("CONNECT: Client")

    def commands_since(self, mark: int = 0) -> list[str]:
        """FTP commands vsftpd received, in order, from the `mark`-th
        character of its log on (see log_mark())."""
        return re.findall(r'FTP command: Client "[^"]*", "(.*)"', self.log_text()[mark:])

    def log_mark(self) -> int:
        return len(self.log_text())

    def connects_since(self, mark: int) -> int:
        return self.log_text()[mark:].count("CONNECT: Client")

    def session_procs(self) -> set[int]:
        """vsftpd's session processes (descendants of the listener)."""
        return descendants(self.proc.pid) if self.proc else set()


@dataclass
class SiteFile:
    """A file of a Site: its path below the root (no leading /), size, sha256."""
    name: str
    size: int
    sha: str


class Site(Vsftpd):
    """A vsftpd whose files are known by size and sha256: files[name] is a
    SiteFile. Random files of `sizes` are made at start(); the files= content
    is known too; link() adds a file made once per run (a hard link: no copy
    of 64 MiB). `hostnames` are the site's names in section()."""

    def __init__(self, workdir: Path, name: str, hostnames: Iterable[str], *,
                 sizes: Optional[dict] = None, pasv_ports: int = 20,
                 pasv_range: Optional[tuple[int, int]] = None, files: Optional[dict] = None,
                 dirs: Optional[list] = None, **kw):
        super().__init__(workdir, name, pasv_ports=pasv_ports, files=files or {},
                         dirs=dirs or [], **kw)
        if pasv_range is not None:           # a range reserved earlier
            self.pasv_min, self.pasv_max = pasv_range
        self.hostnames = list(hostnames)
        self.sizes = dict(sizes or {})
        self.files: dict[str, SiteFile] = {
            rel: SiteFile(rel, len(data), hashlib.sha256(data).hexdigest())
            for rel, data in self.content.items()}

    def start(self, timeout: float = T_START) -> "Site":
        super().start(timeout)
        for name, size in self.sizes.items():
            self.files[name] = SiteFile(name, size, random_file(self.root / name, size))
        return self

    def link(self, name: str, src: Path, sha: str) -> SiteFile:
        """Puts src (sha256 `sha`) at /name: a hard link, else a copy."""
        dest = self.root / name
        if dest.exists():
            dest.unlink()
        try:
            os.link(src, dest)
        except OSError:
            shutil.copyfile(src, dest)
        os.chmod(dest, 0o644)
        self.files[name] = SiteFile(name, dest.stat().st_size, sha)
        return self.files[name]

    def section(self, **extra) -> dict:
        """Its [backend:NAME] section (cert=, max_sessions=, ...)."""
        return backend_section(self, self.hostnames, **extra)


# --------------------------------------------------------------------------
# ftpsgate
# --------------------------------------------------------------------------

def _fmt_value(v) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (list, tuple)):
        return ", ".join(str(x) for x in v)
    return str(v)


def backend_section(vs: Optional[Vsftpd] = None, hostnames: Iterable[str] = (),
                    cert: Optional[Cert] = None, address: Optional[str] = None,
                    **extra) -> dict:
    """An ordered dict for one [backend:NAME] section."""
    d = {"hostnames": list(hostnames),
         "address": address if address is not None else vs.address}
    if cert is not None:
        d["certificate"] = str(cert.cert)
        d["private_key"] = str(cert.key)
    d.update(extra)
    return d


def split_addr(addr: str) -> tuple[str, int]:
    """'127.0.0.1:21' or '[::1]:21' -> (host, port)."""
    if addr.startswith("["):
        host, _, port = addr[1:].partition("]:")
    else:
        host, _, port = addr.rpartition(":")
    return host, int(port)


class Proxy(_Process):
    """build/ftpsgate run in the foreground with a generated INI.

    `proxy` overrides [proxy] keys (value None removes a key, so its default
    applies); `ca` (the test CA) becomes ca_file; `backends` maps NAME -> dict of [backend:NAME] keys (see
    backend_section()); `extra_ini` is appended verbatim (for malformed
    configs). The listen ports are allocated here unless given."""

    def __init__(self, workdir: Path, central: Cert, backends: dict,
                 proxy: Optional[dict] = None, implicit: bool = True,
                 extra_ini: str = "", name: str = "ftpsgate", binary: Path = PROXY_BIN,
                 ca: Optional[Cert] = None):
        self.dir = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=workdir))
        self.conf_path = self.dir / "ftpsgate.ini"
        self.log_path = self.dir / "ftpsgate.log"
        self.binary = Path(binary)
        pasv_lo, pasv_hi = free_port_range(10)
        self.opts: dict = {
            "listen": f"{LOOPBACK}:{free_port()}",
            "listen_implicit": f"{LOOPBACK}:{free_port()}" if implicit else None,
            "certificate": str(central.cert),
            "private_key": str(central.key),
            # The test CA is private: chains are checked against it.
            "ca_file": str(ca.cert) if ca else None,
            "passive_ports": f"{pasv_lo}-{pasv_hi}",
            "passive_address": LOOPBACK,
            "route_by_sni": "yes",
            "require_tls": "yes",
            "tls_min_version": "1.2",
            "banner": "ftpsgate test proxy",
            "login_timeout": "15",
            "idle_timeout": "60",
            "data_timeout": "10",
            "connect_timeout": "3",
            "shutdown_grace": "2",
            "log_level": "debug",
        }
        for k, v in (proxy or {}).items():
            self.opts[k] = v
        self.opts = {k: v for k, v in self.opts.items() if v is not None}
        self.backends = backends
        self.extra_ini = extra_ini
        self.proc: Optional[subprocess.Popen] = None
        self.stopped_rc: Optional[int] = None
        self.killed_after_timeout = False
        # Set before start(): a command prefix (e.g. valgrind) and a
        # RLIMIT_NOFILE for the proxy process (e.g. 2,000 sessions).
        self.wrapper: list[str] = []
        self.nofile: Optional[int] = None

    # Addresses ------------------------------------------------------------

    def _addrs(self, key: str) -> list[tuple[str, int]]:
        v = self.opts.get(key)
        if not v:
            return []
        vals = v if isinstance(v, (list, tuple)) else [x.strip() for x in str(v).split(",")]
        return [split_addr(a) for a in vals if a]

    @property
    def listen(self) -> list[tuple[str, int]]:
        return self._addrs("listen")

    @property
    def listen_implicit(self) -> list[tuple[str, int]]:
        return self._addrs("listen_implicit")

    @property
    def port(self) -> int:
        """The first explicit listener's port."""
        return self.listen[0][1]

    @property
    def host(self) -> str:
        return self.listen[0][0]

    @property
    def implicit_port(self) -> int:
        return self.listen_implicit[0][1]

    # Config ---------------------------------------------------------------

    def ini_text(self) -> str:
        out = ["; generated by tests/integration/harness.py", "[proxy]"]
        out += [f"{k} = {_fmt_value(v)}" for k, v in self.opts.items()]
        for name, sect in self.backends.items():
            out += ["", f"[backend:{name}]"]
            out += [f"{k} = {_fmt_value(v)}" for k, v in sect.items() if v is not None]
        text = "\n".join(out) + "\n"
        if self.extra_ini:
            text += "\n" + self.extra_ini
        return text

    def write_config(self) -> Path:
        self.conf_path.write_text(self.ini_text())
        return self.conf_path

    def check(self, timeout: float = 20) -> subprocess.CompletedProcess:
        """`ftpsgate -t -c FILE` on this config."""
        self._need_binary()
        self.write_config()
        return run([str(self.binary), "-t", "-c", str(self.conf_path)], timeout=timeout)

    # Lifecycle ------------------------------------------------------------

    def _need_binary(self) -> None:
        if not (self.binary.is_file() and os.access(self.binary, os.X_OK)):
            raise HarnessError(f"proxy binary {self.binary} not found: build it first "
                               f"(meson setup build && meson compile -C build) or set FTPSGATE_BIN")

    def start(self, timeout: float = T_START) -> "Proxy":
        self._need_binary()
        self.write_config()
        log = open(self.log_path, "ab")
        try:
            cmd = [*self.wrapper, str(self.binary), "-c", str(self.conf_path)]
            self.proc = subprocess.Popen(cmd,
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         start_new_session=True,
                                         preexec_fn=self._set_nofile if self.nofile else None)
        finally:
            log.close()
        ports = [p for _, p in self.listen + self.listen_implicit]
        try:
            wait_until(lambda: self.proc.poll() is not None or
                       all(p in _listening_ports() for p in ports),
                       timeout, what=f"ftpsgate to listen on {ports}")
        except TimeoutError:
            self.stop()
            raise HarnessError(f"ftpsgate did not listen on {ports} within {timeout}s; log:\n"
                               + self.log_text())
        if self.proc.poll() is not None:
            rc = self.proc.returncode
            self.proc = None
            raise HarnessError(f"ftpsgate exited with {rc} at start; config:\n{self.ini_text()}\n"
                               f"log:\n{self.log_text()}")
        return self

    def _set_nofile(self) -> None:
        import resource
        resource.setrlimit(resource.RLIMIT_NOFILE, (self.nofile, self.nofile))

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            self.proc.send_signal(sig)

    def stop(self, timeout: float = T_STOP) -> Optional[int]:
        """SIGTERM, then SIGKILL after `timeout`. Returns the exit status
        (negative: killed by that signal), or None if it was not running."""
        if self.proc is None:
            return self.stopped_rc
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                _kill_group(self.proc, signal.SIGKILL)
                self.proc.wait(timeout)
                self.killed_after_timeout = True
                self.stopped_rc = -signal.SIGKILL
                self.proc = None
                return self.stopped_rc
        self.stopped_rc = self.proc.returncode
        _kill_group(self.proc, signal.SIGKILL)
        self.proc = None
        return self.stopped_rc

    # Inspection -----------------------------------------------------------

    def log_mark(self) -> int:
        return len(self.log_text())

    def log_since(self, mark: int) -> str:
        return self.log_text()[mark:]

    def wait_log(self, pattern: str, mark: int = 0, timeout: float = 5.0) -> re.Match:
        rx = re.compile(pattern)
        return wait_until(lambda: rx.search(self.log_text()[mark:]), timeout,
                          what=f"ftpsgate log to match {pattern!r}")

    def fd_count(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def fd_list(self) -> list[str]:
        """The proxy's open descriptors, "N -> target", for messages."""
        out = []
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{self.pid}/fd"):
                with contextlib.suppress(OSError):
                    out.append(f"{fd} -> {os.readlink(f'/proc/{self.pid}/fd/{fd}')}")
        return sorted(out, key=lambda x: int(x.split()[0]))

    def wait_fds_back(self, base: int, timeout: float = 10.0) -> None:
        """Waits until the proxy holds at most `base` descriptors (its count
        at rest, taken earlier); AssertionError naming them if it does not."""
        try:
            wait_until(lambda: self.fd_count() <= base, timeout, interval=0.1,
                       what=f"the proxy's descriptors back to {base}")
        except TimeoutError:
            raise AssertionError(f"proxy holds {self.fd_count()} descriptors after "
                                 f"{timeout:.0f}s, {base} before:\n" + "\n".join(self.fd_list()))

    def passive_ports(self) -> range:
        """The configured passive_ports range."""
        lo, hi = (int(x) for x in str(self.opts["passive_ports"]).split("-"))
        return range(lo, hi + 1)

    def pool_ports_busy(self) -> list[int]:
        """Ports of the passive range that something listens on now."""
        listening = _listening_ports()
        return [port for port in self.passive_ports() if port in listening]

    def wait_pool_free(self, timeout: float = 10.0) -> None:
        try:
            wait_until(lambda: not self.pool_ports_busy(), timeout, interval=0.1,
                       what="every passive port closed")
        except TimeoutError:
            raise AssertionError(f"passive ports still listening after {timeout:.0f}s: "
                                 f"{self.pool_ports_busy()}")

    def log_lines(self, mark: int, *words: str) -> list[str]:
        """Lines of the log since `mark` that contain every word."""
        return [l for l in self.log_since(mark).splitlines() if all(w in l for w in words)]

    def events(self, mark: int = 0) -> list[dict]:
        """The log lines since `mark` as dicts (parse_log_line: JSON or
        key=value text); lines that are not log lines (a sanitizer's report)
        are left out, a malformed log line raises ValueError."""
        lines = self.log_since(mark).split("\n")[:-1]   # not a line still being written
        return [parse_log_line(l) for l in lines if l.startswith("{") or _LOG_TIME.match(l)]

    def sanitizer_reports(self) -> list[str]:
        """Lines from ASan/UBSan/LSan in the log (sanitizer builds)."""
        return [l for l in self.log_text().splitlines()
                if "Sanitizer" in l or "runtime error:" in l]


# --------------------------------------------------------------------------
# The proxy's log lines
# --------------------------------------------------------------------------

# Text format: TIME LEVEL key=value ..., a value bare (printable ASCII but
# space, '"', '=' and backslash) or quoted, with \" \\ and \xHH escapes.
_LOG_TIME = re.compile(r"\d{4}-\d\d-\d\dT[\d:.]+Z ")
_LOG_FIELD = r' ([a-z0-9_]+)=("(?:[ !#-\[\]-~]|\\["\\]|\\x[0-9a-f]{2})*"|[!#-<>-\[\]-~]+)'
_LOG_TEXT = re.compile(r"(\S+) (error|warn|info|debug)((?:" + _LOG_FIELD + r")*)")
_LOG_ESC = re.compile(rb'\\x([0-9a-f]{2})|\\(["\\])')


def _log_bytes_text(b: bytes) -> str:
    """A logged value's bytes as text: UTF-8, undecodable bytes kept as
    surrogates (they come from the network)."""
    return b.decode("utf-8", "surrogateescape")


def parse_log_line(line: str) -> dict:
    """One line of the proxy's log as a dict, strictly: ValueError unless it
    is a whole JSON object (log_format = json) or a whole key=value line
    (text). Values are unescaped to the bytes the proxy got, read as UTF-8:
    in JSON each \\u00XX stands for one byte, in text each \\xXX. In text,
    "time" and "level" are the first two words; in JSON, sid is a number."""
    if line.startswith("{"):
        d = json.loads(line)
        if not isinstance(d, dict):
            raise ValueError(f"not a JSON object: {line!r}")
        return {k: _log_bytes_text(v.encode("latin-1")) if isinstance(v, str) else v
                for k, v in d.items()}
    m = _LOG_TEXT.fullmatch(line)
    if not m:
        raise ValueError(f"not a key=value log line: {line!r}")
    d = {"time": m.group(1), "level": m.group(2)}
    for k, v in re.findall(_LOG_FIELD, m.group(3)):
        if k in d:
            raise ValueError(f"key {k} twice: {line!r}")
        if v.startswith('"'):
            raw = _LOG_ESC.sub(lambda e: bytes([int(e.group(1), 16)]) if e.group(1)
                               else e.group(2), v[1:-1].encode("ascii"))
            v = _log_bytes_text(raw)
        d[k] = v
    return d


# --------------------------------------------------------------------------
# Clients: ftplib
# --------------------------------------------------------------------------

def client_context(ca: Optional[Cert] = None, verify: bool = True,
                   check_hostname: bool = False, min_version=None, max_version=None,
                   ciphers: Optional[str] = None) -> ssl.SSLContext:
    """An SSL client context: verify against the test CA (or not)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if verify:
        if ca is None:
            raise HarnessError("client_context(verify=True) needs ca=")
        ctx.load_verify_locations(cafile=str(ca.cert))
        ctx.check_hostname = check_hostname
        ctx.verify_mode = ssl.CERT_REQUIRED
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if ciphers:
        ctx.set_ciphers(ciphers)
    if min_version is not None:
        ctx.minimum_version = min_version
    if max_version is not None:
        ctx.maximum_version = max_version
    return ctx


@dataclass
class Reply:
    """One FTP reply: numeric code and the whole text (all lines)."""
    code: int
    text: str

    @property
    def lines(self) -> list[str]:
        return self.text.split("\n")

    def __str__(self) -> str:
        return self.text


def parse_reply(resp: str) -> Reply:
    try:
        return Reply(int(resp[:3]), resp)
    except ValueError:
        raise HarnessError(f"not an FTP reply: {resp!r}")


class FtpsClient(ftplib.FTP_TLS):
    """ftplib.FTP_TLS that can connect explicit or implicit, send an SNI of
    our choosing while connecting to an IP, send raw commands and read raw
    replies without ftplib raising on 4xx/5xx, and report the peer
    certificates of the control and data connections.

    ftplib wraps sockets with server_hostname=self.host, so after connecting
    to 127.0.0.1 we set self.host to the SNI name (None: no SNI at all).
    With verify=True the chain is checked against the test CA, and the host
    name only when check_hostname=True.
    """

    def __init__(self, *, ca: Optional[Cert] = None, verify: bool = True,
                 check_hostname: bool = False, sni: Optional[str] = None,
                 implicit: bool = False, timeout: float = T_IO,
                 context: Optional[ssl.SSLContext] = None, reuse_session: bool = False,
                 epsv: bool = False, eprt: bool = False):
        if context is None:
            context = client_context(ca, verify=verify and ca is not None,
                                     check_hostname=check_hostname and sni is not None)
        super().__init__(context=context, timeout=timeout)
        self.sni = sni
        self.implicit = implicit
        self.reuse_session = reuse_session
        self.epsv = epsv        # EPSV/EPRT over IPv4 too (ftplib: only over IPv6)
        self.eprt = eprt
        self.greeting: Optional[Reply] = None
        self.data_certs: list[bytes] = []
        self.data_session_reused: list[bool] = []

    def connect(self, host: str = LOOPBACK, port: int = 0, timeout: float = -999,
                source_address=None) -> Reply:
        if timeout != -999:
            self.timeout = timeout
        self.host = host
        self.port = port
        self.source_address = source_address
        sys_sock = socket.create_connection((host, port), self.timeout,
                                            source_address=source_address)
        self.af = sys_sock.family
        if self.implicit:
            sys_sock = self.context.wrap_socket(sys_sock, server_hostname=self.sni)
        self.sock = sys_sock
        self.file = self.sock.makefile("r", encoding=self.encoding)
        self.host = self.sni   # ftplib uses it as server_hostname from now on
        self.greeting = self.reply()
        self.welcome = self.greeting.text
        return self.greeting

    # Raw command/reply ------------------------------------------------------

    def reply(self) -> Reply:
        """Read one (possibly multi-line) reply; EOFError when closed."""
        return parse_reply(self.getmultiline())

    def cmd(self, line: str) -> Reply:
        """Send one command line and return its reply; never raises on codes."""
        self.putcmd(line)
        return self.reply()

    def send_raw(self, data: bytes) -> None:
        """Bytes straight onto the control connection (TLS if active)."""
        self.sock.sendall(data)

    def start_tls(self, mechanism: str = "TLS") -> Reply:
        """AUTH <mechanism>; on 234, the TLS handshake (with self.sni)."""
        r = self.cmd(f"AUTH {mechanism}")
        if r.code == 234:
            self.sock = self.context.wrap_socket(self.sock, server_hostname=self.sni)
            self.file = self.sock.makefile(mode="r", encoding=self.encoding)
        return r

    def host_cmd(self, name: str) -> Reply:
        return self.cmd(f"HOST {name}")

    def user_pass(self, user: str, password: str = PW) -> Reply:
        """USER then (on 331) PASS; returns the last reply. Never raises."""
        r = self.cmd(f"USER {user}")
        if r.code == 331:
            r = self.cmd(f"PASS {password}")
        return r

    def protect(self) -> None:
        """PBSZ 0 and PROT P: data connections in TLS from now on."""
        assert self.cmd("PBSZ 0").code == 200
        r = self.cmd("PROT P")
        assert r.code == 200, r
        self._prot_p = True

    def tls_login(self, user: str, password: str = PW,
                  prot_p: bool = False) -> Reply:
        """AUTH TLS (unless already TLS), USER/PASS, optionally PBSZ 0 + PROT P."""
        if not isinstance(self.sock, ssl.SSLSocket):
            r = self.start_tls()
            if r.code != 234:
                raise HarnessError(f"AUTH TLS refused: {r}")
        r = self.user_pass(user, password)
        if r.code == 230 and prot_p:
            self.prot_p()
        return r

    def expect_closed(self, timeout: float = T_IO) -> bytes:
        """Read until the server closes the connection; returns what came.
        Raises TimeoutError if it stays open."""
        self.sock.settimeout(timeout)
        got = b""
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                try:
                    chunk = self.sock.recv(4096)
                except socket.timeout:
                    raise TimeoutError("server kept the connection open")
                except (ConnectionResetError, ssl.SSLError, OSError):
                    return got
                if not chunk:
                    return got
                got += chunk
        finally:
            with contextlib.suppress(OSError):
                self.sock.settimeout(self.timeout)
        raise TimeoutError("server kept the connection open")

    # Certificates ---------------------------------------------------------

    def peer_cert_der(self) -> Optional[bytes]:
        if isinstance(self.sock, ssl.SSLSocket):
            return self.sock.getpeercert(binary_form=True)
        return None

    def tls_version(self) -> Optional[str]:
        if isinstance(self.sock, ssl.SSLSocket):
            return self.sock.version()
        return None

    def makepasv(self):
        if self.epsv and self.af == socket.AF_INET:
            return ftplib.parse229(self.sendcmd("EPSV"), self.sock.getpeername())
        return super().makepasv()

    def makeport(self):
        if not (self.eprt and self.af == socket.AF_INET):
            return super().makeport()
        sock = socket.create_server(("", 0), family=self.af, backlog=1)
        port = sock.getsockname()[1]
        host = self.sock.getsockname()[0]
        self.sendeprt(host, port)
        sock.settimeout(self.timeout)
        return sock

    def ntransfercmd(self, cmd, rest=None):
        # Same as FTP_TLS.ntransfercmd, plus: optionally resume the control
        # session on the data connection, and record the data peer cert.
        conn, size = ftplib.FTP.ntransfercmd(self, cmd, rest)
        if self._prot_p:
            session = self.sock.session if self.reuse_session else None
            conn = self.context.wrap_socket(conn, server_hostname=self.host, session=session)
            self.data_certs.append(conn.getpeercert(binary_form=True))
            self.data_session_reused.append(conn.session_reused)
        return conn, size

    def drop(self) -> None:
        """Vanish: close the TCP connection with no QUIT and no TLS
        close_notify. (Closing only self.sock would not close the
        descriptor while self.file, a makefile() of it, is open.)"""
        for f in (self.file, self.sock):
            with contextlib.suppress(Exception):
                if f is not None:
                    f.close()
        self.file = self.sock = None

    def close_quietly(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


def random_file(path: Path, size: int) -> str:
    """Writes size random bytes to path (readable by every backend); returns
    their sha256."""
    hs = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            chunk = os.urandom(min(left, 4 << 20))
            hs.update(chunk)
            f.write(chunk)
            left -= len(chunk)
    os.chmod(path, 0o644)
    return hs.hexdigest()


def sha_file(path: Path) -> str:
    hs = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(4 << 20):
            hs.update(chunk)
    return hs.hexdigest()


# --------------------------------------------------------------------------
# Sessions through the proxy
# --------------------------------------------------------------------------

def connect(p, certs: CertFactory, *, sni: Optional[str] = None,
            implicit: bool = False, source: Optional[str] = None, host: Optional[str] = None,
            port: Optional[int] = None, timeout: float = T_IO,
            context: Optional[ssl.SSLContext] = None, tls_version=None,
            check_hostname: Optional[bool] = None, verify: bool = True, reuse: bool = True,
            epsv: bool = False, eprt: bool = False) -> FtpsClient:
    """A connected FtpsClient (greeting read; explicit: no TLS yet) to p's
    explicit or implicit listener (p: a Proxy, or anything with host, port
    and implicit_port), or to host:port. It checks the chain against the
    test CA (verify) and, when it sends SNI, the host name too
    (check_hostname); tls_version pins the version; reuse resumes the
    control session on data connections (the proxy requires it by default);
    source is the local address to connect from."""
    if check_hostname is None:
        check_hostname = sni is not None
    if context is None and tls_version is not None:
        context = client_context(certs.ca if verify else None, verify=verify,
                                 check_hostname=check_hostname and sni is not None,
                                 min_version=tls_version, max_version=tls_version)
    c = FtpsClient(ca=certs.ca if verify else None, verify=verify,
                   check_hostname=check_hostname, sni=sni, implicit=implicit, timeout=timeout,
                   context=context, reuse_session=reuse, epsv=epsv, eprt=eprt)
    if port is None:
        port = p.implicit_port if implicit else p.port
    c.connect(host or p.host, port, source_address=(source, 0) if source else None)
    return c


def login(p, certs: CertFactory, user: str, password: str = PW, *,
          prot_p: bool = True, early_host: Optional[str] = None, **kw) -> FtpsClient:
    """A logged-in session through the proxy: connect(**kw), HOST early_host
    before AUTH TLS (if given), AUTH TLS, USER/PASS, and PBSZ 0 + PROT P
    unless prot_p=False. Closed again if any step fails."""
    c = connect(p, certs, **kw)
    try:
        assert c.greeting.code == 220, c.greeting
        if early_host:
            r = c.host_cmd(early_host)
            assert r.code == 220, r
        r = c.tls_login(user, password)
        assert r.code == 230, f"login as {user}: {r}"
        if prot_p:
            c.protect()
    except BaseException:
        c.close_quietly()
        raise
    return c


def retr(c: ftplib.FTP, path: str, rest: Optional[int] = None,
         blocksize: int = BLOCK) -> tuple[str, int, str]:
    """RETR through ftplib, hashing on the fly: (sha256, bytes, final reply)."""
    hs = hashlib.sha256()
    n = 0

    def cb(b):
        nonlocal n
        hs.update(b)
        n += len(b)

    resp = c.retrbinary(f"RETR {path}", cb, blocksize=blocksize, rest=rest)
    return hs.hexdigest(), n, resp


def retr_bytes(c: ftplib.FTP, path: str) -> bytes:
    """The content of a small file."""
    buf = bytearray()
    c.retrbinary(f"RETR {path}", buf.extend)
    return bytes(buf)


def check_served(p: "Proxy", certs: "CertFactory", user: str, cert_der: bytes, path: str,
                 content: bytes, **login_kw) -> None:
    """Log in and download path: the control connection and the data
    connection both show cert_der, and the file arrives whole."""
    c = login(p, certs, user, **login_kw)
    try:
        assert c.peer_cert_der() == cert_der, "control connection: not the expected certificate"
        assert retr_bytes(c, path) == content
        assert c.data_certs == [cert_der], "the data connection got another certificate"
    finally:
        c.close_quietly()


def stor(c: ftplib.FTP, path: str, data, cmd: str = "STOR") -> str:
    """STOR (or APPE, STOU) of bytes or of an open file; the final reply."""
    f = data if hasattr(data, "read") else io.BytesIO(data)
    return c.storbinary(f"{cmd} {path}", f, blocksize=BLOCK)


def pasv_port(c: FtpsClient) -> int:
    r = c.cmd("PASV")
    assert r.code == 227, r
    return ftplib.parse227(r.text)[1]


def epsv_port(c: FtpsClient) -> int:
    r = c.cmd("EPSV")
    assert r.code == 229, r
    return ftplib.parse229(r.text, ("x", 0))[1]


def data_connect(c: FtpsClient, port: int, source=None) -> socket.socket:
    """A raw data connection to `port` of c's server (no TLS yet)."""
    return socket.create_connection((c.sock.getpeername()[0], port), T_IO,
                                    source_address=source)


def wrap_data(c: FtpsClient, conn: socket.socket, session="control") -> ssl.SSLSocket:
    """TLS client on a data connection; session='control' resumes the control
    session, None offers none, or an ssl.SSLSession of our choosing."""
    s = c.sock.session if session == "control" else session
    return c.context.wrap_socket(conn, server_hostname=c.host, session=s)


def read_all(conn, limit: Optional[int] = None, hs=None) -> int:
    """Read to EOF (or `limit` bytes), hashing into hs if given; the count."""
    n = 0
    while limit is None or n < limit:
        b = conn.recv(BLOCK if limit is None else min(BLOCK, limit - n))
        if not b:
            break
        if hs is not None:
            hs.update(b)
        n += len(b)
    return n


def finish_tls(conn) -> None:
    """close_notify both ways, then close (what ftplib does)."""
    with contextlib.suppress(OSError, ValueError):
        if isinstance(conn, ssl.SSLSocket):
            conn = conn.unwrap()
    with contextlib.suppress(OSError):
        conn.close()


def closed_within(sock: socket.socket, timeout: float) -> tuple[bool, bytes]:
    """(True, bytes read) if the peer closes (EOF or reset) within timeout,
    else (False, bytes read)."""
    deadline = time.monotonic() + timeout
    got = b""
    try:
        while time.monotonic() < deadline:
            sock.settimeout(max(0.05, deadline - time.monotonic()))
            b = sock.recv(65536)
            if not b:
                return True, got
            got += b
    except socket.timeout:
        return False, got
    except (ConnectionError, OSError, ssl.SSLError):
        return True, got
    return False, got


@contextlib.contextmanager
def ftps(port: int, host: str = LOOPBACK, **kw):
    """with ftps(port, ca=..., sni=...) as c: ... -- connected FtpsClient,
    closed at the end whatever happens."""
    source = kw.pop("source_address", None)
    c = FtpsClient(**kw)
    try:
        c.connect(host, port, source_address=source)
        yield c
    finally:
        c.close_quietly()


class PlainControl:
    """A plaintext control connection on a raw socket (for checks before
    AUTH TLS and for byte-exact input)."""

    def __init__(self, port: int, host: str = LOOPBACK, timeout: float = T_IO,
                 source_address=None):
        self.sock = socket.create_connection((host, port), timeout,
                                             source_address=source_address)
        self.buf = b""
        self.greeting = self.reply()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _line(self) -> bytes:
        while b"\n" not in self.buf:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise EOFError("connection closed")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line.rstrip(b"\r")

    def reply(self) -> Reply:
        first = self._line().decode(errors="replace")
        lines = [first]
        if len(first) >= 4 and first[3] == "-":
            while True:
                l = self._line().decode(errors="replace")
                lines.append(l)
                if l[:3] == first[:3] and l[3:4] == " ":
                    break
        return parse_reply("\n".join(lines))

    def cmd(self, line: str) -> Reply:
        self.send(line.encode() + b"\r\n")
        return self.reply()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def feat_lines(reply: Reply) -> list[str]:
    """The feature lines of a 211 FEAT reply, stripped, upper-cased verbs."""
    out = []
    for l in reply.lines[1:-1]:
        l = l.strip()
        if l:
            out.append(l)
    return out


def feat_has(reply: Reply, feature: str) -> bool:
    """True if a FEAT line is `feature` or starts with `feature `."""
    f = feature.upper()
    return any(l.upper() == f or l.upper().startswith(f + " ") for l in feat_lines(reply))


# --------------------------------------------------------------------------
# Clients: curl and lftp
# --------------------------------------------------------------------------

def curl(port: int, path: str = "/", *, user: Optional[str] = None,
         password: str = PW, sni: Optional[str] = None,
         implicit: bool = False, ca: Optional[Cert] = None, head: bool = False,
         host: str = LOOPBACK, extra: Iterable[str] = (), tls: bool = True,
         timeout: float = T_CLIENT) -> subprocess.CompletedProcess:
    """curl against an FTPS server (tls=False: plain FTP). Explicit: ftp:// with --ssl-reqd (curl
    sends AUTH SSL, then AUTH TLS); implicit: ftps://. sni=NAME connects to
    `host` while using NAME in the URL (so curl sends it as SNI and checks
    the certificate for it) through --resolve. head=True is `-I`: SIZE/MDTM,
    no data connection. With ca=None the certificate is not checked (-k).
    -v is on: stderr has the dialogue ('> USER ...', '< 230 ...')."""
    name = sni or (f"[{host}]" if ":" in host else host)
    url = f"{'ftps' if implicit else 'ftp'}://{name}:{port}{path}"
    cmd = ["curl", "-sS", "-v", "--max-time", str(int(timeout) - 2 if timeout > 4 else timeout),
           "--connect-timeout", "5"]
    if tls and not implicit:
        cmd.append("--ssl-reqd")
    if sni:
        cmd += ["--resolve", f"{sni}:{port}:{host}"]
    cmd += ["--cacert", str(ca.cert)] if ca else ["-k"]
    if user is not None:
        cmd += ["-u", f"{user}:{password}"]
    if head:
        cmd.append("-I")
    cmd += list(extra)
    cmd.append(url)
    return run(cmd, timeout=timeout)


def curl_sent(r: subprocess.CompletedProcess) -> list[str]:
    """Commands curl sent, from its -v output ('> CMD')."""
    return [l[2:].strip() for l in r.stderr.splitlines() if l.startswith("> ")]


def curl_replies(r: subprocess.CompletedProcess) -> list[str]:
    return [l[2:].strip() for l in r.stderr.splitlines() if l.startswith("< ")]


def content_length(r: subprocess.CompletedProcess) -> Optional[int]:
    m = re.search(r"^Content-Length:\s*(\d+)", r.stdout, re.M | re.I)
    return int(m.group(1)) if m else None


def lftp(port: int, commands: Iterable[str], *, user: str, password: str = PW,
         host: str = LOOPBACK, implicit: bool = False, ca: Optional[Cert] = None,
         check_hostname: bool = True, workdir: Optional[Path] = None,
         settings: Iterable[str] = (), tls: bool = True,
         timeout: float = T_CLIENT) -> subprocess.CompletedProcess:
    """lftp with FTPS forced (tls=False: plain FTP, no AUTH at all), one
    script file, debug output on stderr.
    Commands run with cmd:fail-exit, so a refused command gives a non-zero
    exit. `quote SIZE /file` prints the server's reply."""
    def q(s: str) -> str:
        return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'
    script = [
        "set cmd:fail-exit yes",
        "set net:max-retries 1",
        "set net:timeout 5",
        "set net:reconnect-interval-base 1",
        "set net:persist-retries 0",
        f"set ftp:ssl-allow {'yes' if tls else 'no'}",
        f"set ftp:ssl-force {'yes' if tls else 'no'}",
        f"set ftp:ssl-allow-anonymous {'yes' if tls else 'no'}",
        f"set ftp:ssl-protect-data {'yes' if tls else 'no'}",
        f"set ftp:ssl-protect-list {'yes' if tls else 'no'}",
        "set ftp:passive-mode yes",
        f"set ssl:verify-certificate {'yes' if ca else 'no'}",
        f"set ssl:check-hostname {'yes' if (ca and check_hostname) else 'no'}",
    ]
    if ca:
        script.append(f"set ssl:ca-file {q(str(ca.cert))}")
    script += list(settings)
    h = f"[{host}]" if ":" in host else host
    script.append(f"open -u {q(user + ',' + password)} {'ftps' if implicit else 'ftp'}://{h}:{port}")
    script += list(commands)
    d = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="lftp-"))
    f = d / f"lftp-{os.getpid()}-{_rng.randrange(1 << 30)}.lftp"
    f.write_text("\n".join(script) + "\n")
    env = dict(os.environ, HOME=str(d))   # no ~/.lftprc, bookmarks or history
    return run(["lftp", "-d", "-f", str(f)], timeout=timeout, env=env, cwd=str(d))


_ANSI = re.compile(r"\x1b\[[0-9;]*m|\x00")


def gftp(port: int, commands: Iterable[str], *, user: str, workdir: Path,
         password: str = PW, host: str = "localhost", ca: Optional[Cert] = None,
         settings: Iterable[str] = (), timeout: float = T_CLIENT) -> subprocess.CompletedProcess:
    """gftp-text (Debian's gftp-text 2.9.1b) over explicit FTPS: ftps:// is
    AUTH TLS, PBSZ 0, PROT P, and the data connections resume the control
    session. The commands go to its standard input (`ls`, `cd DIR`, `get
    NAME` into workdir, `put NAME` from workdir: names, not paths); its
    output comes back without its colours. It exits 0 whatever happened, so
    callers check files and output.

    With ca, the peer is verified: gftp trusts OpenSSL's default paths
    (SSL_CERT_FILE points them at the test CA) and compares the host name
    with the certificate's DNS names only, so host is `localhost`, a name
    the central certificate has. No retries, short timeouts, no chmod or
    time preserving after transfers, no listing cache; HOME is workdir."""
    script = [f"set verify_ssl_peer={1 if ca else 0}", "set retries=1", "set sleep_time=1",
              "set network_timeout=8", "set preserve_permissions=0", "set preserve_time=0",
              "set cache_ttl=0", *settings,
              f"open ftps://{user}:{password}@{host}:{port}/", *commands, "quit"]
    env = dict(os.environ, HOME=str(workdir))
    if ca:
        env["SSL_CERT_FILE"] = str(ca.cert)
    r = run(["gftp-text"], input=("\n".join(script) + "\n").encode(), env=env,
            cwd=str(workdir), timeout=timeout)
    r.stdout, r.stderr = _ANSI.sub("", r.stdout), _ANSI.sub("", r.stderr)
    return r


def lftp_sent(r: subprocess.CompletedProcess) -> list[str]:
    """Commands lftp sent, from its debug output ('---> CMD')."""
    return [l.split("---> ", 1)[1].strip() for l in r.stderr.splitlines() if "---> " in l]


# --------------------------------------------------------------------------
# Raw TLS records
# --------------------------------------------------------------------------

TLS_HANDSHAKE, TLS_ALERT, TLS_APPLICATION_DATA = 22, 21, 23


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    got = b""
    while len(got) < n:
        b = sock.recv(n - len(got))
        if not b:
            raise EOFError(f"connection closed after {len(got)} of {n} bytes")
        got += b
    return got


def read_tls_record(sock: socket.socket) -> tuple[int, int, bytes]:
    """One whole TLS record from a raw socket: (content type, version, payload)."""
    header = recv_exactly(sock, 5)
    typ, version, length = struct.unpack("!BHH", header)
    return typ, version, recv_exactly(sock, length)


class RecordClient:
    """A TLS client that does its own record framing on a raw socket: each
    record the server sends is read whole and fed alone to an ssl.SSLObject
    (memory BIOs), so the caller learns which record carried which bytes.
    (TLS 1.3 sends its tickets as application data records too: a record
    that decrypts to nothing is not counted.)"""

    def __init__(self, sock: socket.socket, ctx: ssl.SSLContext,
                 server_hostname: Optional[str] = None):
        self.sock = sock
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self.incoming, self.outgoing, server_hostname=server_hostname)
        while True:
            try:
                self.obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._flush()
                self._feed_one()
        self._flush()

    def _flush(self) -> None:
        data = self.outgoing.read()
        if data:
            self.sock.sendall(data)

    def _feed_one(self) -> int:
        typ, version, payload = read_tls_record(self.sock)
        self.incoming.write(struct.pack("!BHH", typ, version, len(payload)) + payload)
        return typ

    def send(self, data: bytes) -> None:
        self.obj.write(data)
        self._flush()

    def record(self) -> bytes:
        """The plaintext of the next record that carries any."""
        while True:
            self._feed_one()
            got = b""
            while True:
                try:
                    chunk = self.obj.read(1 << 16)
                except ssl.SSLWantReadError:
                    break
                if not chunk:
                    break
                got += chunk
            self._flush()        # what reading produced (a key update's answer)
            if got:
                return got


# --------------------------------------------------------------------------
# Misc
# --------------------------------------------------------------------------

def has_ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        try:
            s.bind(("::1", 0))
        finally:
            s.close()
        return True
    except OSError:
        return False


def client_can_offer_tls11(workdir: Path, certs: CertFactory) -> bool:
    """Sanity check for the TLS 1.1 test: can our client context negotiate
    TLS 1.1 at all (Debian's OpenSSL needs @SECLEVEL=0 for that)? Proven
    against `openssl s_server -tls1_1`, so that 'the proxy refused' cannot
    pass merely because the client never offered 1.1."""
    c = certs.central()
    port = free_port()
    proc = subprocess.Popen(["openssl", "s_server", "-accept", f"{LOOPBACK}:{port}",
                             "-cert", str(c.cert), "-key", str(c.key), "-tls1_1",
                             "-cipher", "DEFAULT:@SECLEVEL=0", "-naccept", "1", "-quiet"],
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_until(lambda: proc.poll() is not None or is_listening(port), T_START,
                   what="openssl s_server")
        ctx = tls11_client_context()
        with socket.create_connection((LOOPBACK, port), T_IO) as s:
            with ctx.wrap_socket(s) as t:
                return t.version() == "TLSv1.1"
    except (OSError, ssl.SSLError):
        return False
    finally:
        _kill_group(proc, signal.SIGKILL)
        proc.wait(T_STOP)


def tls11_client_context() -> ssl.SSLContext:
    """A client that offers at most TLS 1.1 (SECLEVEL=0 so OpenSSL 3 lets it)."""
    ctx = client_context(verify=False, ciphers="DEFAULT:@SECLEVEL=0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)   # that is the point
        ctx.minimum_version = ssl.TLSVersion.TLSv1
        ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    return ctx
