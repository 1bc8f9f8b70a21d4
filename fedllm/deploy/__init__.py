"""Deployment: a real SuperLink and SuperNodes, as an operator and a site start them.

- :mod:`~fedllm.deploy.settings`: the SuperLink's and a SuperNode's settings, checked before
  anything starts, and their exact ``flower-superlink`` / ``flower-supernode`` command lines;
- :mod:`~fedllm.deploy.connection`: the operator's Flower CLI connection entry and the sites'
  node keys registered with the SuperLink;
- :mod:`~fedllm.deploy.processes`: Flower's environment, its installed commands, waiting for
  and stopping them;
- :mod:`~fedllm.deploy.executor`: the warm ClientApp executor beside a SuperNode
  (``python -m fedllm.deploy.executor``).

The commands that use them are ``fedllm superlink start`` and ``fedllm supernode start``
(:mod:`fedllm.cli.deploy`).
"""

from fedllm.deploy.connection import register_nodes, write_connection
from fedllm.deploy.processes import FLOWER_ENV, executable, flower_env, stop, wait_listening
from fedllm.deploy.settings import (
    CONNECTION,
    EXECUTOR_MODULE,
    STATE_DB,
    SUPERLINK_PORT,
    SUPERNODE_PORT,
    SiteSettings,
    SuperLinkSettings,
    host_port,
    node_config_arg,
)
from fedllm.errors import DeployError

__all__ = [
    "CONNECTION",
    "EXECUTOR_MODULE",
    "FLOWER_ENV",
    "STATE_DB",
    "SUPERLINK_PORT",
    "SUPERNODE_PORT",
    "DeployError",
    "SiteSettings",
    "SuperLinkSettings",
    "executable",
    "flower_env",
    "host_port",
    "node_config_arg",
    "register_nodes",
    "stop",
    "wait_listening",
    "write_connection",
]
