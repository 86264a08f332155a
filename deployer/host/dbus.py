"""Just enough D-Bus to read unit properties from PID 1 in bulk (standard library only).

Why not `systemctl show`: it asks for *all* properties of every unit (GetAll), and one of them,
UnitFileState, makes PID 1 search every unit directory for links to the unit. With 1,000 jobs
(1,000 links in timers.target.wants) that is ~20 ms per unit the first time after a reload:
`deployer status` of 1,000 jobs took 28-65 s, 10,000 never finished. Asking PID 1 for just the
properties a status needs (Properties.Get), pipelined over its private socket, costs well under
a millisecond per property. Root only: /run/systemd/private is PID 1's socket for root.
"""
from __future__ import annotations

import os
import socket
import struct
import time

PRIVATE_SOCKET = "/run/systemd/private"
UNIT_PATH = "/org/freedesktop/systemd1/unit/"
PROPERTIES = "org.freedesktop.DBus.Properties"
UNIT_INTERFACE = "org.freedesktop.systemd1.Unit"
TIMER_INTERFACE = "org.freedesktop.systemd1.Timer"
SERVICE_INTERFACE = "org.freedesktop.systemd1.Service"

METHOD_CALL, METHOD_RETURN, ERROR = 1, 2, 3
# Header fields: code -> signature of its value.
PATH, INTERFACE, MEMBER, ERROR_NAME, REPLY_SERIAL, DESTINATION, SIGNATURE = 1, 2, 3, 4, 5, 6, 8
# Requests in flight at once: each is ~150 bytes, far below the socket buffers either way.
WINDOW = 256
# One get_properties() conversation in all (10,000 jobs' status reads take seconds).
CALL_SECONDS = 60


class DBusError(Exception):
    pass


def object_path(unit: str) -> str:
    """sd-bus's label escaping: `deployer-a.timer` -> `.../unit/deployer_2da_2etimer`."""
    out = []
    for index, char in enumerate(unit):
        if char.isascii() and (char.isalpha() or (char.isdigit() and index > 0)):
            out.append(char)
        else:
            out.extend("_%02x" % byte for byte in char.encode())
    return UNIT_PATH + ("".join(out) or "_")


# -- marshalling (little endian) --------------------------------------------------------------

class _Writer:
    def __init__(self):
        self.data = bytearray()

    def align(self, size: int) -> None:
        self.data += b"\0" * (-len(self.data) % size)

    def byte(self, value: int) -> None:
        self.data.append(value)

    def uint32(self, value: int) -> None:
        self.align(4)
        self.data += struct.pack("<I", value)

    def string(self, value: str) -> None:
        raw = value.encode()
        self.uint32(len(raw))
        self.data += raw + b"\0"

    def signature(self, value: str) -> None:
        raw = value.encode()
        self.data += bytes([len(raw)]) + raw + b"\0"


def method_call(serial: int, path: str, interface: str, member: str, args: tuple = ()) -> bytes:
    """A METHOD_CALL whose arguments are all strings."""
    body = _Writer()
    for arg in args:
        body.string(arg)
    header = _Writer()
    header.data += b"l" + bytes([METHOD_CALL, 0, 1])
    header.uint32(len(body.data))
    header.uint32(serial)
    fields = [(PATH, "o", path), (INTERFACE, "s", interface), (MEMBER, "s", member)]
    if args:
        fields.append((SIGNATURE, "g", "s" * len(args)))
    array = _Writer()
    array.data = bytearray(header.data) + b"\0\0\0\0"  # the array length, filled in below
    start = len(array.data)
    for code, kind, value in fields:
        array.align(8)
        array.byte(code)
        array.signature(kind)
        if kind == "g":
            array.signature(value)
        else:
            array.string(value)
    struct.pack_into("<I", array.data, 12, len(array.data) - start)
    array.align(8)
    return bytes(array.data) + bytes(body.data)


class _Reader:
    def __init__(self, data: bytes, position: int = 0):
        self.data, self.position = data, position

    def align(self, size: int) -> None:
        self.position += -self.position % size

    def take(self, size: int) -> bytes:
        chunk = self.data[self.position:self.position + size]
        if len(chunk) != size:
            raise DBusError("truncated message")
        self.position += size
        return chunk

    def value(self, signature: str, index: int = 0):
        """-> (value, index after its type in `signature`)."""
        kind = signature[index]
        fixed = {"y": ("<B", 1), "b": ("<I", 4), "n": ("<h", 2), "q": ("<H", 2), "i": ("<i", 4),
                 "u": ("<I", 4), "x": ("<q", 8), "t": ("<Q", 8), "d": ("<d", 8), "h": ("<I", 4)}
        if kind in fixed:
            form, size = fixed[kind]
            self.align(size)
            value = struct.unpack(form, self.take(size))[0]
            return (bool(value) if kind == "b" else value), index + 1
        if kind in "so":
            self.align(4)
            size = struct.unpack("<I", self.take(4))[0]
            text = self.take(size + 1)[:-1].decode("utf-8", "replace")
            return text, index + 1
        if kind == "g":
            size = self.take(1)[0]
            return self.take(size + 1)[:-1].decode(), index + 1
        if kind == "v":
            inner, _ = self.value("g")
            return self.value(inner)[0], index + 1
        if kind == "a":
            self.align(4)
            size = struct.unpack("<I", self.take(4))[0]
            element_end = _type_end(signature, index + 1)
            element = signature[index + 1:element_end]
            self.align(8 if element[0] in "({xtd" else _alignment(element[0]))
            end, items = self.position + size, []
            while self.position < end:
                items.append(self.value(element)[0])
            return items, element_end
        if kind in "({":
            self.align(8)
            close = _type_end(signature, index)
            inner, items, position = signature[index + 1:close - 1], [], 0
            while position < len(inner):
                item, position = self.value(inner, position)
                items.append(item)
            return tuple(items), close
        raise DBusError("unsupported type %r" % kind)


