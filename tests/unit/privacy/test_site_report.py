"""The signed site report: verifies from its own bytes; any edit, or a forged signer, fails."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from fedllm.crypto import SiteKey
from fedllm.errors import LedgerError, SignatureError
from fedllm.privacy import PrivacyLedger, SitePolicy
from fedllm.privacy.site_report import ReportFormat, verify_site_report, write_site_report
from tests.ledgers import spend

FORMATS: list[ReportFormat] = ["md", "html"]
TRAILER = b"<!-- fedllm-signature: ed25519 "


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> tuple[SiteKey, Path]:
    """A site key and a ledger of three rounds, written by the real ledger code."""
    folder = tmp_path_factory.mktemp("site")
    key = SiteKey.generate(folder / "site-key.pem")
    ledger = PrivacyLedger(folder / "ledger.jsonl", key)
    for r in (1, 2, 3):
        spend(ledger, r)
    return key, ledger.path


@pytest.fixture(scope="module")
def reports(
    site: tuple[SiteKey, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, bytes]:
    key, ledger = site
    folder = tmp_path_factory.mktemp("reports")
    policy = SitePolicy(max_epsilon=5.0, delta=1e-5)
    return {
        fmt: write_site_report(ledger, key, folder / f"report.{fmt}", fmt, policy).read_bytes()
        for fmt in FORMATS
    }


def _saved(tmp_path: Path, fmt: str, data: bytes) -> Path:
    path = tmp_path / f"copy.{fmt}"
    path.write_bytes(data)
    return path


def _flip(data: bytes, pos: int) -> bytes:
    changed = b"A" if data[pos : pos + 1] != b"A" else b"B"
    return data[:pos] + changed + data[pos + 1 :]


def _position(data: bytes, where: str) -> int:
    """A byte inside the part of the report named by ``where``."""
    trailer = data.rindex(TRAILER)
    return {
        "title": data.index(b"site-0"),
        "stated epsilon": data.index(b"Cumulative epsilon") + 2,
        "plot": data.index(b"data:image/png;base64,") + 500,
        "embedded ledger": data.index(b'\\"steps\\":40') + 11,
        "embedded head": data.index(b'"head": ') + 20,
        "trailer prefix": trailer + 5,
        "trailer key": data.index(b"key=", trailer) + 10,
        "trailer signature": data.index(b"sig=", trailer) + 30,
        "final newline": len(data) - 1,
    }[where]


@pytest.mark.parametrize("fmt", FORMATS)
def test_report_of_a_real_ledger_verifies(
    fmt: str, site: tuple[SiteKey, Path], reports: dict[str, bytes], tmp_path: Path
) -> None:
    key, ledger = site
    expected = PrivacyLedger(ledger).replay()[-1].epsilon
    check = verify_site_report(_saved(tmp_path, fmt, reports[fmt]), key.public)
    assert (check.site, check.entries, check.epsilon) == ("site-0", 3, expected)
    assert (check.fingerprint, check.delta, check.accountant) == (
        key.public.fingerprint,
        1e-5,
        "rdp",
    )


def test_unpinned_verification_reports_the_signers_fingerprint(
    site: tuple[SiteKey, Path], reports: dict[str, bytes], tmp_path: Path
) -> None:
    check = verify_site_report(_saved(tmp_path, "md", reports["md"]), None)
    assert check.fingerprint == site[0].public.fingerprint


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize(
    "where",
    [
        "title",
        "stated epsilon",
        "plot",
        "embedded ledger",
        "embedded head",
        "trailer prefix",
        "trailer key",
        "trailer signature",
        "final newline",
    ],
)
def test_one_changed_byte_fails_verification(
    fmt: str, where: str, reports: dict[str, bytes], tmp_path: Path
) -> None:
    data = reports[fmt]
    path = _saved(tmp_path, fmt, _flip(data, _position(data, where)))
    with pytest.raises((SignatureError, LedgerError)):
        verify_site_report(path, None)


@pytest.mark.parametrize("part", ["key", "sig"])
def test_base64_spare_bits_in_the_trailer_are_not_a_silent_edit(
    part: str, reports: dict[str, bytes], tmp_path: Path
) -> None:
    # The last base64 digit before the padding carries unused bits: flipping the lowest one
    # decodes to the same bytes, so only a canonical-spelling check catches it.
    data = reports["md"]
    start = data.index(f"{part}=".encode(), data.rindex(TRAILER)) + len(part) + 1
    last = data.index(b"=", start + 40) - 1  # last digit before the padding
    alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    twin = alphabet[alphabet.index(data[last]) ^ 1]
    edited = data[:last] + bytes([twin]) + data[last + 1 :]
    with pytest.raises(SignatureError, match="not canonical"):
        verify_site_report(_saved(tmp_path, "md", edited), None)


def _signed(body: bytes, key: SiteKey) -> bytes:
    return body + f"{TRAILER.decode()}key={key.public.text} sig={key.sign(body)} -->\n".encode()


def _resigned(data: bytes, old: bytes, new: bytes, key: SiteKey) -> bytes:
    return _signed(data[: data.rindex(TRAILER)].replace(old, new), key)


def test_edit_resigned_with_another_key_fails_against_the_site_key(
    site: tuple[SiteKey, Path], reports: dict[str, bytes], tmp_path: Path
) -> None:
    forger = SiteKey.generate(tmp_path / "forger.pem")
    edited = _resigned(reports["md"], b"site-0", b"site-9", forger)
    with pytest.raises(SignatureError, match="not by the site's key"):
        verify_site_report(_saved(tmp_path, "md", edited), site[0].public)


def test_resigned_report_fails_even_unpinned_when_its_ledger_head_is_the_sites(
    reports: dict[str, bytes], tmp_path: Path
) -> None:
    forger = SiteKey.generate(tmp_path / "forger.pem")
    edited = _resigned(reports["html"], b"Privacy report", b"Privacy r\xc3\xa9port", forger)
    with pytest.raises(LedgerError, match="head is signed by"):
        verify_site_report(_saved(tmp_path, "html", edited), None)


def test_stated_epsilon_must_match_the_replayed_one(
    site: tuple[SiteKey, Path], reports: dict[str, bytes], tmp_path: Path
) -> None:
    data = reports["md"]
    block = data.index(b"```json fedllm-ledger\n")
    start = data.index(b'"epsilon": ', block) + len(b'"epsilon": ')
    stated = data[start : data.index(b",", start)]
    body = data[: data.rindex(TRAILER)]
    lowered = body[:start] + b"0.5" + body[start + len(stated) :]
    edited = _signed(lowered, site[0])
    with pytest.raises(LedgerError, match="states cumulative epsilon 0.5"):
        verify_site_report(_saved(tmp_path, "md", edited), site[0].public)


def test_tampered_ledger_is_refused_at_write_time(
    site: tuple[SiteKey, Path], tmp_path: Path
) -> None:
    key, ledger = site
    copy = tmp_path / "ledger.jsonl"
    lines = ledger.read_bytes().splitlines(keepends=True)
    lines[1] = lines[1].replace(b'"steps":40', b'"steps":4')
    copy.write_bytes(b"".join(lines))
    (tmp_path / "ledger.jsonl.head").write_bytes(ledger.with_name("ledger.jsonl.head").read_bytes())
    with pytest.raises(LedgerError, match="entry 2"):
        write_site_report(copy, key, tmp_path / "report.md", "md")
    assert not (tmp_path / "report.md").exists()


def test_ledger_signed_by_another_key_is_refused_at_write_time(
    site: tuple[SiteKey, Path], tmp_path: Path
) -> None:
    other = SiteKey.generate(tmp_path / "other.pem")
    with pytest.raises(LedgerError, match="not by the site key"):
        write_site_report(site[1], other, tmp_path / "report.md", "md")


def test_existing_report_is_never_overwritten(site: tuple[SiteKey, Path], tmp_path: Path) -> None:
    out = tmp_path / "report.md"
    out.write_text("the officer's copy")
    with pytest.raises(LedgerError, match="already exists"):
        write_site_report(site[1], site[0], out, "md")
    assert out.read_text() == "the officer's copy"


@pytest.mark.parametrize(
    ("fmt", "prefix"),
    [("md", b"](data:image/png;base64,"), ("html", b'<img alt="cumulative epsilon per ')],
)
def test_report_embeds_the_epsilon_plot_as_a_png(
    fmt: str, prefix: bytes, reports: dict[str, bytes]
) -> None:
    data = reports[fmt]
    start = data.index(b"data:image/png;base64,", data.index(prefix)) + 22
    end = min(data.index(b")", start), data.index(b'"', start))
    assert base64.b64decode(data[start:end]).startswith(b"\x89PNG\r\n\x1a\n")


def test_report_shows_the_policy(reports: dict[str, bytes]) -> None:
    assert b"max-epsilon = 5.0" in reports["md"]


def test_embedded_block_holds_the_exact_ledger_bytes(
    site: tuple[SiteKey, Path], reports: dict[str, bytes]
) -> None:
    text = reports["html"].decode()
    start = text.index('id="fedllm-ledger">\n') + len('id="fedllm-ledger">\n')
    doc = json.loads(text[start : text.index("\n</script>", start)])
    assert "\n".join(doc["ledger"]).encode() == site[1].read_bytes()
