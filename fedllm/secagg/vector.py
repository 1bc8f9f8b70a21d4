"""Model updates as one masked integer vector: flatten, quantize, weight, mask (numpy).

A site's weighted update travels as ``v = [n, n * q(delta)] + masks (mod 2**64)``, where
``delta`` is its local model minus the global one (all float arrays, flattened in key order),
``q`` stochastically rounds ``clip(delta, -c, c)`` onto the integers ``0..T`` (``T = 2**bits``)
and ``n`` is its example count (the FedAvg weight). Sums wrap modulo 2**64 in ``uint64``
arithmetic for free, so the server's unmasked sum is exactly ``[sum n, sum n * q]``; the only
error is the rounding, at most ``2c / T`` per value. Everything is vectorized: no Python loop
over elements.

Masks come from AES-256 in counter mode keyed by a site's own 128-bit seed (expanded by HKDF)
or an ECDH-derived pairwise key: a standard PRG from ``cryptography``. Flower's own
``pseudo_rand_gen`` seeds NumPy's Mersenne Twister with a 32-bit XOR of the seed, which is
slower and leaves a 2**32 search space, so it is not used.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from flwr.app import Array, ArrayRecord

from fedllm.errors import SecAggError

QUANTIZATION_BITS = 24  # T = 2**24: rounding error <= 2c / 2**24 per value
MAX_WEIGHT = 2**32  # an example count above this could overflow the 64-bit sums
_ZERO_NONCE = bytes(16)  # every key masks exactly one vector (fresh keys every round)


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


def quantize(delta: np.ndarray, clip_range: float, rng: np.random.Generator) -> np.ndarray:
    """Stochastic rounding of ``clip(delta, -c, c)`` onto ``0..T``: ``floor(x + u)`` with
    ``u ~ U[0, 1)`` rounds up with probability ``frac(x)`` (unbiased inside the range):
    uint64, same shape."""
    scale = (1 << QUANTIZATION_BITS) / (2.0 * clip_range)
    scaled = np.clip(delta, -clip_range, clip_range)
    scaled += clip_range
    scaled *= scale
    scaled += rng.random(scaled.shape)
    np.floor(scaled, out=scaled)
    np.minimum(scaled, float(1 << QUANTIZATION_BITS), out=scaled)  # x = T exactly, u > 0
    out: np.ndarray = scaled.astype(np.uint64)
    return out


def weighted_vector(
    delta: np.ndarray, weight: int, clip_range: float, rng: np.random.Generator
) -> np.ndarray:
    """``[n, n * q(delta)]`` as uint64: shape (1 + delta.size,)."""
    if not 0 < weight < MAX_WEIGHT:
        raise SecAggError(
            f"a site's weight (examples) must be in 1..{MAX_WEIGHT - 1}, got {weight}"
        )
    out = np.empty(1 + delta.size, dtype=np.uint64)
    out[0] = weight
    np.multiply(quantize(delta, clip_range, rng), np.uint64(weight), out=out[1:])
    return out


def average_delta(total: np.ndarray, clip_range: float) -> tuple[int, np.ndarray]:
    """From the unmasked sum ``[W, sum n * q]``: W and the example-weighted mean delta.

    Raises :class:`SecAggError` when a value lies outside what honest sites can produce
    (``0..W*T``): a site sent a malformed vector or the masks did not cancel."""
    weight = int(total[0])
    bound = weight << QUANTIZATION_BITS
    if weight <= 0 or bound >= 2**64:
        raise SecAggError(f"the secure aggregate's total weight {weight} is out of range")
    high = int(total[1:].max(initial=0))
    if high > bound:
        raise SecAggError(
            f"the secure aggregate holds {high}, above the quantization bound "
            f"{bound} (= total weight x 2**{QUANTIZATION_BITS}): a masked vector was malformed "
            "or the masks did not cancel"
        )
    step = 2.0 * clip_range / (1 << QUANTIZATION_BITS)
    return weight, total[1:].astype(np.float64) * (step / weight) - clip_range


def prg(secret: bytes, size: int) -> np.ndarray:
    """``size`` pseudo-random uint64 from AES-256-CTR keyed by ``secret`` (16 bytes: a seed,
    expanded by HKDF; 32 bytes or Flower's base64 form: a key). The keystream is written
    straight into the array's buffer (``update_into``): 6x faster than returning bytes."""
    key = _aes_key(secret)
    stream = bytearray(8 * size + 15)  # update_into wants room for one more block
    encryptor = Cipher(algorithms.AES(key), modes.CTR(_ZERO_NONCE)).encryptor()
    encryptor.update_into(bytes(8 * size), stream)
    return np.frombuffer(stream, dtype=np.uint64, count=size)


class Masks:
    """Adds or subtracts many PRG masks of one length into a vector, in place, through one
    reused keystream buffer (no 2 x 8 bytes a value allocated per mask: with 49 neighbours
    and 1M values that is 800 MB of allocation a round per site)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._zeros = bytes(8 * size)
        self._stream = bytearray(8 * size + 15)  # update_into wants room for one more block
        self._view = np.frombuffer(self._stream, dtype=np.uint64, count=size)

    def _keystream(self, secret: bytes) -> np.ndarray:
        encryptor = Cipher(algorithms.AES(_aes_key(secret)), modes.CTR(_ZERO_NONCE)).encryptor()
        encryptor.update_into(self._zeros, self._stream)
        return self._view

    def add(self, target: np.ndarray, secret: bytes) -> None:
        """``target += prg(secret)`` (modulo 2**64)."""
        np.add(target, self._keystream(secret), out=target)

    def subtract(self, target: np.ndarray, secret: bytes) -> None:
        """``target -= prg(secret)`` (modulo 2**64)."""
        np.subtract(target, self._keystream(secret), out=target)


def _aes_key(secret: bytes) -> bytes:
    if len(secret) == 44:  # Flower's shared keys are urlsafe base64 of 32 bytes
        return base64.urlsafe_b64decode(secret)
    if len(secret) == 16:  # a site's own 128-bit seed: expand to an AES-256 key
        return HKDF(hashes.SHA256(), 32, salt=None, info=b"fedllm secagg self mask").derive(secret)
    if len(secret) != 32:
        raise SecAggError(f"a mask seed must be 16 or 32 bytes, got {len(secret)}")
    return secret
