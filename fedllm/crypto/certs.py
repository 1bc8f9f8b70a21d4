"""TLS certificates for the SuperLink and authentication keys for SuperNodes.

A deployment needs three things, made here with ``cryptography`` alone (no openssl):

- a private certificate authority (``ca.crt``, ``ca.key``): SuperNodes and the Flower CLI trust
  the SuperLink because its certificate is signed by this CA (``--root-certificates``);
- the SuperLink's TLS certificate (``superlink.crt``, ``superlink.key``), whose
  SubjectAlternativeName lists every host name and IP address SuperNodes dial;
- one EC key pair per site for Flower's SuperNode authentication, made **at the site**
  (``fedllm site init``: ``node.key``, ``node.pub``): OpenSSH format on a NIST curve (P-384,
  as ``ssh-keygen -t ecdsa -b 384``), which is what ``flower-supernode
  --auth-supernode-private-key`` and ``flwr supernode register`` load. The operator receives
  only the public key and files it as ``nodes/<site>.pub`` (:func:`add_node_public_key`);
  no site's private key is ever made or held by the operator.

Private keys are created with O_EXCL and mode 0600, never overwritten, and never enter a log
line or an error message. Checks fail closed and name the file and the problem.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedllm.errors import CertificateError
from fedllm.files import write_new

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_DAYS = 36500
# Certificates start a little in the past so a machine whose clock lags still accepts them.
CLOCK_SKEW = timedelta(minutes=5)
_TLS_CURVE = ec.SECP256R1()
_NODE_CURVE = ec.SECP384R1()  # Flower's docs: `ssh-keygen -t ecdsa -b 384`
_NIST_CURVES = (ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)
_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
_SITE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass(frozen=True)
class CertFiles:
    """A certificate and its private key, as written side by side."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class NodeKeyFiles:
    """A site's SuperNode authentication key pair and the public key's SHA-256 fingerprint."""

    site: str
    key: Path
    pub: Path
    fingerprint: str


@dataclass(frozen=True)
class NodePublicKey:
    """A site's SuperNode public key as the operator files it (``nodes/<site>.pub``)."""

    site: str
    pub: Path
    fingerprint: str


@dataclass(frozen=True)
class CertInfo:
    """What a certificate says about itself; ``covers`` tells whether it names a host."""

    path: Path
    subject: str
    issuer: str
    dns_names: tuple[str, ...]
    ip_addresses: tuple[IPAddress, ...]
    not_before: datetime
    not_after: datetime
    is_ca: bool

    @property
    def sans(self) -> tuple[str, ...]:
        return self.dns_names + tuple(str(ip) for ip in self.ip_addresses)

    def covers(self, host: str) -> bool:
        """True when ``host`` (a DNS name or an IP address) is one of the certificate's SANs."""
        ip = _parse_ip(host.strip("[]"))
        if ip is not None:
            return ip in self.ip_addresses
        host = host.lower().rstrip(".")
        for name in (n.lower() for n in self.dns_names):
            if name == host:
                return True
            # A wildcard stands for exactly one leftmost label (RFC 6125, 6.4.3).
            if name.startswith("*.") and host.partition(".")[2] == name[2:] and "." in name[2:]:
                return True
        return False


@dataclass(frozen=True)
class Deployment:
    """Everything ``create_deployment`` wrote: the CA and the SuperLink's certificate."""

    ca: CertFiles
    superlink: CertFiles


def create_deployment(
    folder: Path, hosts: list[str], days: int = 365, now: datetime | None = None
) -> Deployment:
    """``folder/{ca,superlink}.{crt,key}`` and an empty ``folder/nodes/`` for the sites'
    public keys. Every input and every path is checked before the first file is written, so
    a refusal leaves nothing."""
    _sans(hosts)
    _validity_days(days)
    names = ("ca.crt", "ca.key", "superlink.crt", "superlink.key")
    _refuse_existing(*(folder / n for n in names))
    now = _utc(now)  # one moment, so the SuperLink certificate ends with its CA
    ca = create_ca(folder, days=days, now=now)
    superlink = create_server_cert(folder, ca, hosts, days=days, now=now)
    (folder / "nodes").mkdir(mode=0o755, exist_ok=True)
    return Deployment(ca, superlink)


