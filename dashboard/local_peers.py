"""Which local user opened a connection that came from this machine's loopback address.

Sequence code runs on the web's machine (a single-node hub) and may connect to the web from
127.0.0.1, the same address as an operator's browser there. Counted by address alone, its
failed log-ins would lock the operator out of local logins. The kernel knows who owns each
TCP socket: the client's end of a loopback connection is a line of /proc/net/tcp (or tcp6)
whose local address is the peer's address and port, with its owner's uid. The login limit
counts attempts per uid as well as per address, so a sequence (a user id of its own) spends
only its own. Read on log-in attempts only; nothing here is trusted for anything else.
"""

from __future__ import annotations

import ipaddress
import struct
from pathlib import Path

TABLES = {4: Path("/proc/net/tcp"), 6: Path("/proc/net/tcp6")}


def _hex_native(address: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int) -> str:
    """An endpoint as /proc/net/tcp* writes it: the address as the kernel stores it (32-bit
    words in host order), then the port, in upper-case hex."""
    packed = address.packed
    words = struct.unpack(f"={len(packed) // 4}I", packed)
    return "".join(f"{w:08X}" for w in words) + f":{port:04X}"


def peer_uid(remote_addr: str, remote_port: int | str | None) -> int | None:
    """The uid owning the client end of a loopback connection from `remote_addr`:`remote_port`,
    or None (not loopback, not found, or /proc unreadable)."""
    try:
        address = ipaddress.ip_address(remote_addr)
        port = int(remote_port or 0)
    except ValueError:
        return None
    if not address.is_loopback and not (
        isinstance(address, ipaddress.IPv6Address)
        and address.ipv4_mapped is not None
        and address.ipv4_mapped.is_loopback
    ):
        return None
    if not 0 < port < 65536:
        return None
    candidates = [(6 if address.version == 6 else 4, _hex_native(address, port))]
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        candidates.append((4, _hex_native(address.ipv4_mapped, port)))
    for version, endpoint in candidates:
        try:
            with TABLES[version].open() as table:
                next(table, None)  # the header
                for line in table:
                    fields = line.split()
                    if len(fields) > 7 and fields[1] == endpoint:
                        return int(fields[7])
        except (OSError, ValueError):
            continue
    return None
