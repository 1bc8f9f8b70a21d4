"""A network namespace joined to the host's by a veth pair, so that SuperNodes inside it reach
a SuperLink outside only across a real (virtual Ethernet) interface. Needs root and iproute2."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass


@dataclass(frozen=True)
class Netns:
    name: str
    host_veth: str  # stays in the host's namespace, holds host_ip
    ns_veth: str  # inside the namespace, holds ns_ip
    host_ip: str
    ns_ip: str

    @property
    def prefix(self) -> list[str]:
        """Runs a command inside the namespace."""
        return ["ip", "netns", "exec", self.name]

    @classmethod
    def create(cls) -> Netns | str:
        """A new namespace and veth link, or the reason there is none."""
        if shutil.which("ip") is None:
            return "no `ip` command (iproute2)"
        if os.geteuid() != 0:
            return "not root: `ip netns add` needs CAP_SYS_ADMIN"
        tag = os.getpid() % 100000
        octet = os.getpid() % 250 + 1
        net = cls(
            f"fedllm{tag}", f"vfl{tag}h", f"vfl{tag}n", f"10.213.{octet}.1", f"10.213.{octet}.2"
        )
        steps = [
            ["ip", "netns", "add", net.name],
            ["ip", "link", "add", net.host_veth, "type", "veth", "peer", "name", net.ns_veth],
            ["ip", "link", "set", net.ns_veth, "netns", net.name],
            ["ip", "addr", "add", f"{net.host_ip}/30", "dev", net.host_veth],
            ["ip", "link", "set", net.host_veth, "up"],
            [*net.prefix, "ip", "addr", "add", f"{net.ns_ip}/30", "dev", net.ns_veth],
            [*net.prefix, "ip", "link", "set", net.ns_veth, "up"],
            [*net.prefix, "ip", "link", "set", "lo", "up"],
        ]
        for step in steps:
            done = subprocess.run(step, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                net.delete()
                return f"`{' '.join(step)}` failed: {done.stderr.strip()}"
        return net

    def received_bytes(self) -> int:
        """Bytes the namespace's end of the veth link has received."""
        path = f"/sys/class/net/{self.ns_veth}/statistics/rx_bytes"
        done = subprocess.run(
            [*self.prefix, "cat", path], capture_output=True, text=True, check=True
        )
        return int(done.stdout)

    def delete(self) -> None:
        subprocess.run(["ip", "link", "del", self.host_veth], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, check=False)
