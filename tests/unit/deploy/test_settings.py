"""The deployment commands check their files before starting anything, naming the problem;
node-config values are written as Flower parses them, or refused; the SuperLink listens on
loopback behind the gate."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from fedllm import deploy
from fedllm.cli import main
from fedllm.crypto import create_deployment
from fedllm.errors import CertificateError, ConfigError
from fedllm.privacy import SitePolicy


@pytest.fixture
def site(tmp_path: Path) -> list[str]:
    """`fedllm supernode start` arguments for a complete, valid site (its files made by
    `fedllm site init`, its node key the default SITE_DIR/node.key)."""
    made = create_deployment(tmp_path / "pki", ["localhost"])
    folder = tmp_path / "site"
    deploy.init_site(folder, SitePolicy(max_epsilon=3.0, delta=1e-5))
    data = tmp_path / "processed.cleveland.data"
    data.write_text("63,1,1,145,233,1,2,150,0,2.3,3,0,6,0\n")
    return [
        "supernode", "start", "--superlink", "localhost:8000", "--ca", str(made.ca.cert),
        "--data", str(data), "--site-dir", str(folder), "--name", "hospital-a",
    ]  # fmt: skip


def _folder(site: list[str]) -> Path:
    return Path(site[site.index("--site-dir") + 1])


def _error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(argv) == 2
    return capsys.readouterr().err


def test_a_node_key_others_can_read_is_refused(
    site: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    key = _folder(site) / "node.key"
    key.chmod(0o644)
    err = _error(site, capsys)
    assert f"private key {key} has mode 0644; it must be 0600" in err
    assert "PRIVATE KEY" not in err


def test_a_missing_data_file_is_named(site: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    data = Path(site[site.index("--data") + 1])
    data.unlink()
    assert f"the site's data {data} does not exist" in _error(site, capsys)


def test_a_site_without_its_policy_is_told_how_to_make_one(
    site: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    folder = _folder(site)
    (folder / "policy.toml").unlink()
    assert f"create the site's files with `fedllm site init {folder}`" in _error(site, capsys)


def test_a_site_without_its_superexec_secret_is_told_how_to_make_one(
    site: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    secret = _folder(site) / "superexec.secret"
    secret.unlink()
    assert f"{secret} does not exist: create the site's files with" in _error(site, capsys)


def test_a_superexec_secret_others_can_read_is_refused(
    site: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    secret = _folder(site) / "superexec.secret"
    secret.chmod(0o640)
    err = _error(site, capsys)
    assert f"SuperExec secret {secret} has mode 0640; it must be 0600" in err
    assert secret.read_text() not in err


def test_a_malformed_trusted_apps_file_is_named(
    site: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    trusted = _folder(site) / "trusted-apps.toml"
    trusted.write_text('[[app]]\nsha256 = "not-a-digest"\n')
    err = _error(site, capsys)
    assert f"{trusted}: a FAB digest is 64 hex digits" in err


def test_the_supernode_leaves_clientapps_to_the_executor_and_shares_its_secret(
    tmp_path: Path,
) -> None:
    files = deploy.SiteFiles(tmp_path / "site")
    node = deploy.SiteSettings(
        "h:8000", tmp_path / "ca.crt", files.node_key, tmp_path / "d", files.folder, "s", 9100
    )
    command, executor = node.command(), node.executor_command(None)
    assert command[command.index("--isolation") + 1] == "process"
    secret = "--superexec-auth-secret-file"
    assert command[command.index(secret) + 1] == executor[executor.index(secret) + 1]
    assert executor[executor.index("--trusted-apps") + 1] == str(files.trusted_apps)
    assert executor[executor.index("--runtime-api-address") + 1] == "127.0.0.1:9100"
    assert "--cold" not in executor
    assert "--cold" in replace(node, warm=False).executor_command(None)


def test_the_supernode_is_flowers_with_fedllms_loop_and_a_pipe_to_its_executor(
    tmp_path: Path,
) -> None:
    files = deploy.SiteFiles(tmp_path / "site")
    node = deploy.SiteSettings(
        "h:8000", tmp_path / "ca.crt", files.node_key, tmp_path / "d", files.folder, "s", 9100
    )
    command = node.command(python="py", wakeup_fd=7)
    assert command[:5] == ["py", "-m", deploy.SUPERNODE_MODULE, "--wakeup-fd", "7"]
    executor = node.executor_command(123, wakeup_fd=6)
    assert executor[executor.index("--wakeup-fd") + 1] == "6"
    assert "--wakeup-fd" not in node.command() + node.executor_command(None)


def test_the_superlink_listens_on_loopback_behind_the_gate(tmp_path: Path) -> None:
    link = deploy.SuperLinkSettings(tmp_path, tmp_path, "0.0.0.0", 8000, 9093)
    command, gate = link.command(), link.gate_command()
    assert command[command.index("--host") + 1 :][:3] == ["127.0.0.1", "--port", "9093"]
    assert gate[gate.index("--listen") + 1] == "0.0.0.0:8000"
    assert gate[gate.index("--upstream") + 1] == "127.0.0.1:9093" == link.address()
    assert link.fleet_address("superlink.example.org") == "superlink.example.org:8000"


def test_the_superlinks_state_is_its_file_or_its_memory(tmp_path: Path) -> None:
    on_disk = deploy.SuperLinkSettings(tmp_path, tmp_path / "state").command()
    in_memory = deploy.SuperLinkSettings(tmp_path, None).command()
    assert on_disk[on_disk.index("--database") + 1] == str(tmp_path / "state" / "state.db")
    assert in_memory[in_memory.index("--database") + 1] == ":flwr-in-memory:"
    assert [w for w in on_disk if w != str(tmp_path / "state" / "state.db")] == [
        w for w in in_memory if w != ":flwr-in-memory:"
    ]  # TLS, node authentication, loopback: the same either way


@pytest.mark.parametrize("state", [[], ["--state", "s", "--in-memory"]], ids=["none", "both"])
def test_superlink_start_wants_one_place_for_its_state(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], state: list[str]
) -> None:
    with pytest.raises(SystemExit):
        main(["superlink", "start", str(tmp_path), *state])
    assert "--state" in capsys.readouterr().err


def test_superlink_settings_refuse_one_port_for_both(tmp_path: Path) -> None:
    create_deployment(tmp_path / "pki", ["localhost"])
    with pytest.raises(ConfigError, match="both 8000"):
        deploy.SuperLinkSettings(tmp_path / "pki", tmp_path, "0.0.0.0", 8000, 8000).check()


def test_superlink_settings_refuse_a_certificate_without_loopback(tmp_path: Path) -> None:
    from fedllm.crypto import create_ca, create_server_cert

    ca = create_ca(tmp_path / "pki")
    create_server_cert(tmp_path / "pki", ca, ["superlink.example.org"])
    with pytest.raises(CertificateError, match="does not name 127.0.0.1"):
        deploy.SuperLinkSettings(tmp_path / "pki", tmp_path).check()


def test_superlink_start_refuses_a_folder_without_its_certificate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    made = create_deployment(tmp_path / "pki", ["localhost"])
    made.superlink.cert.unlink()
    err = _error(["superlink", "start", str(tmp_path / "pki"), "--state", str(tmp_path)], capsys)
    assert f"certificate {made.superlink.cert} does not exist" in err


def test_node_config_refuses_a_quote_rather_than_mangling_it() -> None:
    with pytest.raises(ConfigError, match="`data-path`"):
        deploy.node_config_arg({"data-path": '/data/"x".csv'})
    assert deploy.node_config_arg({"a": "/x y", "b": "c"}) == 'a="/x y" b="c"'
