"""The listing formats of ctbpf.datapath.formats for a whole Chunk at once,
byte for byte the same text, assembled by numpy instead of one Python
string per flow.

Every line of a chunk is laid out in one (rows, width) byte matrix, one
column range per piece (constant text, a string picked from a table per
row, a decimal number); a piece shorter than its range, or absent from a
row, leaves NUL bytes, and dropping every NUL at the end turns the matrix
into the lines. The text never holds a NUL itself.
"""

from __future__ import annotations

import numpy as np

from ctbpf import abi
from ctbpf.datapath.table import PROTO_NAMES
from ctbpf.datapath.tablestream import PORTS, QUERY, TCP, Chunk

SMALL = 65536   # numbers below this are picked from a table of their texts


def _table(texts: dict[int, str], size: int = 256, default: str = "") -> np.ndarray:
    return np.array([texts.get(i, default).encode() for i in range(size)])


def _with_prefix(prefix: bytes, texts: np.ndarray) -> np.ndarray:
    """prefix + each of texts, and one empty string after them (index
    len(texts): the row that shows nothing)."""
    width = len(prefix) + texts.dtype.itemsize
    out = np.zeros((len(texts) + 1, width), np.uint8)
    out[:-1, :len(prefix)] = np.frombuffer(prefix, np.uint8)
    out[:-1, len(prefix):] = texts.view(np.uint8).reshape(len(texts), texts.dtype.itemsize)
    return out.view(f"S{width}").ravel()


_NUMBERS: dict[bytes, np.ndarray] = {}


def _numbers(prefix: bytes) -> np.ndarray:
    """prefix + str(i) for i below SMALL, then the empty string; made on first use."""
    table = _NUMBERS.get(prefix)
    if table is None:
        if b"digits" not in _NUMBERS:
            _NUMBERS[b"digits"] = np.arange(SMALL).astype("S5")
        table = _NUMBERS[prefix] = _with_prefix(prefix, _NUMBERS[b"digits"])
    return table


class Lines:
    """The lines of `rows` flows, built piece by piece, left to right."""

    def __init__(self, rows: int) -> None:
        self.rows = rows
        self.pieces: list = []    # bytes (every row) or an S-string array (one per row)

    def text(self, s: str) -> None:
        """The same text on every row."""
        if self.pieces and isinstance(self.pieces[-1], bytes):
            self.pieces[-1] += s.encode()
        else:
            self.pieces.append(s.encode())

    def pick(self, table: np.ndarray, index, prefix: str = "") -> None:
        """prefix + table[index[row]] on each row (table: an S-string array)."""
        table = np.asarray(table)
        if prefix:
            table = _with_prefix(prefix.encode(), table)
        self.pieces.append(table[index])

    def when(self, s: str, rows: np.ndarray) -> None:
        """s on the rows where `rows` is true."""
        self.pieces.append(np.array([b"", s.encode()])[rows.astype(np.intp)])

    def number(self, values: np.ndarray, rows: np.ndarray | None = None,
               prefix: str = "") -> None:
        """prefix and the decimal value (a non-negative integer) on each row,
        or on `rows` only if given."""
        values = np.asarray(values)
        if not values.size or int(values.max()) < SMALL:
            index = values.astype(np.intp)
            if rows is not None:
                index = np.where(rows, index, SMALL)
            self.pieces.append(_numbers(prefix.encode())[index])
            return
        if prefix:
            self.when(prefix, rows if rows is not None else np.ones(self.rows, bool))
        piece = _decimal(values.astype(np.uint64))
        self.pieces.append(piece if rows is None else np.where(rows, piece, b""))

    def bytes(self) -> bytes:
        widths = [len(p) if isinstance(p, bytes) else p.dtype.itemsize for p in self.pieces]
        matrix = np.zeros((self.rows, sum(widths)), np.uint8)
        at = 0
        for piece, width in zip(self.pieces, widths):
            if width:
                # the columns as one string per row: a copy per row, not per byte
                matrix[:, at:at + width].view(f"S{width}")[:, 0] = piece
            at += width
        flat = matrix.ravel()
        return flat[flat != 0].tobytes()


def _decimal(values: np.ndarray) -> np.ndarray:
    """u64 values as S-strings, as wide as the largest needs."""
    width = len(str(int(values.max()))) if values.size else 1
    digits = np.empty((len(values), width), np.uint8)
    rest = values.copy()
    for col in range(width - 1, -1, -1):
        digits[:, col] = rest % 10 + 48
        rest //= 10
    length = np.ones(len(values), np.intp)
    for power in range(1, width):
        length += values >= 10 ** power
    # right-aligned with leading '0's -> left-aligned, NUL after the last digit
    cols = np.arange(width)
    out = np.take_along_axis(digits, np.minimum(cols + (width - length)[:, None], width - 1),
                             axis=1)
    out[cols >= length[:, None]] = 0
    return out.view(f"S{width}").ravel()


