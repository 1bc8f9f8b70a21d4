"""The ``fedllm`` command line: the common journeys of a researcher, an operator, a site.

One module per journey, each adding its commands to the parser:

- :mod:`~fedllm.cli.simulate`: ``fedllm simulate`` (the researcher: virtual sites on Ray);
- :mod:`~fedllm.cli.site`: ``fedllm site init|trust|untrust|publisher|apps``,
  ``fedllm ledger show|verify``, ``fedllm report`` (a site and its data-protection officer);
- :mod:`~fedllm.cli.certs`: ``fedllm certs init|add-site|check`` (the operator's PKI);
- :mod:`~fedllm.cli.app`: ``fedllm app digest|keygen|sign`` (the app the sites pin);
- :mod:`~fedllm.cli.deploy`: ``fedllm superlink start``, ``fedllm supernode start``;
- :mod:`~fedllm.cli.checkpoint`: ``fedllm checkpoint show|export``;
- :mod:`~fedllm.cli.lm`: ``fedllm pretrain``, ``fedllm generate`` (the language model).

Commands import their heavy libraries (torch, opacus, Flower's engine) when they run, so
``fedllm --help`` and the certificate and site commands start in a fraction of a second.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from fedllm.cli import app, certs, checkpoint, deploy, lm, simulate, site
from fedllm.errors import FedLLMError

# The order of `fedllm --help`: the researcher's, the site's, the operator's journeys.
JOURNEYS = (simulate, site, certs, app, checkpoint, deploy, lm)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs one command; a :class:`FedLLMError` ends it with one line on stderr and exit 2."""
    parser = argparse.ArgumentParser(prog="fedllm", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for journey in JOURNEYS:
        journey.add_commands(commands)
    args = parser.parse_args(argv)
    try:
        return int(args.run(args))
    except FedLLMError as err:
        print(f"fedllm: error: {err}", file=sys.stderr)
        return 2


__all__ = ["main"]
