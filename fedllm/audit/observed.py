"""What the coordinator received from each site, kept for ``fedllm audit``'s coordinator.

Without secure aggregation the server receives each site's local model in the clear; in an
audit run (the `audit-canaries` key set, `secagg = false`) it also sums each site's update
(local model minus the global model it was sent) over the rounds into
``<run folder>/audit-observed/<site>.npz``, so the coordinator attacker scores the audited
site's own updates, as a curious server could. Under secure aggregation nothing is kept: the
server only has the aggregate, which the attacker reads from the global models.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord

from fedllm.config import RunConfig

OBSERVED_DIR = "audit-observed"


class ObservedUpdates:
    """Per site, the sum over rounds of the plain updates the server received."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.sums: dict[str, dict[str, np.ndarray]] = {}

    @classmethod
    def for_run(cls, cfg: RunConfig, run_dir: Path) -> ObservedUpdates | None:
        """Only in an audit run with plain updates."""
        if not cfg.audit_canaries or cfg.secagg:
            return None
        return cls(run_dir / OBSERVED_DIR)

    def add(self, site: str, local: ArrayRecord, sent: ArrayRecord) -> None:
        """One reply's update (``local`` minus the global model ``sent``), added and saved."""
        sums = self.sums.setdefault(site, {})
        for name, array in local.items():
            update = array.numpy().astype(np.float64) - sent[name].numpy().astype(np.float64)
            sums[name] = sums[name] + update if name in sums else update
        self.folder.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, np.ndarray] = dict(sums)
        np.savez(self.folder / f"{site}.npz", allow_pickle=False, **arrays)


def load_observed(run_dir: Path, site: str) -> dict[str, np.ndarray] | None:
    """The audited site's summed updates as the server received them (None: not kept)."""
    path = run_dir / OBSERVED_DIR / f"{site}.npz"
    if not path.is_file():
        return None
    with np.load(path) as data:
        return {name: np.asarray(data[name]) for name in data.files}
