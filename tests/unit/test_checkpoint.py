"""Encrypted checkpoints: the round trip, and refusals for a wrong key or a modified file;
what a checkpoint carries for resuming a run, and the checkpoints a resume refuses."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord

from fedllm.checkpoint import (
    RUN_ID,
    RUN_NAME,
    Checkpoint,
    Checkpointer,
    load_checkpoint,
    load_for_resume,
    save_checkpoint,
)
from fedllm.crypto.seal import KEY_ENV, SealKey
from fedllm.errors import CheckpointError
from fedllm.tasks.tabular import TabularModel
from fedllm.weights import to_arrays


def _key(tmp_path: Path, name: str = "k.key") -> SealKey:
    path = tmp_path / "keys" / name
    path.parent.mkdir(exist_ok=True)
    path.write_text(os.urandom(32).hex())
    path.chmod(0o600)
    return SealKey.from_file(path)


def _checkpoint() -> Checkpoint:
    torch.manual_seed(0)
    return Checkpoint(
        3,
        to_arrays(TabularModel(6, 4)),
        {"task": "breast-cancer", "seed": 0},
        {"epsilon": {"site-0": 0.52}, "delta": 1e-5},
        {"input-shape": [6]},
    )


def test_an_encrypted_checkpoint_round_trips_and_hides_its_arrays(tmp_path: Path) -> None:
    key, saved = _key(tmp_path), _checkpoint()
    path = tmp_path / "round-0003.ckpt"
    save_checkpoint(path, saved, key)
    weights = saved.arrays["net.0.weight"].numpy().tobytes()
    assert weights not in path.read_bytes() and b"site-0" not in path.read_bytes()
    loaded = load_checkpoint(path, key)
    assert loaded.server_round == 3 and loaded.privacy == saved.privacy
    assert loaded.config == saved.config and loaded.model == saved.model
    for name, array in saved.arrays.items():
        assert np.array_equal(loaded.arrays[name].numpy(), array.numpy())
    TabularModel(6, 4).load_state_dict(loaded.arrays.to_torch_state_dict())


def test_a_wrong_key_is_named_as_such(tmp_path: Path) -> None:
    path = tmp_path / "c.ckpt"
    save_checkpoint(path, _checkpoint(), _key(tmp_path))
    with pytest.raises(CheckpointError, match="wrong key for checkpoint"):
        load_checkpoint(path, _key(tmp_path, "other.key"))
    with pytest.raises(CheckpointError, match="is encrypted; give its key"):
        load_checkpoint(path)


@pytest.mark.parametrize("where", [-1, 40, 200])  # last byte, in the header, in the body
def test_any_modified_byte_is_refused(tmp_path: Path, where: int) -> None:
    key, path = _key(tmp_path), tmp_path / "c.ckpt"
    save_checkpoint(path, _checkpoint(), key)
    data = bytearray(path.read_bytes())
    data[where] ^= 0x01
    path.chmod(0o600)
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="modified|damaged|not a fedllm|wrong key"):
        load_checkpoint(path, key)


def test_plain_checkpoints_for_research_load_without_a_key(tmp_path: Path) -> None:
    path = tmp_path / "plain.ckpt"
    save_checkpoint(path, _checkpoint(), None)
    assert load_checkpoint(path).server_round == 3


def test_the_default_key_is_created_outside_the_run_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.delenv(KEY_ENV, raising=False)
    run = tmp_path / "runs" / "r1"
    run.mkdir(parents=True)
    writer = Checkpointer.for_run("encrypted", "", run, {}, {})
    assert writer is not None and writer.key is not None
    key_file = tmp_path / "config" / "fedllm" / "checkpoint.key"
    assert writer.key.source == str(key_file) and (key_file.stat().st_mode & 0o777) == 0o600
    path = writer.save(1, _checkpoint().arrays, {})
    assert load_checkpoint(path, SealKey.resolve(create=False)).server_round == 1
    inside = run / "checkpoints" / "k.key"  # beside the checkpoints of an earlier run
    inside.write_text(os.urandom(32).hex())
    inside.chmod(0o600)
    later = run.parent / "r2"
    later.mkdir()
    with pytest.raises(CheckpointError, match="inside the run folder .*r1"):
        Checkpointer.for_run("encrypted", str(inside), later, {}, {})


def test_a_key_from_the_environment_and_a_malformed_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, os.urandom(32).hex())
    assert SealKey.resolve().source == KEY_ENV
    monkeypatch.setenv(KEY_ENV, "not-hex")
    with pytest.raises(CheckpointError, match="64 hex digits"):
        SealKey.resolve()


def test_the_cli_shows_and_exports_a_run_folders_latest_checkpoint(tmp_path: Path) -> None:
    from fedllm.cli import main

    key = _key(tmp_path)
    run = tmp_path / "run"
    for server_round in (1, 2):
        saved = _checkpoint()
        save_checkpoint(
            run / "checkpoints" / f"round-{server_round:04d}.ckpt",
            Checkpoint(server_round, saved.arrays, saved.config, saved.privacy, saved.model),
            key,
        )
    out = tmp_path / "model.pt"
    assert main(["checkpoint", "export", str(run), "--out", str(out), "--key", key.source]) == 0
    state = torch.load(out, weights_only=True)
    assert set(state) == set(_checkpoint().arrays)
    assert main(["checkpoint", "show", str(run), "--key", _key(tmp_path, "x.key").source]) == 2


# Resume (issue 18): what a checkpoint carries for it, and the checkpoints it refuses.


def _run_folder(tmp_path: Path, key: SealKey | None, name: str = "run") -> Path:
    """A run folder with checkpoints of rounds 1 and 2 as a run writes them."""
    run = tmp_path / "runs" / name
    identity = {RUN_ID: "77", RUN_NAME: name}
    writer = Checkpointer(run, key, {"task": "breast-cancer"}, {"input-shape": [6]}, identity)
    saved = _checkpoint()
    for server_round in (1, 2):
        moments = ArrayRecord({"m.w": Array(np.full(3, server_round, dtype=np.float64))})
        history = {"rounds": [{"round": r} for r in range(1, server_round + 1)]}
        writer.save(server_round, saved.arrays, saved.privacy, history, moments)
    return run


def test_a_checkpoint_carries_the_run_its_history_and_the_strategys_arrays(
    tmp_path: Path,
) -> None:
    key = _key(tmp_path)
    run = _run_folder(tmp_path, key)
    loaded = load_for_resume(run, "encrypted", key)
    assert loaded.server_round == 2 and loaded.run == {RUN_ID: "77", RUN_NAME: "run"}
    assert loaded.history == {"rounds": [{"round": 1}, {"round": 2}]}
    assert list(loaded.strategy) == ["m.w"] and loaded.strategy["m.w"].numpy().tolist() == [2] * 3
    assert set(loaded.arrays) == set(_checkpoint().arrays)  # the model's arrays stay apart


def test_resume_refuses_what_cannot_continue_the_run(tmp_path: Path) -> None:
    key = _key(tmp_path)
    run = _run_folder(tmp_path, key)
    with pytest.raises(CheckpointError, match='not "off"'):
        load_for_resume(run, "off", None)
    with pytest.raises(CheckpointError, match="is not a run folder"):
        load_for_resume(tmp_path / "runs" / "nope", "encrypted", key)
    with pytest.raises(CheckpointError, match="wrong key for checkpoint"):
        load_for_resume(run, "encrypted", _key(tmp_path, "other.key"))
    (run / "checkpoints" / "round-0002.ckpt").rename(run / "checkpoints" / "round-0003.ckpt")
    with pytest.raises(CheckpointError, match="holds round 2: it was renamed"):
        load_for_resume(run, "encrypted", key)


def test_resume_refuses_another_runs_checkpoint(tmp_path: Path) -> None:
    key = _key(tmp_path)
    run, other = _run_folder(tmp_path, key), _run_folder(tmp_path, key, "other")
    copied = run / "checkpoints" / "round-0003.ckpt"
    copied.write_bytes((other / "checkpoints" / "round-0002.ckpt").read_bytes())
    copied.rename(run / "checkpoints" / "round-0002.ckpt")  # the last one: it names round 2
    with pytest.raises(CheckpointError, match="belongs to another run: run 'other'"):
        load_for_resume(run, "encrypted", key)


def test_resume_refuses_a_plain_checkpoint_where_checkpoints_are_encrypted(
    tmp_path: Path,
) -> None:
    """A plain file is not authenticated: anyone who can write the folder could have made it."""
    run = _run_folder(tmp_path, None)
    with pytest.raises(CheckpointError, match="is plain, not encrypted"):
        load_for_resume(run, "encrypted", _key(tmp_path))
    assert load_for_resume(run, "plain", None).server_round == 2  # research runs resume


def test_resume_refuses_a_checkpoint_written_before_runs_could_be_resumed(
    tmp_path: Path,
) -> None:
    key, run = _key(tmp_path), tmp_path / "old"
    save_checkpoint(
        run / "checkpoints" / "round-0001.ckpt", replace(_checkpoint(), server_round=1), key
    )
    with pytest.raises(CheckpointError, match="before runs could be resumed"):
        load_for_resume(run, "encrypted", key)
