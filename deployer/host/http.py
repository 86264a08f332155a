"""One HTTP/1.1 request from the cron host, standard library only, bounded in time and in size.

Written on a raw socket rather than http.client: http.client imports the `email` package
(most of its import time), and its per-operation socket timeouts let a server that drips one
byte at a time hold a run for ever; here every read is given only what is left of one deadline.
`ssl` is imported only for https URLs.
"""
from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass, field
from typing import Mapping

SYSTEM_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
DEFAULT_PORTS = {"http": 80, "https": 443}
MAX_HEADER_LINE = 65536
MAX_HEADERS = 200
USER_AGENT = "deployer-hostside/1"
_RECV = 65536


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    truncated: bool  # the body was longer than max_body; `body` holds its first max_body bytes
    seconds: float  # from the start of the connection to the end of the body
    headers: Mapping[str, str] = field(default_factory=dict, compare=False)  # lower-case names

    def header(self, name: str) -> str:
        return self.headers.get(name.lower(), "")


class HttpError(Exception):
    """The request got no complete answer.

    `.reason` is a short cause ('connection refused', 'timed out connecting', 'timed out
    reading', 'TLS error: certificate verify failed: ...'); `.retryable` says whether another
    attempt may succeed: connection errors, timeouts and broken answers are retryable, TLS
    verification and configuration errors are not (they fail the same way every time).
    `.sent`: the request may have reached the service (the error came while sending it or
    reading the answer), so the service may be executing it; False when it certainly did not
    (no connection, DNS, the TLS handshake).
    """

    def __init__(self, reason: str, retryable: bool, sent: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable
        self.sent = sent


@dataclass(frozen=True)
class _Target:
    scheme: str
    host: str  # without brackets
    port: int
    path: str  # request target: path and query, as given (non-ASCII percent-encoded)
    userinfo: str

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == DEFAULT_PORTS[self.scheme] else f"{host}:{self.port}"


def _safe(c: str) -> bool:
    return " " < c < "\x7f"


def _percent_encode_unsafe(text: str) -> str:
    """Keep printable ASCII (and existing %XX) as is; UTF-8-encode and escape the rest, so that
    neither a space nor a CR/LF can end the request line."""
    if all(_safe(c) for c in text):
        return text
    return "".join(c if _safe(c) else "".join(f"%{b:02X}" for b in c.encode("utf-8")) for c in text)


def _unquote(text: str) -> str:
    if "%" not in text:
        return text
    raw, i = bytearray(), 0
    data = text.encode("utf-8")
    while i < len(data):
        if data[i] == 0x25 and i + 2 < len(data) and _is_hex(data[i + 1:i + 3]):
            raw.append(int(data[i + 1:i + 3], 16))
            i += 3
        else:
            raw.append(data[i])
            i += 1
    return raw.decode("utf-8", "replace")


def _is_hex(pair: bytes) -> bool:
    return len(pair) == 2 and all(c in b"0123456789abcdefABCDEF" for c in pair)


def parse_url(url: str) -> _Target:
    """http(s)://[user[:password]@]host[:port][/path][?query][#fragment]; the fragment is dropped."""
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in DEFAULT_PORTS:
        raise ValueError(f"not an http(s) URL: {url!r}")
    authority_end = len(rest)
    for stop in "/?#":
        found = rest.find(stop)
        if found != -1:
            authority_end = min(authority_end, found)
    authority, target = rest[:authority_end], rest[authority_end:]
    target = target.partition("#")[0]
    if not target.startswith("/"):
        target = "/" + target  # "http://h?q=1" -> "/?q=1"
    userinfo, _, hostport = authority.rpartition("@")
    if hostport.startswith("["):
        host, bracket, after = hostport[1:].partition("]")
        if not bracket or (after and not after.startswith(":")):
            raise ValueError(f"bad IPv6 address in {url!r}")
        port_text = after[1:]
    else:
        host, _, port_text = hostport.partition(":")
    if not host or not all(_safe(c) and c not in "/?#@[]" for c in host):
        raise ValueError(f"no usable host in {url!r}")
    if port_text and not port_text.isdigit():
        raise ValueError(f"bad port in {url!r}")
    port = int(port_text) if port_text else DEFAULT_PORTS[scheme]
    if not 0 < port < 65536:
        raise ValueError(f"bad port in {url!r}")
    return _Target(scheme, host, port, _percent_encode_unsafe(target), userinfo)


def _request_head(method: str, target: _Target, headers: dict[str, str], body: bytes) -> bytes:
    given = {name.lower() for name in headers}
    lines = [f"{method} {target.path} HTTP/1.1"]
    if "host" not in given:
        lines.append(f"Host: {target.host_header}")
    if "user-agent" not in given:
        lines.append(f"User-Agent: {USER_AGENT}")
    if target.userinfo and "authorization" not in given:
        import base64

        user, _, password = target.userinfo.partition(":")
        token = base64.b64encode(f"{_unquote(user)}:{_unquote(password)}".encode("utf-8")).decode("ascii")
        lines.append(f"Authorization: Basic {token}")
    if "content-length" not in given and (body or method not in ("GET", "HEAD", "DELETE", "OPTIONS")):
        lines.append(f"Content-Length: {len(body)}")
    lines.append("Connection: close")
    for name, value in headers.items():
        if not name or any(c in name for c in ":\r\n \t") or any(c in str(value) for c in "\r\n\0"):
            raise ValueError(f"header {name!r} has a character that would end it")
        lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")


def tls_context(ca_file: str | None = None, client_cert: str | None = None, client_key: str | None = None):
    """Verification against ca_file, else the system trust store (Debian's bundle if OpenSSL's
    default paths hold nothing); a client certificate for mTLS."""
    import ssl

    try:
        if ca_file:
            context = ssl.create_default_context(cafile=ca_file)
        else:
            context = ssl.create_default_context()
            paths = ssl.get_default_verify_paths()
            has_dir = bool(paths.capath) and os.path.isdir(paths.capath) and bool(os.listdir(paths.capath))
            if not paths.cafile and not has_dir and os.path.exists(SYSTEM_CA_BUNDLE):
                context.load_verify_locations(SYSTEM_CA_BUNDLE)
        if client_cert:
            context.load_cert_chain(client_cert, client_key)
    except (OSError, ssl.SSLError) as error:
        raise HttpError(f"TLS error: cannot load certificates: {error}", retryable=False) from None
    return context


class _Connection:
    """A socket read through one buffer, every wait bounded by what is left of `deadline`."""

    def __init__(self, sock: socket.socket, deadline: float):
        self.sock, self.deadline, self.buffer, self.closed = sock, deadline, bytearray(), False

    def _fill(self) -> bool:
        """Read more into the buffer; False at the end of the stream."""
        if self.closed:
            return False
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise HttpError("timed out reading", retryable=True)
        self.sock.settimeout(left)
        try:
            chunk = self.sock.recv(_RECV)
        except socket.timeout:
            raise HttpError("timed out reading", retryable=True) from None
        except OSError as error:
            raise _os_error(error, "reading") from None
        if not chunk:
            self.closed = True
            return False
        self.buffer += chunk
        return True

    def readline(self) -> bytes:
        while True:
            end = self.buffer.find(b"\n")
            if end != -1:
                line = bytes(self.buffer[:end + 1])
                del self.buffer[:end + 1]
                return line
            if len(self.buffer) > MAX_HEADER_LINE:
                raise HttpError("malformed answer: a header line is too long", retryable=True)
            if not self._fill():
                raise HttpError("connection closed before the answer was complete", retryable=True)

    def read(self, size: int, exact: bool = True) -> bytes:
        """Up to `size` bytes; `exact`: fewer only because the stream ended is an error."""
        while len(self.buffer) < size and self._fill():
            pass
        if exact and len(self.buffer) < size:
            raise HttpError("connection closed before the body ended", retryable=True)
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data


def _os_error(error: OSError, phase: str) -> HttpError:
    if isinstance(error, ConnectionRefusedError):
        return HttpError("connection failed: connection refused", retryable=True)
    if isinstance(error, ConnectionResetError):
        return HttpError(f"connection reset while {phase}", retryable=True)
    if type(error).__module__ == "ssl":
        return _ssl_error(error)
    return HttpError(f"connection failed while {phase}: {error.strerror or error}", retryable=True)


def _ssl_error(error: Exception) -> HttpError:
    verify = getattr(error, "verify_message", None)
    if verify:
        return HttpError(f"TLS error: certificate verify failed: {verify}", retryable=False)
    if type(error).__name__ in ("SSLEOFError", "SSLZeroReturnError", "SSLSyscallError"):
        return HttpError("connection closed during TLS", retryable=True)
    return HttpError(f"TLS error: {getattr(error, 'reason', None) or error}", retryable=False)


def _read_head(conn: _Connection) -> tuple[int, dict[str, str]]:
    """Status and headers (lower-case names; repeated ones joined with ', '), 1xx skipped."""
    while True:
        line = conn.readline()
        parts = line.decode("latin-1").split(None, 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit() or len(parts[1]) != 3:
            raise HttpError(f"malformed answer: status line {line[:80]!r}", retryable=True)
        status = int(parts[1])
        headers: dict[str, str] = {}
        for _ in range(MAX_HEADERS + 1):
            line = conn.readline()
            if line in (b"\r\n", b"\n"):
                break
            name, colon, value = line.decode("latin-1").partition(":")
            if not colon:
                raise HttpError(f"malformed answer: header line {line[:80]!r}", retryable=True)
            key = name.strip().lower()
            value = value.strip()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        else:
            raise HttpError("malformed answer: too many headers", retryable=True)
        if 100 <= status < 200 and status != 101:
            continue  # 100 Continue, 103 Early Hints: the real answer follows
        return status, headers


def _read_body(conn: _Connection, method: str, status: int, headers: dict[str, str],
               max_body: int) -> tuple[bytes, bool]:
    if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
        return b"", False
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = bytearray()
        while True:
            size_line = conn.readline().split(b";", 1)[0].strip()
            if not size_line or not _is_hex_number(size_line):
                raise HttpError(f"malformed answer: chunk size {size_line[:20]!r}", retryable=True)
            size = int(size_line, 16)
            if size == 0:
                while conn.readline() not in (b"\r\n", b"\n"):  # trailers
                    pass
                return bytes(body), False
            wanted = min(size, max_body - len(body))
            body += conn.read(wanted)
            if wanted < size:
                return bytes(body), True  # never read the rest of an endless body
            conn.read(2)  # the CRLF after the chunk
    length_text = headers.get("content-length")
    if length_text is not None:
        lengths = {part.strip() for part in length_text.split(",")}
        if len(lengths) != 1 or not next(iter(lengths)).isdigit():
            raise HttpError(f"malformed answer: Content-Length {length_text[:40]!r}", retryable=True)
        length = int(next(iter(lengths)))
        return conn.read(min(length, max_body)), length > max_body
    data = conn.read(max_body + 1, exact=False)  # no length: the body ends when the server closes
    return data[:max_body], len(data) > max_body


def _is_hex_number(text: bytes) -> bool:
    return len(text) <= 16 and all(c in b"0123456789abcdefABCDEF" for c in text)


def request(method: str, url: str, *, headers: dict[str, str] = {}, body: bytes = b"",
            timeout: tuple[float, float] = (10, 60), ca_file: str | None = None,
            client_cert: str | None = None, client_key: str | None = None,
            max_body: int = 1 << 20) -> Response:
    """Send one request and read its answer; never follows redirects (a 3xx is returned as is).

    `timeout` is (connect, read): connecting (DNS, TCP and the TLS handshake) may take at most
    the first; sending the request and reading the whole answer at most the second, in total,
    however slowly the server drips. At most `max_body` bytes of the body are read (`truncated`
    says there was more). Raises HttpError when there is no complete answer, ValueError for a
    malformed URL or header.
    """
    method = method.upper()
    target = parse_url(url)
    head = _request_head(method, target, headers, body)
    context = tls_context(ca_file, client_cert, client_key) if target.scheme == "https" else None
    started = time.monotonic()
    connect_deadline = started + timeout[0]
    try:
        sock = socket.create_connection((target.host, target.port), timeout=timeout[0])
    except socket.timeout:
        raise HttpError("timed out connecting", retryable=True) from None
    except socket.gaierror as error:
        raise HttpError(f"cannot resolve {target.host}: {error.strerror}", retryable=True) from None
    except OSError as error:
        raise _os_error(error, "connecting") from None
    try:
        if context is not None:
            import ssl

            sock.settimeout(max(connect_deadline - time.monotonic(), 0.001))
            try:
                sock = context.wrap_socket(sock, server_hostname=target.host)
            except socket.timeout:
                raise HttpError("timed out connecting", retryable=True) from None
            except ssl.SSLError as error:
                raise _ssl_error(error) from None
            except OSError as error:
                raise _os_error(error, "connecting") from None
        try:
            return _exchange(sock, head + body, method, timeout[1], max_body, started)
        except HttpError as error:
            error.sent = True  # from here on the service may have the request, and be executing it
            raise
    finally:
        sock.close()


def _exchange(sock, request: bytes, method: str, read_timeout: float, max_body: int, started: float) -> Response:
    """Send the request on a connected socket and read the whole answer within `read_timeout`."""
    conn = _Connection(sock, time.monotonic() + read_timeout)
    try:
        sock.settimeout(max(conn.deadline - time.monotonic(), 0.001))
        sock.sendall(request)
    except socket.timeout:
        raise HttpError("timed out sending", retryable=True) from None
    except OSError as error:
        # The server may answer (say 413) and close before taking the whole body: read it.
        if not isinstance(error, (BrokenPipeError, ConnectionResetError)):
            raise _os_error(error, "sending") from None
    try:
        status, answer_headers = _read_head(conn)
        content, truncated = _read_body(conn, method, status, answer_headers, max_body)
    except OSError as error:  # ssl.SSLError raised by recv (e.g. a refused client certificate)
        raise _os_error(error, "reading") from None
    return Response(status, content, truncated, time.monotonic() - started, answer_headers)
