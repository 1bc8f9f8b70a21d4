"""App pinning: a site runs only the Flower App Bundles (FABs) whose SHA-256 digest it trusts.

Whoever can start a run (the operator, or anyone the SuperLink's Control API lets in) chooses
the code every SuperNode runs: the ClientApp that reads the site's data and enforces its
privacy policy is part of the run's FAB. So the site names the exact FABs it runs in
``<site-dir>/trusted-apps.toml`` and the site's executor (:mod:`fedllm.deploy.executor`)
checks the FAB of every task **before** Flower installs or imports any of it; anything else
is refused, logged at the site, and answered with an error reply, never with data.

A digest pins exact bytes: a FAB is a deterministic zip of the app's files (fixed dates,
sorted names; :func:`build_fab` builds it as ``flwr run`` does), so the operator and the site
compute the same digest from the same source, and changing one line changes it. Upgrading
the app is an explicit step at every site (``fedllm site trust``). A publisher's Ed25519 key
(:mod:`fedllm.crypto.publisher`) lets a site trust a digest on the publisher's signature
instead of rebuilding the FAB from reviewed source; either way the site pins the digest.

The file (written by ``fedllm site init`` and ``fedllm site trust|untrust|publisher``)::

    [publishers]
    fedllm-release = "ssh-ed25519 AAAAC3Nza..."

    [[app]]
    sha256 = "9de23ab7..."
    app = "@fedllm/fedllm"
    version = "0.1.0"
    trusted-at = "2026-05-01T10:00:00+00:00"
    basis = "signed by publisher fedllm-release (SHA256:...)"
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tomllib
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any

from fedllm.crypto.publisher import PublisherKey, check_digest
from fedllm.errors import AppNotTrustedError, ConfigError, SignatureError

TRUSTED_APPS = "trusted-apps.toml"  # in the site's folder
_PYPROJECT_LIMIT = 1 << 20  # bytes read from a FAB's pyproject.toml for its name and version


@dataclass(frozen=True)
class FabInfo:
    """What a FAB's bytes say about it: its digest and, from its pyproject.toml, its app id
    (``@publisher/name``) and version (``?`` when the FAB is unreadable)."""

    sha256: str
    app: str
    version: str
    size: int

    @classmethod
    def of(cls, content: bytes) -> FabInfo:
        """Reads the zip's pyproject.toml as data: nothing in the FAB is executed."""
        digest = hashlib.sha256(content).hexdigest()
        app, version = "?", "?"
        try:
            with (
                zipfile.ZipFile(io.BytesIO(content)) as fab,
                fab.open("pyproject.toml") as handle,
            ):
                config = tomllib.loads(handle.read(_PYPROJECT_LIMIT).decode())
            app = f"@{config['tool']['flwr']['app']['publisher']}/{config['project']['name']}"
            version = str(config["project"]["version"])
        except (zipfile.BadZipFile, KeyError, TypeError, ValueError, OSError):
            pass  # refused by digest anyway; the log says the FAB is unreadable
        return cls(digest, app, version, len(content))

    def describe(self) -> str:
        name = f"{self.app} {self.version}" if self.app != "?" else "an unreadable FAB"
        return f"{name} (sha256 {self.sha256})"


def build_fab(app_dir: Path) -> bytes:
    """The FAB ``flwr run APP_DIR`` would send: Flower's own builder, same files, same bytes."""
    from flwr.cli.build import build_fab_from_disk

    if not (app_dir / "pyproject.toml").is_file():
        raise ConfigError(f"{app_dir} is not a Flower App (no pyproject.toml)")
    try:
        return build_fab_from_disk(app_dir)
    except Exception as err:  # Flower raises ValueError and its own click exceptions
        raise ConfigError(f"cannot build a FAB from {app_dir}: {err}") from None


@dataclass(frozen=True)
class TrustedApp:
    """One FAB a site runs, and how the site came to trust it (``basis``)."""

    sha256: str
    app: str
    version: str
    trusted_at: str
    basis: str

    @property
    def label(self) -> str:
        """``@publisher/name version``, or the digest alone when the site pinned a digest
        without the FAB (the name is then known from the first run that ships it)."""
        return f"{self.app} {self.version}" if self.app != "?" else f"sha256 {self.sha256[:12]}..."

    def describe(self) -> str:
        name = f"{self.app} {self.version} " if self.app != "?" else ""
        return f"{name}(sha256 {self.sha256}; {self.basis})"


