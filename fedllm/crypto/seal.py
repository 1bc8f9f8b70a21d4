"""Authenticated encryption at rest (AES-256-GCM) and where its key comes from.

The key is 32 random bytes kept apart from what it protects: from the environment variable
``FEDLLM_CHECKPOINT_KEY`` (64 hex digits), from a key file named in the run config, or, by
default, from ``$XDG_CONFIG_HOME/fedllm/checkpoint.key`` (``~/.config/fedllm``), created
(mode 0600) on first use. A sealed blob names the key's fingerprint in its authenticated
header, so a wrong key is told apart from a modified file.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from fedllm.errors import CheckpointError
from fedllm.files import write_new

KEY_ENV = "FEDLLM_CHECKPOINT_KEY"
_NONCE = 12


def default_key_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "fedllm" / "checkpoint.key"


@dataclass(frozen=True)
class SealKey:
    """A 32-byte AES-GCM key and where it came from (never the key itself in text)."""

    key: bytes
    source: str

    @property
    def fingerprint(self) -> str:
        """First 16 hex digits of SHA-256 over the key: names it without revealing it."""
        return hashlib.sha256(b"fedllm-seal-key|" + self.key).hexdigest()[:16]

    @classmethod
    def resolve(cls, key_file: str = "", create: bool = True) -> SealKey:
        """The key from ``key_file`` if given, else ``FEDLLM_CHECKPOINT_KEY``, else the default
        key file (created when ``create``)."""
        if key_file:
            return cls.from_file(Path(key_file))
        if os.environ.get(KEY_ENV):
            return cls(_parse(os.environ[KEY_ENV], f"environment variable {KEY_ENV}"), KEY_ENV)
        path = default_key_path()
        if not path.exists() and create:
            write_new(path, secrets.token_hex(32).encode() + b"\n", 0o600, CheckpointError, "key")
        return cls.from_file(path)

    @classmethod
    def from_file(cls, path: Path) -> SealKey:
        try:
            text = path.read_text()
        except OSError as err:
            raise CheckpointError(
                f"cannot read checkpoint key file {path}: {err.strerror}"
            ) from None
        if path.stat().st_mode & 0o077:
            raise CheckpointError(
                f"checkpoint key file {path} is readable by others; `chmod 600 {path}`"
            )
        return cls(_parse(text, f"key file {path}"), str(path))

    def seal(self, header: bytes, payload: bytes) -> bytes:
        """``nonce || AES-GCM(payload)`` with ``header`` authenticated (not encrypted)."""
        nonce = os.urandom(_NONCE)
        return nonce + AESGCM(self.key).encrypt(nonce, payload, header)

    def open(self, header: bytes, sealed: bytes, what: str) -> bytes:
        try:
            return AESGCM(self.key).decrypt(sealed[:_NONCE], sealed[_NONCE:], header)
        except InvalidTag:
            raise CheckpointError(
                f"{what} does not authenticate: it was modified or truncated after it was "
                "written; refusing to load it"
            ) from None


def _parse(text: str, where: str) -> bytes:
    try:
        key = bytes.fromhex(text.strip())
    except ValueError:
        key = b""
    if len(key) != 32:
        raise CheckpointError(f"{where} must hold 64 hex digits (a 32-byte AES key)")
    return key
