"""Byte-level language modelling as a federated task: next-byte prediction on the sites' plain
text with the small GPT of :mod:`fedllm.models.gpt`, fine-tuned through LoRA adapters (only
the adapters train, go through DP-SGD and are exchanged; every site loads the same frozen base
from `base-model`, written by `fedllm pretrain`: :mod:`fedllm.lm`).

Examples are non-overlapping sequences of `context-length` + 1 bytes of a site's text: one
sequence is the unit of privacy (record-level DP protects any one sequence, not a speaker's
or an author's whole text).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fedllm.config import RunConfig, TrainingDefaults
from fedllm.data.partition import PartitionRequest, partition
from fedllm.data.text import read_text, sequences, split_by_speaker
from fedllm.errors import ConfigError, DataError
from fedllm.models.base_checkpoint import load_base
from fedllm.models.gpt import LORA_TARGETS, VOCAB, GPTArgs, TinyGPT, sequence_loss
from fedllm.models.lora import LoRASpec, add_lora
from fedllm.tasks.base import Federation, SiteData, Source, Split, Task


class TextLM(Task):
    """Next-byte prediction on plain text; `partitioner` natural = sites by speaker group of a
    play, iid = random sequences."""

    name = "text"
    num_classes = VOCAB
    # DP-SGD on LoRA adapters, from the Shakespeare sweep (benchmarks/shakespeare.py).
    defaults = TrainingDefaults(batch_size=64, learning_rate=1.0, max_grad_norm=1.0)

    def architecture(self, cfg: RunConfig) -> nn.Module:
        """The model the run trains (random base, adapters attached), without loading weights."""
        torch.manual_seed(cfg.seed)
        model = TinyGPT(GPTArgs.of(cfg))
        spec = lora_spec(cfg)
        return add_lora(model, spec) if spec else model

    def build_model(self, cfg: RunConfig, input_shape: tuple[int, ...]) -> nn.Module:
        args = GPTArgs.of(cfg)
        if tuple(input_shape) != (args.context_length,):
            raise DataError(
                f"task `text` expects sequences of {args.context_length} bytes, got {input_shape}"
            )
        torch.manual_seed(cfg.seed)
        base = TinyGPT(args)
        if cfg.base_model:
            base.load_state_dict(load_base(cfg.base_model, args, cfg.base_model_sha256))
        torch.manual_seed(cfg.seed + 1)  # adapters: the same at every site and the server
        spec = lora_spec(cfg)
        return add_lora(base, spec) if spec else base

    def loss(self, logits: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        """Per sequence: the mean next-byte cross-entropy over its positions (the per-example
        loss DP-SGD clips); ``reduction`` applies over sequences."""
        return sequence_loss(logits, y, reduction)

    def privacy_unit(self, cfg: RunConfig) -> str:
        return (
            f"one sequence of {cfg.context_length + 1} bytes of a site's text (sequences do not "
            "overlap); a speaker's or a document's whole text spans many sequences and is "
            "protected as a group only"
        )

    def extra_metrics(self, scores: dict[str, float]) -> dict[str, float]:
        return {"perplexity": math.exp(scores["loss"])} if "loss" in scores else {}

    def load_source(self, cfg: RunConfig, path: str) -> Source:
        """Sequences of the text at ``path``; with partitioner natural, grouped by site (one
        per group of speakers of a play)."""
        if not path:
            raise DataError("task `text` needs `data-path`: a plain text file or a folder of them")
        length = GPTArgs.of(cfg).context_length
        if Path(path).is_dir():
            return _folder_source(Path(path), length, cfg.partitioner)
        text = read_text(path)
        if cfg.partitioner == "iid":
            seqs = _sequences(text, length, path)
            return Source(seqs[:, :-1], seqs[:, 1:])
        if cfg.partitioner != "natural":
            raise ConfigError(
                f"task `text` takes `partitioner` natural (by speaker) or iid, "
                f"got {cfg.partitioner!r}"
            )
        parts = [
            _sequences(t, length, f"{path} (speakers of {label})")
            for label, t in split_by_speaker(text, cfg.num_sites)
        ]
        seqs = np.concatenate(parts)
        groups = np.repeat(np.arange(len(parts)), [len(p) for p in parts])
        names = tuple(f"site-{i}" for i in range(len(parts)))
        return Source(seqs[:, :-1], seqs[:, 1:], groups=groups, group_names=names)

    def federation(self, cfg: RunConfig) -> Federation:
        # Bad LoRA keys or a mismatched base fail here, before any site starts.
        lora_spec(cfg)
        if cfg.base_model:
            load_base(cfg.base_model, GPTArgs.of(cfg), cfg.base_model_sha256)
        source = self.load_source(cfg, cfg.data_path)
        parts = partition(
            cfg.partitioner,
            PartitionRequest(
                labels=np.zeros(len(source.x)),
                num_sites=cfg.num_sites,
                seed=cfg.seed,
                groups=source.groups,
            ),
        )
        names = source.group_names or tuple(f"site-{i}" for i in range(len(parts)))
        sites = [
            _site(names[i], source, rows, cfg.test_fraction, cfg.seed + i)
            for i, rows in enumerate(parts)
        ]
        central = Split(torch.cat([s.test.x for s in sites]), torch.cat([s.test.y for s in sites]))
        return Federation(tuple(sites), central, (cfg.context_length,), VOCAB)

    def site(self, cfg: RunConfig, path: str, name: str) -> SiteData:
        seqs = _sequences(read_text(path), cfg.context_length, path)
        source = Source(seqs[:, :-1], seqs[:, 1:])
        return _site(name, source, np.arange(len(seqs)), cfg.test_fraction, cfg.seed)


def _folder_source(folder: Path, length: int, partitioner: str) -> Source:
    """A folder of `*.txt` files: one site per file (partitioner natural), or all of them
    pooled and split at random (iid)."""
    files = sorted(folder.glob("*.txt"))
    if not files:
        raise DataError(f"`data-path` {folder} holds no .txt files")
    parts = [_sequences(read_text(f), length, str(f)) for f in files]
    seqs = np.concatenate(parts)
    if partitioner == "iid":
        return Source(seqs[:, :-1], seqs[:, 1:])
    if partitioner != "natural":
        raise ConfigError(
            f"task `text` takes `partitioner` natural (one site per file) or iid, "
            f"got {partitioner!r}"
        )
    groups = np.repeat(np.arange(len(parts)), [len(p) for p in parts])
    names = tuple(f.stem for f in files)
    return Source(seqs[:, :-1], seqs[:, 1:], groups=groups, group_names=names)


def _sequences(text: bytes, length: int, where: str) -> np.ndarray:
    seqs = sequences(text, length)
    if len(seqs) < 2:
        raise DataError(
            f"{where}: {len(text)} bytes make fewer than 2 sequences of {length + 1} bytes "
            "(one to train, one to test): lower `context-length` or `num-sites`"
        )
    return seqs


def _site(name: str, source: Source, rows: np.ndarray, test_fraction: float, seed: int) -> SiteData:
    order = np.random.default_rng([seed, 7]).permutation(rows)
    n_test = min(len(order) - 1, max(1, round(len(order) * test_fraction)))
    test, train = order[:n_test], order[n_test:]

    def split(r: np.ndarray) -> Split:
        return Split(torch.from_numpy(source.x[r]), torch.from_numpy(source.y[r]))

    return SiteData(name, split(train), split(test))


def lora_spec(cfg: RunConfig) -> LoRASpec | None:
    """The adapters the run asks for; None (`lora-rank` 0) = full fine-tuning."""
    if cfg.lora_rank == 0:
        return None
    targets = tuple(t.strip() for t in cfg.lora_targets.split(",") if t.strip())
    unknown = sorted(set(targets) - set(LORA_TARGETS))
    if unknown:
        raise ConfigError(
            f"`lora-targets` {unknown} unknown; the model's projections are "
            f"{', '.join(LORA_TARGETS)}"
        )
    try:
        return LoRASpec(cfg.lora_rank, cfg.lora_alpha, targets)
    except ValueError as err:
        raise ConfigError(str(err)) from err
