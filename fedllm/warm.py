"""What a deployed site keeps warm between the tasks of a run, in its own process.

A deployed site runs every task of a run in one worker process (:mod:`fedllm.deploy.worker`),
so what a task loads can serve the next: the site's data file read, parsed and split
(:func:`site_data`), and its rows scaled by the run's pooled scaler (:func:`scaled`). Each is
kept under what it was made from, the data file's identity included (device, inode, size,
modification time of the file, or of every file under a data folder), so a changed file is
read again on the next task. The verified ledger is kept the same way by the ledger itself
(:mod:`fedllm.privacy.ledger`: a read verifies only the bytes after what it verified last, and
all of it again when the file no longer begins with them). Nothing here is sent anywhere.
"""

from __future__ import annotations

import os
from collections.abc import Hashable
from pathlib import Path

from fedllm.config import RunConfig
from fedllm.data.tabular import Standardizer
from fedllm.privacy.memo import Memo
from fedllm.scaling import scale_site
from fedllm.tasks.base import SiteData, Task

_SITES: Memo[SiteData] = Memo(4)
_SCALED: Memo[tuple[SiteData, SiteData]] = Memo(4)  # (the rows, scaled) by rows and scaler


def file_identity(path: Path) -> tuple[Hashable, ...]:
    """What changes when the data at ``path`` changes: each file's device, inode, size and
    modification time (a folder: every file under it)."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    identity = []
    for file in files:
        stat = os.stat(file)
        identity.append((str(file), stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns))
    return tuple(identity)


def site_data(task: Task, cfg: RunConfig, path: str, name: str) -> SiteData:
    """``task.site(cfg, path, name)``, read once while the file and the config stay the same."""
    key = (task.name, cfg, path, name, file_identity(Path(path)))
    return _SITES.get(key) or _SITES.put(key, task.site(cfg, path, name))


def scaled(site: SiteData, scaler: Standardizer) -> SiteData:
    """``site`` scaled by ``scaler``, computed once per (site data, scaler)."""
    key = (id(site), scaler.mean.tobytes(), scaler.std.tobytes())
    cached = _SCALED.get(key)
    if cached is not None and cached[0] is site:  # the memo holds ``site``: its id is its own
        return cached[1]
    return _SCALED.put(key, (site, scale_site(site, scaler)))[1]
