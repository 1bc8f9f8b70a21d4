"""The text task: LoRA through DP-SGD (fedllm's engine), what is exchanged, base checkpoints."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from fedllm.config import RunConfig
from fedllm.errors import ConfigError, DataError
from fedllm.models import adapter_parameters
from fedllm.models.base_checkpoint import load_base, save_base
from fedllm.models.gpt import GPTArgs, TinyGPT
from fedllm.privacy import DPParams, choose_mode, make_private
from fedllm.privacy.bookkeeping import BookkeepingDPSGD, unsupported_layers
from fedllm.tasks.base import Split
from fedllm.tasks.text import TextLM
from fedllm.training import evaluate
from fedllm.weights import load_arrays, to_arrays
from tests.text_data import write_play

Make = Callable[..., RunConfig]
SMALL: dict[str, Any] = {
    "task": "text",
    "context-length": 16,
    "lm-layers": 2,
    "lm-heads": 2,
    "lm-width": 16,
    "lora-rank": 4,
}


@pytest.fixture
def small(config: Make) -> Make:
    return lambda **kw: config(**{**SMALL, **kw})


def _batch(n: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    seqs = torch.randint(0, 256, (n, 17), generator=torch.Generator().manual_seed(2))
    return seqs[:, :-1], seqs[:, 1:]


def test_auto_picks_bookkeeping_and_ignores_the_frozen_base(small: Make) -> None:
    model = TextLM().build_model(small(), (16,))
    assert unsupported_layers(model) == []
    assert choose_mode(model, "auto") == "bookkeeping"


def test_per_sample_clipping_holds_on_the_adapters(small: Make) -> None:
    """Book-keeping's per-sample norms equal autograd's, sequence by sequence, and the noiseless
    update is the sum of the clipped per-sample gradients over the expected batch size."""
    task, clip = TextLM(), 0.01
    model = task.build_model(small(), (16,))
    with torch.no_grad():  # non-zero B, so A gets gradients too
        for p in adapter_parameters(model).values():
            p.normal_(0, 0.1)
    params = list(adapter_parameters(model).values())
    x, y = _batch()
    expected: list[torch.Tensor] = []
    norms = []
    for i in range(len(y)):
        grads = torch.autograd.grad(task.loss(model(x[i : i + 1]), y[i : i + 1]), params)
        flat = torch.cat([g.flatten() for g in grads])
        norms.append(flat.norm())
        expected.append(flat * min(1.0, clip / float(flat.norm())))
    engine = BookkeepingDPSGD(model, 0.0, clip, expected_batch_size=len(y))
    task.loss(model(x), y).backward()
    torch.testing.assert_close(
        engine.per_sample_norms(len(y)), torch.stack(norms), rtol=1e-4, atol=0
    )
    engine.privatize(len(y))
    engine.close()
    update = torch.cat([p.grad.flatten() for p in params])  # type: ignore[union-attr]
    torch.testing.assert_close(update, torch.stack(expected).sum(0) / len(y), rtol=1e-4, atol=1e-9)
    assert min(norms) > clip  # every sequence was clipped: the bound is what was tested


def test_bookkeeping_update_equals_opacus_hooks_on_lora(small: Make) -> None:
    def update(mode: str) -> dict[str, torch.Tensor]:
        model = TextLM().build_model(small(), (16,))
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
        noise = torch.Generator().manual_seed(5)  # the same noise draws for both modes
        step = make_private(
            model, opt, TextLM().loss, 24, 6, DPParams(1.1, 0.05, "rdp", True, mode), noise
        )
        x, y = _batch()
        step.backward_and_step(step.module(x), y)
        step.close()
        return {k: v.detach().clone() for k, v in adapter_parameters(model).items()}

    ours, reference = update("bookkeeping"), update("hooks")
    for key, value in ours.items():
        torch.testing.assert_close(value, reference[key], rtol=1e-4, atol=1e-6)


def test_exchanged_state_holds_only_adapter_keys(small: Make) -> None:
    model = TextLM().build_model(small(), (16,))
    with torch.no_grad():
        for p in adapter_parameters(model).values():
            p.normal_(0, 0.1)
    arrays = to_arrays(model)
    assert set(arrays) == set(adapter_parameters(model))
    other = TextLM().build_model(small(), (16,))  # the same base, adapters at their start
    x, _ = _batch()
    assert not torch.allclose(other(x), model(x))
    load_arrays(other, arrays)
    torch.testing.assert_close(other(x), model(x))
    full = TextLM().build_model(small(lora_rank=0), (16,))
    assert set(to_arrays(full)) == set(full.state_dict())  # full fine-tuning sends everything


def test_base_with_another_architecture_is_refused_naming_the_difference(
    small: Make, tmp_path: Path
) -> None:
    path = tmp_path / "base.pt"
    save_base(TinyGPT(GPTArgs(16, 1, 2, 16)), path, {})
    with pytest.raises(ConfigError, match="lm-layers 1 in the base, 2 in the run config"):
        TextLM().build_model(small(base_model=str(path)), (16,))
    assert set(load_base(path, GPTArgs(16, 1, 2, 16))) == set(
        TinyGPT(GPTArgs(16, 1, 2, 16)).state_dict()
    )
    with pytest.raises(ConfigError, match="does not exist"):
        TextLM().build_model(small(base_model=str(tmp_path / "missing.pt")), (16,))


def test_a_site_holding_another_base_is_refused(small: Make, tmp_path: Path) -> None:
    path = tmp_path / "base.pt"
    save_base(TinyGPT(GPTArgs(16, 2, 2, 16)), path, {})
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    TextLM().build_model(small(base_model=str(path), base_model_sha256=digest), (16,))
    with pytest.raises(ConfigError, match="another base"):
        TextLM().build_model(small(base_model=str(path), base_model_sha256="0" * 64), (16,))


def test_loaded_base_is_the_frozen_part(small: Make, tmp_path: Path) -> None:
    torch.manual_seed(42)
    base = TinyGPT(GPTArgs(16, 2, 2, 16))
    save_base(base, tmp_path / "base.pt", {})
    model = TextLM().build_model(small(base_model=str(tmp_path / "base.pt")), (16,))
    x, _ = _batch()
    torch.testing.assert_close(model(x), base(x))  # B = 0: exactly the base


def test_play_federation_has_one_site_per_speaker_group(small: Make, tmp_path: Path) -> None:
    path = write_play(tmp_path / "play.txt", 300)
    fed = TextLM().federation(small(data_path=str(path), partitioner="natural", num_sites=2))
    assert len(fed.sites) == 2 and fed.input_shape == (16,)
    site = fed.sites[0]
    assert site.train.x.dtype == torch.int64 and site.train.x.shape[1] == 16
    torch.testing.assert_close(site.train.x[:, 1:], site.train.y[:, :-1])  # next-byte targets
    assert len(fed.central_test) == sum(len(s.test) for s in fed.sites)
    iid = TextLM().federation(small(data_path=str(path), partitioner="iid", num_sites=3))
    assert len(iid.sites) == 3
    assert abs(len(iid.sites[0].train) - len(iid.sites[2].train)) <= 2
    with pytest.raises(ConfigError, match="partitioner"):
        TextLM().federation(small(data_path=str(path), partitioner="dirichlet"))
    with pytest.raises(DataError, match="data-path"):
        TextLM().federation(small(data_path=""))


def test_a_folder_of_text_files_is_one_site_per_file(small: Make, tmp_path: Path) -> None:
    for name, seed in (("clinic-a", 1), ("clinic-b", 2), ("clinic-c", 3)):
        write_play(tmp_path / f"{name}.txt", 40, seed)
    fed = TextLM().federation(small(data_path=str(tmp_path), partitioner="natural", num_sites=3))
    assert [s.name for s in fed.sites] == ["clinic-a", "clinic-b", "clinic-c"]
    with pytest.raises(ConfigError, match="natural split has 3 sites"):
        TextLM().federation(small(data_path=str(tmp_path), partitioner="natural", num_sites=2))


def test_evaluation_reports_accuracy_and_perplexity(small: Make) -> None:
    model = TextLM().build_model(small(), (16,))
    x, y = _batch()
    scores = evaluate(TextLM(), model, Split(x, y))
    assert 0.0 <= scores["accuracy"] <= 1.0
    assert scores["perplexity"] == pytest.approx(torch.tensor(scores["loss"]).exp().item())
