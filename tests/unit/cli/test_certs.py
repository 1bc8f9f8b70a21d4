"""An operator's journeys on the command line: make a deployment's certificates, file a site's
public key, check them; the operator never makes or holds a site's private key; every refusal
exits 2 with the reason."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from fedllm.cli import main
from fedllm.crypto import check_certificate, create_deployment, create_node_keys


def _init(folder: Path, *extra: str) -> int:
    hosts = ["--host", "localhost", "--host", "127.0.0.1"]
    return main(["certs", "init", str(folder), *hosts, *extra])


def _site_key(tmp_path: Path) -> Path:
    """The node.pub a site's `fedllm site init` made (in the site's own folder)."""
    (node,) = create_node_keys(tmp_path / "site", ["node"])
    return node.pub


def _error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("fedllm: error: ")
    return err


def test_init_creates_ca_and_superlink_files_and_no_site_key(tmp_path: Path) -> None:
    folder = tmp_path / "certs"
    assert _init(folder) == 0
    names = {p.relative_to(folder).as_posix() for p in folder.rglob("*")}
    assert names == {"ca.crt", "ca.key", "superlink.crt", "superlink.key", "nodes"}


def test_init_no_longer_makes_site_keys(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exit_:
        _init(tmp_path / "certs", "--site", "hospital-a")
    assert exit_.value.code == 2


def test_init_tells_how_sites_send_their_public_keys(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "certs"
    assert _init(folder) == 0
    out = capsys.readouterr().out
    assert "Each site makes its own keys (`fedllm site init SITE_DIR`)" in out
    assert f"fedllm certs add-site {folder} SITE_NAME node.pub" in out
    assert f"fedllm superlink start {folder} --state ./superlink-state --host 0.0.0.0" in out


def test_init_adds_the_loopback_address_the_gate_and_superexec_dial(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "certs"
    assert main(["certs", "init", str(folder), "--host", "superlink.hospital-net"]) == 0
    assert "(127.0.0.1 added: the gate, the SuperLink's own SuperExec" in capsys.readouterr().out
    assert check_certificate(folder / "superlink.crt").sans == (
        "superlink.hospital-net",
        "127.0.0.1",
    )


def test_init_prints_no_private_key_material(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "certs"
    assert _init(folder) == 0
    printed = "".join(capsys.readouterr())
    bodies = [
        line
        for key in (folder / "ca.key", folder / "superlink.key")
        for line in key.read_text().splitlines()[1:-1]
    ]
    assert "PRIVATE KEY" not in printed and not any(body in printed for body in bodies)


def test_init_refuses_a_folder_that_has_a_ca_and_keeps_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "certs"
    assert _init(folder) == 0
    before = (folder / "ca.key").read_bytes()
    assert _init(folder) == 2
    assert f"{folder}/ca.crt already exists; not overwriting it" in _error(capsys)
    assert (folder / "ca.key").read_bytes() == before


def test_init_without_a_host_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["certs", "init", str(tmp_path / "certs")])
    assert exit_.value.code == 2


def test_add_site_files_the_sites_public_key_and_prints_the_next_steps(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "certs"
    assert _init(folder) == 0
    capsys.readouterr()
    sent = _site_key(tmp_path)
    assert main(["certs", "add-site", str(folder), "hospital-c", str(sent)]) == 0
    out = capsys.readouterr().out
    filed = folder / "nodes/hospital-c.pub"
    assert filed.read_text().split()[:2] == sent.read_text().split()[:2]
    assert f"flwr supernode register {filed} fedllm" in out
    assert "fedllm supernode start --superlink localhost:8000 --ca ca.crt --site-dir" in out
    assert sorted(p.name for p in folder.rglob("*.key")) == ["ca.key", "superlink.key"]


def test_add_site_refuses_a_private_key_and_names_what_to_send(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "certs"
    assert _init(folder) == 0
    private = _site_key(tmp_path).with_suffix(".key")
    assert main(["certs", "add-site", str(folder), "hospital-a", str(private)]) == 2
    err = _error(capsys)
    assert "is a private key: ask the site for its node.pub" in err and "PRIVATE" not in err
    assert not (folder / "nodes/hospital-a.pub").exists()


def test_add_site_refuses_an_existing_site(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "certs"
    assert _init(folder) == 0
    sent = _site_key(tmp_path)
    assert main(["certs", "add-site", str(folder), "hospital-a", str(sent)]) == 0
    assert main(["certs", "add-site", str(folder), "hospital-a", str(sent)]) == 2
    assert "nodes/hospital-a.pub already exists; not overwriting it" in _error(capsys)


def test_add_site_needs_a_ca(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["certs", "add-site", str(tmp_path), "hospital-a", str(_site_key(tmp_path))]) == 2
    assert "has no ca.crt; create it first: fedllm certs init" in _error(capsys)


def test_check_reports_a_sound_deployment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "certs"
    assert _init(folder) == 0
    assert main(["certs", "add-site", str(folder), "hospital-a", str(_site_key(tmp_path))]) == 0
    capsys.readouterr()
    assert main(["certs", "check", str(folder), "--host", "127.0.0.1"]) == 0
    out = capsys.readouterr().out
    assert "OK chain: superlink.crt is signed by ca.crt, names localhost, 127.0.0.1" in out
    assert "OK nodes/hospital-a.pub: SHA256:" in out


def test_check_exits_2_on_an_expired_certificate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "certs"
    create_deployment(folder, ["localhost"], days=1, now=datetime(2020, 1, 1, tzinfo=UTC))
    assert main(["certs", "check", str(folder)]) == 2
    assert f"certificate {folder}/ca.crt expired on 2020-01-02" in _error(capsys)


def test_check_exits_2_on_a_host_the_certificate_does_not_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "certs"
    assert _init(folder) == 0
    assert main(["certs", "check", str(folder), "--host", "superlink.example.org"]) == 2
    assert "does not cover host 'superlink.example.org'" in _error(capsys)


def test_check_exits_2_on_a_private_key_others_can_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "certs"
    assert _init(folder) == 0
    (folder / "superlink.key").chmod(0o640)
    assert main(["certs", "check", str(folder)]) == 2
    assert "superlink.key has mode 0640; it must be 0600" in _error(capsys)


def test_check_exits_2_on_a_sites_private_key_in_the_operators_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "certs"
    assert _init(folder) == 0
    create_node_keys(folder / "nodes", ["hospital-a"])  # what `certs init --site` used to make
    assert main(["certs", "check", str(folder)]) == 2
    assert "hospital-a.key is a site's private key in the operator's folder" in _error(capsys)


def test_check_exits_2_on_a_certificate_without_the_loopback_address(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "certs"
    create_deployment(folder, ["superlink.example.org"])  # made by hand: no 127.0.0.1
    assert main(["certs", "check", str(folder)]) == 2
    assert "does not name 127.0.0.1, where the gate" in _error(capsys)
