"""DP-SGD with book-keeping per-sample clipping: one backward pass, no per-sample gradient of a
layer kept longer than its own clipping needs.

Book-keeping (Bu, Wang, Zha & Karypis 2023, "Differentially private optimization on large
model at small cost") records each layer's input ``a`` in the forward pass and the gradient
``g`` of the loss with respect to its output in the ordinary backward pass. From these two:

- the per-sample gradient norm, exactly: for a Linear layer on (B, d) inputs the per-sample
  weight gradient is the outer product ``g_i a_i^T``, whose norm is ``|g_i| |a_i|`` (the
  "ghost norm", Goodfellow 2015), computed without forming it; for Conv2d and sequence inputs
  the per-sample gradient ``G_i U_i^T`` (U: the unfolded input) is formed once, as a batched
  matrix product, and its norm taken;
- the clipped sum, exactly: ``sum_i c_i g_i a_i^T = (c * G)^T A``, one matrix product a layer.

Then Gaussian noise of std ``noise_multiplier * max_grad_norm`` is added and the sum divided by
the expected batch size, exactly as Opacus's DPOptimizer does (same order of parameters, same
noise draws), so the update equals Opacus's for the same batch and random state, and the
privacy accounting is the same: one subsampled Gaussian mechanism per step.

Supported layers: nn.Linear (any leading dimensions) and nn.Conv2d (groups 1, numeric padding,
zero padding mode); any parameter-free module in between. Anything else: use an Opacus mode.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import torch
from torch import nn
from torch.nn import functional as F


def unsupported_layers(model: nn.Module) -> list[str]:
    """Names of the modules holding trainable parameters this engine cannot clip exactly."""
    bad = []
    for name, module in model.named_modules():
        if not any(p.requires_grad for p in module.parameters(recurse=False)):
            continue
        label = name or type(module).__name__
        if not isinstance(module, nn.Linear | nn.Conv2d):
            bad.append(label)
        elif not module.weight.requires_grad:
            bad.append(f"{label} (frozen weight, trainable bias)")
        elif isinstance(module, nn.Conv2d) and (
            module.groups != 1 or module.padding_mode != "zeros" or isinstance(module.padding, str)
        ):
            bad.append(f"{label} (groups, padding mode or string padding)")
    return bad


@dataclass
class _Record:
    """One layer's input and output (whose ``.grad`` autograd fills) for the current step."""

    layer: nn.Module
    params: list[nn.Parameter]
    inputs: torch.Tensor | None = None
    output: torch.Tensor | None = None

    @property
    def grad(self) -> torch.Tensor | None:
        return None if self.output is None else self.output.grad


