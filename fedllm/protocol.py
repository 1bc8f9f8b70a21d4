"""Every name that crosses between the coordinator and a site, defined once.

A round is a few Flower messages (``train``, ``evaluate``, ``query`` and the secure-aggregation
stages ``train.secagg_*``), each a ``RecordDict`` of named records. This module names those
records, every key inside them, the keys of a SuperNode's node-config, and the keys a site
keeps in its own ``context.state``. The server (``server/``), the sites (``clients/``) and the
deployment tools (``fedllm.deploy``) import these names; nothing spells them again.

It is also where to read what a site may send: the reply records and their keys are listed per
message below.
"""

from __future__ import annotations

# ---------------------------------------------------------------- records in a message
ARRAYS = "arrays"  # ArrayRecord: the global model (to a site), the local model (plain reply)
CONFIG = "config"  # ConfigRecord: what the server asks of this message (below)
METRICS = "metrics"  # MetricRecord: a site's reported numbers (below)
SITE = "site"  # ConfigRecord: who replied
REFUSAL = "refusal"  # ConfigRecord: a site's refusal to do what was asked, and why
SECAGG = "secagg"  # ConfigRecord: a secure-aggregation stage's request or answer
SECAGG_MASKED = "secagg-masked"  # ArrayRecord: one uint64 vector in place of the model

# ---------------------------------------------------------------- keys inside them
SITE_NAME = "name"  # in SITE
REFUSAL_KIND = "kind"  # in REFUSAL: budget, policy, ledger, data, ...
REFUSAL_REASON = "reason"  # in REFUSAL
SECAGG_VECTOR = "vector"  # in SECAGG_MASKED

# CONFIG, server -> site (train and evaluate)
SERVER_ROUND = "server-round"  # set by Flower's strategies
RUN_DIR = "run-dir"  # simulation only: where virtual sites keep their files by default
RUN_ID = "run-id"  # the run a site's ledger records the round under (the same after resume)
CLIENT_DP_SAMPLED = "client-dp-sampled"  # sites sharing this round's client-level noise
PROXIMAL_MU = "proximal-mu"  # set by Flower's FedProx; sites take mu from the run config
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

# METRICS, site -> server (query: federated feature scaling)
FEATURE_COUNT, FEATURE_SUM, FEATURE_SUM_SQ = "feature-count", "feature-sum", "feature-sum-sq"

# ---------------------------------------------------------------- secure aggregation
# Message types of the stages around ``train`` (``train.<action>``).
SECAGG_SETUP = "secagg_setup"
SECAGG_SHARE_KEYS = "secagg_share_keys"
SECAGG_UNMASK = "secagg_unmask"
# Keys inside a SECAGG record (request and answer of each stage).
SA_ROUND = SERVER_ROUND
SA_PK1, SA_PK2 = "pk1", "pk2"  # a site's public keys (setup answer; train answer, next round)
SA_PEERS = "peers"  # share keys: the neighbours, with their keys in SA_PK1 / SA_PK2 lists
SA_THRESHOLD, SA_NUM_SHARES = "threshold", "num-shares"
SA_DESTINATIONS, SA_CIPHERTEXTS = "destinations", "ciphertexts"  # encrypted shares, by peer
SA_SOURCES = "sources"  # train request: who the forwarded ciphertexts come from
SA_ALIVE, SA_DROPPED = "alive", "dropped"  # unmask request
SA_OWNERS, SA_SHARES = "owners", "shares"  # unmask answer: whose share each is
SA_NEXT_ROUND = "next-round"  # keys (train answer) or shares (unmask) made ahead for it
SA_NEXT = "next-"  # prefix: the next round's threshold, num-shares, peers, pk1, pk2

# ---------------------------------------------------------------- a SuperNode's node-config
NODE_DATA_PATH = "data-path"  # deployment: the site's own data file
NODE_SITE_NAME = "site-name"
NODE_POLICY_PATH = "policy-path"
NODE_LEDGER_PATH = "ledger-path"
NODE_SITE_KEY = "site-key"
NODE_PARTITION_ID = "partition-id"  # simulation: set by Flower's engine
NODE_NUM_PARTITIONS = "num-partitions"  # simulation: set by Flower's engine

# ---------------------------------------------------------------- kept at the site, never sent
STATE_CALIBRATION = "privacy-calibration"  # the run's calibrated noise multiplier
STATE_CLIENT_CALIBRATION = "client-dp-calibration"
STATE_SECAGG = "secagg-state"
STATE_SECAGG_NEXT = "secagg-state-next"  # keys made ahead for the next round
