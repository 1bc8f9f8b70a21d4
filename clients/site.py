"""A site's own privacy files: its policy, its signing key and its privacy ledger.

Deployment: paths from the SuperNode's node-config (`policy-path`, `ledger-path`,
`site-key`), all three required, so a site that forgot one refuses to train rather than
training unguarded. Simulation: each virtual site keeps them in ``<ledger-dir>/<site>/`` (shared
across runs) or, by default, in ``<run folder>/sites/<site>/``; a policy file already there is
used, otherwise one is generated from the run config (limits exactly what the run asks).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from flwr.app import ConfigRecord, Context, RecordDict

from fedllm.crypto import SiteKey
from fedllm.errors import PolicyError
from fedllm.privacy import PrivacyLedger, PrivacyRequest, SitePolicy
from fedllm.protocol import NODE_LEDGER_PATH, NODE_POLICY_PATH, NODE_SITE_KEY

POLICY_FILE, LEDGER_FILE, KEY_FILE = "policy.toml", "ledger.jsonl", "site-key.pem"


@dataclass(frozen=True)
class SiteGuard:
    """What a site checks every request against and records every training in."""

    policy: SitePolicy
    ledger: PrivacyLedger

    @classmethod
    def deployed(cls, context: Context) -> SiteGuard:
        node = context.node_config
        missing = [k for k in (NODE_POLICY_PATH, NODE_LEDGER_PATH, NODE_SITE_KEY) if k not in node]
        if missing:
            raise PolicyError(
                "this SuperNode's node-config lacks "
                + ", ".join(f"`{k}`" for k in missing)
                + ": a site trains only under its own policy, ledger and key "
                "(create them with `fedllm site init DIR`)"
            )
        key = SiteKey.load(Path(str(node[NODE_SITE_KEY])))
        policy = SitePolicy.load(Path(str(node[NODE_POLICY_PATH])))
        return cls(policy, PrivacyLedger(Path(str(node[NODE_LEDGER_PATH])), key))

    @classmethod
    def simulated(cls, folder: Path, request: PrivacyRequest) -> SiteGuard:
        policy_path = folder / POLICY_FILE
        if policy_path.exists():
            policy = SitePolicy.load(policy_path)
        else:
            policy = SitePolicy.from_request(request)
            policy.write(policy_path)
        key = SiteKey.load_or_generate(folder / KEY_FILE)
        return cls(policy, PrivacyLedger(folder / LEDGER_FILE, key))


def calibrated_once(
    state: RecordDict, record: str, key: str, calibrate: Callable[[], float]
) -> float:
    """A noise multiplier calibrated once per run and kept in the site's state under
    ``record`` (recalibrated when ``key``, the run's calibration inputs, changes)."""
    cached = state.config_records.get(record)
    if cached is not None and cached["key"] == key:
        return float(cached[_MULTIPLIER])  # type: ignore[arg-type]
    value = calibrate()
    state[record] = ConfigRecord({"key": key, _MULTIPLIER: value})
    return value


_MULTIPLIER = "noise-multiplier"  # in a calibration record of the site's own state
