"""Deployment: a real SuperLink and SuperNodes, as an operator and a site start them.

- :mod:`~fedllm.deploy.settings`: the SuperLink's and a SuperNode's settings, checked before
  anything starts, and their exact ``flower-superlink`` / ``flower-supernode`` command lines;
- :mod:`~fedllm.deploy.connection`: the operator's Flower CLI connection entry and the sites'
  node keys registered with the SuperLink;
- :mod:`~fedllm.deploy.processes`: Flower's environment, its installed commands, waiting for
  and stopping them;
- :mod:`~fedllm.deploy.site_files`: a site's own folder (policy, keys, SuperExec secret,
  trusted apps), made at the site;
- :mod:`~fedllm.deploy.pinning`: the app digests a site runs, and the FAB digest itself;
- :mod:`~fedllm.deploy.gate`: the SuperLink's public address, which serves the Fleet API
  only (``python -m fedllm.deploy.gate``);
- :mod:`~fedllm.deploy.supernode`: Flower's SuperNode with a prompt, backed-off pull loop
  (``python -m fedllm.deploy.supernode``; :mod:`~fedllm.deploy.polling`: the schedule and
  the wake-up pipe to the executor);
- :mod:`~fedllm.deploy.executor`: the ClientApp executor beside a SuperNode, which runs only
  pinned apps (``python -m fedllm.deploy.executor``), each run's tasks in one warm worker
  process (:mod:`~fedllm.deploy.worker`).

The commands that use them are ``fedllm superlink start``, ``fedllm supernode start``
(:mod:`fedllm.cli.deploy`), ``fedllm site init|trust|...`` (:mod:`fedllm.cli.site`) and
``fedllm app digest|sign|keygen`` (:mod:`fedllm.cli.app`).
"""

from fedllm.deploy.connection import register_nodes, write_connection
from fedllm.deploy.pinning import TRUSTED_APPS, FabInfo, TrustedApp, TrustedApps, build_fab
from fedllm.deploy.processes import FLOWER_ENV, executable, flower_env, stop, wait_listening
from fedllm.deploy.settings import (
    CONNECTION,
    CONTROL_PORT,
    EXECUTOR_MODULE,
    GATE_MODULE,
    IN_MEMORY,
    LOOPBACK,
    STATE_DB,
    SUPERLINK_PORT,
    SUPERNODE_MODULE,
    SUPERNODE_PORT,
    SiteSettings,
    SuperLinkSettings,
    host_port,
    node_config_arg,
)
from fedllm.deploy.site_files import SiteFiles, init_site
from fedllm.errors import DeployError

__all__ = [
    "CONNECTION",
    "CONTROL_PORT",
    "EXECUTOR_MODULE",
    "FLOWER_ENV",
    "GATE_MODULE",
    "IN_MEMORY",
    "LOOPBACK",
    "STATE_DB",
    "SUPERLINK_PORT",
    "SUPERNODE_MODULE",
    "SUPERNODE_PORT",
    "TRUSTED_APPS",
    "DeployError",
    "FabInfo",
    "SiteFiles",
    "SiteSettings",
    "SuperLinkSettings",
    "TrustedApp",
    "TrustedApps",
    "build_fab",
    "executable",
    "flower_env",
    "host_port",
    "init_site",
    "node_config_arg",
    "register_nodes",
    "stop",
    "wait_listening",
    "write_connection",
]
