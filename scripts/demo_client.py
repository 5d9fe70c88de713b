#!/usr/bin/env python3
"""demo_client.py - reach an ftpsgate site by RFC 7151 HOST with Python's ftplib.

    python3 scripts/demo_client.py --port PORT --cafile .demo/ca.crt --site ftp.beta.test
    python3 scripts/demo_client.py ... --get beta-only.txt
    python3 scripts/demo_client.py ... --put .demo/upload-sample.txt upload/from-python.txt

It connects to the proxy by address (127.0.0.1: no SNI is sent), sends
`HOST <site>` BEFORE `AUTH TLS`, so the proxy routes by HOST and serves the
site's own certificate when the site has one (for a site without one, the
central certificate comes back, ftpsgate forgets a HOST it received in
plaintext, and the script sends HOST again inside TLS), then logs in as plain
`anonymous`, sends PROT P and prints PWD and NLST (and RETR/STOR on request).
scripts/demo prints these commands; this file is part of the demo.

Two things ftplib.FTP_TLS does not do by itself:

  * It does not resume the control channel's TLS session on data
    connections. ftpsgate requires that (require_session_reuse = yes, as
    FileZilla, curl and lftp all do it), so SessionReusingFTP_TLS passes
    `session=self.sock.session` when it wraps a data socket.
  * It checks the certificate against the name it connected to. After an
    early HOST the proxy serves the certificate of the site named in HOST
    (alpha's own), or its central one for a site without one (beta), so the
    certificate is checked here against the HOST name, else against the
    name connected to, and the script says which one it matched.
"""

from __future__ import annotations

import argparse
import ftplib
import ipaddress
import ssl
import sys


class SessionReusingFTP_TLS(ftplib.FTP_TLS):
    """FTP_TLS whose data connections resume the control connection's TLS
    session, as RFC 4217 servers that check session reuse expect."""

    def ntransfercmd(self, cmd, rest=None):
        # ftplib.FTP (not FTP_TLS): open the plain data socket ourselves ...
        conn, size = ftplib.FTP.ntransfercmd(self, cmd, rest)
        if self._prot_p:
            # ... and wrap it resuming the control channel's session.
            conn = self.context.wrap_socket(conn, server_hostname=self.host,
                                            session=self.sock.session)
        return conn, size


def cert_names(cert: dict) -> list[str]:
    """The DNS and IP names of a certificate from getpeercert()."""
    return [v for k, v in cert.get("subjectAltName", ()) if k in ("DNS", "IP Address")]


def name_matches(pattern: str, name: str) -> bool:
    """RFC 6125 matching: exact (case-insensitive), or '*.' for one label."""
    pattern, name = pattern.lower().rstrip("."), name.lower().rstrip(".")
    if pattern.startswith("*."):
        first, _, rest = name.partition(".")
        return bool(first) and rest == pattern[2:]
    return pattern == name


def covers(cert: dict, name: str) -> bool:
    try:
        ip = ipaddress.ip_address(name)
    except ValueError:
        ip = None
    for n in cert_names(cert):
        if ip is not None:
            try:
                if ipaddress.ip_address(n) == ip:
                    return True
            except ValueError:
                pass
        elif name_matches(n, name):
            return True
    return False


def subject_cn(cert: dict) -> str:
    for rdn in cert.get("subject", ()):
        for k, v in rdn:
            if k == "commonName":
                return v
    return "?"


def show(what: str, reply: str) -> None:
    print(f"{what:<27} <- {reply}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--server", default="127.0.0.1", help="proxy address (default 127.0.0.1)")
    ap.add_argument("--port", type=int, required=True, help="the proxy's explicit FTPS port")
    ap.add_argument("--cafile", required=True, help="CA that signed the proxy's certificates")
    ap.add_argument("--site", required=True, help="site name sent with HOST, e.g. ftp.beta.test")
    ap.add_argument("--user", default="anonymous")
    ap.add_argument("--password", default="x")
    ap.add_argument("--get", metavar="REMOTE", help="download REMOTE and print it")
    ap.add_argument("--put", nargs=2, metavar=("LOCAL", "REMOTE"), help="upload LOCAL as REMOTE")
    args = ap.parse_args()

    ctx = ssl.create_default_context(cafile=args.cafile)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False          # checked below, against HOST's name
    ctx.verify_mode = ssl.CERT_REQUIRED  # the chain is still verified

    ftp = SessionReusingFTP_TLS(context=ctx, timeout=20)
    show(f"connect {args.server}:{args.port}", ftp.connect(args.server, args.port))
    # RFC 7151: HOST before AUTH TLS, so it can pick the certificate too.
    show(f"HOST {args.site}", ftp.sendcmd(f"HOST {args.site}"))
    show("AUTH TLS", ftp.auth())

    cert = ftp.sock.getpeercert()
    names = ", ".join(cert_names(cert))
    if covers(cert, args.site):
        verdict = f"verified for {args.site} (the site's own certificate)"
    elif covers(cert, args.server):
        verdict = (f"verified for {args.server}; it does not cover {args.site}, "
                   "so this is the proxy's central certificate")
    else:
        print(f"certificate CN={subject_cn(cert)} ({names}) covers neither "
              f"{args.site} nor {args.server}", file=sys.stderr)
        return 1
    print(f"{'certificate':<27} :  CN={subject_cn(cert)} [{names}], {verdict}")
    if not covers(cert, args.site):
        # A plaintext HOST routes only when its site's own certificate came
        # back (a man in the middle could have sent it): ftpsgate forgot it,
        # so name the site again, now inside TLS.
        show(f"HOST {args.site} (in TLS)", ftp.sendcmd(f"HOST {args.site}"))

    show(f"USER {args.user} / PASS", ftp.login(args.user, args.password))
    show("PROT P", ftp.prot_p())
    show("PWD", ftp.sendcmd("PWD"))
    listing = ftp.nlst()
    print(f"{'NLST (data connection)':<27} -> {', '.join(listing)}")
    if args.get:
        chunks: list[bytes] = []
        reply = ftp.retrbinary(f"RETR {args.get}", chunks.append)
        data = b"".join(chunks)
        show(f"RETR {args.get}", f"{reply} ({len(data)} bytes:)")
        sys.stdout.write(data.decode(errors="replace"))
    if args.put:
        local, remote = args.put
        with open(local, "rb") as f:
            show(f"STOR {remote}", ftp.storbinary(f"STOR {remote}", f))
    show("QUIT", ftp.quit())
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (ftplib.Error, OSError, EOFError) as e:
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
