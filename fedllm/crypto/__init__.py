"""Crypto: the site's signing key (ledger head, privacy reports)."""

from fedllm.crypto.signing import PublicKey, SiteKey

__all__ = ["PublicKey", "SiteKey"]
