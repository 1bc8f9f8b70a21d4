"""Shamir secret sharing of the 16-byte secrets SecAgg+ hands out (PyCryptodome, GF(2**128)).

A site splits its mask seed and its masking-key seed into one share per neighbour; the server
rebuilds, for every site in the round, one of them from ``threshold`` shares. PyCryptodome's
``Shamir.combine`` (which Flower's ``combine_shares`` wraps) multiplies field elements in
constant time in pure Python, about 0.25 ms a product, and recomputes the Lagrange
coefficients for every secret: 80 ms a secret at threshold 50, seconds a round at 100 sites.
:func:`combine_many` gives the same results (tested against ``Shamir.combine``) with the
library's own field arithmetic used differently: the coefficients are computed once per set of
share indices (the server takes the lowest indices, so one set serves almost every site), and
each secret is one sum of carry-less products (``_mult_gf2``) reduced once (``_div_gf2``).
The server's reconstruction needs no constant time: it learns the secrets anyway.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from Crypto.Protocol import SecretSharing
from Crypto.Protocol.SecretSharing import Shamir

from fedllm.errors import SecAggError

# PyCryptodome's GF(2**128) arithmetic (its stubs type _div_gf2 and _Element's operators
# wrongly): _Element is a field element, _mult_gf2 a carry-less product, _div_gf2 the
# polynomial division whose remainder reduces modulo the field polynomial.
_field: Any = SecretSharing
_Element, _mult_gf2, _div_gf2 = _field._Element, _field._mult_gf2, _field._div_gf2

SECRET_BYTES = 16  # each secret a site shares: one 128-bit Shamir block (GF(2**128))
SHARE_BYTES = 4 + SECRET_BYTES  # index (4 bytes, little-endian) || share


def split_secret(secret: bytes, threshold: int, count: int) -> list[bytes]:
    """Shamir shares of a 16-byte secret (PyCryptodome, the primitive under Flower's
    ``create_shares``) at indices 1..count, each as ``index (4 bytes) || share (16 bytes)``.
    Flower's wrapper pads to whole blocks plus one and starts a thread pool per call: 3x the
    work for 16 bytes."""
    if len(secret) != SECRET_BYTES:
        raise SecAggError(f"a shared secret must be {SECRET_BYTES} bytes, got {len(secret)}")
    return [
        index.to_bytes(4, "little") + share
        for index, share in Shamir.split(threshold, count, secret, ssss=False)
    ]


def share_index(share: bytes) -> int:
    if len(share) != SHARE_BYTES:
        raise SecAggError("a secret share has the wrong length")
    return int.from_bytes(share[:4], "little")


def combine_secret(shares: Sequence[bytes]) -> bytes:
    """The secret from ``threshold`` shares made by :func:`split_secret` (PyCryptodome)."""
    pairs = [(share_index(s), s[4:]) for s in shares]
    return bytes(Shamir.combine(pairs, ssss=False))


def combine_many(shares: Mapping[int, Sequence[bytes]], threshold: int) -> dict[int, bytes]:
    """For each owner, its secret from the ``threshold`` shares with the lowest indices among
    those given (owner -> shares): what :func:`combine_secret` returns, computed faster."""
    coefficients: dict[tuple[int, ...], list[int]] = {}
    out: dict[int, bytes] = {}
    for owner, given in shares.items():
        by_index = {share_index(s): s for s in given}
        if len(by_index) < threshold or 0 in by_index:
            raise SecAggError(
                f"{len(by_index)} distinct shares of node {owner}'s secret, below the "
                f"threshold {threshold}"
            )
        xs = tuple(sorted(by_index)[:threshold])
        if xs not in coefficients:
            coefficients[xs] = _lagrange_at_zero(xs)
        product = 0  # sum of carry-less products, reduced once
        for x, weight in zip(xs, coefficients[xs], strict=True):
            product ^= _mult_gf2(weight, int.from_bytes(by_index[x][4:], "big"))
        value = _div_gf2(product, _Element.irr_poly)[1]
        out[owner] = value.to_bytes(SECRET_BYTES, "big")
    return out


def _lagrange_at_zero(xs: tuple[int, ...]) -> list[int]:
    """The Lagrange basis polynomials at 0 for the nodes ``xs``, as field integers
    (PyCryptodome's ``_Element`` arithmetic, as in ``Shamir.combine``)."""
    points = [_Element(x) for x in xs]
    weights = []
    for j, x_j in enumerate(points):
        numerator, denominator = _Element(1), _Element(1)
        for m, x_m in enumerate(points):
            if m != j:
                numerator *= x_m
                denominator *= x_j + x_m
        weights.append(int(numerator * denominator.inverse()))
    return weights