def create_ca(
    folder: Path, common_name: str = "fedllm CA", days: int = 365, now: datetime | None = None
) -> CertFiles:
    """A new CA key and self-signed certificate: ``folder/ca.crt`` and ``folder/ca.key``."""
    files = CertFiles(folder / "ca.crt", folder / "ca.key")
    _refuse_existing(files.cert, files.key)
    lifetime = _validity_days(days)
    key = ec.generate_private_key(_TLS_CURVE)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    exts = [x509.BasicConstraints(ca=True, path_length=0), _key_usage(cert_sign=True)]
    cert = _issue(name, name, key, key, _validity_start(now), lifetime, exts)
    _write_pair(files, key, cert)
    return files


def create_server_cert(
    folder: Path, ca: CertFiles, hosts: list[str], days: int = 365, now: datetime | None = None
) -> CertFiles:
    """The SuperLink's key and certificate, signed by ``ca``, naming every host in its SANs:
    ``folder/superlink.crt`` and ``folder/superlink.key``."""
    sans = _sans(hosts)
    lifetime = _validity_days(days)
    files = CertFiles(folder / "superlink.crt", folder / "superlink.key")
    _refuse_existing(files.cert, files.key)
    ca_cert = _load_cert(ca.cert)
    ca_key = _matching_key(ca_cert, ca.cert, ca.key)
    start = _validity_start(now)
    if start + CLOCK_SKEW + lifetime > ca_cert.not_valid_after_utc:
        raise CertificateError(
            f"a {days}-day SuperLink certificate would outlive its CA {ca.cert} (expires "
            f"{_day(ca_cert.not_valid_after_utc)}): choose fewer days or a new CA"
        )
    key = ec.generate_private_key(_TLS_CURVE)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedllm SuperLink")])
    ca_ski = _extension(ca_cert, x509.SubjectKeyIdentifier)
    if ca_ski is None:
        raise CertificateError(f"CA certificate {ca.cert} has no SubjectKeyIdentifier")
    exts = [
        x509.BasicConstraints(ca=False, path_length=None),
        _key_usage(cert_sign=False),
        x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
        x509.SubjectAlternativeName(sans),
        x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
    ]
    cert = _issue(subject, ca_cert.subject, key, ca_key, start, lifetime, exts)
    _write_pair(files, key, cert)
    return files


def create_node_keys(folder: Path, site_names: list[str]) -> list[NodeKeyFiles]:
    """One P-384 key pair per name for SuperNode authentication, made where the SuperNode
    runs: ``folder/<name>.key`` (OpenSSH private key, 0600) and ``folder/<name>.pub`` (one
    OpenSSH public key line)."""
    _check_sites(site_names)
    _refuse_existing(*_node_paths(folder, site_names))
    made = []
    for site in site_names:
        key = ec.generate_private_key(_NODE_CURVE)
        private = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
        public = key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        files = NodeKeyFiles(site, folder / f"{site}.key", folder / f"{site}.pub", _fp(public))
        _write_new(files.key, private, 0o600)
        _write_new(files.pub, public + f" fedllm-{site}\n".encode(), 0o644)
        made.append(files)
    return made


def check_certificate(path: Path, now: datetime | None = None) -> CertInfo:
    """What the PEM certificate at ``path`` says, if it is valid at ``now`` (default: now)."""
    cert = _load_cert(path)
    now = _utc(now)
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    if now > end:
        raise CertificateError(f"certificate {path} expired on {_day(end)}")
    if now < start:
        raise CertificateError(f"certificate {path} is not valid until {_day(start)}")
    san = _extension(cert, x509.SubjectAlternativeName)
    basic = _extension(cert, x509.BasicConstraints)
    ips = san.get_values_for_type(x509.IPAddress) if san else []
    return CertInfo(
        path,
        cert.subject.rfc4514_string(),
        cert.issuer.rfc4514_string(),
        tuple(san.get_values_for_type(x509.DNSName)) if san else (),
        tuple(ip for ip in ips if isinstance(ip, IPAddress)),
        start,
        end,
        basic is not None and basic.ca,
    )