@dataclass(frozen=True)
class TrustedApps:
    """A site's ``trusted-apps.toml``: the FAB digests it runs and the publishers whose
    signatures it accepts when trusting a new digest."""

    apps: tuple[TrustedApp, ...] = ()
    publishers: Mapping[str, PublisherKey] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "publishers", MappingProxyType(dict(self.publishers)))

    @classmethod
    def load(cls, path: Path) -> TrustedApps:
        if not path.is_file():
            raise ConfigError(
                f"{path} does not exist: this site trusts no app yet (create the site's files "
                f"with `fedllm site init {path.parent}`, then `fedllm site trust`)"
            )
        try:
            data = tomllib.loads(path.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
            raise ConfigError(f"{path} is not valid TOML: {err}") from None
        unknown = set(data) - {"app", "publishers"}
        if unknown:
            raise ConfigError(f"{path}: unknown section(s) {sorted(unknown)}")
        publishers = {}
        for name, line in _table(data.get("publishers", {}), path, "[publishers]").items():
            if not isinstance(line, str):
                raise ConfigError(f"{path}: publisher {name!r} must be an OpenSSH key line")
            try:
                publishers[name] = PublisherKey.parse(line, f"{path}: publisher {name!r}")
            except SignatureError as err:
                raise ConfigError(str(err)) from None
        apps = data.get("app", [])
        if not isinstance(apps, list):
            raise ConfigError(f"{path}: `app` must be a list of [[app]] tables")
        return cls(tuple(_app(_table(a, path, "[[app]]"), path) for a in apps), publishers)

    def find(self, sha256: str) -> TrustedApp | None:
        return next((a for a in self.apps if a.sha256 == sha256), None)

    def check(self, fab: FabInfo) -> TrustedApp:
        """The pinned entry for ``fab``; raises AppNotTrustedError naming the app and its
        digest (and nothing about the site: the message goes back to the run)."""
        found = self.find(fab.sha256)
        if found is None:
            raise AppNotTrustedError(
                f"this site does not run {fab.describe()}: the site has not pinned it"
            )
        return found

    def summary(self) -> str:
        """The pinned apps, one short item each (for the site's own log)."""
        return ", ".join(a.label for a in self.apps) or "none"

    def trust(self, app: TrustedApp) -> TrustedApps:
        """With ``app`` pinned (replacing an entry with the same digest)."""
        kept = tuple(a for a in self.apps if a.sha256 != app.sha256)
        return replace(self, apps=(*kept, app))

    def untrust(self, sha256: str) -> TrustedApps:
        digest = check_digest(sha256)
        if self.find(digest) is None:
            raise ConfigError(f"no trusted app has digest {digest}")
        return replace(self, apps=tuple(a for a in self.apps if a.sha256 != digest))

    def with_publisher(self, name: str, key: PublisherKey) -> TrustedApps:
        return replace(self, publishers={**self.publishers, name: key})

    def publisher_of(self, key: PublisherKey) -> str | None:
        """The name this site gave ``key``, if it trusts it."""
        return next((n for n, k in self.publishers.items() if k.line == key.line), None)

    def dumps(self) -> str:
        lines = [
            "# The apps (FAB digests) this site runs: fedllm's executor refuses every other",
            "# app before installing or importing any of its code. Edit with",
            "# `fedllm site trust|untrust|publisher`; a change applies to the next task.",
            "",
            "[publishers]  # keys whose signatures `fedllm site trust --signature` accepts",
        ]
        lines += [f"{_key(n)} = {json.dumps(k.line)}" for n, k in sorted(self.publishers.items())]
        for app in self.apps:
            lines += ["", "[[app]]", f'sha256 = "{app.sha256}"']
            lines += [f"app = {json.dumps(app.app)}", f"version = {json.dumps(app.version)}"]
            lines += [f"trusted-at = {json.dumps(app.trusted_at)}"]
            lines += [f"basis = {json.dumps(app.basis)}"]
        return "\n".join(lines) + "\n"

    def write(self, path: Path) -> None:
        """Replaces ``path`` atomically (a reader sees the old file or the new one)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text(self.dumps())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)


def trusted_app(fab: FabInfo, basis: str, now: datetime | None = None) -> TrustedApp:
    moment = (now or datetime.now(UTC)).isoformat(timespec="seconds")
    return TrustedApp(fab.sha256, fab.app, fab.version, moment, basis)


def pinned_home(base: Path, sha256: str) -> Path:
    """Where a task of the FAB ``sha256`` installs and loads it: a Flower home holding only
    that FAB, so a run cannot point Flower's loader at another app installed earlier."""
    return base / "pinned" / check_digest(sha256)


def _table(value: Any, path: Path, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: {what} must be a table")
    return value


def _app(entry: dict[str, Any], path: Path) -> TrustedApp:
    try:
        digest = check_digest(str(entry["sha256"]))
    except KeyError:
        raise ConfigError(f"{path}: an [[app]] entry has no sha256") from None
    except SignatureError as err:
        raise ConfigError(f"{path}: {err}") from None
    return TrustedApp(
        digest,
        str(entry.get("app", "?")),
        str(entry.get("version", "?")),
        str(entry.get("trusted-at", "")),
        str(entry.get("basis", "")),
    )


def _key(name: str) -> str:
    return name if name.replace("-", "").replace("_", "").isalnum() else json.dumps(name)
