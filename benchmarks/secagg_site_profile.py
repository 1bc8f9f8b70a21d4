"""One site's SecAgg+ work per stage of a steady round, in one process (no Ray, no messages).

A federation of ``--sites`` sites with the default neighbourhood (49 / 35 at 100 sites): every
neighbour's keys, signatures and encrypted shares are real (each neighbour is a full
:class:`SiteSecAgg` with its own identity key); the profiled site then runs what its two
steady-round messages run, timed piece by piece:

- **train reply**: load the state shared ahead, the update's delta, the fraction clipped,
  quantized and weighted (``weighted_update``, chunk by chunk), check and
  decrypt the neighbours' shares, one pairwise agreement and one keystream per neighbour, the
  self mask; the next round's setup (two key pairs, one signature); the state saved.
- **unmask answer**: the survivor-set signature; the next round's key sharing: the roster read
  (simulation: each neighbour's public key file), the neighbours' key signatures verified, the
  two Shamir splits, one agreement and one encryption per neighbour; the state saved.

    .venv/bin/python benchmarks/secagg_site_profile.py --sites 100 --params 100000 1000000
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from flwr.app import Array, ArrayRecord  # noqa: E402

from fedllm.crypto.signing import SiteKey  # noqa: E402
from fedllm.secagg import (  # noqa: E402
    MASK,
    SHARE_KEYS,
    Layout,
    Ring,
    Roster,
    SiteSecAgg,
    neighbourhood,
    publish_public_key,
    state_from_config,
    state_to_config,
    weighted_update,
)
from fedllm.secagg.shamir import split_secrets  # noqa: E402
from fedllm.secagg.site import PAIRWISE, agree, masking_key  # noqa: E402
from fedllm.secagg.vector import apply_masks  # noqa: E402

RUN, ROUND, CLIP = 7, 2, 8.0


def federation(folder: Path, k: int) -> tuple[list[SiteSecAgg], dict[int, SiteKey]]:
    """``k`` neighbours (node ids 1..k) with identity keys published under ``folder``, each
    set up for ``ROUND``."""
    keys, states = {}, []
    for nid in range(1, k + 1):
        keys[nid] = SiteKey.load_or_generate(folder / f"n{nid}" / "site-key.pem")
        publish_public_key(folder / f"n{nid}", keys[nid])
        states.append(SiteSecAgg.setup(nid, ROUND, RUN, f"n{nid}", keys[nid]))
    return states, keys


def profile(sites: int, params: int, reps: int, folder: Path, ring: Ring) -> dict[str, float]:
    k, t = neighbourhood(sites)
    states, keys = federation(folder, k)
    peers = {s.node_id: s.signed_keys for s in states}
    names = [f"n{n}" for n in range(1, k + 1)]
    me = states[0]
    others = states[1:]
    roster_all = Roster.simulated(folder, names)
    sent_to_me = {
        s.node_id: s.share_keys(peers, t, k, roster_all, 2)[me.node_id] for s in others[: k - 1]
    }
    rng = np.random.default_rng(0)
    base = ArrayRecord({"w": Array(rng.normal(0, 0.1, params).astype(np.float32))})
    update = ArrayRecord({"w": Array(base["w"].numpy() + np.float32(0.01))})
    layout = Layout.of(base)
    times: dict[str, list[float]] = {}

    def clock(name: str, fn: Callable[[], Any]) -> Any:
        started = time.process_time()  # this process's CPU time: steady under shared load
        out = fn()
        times.setdefault(name, []).append(time.process_time() - started)
        return out

    def once() -> None:
        # the unmask answer of the round before: the key sharing for ROUND, done ahead
        roster = Roster.simulated(folder, names)  # fresh per message, as the handler's
        clock("unmask: sign survivors", lambda: keys[1].sign(b"x" * (8 * sites + 40)))
        clock(
            "unmask: roster read + verify keys",
            lambda: [roster.check_keys(RUN, ROUND, p) for n, p in peers.items() if n != 1],
        )
        clock("unmask: shamir split x2", lambda: split_secrets([me.seed, me.sk1], t, k))
        shared = state_from_config(state_to_config(me))
        shared.stage = SHARE_KEYS
        clock(
            "unmask: share_keys (all)",
            lambda: shared.share_keys(peers, t, k, Roster.simulated(folder, names), 2),
        )
        clock("unmask: state save", lambda: state_to_config(shared))
        # the train reply
        loaded = clock("mask: state load", lambda: state_from_config(state_to_config(shared)))
        loaded.expect(MASK, ROUND)
        vector, _ = clock(
            "mask: delta, clip, quantize+weight",
            lambda: weighted_update(layout, update, base, 123, CLIP, rng, ring),
        )
        clock("mask: mask (all)", lambda: loaded.mask(vector.copy(), sent_to_me, in_place=True))
        sk1 = masking_key(me.sk1)
        clock("mask: 48 agreements", lambda: [agree(sk1, p.pk1, PAIRWISE) for p in peers.values()])
        seeds = [os.urandom(32) for _ in range(k)]
        clock("mask: keystreams+adds", lambda: apply_masks(vector, seeds[::2], seeds[1::2]))
        clock("mask: next setup", lambda: SiteSecAgg.setup(1, ROUND + 1, RUN, "n1", keys[1]))
        clock("mask: state save", lambda: state_to_config(loaded))

    for _ in range(reps):
        once()
    return {name: statistics.median(v) for name, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sites", type=int, default=100)
    parser.add_argument("--params", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument(
        "--ring", type=int, choices=[32, 64], default=32, help="the masked vector's ring (bits)"
    )
    args = parser.parse_args()
    k, t = neighbourhood(args.sites)
    print(
        f"{args.sites} sites: {k} neighbours, threshold {t}; median of {args.reps} "
        f"(CPU time); load {os.getloadavg()[0]:.2f}"
    )
    ring = Ring(32, 16) if args.ring == 32 else Ring()
    with tempfile.TemporaryDirectory(prefix="fedllm-secagg-profile-") as folder:
        for params in args.params:
            print(f"\n{params:,} parameters")
            for name, seconds in profile(args.sites, params, args.reps, Path(folder), ring).items():
                print(f"  {name:40s} {seconds * 1000:8.1f} ms")


if __name__ == "__main__":
    main()
