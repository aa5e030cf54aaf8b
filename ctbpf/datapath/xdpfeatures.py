"""What an interface's driver can do with XDP frames, as the kernel reports
it (the netdev generic netlink family, `ynl --family netdev --do dev-get`).

The fast path needs NDO_XMIT on an interface it redirects into from a
native-mode program: without it the frame is dropped. A veth has it only
while its peer runs an XDP program or has GRO on, and says so here.
"""

from __future__ import annotations

import os
import socket
import struct

NETLINK_GENERIC = 16
GENL_ID_CTRL = 0x10
CTRL_CMD_GETFAMILY = 3
CTRL_ATTR_FAMILY_ID = 1
CTRL_ATTR_FAMILY_NAME = 2
NETDEV_CMD_DEV_GET = 1
NETDEV_A_DEV_IFINDEX = 1
NETDEV_A_DEV_XDP_FEATURES = 3
NLM_F_REQUEST = 1
NLMSG_ERROR = 2

# enum netdev_xdp_act
ACT_BASIC = 1
ACT_REDIRECT = 2
ACT_NDO_XMIT = 4

_family_id: int | None = None


def _attr(kind: int, payload: bytes) -> bytes:
    a = struct.pack("=HH", 4 + len(payload), kind) + payload
    return a + b"\0" * (-len(a) % 4)


def _attrs(raw: bytes) -> dict[int, bytes]:
    out, pos = {}, 0
    while pos + 4 <= len(raw):
        length, kind = struct.unpack_from("=HH", raw, pos)
        if length < 4:
            break
        out[kind & 0x3FFF] = raw[pos + 4:pos + length]
        pos += (length + 3) & ~3
    return out


def _ask(family: int, cmd: int, attrs: bytes) -> dict[int, bytes]:
    """One generic netlink request; the reply's attributes. OSError on a
    refusal (the kernel's errno)."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_GENERIC) as s:
        s.settimeout(2.0)
        body = struct.pack("=BBH", cmd, 1, 0) + attrs
        s.send(struct.pack("=IHHII", 16 + len(body), family, NLM_F_REQUEST, 1, 0) + body)
        reply = s.recv(65536)
    length, kind = struct.unpack_from("=IH", reply, 0)
    if kind == NLMSG_ERROR:
        err = struct.unpack_from("=i", reply, 16)[0]
        if err:
            raise OSError(-err, os.strerror(-err))
    return _attrs(reply[20:length])


def _netdev_family() -> int:
    global _family_id
    if _family_id is None:
        got = _ask(GENL_ID_CTRL, CTRL_CMD_GETFAMILY, _attr(CTRL_ATTR_FAMILY_NAME, b"netdev\0"))
        _family_id = struct.unpack("=H", got[CTRL_ATTR_FAMILY_ID][:2])[0]
    return _family_id


def features(ifindex: int) -> int | None:
    """The interface's enum netdev_xdp_act bits in this namespace; None when
    the kernel cannot say (no netdev family: before Linux 6.3)."""
    try:
        got = _ask(_netdev_family(), NETDEV_CMD_DEV_GET,
                   _attr(NETDEV_A_DEV_IFINDEX, struct.pack("=I", ifindex)))
    except (OSError, KeyError):
        return None
    raw = got.get(NETDEV_A_DEV_XDP_FEATURES)
    return int.from_bytes(raw[:8], "little") if raw else 0


def takes_xdp_frames(ifindex: int) -> bool:
    """Whether frames redirected from native XDP can be sent out of it.
    Unknown (an old kernel) counts as no: such frames go up the stack."""
    bits = features(ifindex)
    return bits is not None and bool(bits & ACT_NDO_XMIT)
