"""How many neighbours each site shares with, and how many of them must answer (SecAgg+).

Bell et al. 2020 replace Bonawitz et al.'s complete graph by a sparse one: each site
secret-shares with and pairwise-masks against ``k`` neighbours on a ring (itself and ``k // 2``
on each side of a random order), so a site's masking work no longer grows with the federation
once ``k`` is reached, and ``k`` grows as ``O(log n)``. The sizes here follow from three
conditions, each checked with exact binomial tails and a union bound over the ``n`` sites:

- **correctness**: with each site dropping independently with probability ``DROPOUT_RATE``,
  every site keeps at least ``t`` live neighbours (itself included), except with probability
  ``2**-CORRECTNESS_BITS`` a round (below it the round fails closed: nothing is released);
- **privacy**: a malicious server obtains both secrets of a site only with ``2t - k`` colluding
  neighbours (honest neighbours reveal one kind of share each; the site never reveals its own
  masking key): with each site colluding with probability ``CORRUPTION_RATE``, that happens
  for some site with probability at most ``2**-SECURITY_BITS``;
- **no partial sums**: ``t >= k // 2 + 2``, so a site next to ``k // 2`` dropped sites has too
  few live neighbours and the round fails; a server claiming dropouts cannot cut the ring into
  arcs whose sums it would learn one by one.

The corruption rate assumes colluding sites are placed at random on the ring (the SecAgg+
model); the server draws the order, so a server that also controls sites could put them next
to a target, and then a site's own guarantee is the local one: its update stays hidden unless
``2t - k`` of its ``k`` neighbours collude. Below ``k`` a federation uses the complete graph
(Bonawitz et al.) with a majority threshold.
"""

from __future__ import annotations

import functools
import math

DROPOUT_RATE = 0.05  # each sampled site drops out of a round independently with this chance
CORRUPTION_RATE = 0.05  # each site colludes with the server with this chance
SECURITY_BITS = 40  # chance that some site's secrets are exposed: at most 2**-40 a round
CORRECTNESS_BITS = 20  # chance that a round fails closed for dropouts: at most 2**-20


def majority(count: int) -> int:
    """The smallest threshold above half of ``count`` shares."""
    return count // 2 + 1


def _tail(trials: int, p: float, at_least: int) -> float:
    """P[Binomial(trials, p) >= at_least], exactly."""
    if at_least <= 0:
        return 1.0
    return sum(
        math.comb(trials, i) * p**i * (1 - p) ** (trials - i) for i in range(at_least, trials + 1)
    )


@functools.lru_cache(maxsize=256)
def neighbourhood(sampled: int) -> tuple[int, int]:
    """(k, t) for ``sampled`` sites: k neighbours per site (itself included), threshold t.

    The smallest odd ``k < sampled`` (and its smallest ``t``) meeting the three conditions of
    the module docstring at the rates above; otherwise the complete graph, ``k = sampled``,
    with a majority threshold."""
    for k in range(3, sampled, 2):
        for t in range(max(majority(k), k // 2 + 2), k + 1):
            failing = sampled * _tail(k - 1, DROPOUT_RATE, k - t + 1)
            exposed = sampled * _tail(k - 1, CORRUPTION_RATE, 2 * t - k)
            if exposed <= 2.0**-SECURITY_BITS and failing <= 2.0**-CORRECTNESS_BITS:
                return k, t
            if failing > 2.0**-CORRECTNESS_BITS:
                break  # a larger t only fails more rounds
    return sampled, majority(sampled)
