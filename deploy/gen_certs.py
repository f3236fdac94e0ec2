"""Make the deployment's keys: a CA, a SuperLink TLS certificate, SuperNode auth keys, a signing key.

    python deploy/gen_certs.py --out DIR [--nodes 3] [--host 127.0.0.1] [--host superlink.example]

Writes DIR/ca.crt, DIR/ca.key, DIR/superlink.crt, DIR/superlink.key (SANs: every --host),
DIR/supernode-N (OpenSSH ECDSA P-384 private key, as `ssh-keygen -t ecdsa -b 384` makes) and
DIR/supernode-N.pub, and DIR/signing.key + DIR/signing.pub (Ed25519, for bundles). Refuses to
overwrite an existing DIR.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALID_DAYS = 365


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def make_ca(out: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A self-signed CA that signs the SuperLink's certificate."""
    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedge deployment CA")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .sign(key, hashes.SHA384())
    )
    (out / "ca.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_private(out / "ca.key", _pem_key(key))
    return cert, key


def make_server_cert(
    out: Path, ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, hosts: list[str]
) -> None:
    """The SuperLink's TLS certificate, valid for every name or IP in `hosts`."""
    key = ec.generate_private_key(ec.SECP384R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName([_san(h) for h in hosts]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    (out / "superlink.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_private(out / "superlink.key", _pem_key(key))


def make_node_key(out: Path, name: str) -> None:
    """A SuperNode authentication key pair (ECDSA P-384, OpenSSH format)."""
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    _write_private(out / name, private)
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    (out / f"{name}.pub").write_bytes(public + f" {name}\n".encode())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument(
        "--host", action="append", help="SuperLink name or IP (repeatable); default 127.0.0.1"
    )
    args = parser.parse_args()
    if args.out.exists():
        sys.exit(f"error: {args.out} already exists; choose a new directory")
    if args.nodes < 1:
        sys.exit(f"error: --nodes must be >= 1, got {args.nodes}")
    hosts = args.host or ["127.0.0.1", "localhost"]
    args.out.mkdir(parents=True)
    ca, ca_key = make_ca(args.out)
    make_server_cert(args.out, ca, ca_key, hosts)
    for i in range(args.nodes):
        make_node_key(args.out, f"supernode-{i}")

    from fedge.compression.bundle import generate_keypair

    generate_keypair(args.out)
    print(
        f"wrote CA, SuperLink certificate ({', '.join(hosts)}), {args.nodes} SuperNode keys and a signing key to {args.out}"
    )


if __name__ == "__main__":
    main()