class BookkeepingDPSGD:
    """Attach to ``model``; after each ``loss.backward()`` call :meth:`privatize` to set every
    parameter's gradient to the clipped, noised, averaged one; then step any optimizer.

    While attached, the clipped layers' parameters do not require grad, so autograd skips the
    per-batch weight gradients this engine would discard: it only back-propagates, and each
    clipped layer keeps its input and the gradient of its output (``retain_grad``; the first
    layer's output is made a leaf that requires grad). The loss
    must be the mean over the batch (Opacus's ``loss_reduction="mean"``). :meth:`close`
    restores the model.
    """

    def __init__(
        self,
        model: nn.Module,
        noise_multiplier: float,
        max_grad_norm: float,
        expected_batch_size: int,
        generator: torch.Generator | None = None,
    ) -> None:
        bad = unsupported_layers(model)
        if bad:
            raise ValueError(f"book-keeping DP-SGD does not support layer(s) {', '.join(bad)}")
        self.model = model
        self.noise_multiplier = noise_multiplier
        self.max_grad_norm = max_grad_norm
        self.expected_batch_size = expected_batch_size
        # The noise's source (see fedllm.privacy.randomness); None: PyTorch's global one
        # (tests of the norms only: DP training always passes a secret generator).
        self.generator = generator
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.records: list[_Record] = []
        for module in model.modules():
            own = [p for p in module.parameters(recurse=False) if p.requires_grad]
            if own:
                record = _Record(module, own)
                module.forward = self._recording_forward(module, record)  # type: ignore[method-assign]
                self.records.append(record)
        for p in self.params:
            p.requires_grad_(False)

    @staticmethod
    def _recording_forward(module: nn.Module, record: _Record) -> Callable[..., torch.Tensor]:
        plain = type(module).forward.__get__(module)  # the class's own forward, bound

        def forward(inputs: torch.Tensor) -> torch.Tensor:
            if not (module.training and torch.is_grad_enabled()):
                return plain(inputs)  # type: ignore[no-any-return]
            output = plain(inputs)
            if output.requires_grad:
                output.retain_grad()
            else:
                # Nothing upstream needs a gradient (the first layer): its output becomes a
                # leaf, whose .grad the backward pass fills; no weight gradient is computed.
                output.requires_grad_(True)
            record.inputs, record.output = inputs.detach(), output
            return output  # type: ignore[no-any-return]

        return forward

    @torch.no_grad()
    def per_sample_norms(self, batch_size: int) -> torch.Tensor:
        """Each row's whole-model gradient norm (B,), from the last forward/backward pass."""
        parts = [self._per_sample(r) for r in self.records]
        # The loss is a mean: each row's own gradient is batch_size times what autograd saw.
        return _total(parts).sqrt_().mul_(batch_size)

    @torch.no_grad()
    def privatize(self, batch_size: int) -> None:
        """Per-sample clip to ``max_grad_norm``, sum, add noise, divide by the expected batch
        size: ``p.grad`` of every parameter is replaced."""
        summed: dict[torch.Tensor, torch.Tensor] = {}
        if batch_size:
            parts = [self._per_sample(r) for r in self.records]
            # Row i's own gradient is batch_size * (what autograd saw), with norm
            # batch_size * sqrt(s_i); Opacus clips it by min(1, C / norm) and divides the sum by
            # the expected batch size. One weight per row does all three (few tensor operations
            # matter: on a small model each costs as much as the arithmetic).
            scale = batch_size / self.expected_batch_size
            weights = torch.rsqrt(_total(parts)).mul_(self.max_grad_norm * scale / batch_size)
            weights.clamp_(max=scale)  # (B,); a zero gradient (rsqrt inf) is not scaled up
            for part in parts:
                summed.update(part.clipped_sum(weights))
        std = self.noise_multiplier * self.max_grad_norm / self.expected_batch_size
        for p in self.params:  # Opacus's order, so the noise draws match
            mean = summed.get(p)
            if mean is None:
                mean = torch.zeros_like(p)
            # N(mean, std) draws exactly what mean + N(0, std) would, in one operation.
            p.grad = torch.normal(mean, std, generator=self.generator) if std > 0 else mean
        for record in self.records:
            record.inputs = record.output = None

    def _per_sample(self, record: _Record) -> _LayerGrads:
        if record.inputs is None or record.grad is None:
            raise RuntimeError("privatize() needs a forward and backward pass of the model first")
        a, g = record.inputs, record.grad
        layer = record.layer
        weight, bias = getattr(layer, "weight", None), _bias(layer, record.params)
        if not isinstance(weight, torch.Tensor):
            raise RuntimeError(f"layer {type(layer).__name__} has no weight to clip")
        if a.dim() == 2:  # (B, d), (B, p): ghost norm, nothing per-sample formed
            return _Ghost(weight, bias, a, g)
        if isinstance(layer, nn.Conv2d):
            a, g = (
                _im2col(a, layer),
                g.flatten(2).transpose(1, 2),
            )  # (B, T, Cin*kh*kw), (B, T, Cout)
        else:
            a, g = a.flatten(1, -2), g.flatten(1, -2)  # (B, T, d), (B, T, p)
        positions, p, d = a.shape[1], g.shape[2], a.shape[2]
        # Mixed ghost clipping (Bu et al. 2023): the T x T Gram matrices when they are smaller
        # than the per-sample gradient (p x d), else the per-sample gradient itself.
        if 2 * positions * positions < p * d:
            return _GhostSequence(weight, bias, a, g)
        return _Materialized(weight, bias, torch.bmm(g.transpose(1, 2), a), g.sum(1))

    def close(self) -> None:
        for record in self.records:
            del record.layer.forward  # back to the class's forward
            record.inputs = record.output = None
        for p in self.params:
            p.requires_grad_(True)
        self.records = []


