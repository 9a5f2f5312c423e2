# -*- test-case-name: tests.test_aiproxy_units,tests.test_aiproxy_e2e -*-
"""
The AI proxy's certificate authority.

C{bridgeproxy ca create} makes one (L{create_ca}).  The running proxy loads
it (L{CertificateAuthority.load}) and signs with it a certificate for each
allow-listed host it decrypts: minted the first time the host is asked for,
then kept (with its TLS context) until it nears its end.  Every leaf shares
one key, made when the proxy starts: the CA is what clients trust, and one
key spares a key generation per host.
"""

from __future__ import annotations

import datetime
import os
import secrets
from typing import Any, Optional

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.internet import ssl
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory

from bridgeproxy.errors import ConfigError

log = Logger(namespace="bridgeproxy.aiproxy")

#: The file names C{bridgeproxy ca create} writes.
CA_CERT_FILE = "ca.pem"
CA_KEY_FILE = "ca-key.pem"
#: A leaf certificate lives this long (clients reject leaves over 398 days)...
LEAF_LIFETIME = datetime.timedelta(days=30)
#: ...and is replaced this long before its end.
LEAF_RENEW_BEFORE = datetime.timedelta(days=2)
#: Clocks differ: a leaf is valid from a little before it was made.
_BACKDATE = datetime.timedelta(hours=1)
_MAX_LEAVES = 1000


def _utc(seconds: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)


def _signing_hash(key: Any) -> Any:
    """The digest to sign with C{key} (none for the Edwards curves, which hash by themselves)."""
    return None if isinstance(key, (ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)) else hashes.SHA256()


