"""A publisher's key and its signature over a FAB digest: Flower's format, verified only with
the signing key, over exactly the digest and time signed."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fedllm.crypto import AppSignature, PublisherKey, generate_publisher_key, sign_digest
from fedllm.errors import SignatureError

DIGEST = "9d" * 32


def _signed(tmp_path: Path, name: str = "release") -> AppSignature:
    generate_publisher_key(tmp_path / name, name)
    return sign_digest(tmp_path / name, DIGEST, "@fedllm/fedllm", "0.1.0", name)


def test_a_signature_verifies_with_its_key_only(tmp_path: Path) -> None:
    signed = _signed(tmp_path)
    assert signed.verify() == PublisherKey.load(tmp_path / "release.pub")
    forged = dataclasses.replace(signed, public_key=_signed(tmp_path, "other").public_key)
    with pytest.raises(SignatureError, match="does not verify with publisher release's key"):
        forged.verify()


@pytest.mark.parametrize("change", [{"sha256": "00" * 32}, {"signed_at": 1}, {"signature": "AAAA"}])
def test_a_changed_digest_time_or_signature_fails(
    tmp_path: Path, change: dict[str, object]
) -> None:
    with pytest.raises(SignatureError, match="does not verify"):
        dataclasses.replace(_signed(tmp_path), **change).verify()  # type: ignore[arg-type]


def test_a_signature_survives_its_file(tmp_path: Path) -> None:
    signed = _signed(tmp_path)
    (tmp_path / "s.json").write_text(signed.dumps())
    assert AppSignature.load(tmp_path / "s.json") == signed


def test_a_file_of_another_format_is_refused(tmp_path: Path) -> None:
    (tmp_path / "s.json").write_text('{"format": "x"}')
    with pytest.raises(SignatureError, match="is not a fedllm app signature"):
        AppSignature.load(tmp_path / "s.json")


def test_the_signed_time_is_the_signing_time(tmp_path: Path) -> None:
    generate_publisher_key(tmp_path / "k", "k")
    moment = datetime(2026, 5, 1, tzinfo=UTC)
    signed = sign_digest(tmp_path / "k", DIGEST, "@a/b", "1", "k", now=moment)
    assert signed.signed_at == int(moment.timestamp())


def test_only_ed25519_publisher_keys_are_accepted(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP384R1()).public_key()
    line = key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    with pytest.raises(SignatureError, match="is not an Ed25519 key"):
        PublisherKey.parse(line.decode())


def test_a_publisher_key_others_can_read_does_not_sign(tmp_path: Path) -> None:
    generate_publisher_key(tmp_path / "k", "k")
    (tmp_path / "k").chmod(0o644)
    with pytest.raises(SignatureError, match="is readable by others"):
        sign_digest(tmp_path / "k", DIGEST, "@a/b", "1", "k")


def test_keygen_never_overwrites(tmp_path: Path) -> None:
    generate_publisher_key(tmp_path / "k", "k")
    before = (tmp_path / "k").read_bytes()
    with pytest.raises(SignatureError, match="already exists"):
        generate_publisher_key(tmp_path / "k", "k")
    assert (tmp_path / "k").read_bytes() == before
