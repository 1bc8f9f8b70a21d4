"""Model updates as one masked integer vector: flatten, quantize, weight, mask (numpy).

A site's weighted update travels as ``v = [n, n * q(delta)] + masks (mod 2**b)``, where
``delta`` is its local model minus the global one (all float arrays, flattened in key order),
``q`` stochastically rounds ``clip(delta, -c, c)`` onto the integers ``0..T`` (``T = 2**Q``)
and ``n`` is its example count (the FedAvg weight). Sums wrap modulo ``2**b`` in ``uint32`` or
``uint64`` arithmetic for free, so the server's unmasked sum is exactly ``[sum n, sum n * q]``
as long as it does not wrap; the only error is the rounding, at most ``2c / T`` per value.
Everything is vectorized: no Python loop over elements.

**The ring** (:class:`Ring`) is chosen per round by the server: ``b = 32`` with ``Q`` levels
bits (16 to 24) when the bound below holds for the weights the sampled sites reported the
round before, else ``b = 64`` with ``Q = 24``. A 32-bit ring halves the masked vector and
every keystream (Flower's own SecAgg+ default modulus is also 2**32).

*The bound.* Each honest site's entries are ``n_i * q_i`` with ``0 <= q_i <= T`` (and ``n_i``
itself), so every entry of the sum over the summed sites is at most ``T * W``, ``W = sum n_i``.
If ``T * W <= 2**b - 1`` no entry wraps, and the weight entry is ``W`` exactly. The server
knows ``W`` exactly: the sites report their weights in the clear, and the unmasked weight
entry must equal that sum. So the server checks ``T * W <= 2**b - 1`` for the reported ``W``
and that the weight entry equals it; otherwise it rejects the round (fails closed: the sum may
have wrapped). Before the round it picks ``b = 32`` only when ``W' * T <= 2**32 - 1`` for
``W'`` the sum of the weights the same sites reported the round before (weights are stable: a
released DP count is reused for the whole run, so this round's sum is no larger), and each
site refuses to mask a vector whose own entries would not fit (``n * T > 2**b - 1``).

Masks come from AES-256 in counter mode keyed by a site's own 128-bit seed (expanded by HKDF)
or an ECDH-derived pairwise key: a standard PRG from ``cryptography``. The keystream is
produced by OpenSSL's AES-GCM encryption of zeros, whose ciphertext *is* the AES-256-CTR
keystream from the counter block ``nonce || 2`` (NIST SP 800-38D, GCTR; tested against CTR
mode): OpenSSL runs its GCM path on the vector AES instructions (VAES, AVX-512) and its CTR
path on 128-bit AES-NI, so the same keystream comes about 1.8x faster (6 to 11 GB/s here);
the GHASH tag is never computed to the end nor used. GCM's 32-bit block counter bounds one
keystream to 2**36 - 32 bytes, 8.6 billion values. Flower's own
``pseudo_rand_gen`` seeds NumPy's Mersenne Twister with a 32-bit XOR of the seed, which is
slower and leaves a 2**32 search space, so it is not used.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from flwr.app import Array, ArrayRecord

from fedllm.errors import SecAggError

QUANTIZATION_BITS = 24  # T = 2**24 (the 64-bit ring's): rounding error <= 2c / 2**24 per value
MIN_QUANTIZATION_BITS = 16  # the 32-bit ring only with at least 2**16 levels (error <= 2c / 2**16)
MAX_WEIGHT = 2**32  # an example count above this could overflow the 64-bit sums
_ZERO_NONCE = bytes(12)  # every key masks exactly one vector (fresh keys every round)
MAX_KEYSTREAM = 2**36 - 32  # GCM's limit on one keystream in bytes (32-bit block counter)
MAX_VALUES = MAX_KEYSTREAM // 8  # of a 64-bit ring's vector


@dataclass(frozen=True)
class Ring:
    """Where a round's masked vectors live: integers modulo ``2**bits`` (32 or 64), each
    update value quantized to ``0..2**levels``. See the module docstring for the bound."""

    bits: int = 64
    levels: int = QUANTIZATION_BITS

    def __post_init__(self) -> None:
        allowed = (
            self.levels == QUANTIZATION_BITS
            if self.bits == 64
            else self.bits == 32 and MIN_QUANTIZATION_BITS <= self.levels <= QUANTIZATION_BITS
        )
        if not allowed:
            raise SecAggError(
                f"secure aggregation: a ring of 2**{self.bits} with 2**{self.levels} "
                f"quantization levels is not one this version uses (2**64 with 2**"
                f"{QUANTIZATION_BITS}, or 2**32 with 2**{MIN_QUANTIZATION_BITS} to 2**"
                f"{QUANTIZATION_BITS})"
            )

    @property
    def dtype(self) -> type[np.unsignedinteger]:
        return np.uint32 if self.bits == 32 else np.uint64

    def fits(self, total_weight: int) -> bool:
        """Whether sums of honest vectors of ``total_weight`` in all cannot wrap:
        ``T * W <= 2**bits - 1``."""
        return total_weight > 0 and total_weight << self.levels <= (1 << self.bits) - 1

    @classmethod
    def for_weights(cls, weights: Sequence[int]) -> Ring:
        """The ring for one round of ``len(weights)`` sites, each with at most the given
        weight: 2**32 with as many levels as ``sum(weights) * T <= 2**32 - 1`` allows (at
        most 2**24), when that is at least 2**16; else 2**64."""
        bound = sum(weights)
        if bound <= 0:
            return cls()
        levels = min(QUANTIZATION_BITS, ((2**32 - 1) // bound).bit_length() - 1)
        if levels < MIN_QUANTIZATION_BITS:
            return cls()
        return cls(32, levels)


RING64 = Ring()  # the ring of a round without the weights to prove a 32-bit sum (and the default)


@dataclass(frozen=True)
class Layout:
    """Which arrays the vector holds, in order, with their shapes and dtypes."""

    keys: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[str, ...]

    @classmethod
    def of(cls, arrays: ArrayRecord) -> Layout:
        keys, shapes, dtypes = [], [], []
        for key, array in arrays.items():
            if not np.issubdtype(np.dtype(array.dtype), np.floating):
                raise SecAggError(
                    f"secure aggregation averages floating-point arrays; `{key}` is {array.dtype}"
                )
            keys.append(key)
            shapes.append(tuple(array.shape))
            dtypes.append(str(array.dtype))
        return cls(tuple(keys), tuple(shapes), tuple(dtypes))

    @property
    def size(self) -> int:
        """Length of the masked vector: the weight, then every value."""
        return 1 + sum(int(np.prod(s)) for s in self.shapes)

    def flatten(self, arrays: ArrayRecord) -> np.ndarray:
        """All values, float64, in layout order: shape (size - 1,)."""
        return np.concatenate([arrays[k].numpy().astype(np.float64).ravel() for k in self.keys])

    def pairs(
        self, update: ArrayRecord, base: ArrayRecord
    ) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
        """Each array's key, and the array of ``update`` and of ``base``, flat, in layout
        order; refused (naming the array) when either does not hold the layout's number of
        values."""
        for key, shape in zip(self.keys, self.shapes, strict=True):
            a, b = update[key].numpy().ravel(), base[key].numpy().ravel()
            if not a.size == b.size == int(np.prod(shape)):
                raise SecAggError(
                    f"secure aggregation: `{key}` has {a.size} values in the update and "
                    f"{b.size} in the global model, not the {int(np.prod(shape))} of its shape "
                    f"{shape}"
                )
            yield key, a, b

    def delta(self, update: ArrayRecord, base: ArrayRecord) -> np.ndarray:
        """``flatten(update) - flatten(base)`` without the two float64 copies: each array's
        difference computed in float64 (exact for float32 inputs) into one buffer."""
        out = np.empty(self.size - 1, dtype=np.float64)
        start = 0
        for _, a, b in self.pairs(update, base):
            np.subtract(a, b, out=out[start : start + a.size], dtype=np.float64)
            start += a.size
        return out

    def unflatten(self, flat: np.ndarray) -> ArrayRecord:
        out: dict[str, Array] = {}
        start = 0
        for key, shape, dtype in zip(self.keys, self.shapes, self.dtypes, strict=True):
            count = int(np.prod(shape))
            out[key] = Array(
                np.ascontiguousarray(flat[start : start + count].reshape(shape), dtype)
            )
            start += count
        return ArrayRecord(out)


def quantize(
    delta: np.ndarray,
    clip_range: float,
    rng: np.random.Generator,
    levels: int = QUANTIZATION_BITS,
    dtype: type[np.unsignedinteger] = np.uint64,
    *,
    overwrite: bool = False,
) -> np.ndarray:
    """Stochastic rounding of ``clip(delta, -c, c)`` onto ``0..T`` (``T = 2**levels``):
    ``floor(x + u)``, ``x = (clip(delta) + c) * T / 2c``, rounds up with probability
    ``frac(x)`` (unbiased inside the range): ``dtype``, same shape.

    In fixed point, five vectorized passes: ``x`` scaled by ``2**32`` (clipped to
    ``[0, T * 2**32]`` after scaling, so no rounding can leave the range), truncated to
    ``uint64``, plus a uniform 32-bit integer ``u * 2**32`` and shifted back by 32 bits. The
    dither is an AES-256-CTR keystream (:func:`prg`) keyed by 32 bytes drawn from ``rng``:
    the site's fresh OS entropy, so the server cannot predict the rounding. Float64 holds
    ``x * 2**32 < 2**57`` to within ``2**4``: the chance of rounding up is ``frac(x)`` to
    within ``2**-28``. ``overwrite``: ``delta`` (float64) may be used as scratch space."""
    scale = float(1 << (levels + 32)) / (2.0 * clip_range)
    if overwrite and delta.dtype == np.float64:
        x = np.multiply(delta, scale, out=delta)
    else:
        x = np.multiply(delta, scale, dtype=np.float64)
    x += clip_range * scale
    np.clip(x, 0.0, float(1 << (levels + 32)), out=x)
    fixed: np.ndarray = x.astype(np.uint64)  # floor: x >= 0
    np.add(fixed, prg(rng.bytes(32), fixed.size, np.uint32).reshape(fixed.shape), out=fixed)
    fixed >>= np.uint64(32)  # floor(x + u) <= T: x <= T * 2**32 and u * 2**32 < 2**32
    if dtype != np.uint64:
        fixed = fixed.astype(dtype)
    return fixed


def clipped_fraction(delta: np.ndarray, clip_range: float) -> float:
    """The fraction of values with ``|delta| > clip_range`` (two reductions when none is)."""
    if delta.size == 0 or (delta.max() <= clip_range and delta.min() >= -clip_range):
        return 0.0
    outside = np.count_nonzero(delta > clip_range) + np.count_nonzero(delta < -clip_range)
    return outside / delta.size


def _check_weight(weight: int, ring: Ring) -> None:
    if not 0 < weight < MAX_WEIGHT:
        raise SecAggError(
            f"a site's weight (examples) must be in 1..{MAX_WEIGHT - 1}, got {weight}"
        )
    if not ring.fits(weight):
        raise SecAggError(
            f"secure aggregation: this site's weight {weight} times 2**{ring.levels} "
            f"quantization levels exceeds the round's 2**{ring.bits} ring: its vector could "
            "wrap, so it is not sent"
        )


def weighted_vector(
    delta: np.ndarray,
    weight: int,
    clip_range: float,
    rng: np.random.Generator,
    ring: Ring = RING64,
) -> np.ndarray:
    """``[n, n * q(delta)]`` in the ring's dtype: shape (1 + delta.size,). Refused when the
    site's own entries would not fit the ring (``n * T > 2**bits - 1``)."""
    _check_weight(weight, ring)
    out = np.empty(1 + delta.size, dtype=ring.dtype)
    out[0] = weight
    quantized = quantize(delta.ravel(), clip_range, rng, ring.levels)
    # n * q <= n * T <= 2**bits - 1 (checked above): the narrowing cast keeps every value.
    np.multiply(quantized, np.uint64(weight), out=out[1:], casting="unsafe")
    return out


