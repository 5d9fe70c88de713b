#!/usr/bin/env python3
"""gen_sites.py DIR N [--backend HOST:PORT] - N sites for ftpsgate, one
INI file and one ECDSA P-256 certificate each, all issued by one private CA
(DIR/ca.crt), under DIR/sites.d/ and DIR/certs/.

The generation is cached: DIR/done-N-HASH (HASH: of this script) says it
is complete, and a second call returns at once; a changed generator makes
the sites again. Certificates are made with Python's cryptography package
(Debian's python3-cryptography), about a millisecond each; the openssl
command would take about twenty.
"""
from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import os
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def pem_key(k) -> bytes:
    return k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                           serialization.NoEncryption())


def main() -> int:
    a = argparse.ArgumentParser()
    a.add_argument("dir")
    a.add_argument("n", type=int)
    a.add_argument("--backend", default="127.0.0.1:2100")
    args = a.parse_args()
    d = Path(args.dir)
    tag = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:12]
    done = d / f"done-{args.n}-{tag}"
    if done.exists():
        return 0
    for old in d.glob("done-*"):
        old.unlink()
    (d / "sites.d").mkdir(parents=True, exist_ok=True)
    (d / "certs").mkdir(exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ftpsgate bench CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(1)
          .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=800))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    (d / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for i in range(args.n):
        name = f"s{i:05d}"
        host = f"{name}.sites.test"
        k = ec.generate_private_key(ec.SECP256R1())
        c = (x509.CertificateBuilder()
             .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
             .issuer_name(ca_name).public_key(k.public_key()).serial_number(1000 + i)
             .not_valid_before(now - dt.timedelta(days=1))
             .not_valid_after(now + dt.timedelta(days=700))
             .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
             .sign(ca_key, hashes.SHA256()))
        (d / "certs" / f"{name}.crt").write_bytes(c.public_bytes(serialization.Encoding.PEM))
        kp = d / "certs" / f"{name}.key"
        kp.write_bytes(pem_key(k))
        os.chmod(kp, 0o600)
        (d / "sites.d" / f"{name}.ini").write_text(
            f"[backend:{name}]\nhostnames = {host}\naddress = {args.backend}\nhealth_check = 0\n"
            f"certificate = ../certs/{name}.crt\nprivate_key = ../certs/{name}.key\n")
    # The central certificate: also from the CA.
    k = ec.generate_private_key(ec.SECP256R1())
    c = (x509.CertificateBuilder()
         .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "proxy.test")]))
         .issuer_name(ca_name).public_key(k.public_key()).serial_number(999)
         .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=700))
         .add_extension(x509.SubjectAlternativeName([x509.DNSName("proxy.test"),
                                                     x509.DNSName("localhost")]), critical=False)
         .sign(ca_key, hashes.SHA256()))
    (d / "central.crt").write_bytes(c.public_bytes(serialization.Encoding.PEM))
    (d / "central.key").write_bytes(pem_key(k))
    done.write_text("ok\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
