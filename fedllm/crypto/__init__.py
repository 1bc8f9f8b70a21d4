"""Crypto: the site's signing key (ledger head, privacy reports); TLS certificates and
SuperNode authentication keys for a deployment; app publishers' keys and FAB signatures."""

from fedllm.crypto.certs import (
    CertFiles,
    CertInfo,
    Deployment,
    NodeKeyFiles,
    NodePublicKey,
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
from fedllm.crypto.publisher import (
    AppSignature,
    PublisherKey,
    generate_publisher_key,
    sign_digest,
)
from fedllm.crypto.signing import PublicKey, SiteKey

__all__ = [
    "AppSignature",
    "CertFiles",
    "CertInfo",
    "Deployment",
    "NodeKeyFiles",
    "NodePublicKey",
    "PublicKey",
    "PublisherKey",
    "SiteKey",
    "add_node_public_key",
    "check_certificate",
    "check_chain",
    "check_key_matches",
    "check_node_public_key",
    "check_private_key_mode",
    "create_ca",
    "create_deployment",
    "create_node_keys",
    "create_server_cert",
    "generate_publisher_key",
    "sign_digest",
]