def check_chain(
    server_cert: Path, ca_cert: Path, host: str | None = None, now: datetime | None = None
) -> CertInfo:
    """Checks that ``server_cert`` is valid, signed by the valid CA ``ca_cert``, meant for a
    TLS server and, when ``host`` is given, names it; returns the server certificate's info."""
    ca_info = check_certificate(ca_cert, now)
    if not ca_info.is_ca:
        raise CertificateError(f"{ca_cert} is not a CA certificate (BasicConstraints ca=False)")
    info = check_certificate(server_cert, now)
    cert = _load_cert(server_cert)
    try:
        cert.verify_directly_issued_by(_load_cert(ca_cert))
    except (ValueError, TypeError, InvalidSignature):
        raise CertificateError(
            f"certificate {server_cert} (issuer {info.issuer}) is not signed by the CA "
            f"{ca_cert} ({ca_info.subject})"
        ) from None
    eku = _extension(cert, x509.ExtendedKeyUsage)
    if eku is not None and ExtendedKeyUsageOID.SERVER_AUTH not in eku:
        raise CertificateError(f"certificate {server_cert} is not for TLS servers (no serverAuth)")
    if host is not None and not info.covers(host):
        raise CertificateError(
            f"certificate {server_cert} does not cover host {host!r}; "
            f"it names {', '.join(info.sans) or 'no host'}"
        )
    return info


def check_key_matches(cert_path: Path, key_path: Path) -> None:
    """Checks that the private key at ``key_path`` belongs to the certificate at ``cert_path``."""
    _matching_key(_load_cert(cert_path), cert_path, key_path)


def check_private_key_mode(path: Path) -> None:
    """Refuses a private key file that others than its owner may read or write."""
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise CertificateError(f"private key {path} has mode {mode:04o}; it must be 0600")


def check_node_public_key(path: Path) -> str:
    """The SHA-256 fingerprint of the SuperNode public key at ``path``, if Flower accepts it
    (an OpenSSH EC key on a NIST curve)."""
    data = _read(path, "public key")
    try:
        key = serialization.load_ssh_public_key(data)
    except (ValueError, UnsupportedAlgorithm):
        raise CertificateError(f"{path} is not an OpenSSH public key line") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, _NIST_CURVES):
        raise CertificateError(f"{path} is not an EC key on a NIST curve (P-256/384/521)")
    return _fp(data)


def add_node_public_key(folder: Path, site: str, public_key: Path) -> NodePublicKey:
    """Files a site's SuperNode public key (its ``node.pub``) as ``folder/nodes/<site>.pub``,
    which ``fedllm superlink start`` registers. Refuses a private key (it must never leave the
    site), a key Flower would not accept, and an existing entry."""
    _check_sites([site])
    data = _read(public_key, "public key")
    if b"PRIVATE KEY" in data:
        raise CertificateError(
            f"{public_key} is a private key: ask the site for its node.pub; the private key "
            "must never leave the site"
        )
    fingerprint = check_node_public_key(public_key)
    target = folder / "nodes" / f"{site}.pub"
    _refuse_existing(target)
    _write_new(target, b" ".join(data.split()[:2]) + f" fedllm-{site}\n".encode(), 0o644)
    return NodePublicKey(site, target, fingerprint)


def _fp(public_line: bytes) -> str:
    """As ``ssh-keygen -lf`` prints it: SHA-256 of the key blob, unpadded base64."""
    blob = base64.b64decode(public_line.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def _issue(
    subject: x509.Name,
    issuer: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    signer: ec.EllipticCurvePrivateKey,
    start: datetime,
    lifetime: timedelta,
    extensions: list[x509.ExtensionType],
) -> x509.Certificate:
    """A certificate for ``key``, signed by ``signer``; constraints and key usage critical."""
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + CLOCK_SKEW + lifetime)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
    )
    for ext in extensions:
        critical = isinstance(ext, x509.BasicConstraints | x509.KeyUsage)
        builder = builder.add_extension(ext, critical=critical)
    return builder.sign(signer, hashes.SHA256())


