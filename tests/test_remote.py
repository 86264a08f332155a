"""remote.execute against a scripted paramiko channel: read to the end, give up on a silent host."""
from __future__ import annotations

import os
import threading

import pytest

from deployer import remote
from deployer.errors import RemoteError
from deployer.models import Host


class ScriptedChannel:
    """A paramiko Channel whose host sends `chunks` of stdout with a gap between them (both
    buffers empty for a moment), and whose exit status is ready from the start, as it may be
    when the last data is still in flight."""

    def __init__(self, chunks, eof=True):
        self.chunks, self.buffer = list(chunks), b""
        self.eof_received, self.closed = False, False
        self.send_eof = eof
        self.status_event = threading.Event()
        self.status_event.set()
        self.polls = 0
        self._read, self._write = os.pipe()
        os.write(self._write, b"x")

    def fileno(self):
        return self._read

    def settimeout(self, timeout):
        pass

    def exec_command(self, command):
        pass

    def sendall(self, data):
        pass

    def shutdown_write(self):
        pass

    def _tick(self):
        self.polls += 1
        if self.polls % 2 == 0 and self.chunks:  # data arrives every other poll
            self.buffer += self.chunks.pop(0)
        if not self.chunks and self.send_eof:
            self.eof_received = True

    def recv_ready(self):
        return bool(self.buffer)

    def recv(self, size):
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    def recv_stderr_ready(self):
        self._tick()  # time passes between polls: the next chunk may have arrived
        return False

    def exit_status_ready(self):
        return True

    def recv_exit_status(self):
        return 0

    def close(self):
        os.close(self._read)
        os.close(self._write)


class Transport:
    def __init__(self, channel):
        self.channel = channel

    def set_keepalive(self, seconds):
        self.keepalive = seconds

    def open_session(self, timeout=None):
        return self.channel


class Connection:
    def __init__(self, channel):
        self.transport = Transport(channel)
        self.client = self

    def open(self):
        pass

    def get_transport(self):
        return self.transport


HOST = Host(name="cron01", address="10.0.0.5")


def test_stdout_is_read_to_the_end_even_when_the_exit_status_came_first():
    chunks = [b"x" * 1000 for _ in range(50)]
    connection = Connection(ScriptedChannel(chunks))
    assert len(remote.execute(connection, HOST, "agent", b"{}")) == 50_000


def test_a_host_that_stops_answering_is_an_error_naming_it_within_the_read_timeout():
    connection = Connection(ScriptedChannel([b"partial"], eof=False))
    with pytest.raises(RemoteError, match=r"^host cron01: agent state: 10\.0\.0\.5 stopped answering"):
        remote.execute(connection, HOST, "agent", b"{}", step="agent state", read_timeout=1.0)
    assert connection.transport.keepalive == remote.KEEPALIVE_SECONDS
