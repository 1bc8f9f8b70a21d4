"""A site's signing key (Ed25519): it signs the site's ledger head and privacy reports, so
anyone holding the public key can check them without trusting the operator.

The private key is a PEM file readable only by its owner; it never enters a log line or an
error message. Public keys travel as base64 of the 32 raw bytes; their fingerprint is the
SHA-256 of those bytes, which an officer compares with the one the site gave them.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fedllm.errors import SignatureError
from fedllm.files import write_new


@dataclass(frozen=True)
class PublicKey:
    """An Ed25519 public key: verifies signatures made by the matching site key."""

    raw: bytes

    @classmethod
    def from_text(cls, text: str) -> PublicKey:
        """From base64 of the raw key (what reports carry) or a PEM public key file's text."""
        text = text.strip()
        if text.startswith("-----BEGIN"):
            key = serialization.load_pem_public_key(text.encode())
            if not isinstance(key, Ed25519PublicKey):
                raise SignatureError("the public key is not an Ed25519 key")
            return cls(key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))
        try:
            raw = base64.b64decode(text, validate=True)
        except binascii.Error as err:
            raise SignatureError(f"public key is not valid base64: {err}") from None
        if len(raw) != 32:
            raise SignatureError(f"an Ed25519 public key has 32 bytes, got {len(raw)}")
        return cls(raw)

    @property
    def text(self) -> str:
        return base64.b64encode(self.raw).decode()

    @property
    def fingerprint(self) -> str:
        return "SHA256:" + hashlib.sha256(self.raw).hexdigest()

    def pem(self) -> str:
        key = Ed25519PublicKey.from_public_bytes(self.raw)
        return key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode()

    def verify(self, signature: str, data: bytes) -> None:
        """Raises SignatureError unless ``signature`` (base64) signs ``data`` with this key."""
        try:
            sig = base64.b64decode(signature, validate=True)
            Ed25519PublicKey.from_public_bytes(self.raw).verify(sig, data)
        except (InvalidSignature, binascii.Error, ValueError):
            raise SignatureError(
                f"signature does not verify with public key {self.fingerprint}"
            ) from None


class SiteKey:
    """A site's Ed25519 private key, loaded from (or created at) a PEM file."""

    def __init__(self, private: Ed25519PrivateKey) -> None:
        self._private = private
        raw = private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.public = PublicKey(raw)

    @classmethod
    def generate(cls, path: Path) -> SiteKey:
        """A new key written to ``path`` (mode 0600); an existing file is never overwritten."""
        private = Ed25519PrivateKey.generate()
        pem = private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        write_new(path, pem, 0o600, SignatureError, "site key")
        return cls(private)

    @classmethod
    def load(cls, path: Path) -> SiteKey:
        if not path.is_file():
            raise SignatureError(f"site key {path} does not exist (create one: fedllm site init)")
        try:
            private = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (ValueError, TypeError):
            raise SignatureError(f"site key {path} is not an unencrypted PEM private key") from None
        if not isinstance(private, Ed25519PrivateKey):
            raise SignatureError(f"site key {path} is not an Ed25519 key")
        return cls(private)

    @classmethod
    def load_or_generate(cls, path: Path) -> SiteKey:
        return cls.load(path) if path.exists() else cls.generate(path)

    def sign(self, data: bytes) -> str:
        """Base64 of the Ed25519 signature of ``data``."""
        return base64.b64encode(self._private.sign(data)).decode()
