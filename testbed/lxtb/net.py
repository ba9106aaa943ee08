"""The testbed's network: the bridge, each host's veth and namespace, link shaping (tc tbf)."""

from __future__ import annotations

import re
from pathlib import Path

from .base import parse_rate, run
from .layout import Host, Layout


def ensure_bridge(tb: Layout) -> None:
    br = tb.bridge
    if run(["ip", "link", "show", br], check=False).returncode != 0:
        run(["ip", "link", "add", br, "type", "bridge", "stp_state", "0",
             "forward_delay", "0"])
    cidr = f"{tb.bridge_ip}/{tb.net.prefixlen}"
    addrs = run(["ip", "-o", "-4", "addr", "show", "dev", br]).stdout
    if f" {cidr} " not in addrs:
        run(["ip", "addr", "add", cidr, "dev", br])
    run(["ip", "link", "set", br, "up"])


def ensure_link(tb: Layout, h: Host) -> None:
    if not Path(f"/run/netns/{h.name}").exists():
        run(["ip", "netns", "add", h.name])
    ns = ["ip", "-n", h.name]
    if run(["ip", "link", "show", h.veth], check=False).returncode != 0:
        run(["ip", "link", "add", h.veth, "type", "veth", "peer", "name", "eth0",
             "netns", h.name])
        run([*ns, "link", "set", "eth0", "address", h.mac])  # only on creation
    run(["ip", "link", "set", h.veth, "master", tb.bridge, "up"])
    run([*ns, "link", "set", "lo", "up"])
    cidr = f"{h.ip}/{tb.net.prefixlen}"
    if f" {cidr} " not in run([*ns, "-o", "-4", "addr", "show", "dev", "eth0"]).stdout:
        run([*ns, "addr", "add", cidr, "dev", "eth0"])
    run([*ns, "link", "set", "eth0", "up"])


def apply_rate(hosts: list[Host], rate: str | None) -> None:
    if rate is None:
        for h in hosts:
            for cmd in (["tc"], ["tc", "-n", h.name]):
                dev = h.veth if len(cmd) == 1 else "eth0"
                if "tbf" in run([*cmd, "qdisc", "show", "dev", dev, "root"]).stdout:
                    run([*cmd, "qdisc", "del", "dev", dev, "root"])
        return
    text, bits = parse_rate(rate)
    # Bucket: 4 ms worth of traffic, at least 10 full frames (GSO super-packets are split).
    burst = max(bits // 8 // 250, 15140)
    for h in hosts:
        for cmd, dev in ((["tc"], h.veth), (["tc", "-n", h.name], "eth0")):
            run([*cmd, "qdisc", "replace", "dev", dev, "root", "tbf", "rate", text,
                 "burst", str(burst), "latency", "100ms"])


def link_rate(h: Host) -> str:
    def one(cmd: list[str], dev: str) -> str:
        out = run([*cmd, "qdisc", "show", "dev", dev, "root"], check=False).stdout
        m = re.search(r"qdisc tbf .* rate (\S+)", out)
        return m.group(1) if m else "-"
    up = one(["tc", "-n", h.name], "eth0")
    down = one(["tc"], h.veth)
    return up if up == down else f"up {up} / down {down}"
