"""The deployment commands check their files before starting anything, naming the problem;
node-config values are written as Flower parses them, or refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedllm import deploy
from fedllm.cli import main
from fedllm.crypto import SiteKey, create_deployment
from fedllm.errors import ConfigError
from fedllm.privacy import SitePolicy


@pytest.fixture
def site(tmp_path: Path) -> list[str]:
    """`fedllm supernode start` arguments for a complete, valid site."""
    made = create_deployment(tmp_path / "pki", ["localhost"], ["hospital-a"])
    folder = tmp_path / "site"
    folder.mkdir()
    SitePolicy(max_epsilon=3.0, delta=1e-5).write(folder / "policy.toml")
    SiteKey.generate(folder / "site-key.pem")
    data = tmp_path / "processed.cleveland.data"
    data.write_text("63,1,1,145,233,1,2,150,0,2.3,3,0,6,0\n")
    return [
        "supernode", "start", "--superlink", "localhost:8000", "--ca", str(made.ca.cert),
        "--key", str(made.nodes[0].key), "--data", str(data), "--site-dir", str(folder),
        "--name", "hospital-a",
    ]  # fmt: skip


def _error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(argv) == 2
    return capsys.readouterr().err


def test_a_node_key_others_can_read_is_refused(
    site: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    key = Path(site[site.index("--key") + 1])
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
    folder = Path(site[site.index("--site-dir") + 1])
    (folder / "policy.toml").unlink()
    assert f"create the site's files with `fedllm site init {folder}`" in _error(site, capsys)


def test_superlink_start_refuses_a_folder_without_its_certificate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    made = create_deployment(tmp_path / "pki", ["localhost"], [])
    made.superlink.cert.unlink()
    err = _error(["superlink", "start", str(tmp_path / "pki"), "--state", str(tmp_path)], capsys)
    assert f"certificate {made.superlink.cert} does not exist" in err


def test_node_config_refuses_a_quote_rather_than_mangling_it() -> None:
    with pytest.raises(ConfigError, match="`data-path`"):
        deploy.node_config_arg({"data-path": '/data/"x".csv'})
    assert deploy.node_config_arg({"a": "/x y", "b": "c"}) == 'a="/x y" b="c"'
