"""Canaries an audited site plants in its own training: gradient-space (Dirac) and input-space.

The auditor draws ``m`` candidate canaries and includes each independently with probability
1/2, keeping the inclusion mask secret (Steinke, Nasr, Jagielski 2023). The audited site
receives only the included ones (the file named by the `audit-canaries` run-config key, read
only in simulation) and trains with them as if they were records of its own:

- **gradient canaries** (white box, Nasr et al. 2023, "Tight Auditing of Differentially
  Private Machine Learning"): canary ``i``'s per-example gradient is ``s_i C e_{j_i}`` (one
  coordinate ``j_i`` of the trainable parameters, sign ``s_i``, norm exactly the clip bound
  ``C``: a gradient clipping leaves as it is). In each DP-SGD step each included canary is
  Poisson-sampled at the step's rate ``q`` like any record and its gradient joins the clipped
  sum; the sum is divided by the same expected batch size. The noise is independent of what
  is summed, so adding the sampled canaries' ``s_i C e_{j_i} / B`` to the noised gradient
  just before the optimizer applies it (an optimizer pre-step hook, the place FedProx's term
  also goes) is the same step as adding them before the noise.
  Without DP nothing is clipped, so nothing bounds one record's gradient: there each canary
  has norm ``UNCLIPPED_CANARY_SCALE`` times the configured clip bound (:func:`canary_norm`),
  a gradient an unclipped record can have, so that a run without DP is audited for what it is
  (leaking) instead of hiding the canaries under the data's unclipped gradients.
- **input canaries** (black box): extra training rows with random inputs and random labels,
  appended to the site's training split (so they are sampled, clipped and counted as rows).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.hooks import RemovableHandle

from fedllm.errors import ConfigError, DataError
from fedllm.tasks.base import SiteData, Split

GRADIENT = "gradient"
INPUT = "input"
# Without DP (no clipping) a canary's gradient is this many times the configured clip bound.
UNCLIPPED_CANARY_SCALE = 100.0


def canary_norm(max_grad_norm: float, dp: bool) -> float:
    """The gradient norm of each Dirac canary: the clip bound under DP (clipping would leave
    no more), ``UNCLIPPED_CANARY_SCALE`` times it without DP (nothing is clipped)."""
    return max_grad_norm if dp else UNCLIPPED_CANARY_SCALE * max_grad_norm


@dataclass(frozen=True)
class GradientCanaries:
    """Dirac canaries: canary ``i`` is ``signs[i] * C`` at flat position ``offsets[i]`` of the
    trainable parameter ``names[i]`` (names as in ``model.named_parameters()``)."""

    names: tuple[str, ...]
    offsets: np.ndarray  # (m,) int64
    signs: np.ndarray  # (m,) +-1.0

    def __len__(self) -> int:
        return len(self.names)

    def subset(self, mask: np.ndarray) -> GradientCanaries:
        idx = np.flatnonzero(mask)
        return GradientCanaries(
            tuple(self.names[i] for i in idx), self.offsets[idx], self.signs[idx]
        )

    @classmethod
    def draw(cls, model: torch.nn.Module, m: int, rng: np.random.Generator) -> GradientCanaries:
        """``m`` distinct coordinates of the trainable parameters, uniformly, random signs."""
        params = [(n, p.numel()) for n, p in model.named_parameters() if p.requires_grad]
        total = sum(size for _, size in params)
        if m > total:
            raise ConfigError(
                f"`--canaries` {m} exceeds the model's {total} trainable coordinates "
                "(one Dirac canary a coordinate)"
            )
        flat = np.sort(rng.choice(total, size=m, replace=False))
        starts = np.cumsum([0] + [size for _, size in params])
        which = np.searchsorted(starts, flat, side="right") - 1
        names = tuple(params[i][0] for i in which)
        offsets = (flat - starts[which]).astype(np.int64)
        return cls(names, offsets, rng.choice([-1.0, 1.0], size=m))

    def values(self, arrays: dict[str, np.ndarray]) -> np.ndarray:
        """Each canary's coordinate in ``arrays`` (parameter name -> array): shape (m,)."""
        return np.asarray(
            [arrays[n].reshape(-1)[o] for n, o in zip(self.names, self.offsets, strict=True)],
            dtype=np.float64,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "names": list(self.names),
            "offsets": self.offsets.tolist(),
            "signs": self.signs.tolist(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> GradientCanaries:
        return cls(
            tuple(data["names"]),
            np.asarray(data["offsets"], dtype=np.int64),
            np.asarray(data["signs"], dtype=np.float64),
        )


@dataclass(frozen=True)
class InputCanaries:
    """Rows with random inputs and random labels: ``x`` (m, ...) float32, ``y`` (m,) int64."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, mask: np.ndarray) -> InputCanaries:
        idx = torch.from_numpy(np.flatnonzero(mask))
        return InputCanaries(self.x[idx], self.y[idx])

    @classmethod
    def draw(
        cls, input_shape: tuple[int, ...], num_classes: int, m: int, rng: np.random.Generator
    ) -> InputCanaries:
        """Standard-normal inputs (the scale of standardized features), uniform labels."""
        x = rng.standard_normal((m, *input_shape)).astype(np.float32)
        y = rng.integers(0, num_classes, size=m)
        return cls(torch.from_numpy(x), torch.from_numpy(y).long())

    def to_json(self) -> dict[str, Any]:
        return {"x": self.x.tolist(), "y": self.y.tolist(), "shape": list(self.x.shape[1:])}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> InputCanaries:
        shape = tuple(int(s) for s in data["shape"])
        x = torch.tensor(data["x"], dtype=torch.float32).reshape(-1, *shape)
        return cls(x, torch.tensor(data["y"], dtype=torch.long))


@dataclass(frozen=True)
class PlantedCanaries:
    """What the audited site plants: the included canaries of each kind (either may be empty)."""

    site_index: int
    gradient: GradientCanaries | None
    inputs: InputCanaries | None

    def save(self, path: Path) -> None:
        data: dict[str, Any] = {"site-index": self.site_index}
        if self.gradient is not None:
            data[GRADIENT] = self.gradient.to_json()
        if self.inputs is not None:
            data[INPUT] = self.inputs.to_json()
        path.write_text(json.dumps(data))

    def extend(self, data: SiteData) -> SiteData:
        """``data`` with the included input canaries appended to its training rows."""
        if self.inputs is None or not len(self.inputs):
            return data
        train = data.train
        if tuple(train.x.shape[1:]) != tuple(self.inputs.x.shape[1:]):
            raise DataError(
                f"audit input canaries have shape {tuple(self.inputs.x.shape[1:])}, the site's "
                f"rows {tuple(train.x.shape[1:])}"
            )
        x = torch.cat([train.x, self.inputs.x.to(train.x.dtype)])
        y = torch.cat([train.y, self.inputs.y.to(train.y.dtype)])
        return replace(data, train=Split(x, y))

    @classmethod
    def load(cls, path: str) -> PlantedCanaries:
        try:
            data = json.loads(Path(path).read_text())
            site = int(data["site-index"])
            gradient = GradientCanaries.from_json(data[GRADIENT]) if GRADIENT in data else None
            inputs = InputCanaries.from_json(data[INPUT]) if INPUT in data else None
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise DataError(f"`audit-canaries` {path} is not a canary file: {err}") from None
        return cls(site, gradient, inputs)


def planted_at(path: str, site_index: int, deployed: bool) -> PlantedCanaries | None:
    """The canaries site ``site_index`` plants, if the run is an audit and it is the audited
    site. A deployed site never plants canaries: the key is for simulated audits only."""
    if not path:
        return None
    if deployed:
        raise DataError(
            "`audit-canaries` is set but this is a deployed site: canaries are planted only "
            "in simulated audits (`fedllm audit`)"
        )
    planted = PlantedCanaries.load(path)
    return planted if planted.site_index == site_index else None


def plant_gradient_canaries(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    canaries: GradientCanaries,
    clip: float,
    rate: float,
    expected_batch_size: int,
) -> RemovableHandle:
    """Before every step of ``optimizer``, add each included canary Poisson-sampled at
    ``rate`` (from fresh OS entropy: the auditor's secret, like the site's own sampling) as
    ``s_i clip e_{j_i} / expected_batch_size`` to the gradient (see the module docstring for
    why after the noise is the same step). Returns the hook's handle: ``remove()`` it."""
    if not (math.isfinite(clip) and clip > 0):
        raise ConfigError(f"gradient canaries need a clip norm > 0, got {clip}")
    params = dict(model.named_parameters())
    groups: list[tuple[torch.nn.Parameter, np.ndarray, torch.Tensor, torch.Tensor]] = []
    for name in sorted(set(canaries.names)):
        if name not in params or not params[name].requires_grad:
            raise DataError(f"audit canary names parameter {name!r}, not trained by this model")
        mine = np.asarray([n == name for n in canaries.names])
        offsets = torch.from_numpy(canaries.offsets[mine])
        values = torch.from_numpy(canaries.signs[mine] * clip / expected_batch_size)
        groups.append((params[name], np.flatnonzero(mine), offsets, values))
    rng = np.random.default_rng(int.from_bytes(os.urandom(16), "little"))

    def add_sampled_canaries(
        opt: torch.optim.Optimizer, args: tuple[object, ...], kwargs: dict[str, object]
    ) -> None:
        sampled = rng.random(len(canaries)) < rate  # (m,): this step's Poisson batch
        with torch.no_grad():
            for p, rows, offsets, values in groups:
                chosen = torch.from_numpy(sampled[rows])
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                flat = p.grad.view(-1)
                flat.index_add_(
                    0,
                    offsets[chosen].to(flat.device),
                    values[chosen].to(flat.device, flat.dtype),
                )

    return optimizer.register_step_pre_hook(add_sampled_canaries)
