"""Chat robots on loopback that check what a real one checks: token, signature, and answer
the way the real one does (DingTalk and WeCom answer HTTP 200 with an errcode even when
they refuse). Signatures are verified with openssl, independently of trigger.py's code."""
from __future__ import annotations

import base64
import json
import subprocess
import time
from urllib.parse import parse_qs, urlsplit

from tests.httpserver import Recorded, RecordingServer, Reply


def openssl_hmac_b64(key: bytes, message: bytes) -> str:
    digest = subprocess.run(["openssl", "dgst", "-sha256", "-mac", "HMAC", "-macopt", f"hexkey:{key.hex()}",
                             "-binary"], input=message, capture_output=True, check=True).stdout
    return base64.b64encode(digest).decode()


class Robot(RecordingServer):
    """Routes: /robot/send (dingtalk), /cgi-bin/webhook/send (wecom), /hook/<token> (feishu),
    /services/<token> (slack), /webhook (generic). `accepted` holds the messages it took."""

    def __init__(self, token: str = "tok", secret: str = ""):
        super().__init__()
        self.token, self.secret = token, secret
        self.accepted: list[dict] = []
        self.refused: list[str] = []
        self.routes.update({"/robot/send": self._dingtalk, "/cgi-bin/webhook/send": self._wecom,
                            f"/hook/{token}": self._feishu, f"/services/{token}": self._slack,
                            "/webhook": self._webhook})

    def _take(self, record: Recorded, ok: Reply, refusal: str, refuse: Reply) -> Reply:
        if refusal:
            self.refused.append(refusal)
            return refuse
        self.accepted.append(json.loads(record.body))
        return ok

    def _dingtalk(self, record: Recorded) -> Reply:
        query = {k: v[0] for k, v in parse_qs(urlsplit(record.path).query).items()}
        refusal = ""
        if query.get("access_token") != self.token:
            refusal = "token"
        elif self.secret:
            stamp = query.get("timestamp", "0")
            want = openssl_hmac_b64(self.secret.encode(), f"{stamp}\n{self.secret}".encode())
            if query.get("sign") != want:
                refusal = "sign not match"
            elif abs(int(stamp) - time.time() * 1000) > 3600_000:
                refusal = "timestamp"
        return self._take(record, Reply(200, b'{"errcode":0,"errmsg":"ok"}'), refusal,
                          Reply(200, json.dumps({"errcode": 310000, "errmsg": refusal}).encode()))

    def _wecom(self, record: Recorded) -> Reply:
        key = parse_qs(urlsplit(record.path).query).get("key", [""])[0]
        return self._take(record, Reply(200, b'{"errcode":0,"errmsg":"ok"}'), "" if key == self.token else "key",
                          Reply(200, b'{"errcode":93000,"errmsg":"invalid webhook url"}'))

    def _feishu(self, record: Recorded) -> Reply:
        body = json.loads(record.body)
        refusal = ""
        if self.secret:
            want = openssl_hmac_b64(f"{body.get('timestamp')}\n{self.secret}".encode(), b"")
            refusal = "" if body.get("sign") == want else "sign"
        return self._take(record, Reply(200, b'{"code":0,"msg":"success"}'), refusal,
                          Reply(200, b'{"code":19021,"msg":"sign match fail"}'))

    def _slack(self, record: Recorded) -> Reply:
        return self._take(record, Reply(200, b"ok", content_type="text/plain"), "", Reply())

    def _webhook(self, record: Recorded) -> Reply:
        auth = record.headers.get("Authorization", "")
        return self._take(record, Reply(200, b"{}"), "" if auth == f"Bearer {self.token}" else "auth",
                          Reply(401, b"no"))

    def endpoint(self, kind: str) -> str:
        paths = {"dingtalk": "/robot/send", "wecom": "/cgi-bin/webhook/send", "feishu": "/hook/",
                 "slack": "/services/", "webhook": "/webhook"}
        return self.url(paths[kind])

    def wait_accepted(self, count: int, timeout: float = 30.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(self.accepted) < count:
            time.sleep(0.05)
        return list(self.accepted)
