"""The D-Bus wire format the agent speaks to PID 1 (host/dbus.py); the end-to-end proof that
it reads what `systemctl show` reads is tests/e2e/test_probe_agent.py."""
from __future__ import annotations

import socket
import struct
import threading
import time

import pytest

from deployer.host import dbus


def test_unit_names_are_escaped_as_sd_bus_does():
    assert dbus.object_path("deployer-j0001.service") == dbus.UNIT_PATH + "deployer_2dj0001_2eservice"
    assert dbus.object_path("0a@b.timer") == dbus.UNIT_PATH + "_30a_40b_2etimer"
    assert dbus.object_path("") == dbus.UNIT_PATH + "_"


def test_a_method_call_reads_back_with_its_header_and_arguments():
    message = dbus.method_call(7, "/org/x", dbus.PROPERTIES, "Get", ("org.freedesktop.systemd1.Timer", "Next"))
    assert dbus.message_length(message[:16]) == len(message)
    kind, fields, body = dbus.parse_message(message)
    assert kind == dbus.METHOD_CALL and struct.unpack("<I", message[8:12])[0] == 7
    assert fields == {dbus.PATH: "/org/x", dbus.INTERFACE: dbus.PROPERTIES, dbus.MEMBER: "Get",
                      dbus.SIGNATURE: "ss"}
    assert body == ["org.freedesktop.systemd1.Timer", "Next"]


def reply(serial: int, signature: str, value_bytes: bytes, error: bool = False) -> bytes:
    """A METHOD_RETURN (or ERROR) for `serial` carrying one variant of `signature`."""
    body = bytes([len(signature)]) + signature.encode() + b"\0"
    body += b"\0" * (-len(body) % 8 if signature[0] in "(tx" else -len(body) % 4 if signature[0] in "ais" else 0)
    body += value_bytes
    fields = bytearray()
    entries = [(dbus.REPLY_SERIAL, b"\x01u\0" + struct.pack("<I", serial)), (dbus.SIGNATURE, b"\x01g\0\x01v\0")]
    if error:
        entries.append((dbus.ERROR_NAME, b"\x01s\0" + struct.pack("<I", 3) + b"Err\0"))
    for code, encoded in entries:
        fields += b"\0" * (-len(fields) % 8)
        fields += bytes([code]) + encoded
    head = b"l" + bytes([dbus.ERROR if error else dbus.METHOD_RETURN, 0, 1]) + struct.pack("<III", len(body), 99,
                                                                                          len(fields))
    message = head + bytes(fields)
    return message + b"\0" * (-len(message) % 8) + body


def test_replies_of_every_shape_a_status_reads_are_parsed():
    u64 = struct.pack("<Q", 1_764_000_000_000_000)
    element = (struct.pack("<I", 14) + b"OnCalendarSpec\0" + b"\0" + struct.pack("<I", 5) + b"daily\0"
               + b"\0\0" + struct.pack("<Q", 42_000_000))
    calendar = struct.pack("<I", len(element)) + b"\0" * 4 + element  # elements start 8-aligned
    messages = {1: reply(1, "t", u64), 2: reply(2, "s", struct.pack("<I", 7) + b"success\0"),
                3: reply(3, "i", struct.pack("<i", -3)), 4: reply(4, "a(sst)", calendar)}
    for serial, message in messages.items():
        kind, fields, body = dbus.parse_message(message)
        assert fields[dbus.REPLY_SERIAL] == serial and dbus.message_length(message[:16]) == len(message)
    assert dbus.parse_message(messages[1])[2] == [1_764_000_000_000_000]
    assert dbus.parse_message(messages[2])[2] == ["success"]
    assert dbus.parse_message(messages[3])[2] == [-3]
    assert dbus.parse_message(messages[4])[2] == [[("OnCalendarSpec", "daily", 42_000_000)]]


def authenticate(peer) -> bytes:
    """A stand-in PID 1's side of the handshake: OK once AUTH has come, until BEGIN -> what
    followed BEGIN."""
    data, said_ok = b"", False
    while b"BEGIN\r\n" not in data or not said_ok:
        if b"AUTH EXTERNAL" in data and not said_ok:
            peer.sendall(b"OK 0123456789abcdef\r\n")
            said_ok = True
            continue
        data += peer.recv(4096)
    return data.split(b"BEGIN\r\n", 1)[1]


