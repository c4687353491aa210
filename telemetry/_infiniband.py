"""InfiniBand HCA ports read from sysfs (``/sys/class/infiniband/<hca>/ports/<n>/``).

The kernel's ``counters/`` (the IBTA port counters) and ``hw_counters/`` (the driver's, e.g. mlx5's
``out_of_buffer``) are plain text files; which of them a port has is found once at start, and only
those are read. ``port_xmit_data``/``port_rcv_data`` count 4-byte words. No tree: no ports, no error.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from gpt_observatory.telemetry import names

# sysfs file -> (what it is, direction); data counters are in 4-byte words.
TRAFFIC_FILES: dict[str, tuple[str, str]] = {
    "counters/port_xmit_data": ("bytes", "transmit"),
    "counters/port_rcv_data": ("bytes", "receive"),
    "counters/port_xmit_packets": ("packets", "transmit"),
    "counters/port_rcv_packets": ("packets", "receive"),
}
WORD_BYTES = 4


@dataclass(frozen=True, slots=True)
class IbPort:
    """One HCA port and the counter files it has (found once at start)."""

    device: str  # HCA, e.g. "mlx5_0"
    port: int
    path: Path
    link_layer: str  # "InfiniBand" or "Ethernet" (RoCE)
    files: tuple[str, ...]  # counter files relative to ``path``, traffic and errors

    @property
    def hw_id(self) -> str:
        return f"{self.device}/{self.port}"


@dataclass(frozen=True, slots=True)
class IbReading:
    """One port's counters as the kernel reports them (bytes already multiplied out of words)."""

    port: IbPort
    bytes: dict[str, int]  # direction -> bytes
    packets: dict[str, int]  # direction -> packets
    errors: dict[str, int]  # error.type -> count
    up: int | None  # 1: ACTIVE, 0: any other state, None: unreadable
    rate: str  # e.g. "400 Gb/sec (4X NDR)"


def discover(root: Path) -> list[IbPort]:
    """Every port of every HCA under ``root``; empty when the folder does not exist."""
    if not root.is_dir():
        return []
    ports = []
    for port_dir in sorted(root.glob("*/ports/*")):
        if not port_dir.name.isdigit():
            continue
        wanted = [*TRAFFIC_FILES, *(f"{d}/{e}" for e in names.IB_ERROR_TYPES for d in ("counters", "hw_counters"))]
        files = tuple(f for f in wanted if (port_dir / f).is_file())
        link_layer = _text(port_dir / "link_layer") or "InfiniBand"
        ports.append(IbPort(port_dir.parent.parent.name, int(port_dir.name), port_dir, link_layer, files))
    return ports


def read_port(port: IbPort, errors: Counter[tuple[str, str, str]]) -> IbReading:
    """Read ``port``'s counters now; a file that fails is left out of this reading and counted."""
    traffic: dict[str, dict[str, int]] = {"bytes": {}, "packets": {}}
    failures: dict[str, int] = {}
    for rel in port.files:
        try:
            value = int((port.path / rel).read_text())
        except (OSError, ValueError) as exc:  # the boundary for sysfs: drop this reading, count it
            errors[(port.hw_id, rel, type(exc).__name__)] += 1
            continue
        kind = TRAFFIC_FILES.get(rel)
        if kind is None:
            failures[rel.split("/", 1)[1]] = value
        else:
            traffic[kind[0]][kind[1]] = value * WORD_BYTES if kind[0] == "bytes" else value
    state = _text(port.path / "state")
    up = None if state is None else int(state.split(":")[-1].strip() == "ACTIVE")
    return IbReading(port, traffic["bytes"], traffic["packets"], failures, up, _text(port.path / "rate") or "")


def _text(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None
