"""An app publisher's Ed25519 key and its signature over a Flower App Bundle's digest.

The format is Flower's own (``flwr app review``, ``flower-supernode --trusted-entities``): keys
in OpenSSH format (``ssh-ed25519 AAAA...``, as ``ssh-keygen -t ed25519`` writes them), and a
signature over ``signed_at`` (8 bytes, big-endian) followed by the FAB's raw SHA-256 digest,
carried as unpadded base64url. A signature made here is the record Flower Hub would hold for
the same FAB and key, so the same key file serves Flower's ``--trusted-entities``.

Flower 1.42 verifies such signatures only for FABs fetched from Flower Hub: a FAB sent with
``flwr run ./app`` reaches the SuperNode without verification records, and a SuperNode given
``--trusted-entities`` refuses every such run. fedllm therefore checks the signature when a
site decides to trust a digest (``fedllm site trust --signature``), and the site's executor
pins the digest itself (:mod:`fedllm.deploy.pinning`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fedllm.errors import SignatureError
from fedllm.files import write_new

SIGNATURE_FORMAT = "fedllm-app-signature/1"
_DIGEST = re.compile(r"[0-9a-f]{64}")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass(frozen=True)
class PublisherKey:
    """A publisher's public key: one OpenSSH line (``ssh-ed25519 BASE64 [comment]``)."""

    line: str

    @classmethod
    def parse(cls, text: str, where: str = "public key") -> PublisherKey:
        line = text.strip()
        try:
            key = serialization.load_ssh_public_key(line.encode())
        except (ValueError, UnsupportedAlgorithm):
            raise SignatureError(f"{where} is not an OpenSSH public key line") from None
        if not isinstance(key, Ed25519PublicKey):
            raise SignatureError(f"{where} is not an Ed25519 key (ssh-keygen -t ed25519)")
        return cls(" ".join(line.split()[:2]))  # the comment is not part of the key

    @classmethod
    def load(cls, path: Path) -> PublisherKey:
        if not path.is_file():
            raise SignatureError(f"publisher key {path} does not exist")
        return cls.parse(path.read_text(errors="replace"), f"publisher key {path}")

    @property
    def key(self) -> Ed25519PublicKey:
        loaded = serialization.load_ssh_public_key(self.line.encode())
        assert isinstance(loaded, Ed25519PublicKey)  # checked by parse
        return loaded

    @property
    def fingerprint(self) -> str:
        """``SHA256:<hex>`` of the raw 32-byte key."""
        raw = self.key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return "SHA256:" + hashlib.sha256(raw).hexdigest()


@dataclass(frozen=True)
class AppSignature:
    """A publisher's signed statement that a FAB digest is their app (``fedllm app sign``).
    ``app`` and ``version`` are informational: the digest fixes them (they are in the FAB)."""

    app: str
    version: str
    sha256: str
    publisher: str
    public_key: str
    signed_at: int
    signature: str
    format: str = SIGNATURE_FORMAT

    def verify(self) -> PublisherKey:
        """The signing key, once the signature verifies over ``signed_at`` and ``sha256``;
        raises SignatureError naming what is wrong otherwise."""
        key = PublisherKey.parse(self.public_key, f"public key of publisher {self.publisher}")
        try:
            raw = base64.urlsafe_b64decode(self.signature + "=" * (-len(self.signature) % 4))
            key.key.verify(raw, message_to_sign(self.sha256, self.signed_at))
        except (InvalidSignature, binascii.Error, ValueError):
            raise SignatureError(
                f"the signature of {self.app} {self.version} (sha256 {self.sha256}) does not "
                f"verify with publisher {self.publisher}'s key {key.fingerprint}"
            ) from None
        return key

    def dumps(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def load(cls, path: Path) -> AppSignature:
        if not path.is_file():
            raise SignatureError(f"app signature {path} does not exist")
        try:
            data = json.loads(path.read_text())
            if data.get("format") != SIGNATURE_FORMAT:
                raise SignatureError(
                    f"{path} is not a fedllm app signature (format {data.get('format')!r}, "
                    f"expected {SIGNATURE_FORMAT!r})"
                )
            made = cls(**data)
        except (json.JSONDecodeError, TypeError, AttributeError) as err:
            raise SignatureError(f"{path} is not a fedllm app signature: {err}") from None
        check_digest(made.sha256)
        if not isinstance(made.signed_at, int):
            raise SignatureError(f"{path}: signed_at must be an integer, got {made.signed_at!r}")
        return made


def message_to_sign(sha256: str, signed_at: int) -> bytes:
    """What Flower signs for a FAB: ``signed_at`` as 8 bytes big-endian, then the raw
    digest (``flwr.supercore.primitives.asymmetric_ed25519.create_message_to_sign``)."""
    return signed_at.to_bytes(8, byteorder="big") + bytes.fromhex(check_digest(sha256))


def check_digest(sha256: str) -> str:
    """``sha256`` as 64 lowercase hex digits (a ``sha256:`` prefix is dropped), or an error."""
    digest = sha256.strip().lower().removeprefix("sha256:")
    if not _DIGEST.fullmatch(digest):
        raise SignatureError(f"a FAB digest is 64 hex digits (SHA-256), got {sha256!r}")
    return digest


def generate_publisher_key(path: Path, name: str) -> PublisherKey:
    """A new Ed25519 key pair: ``path`` (OpenSSH private key, 0600) and ``path.pub`` (one
    OpenSSH public key line, comment ``name``); existing files are never overwritten."""
    if not _NAME.fullmatch(name):
        raise SignatureError(f"publisher name {name!r}: use letters, digits, '.', '_', '-'")
    public_path = path.with_name(path.name + ".pub")
    if public_path.exists():
        raise SignatureError(f"{public_path} already exists; not overwriting it")
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    write_new(path, pem, 0o600, SignatureError, "publisher key")
    line = private.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    write_new(public_path, line + f" {name}\n".encode(), 0o644, SignatureError, "public key")
    return PublisherKey(line.decode())


def sign_digest(
    private_key: Path,
    sha256: str,
    app: str,
    version: str,
    publisher: str,
    now: datetime | None = None,
) -> AppSignature:
    """Signs a FAB digest with the publisher's OpenSSH Ed25519 private key (Flower's format)."""
    if not private_key.is_file():
        raise SignatureError(f"publisher key {private_key} does not exist")
    if private_key.stat().st_mode & 0o077:
        raise SignatureError(
            f"publisher key {private_key} is readable by others: chmod 600 {private_key}"
        )
    try:
        loaded = serialization.load_ssh_private_key(private_key.read_bytes(), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise SignatureError(
            f"publisher key {private_key} is not an unencrypted OpenSSH private key"
        ) from None
    if not isinstance(loaded, Ed25519PrivateKey):
        raise SignatureError(f"publisher key {private_key} is not an Ed25519 key")
    signed_at = int((now or datetime.now(UTC)).timestamp())
    raw = loaded.sign(message_to_sign(sha256, signed_at))
    public = loaded.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return AppSignature(
        app=app,
        version=version,
        sha256=check_digest(sha256),
        publisher=publisher,
        public_key=public.decode(),
        signed_at=signed_at,
        signature=base64.urlsafe_b64encode(raw).rstrip(b"=").decode(),
    )
