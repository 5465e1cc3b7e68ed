"""TLS to the local AWS, as on AWS: a certificate authority of the work folder and the emulator's
certificate signed by it.

The cloud stage's queue and bucket policies deny every request made without TLS
(`aws:SecureTransport = false`). The emulator enforces those policies (IAM is on), so it is
reached over HTTPS only: `local up` creates `<workdir>/tls/ca.pem` once (kept across stacks,
renewed before it expires) and a server certificate for 127.0.0.1 and localhost; every client
of the stack trusts that CA alone (`AWS_CA_BUNDLE` for botocore, `NODE_EXTRA_CA_CERTS` for the
CDK CLI), never the system store.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

#: How long the CA and the server certificate are valid; both are renewed when less than
#: `RENEW_BEFORE` is left, so a stack never starts with a certificate about to expire.
VALIDITY = dt.timedelta(days=365)
RENEW_BEFORE = dt.timedelta(days=30)
#: The names the emulator's certificate carries (the stack binds 127.0.0.1 only).
SERVER_HOSTS = ("localhost",)
SERVER_ADDRESSES = ("127.0.0.1",)


@dataclass(frozen=True)
class LocalTls:
    """The files of the local CA and of the emulator's certificate.

    Attributes:
        folder: `<workdir>/tls` (0700).
        ca_cert: the CA certificate (PEM): what every client trusts.
        server_cert, server_key: the emulator's certificate and key (PEM; the key 0600).
    """

    folder: Path

    @property
    def ca_cert(self) -> Path:
        return self.folder / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.folder / "ca-key.pem"

    @property
    def server_cert(self) -> Path:
        return self.folder / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.folder / "server-key.pem"

    def ensure(self, *, now: dt.datetime | None = None) -> LocalTls:
        """Create the CA and the server certificate when missing or about to expire; keep them otherwise."""
        now = now or dt.datetime.now(dt.UTC)
        self.folder.mkdir(parents=True, exist_ok=True)
        os.chmod(self.folder, 0o700)
        if not _valid(self.ca_cert, now) or not self.ca_key.is_file():
            self._new_ca(now)
            self.server_cert.unlink(missing_ok=True)
        if not _valid(self.server_cert, now) or not self.server_key.is_file():
            self._new_server(now)
        return self

    def client_context(self) -> ssl.SSLContext:
        """An SSL context that trusts the local CA only (for plain `urllib` calls to the emulator)."""
        return ssl.create_default_context(cafile=str(self.ca_cert))

    def _new_ca(self, now: dt.datetime) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "microprocess local CA")])
        cert = (
            _builder(name, name, key.public_key(), now)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
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
        _write_key(self.ca_key, key)
        _write(self.ca_cert, cert.public_bytes(serialization.Encoding.PEM), 0o644)

    def _new_server(self, now: dt.datetime) -> None:
        ca_key = serialization.load_pem_private_key(self.ca_key.read_bytes(), password=None)
        assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
        ca_cert = x509.load_pem_x509_certificate(self.ca_cert.read_bytes())
        key = ec.generate_private_key(ec.SECP256R1())
        names: list[x509.GeneralName] = [x509.DNSName(h) for h in SERVER_HOSTS]
        names += [x509.IPAddress(ipaddress.ip_address(a)) for a in SERVER_ADDRESSES]
        cert = (
            _builder(
                x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "microprocess local AWS")]),
                ca_cert.subject,
                key.public_key(),
                now,
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())
        )
        _write_key(self.server_key, key)
        _write(self.server_cert, cert.public_bytes(serialization.Encoding.PEM), 0o644)


def _builder(subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey, now: dt.datetime):  # type: ignore[no-untyped-def]
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
    )


def _valid(path: Path, now: dt.datetime) -> bool:
    if not path.is_file():
        return False
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except ValueError:
        return False
    return cert.not_valid_after_utc - now > RENEW_BEFORE


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    _write(path, pem, 0o600)


def _write(path: Path, data: bytes, mode: int) -> None:
    staging = path.with_suffix(".tmp")
    fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.chmod(staging, mode)
    os.replace(staging, path)
