"""Self-describing server checkpoints: arrays, round, run config, privacy spend, model card,
and what a resumed run needs (the run's identity, its metrics so far, the strategy's state).

One file per round, ``<run folder>/checkpoints/round-NNNN.ckpt``, never overwritten. Layout:
``MAGIC | header length (8 bytes, little endian) | header (JSON) | body``. The header says
how the body is stored (``encrypted``: AES-256-GCM under the key whose fingerprint it names,
the header authenticated with it; ``plain``: raw, for research) and where each array lies in
the body (``record``: the global model's ``model``, or ``strategy`` for the server strategy's
own arrays, e.g. FedAdam's moments). Nothing is pickled: arrays are raw bytes with their dtype
and shape.

:func:`load_for_resume` reads a run folder's last checkpoint for ``resume-from`` and refuses
one that cannot continue that run: the wrong key, a plain file where checkpoints are
encrypted, a file renamed from another round, or a checkpoint of another run.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord

from fedllm.crypto.seal import SealKey
from fedllm.errors import CheckpointError
from fedllm.files import write_new

MAGIC = b"FEDLLM-CHECKPOINT\x00v1\n"
MODEL, STRATEGY = "model", "strategy"  # the two array records a checkpoint holds
RUN_ID, RUN_NAME = "run-id", "run-name"  # a checkpoint's run: its id at the sites, its folder


@dataclass(frozen=True)
class Checkpoint:
    """What a checkpoint holds."""

    server_round: int
    arrays: ArrayRecord
    config: dict[str, Any]
    privacy: dict[str, Any]  # per-site cumulative epsilon, delta
    model: dict[str, Any]  # the model card (task, input shape, ...)
    # The run it belongs to: RUN_ID (what the sites' ledgers record it under) and RUN_NAME (its
    # folder's name); empty in checkpoints written before runs could be resumed.
    run: dict[str, str] = field(default_factory=dict)
    history: dict[str, Any] = field(default_factory=dict)  # metrics.json's rounds so far
    strategy: ArrayRecord = field(default_factory=ArrayRecord)  # the strategy's own arrays


def checkpoint_path(run_dir: Path, server_round: int) -> Path:
    return run_dir / "checkpoints" / f"round-{server_round:04d}.ckpt"


def save_checkpoint(path: Path, checkpoint: Checkpoint, key: SealKey | None) -> None:
    """Write ``checkpoint`` to the new file ``path``; encrypted unless ``key`` is None."""
    body, layout, offset = [], [], 0
    records = ((MODEL, checkpoint.arrays), (STRATEGY, checkpoint.strategy))
    for record, arrays in records:
        for name, array in arrays.items():
            values = np.ascontiguousarray(array.numpy())
            spec = {"name": name, "record": record, "dtype": values.dtype.str}
            layout.append(spec | {"shape": list(values.shape), "offset": offset})
            body.append(values.tobytes())
            offset += values.nbytes
    header: dict[str, Any] = {
        "format": "encrypted" if key else "plain",
        "cipher": "AES-256-GCM" if key else None,
        "key-fingerprint": key.fingerprint if key else None,
        "round": checkpoint.server_round,
        "arrays": layout,
    }
    meta = {
        "config": checkpoint.config,
        "privacy": checkpoint.privacy,
        "model": checkpoint.model,
        "run": checkpoint.run,
        "history": checkpoint.history,
    }
    payload = json.dumps(meta).encode() + b"\n" + b"".join(body)
    header["meta-length"] = len(json.dumps(meta).encode())
    head = json.dumps(header, sort_keys=True).encode()
    prefix = MAGIC + struct.pack("<Q", len(head)) + head
    data = prefix + (key.seal(prefix, payload) if key else payload)
    write_new(path, data, 0o600, CheckpointError, "checkpoint")


def read_header(path: Path) -> tuple[dict[str, Any], bytes, bytes]:
    """(header, authenticated prefix, body) of the checkpoint at ``path``."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise CheckpointError(f"cannot read checkpoint {path}: {err.strerror}") from None
    if not data.startswith(MAGIC) or len(data) < len(MAGIC) + 8:
        raise CheckpointError(f"{path} is not a fedllm checkpoint")
    (length,) = struct.unpack("<Q", data[len(MAGIC) : len(MAGIC) + 8])
    end = len(MAGIC) + 8 + length
    try:
        header = json.loads(data[len(MAGIC) + 8 : end])
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(f"checkpoint {path} has a damaged header") from None
    return header, data[:end], data[end:]


def load_checkpoint(path: Path, key: SealKey | None = None) -> Checkpoint:
    """Read a checkpoint; an encrypted one needs the key it was written with.

    Raises :class:`CheckpointError` for a wrong or missing key, a modified file, or a plain
    checkpoint whose body does not match its header; never returns a silently wrong model."""
    header, prefix, body = read_header(path)
    if header.get("format") == "encrypted":
        if key is None:
            raise CheckpointError(f"checkpoint {path} is encrypted; give its key")
        if key.fingerprint != header.get("key-fingerprint"):
            raise CheckpointError(
                f"wrong key for checkpoint {path}: it was written with key "
                f"{header.get('key-fingerprint')}, the key from {key.source} is {key.fingerprint}"
            )
        body = key.open(prefix, body, f"checkpoint {path}")
    elif header.get("format") != "plain":
        raise CheckpointError(f"checkpoint {path} has an unknown format {header.get('format')!r}")
    try:
        meta_len = int(header["meta-length"])
        meta = json.loads(body[:meta_len])
        raw = body[meta_len + 1 :]
        arrays: dict[str, dict[str, Array]] = {MODEL: {}, STRATEGY: {}}
        end = 0
        for spec in header["arrays"]:
            dtype = np.dtype(spec["dtype"])
            if dtype.hasobject:
                raise ValueError(spec["name"])  # never unpickle
            count = int(np.prod(spec["shape"]))
            start = int(spec["offset"])
            chunk = raw[start : start + count * dtype.itemsize]
            if len(chunk) != count * dtype.itemsize:
                raise ValueError(spec["name"])
            array = Array(np.frombuffer(chunk, dtype).reshape(spec["shape"]).copy())
            arrays[spec.get("record", MODEL)][spec["name"]] = array
            end = max(end, start + len(chunk))
        if len(raw) != end:
            raise ValueError("trailing bytes")
    except (KeyError, ValueError, TypeError, json.JSONDecodeError):
        raise CheckpointError(f"checkpoint {path}: its body does not match its header") from None
    return Checkpoint(
        int(header["round"]),
        ArrayRecord(arrays[MODEL]),
        meta["config"],
        meta["privacy"],
        meta["model"],
        meta.get("run", {}),
        meta.get("history", {}),
        ArrayRecord(arrays[STRATEGY]),
    )


