"""Who a round's keys belong to: signed statements and the roster of sites a site trusts.

Every round, each site makes fresh key pairs and signs them with its long-term identity key
(Ed25519, the ``site-key.pem`` that also signs its ledger). A peer accepts them only when the
signature verifies with the identity key its own roster holds for the signer's name: the
server relays keys but cannot make any. The survivor set of a round with dropouts is signed the
same way before any share of a dropped site is revealed (Bonawitz et al. 2017, malicious
setting: the consistency check). Signatures cover a domain tag, the run and the round, so none
can be replayed into another run, round or role.

Roster file (deployment: ``secagg-roster.toml`` beside the site's policy, or the file the
node-config's ``secagg-roster`` names)::

    # fedllm secure-aggregation roster: the sites whose identity keys this site trusts
    [sites]
    "hospital-a" = "base64 of the 32-byte Ed25519 public key"   # or site-key.pub's PEM text
    "hospital-b" = "..."

In simulation the roster is the federation's virtual sites, each key read from the site's own
folder (``<sites root>/<name>/site-key.pub``, written when the site first takes part).
"""

from __future__ import annotations

import struct
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from fedllm.crypto.signing import PublicKey, SiteKey
from fedllm.errors import SecAggError, SignatureError

KEYS_TAG = b"fedllm secagg round keys v1\x00"
SURVIVORS_TAG = b"fedllm secagg survivors v1\x00"
PUBLIC_KEY_FILE = "site-key.pub"
ROSTER_FILE = "secagg-roster.toml"  # deployment's default roster, beside the site's policy


def _blob(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def keys_statement(
    run_id: int, server_round: int, node_id: int, name: str, pk1: bytes, pk2: bytes
) -> bytes:
    """What a site signs for its round keys: run, round, its node id and name, both keys."""
    return (
        KEYS_TAG
        + struct.pack(">QQQ", run_id, server_round, node_id)
        + _blob(name.encode())
        + _blob(pk1)
        + _blob(pk2)
    )


def survivors_statement(run_id: int, server_round: int, survivors: Iterable[int]) -> bytes:
    """What a site signs before it reveals a dropped neighbour's masking-key share."""
    nodes = sorted(survivors)
    return (
        SURVIVORS_TAG
        + struct.pack(">QQI", run_id, server_round, len(nodes))
        + b"".join(struct.pack(">Q", n) for n in nodes)
    )


@dataclass(frozen=True)
class SignedKeys:
    """A site's public keys for one round, with its name and its identity signature."""

    node_id: int
    name: str
    pk1: bytes  # masking key agreement
    pk2: bytes  # share encryption key agreement
    signature: str  # base64 Ed25519 over keys_statement(...)

    @classmethod
    def make(
        cls,
        run_id: int,
        server_round: int,
        node_id: int,
        name: str,
        pk1: bytes,
        pk2: bytes,
        signer: SiteKey,
    ) -> SignedKeys:
        signature = signer.sign(keys_statement(run_id, server_round, node_id, name, pk1, pk2))
        return cls(node_id, name, pk1, pk2, signature)


@dataclass
class Roster:
    """The identity keys a site trusts, by site name. ``folder``: simulation, keys read on
    first use from ``folder/<name>/site-key.pub`` for the names listed."""

    keys: dict[str, PublicKey] = field(default_factory=dict)
    folder: Path | None = None
    names: frozenset[str] = frozenset()

    @classmethod
    def load(cls, path: Path) -> Roster:
        if not path.is_file():
            raise SecAggError(f"secure-aggregation roster {path} does not exist")
        try:
            values = tomllib.loads(path.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
            raise SecAggError(
                f"secure-aggregation roster {path} is not valid TOML: {err}"
            ) from None
        sites = values.get("sites")
        if not isinstance(sites, dict) or not sites:
            raise SecAggError(f"secure-aggregation roster {path} needs a non-empty [sites] table")
        return cls.from_mapping(sites, str(path))

    @classmethod
    def from_mapping(cls, sites: Mapping[str, object], source: str = "roster") -> Roster:
        keys = {}
        for name, text in sites.items():
            if not isinstance(text, str):
                raise SecAggError(f"{source}: site {name!r} needs a public key string")
            try:
                keys[str(name)] = PublicKey.from_text(text)
            except SignatureError as err:
                raise SecAggError(f"{source}: site {name!r}: {err}") from None
        raws = [k.raw for k in keys.values()]
        if len(set(raws)) != len(raws):
            raise SecAggError(f"{source}: two sites share one identity key")
        return cls(keys)

    @classmethod
    def simulated(cls, folder: Path, names: Iterable[str]) -> Roster:
        return cls(folder=folder, names=frozenset(names))

    def to_toml(self) -> str:
        lines = [
            "# fedllm secure-aggregation roster: the sites whose identity keys this site trusts",
            "[sites]",
        ]
        lines += [f'"{name}" = "{key.text}"' for name, key in sorted(self.keys.items())]
        return "\n".join(lines) + "\n"

    def key(self, name: str) -> PublicKey:
        if name in self.keys:
            return self.keys[name]
        if self.folder is None or name not in self.names:
            raise SecAggError(
                f"secure aggregation: site {name!r} is not in this site's roster: its round "
                "keys cannot be trusted"
            )
        path = self.folder / name / PUBLIC_KEY_FILE
        try:
            key = _published_key(path)
        except (OSError, SignatureError) as err:
            raise SecAggError(
                f"secure aggregation: no identity key for site {name!r} ({path}): {err}"
            ) from None
        self.keys[name] = key
        return key

    def check_keys(self, run_id: int, server_round: int, signed: SignedKeys) -> None:
        """Raises SecAggError unless ``signed`` carries a signature of its named site."""
        statement = keys_statement(
            run_id, server_round, signed.node_id, signed.name, signed.pk1, signed.pk2
        )
        try:
            self.key(signed.name).verify(signed.signature, statement)
        except SignatureError:
            raise SecAggError(
                f"secure aggregation: the round-{server_round} keys relayed for node "
                f"{signed.node_id} are not signed by site {signed.name!r}'s identity key"
            ) from None

    def check_survivors(
        self, run_id: int, server_round: int, survivors: Iterable[int], name: str, signature: str
    ) -> None:
        try:
            self.key(name).verify(signature, survivors_statement(run_id, server_round, survivors))
        except SignatureError:
            raise SecAggError(
                f"secure aggregation: site {name!r}'s signature over the round-{server_round} "
                "survivor set does not verify"
            ) from None


_PARSED: dict[str, PublicKey] = {}


def _published_key(path: Path) -> PublicKey:
    """A site's published key file, each distinct text parsed once: a simulated site reads
    its neighbours' key files every round."""
    text = path.read_text()
    key = _PARSED.get(text)
    if key is None:
        key = _PARSED[text] = PublicKey.from_text(text)
    return key


def publish_public_key(folder: Path, key: SiteKey) -> None:
    """Simulation: write ``folder/site-key.pub`` (the key peers read), once; a file already
    there must hold this key."""
    path = folder / PUBLIC_KEY_FILE
    if path.exists():
        if PublicKey.from_text(path.read_text()) != key.public:
            raise SecAggError(f"{path} holds another key than this site's {key.public.fingerprint}")
        return
    folder.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(path.name + ".tmp")
    temp.write_text(key.public.text + "\n")
    temp.replace(path)
