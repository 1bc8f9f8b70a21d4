"""Crypto: the site's signing key (ledger head, privacy reports); TLS certificates and
SuperNode authentication keys for a deployment."""

from fedllm.crypto.certs import (
    CertFiles,
    CertInfo,
    Deployment,
    NodeKeyFiles,
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
from fedllm.crypto.signing import PublicKey, SiteKey

__all__ = [
    "CertFiles",
    "CertInfo",
    "Deployment",
    "NodeKeyFiles",
    "PublicKey",
    "SiteKey",
    "check_certificate",
    "check_chain",
    "check_key_matches",
    "check_node_public_key",
    "check_private_key_mode",
    "create_ca",
    "create_deployment",
    "create_node_keys",
    "create_server_cert",
]