def latest_checkpoint(run_dir: Path) -> Path:
    found = sorted((run_dir / "checkpoints").glob("round-*.ckpt"))
    if not found:
        raise CheckpointError(f"no checkpoint in {run_dir / 'checkpoints'}")
    return found[-1]


def load_for_resume(run_dir: Path, mode: str, key: SealKey | None) -> Checkpoint:
    """The last checkpoint of the run in ``run_dir``, to continue it (``mode`` and ``key``:
    the resumed run's `checkpoint` setting and key). Refuses, naming the file: a folder
    without checkpoints, a plain checkpoint when checkpoints are encrypted (anyone could have
    written it), the wrong key, a file whose round is not its name's, a checkpoint written
    before resuming existed, or one of another run."""
    if mode == "off":
        raise CheckpointError(
            "`resume-from` continues a run from its checkpoints: set `checkpoint` to "
            '"encrypted" (or "plain"), not "off"'
        )
    if not run_dir.is_dir():
        raise CheckpointError(f"`resume-from` {run_dir} is not a run folder")
    path = latest_checkpoint(run_dir)
    header, _, _ = read_header(path)
    if mode == "encrypted" and header.get("format") != "encrypted":
        raise CheckpointError(
            f"checkpoint {path} is {header.get('format')}, not encrypted: a run whose "
            "checkpoints are encrypted resumes only from an encrypted (authenticated) one"
        )
    checkpoint = load_checkpoint(path, key)
    if path.name != checkpoint_path(run_dir, checkpoint.server_round).name:
        raise CheckpointError(
            f"checkpoint {path} holds round {checkpoint.server_round}: it was renamed"
        )
    if RUN_ID not in checkpoint.run:
        raise CheckpointError(
            f"checkpoint {path} was written before runs could be resumed (no run identity)"
        )
    if checkpoint.run.get(RUN_NAME) != run_dir.name:
        raise CheckpointError(
            f"checkpoint {path} belongs to another run: run {checkpoint.run.get(RUN_NAME)!r} "
            f"(run id {checkpoint.run.get(RUN_ID)}), not {run_dir.name!r}"
        )
    return checkpoint


@dataclass(frozen=True)
class Checkpointer:
    """Writes a run's checkpoint after every round: encrypted (default) or plain."""

    run_dir: Path
    key: SealKey | None
    config: dict[str, Any]
    model: dict[str, Any]
    run: dict[str, str] = field(default_factory=dict)  # the run's identity (see Checkpoint)

    @classmethod
    def for_run(
        cls,
        mode: str,
        key_file: str,
        run_dir: Path,
        config: dict[str, Any],
        model: dict[str, Any],
        run: dict[str, str] | None = None,
    ) -> Checkpointer | None:
        """None when ``mode`` is ``off``. The key must not live in a run folder (this one or
        another holding checkpoints): whoever copies checkpoints must not get the key too."""
        if mode == "off":
            return None
        key = SealKey.resolve(key_file) if mode == "encrypted" else None
        if key is not None and key.source != "FEDLLM_CHECKPOINT_KEY":
            where, runs = Path(key.source).resolve(), run_dir.resolve().parent
            inside = where.relative_to(runs).parts if where.is_relative_to(runs) else ()
            if len(inside) > 1 and (
                runs / inside[0] == run_dir.resolve() or (runs / inside[0] / "checkpoints").is_dir()
            ):
                raise CheckpointError(
                    f"checkpoint key {where} lies inside the run folder {runs / inside[0]}: keep "
                    "the key apart from the checkpoints it protects"
                )
        return cls(run_dir, key, config, model, dict(run or {}))

    def describe(self) -> str:
        folder = self.run_dir / "checkpoints"
        if self.key is None:
            return f'checkpoints PLAIN (unencrypted, `checkpoint = "plain"`) in {folder}'
        return (
            f"checkpoints encrypted (AES-256-GCM) in {folder}; key from {self.key.source} "
            f"(fingerprint {self.key.fingerprint})"
        )

    def save(
        self,
        server_round: int,
        arrays: ArrayRecord,
        privacy: dict[str, Any],
        history: dict[str, Any] | None = None,
        strategy: ArrayRecord | None = None,
    ) -> Path:
        path = checkpoint_path(self.run_dir, server_round)
        checkpoint = Checkpoint(
            server_round,
            arrays,
            self.config,
            privacy,
            self.model,
            self.run,
            history or {},
            strategy or ArrayRecord(),
        )
        save_checkpoint(path, checkpoint, self.key)
        return path
