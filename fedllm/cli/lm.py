"""``fedllm pretrain`` and ``fedllm generate``: the language model's journey outside the
federation, a base pretrained centrally on public text, and text sampled from a run."""

from __future__ import annotations

import argparse
from pathlib import Path

from fedllm.cli.overrides import add_run_config_option, parse_overrides


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    pre = commands.add_parser(
        "pretrain", help="train a text task's base model centrally on public text and save it"
    )
    pre.add_argument("--text", type=Path, required=True, help="public plain text to train on")
    pre.add_argument("--out", type=Path, required=True, help="the base checkpoint to write")
    pre.add_argument("--steps", type=int, default=2000)
    pre.add_argument("--batch-size", type=int, default=64)
    pre.add_argument("--learning-rate", type=float, default=1e-2, help="AdamW peak rate")
    add_run_config_option(
        pre, "architecture keys, as for `fedllm simulate` (-c lm-layers=4 -c lm-width=128)"
    )
    pre.set_defaults(run=_pretrain)
    gen = commands.add_parser("generate", help="sample text from a trained language model")
    gen.add_argument(
        "--model",
        type=Path,
        required=True,
        help="a run folder (base + merged adapters) or a base .pt",
    )
    gen.add_argument("--prompt", default="", help="text to continue")
    gen.add_argument("--tokens", type=int, default=300, help="bytes to sample")
    gen.add_argument("--temperature", type=float, default=0.8)
    gen.add_argument("--seed", type=int, default=0)
    gen.set_defaults(run=_generate)


def _pretrain(args: argparse.Namespace) -> int:
    from fedllm.errors import ConfigError

    if args.steps < 1 or args.batch_size < 1 or not args.learning_rate > 0:
        raise ConfigError("--steps, --batch-size and --learning-rate must be > 0")
    if args.out.exists():
        raise ConfigError(f"--out {args.out} exists; choose another path")
    overrides = parse_overrides(args.run_config)

    from fedllm.config import RunConfig
    from fedllm.data.text import read_text
    from fedllm.lm import Pretraining, pretrain
    from fedllm.models.base_checkpoint import file_sha256
    from fedllm.simulation import default_config

    cfg = RunConfig.from_flower({**default_config(), **overrides})
    settings = Pretraining(args.steps, args.batch_size, args.learning_rate, cfg.seed)
    note = pretrain(cfg, read_text(args.text), settings, args.out, lambda s: print(s, flush=True))
    print(f"base model: {args.out} (final training loss {note['final-loss']:.3f})")
    print(
        f"use it with: -c 'task=\"text\"' -c 'base-model=\"{args.out}\"' "
        f"-c 'base-model-sha256=\"{file_sha256(args.out)}\"'"
    )
    return 0


def _generate(args: argparse.Namespace) -> int:
    from fedllm.lm import generate, load_trained

    model, _ = load_trained(args.model)
    print(generate(model, args.prompt, args.tokens, args.temperature, args.seed))
    return 0
