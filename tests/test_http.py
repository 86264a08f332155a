"""deployer.host.http against real servers on loopback: plain, TLS with its own CA, mTLS,
slow, endless, redirecting and absent ones."""
from __future__ import annotations

import base64
import json
import socket
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from deployer.host.http import HttpError, Response, parse_url, request
from tests.tls import make_pki


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen: list  # every request line the server got, per server (set in serve())

    def log_message(self, *args) -> None:
        pass

    def _answer(self, status: int, body: bytes, headers: dict | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if "Content-Length" not in (headers or {}):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def handle_any(self) -> None:
        self.server.seen.append(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        route = self.path.split("?")[0]
        if route == "/redirect":
            self._answer(302, b"moved", {"Location": "/elsewhere"})
        elif route == "/drip":  # promises 1000 bytes, sends one every 0.1 s
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            for _ in range(1000):
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(0.1)
        elif route == "/slow-head":
            time.sleep(3)
            self._answer(200, b"late")
        elif route == "/endless":  # chunked, never ends
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            chunk = b"y" * 4096
            while True:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        elif route == "/chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for part in (b"hello ", b"chunked ", b"world"):
                self.wfile.write(b"%x;ext=1\r\n%s\r\n" % (len(part), part))
            self.wfile.write(b"0\r\nX-Trailer: t\r\n\r\n")
        elif route == "/big":
            self._answer(200, b"z" * 5000)
        elif route == "/until-close":  # no length: the body ends when the connection does
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(b"all of it")
            self.close_connection = True
        elif route == "/empty":
            self._answer(204, b"")
        elif route == "/continue":
            self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            self._answer(201, b"after 100")
        else:
            echo = {"method": self.command, "path": self.path, "body": body.decode("latin-1"),
                    "headers": {k.lower(): v for k, v in self.headers.items()}}
            self._answer(200, json.dumps(echo).encode(), {"Content-Type": "application/json"})

    do_GET = do_POST = do_PUT = do_HEAD = handle_any


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        pass  # clients hanging up on endless bodies are the point of some tests


def serve(host: str = "127.0.0.1", tls: ssl.SSLContext | None = None):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    server_class = type("S", (Server,), {"address_family": family})
    server = server_class((host, 0), Handler)
    server.seen = []
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server


@pytest.fixture
def http_server():
    server = serve()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def base(http_server) -> str:
    return f"http://127.0.0.1:{http_server.server_address[1]}"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


def tls_server(pki, require_client_cert: bool):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki.server_cert, pki.server_key)
    if require_client_cert:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(pki.ca)
    return serve(tls=context)


@pytest.fixture
def https(pki):
    server = tls_server(pki, require_client_cert=False)
    yield f"https://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture
def mtls(pki):
    server = tls_server(pki, require_client_cert=True)
    yield f"https://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def echo(response: Response) -> dict:
    assert response.status == 200, response
    return json.loads(response.body)


# --- requests as sent ---------------------------------------------------------------------


def test_post_sends_body_content_length_and_host_with_port(base, http_server):
    seen = echo(request("POST", base + "/job", headers={"X-Deployer-Job": "settle"}, body=b'{"a": 1}'))
    port = http_server.server_address[1]
    assert seen["method"] == "POST" and seen["body"] == '{"a": 1}'
    assert seen["headers"]["content-length"] == "8"
    assert seen["headers"]["host"] == f"127.0.0.1:{port}"
    assert seen["headers"]["x-deployer-job"] == "settle"


def test_post_without_body_still_says_content_length_0(base):
    assert echo(request("POST", base + "/x"))["headers"]["content-length"] == "0"


@pytest.mark.parametrize("path", [
    pytest.param("/a%2Fb/c%20d?x=%2B1&y=a+b&z=%25", id="percent-encoded-path-and-query"),
    pytest.param("/p;params/%7Euser?", id="params-and-empty-query"),
    pytest.param("/?q='\"&r=$x", id="quotes-in-query"),
])
def test_path_and_query_are_sent_byte_for_byte(base, path):
    assert echo(request("GET", base + path))["path"] == path


def test_fragment_is_not_sent_and_an_empty_path_is_slash(base):
    assert echo(request("GET", base + "?a=1#frag"))["path"] == "/?a=1"


def test_non_ascii_in_the_path_is_percent_encoded_as_utf8(base):
    assert echo(request("GET", base + "/é"))["path"] == "/%C3%A9"


def test_userinfo_becomes_basic_auth(base):
    url = base.replace("http://", "http://us%40er:p%3Ass:w@") + "/private"
    seen = echo(request("GET", url))
    assert seen["headers"]["authorization"] == "Basic " + base64.b64encode(b"us@er:p:ss:w").decode()
    assert seen["path"] == "/private"


def test_an_explicit_authorization_header_wins_over_userinfo(base):
    url = base.replace("http://", "http://u:p@") + "/x"
    assert echo(request("GET", url, headers={"Authorization": "Bearer t"}))["headers"]["authorization"] == "Bearer t"


def test_ipv6_literal_url_and_its_host_header():
    try:
        server = serve("::1")
    except OSError:
        pytest.skip("no IPv6 loopback here")
    port = server.server_address[1]
    try:
        seen = echo(request("GET", f"http://[::1]:{port}/v6?x=1"))
        assert seen["headers"]["host"] == f"[::1]:{port}" and seen["path"] == "/v6?x=1"
    finally:
        server.shutdown()


@pytest.mark.parametrize("url, host, port, path", [
    ("http://h", "h", 80, "/"),
    ("https://h:8443/a?b", "h", 8443, "/a?b"),
    ("http://[fe80::1]/x", "fe80::1", 80, "/x"),
    ("HTTP://u:p@h:81", "h", 81, "/"),
])
def test_parse_url(url, host, port, path):
    target = parse_url(url)
    assert (target.host, target.port, target.path) == (host, port, path)


@pytest.mark.parametrize("url", ["ftp://h/", "http://", "http://h:x/", "http://[::1/", "h/path", "http://h:70000/"])
def test_malformed_urls_are_refused(url):
    with pytest.raises(ValueError):
        request("GET", url)


def test_control_characters_in_the_path_are_encoded_not_sent(base):
    assert echo(request("GET", base + "/a\r\nX-Injected: 1"))["path"] == "/a%0D%0AX-Injected:%201"


def test_a_host_with_control_characters_is_refused():
    with pytest.raises(ValueError):
        request("GET", "http://h\r\nX: 1/")


def test_header_injection_is_refused(base):
    with pytest.raises(ValueError):
        request("GET", base, headers={"X-A": "1\r\nX-Injected: 1"})


# --- answers ------------------------------------------------------------------------------


def test_a_redirect_is_returned_not_followed(base, http_server):
    response = request("POST", base + "/redirect")
    assert (response.status, response.body) == (302, b"moved")
    assert http_server.seen == ["/redirect"]


def test_chunked_body_with_extensions_and_trailers(base):
    response = request("GET", base + "/chunked")
    assert (response.status, response.body, response.truncated) == (200, b"hello chunked world", False)


def test_body_until_close_and_no_body_for_204_and_head(base):
    assert request("GET", base + "/until-close").body == b"all of it"
    assert request("GET", base + "/empty") == Response(204, b"", False, pytest.approx(0, abs=5))
    head = request("HEAD", base + "/big")
    assert (head.status, head.body) == (200, b"")


def test_100_continue_is_skipped(base):
    response = request("POST", base + "/continue", body=b"x")
    assert (response.status, response.body) == (201, b"after 100")


def test_a_long_body_is_cut_at_max_body(base):
    response = request("GET", base + "/big", max_body=1000)
    assert (len(response.body), response.truncated) == (1000, True)
    assert request("GET", base + "/big", max_body=5000).truncated is False


def test_an_endless_chunked_body_is_cut_not_buffered(base):
    started = time.monotonic()
    response = request("GET", base + "/endless", max_body=100_000, timeout=(5, 10))
    assert (len(response.body), response.truncated) == (100_000, True)
    assert time.monotonic() - started < 5


# --- time ---------------------------------------------------------------------------------


def test_a_dripping_server_cannot_stretch_the_read_deadline(base):
    started = time.monotonic()
    with pytest.raises(HttpError) as caught:
        request("GET", base + "/drip", timeout=(5, 1.0))
    elapsed = time.monotonic() - started
    assert caught.value.reason == "timed out reading" and caught.value.retryable
    assert 0.9 < elapsed < 2.0, elapsed  # each byte came within 0.1 s: only a total deadline stops it


def test_a_slow_answer_times_out_reading(base):
    with pytest.raises(HttpError) as caught:
        request("GET", base + "/slow-head", timeout=(5, 0.5))
    assert (caught.value.reason, caught.value.retryable) == ("timed out reading", True)


def test_connect_timeout_against_a_full_backlog():
    """A listener that never accepts, with its backlog full, leaves SYNs unanswered."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    fillers = []
    try:
        for _ in range(8):  # fill the accept queue
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(listener.getsockname())
            fillers.append(filler)
        time.sleep(0.1)
        started = time.monotonic()
        with pytest.raises(HttpError) as caught:
            request("GET", "http://127.0.0.1:%d/" % listener.getsockname()[1], timeout=(0.5, 5))
        if caught.value.reason != "timed out connecting":
            pytest.skip(f"this kernel answered instead: {caught.value.reason}")
        assert caught.value.retryable and time.monotonic() - started < 2
    finally:
        for s in fillers + [listener]:
            s.close()


def test_connection_refused_is_retryable():
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    with pytest.raises(HttpError) as caught:
        request("POST", f"http://127.0.0.1:{port}/")
    assert (caught.value.reason, caught.value.retryable) == ("connection failed: connection refused", True)


# --- TLS ----------------------------------------------------------------------------------


def test_https_with_the_services_own_ca(https, pki):
    seen = echo(request("POST", https + "/secure?x=1", body=b"b", ca_file=str(pki.ca)))
    assert seen["path"] == "/secure?x=1" and seen["body"] == "b"


def test_https_against_the_system_store_fails_verification_and_is_not_retryable(https):
    with pytest.raises(HttpError) as caught:
        request("GET", https + "/")
    assert caught.value.reason.startswith("TLS error: certificate verify failed")
    assert caught.value.retryable is False


def test_a_ca_that_did_not_sign_the_server_is_refused(https, pki):
    with pytest.raises(HttpError) as caught:
        request("GET", https + "/", ca_file=str(pki.other_ca))
    assert caught.value.reason.startswith("TLS error: certificate verify failed") and not caught.value.retryable


def test_hostname_is_checked(pki):
    """The certificate names 127.0.0.1, ::1 and localhost; a server at 127.0.0.2 showing it is refused."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki.server_cert, pki.server_key)
    server = serve("127.0.0.2", tls=context)
    try:
        with pytest.raises(HttpError) as caught:
            request("GET", f"https://127.0.0.2:{server.server_address[1]}/", ca_file=str(pki.ca))
        assert "certificate verify failed" in caught.value.reason and not caught.value.retryable
    finally:
        server.shutdown()


def test_mtls_with_a_client_certificate(mtls, pki):
    response = request("GET", mtls + "/m", ca_file=str(pki.ca), client_cert=str(pki.client_cert),
                       client_key=str(pki.client_key))
    assert echo(response)["path"] == "/m"


def test_mtls_without_a_client_certificate_is_refused(mtls, pki):
    with pytest.raises(HttpError) as caught:
        request("GET", mtls + "/m", ca_file=str(pki.ca), timeout=(5, 5))
    assert "TLS" in caught.value.reason or "connection" in caught.value.reason, caught.value.reason


def test_an_unreadable_ca_file_is_a_tls_error_not_retryable(https, tmp_path):
    with pytest.raises(HttpError) as caught:
        request("GET", https + "/", ca_file=str(tmp_path / "absent.pem"))
    assert caught.value.reason.startswith("TLS error") and not caught.value.retryable


# --- cost ---------------------------------------------------------------------------------


def test_importing_it_loads_neither_email_nor_http_client_nor_ssl():
    import subprocess
    import sys

    code = ("import sys, deployer.host.http; "
            "print(sorted(m for m in ('email', 'http.client', 'urllib.request', 'ssl') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
