"""A site's journeys on the command line: set up, inspect the ledger, hand over a signed report."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedllm import deploy
from fedllm.cli import main
from fedllm.crypto import SiteKey, check_node_public_key
from fedllm.privacy import PrivacyLedger, SitePolicy
from tests.ledgers import spend


@pytest.fixture
def site(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    """A folder made by `fedllm site init`, whose ledger holds three rounds."""
    folder = tmp_path / "site"
    assert main(["site", "init", str(folder), "--max-epsilon", "5", "--accountants", "rdp"]) == 0
    capsys.readouterr()
    ledger = PrivacyLedger(folder / "ledger.jsonl", SiteKey.load(folder / "site-key.pem"))
    for r in (1, 2, 3):
        spend(ledger, r)
    return folder


def _epsilon(folder: Path) -> str:
    entries = PrivacyLedger(folder / "ledger.jsonl").replay()
    return f"{entries[-1].epsilon:.4f}"


def _error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("fedllm: error: ")
    return err


def test_site_init_makes_every_key_at_the_site_and_prints_only_public_parts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "hospital"
    assert main(["site", "init", str(folder), "--max-epsilon", "2.5"]) == 0
    out = capsys.readouterr().out
    policy = SitePolicy.load(folder / "policy.toml")
    assert policy.max_epsilon == 2.5
    # Nothing outside epsilon by default: no feature statistics, no evaluations under DP.
    assert not policy.allow_feature_statistics and policy.max_evaluations == 0
    assert "feature statistics refused, 0 noised evaluation(s) per run" in out
    modes = {p.name: p.stat().st_mode & 0o777 for p in folder.iterdir()}
    assert modes == {
        "policy.toml": 0o644,
        "site-key.pem": 0o600,
        "site-key.pub": 0o644,
        "node.key": 0o600,
        "node.pub": 0o644,
        "superexec.secret": 0o600,
        "trusted-apps.toml": 0o644,
    }
    key = SiteKey.load(folder / "site-key.pem")
    assert key.public.fingerprint in out and key.public.pem() in out
    assert (folder / "node.pub").read_text().strip() in out  # what the operator gets
    assert check_node_public_key(folder / "node.pub") in out
    assert "PRIVATE" not in out and (folder / "superexec.secret").read_text() not in out
    assert len((folder / "superexec.secret").read_bytes()) == 64
    assert deploy.TrustedApps.load(folder / "trusted-apps.toml").apps == ()
    assert f"fedllm site trust {folder} --sha256 DIGEST" in out


def test_site_init_sets_what_the_site_releases_besides_dp_updates(tmp_path: Path) -> None:
    folder = tmp_path / "lab"
    args = ["--allow-feature-statistics", "--max-evaluations", "2", "--max-federation-size", "5"]
    assert main(["site", "init", str(folder), *args]) == 0
    policy = SitePolicy.load(folder / "policy.toml")
    assert policy.allow_feature_statistics and policy.max_evaluations == 2
    assert policy.max_federation_size == 5


def test_site_init_refuses_an_existing_site(site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key_before = (site / "site-key.pem").read_bytes()
    assert main(["site", "init", str(site)]) == 2
    assert "already exists" in _error(capsys)
    assert (site / "site-key.pem").read_bytes() == key_before


def test_ledger_show_prints_every_entry_and_the_epsilon(
    site: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["ledger", "show", str(site / "ledger.jsonl")]) == 0
    out = capsys.readouterr().out
    assert len([line for line in out.splitlines() if "site-0" in line]) == 3
    assert f"3 entries, cumulative epsilon {_epsilon(site)}" in out


def test_ledger_show_says_when_the_head_lags_one_entry(
    site: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    head = site / "ledger.jsonl.head"
    covering_three = head.read_bytes()
    spend(PrivacyLedger(site / "ledger.jsonl", SiteKey.load(site / "site-key.pem")), 4)
    head.write_bytes(covering_three)  # a crash between writing entry 4 and its head
    assert main(["ledger", "show", str(site / "ledger.jsonl")]) == 0
    assert "entry 4 is not yet covered by the signed head" in capsys.readouterr().out


def test_ledger_verify_prints_ok_with_epsilon_and_fingerprint(
    site: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pem = site / "officer.pub"
    pem.write_text(SiteKey.load(site / "site-key.pem").public.pem())
    assert main(["ledger", "verify", str(site / "ledger.jsonl"), "--public-key", str(pem)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("OK: ") and f"cumulative epsilon {_epsilon(site)}" in out
    assert SiteKey.load(site / "site-key.pem").public.fingerprint in out


def test_ledger_verify_names_the_tampered_entry(
    site: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = site / "ledger.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    lines[1] = lines[1].replace(b'"noise_multiplier":1.1', b'"noise_multiplier":2.2')
    path.write_bytes(b"".join(lines))
    assert main(["ledger", "verify", str(path)]) == 2
    assert "entry 2 (line 2) does not match its hash" in _error(capsys)


def test_ledger_verify_refuses_a_head_signed_by_another_key(
    site: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = SiteKey.generate(tmp_path / "other.pem").public.text
    assert main(["ledger", "verify", str(site / "ledger.jsonl"), "--public-key", other]) == 2
    assert "not by the site key" in _error(capsys)


def _write_report(site: Path, out: Path) -> int:
    return main(
        [
            "report",
            "--ledger",
            str(site / "ledger.jsonl"),
            "--key",
            str(site / "site-key.pem"),
            "--out",
            str(out),
            "--policy",
            str(site / "policy.toml"),
        ]
    )


def test_report_round_trip_verifies_with_the_sites_key(
    site: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "report.html"
    key = SiteKey.load(site / "site-key.pem").public.text
    assert _write_report(site, out) == 0
    assert out.read_bytes().startswith(b"<!DOCTYPE html>")  # format from the suffix
    capsys.readouterr()
    assert main(["report", "verify", str(out), "--public-key", key]) == 0
    out_text = capsys.readouterr().out
    assert out_text.startswith("OK: ") and f"cumulative epsilon {_epsilon(site)}" in out_text


def test_report_verify_after_an_edit_exits_2(
    site: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "report.md"
    assert _write_report(site, out) == 0
    out.write_bytes(out.read_bytes().replace(b"site-0", b"site-1", 1))
    capsys.readouterr()
    assert main(["report", "verify", str(out)]) == 2
    assert "signature does not verify" in _error(capsys)


def test_report_write_without_out_is_a_usage_error(site: Path) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["report", "write", "--ledger", str(site / "ledger.jsonl")])
    assert exit_.value.code == 2


def test_site_init_refuses_a_folder_holding_any_site_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "site"
    folder.mkdir()
    (folder / "node.key").write_text("an old key")
    assert main(["site", "init", str(folder)]) == 2
    assert f"{folder}/node.key already exists" in _error(capsys)
    assert [p.name for p in folder.iterdir()] == ["node.key"]  # nothing half-made
