"""TLS certificates and SuperNode keys: what they contain, when they are refused, and that the
real consumers (Flower's own key loaders, a real SuperLink's TLS) accept them."""

from __future__ import annotations

import argparse
import ipaddress
import re
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID

from fedllm.crypto import (
    Deployment,
    NodeKeyFiles,
    add_node_public_key,
    check_certificate,
    check_chain,
    check_key_matches,
    check_node_public_key,
    check_private_key_mode,
    create_ca,
    create_deployment,
    create_node_keys,
    create_server_cert,
)
from fedllm.errors import CertificateError

HOSTS = ["localhost", "127.0.0.1", "::1", "superlink.hospital-net"]


@pytest.fixture
def made(tmp_path: Path) -> Deployment:
    return create_deployment(tmp_path / "certs", HOSTS)


@pytest.fixture
def node(tmp_path: Path) -> NodeKeyFiles:
    """A SuperNode key pair as a site makes it in its own folder (fedllm site init)."""
    (made,) = create_node_keys(tmp_path / "site", ["node"])
    return made


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_server_certificate_chains_to_the_ca(made: Deployment) -> None:
    info = check_chain(made.superlink.cert, made.ca.cert, "superlink.hospital-net")
    assert (info.issuer, info.is_ca) == ("CN=fedllm CA", False)


