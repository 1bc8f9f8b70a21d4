"""A lying coordinator against the sites' real SecAgg+ handlers (``clients/secagg.py``,
``clients/client_app.py`` and ``fedllm/secagg/site.py``): four simulated sites with their own
folders (identity key, policy, roster from the federation), driven by a server written here
that breaks the protocol on purpose. Each attack is refused, and what the server can compute
from whatever the sites revealed is not the target site's vector.

The target ``U`` holds a known update, so its true vector ``[n, n * q(update)]`` is known
exactly (the update lies on the quantization grid: stochastic rounding is then exact)."""

from __future__ import annotations

import base64
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, MetricRecord, RecordDict
from flwr.common.secure_aggregation.crypto.symmetric_encryption import decrypt, encrypt
from flwr.common.secure_aggregation.secaggplus_utils import (
    share_keys_plaintext_concat,
    share_keys_plaintext_separate,
)

from clients import secagg
from clients.client_app import train
from clients.train import SiteRuntime
from fedllm import protocol as proto
from fedllm.crypto.signing import SiteKey
from fedllm.errors import PolicyError, SecAggError
from fedllm.privacy import SitePolicy
from fedllm.secagg import SignedKeys, combine_secret, prg
from fedllm.secagg.site import CHANNEL, PAIRWISE, agree, masking_key, public_bytes
from fedllm.secagg.vector import QUANTIZATION_BITS
from tests.messages import instruction

NODES = [11, 12, 13, 14]
U = NODES[0]  # the site the server wants to unmask
SIZE = 64  # values in the model
WEIGHT = 10  # U's example count
CLIP = 8.0
STEP = 2 * CLIP / 2**QUANTIZATION_BITS  # one quantization level: 2**-20


@dataclass
class Federation:
    """Sites with their own contexts and folders, and the round's train config."""

    contexts: dict[int, Context]
    config: ConfigRecord
    keys: dict[int, SignedKeys] = field(default_factory=dict)

    def send(self, node: int, action: str, values: dict[str, Any]) -> ConfigRecord:
        """One stage message to ``node``'s real handler; a refusal raises SecAggError."""
        content = RecordDict(
            {
                proto.SECAGG: ConfigRecord({proto.SA_ROUND: 1, **values}),
                proto.CONFIG: self.config,
            }
        )
        msg = instruction(node, content, f"train.{action}")
        reply = secagg.HANDLERS[action](msg, self.contexts[node])
        return reply.content.config_records[proto.SECAGG]

    def setup(self) -> dict[int, SignedKeys]:
        for node in self.contexts:
            answer = self.send(node, proto.SECAGG_SETUP, {})
            self.keys[node] = SignedKeys(
                node,
                str(answer[proto.SA_NAME]),
                bytes(cast(bytes, answer[proto.SA_PK1])),
                bytes(cast(bytes, answer[proto.SA_PK2])),
                str(answer[proto.SA_SIGNATURE]),
            )
        return self.keys

    def share(self, node: int, peers: list[SignedKeys], threshold: int) -> dict[int, bytes]:
        answer = self.send(
            node,
            proto.SECAGG_SHARE_KEYS,
            {
                proto.SA_PEERS: [p.node_id for p in peers],
                proto.SA_NAME: [p.name for p in peers],
                proto.SA_PK1: [p.pk1 for p in peers],
                proto.SA_PK2: [p.pk2 for p in peers],
                proto.SA_SIGNATURE: [p.signature for p in peers],
                proto.SA_THRESHOLD: threshold,
                proto.SA_NUM_SHARES: len(peers),
            },
        )
        destinations = cast(list[int], answer[proto.SA_DESTINATIONS])
        return dict(zip(destinations, cast(list[bytes], answer[proto.SA_CIPHERTEXTS]), strict=True))

    def mask(self, node: int, forward: dict[int, bytes]) -> np.ndarray:
        """The site's real secure train branch on its known update: its masked vector."""
        content = RecordDict(
            {
                proto.ARRAYS: GLOBAL,
                proto.CONFIG: self.config,
                proto.SECAGG: ConfigRecord(
                    {
                        proto.SA_ROUND: 1,
                        proto.SA_SOURCES: list(forward),
                        proto.SA_CIPHERTEXTS: list(forward.values()),
                    }
                ),
            }
        )
        metrics = MetricRecord({proto.NUM_EXAMPLES: WEIGHT})
        records = secagg.masked_update(
            instruction(node, content), self.contexts[node], GLOBAL, _local(node), metrics, CLIP
        )
        return cast(ArrayRecord, records[proto.SECAGG_MASKED])[proto.SECAGG_VECTOR].numpy()

    def unmask(self, node: int, survivors: list[int]) -> ConfigRecord:
        return self.send(node, proto.SECAGG_UNMASK, {proto.SA_SURVIVORS: survivors})

    def reveal(self, node: int, signatures: dict[int, str]) -> ConfigRecord:
        return self.send(
            node,
            proto.SECAGG_REVEAL,
            {proto.SA_SIGNERS: list(signatures), proto.SA_SIGNATURES: list(signatures.values())},
        )