def test_a_pipelined_conversation_matches_replies_to_requests_whatever_their_order(tmp_path):
    """A stand-in PID 1 on a Unix socket: authentication, then replies out of order, one error."""
    path = str(tmp_path / "private")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)
    requests = [(dbus.object_path(f"u{i}.service"), dbus.SERVICE_INTERFACE, "Result") for i in range(300)]

    def serve():
        peer, _ = server.accept()
        data = authenticate(peer)
        for window in (dbus.WINDOW, len(requests) - dbus.WINDOW):
            serials = []
            while len(serials) < window:
                while len(data) < 16 or len(data) < dbus.message_length(data[:16]):
                    data += peer.recv(65536)
                size = dbus.message_length(data[:16])
                serials.append(struct.unpack("<I", data[8:12])[0])
                data = data[size:]
            for serial in reversed(serials):
                text = b"u%d" % serial
                peer.sendall(reply(serial, "s", struct.pack("<I", len(text)) + text + b"\0", error=serial == 5))
        peer.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    with dbus.Connection(path) as bus:
        values = bus.get_properties(requests)
    thread.join(5)
    assert values[4] is None  # the error
    assert values[:4] + values[5:] == [f"u{i + 1}" for i in range(300) if i != 4]


def test_no_call_is_sent_in_the_same_write_as_begin(tmp_path):
    """sd-bus in PID 1 reads what came with BEGIN into its buffer and looks at it again only when
    more bytes arrive: a call that shared BEGIN's recv() was never answered (seen under load on a
    host running jobs every second, a status or metrics pass waiting for a reply that never came).
    This stand-in does as PID 1 does: it answers only calls that arrived after BEGIN's read, and
    says OK only once BEGIN is there (as when PID 1 reads AUTH and BEGIN late, together)."""
    path = str(tmp_path / "private")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)
    first_read_after_begin = []

    def serve():
        peer, _ = server.accept()
        data = b""
        while b"BEGIN\r\n" not in data:
            chunk = peer.recv(4096)
            if not chunk:
                return
            data += chunk
        first_read_after_begin.append(data.split(b"BEGIN\r\n", 1)[1])
        peer.sendall(b"OK 0123456789abcdef\r\n")
        data = b""
        while len(data) < 16 or len(data) < dbus.message_length(data[:16]):
            data += peer.recv(65536)
        text = b"ok"
        peer.sendall(reply(1, "s", struct.pack("<I", len(text)) + text + b"\0"))
        peer.close()

    threading.Thread(target=serve, daemon=True).start()
    with dbus.Connection(path, timeout=5) as bus:
        assert bus.get_properties([(dbus.object_path("u.service"), dbus.SERVICE_INTERFACE, "Result")]) == ["ok"]
    assert first_read_after_begin == [b""]


def test_no_pid1_is_a_dbus_error_not_a_crash(tmp_path):
    with pytest.raises(dbus.DBusError):
        dbus.Connection(str(tmp_path / "absent"))


def test_a_conversation_that_never_answers_ends_at_its_deadline_though_signals_keep_coming(tmp_path, monkeypatch):
    """PID 1 sends every signal to a private connection, so a recv() timeout never fires while
    units change; a status once hung here for minutes. The deadline ends it (the caller then
    asks `systemctl show`)."""
    monkeypatch.setattr(dbus, "CALL_SECONDS", 1)
    path = str(tmp_path / "private")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)
    chatter = dbus.method_call(1, dbus.object_path("x.service"), dbus.PROPERTIES, "Get", ("a", "b"))

    def serve():
        peer, _ = server.accept()
        authenticate(peer)
        try:
            for _ in range(200):  # not ours (no reply serial), 20 a second: never silent
                peer.sendall(chatter)
                time.sleep(0.05)
        except OSError:
            pass
        peer.close()

    threading.Thread(target=serve, daemon=True).start()
    # The chatter lasts 10 s, then the connection closes ("closed the connection"): the message
    # says the deadline ended it.
    with dbus.Connection(path) as bus, pytest.raises(dbus.DBusError, match="did not answer within 1s"):
        bus.get_properties([(dbus.object_path("u.service"), dbus.SERVICE_INTERFACE, "Result")])
