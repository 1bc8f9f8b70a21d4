from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord

from fedllm.errors import UpdateError
from fedllm.tasks.tabular import TabularModel
from fedllm.weights import check_arrays, load_arrays, to_arrays


def test_arrays_round_trip_into_a_fresh_model() -> None:
    source, target = TabularModel(5, 3), TabularModel(5, 3)
    load_arrays(target, to_arrays(source))
    for key, value in source.state_dict().items():
        assert torch.equal(value, target.state_dict()[key])


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda s: s.update({"net.0.weight": torch.zeros(2, 2)}), "has shape"),
        (lambda s: s.update({"extra": torch.zeros(1)}), "extra \\['extra'\\]"),
        (lambda s: s.pop("net.2.bias"), "missing \\['net.2.bias'\\]"),
        (lambda s: s["net.2.bias"].fill_(float("nan")), "NaN or infinite"),
        (lambda s: s.update({"net.2.bias": s["net.2.bias"].double()}), "dtype"),
    ],
)
def test_malformed_updates_are_refused_by_name(mutate: object, message: str) -> None:
    model = TabularModel(5, 3)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    mutate(state)  # type: ignore[operator]
    with pytest.raises(UpdateError, match=message):
        check_arrays(to_arrays(model), ArrayRecord(state))


def test_opacus_prefixed_keys_are_refused() -> None:
    model = TabularModel(5, 0)
    wrapped = ArrayRecord({f"_module.{k}": v for k, v in model.state_dict().items()})
    with pytest.raises(UpdateError, match="_module."):
        load_arrays(model, wrapped)
    assert np.isfinite(to_arrays(model)["net.weight"].numpy()).all()