class _LayerGrads:
    """A layer's per-sample squared gradient norms and, given clip factors, its clipped sum."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        self.weight, self.bias = weight, bias
        self.norms_sq: list[torch.Tensor] = []

    def clipped_sum(self, clip: torch.Tensor) -> dict[torch.Tensor, torch.Tensor]:
        raise NotImplementedError


class _Ghost(_LayerGrads):
    """Linear on (B, d): per-sample weight gradient g_i a_i^T, never formed."""

    def __init__(
        self, weight: torch.Tensor, bias: torch.Tensor | None, a: torch.Tensor, g: torch.Tensor
    ) -> None:
        super().__init__(weight, bias)
        self.a, self.g = a, g
        # One fused pass over each of g and a (this is the step's per-row work on a CPU).
        a_sq = torch.linalg.vector_norm(a, dim=1).square_()  # (B,)
        if self.bias is not None:  # the bias gradient is g_i itself: |g_i|^2 (|a_i|^2 + 1)
            a_sq.add_(1.0)
        self.norms_sq = [torch.linalg.vector_norm(g, dim=1).square_().mul_(a_sq)]

    def clipped_sum(self, clip: torch.Tensor) -> dict[torch.Tensor, torch.Tensor]:
        g, a, w = self.g, self.a, clip[:, None]  # (B, p), (B, d), (B, 1)
        # sum_i c_i g_i a_i^T: scale whichever of g and a is narrower.
        if g.shape[1] <= a.shape[1]:
            cg = g * w
            out = {self.weight: cg.t() @ a}  # (p, d)
            if self.bias is not None:
                out[self.bias] = cg.sum(0)
            return out
        out = {self.weight: g.t() @ (a * w)}
        if self.bias is not None:
            out[self.bias] = g.t() @ clip  # (p,)
        return out


class _GhostSequence(_LayerGrads):
    """A layer applied at T positions (conv patches, sequence steps): a (B, T, d), g (B, T, p).
    The per-sample gradient g_i^T a_i has squared norm <g_i g_i^T, a_i a_i^T> (two T x T
    Gram matrices), and the clipped sum is one matrix product over all B*T positions."""

    def __init__(
        self, weight: torch.Tensor, bias: torch.Tensor | None, a: torch.Tensor, g: torch.Tensor
    ) -> None:
        super().__init__(weight, bias)
        self.a, self.g = a, g
        gram = torch.bmm(g, g.transpose(1, 2)).mul_(torch.bmm(a, a.transpose(1, 2)))  # (B,T,T)
        self.norms_sq = [gram.flatten(1).sum(1)]
        if self.bias is not None:
            self.bias_rows = g.sum(1)  # (B, p)
            self.norms_sq.append(torch.linalg.vector_norm(self.bias_rows, dim=1).square_())

    def clipped_sum(self, clip: torch.Tensor) -> dict[torch.Tensor, torch.Tensor]:
        b, t, p = self.g.shape
        cg = (self.g * clip[:, None, None]).reshape(b * t, p)
        summed = cg.t() @ self.a.reshape(b * t, -1)  # (p, d)
        out = {self.weight: summed.reshape(self.weight.shape)}
        if self.bias is not None:
            out[self.bias] = clip @ self.bias_rows
        return out


class _Materialized(_LayerGrads):
    """Per-sample weight gradients formed once (B, out, in), with per-sample bias gradients."""

    def __init__(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        weights: torch.Tensor,
        biases: torch.Tensor,
    ) -> None:
        super().__init__(weight, bias)
        self.weights, self.biases = weights, biases  # (B, out, in), (B, out)
        self.norms_sq = [torch.linalg.vector_norm(weights.flatten(1), dim=1).square_()]
        if self.bias is not None:
            self.norms_sq.append(torch.linalg.vector_norm(biases, dim=1).square_())

    def clipped_sum(self, clip: torch.Tensor) -> dict[torch.Tensor, torch.Tensor]:
        summed = torch.einsum("b,bij->ij", clip, self.weights)
        out = {self.weight: summed.reshape(self.weight.shape)}
        if self.bias is not None:
            out[self.bias] = clip @ self.biases
        return out


def _im2col(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """The patches each output position of ``conv`` sees: (B, Cin, H, W) -> (B, T, Cin*kh*kw)."""
    padding = cast(tuple[int, int], conv.padding)  # numeric: checked by unsupported_layers
    if conv.dilation != (1, 1):
        return F.unfold(x, conv.kernel_size, conv.dilation, padding, conv.stride).transpose(1, 2)
    (kh, kw), (sh, sw), (ph, pw) = conv.kernel_size, conv.stride, padding
    if ph or pw:
        x = F.pad(x, (pw, pw, ph, ph))
    patches = x.unfold(2, kh, sh).unfold(3, kw, sw)  # (B, Cin, Ho, Wo, kh, kw), a view
    b, c, ho, wo = patches.shape[:4]
    return patches.permute(0, 2, 3, 1, 4, 5).reshape(b, ho * wo, c * kh * kw)  # one copy


def _total(parts: list[_LayerGrads]) -> torch.Tensor:
    """Each row's squared gradient norm summed over layers, as autograd saw it: (B,)."""
    squares = [sq for part in parts for sq in part.norms_sq]
    total = squares[0] if len(squares) == 1 else torch.stack(squares).sum(0)
    return total


def _bias(layer: nn.Module, trained: list[nn.Parameter]) -> torch.Tensor | None:
    """The layer's bias when it is trained (its requires_grad is off while attached)."""
    bias = getattr(layer, "bias", None)
    return bias if any(bias is p for p in trained) else None