CHUNK = 65536  # values per pass of weighted_update: its scratch arrays stay in a core's L2 cache


def weighted_update(
    layout: Layout,
    update: ArrayRecord,
    base: ArrayRecord,
    weight: int,
    clip_range: float,
    rng: np.random.Generator,
    ring: Ring = RING64,
) -> tuple[np.ndarray, float]:
    """:func:`weighted_vector` of ``update - base`` and the fraction of values clipped
    (:func:`clipped_fraction`), chunk by chunk: the same values as
    ``weighted_vector(layout.delta(update, base), weight, clip_range, rng, ring)`` (the same
    dither keystream, in the same order) without its full-length float64 and uint64
    temporaries: one pass over memory, in scratch arrays of ``CHUNK`` values reused.

    Refused (naming the array) when the update holds a NaN or an infinite value: rounded into
    the ring it would be an arbitrary number that the server, seeing only the sum, could not
    tell from a real update."""
    _check_weight(weight, ring)
    out = np.empty(layout.size, dtype=ring.dtype)
    out[0] = weight
    scale = float(1 << (ring.levels + 32)) / (2.0 * clip_range)
    offset, high = clip_range * scale, float(1 << (ring.levels + 32))
    dither = _keystream(rng.bytes(32), 4 * (layout.size - 1))  # prg()'s uint32 stream
    x = np.empty(min(CHUNK, layout.size), dtype=np.float64)
    fixed = np.empty(x.size, dtype=np.uint64)
    zeros = bytes(4 * x.size)
    stream = bytearray(len(zeros) + 15)  # update_into wants room for one more block
    noise = np.frombuffer(stream, dtype=np.uint32, count=x.size)
    clipped, position = 0, 1
    for key, a, b in layout.pairs(update, base):
        for start in range(0, a.size, x.size):
            count = min(x.size, a.size - start)
            xs, fs, us = x[:count], fixed[:count], noise[:count]
            np.subtract(
                a[start : start + count], b[start : start + count], out=xs, dtype=np.float64
            )
            high_value, low_value = xs.max(), xs.min()
            if not (np.isfinite(high_value) and np.isfinite(low_value)):
                raise SecAggError(
                    f"secure aggregation: the update's `{key}` holds NaN or infinite values "
                    "(local training diverged?): it is not sent"
                )
            inside = high_value <= clip_range and low_value >= -clip_range
            if not inside:
                clipped += int(
                    np.count_nonzero(xs > clip_range) + np.count_nonzero(xs < -clip_range)
                )
            xs *= scale
            xs += offset
            if inside:  # x >= fl(-c * s) + fl(c * s) = 0 already; rounding may pass T * 2**32
                np.minimum(xs, high, out=xs)
            else:
                np.clip(xs, 0.0, high, out=xs)
            np.copyto(fs, xs, casting="unsafe")  # floor: x >= 0
            dither.update_into(zeros[: 4 * count], stream)
            np.add(fs, us, out=fs)
            fs >>= np.uint64(32)
            np.multiply(
                fs, np.uint64(weight), out=out[position : position + count], casting="unsafe"
            )
            position += count
    return out, clipped / max(1, out.size - 1)