def test_sans_hold_each_host_as_dns_name_or_ip_address(made: Deployment) -> None:
    info = check_certificate(made.superlink.cert)
    assert info.dns_names == ("localhost", "superlink.hospital-net")
    assert info.ip_addresses == (ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1"))


def test_covers_compares_names_without_case_and_addresses_by_value(made: Deployment) -> None:
    info = check_certificate(made.superlink.cert)
    assert [info.covers(h) for h in ("LOCALHOST", "[::1]", "0:0::1", "127.0.0.2", "a.local")] == [
        True,
        True,
        True,
        False,
        False,
    ]


def test_ca_certificate_is_a_critical_ca_that_signs_certificates(made: Deployment) -> None:
    cert = _cert(made.ca.cert)
    basic = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    assert basic.critical and basic.value.ca and usage.key_cert_sign and usage.crl_sign


def test_server_certificate_is_for_tls_servers_and_names_its_ca_key(made: Deployment) -> None:
    cert, ca = _cert(made.superlink.cert), _cert(made.ca.cert)
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    basic = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert aki.key_identifier == ski.digest and basic.critical and not basic.value.ca


def test_expired_certificate_is_refused_with_its_date(made: Deployment) -> None:
    end = _cert(made.superlink.cert).not_valid_after_utc
    with pytest.raises(CertificateError, match=f"expired on {end:%Y-%m-%d %H:%M:%S} UTC"):
        check_certificate(made.superlink.cert, now=end + timedelta(seconds=1))


def test_certificate_not_yet_valid_is_refused_with_its_start(tmp_path: Path) -> None:
    ca = create_ca(tmp_path, now=datetime(2031, 1, 1, tzinfo=UTC))
    with pytest.raises(CertificateError, match="not valid until 2030-12-31 23:55:00 UTC"):
        check_certificate(ca.cert, now=datetime(2030, 6, 1, tzinfo=UTC))


def test_chain_check_refuses_an_expired_ca(made: Deployment) -> None:
    later = datetime.now(UTC) + timedelta(days=400)
    with pytest.raises(CertificateError, match=f"certificate {made.ca.cert} expired on"):
        check_chain(made.superlink.cert, made.ca.cert, now=later)


def test_certificate_from_another_ca_fails_the_chain_check(
    made: Deployment, tmp_path: Path
) -> None:
    other = create_deployment(tmp_path / "other", ["localhost"])
    with pytest.raises(CertificateError, match=f"is not signed by the CA {other.ca.cert}"):
        check_chain(made.superlink.cert, other.ca.cert)


def test_chain_check_refuses_a_host_the_certificate_does_not_name(made: Deployment) -> None:
    with pytest.raises(CertificateError, match="does not cover host 'example.org'; it names"):
        check_chain(made.superlink.cert, made.ca.cert, "example.org")


def test_chain_check_refuses_a_server_certificate_as_the_ca(made: Deployment) -> None:
    with pytest.raises(CertificateError, match="is not a CA certificate"):
        check_chain(made.superlink.cert, made.superlink.cert)


def test_a_file_that_is_not_pem_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ca.crt"
    path.write_text("hello")
    with pytest.raises(CertificateError, match=f"{path} is not a PEM certificate"):
        check_certificate(path)


def test_an_empty_host_list_is_refused(tmp_path: Path) -> None:
    ca = create_ca(tmp_path)
    with pytest.raises(CertificateError, match="needs at least one host"):
        create_server_cert(tmp_path, ca, [])


@pytest.mark.parametrize("host", ["bad host", "-x.org", "a..b", "[::1]", "héllo.org", "x" * 64])
def test_a_malformed_host_is_refused_by_name(tmp_path: Path, host: str) -> None:
    ca = create_ca(tmp_path)
    with pytest.raises(CertificateError, match=re.escape(f"host '{host}' is neither an IP")):
        create_server_cert(tmp_path, ca, ["localhost", host])


@pytest.mark.parametrize("days", [0, -5])
def test_non_positive_days_are_refused(tmp_path: Path, days: int) -> None:
    with pytest.raises(
        CertificateError, match=f"`days` must be an integer in 1..36500, got {days}"
    ):
        create_ca(tmp_path, days=days)


def test_a_server_certificate_may_not_outlive_its_ca(tmp_path: Path) -> None:
    ca = create_ca(tmp_path, days=30)
    with pytest.raises(CertificateError, match="would outlive its CA"):
        create_server_cert(tmp_path, ca, ["localhost"], days=31)


def test_private_keys_are_mode_0600_and_public_files_0644(
    made: Deployment, node: NodeKeyFiles
) -> None:
    private = [made.ca.key, made.superlink.key, node.key]
    public = [made.ca.cert, made.superlink.cert, node.pub]
    assert {p.stat().st_mode & 0o777 for p in private} == {0o600}
    assert {p.stat().st_mode & 0o777 for p in public} == {0o644}


def test_an_existing_key_is_never_overwritten(made: Deployment) -> None:
    made.ca.cert.unlink()
    before = made.ca.key.read_bytes()
    with pytest.raises(CertificateError, match=f"{made.ca.key} already exists; not overwriting"):
        create_ca(made.ca.key.parent)
    assert made.ca.key.read_bytes() == before


def test_an_existing_site_key_is_never_overwritten(node: NodeKeyFiles) -> None:
    before = node.key.read_bytes()
    with pytest.raises(CertificateError, match=f"{node.key} already exists"):
        create_node_keys(node.key.parent, ["hospital-c", node.site])
    assert node.key.read_bytes() == before and not (node.key.parent / "hospital-c.key").exists()


def test_a_refused_deployment_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(CertificateError, match="host"):
        create_deployment(tmp_path / "certs", ["localhost", "bad host"])
    assert not (tmp_path / "certs").exists()


def test_the_operators_folder_holds_no_site_private_key(made: Deployment) -> None:
    private = {p.name for p in made.ca.key.parent.rglob("*") if b"PRIVATE KEY" in _bytes(p)}
    assert private == {"ca.key", "superlink.key"}
    assert list((made.ca.key.parent / "nodes").iterdir()) == []


def test_a_sites_public_key_is_filed_under_its_name(made: Deployment, node: NodeKeyFiles) -> None:
    filed = add_node_public_key(made.ca.key.parent, "hospital-a", node.pub)
    assert filed.pub == made.ca.key.parent / "nodes" / "hospital-a.pub"
    assert filed.fingerprint == node.fingerprint == check_node_public_key(filed.pub)
    assert b"PRIVATE" not in filed.pub.read_bytes()


def test_a_sites_private_key_is_refused_by_the_operator(
    made: Deployment, node: NodeKeyFiles
) -> None:
    with pytest.raises(CertificateError, match="is a private key: ask the site for its node.pub"):
        add_node_public_key(made.ca.key.parent, "hospital-a", node.key)
    assert not (made.ca.key.parent / "nodes" / "hospital-a.pub").exists()


def test_a_filed_site_key_is_never_replaced(made: Deployment, node: NodeKeyFiles) -> None:
    add_node_public_key(made.ca.key.parent, "hospital-a", node.pub)
    with pytest.raises(CertificateError, match="already exists"):
        add_node_public_key(made.ca.key.parent, "hospital-a", node.pub)
    with pytest.raises(CertificateError, match="site name '../evil'"):
        add_node_public_key(made.ca.key.parent, "../evil", node.pub)


def _bytes(path: Path) -> bytes:
    return path.read_bytes() if path.is_file() else b""


def test_node_keys_load_with_flowers_own_loaders(node: NodeKeyFiles) -> None:
    from flwr.cli.supernode.register import try_load_public_key
    from flwr.supercore.primitives.asymmetric import public_key_to_bytes
    from flwr.supernode.cli.flower_supernode import _try_setup_client_authentication

    args = argparse.Namespace(
        auth_supernode_private_key=str(node.key), auth_supernode_public_key=None
    )
    keys = _try_setup_client_authentication(args)  # what `--auth-supernode-private-key` runs
    assert keys is not None
    assert try_load_public_key(node.pub) == public_key_to_bytes(
        keys[1]
    )  # `flwr supernode register`


def test_what_a_node_signs_verifies_with_its_registered_public_key(node: NodeKeyFiles) -> None:
    from flwr.cli.supernode.register import try_load_public_key
    from flwr.supercore.primitives.asymmetric import (
        bytes_to_public_key,
        sign_message,
        verify_signature,
    )

    private = serialization.load_ssh_private_key(node.key.read_bytes(), None)
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    registered = bytes_to_public_key(try_load_public_key(node.pub))
    signature = sign_message(private, b"timestamp")
    assert verify_signature(registered, b"timestamp", signature)


def test_node_fingerprint_is_the_one_ssh_keygen_shows(node: NodeKeyFiles) -> None:
    assert check_node_public_key(node.pub) == node.fingerprint
    assert node.fingerprint.startswith("SHA256:") and len(node.fingerprint) == 50


def test_a_node_public_key_flower_would_refuse_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "site.pub"
    key = ed25519.Ed25519PrivateKey.generate().public_key()
    path.write_bytes(
        key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    )
    with pytest.raises(CertificateError, match="is not an EC key on a NIST curve"):
        check_node_public_key(path)


def test_a_key_that_does_not_belong_to_the_certificate_is_refused(made: Deployment) -> None:
    with pytest.raises(CertificateError, match=f"{made.ca.key} does not belong to") as err:
        check_key_matches(made.superlink.cert, made.ca.key)
    assert "PRIVATE KEY" not in str(err.value)


def test_a_private_key_others_can_read_is_refused(made: Deployment) -> None:
    made.superlink.key.chmod(0o644)
    with pytest.raises(CertificateError, match="has mode 0644; it must be 0600"):
        check_private_key_mode(made.superlink.key)


# A real SuperLink serving its Fleet, Control and Runtime APIs over TLS with these files.


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def superlink(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Deployment, int]]:
    """A `flower-superlink` on a free loopback port with the printed TLS flags; always killed."""
    folder = tmp_path_factory.mktemp("tls")
    made = create_deployment(folder / "certs", HOSTS)
    exe = Path(sys.executable).parent / "flower-superlink"
    port = _free_port()
    command = [
        str(exe),
        *("--ssl-ca-certfile", str(made.ca.cert), "--ssl-certfile", str(made.superlink.cert)),
        *("--ssl-keyfile", str(made.superlink.key), "--enable-supernode-auth"),
        *("--isolation", "process", "--port", str(port)),
    ]
    log = folder / "superlink.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while True:
            if proc.poll() is not None:
                pytest.fail(f"flower-superlink exited: {log.read_text()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail("flower-superlink did not listen within 20 s")
                time.sleep(0.1)
        yield made, port
    finally:
        proc.kill()
        proc.wait()


def _handshake(ca: Path, port: int, server_hostname: str) -> str:
    context = ssl.create_default_context(cafile=str(ca))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=server_hostname) as tls,
    ):
        return str(tls.version())


@pytest.mark.parametrize("name", ["localhost", "127.0.0.1"])
def test_superlink_tls_handshake_verifies_against_the_ca(
    superlink: tuple[Deployment, int], name: str
) -> None:
    made, port = superlink
    assert _handshake(made.ca.cert, port, name).startswith("TLSv1.")


def test_superlink_tls_refuses_a_host_name_not_in_the_certificate(
    superlink: tuple[Deployment, int],
) -> None:
    made, port = superlink
    with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):
        _handshake(made.ca.cert, port, "example.org")


def test_superlink_tls_is_refused_by_a_client_trusting_another_ca(
    superlink: tuple[Deployment, int], tmp_path: Path
) -> None:
    _, port = superlink
    other = create_ca(tmp_path)
    with pytest.raises(ssl.SSLCertVerificationError, match="certificate verify failed"):
        _handshake(other.cert, port, "localhost")


def test_superlink_answers_no_plaintext_http(superlink: tuple[Deployment, int]) -> None:
    _, port = superlink
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
        try:
            reply = sock.recv(64)
        except ConnectionResetError:
            reply = b""
    assert not reply.startswith(b"HTTP/")
