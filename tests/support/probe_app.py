"""A Flower App that measures how long a message waits before a site answers it.

Its ServerApp sends one message to every SuperNode, waits for every reply (checking every
10 ms, not through Flower's 3 s Grid poll), pauses, and sends the next. It logs when each
message was handed to the SuperLink (``PROBE sent <node> <probe> <unix time>``, probe 0 being
the one that wakes every site) and, for probes 1 and on, the round trip until the site's reply
was there (``PROBE node <node> <seconds>``). No site has pinned this app, so each site's
executor refuses it: the reply is an error, sent at once; what is timed is the delivery path
(the SuperNode's pull, the executor's hand-over, the reply), not any work. The ServerApp pulls
replies as fedllm's does (``server/grid.py``: a reply's objects asked for again after 10 ms,
not Flower's 1 s).

Written into a folder by :func:`write_probe_app`; ``flwr run FOLDER CONNECTION --stream
--run-config 'probes=5 gap=1.0'`` runs it.
"""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path

PROBE = "PROBE node"
SENT = "PROBE sent"

PYPROJECT = """\
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "probeapp"
version = "1.0.0"
dependencies = ["flwr==1.42.0"]

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "tests"

[tool.flwr.app.components]
serverapp = "probeapp.server_app:app"
clientapp = "probeapp.client_app:app"

[tool.flwr.app.config]
probes = 5
gap = 1.0
nodes = 1
timeout = 30.0
"""

CLIENT_APP = """\
from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


@app.query()
def echo(msg: Message, context: Context) -> Message:
    return Message(RecordDict(), reply_to=msg)
"""

SERVER_APP = """\
import time
from logging import INFO

from flwr.app import Context, Message, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp
from flwr.superlink.grid import http_grid

from fedllm.deploy.polling import quick_object_retries

quick_object_retries(http_grid)  # a reply's objects are pulled as fedllm's ServerApp does
app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    timeout = float(cfg["timeout"])
    deadline = time.monotonic() + timeout
    while len(list(grid.get_node_ids())) < int(cfg["nodes"]) and time.monotonic() < deadline:
        time.sleep(0.5)
    nodes = sorted(grid.get_node_ids())
    for probe in range(int(cfg["probes"]) + 1):  # the first one wakes every site: not counted
        time.sleep(float(cfg["gap"]))
        asks = [Message(RecordDict(), dst_node_id=n, message_type="query") for n in nodes]
        sent, at = time.monotonic(), time.time()
        pending = {{msg_id: n for msg_id, n in zip(grid.push_messages(asks), nodes)}}
        for node in nodes:
            log(INFO, "{probe_sent} %s %d %.3f", node, probe, at)
        while pending and time.monotonic() - sent < timeout:
            for reply in grid.pull_messages(list(pending)):
                node = pending.pop(reply.metadata.reply_to_message_id)
                if probe:
                    log(INFO, "{probe} %s %.3f", node, time.monotonic() - sent)
            time.sleep(0.01)
        for node in pending.values():
            log(INFO, "{probe} %s none", node)
"""


def write_probe_app(folder: Path) -> Path:
    """The probe app in ``folder``; returns ``folder``."""
    package = folder / "probeapp"
    package.mkdir(parents=True)
    (folder / "pyproject.toml").write_text(PYPROJECT)
    (package / "__init__.py").write_text("")
    (package / "client_app.py").write_text(CLIENT_APP)
    (package / "server_app.py").write_text(SERVER_APP.format(probe=PROBE, probe_sent=SENT))
    return folder


def sent_times(output: str) -> dict[str, list[float]]:
    """Every node's push times (unix seconds), probe 0 (the wake-up) first."""
    found: dict[str, list[float]] = {}
    for node, _, at in re.findall(rf"{SENT} (\d+) (\d+) ([0-9.]+)", output):
        found.setdefault(node, []).append(float(at))
    return found


def latencies(output: str) -> dict[str, list[float | None]]:
    """Every node's measured latencies (None: no reply within the timeout) from the log."""
    found: dict[str, list[float | None]] = {}
    for node, seconds in re.findall(rf"{PROBE} (\d+) ([0-9.]+|none)", output):
        found.setdefault(node, []).append(None if seconds == "none" else float(seconds))
    return found


def handed_over(site_log: str, run_id: str) -> list[float]:
    """When the site's executor took each task of run ``run_id`` (unix seconds, in order):
    the moment a message is picked up, stored and handed to the ClientApp side."""
    times = []
    pattern = rf"^(\S+ \S+) INFO fedllm\.deploy\.executor: task \d+ of run {run_id}:"
    for stamp in re.findall(pattern, site_log, flags=re.MULTILINE):
        times.append(datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp())
    return times


def node_id(site_log: str) -> str:
    """The SuperNode ID a site's SuperNode logged when it connected."""
    found = re.search(r"SuperNode ID: (\d+)", site_log)
    return found.group(1) if found else ""