def average_delta(
    total: np.ndarray, clip_range: float, ring: Ring = RING64
) -> tuple[int, np.ndarray]:
    """From the unmasked sum ``[W, sum n * q]``: W and the example-weighted mean delta.

    Raises :class:`SecAggError` when ``T * W`` does not fit the ring (the sum may have
    wrapped) or a value lies outside what honest sites can produce (``0..W*T``): a site sent
    a malformed vector or the masks did not cancel. The caller checks W against the weights
    the sites reported (a wrapped weight entry is caught there)."""
    weight = int(total[0])
    if not ring.fits(weight):
        raise SecAggError(
            f"the secure aggregate's total weight {weight} is out of range for the 2**"
            f"{ring.bits} ring with 2**{ring.levels} quantization levels"
        )
    bound = weight << ring.levels
    high = int(total[1:].max(initial=0))
    if high > bound:
        raise SecAggError(
            f"the secure aggregate holds {high}, above the quantization bound "
            f"{bound} (= total weight x 2**{ring.levels}): a masked vector was malformed "
            "or the masks did not cancel"
        )
    step = 2.0 * clip_range / (1 << ring.levels)
    return weight, total[1:].astype(np.float64) * (step / weight) - clip_range


def prg(secret: bytes, size: int, dtype: type[np.unsignedinteger] = np.uint64) -> np.ndarray:
    """``size`` pseudo-random ``dtype`` (uint64 or uint32) values: the AES-256-CTR keystream
    keyed by ``secret`` (16 bytes: a seed, expanded by HKDF; 32 bytes or Flower's base64 form:
    a key) from counter block ``0**96 || 2``. The keystream is written straight into the
    array's buffer (``update_into``): 6x faster than returning bytes."""
    width = np.dtype(dtype).itemsize
    stream = bytearray(width * size + 15)  # update_into wants room for one more block
    _keystream(secret, width * size).update_into(bytes(width * size), stream)
    return np.frombuffer(stream, dtype=dtype, count=size)


