"""One DP-SGD step of the production path (``train_local``) on the GPU equals the same step on
the CPU, at zero noise (so the two are comparable), for the MNIST CNN and the LoRA text model,
in fedllm's book-keeping mode and Opacus's hooks: per-sample clipping, the normalizer and the
update do not depend on the device. Skipped where there is no CUDA device.

``train_local`` trains on the GPU when there is one; the CPU reference runs the same code with
the device forced to the CPU. TF32 is turned off for the comparison (cuDNN convolutions use it
by default, which alone moves the CNN's update by about 1e-3 relative)."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator

import pytest
import torch

from fedllm import training
from fedllm.config import RunConfig
from fedllm.privacy import DPParams
from fedllm.tasks import Split, Task, get_task
from fedllm.training import LocalTraining, train_local

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

N = 32  # one batch of 32 examples: one step


@pytest.fixture(autouse=True)
def exact_float32() -> Iterator[None]:
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _cnn(config: Callable[..., RunConfig]) -> tuple[Task, torch.nn.Module, Split]:
    cfg = config(task="mnist")
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(N, 1, 28, 28, generator=generator)
    y = torch.randint(0, 10, (N,), generator=generator)
    return get_task("mnist"), get_task("mnist").build_model(cfg, (1, 28, 28)), Split(x, y)


def _lora(config: Callable[..., RunConfig]) -> tuple[Task, torch.nn.Module, Split]:
    cfg = config(task="text", context_length=16, lm_layers=1, lm_heads=2, lm_width=32, lora_rank=4)
    generator = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (N, 16), generator=generator)
    y = torch.randint(0, 256, (N, 16), generator=generator)
    task = get_task("text")
    model = task.build_model(cfg, (16,))
    with torch.no_grad():  # LoRA's B starts at 0 (A would get no gradient): move it off 0
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.01 * torch.randn(p.shape, generator=generator))
    return task, model, Split(x, y)


def _step(task: Task, model: torch.nn.Module, data: Split, mode: str) -> dict[str, torch.Tensor]:
    """The trainable parameters after one zero-noise DP step (clip 0.1: every example clipped)."""
    model = copy.deepcopy(model)
    train_local(
        task,
        model,
        data,
        LocalTraining(1, N, 0.5, seed=0),
        DPParams(0.0, 0.1, "rdp", poisson_sampling=False, grad_sample_mode=mode),
    )
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("mode", ["bookkeeping", "hooks"])
@pytest.mark.parametrize("build", [_cnn, _lora], ids=["cnn", "lora"])
def test_a_zero_noise_dp_step_on_cuda_equals_the_cpu_step(
    config: Callable[..., RunConfig],
    monkeypatch: pytest.MonkeyPatch,
    build: Callable[[Callable[..., RunConfig]], tuple[Task, torch.nn.Module, Split]],
    mode: str,
) -> None:
    task, model, data = build(config)
    start = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert training.default_device().type == "cuda"
    on_gpu = _step(task, model, data, mode)
    monkeypatch.setattr(training, "default_device", lambda: torch.device("cpu"))
    on_cpu = _step(task, model, data, mode)
    assert on_gpu.keys() == on_cpu.keys() == start.keys()
    assert all(not torch.equal(on_cpu[name], start[name]) for name in start)  # a real step
    for name in start:
        torch.testing.assert_close(on_gpu[name], on_cpu[name], rtol=1e-5, atol=1e-6)
