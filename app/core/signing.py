"""Signing keys: Ed25519 (erasure certificates, audit checkpoints) and RSA (OpenDSR).

OpenDSR/OpenCompliance section 4: responses and callbacks carry an RSA-SHA256 signature
(PKCS#1 v1.5, base64) made with a key whose X.509 certificate is published at the
``processor_certificate`` URL; the spec wants that certificate CA-issued ("a self-signed
certificate MUST NOT be used"). Keys load from the configured paths. Only outside
production, a missing key is generated into ``<data_dir>/keys/`` (the RSA one with a
self-signed certificate) so the embedded default works out of the box; production
refuses to start signing with generated material.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa
from cryptography.x509.oid import NameOID

from app.core.config import Settings
from app.core.errors import Unavailable


@dataclass(frozen=True)
class Keys:
    ed25519: ed25519.Ed25519PrivateKey
    rsa: rsa.RSAPrivateKey
    cert_pem: bytes
    generated: bool  # some key lives at its default path under <data_dir>/keys (generated, not provisioned)

    @property
    def ed25519_public_pem(self) -> str:
        return self.ed25519.public_key().public_bytes(serialization.Encoding.PEM,
                                                      serialization.PublicFormat.SubjectPublicKeyInfo).decode()

    @property
    def ed25519_public_raw(self) -> bytes:
        return self.ed25519.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    @property
    def key_id(self) -> str:
        return hashlib.sha256(self.ed25519_public_raw).hexdigest()[:16]


def processor_domain(settings: Settings) -> str:
    return settings.processor_domain or urlparse(settings.base_url).hostname or "localhost"


def _paths(settings: Settings) -> tuple[Path, Path, Path]:
    keys_dir = settings.data_dir / "keys"
    return (settings.signing_key_path or keys_dir / "ed25519.pem",
            settings.processor_key_path or keys_dir / "processor-rsa.pem",
            settings.processor_cert_path or keys_dir / "processor-cert.pem")


def _write_once(path: Path, data: bytes) -> None:
    """Create ``path`` atomically; if another process won the race, keep its file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    tmp.chmod(0o600)
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)


def _self_signed(key: rsa.RSAPrivateKey, domain: str) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, domain),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Lethe embedded default (self-signed)")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=365))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(domain)]), critical=False)
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM)


def _pem(key: ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@functools.lru_cache(maxsize=8)
def _load(ed_path: Path, rsa_path: Path, cert_path: Path, domain: str, production: bool,
          generated: bool) -> Keys:
    missing = [p for p in (ed_path, rsa_path, cert_path) if not p.exists()]
    if production and (missing or generated):
        raise Unavailable("Signing keys are not provisioned: set LETHE_SIGNING_KEY_PATH, LETHE_PROCESSOR_KEY_PATH "
                          "and LETHE_PROCESSOR_CERT_PATH (generated keys are refused in production).",
                          code="signing_keys_missing")
    if not ed_path.exists():
        _write_once(ed_path, _pem(ed25519.Ed25519PrivateKey.generate()))
    if not rsa_path.exists():
        _write_once(rsa_path, _pem(rsa.generate_private_key(public_exponent=65537, key_size=2048)))
    ed_key = serialization.load_pem_private_key(ed_path.read_bytes(), password=None)
    rsa_key = serialization.load_pem_private_key(rsa_path.read_bytes(), password=None)
    if not isinstance(ed_key, ed25519.Ed25519PrivateKey) or not isinstance(rsa_key, rsa.RSAPrivateKey):
        raise Unavailable("Signing key files hold the wrong key types (need Ed25519 and RSA).", code="bad_signing_keys")
    if not cert_path.exists():
        _write_once(cert_path, _self_signed(rsa_key, domain))
    cert_pem = cert_path.read_bytes()
    cert = x509.load_pem_x509_certificate(cert_pem)
    if production and cert.issuer == cert.subject:
        raise Unavailable("The processor certificate is self-signed; OpenDSR 4.1 requires a CA-issued one in "
                          "production (LETHE_PROCESSOR_CERT_PATH).", code="self_signed_certificate")
    if cert.public_key().public_numbers() != rsa_key.public_key().public_numbers():
        raise Unavailable("The processor certificate does not match the processor key.", code="bad_signing_keys")
    return Keys(ed25519=ed_key, rsa=rsa_key, cert_pem=cert_pem, generated=generated)


def get_keys(settings: Settings) -> Keys:
    ed_path, rsa_path, cert_path = _paths(settings)
    generated = None in (settings.signing_key_path, settings.processor_key_path, settings.processor_cert_path)
    return _load(ed_path.resolve(), rsa_path.resolve(), cert_path.resolve(), processor_domain(settings),
                 settings.env == "production", generated)


def sign_ed25519(keys: Keys, data: bytes) -> str:
    return base64.b64encode(keys.ed25519.sign(data)).decode()


def verify_ed25519(public_key_pem: str | bytes, data: bytes, signature_b64: str) -> bool:
    try:
        pub = serialization.load_pem_public_key(public_key_pem.encode() if isinstance(public_key_pem, str)
                                                else public_key_pem)
        if not isinstance(pub, ed25519.Ed25519PublicKey):
            return False
        pub.verify(base64.b64decode(signature_b64, validate=True), data)
        return True
    except (InvalidSignature, ValueError, TypeError):
        return False


def sign_rsa(keys: Keys, data: bytes) -> str:
    """RSA-SHA256, PKCS#1 v1.5, base64 (OpenDSR 7.3 ``processor_signature`` and the signature headers)."""
    return base64.b64encode(keys.rsa.sign(data, padding.PKCS1v15(), hashes.SHA256())).decode()


def verify_rsa(cert_pem: str | bytes, data: bytes, signature_b64: str) -> bool:
    """Check an OpenDSR signature against the processor certificate (what a controller does, 8.8)."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem.encode() if isinstance(cert_pem, str) else cert_pem)
        pub = cert.public_key()
        if not isinstance(pub, rsa.RSAPublicKey):
            return False
        pub.verify(base64.b64decode(signature_b64, validate=True), data, padding.PKCS1v15(), hashes.SHA256())
        return True
    except (InvalidSignature, ValueError, TypeError):
        return False
