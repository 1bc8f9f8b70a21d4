"""The masked vector's arithmetic: the secure aggregate is FedAvg within the rounding error."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedllm.errors import SecAggError
from fedllm.secagg import Layout, average_delta, prg, quantize, weighted_vector
from fedllm.secagg.vector import BLOCK, QUANTIZATION_BITS, apply_masks
from fedllm.tasks.tabular import TabularModel
from fedllm.weights import to_arrays
from tests.secagg_run import secure_sum

CLIP = 8.0
STEP = 2 * CLIP / 2**QUANTIZATION_BITS  # one quantization level


def test_the_secure_aggregate_equals_plain_fedavg_within_the_quantization_error() -> None:
    torch.manual_seed(0)
    global_arrays = to_arrays(TabularModel(30, 16))
    layout = Layout.of(global_arrays)
    rng = np.random.default_rng(0)
    sites = {nid: (to_arrays(TabularModel(30, 16)), int(n)) for nid, n in
             zip((11, 12, 13, 14, 15), rng.integers(20, 500, 5), strict=True)}  # fmt: skip
    base = layout.flatten(global_arrays)
    vectors = {
        nid: weighted_vector(layout.flatten(local) - base, n, CLIP, rng)
        for nid, (local, n) in sites.items()
    }
    weight, delta = average_delta(secure_sum(vectors), CLIP)
    secure = layout.unflatten(base + delta)
    total = sum(n for _, n in sites.values())
    assert weight == total
    for key in layout.keys:
        fedavg = sum(local[key].numpy().astype(np.float64) * n for local, n in sites.values())
        error = np.abs(secure[key].numpy() - fedavg / total).max()
        assert error <= STEP + 1e-6  # rounding, then float32 storage of the result
        assert secure[key].dtype == global_arrays[key].dtype


def test_stochastic_rounding_is_unbiased_and_within_one_level() -> None:
    rng = np.random.default_rng(2)
    x = rng.uniform(-1, 1, 200_000)
    back = quantize(x, CLIP, rng).astype(np.float64) * STEP - CLIP
    assert np.abs(back - x).max() <= STEP
    assert abs(float(np.mean(back - x))) < STEP / 50


def test_values_beyond_the_clip_range_are_clipped() -> None:
    q = quantize(np.array([-100.0, 100.0]), CLIP, np.random.default_rng(0))
    assert q.tolist() == [0, 2**QUANTIZATION_BITS]


def test_an_aggregate_outside_the_quantization_bound_is_refused() -> None:
    total = np.array([10, 5, 10 * 2**QUANTIZATION_BITS + 1], dtype=np.uint64)
    with pytest.raises(SecAggError, match="above the quantization bound"):
        average_delta(total, CLIP)


def test_integer_arrays_cannot_be_securely_averaged() -> None:
    from flwr.app import Array, ArrayRecord

    with pytest.raises(SecAggError, match="`steps` is int64"):
        Layout.of(ArrayRecord({"steps": Array(np.zeros(2, dtype=np.int64))}))


def test_masks_are_uniform_and_depend_on_the_whole_seed() -> None:
    seed = bytes(range(32))
    a, b = prg(seed, 100_000), prg(seed[:-1] + b"\xff", 100_000)
    assert np.array_equal(a, prg(seed, 100_000))
    assert np.mean(a == b) == 0.0
    assert abs(float(np.mean(a.astype(np.float64))) / 2**64 - 0.5) < 0.01


@pytest.mark.parametrize("size", [1, 1000, BLOCK, 2 * BLOCK + 17])
def test_block_by_block_masks_are_prg_keystreams_added_and_subtracted(size: int) -> None:
    rng = np.random.default_rng(size)
    target = rng.integers(0, 2**64, size, dtype=np.uint64)
    added = [rng.bytes(32), rng.bytes(16)]  # a pairwise key, a self-mask seed
    subtracted = [rng.bytes(32)]
    expected = target + prg(added[0], size) + prg(added[1], size) - prg(subtracted[0], size)
    apply_masks(target, added, subtracted)
    assert np.array_equal(target, expected)
    original = expected - prg(added[0], size) - prg(added[1], size) + prg(subtracted[0], size)
    apply_masks(target, subtracted, added)  # the other way round: the masks cancel
    assert np.array_equal(target, original)


def test_masks_are_the_aes_256_ctr_keystream() -> None:
    """The GCM path's output on zeros is plain AES-256-CTR from counter block 0**96 || 2."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    key = bytes(range(32))
    stream = bytearray(8 * 5000 + 15)
    counter = bytes(12) + (2).to_bytes(4, "big")
    Cipher(algorithms.AES(key), modes.CTR(counter)).encryptor().update_into(bytes(40000), stream)
    assert np.array_equal(prg(key, 5000), np.frombuffer(stream, np.uint64, count=5000))
