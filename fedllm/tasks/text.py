"""Byte-level language modelling: a small decoder-only transformer, pretrained centrally on
public text, then fine-tuned at the sites through LoRA adapters (only the adapters train, go
through DP-SGD and are exchanged; every site loads the same frozen base from `base-model`).

Examples are non-overlapping sequences of `context-length` + 1 bytes of a site's text: one
sequence is the unit of privacy (record-level DP protects any one sequence, not a speaker's
or an author's whole text).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from fedllm.config import RunConfig, TrainingDefaults
from fedllm.data.partition import PartitionRequest, partition
from fedllm.data.text import read_text, sequences, split_by_speaker
from fedllm.errors import ConfigError, DataError
from fedllm.models.lora import LoRASpec, add_lora
from fedllm.tasks.base import Federation, SiteData, Source, Split, Task

VOCAB = 256  # bytes
BASE_FORMAT = "fedllm-text-base/1"


@dataclass(frozen=True)
class GPTArgs:
    """The architecture: what a base checkpoint records and a run must match."""

    context_length: int
    layers: int
    heads: int
    width: int
    vocab: int = VOCAB

    def __post_init__(self) -> None:
        for name in ("context_length", "layers", "heads", "width"):
            if getattr(self, name) < 1:
                raise ConfigError(f"`{_KEY[name]}` must be >= 1, got {getattr(self, name)}")
        if self.width % self.heads:
            raise ConfigError(
                f"`lm-width` ({self.width}) must be a multiple of `lm-heads` ({self.heads})"
            )

    @classmethod
    def of(cls, cfg: RunConfig) -> GPTArgs:
        return cls(cfg.context_length, cfg.lm_layers, cfg.lm_heads, cfg.lm_width)


_KEY = {
    "context_length": "context-length",
    "layers": "lm-layers",
    "heads": "lm-heads",
    "width": "lm-width",
    "vocab": "vocab",
}


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


# Attention: q, k, v, o; MLP: up, down.
LORA_TARGETS = ("q", "k", "v", "o", "up", "down")


class Attention(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v = (nn.Linear(width, width) for _ in range(3))
        self.o = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, C)
        b, t, c = x.shape

        def split(z: torch.Tensor) -> torch.Tensor:  # (B, T, C) -> (B, H, T, C/H)
            return z.view(b, t, self.heads, c // self.heads).transpose(1, 2)

        y = F.scaled_dot_product_attention(
            split(self.q(x)), split(self.k(x)), split(self.v(x)), is_causal=True
        )
        return self.o(y.transpose(1, 2).reshape(b, t, c))  # type: ignore[no-any-return]


class Block(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attn = Attention(width, heads)
        self.up, self.down = nn.Linear(width, 4 * width), nn.Linear(4 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, C)
        x = x + self.attn(self.ln1(x))
        return x + self.down(F.gelu(self.up(self.ln2(x))))  # type: ignore[no-any-return]


class TinyGPT(nn.Module):
    """A GPT-2-style decoder (pre-norm blocks, learned positions, untied head), nanoGPT-like."""

    def __init__(self, args: GPTArgs) -> None:
        super().__init__()
        self.args = args
        self.embed = nn.Embedding(args.vocab, args.width)
        self.position = nn.Embedding(args.context_length, args.width)
        self.blocks = nn.ModuleList(Block(args.width, args.heads) for _ in range(args.layers))
        self.ln = nn.LayerNorm(args.width)
        self.head = nn.Linear(args.width, args.vocab, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # (B, T) int64 -> (B, T, V)
        if tokens.dim() != 2 or tokens.shape[1] > self.args.context_length:
            raise ValueError(
                f"expected token ids (B, T) with T <= {self.args.context_length}, "
                f"got shape {tuple(tokens.shape)}"
            )
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.embed(tokens) + self.position(positions)  # (B, T, C)
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln(x))  # type: ignore[no-any-return]


# ---------------------------------------------------------------- base checkpoints


def save_base(model: TinyGPT, path: Path, note: dict[str, Any]) -> None:
    """A self-describing base checkpoint (format, architecture, training note, weights),
    loadable with ``torch.load(path, weights_only=True)``."""
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
        f"{_KEY[k]} {saved.get(k)} in the base, {wanted[k]} in the run config"
        for k in wanted
        if saved.get(k) != wanted[k]
    ]
    if differ:
        raise ConfigError(f"`base-model` {p} has a different architecture: " + "; ".join(differ))
    return ckpt["state"]  # type: ignore[no-any-return]


# ---------------------------------------------------------------- the task


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
        b, t, v = logits.shape  # (B, T, V), y (B, T)
        per_seq = F.cross_entropy(logits.reshape(b * t, v), y.reshape(b * t), reduction="none")
        per_seq = per_seq.view(b, t).mean(1)  # (B,)
        if reduction == "none":
            return per_seq
        return per_seq.sum() if reduction == "sum" else per_seq.mean()

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


# ---------------------------------------------------------------- pretraining and sampling


@dataclass(frozen=True)
class Pretraining:
    steps: int
    batch_size: int
    learning_rate: float
    seed: int = 0


def pretrain(
    cfg: RunConfig,
    text: bytes,
    settings: Pretraining,
    out: Path,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train the base model centrally (AdamW, random windows of public ``text``) and save it to
    ``out``; returns the training note stored in the checkpoint."""
    args = GPTArgs.of(cfg)
    data = torch.from_numpy(np.frombuffer(text, dtype=np.uint8).astype(np.int64))
    if len(data) <= args.context_length + 1:
        raise DataError(
            f"pretraining text has {len(data)} bytes; need more than {args.context_length + 1}"
        )
    torch.manual_seed(cfg.seed)
    model = TinyGPT(args)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, settings.learning_rate, total_steps=settings.steps, pct_start=0.05
    )
    gen = torch.Generator().manual_seed(settings.seed)
    window = torch.arange(args.context_length + 1)
    started, loss_avg = time.monotonic(), math.nan
    model.train()
    for step in range(1, settings.steps + 1):
        starts = torch.randint(
            0, len(data) - args.context_length - 1, (settings.batch_size,), generator=gen
        )
        batch = data[starts[:, None] + window]  # (B, T + 1)
        loss = TextLM().loss(model(batch[:, :-1]), batch[:, 1:])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        value = float(loss.detach())
        loss_avg = value if step == 1 else 0.95 * loss_avg + 0.05 * value
        if progress and (step % max(1, settings.steps // 20) == 0 or step == settings.steps):
            progress(
                f"pretrain step {step}/{settings.steps} ({time.monotonic() - started:.0f}s): "
                f"loss {loss_avg:.3f}"
            )
    note = {
        "steps": settings.steps,
        "batch-size": settings.batch_size,
        "learning-rate": settings.learning_rate,
        "text-bytes": len(data),
        "final-loss": loss_avg,
        "seconds": round(time.monotonic() - started, 1),
    }
    save_base(model, out, note)
    return note


def load_trained(path: Path) -> tuple[TinyGPT, RunConfig | None]:
    """A model to sample from: a base checkpoint, or a run folder (its config and model.pt,
    adapters merged into the base)."""
    from fedllm.models.lora import merge_lora

    if path.is_file():
        ckpt = torch.load(path, weights_only=True, map_location="cpu")
        if not isinstance(ckpt, dict) or ckpt.get("format") != BASE_FORMAT:
            raise DataError(f"{path} is not a fedllm text base checkpoint")
        known = {f.name for f in fields(GPTArgs)}
        model = TinyGPT(GPTArgs(**{k: v for k, v in ckpt["args"].items() if k in known}))
        model.load_state_dict(ckpt["state"])
        return model, None
    metrics, weights = path / "metrics.json", path / "model.pt"
    for needed in (metrics, weights):
        if not needed.is_file():
            raise DataError(f"--model {path}: no {needed.name} (a run folder or a base .pt)")
    cfg = RunConfig.from_flower(json.loads(metrics.read_text())["config"])
    if cfg.task != TextLM.name:
        raise ConfigError(f"run {path} trained task `{cfg.task}`, not a language model")
    adapted = TextLM().architecture(cfg)
    adapted.load_state_dict(torch.load(weights, weights_only=True, map_location="cpu"))
    return cast(TinyGPT, merge_lora(adapted)), cfg


@torch.no_grad()
def generate(
    model: TinyGPT, prompt: str, tokens: int, temperature: float = 0.8, seed: int = 0
) -> str:
    """Sample ``tokens`` bytes after ``prompt`` (temperature sampling, the last
    `context-length` bytes as context)."""
    if temperature <= 0:
        raise ValueError(f"--temperature must be > 0, got {temperature}")
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    ids = list(prompt.encode("utf-8")) or [ord("\n")]
    for _ in range(tokens):
        context = torch.tensor([ids[-model.args.context_length :]])
        logits = model(context)[0, -1] / temperature  # (V,)
        ids.append(int(torch.multinomial(torch.softmax(logits, -1), 1, generator=gen)))
    return bytes(ids).decode("utf-8", errors="replace")
