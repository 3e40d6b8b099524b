"""A throwaway certificate authority for TLS tests: CA, server certificate (127.0.0.1), client certificate."""
from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _key():
    return ec.generate_private_key(ec.SECP256R1())


def _write(path: Path, key, cert) -> None:
    path.with_suffix(".key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                           serialization.PrivateFormat.PKCS8,
                                                           serialization.NoEncryption()))
    path.with_suffix(".pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def make_pki(out: Path) -> dict[str, Path]:
    """-> paths: ca (PEM), server_cert/server_key, client_cert/client_key, other_ca (a CA nobody uses)."""
    out.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)

    def cert(subject, issuer, key, signer, ca=False, server=False):
        b = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
             .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
             .public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if server:
            b = b.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                             x509.DNSName("localhost")]), critical=False)
            b = b.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        elif not ca:
            b = b.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        return b.sign(signer, hashes.SHA256())

    ca_key, other_key = _key(), _key()
    ca = cert("dp test CA", "dp test CA", ca_key, ca_key, ca=True)
    other = cert("other CA", "other CA", other_key, other_key, ca=True)
    _write(out / "ca", ca_key, ca)
    _write(out / "other_ca", other_key, other)
    for name, server in (("server", True), ("client", False)):
        key = _key()
        _write(out / name, key, cert(name, "dp test CA", key, ca_key, server=server))
    return {"ca": out / "ca.pem", "other_ca": out / "other_ca.pem", "server_cert": out / "server.pem",
            "server_key": out / "server.key", "client_cert": out / "client.pem", "client_key": out / "client.key"}
