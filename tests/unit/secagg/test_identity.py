"""Signed round keys, survivor-set signatures and the roster: what a site accepts."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedllm.crypto.signing import SiteKey
from fedllm.errors import SecAggError
from fedllm.secagg import Roster, SignedKeys, combine_many, combine_secret, split_secret
from fedllm.secagg.identity import publish_public_key


def _key() -> SiteKey:
    return SiteKey(Ed25519PrivateKey.generate())


def test_signed_keys_verify_only_for_their_run_round_node_and_name() -> None:
    key = _key()
    roster = Roster({"a": key.public, "b": _key().public})
    signed = SignedKeys.make(7, 3, 11, "a", b"1" * 32, b"2" * 32, key)
    roster.check_keys(7, 3, signed)
    for run, rnd, changed in [
        (8, 3, signed),  # another run
        (7, 4, signed),  # replayed into another round
        (7, 3, SignedKeys(12, "a", signed.pk1, signed.pk2, signed.signature)),  # other node
        (7, 3, SignedKeys(11, "b", signed.pk1, signed.pk2, signed.signature)),  # other name
        (7, 3, SignedKeys(11, "a", b"3" * 32, signed.pk2, signed.signature)),  # other key
    ]:
        with pytest.raises(SecAggError, match="are not signed by site"):
            roster.check_keys(run, rnd, changed)


def test_a_roster_file_round_trips_and_names_what_is_wrong(tmp_path: Path) -> None:
    roster = Roster({"hospital-a": _key().public, "hospital-b": _key().public})
    path = tmp_path / "roster.toml"
    path.write_text(roster.to_toml())
    assert Roster.load(path).keys == roster.keys
    with pytest.raises(SecAggError, match="'mallory' is not in this site's roster"):
        Roster.load(path).key("mallory")
    same = roster.keys["hospital-a"].text
    path.write_text(f'[sites]\n"a" = "{same}"\n"b" = "{same}"\n')
    with pytest.raises(SecAggError, match="two sites share one identity key"):
        Roster.load(path)
    path.write_text('[sites]\n"a" = "not base64!"\n')
    with pytest.raises(SecAggError, match="site 'a': public key is not valid base64"):
        Roster.load(path)
    with pytest.raises(SecAggError, match="does not exist"):
        Roster.load(tmp_path / "missing.toml")


def test_a_simulated_roster_reads_the_listed_sites_folders_only(tmp_path: Path) -> None:
    key = _key()
    publish_public_key(tmp_path / "site-0", key)
    publish_public_key(tmp_path / "site-0", key)  # again: the same key is fine
    publish_public_key(tmp_path / "intruder", _key())
    roster = Roster.simulated(tmp_path, ["site-0", "site-1"])
    assert roster.key("site-0") == key.public
    with pytest.raises(SecAggError, match="no identity key for site 'site-1'"):
        roster.key("site-1")
    with pytest.raises(SecAggError, match="'intruder' is not in this site's roster"):
        roster.key("intruder")
    with pytest.raises(SecAggError, match="holds another key"):
        publish_public_key(tmp_path / "site-0", _key())


def test_a_published_key_is_read_again_when_its_file_changes(tmp_path: Path) -> None:
    """Simulated rosters keep parsed keys across rounds, but never a stale one: a file
    replaced with another key is read again."""
    first, second = _key(), _key()
    publish_public_key(tmp_path / "site-0", first)
    assert Roster.simulated(tmp_path, ["site-0"]).key("site-0") == first.public
    (tmp_path / "site-0" / "site-key.pub").unlink()
    publish_public_key(tmp_path / "site-0", second)
    assert Roster.simulated(tmp_path, ["site-0"]).key("site-0") == second.public


def test_combining_many_secrets_matches_pycryptodome_for_any_share_indices() -> None:
    rng = random.Random(0)
    secrets = {n: os.urandom(16) for n in range(30)}
    given = {}
    for owner, secret in secrets.items():
        shares = split_secret(secret, 5, 9)
        given[owner] = rng.sample(shares, rng.randint(5, 9))  # some indices missing
    rebuilt = combine_many(given, 5)
    for owner, secret in secrets.items():
        assert rebuilt[owner] == secret == combine_secret(sorted(given[owner])[:5])
    with pytest.raises(SecAggError, match="4 distinct shares of node 0's secret, below"):
        combine_many({0: given[0][:4]}, 5)
