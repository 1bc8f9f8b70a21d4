"""A site's own folder, made at the site by ``fedllm site init DIR``: every secret in it is
created there and never leaves it.

- ``policy.toml``: the weakest privacy the site trains under;
- ``site-key.pem`` / ``.pub``: the Ed25519 key signing the ledger head and the site's reports
  (``.pub`` goes to its data-protection officer);
- ``node.key`` / ``node.pub``: the SuperNode's authentication key (P-384, OpenSSH; only
  ``node.pub`` goes to the operator, who registers it);
- ``superexec.secret``: shared by the SuperNode and its executor (the local Runtime API);
- ``trusted-apps.toml``: the app digests the site runs (:mod:`fedllm.deploy.pinning`);
- ``ledger.jsonl``: the privacy ledger, appended by every round.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fedllm.crypto import NodeKeyFiles, SiteKey, create_node_keys
from fedllm.deploy.pinning import TRUSTED_APPS, TrustedApps
from fedllm.errors import PolicyError
from fedllm.files import write_new

if TYPE_CHECKING:
    from fedllm.privacy import SitePolicy  # imports opacus: only when a policy is made

NODE_KEY = "node"  # node.key / node.pub


@dataclass(frozen=True)
class SiteFiles:
    """The paths of a site's folder (see the module docstring)."""

    folder: Path

    @property
    def policy(self) -> Path:
        return self.folder / "policy.toml"

    @property
    def site_key(self) -> Path:
        return self.folder / "site-key.pem"

    @property
    def site_key_pub(self) -> Path:
        return self.folder / "site-key.pub"

    @property
    def ledger(self) -> Path:
        return self.folder / "ledger.jsonl"

    @property
    def node_key(self) -> Path:
        return self.folder / f"{NODE_KEY}.key"

    @property
    def node_pub(self) -> Path:
        return self.folder / f"{NODE_KEY}.pub"

    @property
    def superexec_secret(self) -> Path:
        return self.folder / "superexec.secret"

    @property
    def trusted_apps(self) -> Path:
        return self.folder / TRUSTED_APPS

    @property
    def made(self) -> tuple[Path, ...]:
        """What ``init_site`` writes (the ledger comes with the first round)."""
        return (
            self.policy,
            self.site_key,
            self.site_key_pub,
            self.node_key,
            self.node_pub,
            self.superexec_secret,
            self.trusted_apps,
        )


@dataclass(frozen=True)
class InitializedSite:
    files: SiteFiles
    site_key: SiteKey
    node: NodeKeyFiles


def init_site(folder: Path, policy: SitePolicy) -> InitializedSite:
    """Writes every file of a new site; refuses (before writing anything) a folder holding
    any of them, or one whose path node-config cannot carry."""
    files = SiteFiles(folder)
    if any(c in str(folder) for c in "'\"\\"):
        raise PolicyError(
            f"site folder {folder} has a quote or backslash in its path: node-config cannot hold it"
        )
    for path in files.made:
        if path.exists():
            raise PolicyError(f"{path} already exists; not overwriting the site's files")
    policy.write(files.policy)
    site_key = SiteKey.generate(files.site_key)
    files.site_key_pub.write_text(site_key.public.pem())
    (node,) = create_node_keys(folder, [NODE_KEY])
    secret = secrets.token_hex(32).encode()  # Flower reads the file's exact bytes
    write_new(files.superexec_secret, secret, 0o600, PolicyError, "SuperExec secret")
    TrustedApps().write(files.trusted_apps)
    return InitializedSite(files, site_key, node)
