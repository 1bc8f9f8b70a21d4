"""The SuperLink's public face: a TLS front that passes the Fleet API and nothing else.

Flower 1.42 serves three APIs on the SuperLink's one port: the Fleet API (SuperNodes), the
Control API (``flwr run``, ``flwr ls``, ``flwr log``, ``flwr supernode register|unregister|
list``, artifacts) and the Runtime API (the ServerApp's SuperExec). Without Flower
Enterprise's OIDC account authentication (``FLWR_OIDC_ENABLED=1`` exits with "OIDC account
authentication is unavailable in this Flower distribution"), the Control API accepts every
caller that trusts the certificate: anyone holding ``ca.crt`` could start runs (whose
ServerApp then runs on the SuperLink's machine), register a node key of their own, unregister
the sites, read runs' logs and artifacts. Flower 1.42 has no flag to bind the Control API
apart from the Fleet API (``--control-api-address`` is deprecated and ignored).

So ``fedllm superlink start`` binds ``flower-superlink`` to loopback and puts this gate on the
public address. It terminates TLS with the SuperLink's own certificate and forwards only
``POST /v1/fleet/<call>`` (every call a SuperNode makes) to the SuperLink over TLS, body and
headers unchanged (SuperNode authentication signs them); any other request is answered 403
and logged. The Control API is then reachable from the SuperLink's machine only (an operator
elsewhere uses an SSH tunnel or ``kubectl port-forward`` to its loopback port).

Run: ``python -m fedllm.deploy.gate --listen 0.0.0.0:8000 --upstream 127.0.0.1:8001
--ssl-certfile superlink.crt --ssl-keyfile superlink.key --ssl-ca-certfile ca.crt``
"""

from __future__ import annotations

import argparse
import logging
import re
import ssl
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response

logger = logging.getLogger(__name__)

# A Fleet API call: one path segment of lower-case letters and dashes under /v1/fleet/, so
# no dot segment, escape or second slash can make it another API's path on the way.
FLEET_CALL = re.compile(r"/v1/fleet/[a-z]+(?:-[a-z]+)*")
REFUSED = (
    "fedllm gate: this address serves only the Fleet API (SuperNodes); the SuperLink's "
    "Control API listens on its machine's loopback\n"
)
# Hop-by-hop headers (RFC 9110, 7.6.1) and the ones the HTTP client sets again.
_NOT_FORWARDED = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "content-encoding",
    }
)
UPSTREAM_TIMEOUT = 600.0  # seconds: a pull of a large model may take a while on a slow link


def is_fleet_call(method: str, path: str) -> bool:
    """True for what a SuperNode sends: ``POST /v1/fleet/<call>``."""
    return method == "POST" and FLEET_CALL.fullmatch(path) is not None


def create_app(upstream: str, ca: Path) -> Starlette:
    """The gate as an ASGI app forwarding Fleet API calls to ``https://<upstream>``, whose
    certificate must chain to ``ca`` and name the upstream host."""
    import httpx
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse, Response
    from starlette.routing import Route

    context = ssl.create_default_context(cafile=str(ca))
    clients: list[httpx.AsyncClient] = []

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        timeout = httpx.Timeout(UPSTREAM_TIMEOUT, connect=10.0)
        async with httpx.AsyncClient(
            base_url=f"https://{upstream}", verify=context, timeout=timeout
        ) as client:
            clients.append(client)
            yield

    async def forward(request: Request) -> Response:
        path = request.scope.get("path", "")
        peer = f"{request.client.host}:{request.client.port}" if request.client else "?"
        if request.scope.get("query_string") or not is_fleet_call(request.method, path):
            logger.warning(
                "refused %s %r from %s: not a Fleet API call", request.method, path, peer
            )
            return PlainTextResponse(REFUSED, status_code=403)
        headers = [
            (k, v)
            for k, v in request.headers.raw
            if k.decode("latin-1").lower() not in _NOT_FORWARDED
        ]
        try:
            answer = await clients[0].post(path, content=await request.body(), headers=headers)
        except httpx.HTTPError as err:
            logger.error("%s from %s: the SuperLink did not answer (%s)", path, peer, err)
            return PlainTextResponse("fedllm gate: the SuperLink did not answer\n", 502)
        kept = [(k, v) for k, v in answer.headers.multi_items() if k.lower() not in _NOT_FORWARDED]
        response = Response(answer.content, status_code=answer.status_code)
        for key, value in kept:
            response.headers.append(key, value)
        return response

    methods = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
    return Starlette(routes=[Route("/{rest:path}", forward, methods=methods)], lifespan=lifespan)


def main(argv: Sequence[str] | None = None) -> int:
    import uvicorn

    from fedllm.deploy.settings import split_host_port

    parser = argparse.ArgumentParser(prog="python -m fedllm.deploy.gate", description=__doc__)
    parser.add_argument("--listen", required=True, metavar="HOST:PORT", help="public address")
    parser.add_argument(
        "--upstream", required=True, metavar="HOST:PORT", help="flower-superlink on loopback"
    )
    parser.add_argument("--ssl-certfile", type=Path, required=True, help="superlink.crt")
    parser.add_argument("--ssl-keyfile", type=Path, required=True, help="superlink.key")
    parser.add_argument("--ssl-ca-certfile", type=Path, required=True, help="ca.crt")
    args = parser.parse_args(argv)
    handler = logging.StreamHandler()
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s fedllm.deploy.gate: %(message)s")
    )
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    host, port = split_host_port(args.listen)
    logger.info("serving the Fleet API on %s for the SuperLink at %s", args.listen, args.upstream)
    uvicorn.run(
        create_app(args.upstream, args.ssl_ca_certfile),
        host=host,
        port=port,
        ssl_certfile=str(args.ssl_certfile),
        ssl_keyfile=str(args.ssl_keyfile),
        access_log=True,
        log_level="info",
    )
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
