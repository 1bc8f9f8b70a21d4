"""Model weights <-> Flower ArrayRecords, checked at the boundary.

Exchanged keys are the plain model's ``state_dict`` keys: an Opacus ``_module.`` prefix, a
missing or extra key, a wrong shape or dtype, or a non-finite value is refused by name. A model
with frozen parameters (a pretrained base fine-tuned through adapters) exchanges only its
trainable parameters: every site already holds the frozen ones.
"""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import ArrayRecord

from fedllm.errors import UpdateError

OPACUS_PREFIX = "_module."


def exchanged_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """What travels: the whole ``state_dict``, or only the trainable parameters when some
    parameters are frozen."""
    state = model.state_dict()
    params = dict(model.named_parameters())
    if all(p.requires_grad for p in params.values()):
        return state
    return {k: v for k, v in state.items() if k in params and params[k].requires_grad}


def to_arrays(model: torch.nn.Module) -> ArrayRecord:
    """The model's exchanged weights as an ArrayRecord (plain keys, no Opacus prefix)."""
    state = {k: v.detach().cpu() for k, v in exchanged_state(model).items()}
    check_keys(state.keys())
    return ArrayRecord(state)


def state_bytes(state: dict[str, torch.Tensor]) -> int:
    """Bytes of the tensors' data (what an update carries, before any framing)."""
    return sum(v.numel() * v.element_size() for v in state.values())


def check_keys(keys: object) -> None:
    wrapped = [k for k in keys if isinstance(k, str) and k.startswith(OPACUS_PREFIX)]  # type: ignore[attr-defined]
    if wrapped:
        raise UpdateError(
            f"exchanged keys must not carry Opacus's `{OPACUS_PREFIX}` prefix: {wrapped[:3]}"
        )


def check_arrays(reference: ArrayRecord, candidate: ArrayRecord) -> None:
    """Raise :class:`UpdateError` unless ``candidate`` matches ``reference`` key by key."""
    check_keys(candidate.keys())
    missing = sorted(set(reference) - set(candidate))
    extra = sorted(set(candidate) - set(reference))
    if missing or extra:
        raise UpdateError(f"update keys differ from the model: missing {missing}, extra {extra}")
    for key, ref in reference.items():
        got = candidate[key]
        if tuple(got.shape) != tuple(ref.shape):
            raise UpdateError(
                f"update `{key}` has shape {tuple(got.shape)}, model has {tuple(ref.shape)}"
            )
        if got.dtype != ref.dtype:
            raise UpdateError(f"update `{key}` has dtype {got.dtype}, model has {ref.dtype}")
        if not np.isfinite(got.numpy()).all():
            raise UpdateError(f"update `{key}` holds NaN or infinite values")


def load_arrays(model: torch.nn.Module, arrays: ArrayRecord) -> None:
    """Load global weights into the plain (unwrapped) model after checking them."""
    check_arrays(to_arrays(model), arrays)
    # Keys were checked to be exactly the exchanged ones; frozen parameters stay as they are.
    model.load_state_dict(arrays.to_torch_state_dict(), strict=False)
