"""``fedllm checkpoint show|export``: what one of the server's per-round checkpoints holds,
and its model as a torch ``state_dict``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fedllm.checkpoint import Checkpoint


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ckpt = commands.add_parser(
        "checkpoint", help="inspect a server checkpoint or export its model"
    ).add_subparsers(dest="checkpoint_command", required=True)
    key_help = (
        "key file (64 hex digits); default: $FEDLLM_CHECKPOINT_KEY, else "
        "~/.config/fedllm/checkpoint.key"
    )
    show = ckpt.add_parser("show", help="round, format, privacy spend and config of a checkpoint")
    show.add_argument("path", type=Path, metavar="CKPT", help="a .ckpt file or a run folder")
    show.add_argument("--key", default="", metavar="FILE", help=key_help)
    show.set_defaults(run=_checkpoint_show)
    export = ckpt.add_parser("export", help="the checkpoint's model as a torch state_dict file")
    export.add_argument("path", type=Path, metavar="CKPT", help="a .ckpt file or a run folder")
    export.add_argument("--out", type=Path, required=True, metavar="FILE")
    export.add_argument("--key", default="", metavar="FILE", help=key_help)
    export.set_defaults(run=_checkpoint_export)


def _open_checkpoint(args: argparse.Namespace) -> tuple[Path, Checkpoint]:
    from fedllm.checkpoint import latest_checkpoint, load_checkpoint, read_header
    from fedllm.crypto.seal import SealKey

    path: Path = latest_checkpoint(args.path) if args.path.is_dir() else args.path
    header, _, _ = read_header(path)
    key = SealKey.resolve(args.key, create=False) if header.get("format") == "encrypted" else None
    return path, load_checkpoint(path, key)


def _checkpoint_show(args: argparse.Namespace) -> int:
    from fedllm.checkpoint import read_header

    path, loaded = _open_checkpoint(args)
    header, _, _ = read_header(path)
    print(f"checkpoint {path}: round {loaded.server_round}, {header['format']}")
    if header.get("key-fingerprint"):
        print(f"  key fingerprint {header['key-fingerprint']} (authenticated: yes)")
    print(f"  arrays: {', '.join(f'{k} {list(a.shape)}' for k, a in loaded.arrays.items())}")
    print(f"  privacy spend: {json.dumps(loaded.privacy, sort_keys=True)}")
    print(f"  model: {json.dumps(loaded.model, sort_keys=True)}")
    print(f"  task {loaded.config.get('task')}, seed {loaded.config.get('seed')}")
    return 0


def _checkpoint_export(args: argparse.Namespace) -> int:
    import torch

    from fedllm.errors import CheckpointError

    path, loaded = _open_checkpoint(args)
    if args.out.exists():
        raise CheckpointError(f"{args.out} already exists; not overwriting it")
    torch.save(loaded.arrays.to_torch_state_dict(), args.out)
    print(f"fedllm: round {loaded.server_round} model of {path} written to {args.out}")
    return 0