def _alignment(kind: str) -> int:
    return {"y": 1, "g": 1, "v": 1, "n": 2, "q": 2}.get(kind, 4)


def _type_end(signature: str, index: int) -> int:
    """The index just after the complete type starting at `index`."""
    kind = signature[index]
    if kind == "a":
        return _type_end(signature, index + 1)
    if kind in "({":
        depth = 0
        for position in range(index, len(signature)):
            depth += signature[position] in "({"
            depth -= signature[position] in ")}"
            if depth == 0:
                return position + 1
        raise DBusError("unbalanced signature %r" % signature)
    return index + 1


def parse_message(data: bytes):
    """One complete message -> (type, {field code: value}, body values)."""
    reader = _Reader(data, 12)
    fields = dict(reader.value("a(yv)")[0])
    reader.align(8)
    signature, body = fields.get(SIGNATURE, ""), []
    position = 0
    while position < len(signature):
        value, position = reader.value(signature, position)
        body.append(value)
    return data[1], fields, body


def message_length(head: bytes) -> int:
    """The whole length of a message from its first 16 bytes."""
    if head[:1] != b"l":
        raise DBusError("big-endian messages are not supported")
    body_length, _, fields_length = struct.unpack("<III", head[4:16])
    return 16 + fields_length + (-(16 + fields_length) % 8) + body_length


# -- the connection --------------------------------------------------------------------------

class Connection:
    """A direct connection to PID 1 (no bus daemon, no Hello)."""

    def __init__(self, path: str = PRIVATE_SOCKET, timeout: float = 30.0):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.buffer = b""
        self.deadline = None  # of the get_properties() under way
        try:
            self.sock.connect(path)
            # BEGIN goes with AUTH, as sd-bus's own clients send it, never with the first call:
            # PID 1 (systemd 252) leaves a call that it read in the same recv() as BEGIN in its
            # buffer until more bytes arrive, and a client waiting for the reply sends none. A busy
            # PID 1 reads late, so the two arrive together more often under load: 17 of 710
            # status reads never got their reply on a host running jobs every second, 0 of 13,023
            # with BEGIN sent here (docs/performance.md).
            self.sock.sendall(b"\0AUTH EXTERNAL %s\r\nBEGIN\r\n" % str(os.geteuid()).encode().hex().encode())
            if not self._line().startswith(b"OK "):
                raise DBusError("PID 1 refused the authentication")
        except OSError as error:
            self.sock.close()
            raise DBusError("cannot talk to PID 1 on %s: %s" % (path, error)) from None

    def close(self) -> None:
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _fill(self, size: int) -> None:
        while len(self.buffer) < size:
            if self.deadline is not None and time.monotonic() > self.deadline:
                raise DBusError("PID 1 did not answer within %ds" % CALL_SECONDS)
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise DBusError("PID 1 closed the connection")
            self.buffer += chunk

    def _line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            self._fill(len(self.buffer) + 1)
        line, _, self.buffer = self.buffer.partition(b"\r\n")
        return line

    def _message(self) -> bytes:
        self._fill(16)
        size = message_length(self.buffer[:16])
        self._fill(size)
        message, self.buffer = self.buffer[:size], self.buffer[size:]
        return message

    def get_properties(self, requests):
        """[(path, interface, property)] -> [value or None (an error, e.g. no such unit)], in order."""
        requests = list(requests)
        results = [None] * len(requests)
        # PID 1 sends every signal to a private connection: they keep a recv() timeout from ever
        # firing, so a conversation that stops making sense (seen once under load: a status stuck
        # here for minutes) ends at a deadline, and the caller asks `systemctl show` instead.
        self.deadline = time.monotonic() + CALL_SECONDS
        for start in range(0, len(requests), WINDOW):
            batch = requests[start:start + WINDOW]
            self.sock.sendall(b"".join(method_call(start + offset + 1, path, PROPERTIES, "Get", (interface, name))
                                       for offset, (path, interface, name) in enumerate(batch)))
            pending = len(batch)
            while pending:
                kind, fields, body = parse_message(self._message())
                serial = fields.get(REPLY_SERIAL)
                if kind not in (METHOD_RETURN, ERROR) or serial is None:
                    continue  # a signal: not ours
                pending -= 1
                if kind == METHOD_RETURN and body:
                    results[serial - 1] = body[0]
        return results