GLOBAL = ArrayRecord({"w": Array(np.zeros(SIZE, dtype=np.float32))})


def _update(node: int) -> np.ndarray:
    """Each site's update on the quantization grid (distinct per site): (SIZE,)."""
    return (np.arange(SIZE) % 13 + node) * STEP


def _local(node: int) -> ArrayRecord:
    return ArrayRecord({"w": Array(_update(node).astype(np.float32))})


def _true_vector(node: int) -> np.ndarray:
    """``[n, n * q(update)]`` exactly: the update is on the grid, so rounding is exact."""
    levels = np.round((_update(node) + CLIP) / STEP).astype(np.uint64)
    return np.concatenate([[np.uint64(WEIGHT)], np.uint64(WEIGHT) * levels])


def _federation(defaults: dict[str, Any], tmp_path: Path) -> Federation:
    run_config = {**defaults, "num-sites": len(NODES), "accountant": "rdp"}
    contexts = {
        node: Context(
            1,
            node,
            {proto.NODE_PARTITION_ID: i, proto.NODE_NUM_PARTITIONS: len(NODES)},
            RecordDict(),
            run_config,
        )
        for i, node in enumerate(NODES)
    }
    instruction(U, RecordDict())  # sets Flower's task identity
    return Federation(contexts, ConfigRecord({proto.SERVER_ROUND: 1, proto.RUN_DIR: str(tmp_path)}))


def _strip(
    masked: np.ndarray,
    node: int,
    seed_shares: list[bytes],
    sk1_shares: list[bytes],
    peers: dict[int, bytes],
) -> np.ndarray:
    """What the server computes for ``node`` from the shares it got: the masked vector less
    the self mask and the pairwise masks rebuilt from them (garbage when they are too few)."""
    out = masked.copy()
    if seed_shares:
        out -= prg(combine_secret(seed_shares), out.size)
    if sk1_shares:
        sk1 = masking_key(combine_secret(sk1_shares))
        for peer, pk1 in peers.items():
            pairwise = prg(agree(sk1, pk1, PAIRWISE), out.size)
            out = out - pairwise if node > peer else out + pairwise
    return out


def _shares(answer: ConfigRecord) -> dict[int, bytes]:
    owners = cast(list[int], answer.get(proto.SA_OWNERS, []))
    return dict(zip(owners, cast(list[bytes], answer.get(proto.SA_SHARES, [])), strict=True))


# ---------------------------------------------------------------- split claims
def test_split_claims_at_threshold_two_are_refused_at_key_sharing(
    defaults: dict[str, Any], tmp_path: Path
) -> None:
    fed = _federation(defaults, tmp_path)
    keys = fed.setup()
    for node in NODES:
        with pytest.raises(SecAggError, match=r"threshold 2, below a majority \(3\) of this"):
            fed.share(node, list(keys.values()), threshold=2)


