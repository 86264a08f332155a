"""Calling protected services from a real cron host (issue 11): an HTTPS service with its own CA
that demands a client certificate, a bearer token and a valid signature; the secrets stay out of
unit files, process arguments, `systemctl show`, the journal and deployer's output."""
from __future__ import annotations

import re
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.tls import make_pki

pytestmark = pytest.mark.e2e

BEARER = "bearer-SECRET-51c0ffee"
SIGNING_KEY = "signing-SECRET-7e11a"
BODY_SECRET = "body-SECRET-90210"
SECRETS = (BEARER, SIGNING_KEY, BODY_SECRET)


def documented_verify():
    """The service's check exactly as docs/signing.md gives it."""
    text = (REPO / "docs" / "signing.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    namespace: dict = {}
    exec(code, namespace)
    return namespace["verify"]


class ProtectedService:
    """HTTPS on loopback, client certificate required; answers 401 unless token and signature hold."""

    def __init__(self, pki, on_request=lambda: None):
        self.received: list[dict] = []
        verify, seen = documented_verify(), set()
        service = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = dict(self.headers)
                signed = verify(SIGNING_KEY.encode(), self.command, self.path, headers, body, seen)
                authorized = headers.get("Authorization") == f"Bearer {BEARER}"
                peer = self.connection.getpeercert() or {}
                service.received.append({"signed": signed, "authorized": authorized, "body": body,
                                         "client": dict(x[0] for x in peer.get("subject", ())).get("commonName"),
                                         "processes": on_request()})
                ok = signed and authorized
                if ok:
                    seen.add(headers["X-Deployer-Run-Id"])
                answer = b'{"code":0}' if ok else b'{"code":401}'
                self.send_response(200 if ok else 401)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args):
                pass

        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki.ca))
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_cert_chain(str(pki.server_cert), str(pki.server_key))
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.httpd.server_address[1]}/api/settle?batch=7"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()


def test_mtls_bearer_and_signature_with_secrets_out_of_sight(shared_cron01, deployer, write_inventory, tmp_path):
    pki = make_pki(tmp_path / "pki")
    processes: list[str] = []
    service = ProtectedService(pki, on_request=lambda: processes.append(shared_cron01.ssh("ps -eo args").stdout))
    try:
        path = write_inventory(shared_cron01.inventory_host() + f"""
[job:settle]
schedule = 0 3 * * *
url = {service.url}
retries = 0
headers = Authorization: Bearer ${{SETTLE_TOKEN}}
    X-Tenant: acme
body = {{"batch": 7, "note": "${{BODY_NOTE}}"}}
ca_file = {pki.ca}
client_cert = {pki.client_cert}
client_key = {pki.client_key}
sign_secret = ${{SIGNING_KEY}}

[job:unsigned]
schedule = 0 3 * * *
url = {service.url}
retries = 0
ca_file = {pki.ca}
client_cert = {pki.client_cert}
client_key = {pki.client_key}
""")
        env = {"SETTLE_TOKEN": BEARER, "SIGNING_KEY": SIGNING_KEY, "BODY_NOTE": BODY_SECRET}
        outputs = [deployer("plan", "-i", path, env=env, check=True),
                   deployer("push", "-i", path, env=env, check=True),
                   deployer("run", "settle", "-i", path, env=env, check=True),
                   deployer("run", "unsigned", "-i", path, env=env, check=False)]

        signed, unsigned = service.received
        assert signed["authorized"] and signed["signed"] and signed["client"] == "client"
        assert signed["body"] == f'{{"batch": 7, "note": "{BODY_SECRET}"}}'.encode()
        assert not unsigned["signed"] and not unsigned["authorized"]
        assert outputs[3].returncode == 1 and "401" in outputs[3].stdout

        assert "trigger.pyz --job settle" in processes[0], "ps must have run while the trigger ran"
        units = shared_cron01.ssh("cat /etc/systemd/system/deployer-*").stdout
        shown = shared_cron01.ssh("systemctl show deployer-settle.service deployer-settle.timer").stdout
        journal = shared_cron01.ssh("journalctl --no-pager -o verbose").stdout
        assert "LoadCredential=headers:/etc/deployer/credentials/jobs.settle.headers" in units
        for secret in SECRETS:
            for place, text in (("a unit file", units), ("systemctl show", shown), ("the journal", journal),
                                ("process arguments", "".join(processes)),
                                ("deployer's output", "".join(o.stdout + o.stderr for o in outputs))):
                assert secret not in text, f"{secret} in {place}"
        assert shared_cron01.ssh("stat -c '%a %U' /etc/deployer/credentials/jobs.settle.headers").stdout.split() == \
            ["600", "root"]
    finally:
        service.close()