_PROTO_HEAD = _table({p: f"{PROTO_NAMES.get(p, 'unknown'):<8} {p} " for p in range(256)})
_STATE_HEAD = _table({v: f" {n} " for v, n in abi.TCP_STATE_NAMES.items()}, default=" ")
_JSON_HEAD = _table({p: f'{{"proto": "{PROTO_NAMES.get(p, "unknown")}", "protonum": {p}, '
                        f'"family": "' for p in range(256)})
_JSON_FAMILY = _table({4: 'ipv4", "timeout": '}, default='ipv6", "timeout": ')
_JSON_STATE = _table({v: f', "state": "{n}", "orig": ' for v, n in abi.TCP_STATE_NAMES.items()},
                     default=', "state": null, "orig": ')
_JSON_FLAGS = np.array([b'"flags": []', b'"flags": ["UNREPLIED"]', b'"flags": ["ASSURED"]',
                        b'"flags": ["UNREPLIED", "ASSURED"]'])


def _tcp_state(c: Chunk) -> np.ndarray:
    """The TCP state as an index into the state tables; 255 (no name) otherwise."""
    return np.where(c.proto == TCP, c.state, 255)


def _counted(c: Chunk) -> np.ndarray | None:
    if c.packets is None:
        return None
    return np.ones(len(c), bool) if c.counted is None else c.counted


def _tuple(out: Lines, c: Chunk, reply: bool, names: tuple[str, ...]) -> None:
    """A tuple's addresses, then its ports or its ICMP type, code and id;
    `names` holds the text before each of the seven values, then after the
    addresses."""
    src, dst = (c.dst, c.src) if reply else (c.src, c.dst)
    sport, dport = (c.dport, c.sport) if reply else (c.sport, c.dport)
    ports, query = c.kind == PORTS, c.kind == QUERY
    out.pick(c.addr_bytes, src, prefix=names[0])
    out.pick(c.addr_bytes, dst, prefix=names[1])
    if names[7]:
        out.text(names[7])
    out.number(sport, ports, names[2])
    out.number(dport, ports, names[3])
    out.number(c.rtype if reply else c.itype, query, names[4])
    out.number(c.code, query, names[5])
    out.number(c.sport, query, names[6])


_TEXT = ("src=", " dst=", " sport=", " dport=", " type=", " code=", " id=", "")
_JSON = ('{"src": "', '", "dst": "', ', "sport": ', ', "dport": ', ', "type": ', ', "code": ',
         ', "id": ', '"')


def _head(out: Lines, c: Chunk) -> None:
    out.pick(_PROTO_HEAD, c.proto)
    out.number(c.timeout)
    out.pick(_STATE_HEAD, _tcp_state(c))


def _counters(out: Lines, c: Chunk, counted, side: int) -> None:
    if counted is not None:
        out.number(c.packets[:, side], counted, " packets=")
        out.number(c.bytes[:, side], counted, " bytes=")


def _text_lines(c: Chunk, counters: bool, tail: str) -> bytes:
    counted = _counted(c) if counters else None
    out = Lines(len(c))
    _head(out, c)
    _tuple(out, c, False, _TEXT)
    _counters(out, c, counted, 0)
    out.pick(np.array([b" ", b" [UNREPLIED] "]), c.unreplied.astype(np.intp))
    _tuple(out, c, True, _TEXT)
    _counters(out, c, counted, 1)
    out.pick(np.array([b" ", b" [ASSURED] "]), c.assured.astype(np.intp))
    out.text(tail)
    return out.bytes()


def proc_lines(c: Chunk) -> bytes:
    """formats.proc_line() of every row, each ending in a newline."""
    return _text_lines(c, False, "use=1\n")


def conntrack_lines(c: Chunk) -> bytes:
    """formats.conntrack_line() of every row, each ending in a newline."""
    return _text_lines(c, True, "mark=0 use=1\n")


def json_lines(c: Chunk) -> bytes:
    """formats.flow_json() of every row, each followed by ",\\n"."""
    counted = _counted(c)
    out = Lines(len(c))
    out.pick(_JSON_HEAD, c.proto)
    out.pick(_JSON_FAMILY, c.family)
    out.number(c.timeout)
    out.pick(_JSON_STATE, _tcp_state(c))
    _tuple(out, c, False, _JSON)
    out.text('}, "reply": ')
    _tuple(out, c, True, _JSON)
    out.text('}, ')
    out.pick(_JSON_FLAGS, c.unreplied.astype(np.intp) + 2 * c.assured)
    if counted is not None:
        for name, values in (("packets", c.packets), ("bytes", c.bytes)):
            out.number(values[:, 0], counted, f', "{name}": {{"orig": ')
            out.number(values[:, 1], counted, ', "reply": ')
            out.when("}", counted)
    if isinstance(c.table, str):
        out.text(f', "table": "{c.table}"}},\n')
    else:
        out.pick(c.table, np.arange(len(c)), prefix=', "table": "')
        out.text('"},\n')
    return out.bytes()


FORMATS = {"proc": proc_lines, "conntrack": conntrack_lines, "json": json_lines}
