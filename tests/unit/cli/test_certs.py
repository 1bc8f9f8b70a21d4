"""An operator's journeys on the command line: make a deployment's certificates and keys, add a
site, check them; every refusal exits 2 with the reason."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from fedllm.cli import main
from fedllm.crypto import check_certificate, create_deployment


def _init(folder: Path, *extra: str) -> int:
    hosts = ["--host", "localhost", "--host", "127.0.0.1"]
    return main(["certs", "init", str(folder), *hosts, "--site", "hospital-a", *extra])


def _error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("fedllm: error: ")
    return err


def test_init_creates_ca_superlink_and_node_files(tmp_path: Path) -> None:
    folder = tmp_path / "certs"
    assert _init(folder, "--site", "hospital-b") == 0
    names = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    assert names == {
        "ca.crt",
        "ca.key",
        "superlink.crt",
        "superlink.key",
        "nodes/hospital-a.key",
        "nodes/hospital-a.pub",
        "nodes/hospital-b.key",
        "nodes/hospital-b.pub",
    }


def test_init_prints_the_flower_flags_for_superlink_register_and_supernode(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "certs"
    assert _init(folder) == 0
    out = capsys.readouterr().out
    assert (
        f"flower-superlink --ssl-ca-certfile {folder}/ca.crt --ssl-certfile "
        f"{folder}/superlink.crt --ssl-keyfile {folder}/superlink.key --enable-supernode-auth"
    ) in out
    assert f"flwr supernode register {folder}/nodes/hospital-a.pub fedllm" in out
    assert (
        f"flower-supernode --superlink localhost:8000 --root-certificates {folder}/ca.crt "
        f"--auth-supernode-private-key {folder}/nodes/hospital-a.key"
    ) in out


def test_init_adds_the_loopback_address_the_superlinks_superexec_dials(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "certs"
    assert main(["certs", "init", str(folder), "--host", "superlink.hospital-net"]) == 0
    assert "(127.0.0.1 added: the SuperLink's own SuperExec" in capsys.readouterr().out
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
        for key in (folder / "ca.key", folder / "superlink.key", folder / "nodes/hospital-a.key")
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


def test_add_site_makes_a_key_pair_and_prints_its_supernode_flags(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "certs"
    assert _init(folder) == 0
    capsys.readouterr()
    assert main(["certs", "add-site", str(folder), "hospital-c"]) == 0
    out = capsys.readouterr().out
    assert (folder / "nodes/hospital-c.key").stat().st_mode & 0o777 == 0o600
    assert f"--auth-supernode-private-key {folder}/nodes/hospital-c.key" in out


def test_add_site_refuses_an_existing_site(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "certs"
    assert _init(folder) == 0
    assert main(["certs", "add-site", str(folder), "hospital-a"]) == 2
    assert "nodes/hospital-a.key already exists; not overwriting it" in _error(capsys)


def test_add_site_needs_a_ca(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["certs", "add-site", str(tmp_path), "hospital-a"]) == 2
    assert "has no ca.crt; create it first: fedllm certs init" in _error(capsys)


def test_check_reports_a_sound_deployment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "certs"
    assert _init(folder) == 0
    capsys.readouterr()
    assert main(["certs", "check", str(folder), "--host", "127.0.0.1"]) == 0
    out = capsys.readouterr().out
    assert "OK chain: superlink.crt is signed by ca.crt, names localhost, 127.0.0.1" in out
    assert "OK nodes/hospital-a.pub: SHA256:" in out


def test_check_exits_2_on_an_expired_certificate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "certs"
    create_deployment(folder, ["localhost"], [], days=1, now=datetime(2020, 1, 1, tzinfo=UTC))
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
    (folder / "nodes/hospital-a.key").chmod(0o640)
    assert main(["certs", "check", str(folder)]) == 2
    assert "hospital-a.key has mode 0640; it must be 0600" in _error(capsys)
