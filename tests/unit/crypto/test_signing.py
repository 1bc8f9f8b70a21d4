"""The site's Ed25519 key: signatures verify, edits and other keys do not."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from fedllm.crypto import PublicKey, SiteKey
from fedllm.errors import SignatureError


def test_a_signature_verifies_only_for_the_same_bytes_and_key(tmp_path: Path) -> None:
    key = SiteKey.generate(tmp_path / "k.pem")
    signature = key.sign(b"ledger head")
    key.public.verify(signature, b"ledger head")
    with pytest.raises(SignatureError, match="does not verify"):
        key.public.verify(signature, b"ledger heae")
    other = SiteKey.generate(tmp_path / "other.pem")
    with pytest.raises(SignatureError, match=other.public.fingerprint):
        other.public.verify(signature, b"ledger head")


def test_the_private_key_is_owner_only_reloads_and_is_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "k.pem"
    key = SiteKey.generate(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert SiteKey.load(path).public == key.public
    with pytest.raises(SignatureError, match="already exists"):
        SiteKey.generate(path)


def test_public_keys_parse_from_base64_and_pem(tmp_path: Path) -> None:
    key = SiteKey.generate(tmp_path / "k.pem").public
    assert PublicKey.from_text(key.text) == key
    assert PublicKey.from_text(key.pem()) == key
    with pytest.raises(SignatureError, match="32 bytes"):
        PublicKey.from_text("AAAA")


def test_a_malformed_key_file_is_refused_without_echoing_it(tmp_path: Path) -> None:
    path = tmp_path / "k.pem"
    path.write_text("-----BEGIN PRIVATE KEY-----\nsecretsecret\n-----END PRIVATE KEY-----\n")
    with pytest.raises(SignatureError, match="not an unencrypted PEM private key") as err:
        SiteKey.load(path)
    assert "secret" not in str(err.value)
