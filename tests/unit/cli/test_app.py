"""App pinning on the command line: the operator prints the app's digest (and a publisher signs
it), each site reviews and pins it; a signature by a key the site does not trust, a tampered
signature or a bad digest is refused with the reason (exit 2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedllm import deploy
from fedllm.cli import main
from fedllm.crypto import AppSignature, PublisherKey
from tests.support.outsider_app import write_outsider_app

# Flower's FAB builder calls a pathspec API that warns on every pattern.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pathspec")


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("apps") / "otherapp"
    return write_outsider_app(folder, folder / "marker")


@pytest.fixture(scope="module")
def digest(app: Path) -> str:
    return deploy.FabInfo.of(deploy.build_fab(app)).sha256


@pytest.fixture
def site(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    folder = tmp_path / "site"
    assert main(["site", "init", str(folder)]) == 0
    capsys.readouterr()
    return folder


def _trusted(site: Path) -> deploy.TrustedApps:
    return deploy.TrustedApps.load(site / "trusted-apps.toml")


def _error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("fedllm: error: "), err
    return err


def test_app_digest_prints_the_digest_of_what_flwr_run_sends(
    app: Path, digest: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fab = tmp_path / "app.fab"
    assert main(["app", "digest", str(app), "--out", str(fab)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"sha256 {digest}  @outsider/otherapp 1.0.0")
    assert f"fedllm site trust SITE_DIR --sha256 {digest}" in out
    assert deploy.FabInfo.of(fab.read_bytes()).sha256 == digest


def test_a_site_pins_a_digest_and_unpins_it(
    site: Path, digest: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["site", "trust", str(site), "--sha256", f"sha256:{digest.upper()}"]) == 0
    assert f"trusts (sha256 {digest}; digest given to the site)" in capsys.readouterr().out
    assert [a.sha256 for a in _trusted(site).apps] == [digest]
    assert main(["site", "untrust", str(site), digest]) == 0
    assert _trusted(site).apps == ()


def test_a_site_pins_an_app_it_built_from_reviewed_source_or_a_fab(
    site: Path, app: Path, digest: str, tmp_path: Path
) -> None:
    assert main(["site", "trust", str(site), "--app", str(app)]) == 0
    (pinned,) = _trusted(site).apps
    assert (pinned.sha256, pinned.app, pinned.version) == (digest, "@outsider/otherapp", "1.0.0")
    assert pinned.basis == f"built from {app}"
    fab = tmp_path / "x.fab"
    fab.write_bytes(deploy.build_fab(app))
    assert main(["site", "trust", str(site), "--fab", str(fab)]) == 0
    (pinned,) = _trusted(site).apps  # the same digest, trusted again: one entry
    assert pinned.basis == "FAB file x.fab"


def test_a_malformed_digest_is_refused(site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["site", "trust", str(site), "--sha256", "1234"]) == 2
    assert "a FAB digest is 64 hex digits (SHA-256), got '1234'" in _error(capsys)
    assert _trusted(site).apps == ()


def test_a_publishers_signature_pins_the_digest_once_the_site_trusts_the_publisher(
    site: Path, app: Path, digest: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = tmp_path / "publisher"
    assert main(["app", "keygen", str(key), "--name", "fedllm-release"]) == 0
    assert key.stat().st_mode & 0o777 == 0o600
    signature = tmp_path / "app.sig.json"
    assert main(["app", "sign", str(app), "--key", str(key), "--out", str(signature)]) == 0
    capsys.readouterr()

    assert main(["site", "trust", str(site), "--signature", str(signature)]) == 2
    assert "a key this site does not trust: add it first" in _error(capsys)
    assert _trusted(site).apps == ()

    assert main(["site", "publisher", str(site), "fedllm-release", f"{key}.pub"]) == 0
    assert main(["site", "trust", str(site), "--signature", str(signature)]) == 0
    (pinned,) = _trusted(site).apps
    fingerprint = PublisherKey.load(Path(f"{key}.pub")).fingerprint
    assert pinned.sha256 == digest
    assert pinned.basis.startswith(f"signed by publisher fedllm-release ({fingerprint}) at ")


def test_a_tampered_signature_is_refused(
    site: Path, app: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = tmp_path / "publisher"
    assert main(["app", "keygen", str(key), "--name", "release"]) == 0
    assert main(["site", "publisher", str(site), "release", f"{key}.pub"]) == 0
    signature = tmp_path / "app.sig.json"
    assert main(["app", "sign", str(app), "--key", str(key), "--out", str(signature)]) == 0
    capsys.readouterr()
    record = json.loads(signature.read_text())
    record["sha256"] = "0" * 64  # another FAB's digest under the same signature
    signature.write_text(json.dumps(record))
    assert main(["site", "trust", str(site), "--signature", str(signature)]) == 2
    assert "does not verify with publisher release's key SHA256:" in _error(capsys)
    assert _trusted(site).apps == ()


def test_the_signature_is_flowers_own_format(
    app: Path, digest: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cryptography.hazmat.primitives import serialization
    from flwr.supercore.primitives.asymmetric_ed25519 import (
        create_message_to_sign,
        decode_base64url,
        verify_signature,
    )

    key = tmp_path / "publisher"
    assert main(["app", "keygen", str(key), "--name", "release"]) == 0
    signature = tmp_path / "app.sig.json"
    assert main(["app", "sign", str(app), "--key", str(key), "--out", str(signature)]) == 0
    signed = AppSignature.load(signature)
    public = serialization.load_ssh_public_key(Path(f"{key}.pub").read_bytes())
    message = create_message_to_sign(bytes.fromhex(digest), signed.signed_at)
    assert verify_signature(public, message, decode_base64url(signed.signature))  # type: ignore[arg-type]


def test_site_apps_lists_what_the_site_trusts(
    site: Path, digest: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["site", "apps", str(site)]) == 0
    assert "every run is refused until an app is pinned" in capsys.readouterr().out
    assert main(["site", "trust", str(site), "--sha256", digest]) == 0
    assert main(["site", "apps", str(site)]) == 0
    assert f"app (sha256 {digest}; digest given to the site)" in capsys.readouterr().out