_E = TypeVar("_E", bound=x509.ExtensionType)


def _extension(cert: x509.Certificate, kind: type[_E]) -> _E | None:
    try:
        return cert.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None


def _key_usage(cert_sign: bool) -> x509.KeyUsage:
    """digitalSignature (ECDHE-ECDSA handshakes); keyCertSign and cRLSign for a CA only."""
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _utc(now: datetime | None) -> datetime:
    """``now``, or the current time; a naive datetime is taken as UTC."""
    if now is None:
        return datetime.now(UTC)
    return now.replace(tzinfo=UTC) if now.tzinfo is None else now


def _validity_start(now: datetime | None) -> datetime:
    return _utc(now).replace(microsecond=0) - CLOCK_SKEW


def _validity_days(days: int) -> timedelta:
    if isinstance(days, bool) or not isinstance(days, int) or not 0 < days <= MAX_DAYS:
        raise CertificateError(
            f"certificate `days` must be an integer in 1..{MAX_DAYS}, got {days!r}"
        )
    return timedelta(days=days)


def _day(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def _parse_ip(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _sans(hosts: list[str]) -> list[x509.GeneralName]:
    if not hosts:
        raise CertificateError("the SuperLink certificate needs at least one host (--host)")
    return [_san(h) for h in dict.fromkeys(hosts)]


def _san(host: str) -> x509.GeneralName:
    """An IPAddress entry for an IP address, a DNSName entry for a valid host name."""
    ip = _parse_ip(host)
    if ip is not None:
        return x509.IPAddress(ip)
    labels = host.split(".")
    if len(host) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise CertificateError(
            f"host {host!r} is neither an IP address nor a DNS name (letters, digits and '-' "
            "in dot-separated labels of 1-63 characters)"
        )
    return x509.DNSName(host.lower())


def _check_sites(sites: list[str]) -> None:
    """Site names become file names: no separators, no dot files, no repeats."""
    if not sites:
        raise CertificateError("no site names given")
    if len(set(sites)) != len(sites):
        raise CertificateError(f"site names repeat: {sites}")
    for site in sites:
        if not _SITE.fullmatch(site):
            raise CertificateError(
                f"site name {site!r} must be 1-64 letters, digits, '.', '_' or '-', "
                "starting with a letter or digit"
            )


def _node_paths(folder: Path, sites: list[str]) -> list[Path]:
    return [folder / f"{site}{ext}" for site in sites for ext in (".key", ".pub")]


def _refuse_existing(*paths: Path) -> None:
    """Checked before anything is written, so a refusal leaves no half-made set behind."""
    for path in paths:
        if path.exists():
            raise CertificateError(f"{path} already exists; not overwriting it")


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Creates ``path`` with exactly ``mode``; an existing file is never overwritten."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_new(path, data, mode, CertificateError)


def _write_pair(files: CertFiles, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    _write_new(files.key, pem, 0o600)
    _write_new(files.cert, cert.public_bytes(serialization.Encoding.PEM), 0o644)


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise CertificateError(f"{what} {path} does not exist") from None
    except OSError as err:
        raise CertificateError(f"cannot read {what} {path}: {err.strerror}") from None


def _load_cert(path: Path) -> x509.Certificate:
    data = _read(path, "certificate")
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError:
        raise CertificateError(f"{path} is not a PEM certificate") from None


def _matching_key(
    cert: x509.Certificate, cert_path: Path, key_path: Path
) -> ec.EllipticCurvePrivateKey:
    """The EC private key at ``key_path``, if it belongs to ``cert``."""
    data = _read(key_path, "private key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise CertificateError(f"{key_path} is not an unencrypted PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
        raise CertificateError(f"private key {key_path} does not belong to {cert_path}")
    return key
