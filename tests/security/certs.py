"""A throw-away PKI for tests: one CA, a server certificate for loopback, client certificates.

Made with ``cryptography`` at test time (no openssl CLI, nothing checked in). Keys are EC P-256
(fast to generate); certificates live one hour. The server certificate names ``localhost`` and
``127.0.0.1`` so hostname verification stays on in every test.

Loaded by the security and fault-injection conftests with ``importlib`` (tests are not a package).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["Pki", "make_pki"]


@dataclass(frozen=True)
class Pki:
    """Paths of the PEM files, all in one directory."""

    dir: Path
    ca_cert: Path
    server_cert: Path
    server_key: Path
    server_bundle: Path  # key + certificate chain in one file (Kafka's PEM keystore)
    client_cert: Path
    client_key: Path
    client_name: str
    rogue_ca_cert: Path  # a CA nobody trusts
    rogue_client_cert: Path  # a client certificate signed by the rogue CA
    rogue_client_key: Path


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "gapwatch tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _ca(common_name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = _key()
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _leaf(
    common_name: str,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    *,
    server: bool,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = _key()
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return key, builder.sign(ca_key, hashes.SHA256())


def make_pki(directory: Path, client_name: str = "gateway-7") -> Pki:
    """Write a CA, a loopback server certificate and a client certificate under ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = _ca("gapwatch test CA")
    server_key, server_cert = _leaf("localhost", ca_key, ca_cert, server=True)
    client_key, client_cert = _leaf(client_name, ca_key, ca_cert, server=False)
    rogue_key, rogue_cert = _ca("rogue CA")
    rogue_client_key, rogue_client_cert = _leaf(client_name, rogue_key, rogue_cert, server=False)

    def write(name: str, data: bytes, private: bool = False) -> Path:
        path = directory / name
        path.write_bytes(data)
        path.chmod(0o600 if private else 0o644)
        return path

    return Pki(
        dir=directory,
        ca_cert=write("ca.pem", _pem_cert(ca_cert)),
        server_cert=write("server.pem", _pem_cert(server_cert) + _pem_cert(ca_cert)),
        server_key=write("server.key", _pem_key(server_key), private=True),
        server_bundle=write(
            "server-bundle.pem",
            _pem_key(server_key) + _pem_cert(server_cert) + _pem_cert(ca_cert),
            private=True,
        ),
        client_cert=write("client.pem", _pem_cert(client_cert)),
        client_key=write("client.key", _pem_key(client_key), private=True),
        client_name=client_name,
        rogue_ca_cert=write("rogue-ca.pem", _pem_cert(rogue_cert)),
        rogue_client_cert=write("rogue-client.pem", _pem_cert(rogue_client_cert)),
        rogue_client_key=write("rogue-client.key", _pem_key(rogue_client_key), private=True),
    )
