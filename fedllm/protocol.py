"""Every name that crosses between the coordinator and a site, defined once.

A round is a few Flower messages (``train``, ``evaluate``, ``query`` and the secure-aggregation
stages ``train.secagg_*``), each a ``RecordDict`` of named records. This module names those
records, every key inside them, the keys of a SuperNode's node-config, and the keys a site
keeps in its own ``context.state``. The server (``server/``), the sites (``clients/``) and the
deployment tools (``fedllm.deploy``) import these names; nothing spells them again.

It is also where to read what a site may send: the release manifest (:data:`MANIFEST`, at
the end) lists every record and key of every reply a site makes, and for each why it is safe
to send. The ClientApp checks each reply against it before sending (:func:`unlisted`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum

# ---------------------------------------------------------------- records in a message
ARRAYS = "arrays"  # ArrayRecord: the global model (to a site), the local model (plain reply)
CONFIG = "config"  # ConfigRecord: what the server asks of this message (below)
METRICS = "metrics"  # MetricRecord: a site's reported numbers (below)
SITE = "site"  # ConfigRecord: who replied
REFUSAL = "refusal"  # ConfigRecord: a site's refusal to do what was asked, and why
SECAGG = "secagg"  # ConfigRecord: a secure-aggregation stage's request or answer
SECAGG_MASKED = "secagg-masked"  # ArrayRecord: one uint32/uint64 vector in place of the model
EVALUATION = "evaluation"  # MetricRecord in a train reply: the site's evaluation of the model
#                            it was sent (asked for by EVALUATE_INCOMING)
PACKED = "packed"  # ConfigRecord, deployment only: the whole content as one object on the wire
#                    (fedllm.deploy.packing), unpacked before a handler sees it and packed
#                    after the reply passed the manifest: never a record of its own

# ---------------------------------------------------------------- keys inside them
SITE_NAME = "name"  # in SITE
REFUSAL_KIND = "kind"  # in REFUSAL: budget, policy, ledger, data, ...
REFUSAL_REASON = "reason"  # in REFUSAL
SECAGG_VECTOR = "vector"  # in SECAGG_MASKED
PACKED_CONTENT = "recorddict"  # in PACKED: Flower's RecordDict protobuf of the content

# CONFIG, server -> site (train and evaluate)
SERVER_ROUND = "server-round"  # set by Flower's strategies
RUN_DIR = "run-dir"  # simulation only: where virtual sites keep their files by default
RUN_ID = "run-id"  # the run a site's ledger records the round under (the same after resume)
CLIENT_DP_SAMPLED = "client-dp-sampled"  # sites sharing this round's client-level noise
PROXIMAL_MU = "proximal-mu"  # set by Flower's FedProx; sites take mu from the run config
EVALUATE_INCOMING = "evaluate-incoming"  # train: evaluate the arrays sent before training them
SCALER_MEAN, SCALER_STD = "feature-mean", "feature-std"  # federated scaling: the pooled scaler

# METRICS, site -> server (train, evaluate)
NUM_EXAMPLES = "num-examples"
TRAIN_LOSS = "train-loss"
EPSILON = "epsilon"  # the site's cumulative epsilon over this run
SITE_EPSILON = "site-epsilon"  # ... over every run in its ledger
NOISE_MULTIPLIER = "noise-multiplier"
SECAGG_CLIPPED = "secagg-clipped"  # fraction of update values clipped to secagg-clip-range
UPDATE_BYTES = "update-bytes"  # bytes of the arrays a site sends in one round
CLIENT_DP_WEIGHT = "client-dp-weight"  # client-level DP: every site weighs 1
LOSS = "loss"
ACCURACY = "accuracy"
CORRECT = "correct"  # a noised evaluation: the sum of the examples' accuracies, noised

# METRICS, site -> server (query: federated feature scaling)
FEATURE_COUNT, FEATURE_SUM, FEATURE_SUM_SQ = "feature-count", "feature-sum", "feature-sum-sq"

# ---------------------------------------------------------------- secure aggregation
# Message types of the stages around ``train`` (``train.<action>``).
SECAGG_SETUP = "secagg_setup"
SECAGG_SHARE_KEYS = "secagg_share_keys"
SECAGG_UNMASK = "secagg_unmask"
SECAGG_REVEAL = "secagg_reveal"  # only in rounds where a site dropped after key sharing
# Keys inside a SECAGG record (request and answer of each stage).
SA_ROUND = SERVER_ROUND
SA_PK1, SA_PK2 = "pk1", "pk2"  # a site's public keys (setup answer; train answer, next round)
SA_NAME = "site-name"  # ... the site's name in the roster, and its identity signature over
SA_SIGNATURE = "signature"  # run, round, node id, name and both keys (lists when relayed)
SA_PEERS = "peers"  # share keys: the neighbours, with SA_NAME, SA_PK1, SA_PK2, SA_SIGNATURE lists
SA_THRESHOLD, SA_NUM_SHARES = "threshold", "num-shares"
SA_DESTINATIONS, SA_CIPHERTEXTS = "destinations", "ciphertexts"  # encrypted shares, by peer
SA_SOURCES = "sources"  # train request: who the forwarded ciphertexts come from
# Train request: the round's ring, 2**SA_RING_BITS (32 or 64), and 2**SA_LEVEL_BITS quantization
# levels (fedllm.secagg.vector.Ring); absent: the 64-bit ring.
SA_RING_BITS, SA_LEVEL_BITS = "ring-bits", "quantization-bits"
SA_SURVIVORS = "survivors"  # unmask request: every site whose masked vector is in the sum
# Unmask answer: SA_SIGNATURE over the survivor set, and the shares (none when a neighbour
# dropped: they come in the reveal answer, once the request carries the neighbours' SA_SIGNERS
# and SA_SIGNATURES over the same set).
SA_OWNERS, SA_SHARES = "owners", "shares"  # whose share each is, the shares
SA_SIGNERS = "signers"  # reveal request: who signed the survivor set (SA_SIGNATURES: theirs)
SA_SIGNATURES = "signatures"
SA_NEXT_ROUND = "next-round"  # keys (train answer) or shares (unmask) made ahead for it
SA_NEXT = "next-"  # prefix: the next round's threshold, num-shares, peers, pk1, pk2

# ---------------------------------------------------------------- a SuperNode's node-config
NODE_DATA_PATH = "data-path"  # deployment: the site's own data file
NODE_SITE_NAME = "site-name"
NODE_POLICY_PATH = "policy-path"
NODE_LEDGER_PATH = "ledger-path"
NODE_SITE_KEY = "site-key"
NODE_SECAGG_ROSTER = "secagg-roster"  # deployment: the identity keys of the sites it trusts
NODE_PARTITION_ID = "partition-id"  # simulation: set by Flower's engine
NODE_NUM_PARTITIONS = "num-partitions"  # simulation: set by Flower's engine

# ---------------------------------------------------------------- kept at the site, never sent
STATE_CALIBRATION = "privacy-calibration"  # the run's calibrated noise multiplier
STATE_CLIENT_CALIBRATION = "client-dp-calibration"
STATE_SECAGG = "secagg-state"
STATE_SECAGG_NEXT = "secagg-state-next"  # keys made ahead for the next round


# ---------------------------------------------------------------- the release manifest
class Basis(StrEnum):
    """Why a field may leave a site."""

    EPSILON = "epsilon"  # a DP release (or post-processing of one) in the site's epsilon
    POLICY = "policy"  # public by the site's policy: not private data, or allowed outside DP
    CRYPTO = "crypto"  # cryptographic: reveals nothing without what the server cannot get


@dataclass(frozen=True)
class Mode:
    """What a reply is judged under: a DP run or not (`dp`), a secure-aggregation train
    message or not, site-level DP or not (`client-dp`)."""

    dp: bool
    secure: bool
    client_dp: bool


STRICTEST = Mode(dp=True, secure=False, client_dp=False)  # when the run's mode is unknown
ANY_KEY = "*"  # every key of the record: the model's arrays, by parameter name


@dataclass(frozen=True)
class Field:
    """One key of one record of a reply; ``dp``/``secure``/``client_dp`` restrict the modes it
    may be sent in (``dp=False``: only in runs without DP, which a site's policy must allow
    with `allow-non-dp`; None: any)."""

    record: str
    key: str
    basis: Basis
    why: str
    dp: bool | None = None
    secure: bool | None = None
    client_dp: bool | None = None

    def allows(self, mode: Mode) -> bool:
        return all(
            want is None or want == have
            for want, have in (
                (self.dp, mode.dp),
                (self.secure, mode.secure),
                (self.client_dp, mode.client_dp),
            )
        )


_REPLY_FROM = Field(
    SITE, SITE_NAME, Basis.POLICY, "who replied: the site's name from its own node-config"
)
_REFUSED = (
    Field(
        REFUSAL,
        REFUSAL_KIND,
        Basis.POLICY,
        "a refusal's kind (policy, budget, ledger, data, ...): which of its checks stopped it",
    ),
    Field(
        REFUSAL,
        REFUSAL_REASON,
        Basis.POLICY,
        "the site's own text: the limit it enforces, a budget figure (its epsilon: "
        "post-processing of its ledger) or what is wrong with its data file's format, with "
        "any quoted value masked (the site's log keeps it)",
    ),
    Field(METRICS, NUM_EXAMPLES, Basis.POLICY, "0 in a refusal: a constant"),
)
_NOISED_COUNT = (
    "under DP the example count as released once per run with Gaussian noise (std "
    "`count-noise`; ledger entry of kind count), which the sampling rate, steps and normalizer "
    "are derived from; without DP the exact count (allow-non-dp)"
)
_EVALUATION = (
    Field(
        EVALUATION,
        CORRECT,
        Basis.EPSILON,
        "a noised evaluation: the sum of the test examples' accuracies plus Gaussian noise "
        "(multiplier `evaluation-noise`, sensitivity sqrt 2; ledger entry of kind evaluate), "
        "within the policy's max-evaluations",
        dp=True,
    ),
    Field(
        EVALUATION,
        NUM_EXAMPLES,
        Basis.EPSILON,
        "the test-row count, noised with the same Gaussian evaluation release (in clear "
        "without DP)",
    ),
    Field(EVALUATION, LOSS, Basis.POLICY, "the test loss in clear", dp=False),
    Field(EVALUATION, ACCURACY, Basis.POLICY, "the test accuracy in clear", dp=False),
)
_SECAGG_KEYS = (
    Field(SECAGG, SA_PK1, Basis.CRYPTO, "a fresh public key (masking-key agreement)"),
    Field(SECAGG, SA_PK2, Basis.CRYPTO, "a fresh public key (share encryption)"),
    Field(
        SECAGG,
        SA_NAME,
        Basis.POLICY,
        "the site's name in the SecAgg+ roster (the one its node-config gives)",
    ),
    Field(
        SECAGG,
        SA_SIGNATURE,
        Basis.CRYPTO,
        "the site key's Ed25519 signature over run, round, node id, name and both public keys",
    ),
)
_SHARES = (
    Field(
        SECAGG,
        SA_OWNERS,
        Basis.POLICY,
        "whose shares follow: node ids in the survivor set the site signed",
    ),
    Field(
        SECAGG,
        SA_SHARES,
        Basis.CRYPTO,
        "one Shamir share per neighbour: of a survivor's mask seed or of a dropped site's "
        "masking key, never both for one site; fewer than the threshold reveal nothing",
    ),
)
_SHARES_SENT = (
    Field(
        SECAGG,
        SA_DESTINATIONS,
        Basis.POLICY,
        "the neighbours the encrypted shares are for: node ids the server chose",
    ),
    Field(
        SECAGG,
        SA_CIPHERTEXTS,
        Basis.CRYPTO,
        "Shamir shares of the site's mask seed and masking key, each encrypted for one "
        "neighbour (authenticated encryption under a key the server does not have)",
    ),
)

# Every record and key a site's replies may hold, by the message type they answer.
MANIFEST: dict[str, tuple[Field, ...]] = {
    "train": (
        _REPLY_FROM,
        Field(METRICS, NUM_EXAMPLES, Basis.EPSILON, _NOISED_COUNT),
        Field(
            METRICS,
            NOISE_MULTIPLIER,
            Basis.EPSILON,
            "calibrated from the run config and the released count: post-processing",
            dp=True,
        ),
        Field(
            METRICS,
            EPSILON,
            Basis.EPSILON,
            "this run's cumulative epsilon: a function of the ledger's noise, sampling rates "
            "(from the released count) and steps: post-processing",
            dp=True,
        ),
        Field(
            METRICS,
            SITE_EPSILON,
            Basis.EPSILON,
            "the cumulative epsilon over the site's whole ledger: post-processing, as above",
            dp=True,
        ),
        Field(
            METRICS,
            TRAIN_LOSS,
            Basis.POLICY,
            "the training loss in clear (a DP run sends none)",
            dp=False,
        ),
        Field(METRICS, UPDATE_BYTES, Basis.POLICY, "the size of the arrays sent: the model's"),
        Field(
            METRICS,
            SECAGG_CLIPPED,
            Basis.EPSILON,
            "the fraction of the DP-trained update's values beyond secagg-clip-range: "
            "post-processing of the DP-SGD output",
            secure=True,
            client_dp=False,
        ),
        Field(
            METRICS,
            CLIENT_DP_WEIGHT,
            Basis.POLICY,
            "client-level DP: the constant 1 every site weighs",
            client_dp=True,
        ),
        Field(
            ARRAYS,
            ANY_KEY,
            Basis.EPSILON,
            "the local model trained with DP-SGD (its difference from the global model is the "
            "DP output; under client-level DP also clipped and noised)",
            secure=False,
        ),
        Field(
            SECAGG_MASKED,
            SECAGG_VECTOR,
            Basis.CRYPTO,
            "[n, n q(update)] plus pairwise and self masks (AES-CTR keystreams) modulo 2**32 or "
            "2**64 (the round's ring): "
            "only the sum over the sites is ever unmasked",
            secure=True,
        ),
        Field(
            SECAGG,
            SA_NEXT_ROUND,
            Basis.POLICY,
            "the round the keys below are for",
            secure=True,
        ),
        *(
            Field(f.record, f.key, f.basis, f.why + ", for the next round", secure=True)
            for f in _SECAGG_KEYS
        ),
        *_EVALUATION,
        *_REFUSED,
    ),
    "evaluate": (
        _REPLY_FROM,
        Field(
            METRICS,
            CORRECT,
            Basis.EPSILON,
            _EVALUATION[0].why,
            dp=True,
        ),
        Field(METRICS, NUM_EXAMPLES, Basis.EPSILON, _EVALUATION[1].why),
        Field(METRICS, LOSS, Basis.POLICY, _EVALUATION[2].why, dp=False),
        Field(METRICS, ACCURACY, Basis.POLICY, _EVALUATION[3].why, dp=False),
        *_REFUSED,
    ),
    "query": (
        _REPLY_FROM,
        *(
            Field(
                METRICS,
                key,
                Basis.POLICY,
                f"per-feature {what} over the training rows, for federated scaling: not DP, "
                "sent only under the policy's allow-feature-statistics (ledger entry of kind "
                "statistics; the run's report names the sites)",
            )
            for key, what in (
                (FEATURE_COUNT, "count"),
                (FEATURE_SUM, "sum"),
                (FEATURE_SUM_SQ, "sum of squares"),
            )
        ),
        *_REFUSED,
    ),
    f"train.{SECAGG_SETUP}": _SECAGG_KEYS,
    f"train.{SECAGG_SHARE_KEYS}": _SHARES_SENT,
    f"train.{SECAGG_UNMASK}": (
        Field(
            SECAGG,
            SA_SIGNATURE,
            Basis.CRYPTO,
            "the site key's signature over the survivor set the server announced",
        ),
        *_SHARES,
        *(Field(f.record, f.key, f.basis, f.why + " (next round)") for f in _SHARES_SENT),
    ),
    f"train.{SECAGG_REVEAL}": _SHARES,
}


def manifest_table() -> list[str]:
    """The manifest as the rows of README's Markdown table (message, record.key, basis, why)."""
    rows = []
    for message_type, fields in MANIFEST.items():
        for f in fields:
            modes = [
                text
                for want, text in (
                    (f.dp is True, "only under DP"),
                    (f.dp is False, "only without DP"),
                    (f.secure is True, "only with secure aggregation"),
                    (f.secure is False, "only without secure aggregation"),
                    (f.client_dp is True, "only with client-level DP"),
                    (f.client_dp is False, "not with client-level DP"),
                )
                if want
            ]
            why = f.why + (f" ({'; '.join(modes)})" if modes else "")
            rows.append(f"| `{message_type}` | `{f.record}.{f.key}` | {f.basis.value} | {why} |")
    return rows


def unlisted(message_type: str, content: Mapping[str, Iterable[str]], mode: Mode) -> list[str]:
    """Every record (``record``) and key (``record.key``) of a reply to ``message_type`` that
    :data:`MANIFEST` does not allow in ``mode``; empty when the reply may be sent."""
    allowed = {(f.record, f.key) for f in MANIFEST.get(message_type, ()) if f.allows(mode)}
    records = {record for record, _ in allowed}
    out = []
    for record, keys in content.items():
        if record not in records:
            out.append(f"record `{record}`")
        elif (record, ANY_KEY) not in allowed:
            out.extend(f"`{record}.{key}`" for key in keys if (record, key) not in allowed)
    return out
