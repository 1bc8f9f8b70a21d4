"""The Flower CLI's connection entry is written without disturbing the others."""

from __future__ import annotations

import tomllib
from pathlib import Path

from fedllm import deploy


def test_write_connection_replaces_its_entry_and_keeps_the_others(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text(
        '[superlink]\ndefault = "local"\n\n[superlink.local]\noptions.num-supernodes = 4\n\n'
        '[superlink.fedllm]\naddress = "old:1"\n'
    )
    deploy.write_connection(tmp_path, "fedllm", "10.0.0.5:8000", tmp_path / "ca.crt")

    config = tomllib.loads((tmp_path / "config.toml").read_text())
    assert config["superlink"]["default"] == "local"
    assert config["superlink"]["local"]["options"]["num-supernodes"] == 4
    assert config["superlink"]["fedllm"] == {
        "address": "10.0.0.5:8000",
        "root-certificates": str((tmp_path / "ca.crt").resolve()),
    }
