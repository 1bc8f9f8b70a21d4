"""A language model's base checkpoint: the self-describing file ``fedllm pretrain`` writes and
every site loads before fine-tuning (format, architecture, training note, weights), readable
with ``torch.load(path, weights_only=True)``.

A base is loaded only for the architecture it was saved with (a mismatch names every
differing setting) and, given the run's ``base-model-sha256``, only if it is that very file:
every site must fine-tune the same base.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import torch

from fedllm.errors import ConfigError, DataError
from fedllm.models.gpt import RUN_CONFIG_KEYS, GPTArgs, TinyGPT

BASE_FORMAT = "fedllm-text-base/1"


def save_base(model: TinyGPT, path: Path, note: dict[str, Any]) -> None:
    """Writes ``model`` with its architecture and ``note`` (how it was trained) to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "format": BASE_FORMAT,
            "args": asdict(model.args),
            "note": note,
            "state": model.state_dict(),
        },
        path,
    )


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_base(path: str | Path, args: GPTArgs, sha256: str = "") -> dict[str, torch.Tensor]:
    """The base weights at ``path``, after checking they were saved for ``args`` (a mismatch
    names every differing setting) and, when ``sha256`` is given, that the file is that one
    (every site must fine-tune the same base)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"`base-model` {p} does not exist (write one with `fedllm pretrain`)")
    if sha256 and file_sha256(p) != sha256.lower():
        raise ConfigError(
            f"`base-model` {p} has SHA-256 {file_sha256(p)}, but the run's `base-model-sha256` "
            f"is {sha256}: this site holds another base than the run fine-tunes"
        )
    try:
        ckpt = torch.load(p, weights_only=True, map_location="cpu")
    except Exception as err:  # a truncated or foreign file
        raise DataError(f"`base-model` {p} is not a readable checkpoint: {err}") from err
    if not isinstance(ckpt, dict) or ckpt.get("format") != BASE_FORMAT:
        raise DataError(f"`base-model` {p} is not a fedllm text base (format {BASE_FORMAT})")
    saved = ckpt["args"]
    wanted = asdict(args)
    differ = [
        f"{RUN_CONFIG_KEYS[k]} {saved.get(k)} in the base, {wanted[k]} in the run config"
        for k in wanted
        if saved.get(k) != wanted[k]
    ]
    if differ:
        raise ConfigError(f"`base-model` {p} has a different architecture: " + "; ".join(differ))
    return ckpt["state"]  # type: ignore[no-any-return]


def load_base_model(path: Path) -> TinyGPT:
    """The model a base checkpoint holds, built for the architecture it records."""
    ckpt = torch.load(path, weights_only=True, map_location="cpu")
    if not isinstance(ckpt, dict) or ckpt.get("format") != BASE_FORMAT:
        raise DataError(f"{path} is not a fedllm text base checkpoint")
    known = {f.name for f in fields(GPTArgs)}
    model = TinyGPT(GPTArgs(**{k: v for k, v in ckpt["args"].items() if k in known}))
    model.load_state_dict(ckpt["state"])
    return model