def test_split_claims_about_who_dropped_unmask_nobody(
    defaults: dict[str, Any], tmp_path: Path
) -> None:
    fed = _federation(defaults, tmp_path)
    keys = fed.setup()
    a, b, c = NODES[1:]
    sent = {node: fed.share(node, list(keys.values()), threshold=3) for node in NODES}
    masked = {
        node: fed.mask(node, {src: sent[src][node] for src in NODES if src != node})
        for node in NODES
    }
    everyone, without_u = list(NODES), [a, b, c]
    # Holders a and b hear "U is alive": they reveal U's seed share (no dropout in view).
    told_alive = {n: fed.unmask(n, everyone) for n in (a, b)}
    seed_shares = [_shares(r)[U] for r in told_alive.values()]
    # U is told it dropped and asked for its own masking-key share: refused.
    with pytest.raises(SecAggError, match="lists this site as dropped"):
        fed.unmask(U, without_u)
    # c hears "U dropped": it signs, reveals nothing, and wants the survivors' signatures.
    told_dropped = fed.unmask(c, without_u)
    assert proto.SA_OWNERS not in told_dropped
    signatures = {c: str(told_dropped[proto.SA_SIGNATURE])}
    with pytest.raises(SecAggError, match="1 neighbours signed the survivor set, below"):
        fed.reveal(c, signatures)
    # a and b signed the other set: their signatures do not pass as agreement on c's.
    signatures.update({n: str(r[proto.SA_SIGNATURE]) for n, r in told_alive.items()})
    with pytest.raises(SecAggError, match="survivor set does not verify"):
        fed.reveal(c, signatures)
    peers = {n: keys[n].pk1 for n in NODES if n != U}
    attempt = _strip(masked[U], U, seed_shares, [], peers)
    assert not np.array_equal(attempt, _true_vector(U))


def test_a_second_unmask_of_the_same_round_is_refused(
    defaults: dict[str, Any], tmp_path: Path
) -> None:
    fed = _federation(defaults, tmp_path)
    keys = fed.setup()
    sent = {node: fed.share(node, list(keys.values()), threshold=3) for node in NODES}
    for node in NODES:
        fed.mask(node, {src: sent[src][node] for src in NODES if src != node})
    a = NODES[1]
    fed.unmask(a, list(NODES))  # U alive: a reveals U's seed share
    with pytest.raises(SecAggError, match="round 1 is over at this site"):
        fed.unmask(a, [n for n in NODES if n != U])  # ... then U's masking-key share
    with pytest.raises(SecAggError, match="round 1 is over at this site"):
        fed.reveal(a, {})


# ---------------------------------------------------------------- key substitution
@dataclass
class Impostor:
    """Keys the server made for a neighbour of U (it knows both private keys)."""

    node: int
    sk1: X25519PrivateKey = field(default_factory=X25519PrivateKey.generate)
    sk2: X25519PrivateKey = field(default_factory=X25519PrivateKey.generate)

    def keys(self, real: SignedKeys, signer: SiteKey | None) -> SignedKeys:
        pk1, pk2 = public_bytes(self.sk1), public_bytes(self.sk2)
        if signer is None:  # the neighbour's own signature, over its real keys
            return SignedKeys(self.node, real.name, pk1, pk2, real.signature)
        return SignedKeys.make(1, 1, self.node, real.name, pk1, pk2, signer)

    def channel(self, pk2: bytes) -> bytes:
        return base64.urlsafe_b64encode(agree(self.sk2, pk2, CHANNEL))


@pytest.mark.parametrize("signed_by", ["neighbour", "server"])
def test_key_substitution_is_refused_and_unmasks_nobody(
    defaults: dict[str, Any], tmp_path: Path, signed_by: str
) -> None:
    fed = _federation(defaults, tmp_path)
    keys = fed.setup()
    server_key = SiteKey(Ed25519PrivateKey.generate())
    fakes = {n: Impostor(n) for n in NODES[1:]}
    signer = None if signed_by == "neighbour" else server_key
    peers = [keys[U]] + [f.keys(keys[n], signer) for n, f in fakes.items()]
    with pytest.raises(SecAggError, match="are not signed by site"):
        fed.share(U, peers, threshold=3)  # the attack needs these: U's shares, to its keys
    with pytest.raises(SecAggError, match="expected 'share-keys' of round 1"):
        fed.mask(U, {})  # and U never masks a vector the server could then unmask


