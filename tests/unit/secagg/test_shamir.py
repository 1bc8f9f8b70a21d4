"""The site's vectorized Shamir split is PyCryptodome's GF(2**128) sharing computed differently:
its shares rebuild the secret with PyCryptodome's own ``Shamir.combine``, and its polynomial
evaluation equals PyCryptodome's ``_Element`` Horner evaluation for the same coefficients."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
from Crypto.Protocol.SecretSharing import Shamir, _Element

from fedllm.errors import SecAggError
from fedllm.secagg import combine_many, split_secret, split_secrets
from fedllm.secagg.shamir import SHARE_BYTES, _evaluate, share_index


def _pycryptodome(shares: list[bytes]) -> bytes:
    return bytes(Shamir.combine([(share_index(s), s[4:]) for s in shares], ssss=False))


@pytest.mark.parametrize("seed", range(8))
def test_shares_rebuild_with_pycryptodome_combine_for_random_thresholds(seed: int) -> None:
    rng = random.Random(seed)
    count = rng.randint(1, 60)
    threshold = rng.randint(1, count)
    secrets = [os.urandom(16) for _ in range(rng.randint(1, 3))]
    split = split_secrets(secrets, threshold, count)
    assert len(split) == len(secrets)
    for secret, shares in zip(secrets, split, strict=True):
        assert [share_index(s) for s in shares] == list(range(1, count + 1))
        assert all(len(s) == SHARE_BYTES for s in shares)
        for _ in range(3):  # any `threshold` of them
            assert _pycryptodome(rng.sample(shares, threshold)) == secret
        if threshold > 1:  # fewer give another value (a random field element)
            assert _pycryptodome(rng.sample(shares, threshold - 1)) != secret
    owners = {i: shares for i, shares in enumerate(split)}
    assert combine_many(owners, threshold) == dict(enumerate(secrets))


def test_fresh_coefficients_every_split() -> None:
    secret = os.urandom(16)
    first, second = split_secret(secret, 3, 5), split_secret(secret, 3, 5)
    assert first != second
    assert _pycryptodome(first[:3]) == _pycryptodome(second[2:]) == secret


@pytest.mark.parametrize(("count", "degree"), [(1, 0), (49, 34), (300, 7), (1025, 3)])
def test_evaluation_equals_pycryptodome_horner(count: int, degree: int) -> None:
    """Points past 2**10 exercise overflow bits of every position the reduction folds."""
    coefficients = [os.urandom(16) for _ in range(degree + 1)]
    words = np.frombuffer(b"".join(coefficients), dtype=">u8").astype(np.uint64)
    got = _evaluate(words.reshape(degree + 1, 1, 2), count).astype(">u8").tobytes()
    for x in [*range(1, min(count, 64) + 1), count]:
        y = _Element(0)
        for c in coefficients:
            y = _Element(x) * y + _Element(c)
        assert got[16 * (x - 1) : 16 * x] == y.encode(), x


def test_bad_split_requests_are_refused() -> None:
    with pytest.raises(SecAggError, match="must be 16 bytes, got 15"):
        split_secret(bytes(15), 2, 3)
    with pytest.raises(SecAggError, match="threshold 4 of 3 shares"):
        split_secret(bytes(16), 4, 3)
    with pytest.raises(SecAggError, match="threshold 0 of 3 shares"):
        split_secret(bytes(16), 0, 3)


def test_combining_many_at_the_default_sizing_matches_pycryptodome() -> None:
    """100 secrets at 35 of 49 (the sizing at 100 sites), each from a different subset."""
    rng = random.Random(1)
    secrets = {n: os.urandom(16) for n in range(100)}
    given = {
        n: rng.sample(split_secret(s, 35, 49), rng.randint(35, 49)) for n, s in secrets.items()
    }
    rebuilt = combine_many(given, 35)
    assert rebuilt == secrets
    for n in (0, 57):
        assert _pycryptodome(sorted(given[n])[:35]) == secrets[n]