def create_ca(directory: str, *, days: int = 3650, now: Optional[float] = None) -> tuple[str, str]:
    """
    Write a new CA certificate (C{ca.pem}) and its private key
    (C{ca-key.pem}, mode 0600) into C{directory} (made if missing).

    The certificate may not sign other CAs (C{pathLen=0}); its
    name carries a random suffix, so that two deployments' CAs are told
    apart in a trust store.

    @param days: how long the CA is valid.
    @return: the paths of the certificate and of the key.
    @raise FileExistsError: when either file exists (nothing is written).
    """
    cert_path = os.path.join(directory, CA_CERT_FILE)
    key_path = os.path.join(directory, CA_KEY_FILE)
    for path in (cert_path, key_path):
        if os.path.lexists(path):
            raise FileExistsError(f"{path} exists; move it away first (a new CA must be trusted again)")
    os.makedirs(directory, mode=0o700, exist_ok=True)
    start = _utc(now if now is not None else datetime.datetime.now(datetime.timezone.utc).timestamp())
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "bridgeproxy"),
        x509.NameAttribute(NameOID.COMMON_NAME, f"bridgeproxy AI proxy CA {secrets.token_hex(4)}"),
    ])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start - _BACKDATE).not_valid_after(start + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    # O_EXCL: never through a file (or link) that appeared meanwhile; 0600 from the start.
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(key_pem)
    fd = os.open(cert_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


class CertificateAuthority:
    """
    Signs the certificates the proxy shows for the hosts it decrypts.

    @param cert: the CA's certificate.
    @param key: its private key.
    @param clock: an L{IReactorTime}: when a leaf starts and is renewed.
    @param metrics: a L{bridgeproxy.metrics.Metrics} counting minted leaves.
    """

    def __init__(self, cert: x509.Certificate, key: Any, clock: Any, metrics: Any = None):
        self.cert = cert
        self.key = key
        self.clock = clock
        self.metrics = metrics
        #: The CA certificate as clients download it (C{GET /ca.pem}).
        self.pem = cert.public_bytes(serialization.Encoding.PEM)
        self._leaf_key = ec.generate_private_key(ec.SECP256R1())
        self._leaves: dict[str, tuple[float, x509.Certificate, TLSMemoryBIOFactory]] = {}
        self._expiry_logged = False
        try:
            ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
            self._authority_key_id = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
        except x509.ExtensionNotFound:
            self._authority_key_id = x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key())

    @classmethod
    def load(cls, cert_path: str, key_path: str, clock: Any, metrics: Any = None) -> "CertificateAuthority":
        """
        The CA in these PEM files.

        @raise ConfigError: a file that cannot be read or parsed, a key that
            is not the certificate's, a certificate that is not a CA's or
            has expired.
        """
        try:
            with open(cert_path, "rb") as f:
                cert = x509.load_pem_x509_certificate(f.read())
        except OSError as e:
            raise ConfigError(f"aiproxy.ca_cert: cannot read {cert_path!r}: {e.strerror}") from None
        except ValueError:
            raise ConfigError(f"aiproxy.ca_cert: {cert_path!r} is not a PEM certificate") from None
        try:
            with open(key_path, "rb") as f:
                key = serialization.load_pem_private_key(f.read(), password=None)
        except OSError as e:
            raise ConfigError(f"aiproxy.ca_key: cannot read {key_path!r}: {e.strerror}") from None
        except (ValueError, TypeError):
            raise ConfigError(f"aiproxy.ca_key: {key_path!r} is not an unencrypted PEM private key") from None
        if not isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey, ed25519.Ed25519PrivateKey,
                                ed448.Ed448PrivateKey)):
            raise ConfigError(f"aiproxy.ca_key: {key_path!r} is not an RSA, EC or Edwards-curve key")
        spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        if key.public_key().public_bytes(*spki) != cert.public_key().public_bytes(*spki):
            raise ConfigError(f"aiproxy.ca_key: {key_path!r} is not the key of the certificate in {cert_path!r}")
        try:
            is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        except x509.ExtensionNotFound:
            is_ca = False
        if not is_ca:
            raise ConfigError(f"aiproxy.ca_cert: {cert_path!r} is not a CA certificate (basicConstraints CA:TRUE)")
        if cert.not_valid_after_utc <= _utc(clock.seconds()):
            raise ConfigError(f"aiproxy.ca_cert: {cert_path!r} expired on {cert.not_valid_after_utc:%Y-%m-%d}")
        try:
            mode = os.stat(key_path).st_mode
        except OSError:
            mode = 0
        if mode & 0o077:
            log.warn("aiproxy.ca_key: {path} can be read by others than its owner (mode {mode}); whoever reads it "
                     "can impersonate any site to the clients that trust the CA: chmod 600 it",
                     path=key_path, mode=f"{mode & 0o777:04o}")
        return cls(cert, key, clock, metrics)

    def expired(self) -> bool:
        """
        Whether the CA has expired (no leaf it signs would be trusted).  The
        first time it is found so, one error is logged.
        """
        if self.cert.not_valid_after_utc > _utc(self.clock.seconds()):
            return False
        if not self._expiry_logged:
            self._expiry_logged = True
            log.error("aiproxy: the CA certificate expired on {date}; CONNECTs to the decrypted hosts get 503 "
                      "until a new CA is made (bridgeproxy ca create), trusted by the clients and configured",
                      date=f"{self.cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")
        return True

    def tls_for(self, host: str) -> TLSMemoryBIOFactory:
        """
        The server side of TLS for C{host}: a factory of
        L{twisted.protocols.tls.TLSMemoryBIOProtocol} showing C{host}'s leaf
        (L{leaf}).  Only HTTP/1.1 is offered (ALPN).
        """
        return self._entry(host)[2]

    def leaf(self, host: str) -> x509.Certificate:
        """
        C{host}'s leaf certificate: minted on first use, then kept until
        it nears its end (L{LEAF_RENEW_BEFORE}).
        """
        return self._entry(host)[1]

    def _entry(self, host: str) -> tuple[float, x509.Certificate, TLSMemoryBIOFactory]:
        now = self.clock.seconds()
        cached = self._leaves.get(host)
        if cached is not None and cached[0] > now:
            return cached
        not_after = min(_utc(now) + LEAF_LIFETIME, self.cert.not_valid_after_utc)
        leaf = self._mint(host, _utc(now) - _BACKDATE, not_after)
        # cryptography's objects: pyOpenSSL takes them, and deprecates its own.
        options = ssl.CertificateOptions(privateKey=self._leaf_key, certificate=leaf,  # type: ignore[arg-type]
                                         acceptableProtocols=[b"http/1.1"])
        factory = TLSMemoryBIOFactory(options, False, None)  # type: ignore[arg-type] # wraps one protocol at a time
        if len(self._leaves) >= _MAX_LEAVES:
            self._leaves.clear()
        renew_at = (not_after - LEAF_RENEW_BEFORE).timestamp()
        # A CA that ends sooner than that: a new leaf would end with it too.
        entry = (renew_at if renew_at > now else not_after.timestamp(), leaf, factory)
        self._leaves[host] = entry
        return entry

    def _mint(self, host: str, not_before: datetime.datetime, not_after: datetime.datetime) -> x509.Certificate:
        public = self._leaf_key.public_key()
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
            .issuer_name(self.cert.subject).public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before).not_valid_after(not_after)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False, key_cert_sign=False,
                                         crl_sign=False, content_commitment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False),
                           critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(self._authority_key_id, critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .sign(self.key, _signing_hash(self.key))
        )
        if self.metrics is not None:
            self.metrics.aiproxy_leaf_certificates.inc()
        return cert


__all__ = ["CA_CERT_FILE", "CA_KEY_FILE", "CertificateAuthority", "create_ca"]