def test_key_substitution_would_unmask_a_site_that_skipped_the_check(
    defaults: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The attack itself, against a site whose roster accepts any key: it reads U's update.
    (This is why the check above matters; it shows the attack code is a real one.)"""
    from fedllm.secagg.identity import Roster

    monkeypatch.setattr(Roster, "check_keys", lambda *args: None)
    fed = _federation(defaults, tmp_path)
    keys = fed.setup()
    fakes = {n: Impostor(n) for n in NODES[1:]}
    peers = [keys[U]] + [f.keys(keys[n], None) for n, f in fakes.items()]
    sent = fed.share(U, peers, threshold=3)
    seed_shares, sk1_shares, forward = [], [], {}
    for node, fake in fakes.items():
        _, _, seed, sk1 = share_keys_plaintext_separate(
            decrypt(fake.channel(keys[U].pk2), sent[node])
        )
        seed_shares.append(seed)
        sk1_shares.append(sk1)
        plain = share_keys_plaintext_concat(node, U, b"x" * 20, b"y" * 20)
        forward[node] = encrypt(fake.channel(keys[U].pk2), plain)
    masked = fed.mask(U, forward)
    fake_pk1 = {n: public_bytes(f.sk1) for n, f in fakes.items()}
    assert np.array_equal(_strip(masked, U, seed_shares, sk1_shares, fake_pk1), _true_vector(U))


def test_forged_share_ciphertexts_are_refused(defaults: dict[str, Any], tmp_path: Path) -> None:
    fed = _federation(defaults, tmp_path)
    keys = fed.setup()
    for node in NODES:
        fed.share(node, list(keys.values()), threshold=3)
    forger = Impostor(NODES[1])
    forged = encrypt(
        forger.channel(keys[U].pk2),
        share_keys_plaintext_concat(NODES[1], U, b"x" * 20, b"y" * 20),
    )
    with pytest.raises(SecAggError, match="not encrypted by that neighbour's signed key"):
        fed.mask(U, {NODES[1]: forged, NODES[2]: forged})


# ---------------------------------------------------------------- no SecAgg record
def test_a_train_request_without_the_secagg_record_is_refused_before_training(
    defaults: dict[str, Any], tmp_path: Path
) -> None:
    fed = _federation(defaults, tmp_path)
    content = RecordDict({proto.ARRAYS: _model_arrays(fed), proto.CONFIG: fed.config})
    reply = train(instruction(U, content), fed.contexts[U])
    refusal = reply.content.config_records[proto.REFUSAL]
    assert refusal[proto.REFUSAL_KIND] == "policy"
    assert "require-secure-aggregation = true" in str(refusal[proto.REFUSAL_REASON])
    assert proto.ARRAYS not in reply.content.array_records
    assert not reply.content.array_records  # no update of any kind
    name = SiteRuntime.from_context(fed.contexts[U]).data.name
    assert not (tmp_path / "sites" / name / "ledger.jsonl").exists()  # nothing trained


def _model_arrays(fed: Federation) -> ArrayRecord:
    from fedllm.weights import to_arrays

    site = SiteRuntime.from_context(fed.contexts[U])
    return to_arrays(site.task.build_model(site.cfg, tuple(site.data.train.x.shape[1:])))


# ---------------------------------------------------------------- the site's policy
def test_a_threshold_below_the_policy_minimum_is_refused_naming_both(
    defaults: dict[str, Any], tmp_path: Path
) -> None:
    fed = _federation(defaults, tmp_path)
    name = SiteRuntime.from_context(fed.contexts[U]).data.name
    policy = SitePolicy(max_epsilon=1.0, delta=1e-5, min_secagg_threshold=4)
    policy.write(tmp_path / "sites" / name / "policy.toml")
    keys = fed.setup()
    with pytest.raises(
        SecAggError, match="threshold 3, below this site's policy min-secagg-threshold 4"
    ):
        fed.share(U, list(keys.values()), threshold=3)
    fed.share(NODES[1], list(keys.values()), threshold=3)  # the others' policies allow 3


def test_a_deployed_policy_requires_secure_aggregation_unless_it_says_otherwise() -> None:
    policy = SitePolicy.from_mapping({"max-epsilon": 1.0, "delta": 1e-5})
    assert policy.require_secure_aggregation and policy.min_secagg_threshold == 2
    relaxed = {"max-epsilon": 1.0, "delta": 1e-5, "require-secure-aggregation": False}
    assert not SitePolicy.from_mapping(relaxed).require_secure_aggregation
    again = SitePolicy.from_mapping({"max-epsilon": 1.0, "delta": 1e-5, "min-secagg-threshold": 5})
    assert SitePolicy.from_mapping(tomllib.loads(again.to_toml())) == again
    with pytest.raises(PolicyError, match="`min-secagg-threshold` must be >= 2, got 1"):
        SitePolicy.from_mapping({"max-epsilon": 1.0, "delta": 1e-5, "min-secagg-threshold": 1})
