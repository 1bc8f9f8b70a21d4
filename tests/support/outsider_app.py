"""The outsider's Flower App of issue 16: a ClientApp of a dozen lines that reads the site's
``data-path`` and node config and sends them back, and a ServerApp that asks every SuperNode
for them and logs what came back. Its ClientApp module writes a marker file when it is
imported, so a test can tell whether any of its code ran at a site.

Written into a folder by :func:`write_outsider_app`; ``flwr run FOLDER CONNECTION --stream``
runs it and streams the ServerApp's log lines (``OUTSIDER GOT ...``).
"""

from __future__ import annotations

import json
from pathlib import Path

GOT_DATA = "OUTSIDER GOT DATA"
GOT_ERROR = "OUTSIDER GOT ERROR"
GOT_NOTHING = "OUTSIDER GOT NO NODES"

PYPROJECT = """\
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "otherapp"
version = "1.0.0"
dependencies = ["flwr==1.42.0"]

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "outsider"

[tool.flwr.app.components]
serverapp = "otherapp.server_app:app"
clientapp = "otherapp.client_app:app"

[tool.flwr.app.config]
wait-for-nodes = 60.0
"""

CLIENT_APP = """\
import json
from pathlib import Path

Path({marker}).write_text("the outsider's ClientApp was imported here")

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


@app.query()
def steal(msg: Message, context: Context) -> Message:
    rows = Path(str(context.node_config["data-path"])).read_text().splitlines()[:5]
    stolen = ConfigRecord({{"node-config": json.dumps(dict(context.node_config)),
                           "rows": "\\n".join(rows)}})
    return Message(RecordDict({{"stolen": stolen}}), reply_to=msg)
"""

SERVER_APP = """\
import time
from logging import INFO

from flwr.app import Context, Message, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    deadline = time.monotonic() + float(context.run_config["wait-for-nodes"])
    nodes = list(grid.get_node_ids())
    while not nodes and time.monotonic() < deadline:
        time.sleep(1)
        nodes = list(grid.get_node_ids())
    if not nodes:
        log(INFO, "{nothing}")
        return
    asks = [Message(RecordDict(), dst_node_id=n, message_type="query") for n in nodes]
    for reply in grid.send_and_receive(asks, timeout=float(context.run_config["wait-for-nodes"])):
        node = reply.metadata.src_node_id
        if reply.has_error():
            log(INFO, "{error} from node %s: %s", node, reply.error.reason)
        else:
            stolen = reply.content.config_records["stolen"]
            log(INFO, "{data} from node %s: %s", node, dict(stolen))
"""


def write_outsider_app(folder: Path, marker: Path) -> Path:
    """The app in ``folder`` (its ClientApp writes ``marker`` on import); returns ``folder``."""
    package = folder / "otherapp"
    package.mkdir(parents=True)
    (folder / "pyproject.toml").write_text(PYPROJECT)
    (package / "__init__.py").write_text("")
    (package / "client_app.py").write_text(CLIENT_APP.format(marker=json.dumps(str(marker))))
    (package / "server_app.py").write_text(
        SERVER_APP.format(data=GOT_DATA, error=GOT_ERROR, nothing=GOT_NOTHING)
    )
    return folder


def outsider_home(folder: Path, ca: Path, connections: dict[str, str]) -> Path:
    """The outsider's own Flower home: only a copy of the public ``ca.crt`` and one
    ``[superlink.NAME]`` connection per address; returns the folder (their ``FLWR_HOME``)."""
    from fedllm.deploy import write_connection

    folder.mkdir(parents=True)
    copy = folder / "ca.crt"
    copy.write_bytes(ca.read_bytes())
    for name, address in connections.items():
        write_connection(folder, name, address, copy)
    return folder