BLOCK = 32768  # uint64 values masked per pass: 256 KB of keystream, in a core's L2 cache


def apply_masks(
    target: np.ndarray, added: Sequence[bytes] = (), subtracted: Sequence[bytes] = ()
) -> None:
    """``target += sum(prg(a) for a in added) - sum(prg(s) for s in subtracted)`` (modulo
    2**64 or 2**32: ``target``'s dtype), in place, with exactly :func:`prg`'s keystreams.

    Block by block: every mask's keystream for one block of ``BLOCK`` values is written into
    one reused buffer and added while both are in cache (each key's CTR stream continues
    from block to block), instead of one full-length keystream per mask going through
    memory: with 49 neighbours and 1M values, a third less time than mask by mask."""
    size, width = target.size, target.dtype.itemsize
    if target.dtype not in (np.uint32, np.uint64):
        raise SecAggError(f"masks apply to uint32 or uint64 vectors, not {target.dtype}")
    streams = [
        (_keystream(secret, width * size), op)
        for secrets, op in ((added, np.add), (subtracted, np.subtract))
        for secret in secrets
    ]
    step = BLOCK * 8 // width  # the same 256 KB of keystream per pass
    zeros = bytes(width * min(step, size))
    buffer = bytearray(len(zeros) + 15)  # update_into wants room for one more block
    stream = np.frombuffer(buffer, dtype=target.dtype, count=len(zeros) // width)
    for start in range(0, size, step):
        block = target[start : start + step]
        count = block.size
        data = zeros if count == stream.size else zeros[: width * count]
        for encryptor, op in streams:
            encryptor.update_into(data, buffer)
            op(block, stream[:count], out=block)


def _keystream(secret: bytes, nbytes: int) -> CipherContext:
    """An encryptor whose output on zeros is the AES-256-CTR keystream for ``secret`` from
    counter block ``0**96 || 2`` (AES-GCM's encryption: see the module docstring)."""
    if nbytes > MAX_KEYSTREAM:
        raise SecAggError(
            f"a masked vector of {nbytes} bytes exceeds one keystream's {MAX_KEYSTREAM}"
        )
    return Cipher(algorithms.AES(_aes_key(secret)), modes.GCM(_ZERO_NONCE)).encryptor()


def _aes_key(secret: bytes) -> bytes:
    if len(secret) == 44:  # Flower's shared keys are urlsafe base64 of 32 bytes
        return base64.urlsafe_b64decode(secret)
    if len(secret) == 16:  # a site's own 128-bit seed: expand to an AES-256 key
        return HKDF(hashes.SHA256(), 32, salt=None, info=b"fedllm secagg self mask").derive(secret)
    if len(secret) != 32:
        raise SecAggError(f"a mask seed must be 16 or 32 bytes, got {len(secret)}")
    return secret
