"""The masked vector's arithmetic: the secure aggregate is FedAvg within the rounding error."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedllm.errors import SecAggError
from fedllm.secagg import (
    Layout,
    Ring,
    average_delta,
    clipped_fraction,
    prg,
    quantize,
    weighted_update,
    weighted_vector,
)
from fedllm.secagg.vector import BLOCK, MIN_QUANTIZATION_BITS, QUANTIZATION_BITS, apply_masks
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


@pytest.mark.parametrize("dtype", [np.uint64, np.uint32])
@pytest.mark.parametrize("size", [1, 1000, BLOCK, 2 * BLOCK + 17, 4 * BLOCK + 3])
def test_block_by_block_masks_are_prg_keystreams_added_and_subtracted(
    size: int, dtype: type[np.unsignedinteger]
) -> None:
    rng = np.random.default_rng(size)
    target = rng.integers(0, np.iinfo(dtype).max, size, dtype=dtype, endpoint=True)
    added = [rng.bytes(32), rng.bytes(16)]  # a pairwise key, a self-mask seed
    subtracted = [rng.bytes(32)]

    def mask(secret: bytes) -> np.ndarray:
        return prg(secret, size, dtype)

    expected = target + mask(added[0]) + mask(added[1]) - mask(subtracted[0])
    apply_masks(target, added, subtracted)
    assert target.dtype == dtype and np.array_equal(target, expected)
    original = expected - mask(added[0]) - mask(added[1]) + mask(subtracted[0])
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


def test_a_32_bit_mask_is_the_same_keystream_read_as_uint32() -> None:
    key = bytes(range(32))
    assert np.array_equal(prg(key, 5000, np.uint32), prg(key, 2500).view(np.uint32))


def test_the_ring_is_32_bit_only_while_the_bound_holds() -> None:
    """Sites whose weights sum to W: 2**32 with the most levels T such that W * T <= 2**32 - 1
    (at most 2**24, at least 2**16); else 2**64 with 2**24. The sum, not m x the largest:
    one large site among small ones keeps the 32-bit ring."""
    assert Ring.for_weights([10] * 5) == Ring(32, 24)  # 50 x 2**24 < 2**32
    assert Ring.for_weights([600] * 100) == Ring(32, 16)  # MNIST's 100 IID sites: 60,000
    assert Ring.for_weights([655] * 100) == Ring(32, 16)  # 65,500 x 2**16 < 2**32
    assert Ring.for_weights([656] * 100) == Ring(64, 24)  # 65,600 x 2**16 > 2**32
    assert Ring.for_weights([]) == Ring(64, 24)
    assert Ring.for_weights([6000] + [100] * 99) == Ring(32, 18)  # 15,900 (m x max: 600,000)
    assert Ring.for_weights([700] * 50 + [500] * 50) == Ring(32, 16)  # 60,000 (m x max: 70,000)
    for weights in ([10] * 5, [600] * 100, [1] * 4096, [12_000] * 5, [40] * 7):
        ring = Ring.for_weights(weights)  # the most levels at which the sum still fits
        assert ring.fits(sum(weights))
        assert ring.levels == 24 or (sum(weights) << (ring.levels + 1)) > 2**32 - 1
    for bits, levels in ((32, MIN_QUANTIZATION_BITS - 1), (32, 25), (64, 16), (16, 8)):
        with pytest.raises(SecAggError, match="not one this version uses"):
            Ring(bits, levels)


@pytest.mark.parametrize("weights", [[655] * 100, [8191] * 8, [40] * 7, [30_000] + [500] * 70])
def test_a_32_bit_sum_at_the_bound_unmasks_exactly(weights: list[int]) -> None:
    """The worst case the bound allows: every value at +clip (q = T) at the largest weights;
    the sum stays below 2**32 and the mean is +clip. A total weight above
    ``(2**32 - 1) >> levels`` does not fit: refused (and a site's own vector must fit)."""
    ring = Ring.for_weights(weights)
    assert ring.bits == 32
    rng = np.random.default_rng(0)
    size = 300
    vectors = {
        100 + i: weighted_vector(np.full(size, 2 * CLIP), n, CLIP, rng, ring)
        for i, n in enumerate(weights)
    }
    assert all(v.dtype == np.uint32 for v in vectors.values())
    total = secure_sum(vectors)
    assert total.dtype == np.uint32 and int(total[1]) == sum(weights) << ring.levels
    weight, delta = average_delta(total, CLIP, ring)
    assert weight == sum(weights) and np.abs(delta - CLIP).max() < 1e-9
    most = (2**32 - 1) >> ring.levels
    assert ring.fits(most) and not ring.fits(most + 1)
    with pytest.raises(SecAggError, match="out of range for the 2\\*\\*32 ring"):
        average_delta(np.array([most + 1, 0], dtype=np.uint32), CLIP, ring)
    with pytest.raises(SecAggError, match="exceeds the round's 2\\*\\*32 ring"):
        weighted_vector(np.zeros(3), most + 1, CLIP, rng, ring)


def test_a_32_bit_sum_with_a_dropped_site_unmasks_exactly() -> None:
    """The server removes a dropped site's pairwise masks modulo 2**32 as well."""
    rng = np.random.default_rng(4)
    weights = [300 + i for i in range(7)]
    ring = Ring.for_weights(weights)
    deltas = {100 + i: rng.uniform(-1, 1, 500) for i in range(7)}
    vectors = {
        nid: weighted_vector(d, n, CLIP, rng, ring)
        for (nid, d), n in zip(deltas.items(), weights, strict=True)
    }
    total = secure_sum(
        vectors, drop_before_unmask=frozenset(), drop_before_masking=frozenset({103})
    )
    kept = {nid: n for nid, n in zip(deltas, weights, strict=True) if nid != 103}
    weight, delta = average_delta(total, CLIP, ring)
    assert weight == sum(kept.values())
    fedavg = sum(deltas[nid] * n for nid, n in kept.items()) / weight
    assert np.abs(delta - fedavg).max() <= 2 * CLIP / 2**ring.levels


def test_the_delta_is_the_exact_float64_difference_of_the_flattened_arrays() -> None:
    torch.manual_seed(1)
    base, local = to_arrays(TabularModel(30, 16)), to_arrays(TabularModel(30, 16))
    layout = Layout.of(base)
    expected = layout.flatten(local) - layout.flatten(base)
    assert np.array_equal(layout.delta(local, base), expected)
    from flwr.app import Array, ArrayRecord

    short = ArrayRecord({k: Array(a.numpy().ravel()[:3].copy()) for k, a in local.items()})
    with pytest.raises(SecAggError, match="values in the update and"):
        layout.delta(short, base)


@pytest.mark.parametrize("spread", [0.5, 20.0])
def test_the_clipped_fraction_counts_values_beyond_the_range(spread: float) -> None:
    delta = np.random.default_rng(3).uniform(-spread, spread, 10_001)
    assert clipped_fraction(delta, CLIP) == float(np.mean(np.abs(delta) > CLIP))
    assert clipped_fraction(np.array([CLIP, -CLIP]), CLIP) == 0.0


@pytest.mark.parametrize("levels", [MIN_QUANTIZATION_BITS, 20, QUANTIZATION_BITS])
def test_fixed_point_rounding_is_unbiased_at_every_ring_level(levels: int) -> None:
    """floor(x + u) in fixed point (a 32-bit dither): within one level of x, never outside
    0..T, and unbiased; the dither is fresh for each call (not the same rounding twice)."""
    step = 2 * CLIP / 2**levels
    rng = np.random.default_rng(5)
    x = rng.uniform(-CLIP, CLIP, 200_000)
    q = quantize(x, CLIP, rng, levels)
    back = q.astype(np.float64) * step - CLIP
    assert q.max() <= 2**levels and np.abs(back - x).max() <= step
    assert abs(float(np.mean(back - x))) < step / 50
    half = np.full(100_000, -CLIP + 0.5 * step)  # exactly half a level above 0
    ups = quantize(half, CLIP, rng, levels)
    assert set(np.unique(ups).tolist()) == {0, 1} and abs(float(ups.mean()) - 0.5) < 0.01
    assert not np.array_equal(ups, quantize(half, CLIP, rng, levels))
    scratch = x.copy()
    assert np.array_equal(
        quantize(scratch, CLIP, np.random.default_rng(9), levels, overwrite=True),
        quantize(x, CLIP, np.random.default_rng(9), levels),
    )


@pytest.mark.parametrize("ring", [Ring(32, 16), Ring()])
def test_the_chunked_update_vector_is_the_vector_of_the_delta(ring: Ring) -> None:
    """weighted_update (what a site sends) gives exactly weighted_vector of the float64
    delta for the same randomness, across arrays and chunk boundaries, and the clipped
    fraction of that delta."""
    from flwr.app import Array, ArrayRecord

    import fedllm.secagg.vector as vector

    rng = np.random.default_rng(8)
    shapes = {"a": (3, vector.CHUNK // 2 + 5), "b": (vector.CHUNK + 1,), "c": (7,)}
    base = ArrayRecord(
        {k: Array(rng.normal(0, 1, s).astype(np.float32)) for k, s in shapes.items()}
    )
    spread = {k: 2 * CLIP if k == "b" else 0.01 for k in shapes}  # some of "b" is clipped
    update = ArrayRecord(
        {
            k: Array((a.numpy() + rng.uniform(-spread[k], spread[k], a.shape)).astype(np.float32))
            for k, a in base.items()
        }
    )
    layout = Layout.of(base)
    delta = layout.delta(update, base)
    got, clipped = weighted_update(layout, update, base, 77, CLIP, np.random.default_rng(1), ring)
    want = weighted_vector(delta, 77, CLIP, np.random.default_rng(1), ring)
    assert got.dtype == want.dtype and np.array_equal(got, want)
    assert clipped == clipped_fraction(delta, CLIP) > 0
    with pytest.raises(SecAggError, match="weight"):
        weighted_update(layout, update, base, 0, CLIP, rng, ring)
    for bad in (np.nan, np.inf, -np.inf):
        values = update["b"].numpy().copy()
        values[-1] = bad  # in the last chunk of "b"
        broken = ArrayRecord({k: update[k] if k != "b" else Array(values) for k in shapes})
        with pytest.raises(SecAggError, match="`b` holds NaN or infinite values"):
            weighted_update(layout, broken, base, 77, CLIP, rng, ring)
