"""A reference service that makes deployer's "once" hold at the service (docs/receiving.md).

Standard library only. The core -- `verify_v2`, `parse_request` and the `Guard` (fence + claim
in one transaction, then `finish`) -- knows nothing about http.server: a Flask or Django view
calls the same three steps with its own request object. The server around it is the rest.

    python3 once_service.py --port 0 --db /tmp/once.db [--secret-file KEY] [--work-seconds 2]
"""
from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import re
import sqlite3
import threading
import time
import uuid
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# 18 digits: an epoch (milliseconds) always fits a signed 64-bit integer, here and in Java.
EPOCH = re.compile(r"[0-9]{1,18}")
SCHEMA = """
CREATE TABLE IF NOT EXISTS epochs (job TEXT PRIMARY KEY, epoch INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS runs (key TEXT PRIMARY KEY, state TEXT NOT NULL CHECK (state IN ('running', 'done')),
    status INTEGER, body TEXT, location TEXT UNIQUE, started REAL NOT NULL);
CREATE TABLE IF NOT EXISTS executions (key TEXT PRIMARY KEY, count INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS requests (id INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT, epoch INTEGER,
    method TEXT NOT NULL, path TEXT NOT NULL, answered INTEGER NOT NULL);
"""


def verify_v2(key: bytes, method: str, target: str, headers, body: bytes, max_age: int = 300) -> bool:
    """headers: a case-insensitive mapping (Flask's or Django's request.headers, http.server's)."""
    stamp = headers.get("X-Deployer-Timestamp", "")
    if not re.fullmatch(r"[0-9]{1,12}", stamp) or abs(time.time() - int(stamp)) > max_age:
        return False
    job, slot, key_ = (headers.get(h, "") for h in ("X-Deployer-Job", "X-Deployer-Slot", "Idempotency-Key"))
    if key_ and key_ != job + "/" + slot:
        return False  # the slot is signed as the key's tail: a re-aimed X-Deployer-Slot is refused
    signed = ("X-Deployer-Run-Id", "X-Deployer-Job", "Idempotency-Key", "X-Deployer-Epoch")
    message = "\n".join(["v2", method, target, stamp, *(headers.get(h, "") for h in signed),
                         hashlib.sha256(body).hexdigest()])
    expected = "v2=" + hmac.new(key, message.encode(), hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected.encode(), headers.get("X-Deployer-Signature-V2", "").encode())


@dataclass(frozen=True)
class Call:
    """What the guard needs from a request (parse_request builds it from the headers)."""
    method: str
    path: str
    job: str
    key: str | None      # None: a legacy caller without Idempotency-Key, executed every time
    epoch: int | None    # None: no X-Deployer-Epoch, nothing to fence


@dataclass(frozen=True)
class Answer:
    status: int
    body: dict | str
    headers: dict = field(default_factory=dict)
    execute: bool = False   # True: the caller owns the key now; run the work, then Guard.finish

    def text(self) -> str:
        return self.body if isinstance(self.body, str) else json.dumps(self.body)


def parse_request(method: str, target: str, headers) -> Call | Answer:
    epoch = headers.get("X-Deployer-Epoch", "")
    if epoch and not EPOCH.fullmatch(epoch):
        return Answer(400, {"error": "bad epoch"})
    return Call(method, target, headers.get("X-Deployer-Job", ""),
                headers.get("Idempotency-Key") or None, int(epoch) if epoch else None)


class Guard:
    """Fence and claim in the service's own database. One connection per call: sqlite3
    connections are not shared between threads, and each call is one short transaction."""

    def __init__(self, path: str):
        self.path = path
        with closing(self._db()) as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)

    def _db(self) -> sqlite3.Connection:
        # isolation_level=None: we issue BEGIN IMMEDIATE ourselves, so the write lock is taken
        # before the reads -- two duplicates cannot both read "no row" and both insert.
        return sqlite3.connect(self.path, timeout=30, isolation_level=None)

    @contextmanager
    def _transaction(self):
        db = self._db()
        try:
            db.execute("BEGIN IMMEDIATE")
            yield db
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        finally:
            db.close()

    def admit(self, call: Call, mode: str = "sync") -> Answer:
        """Fence, then claim `call.key` (or find its claim): one transaction. `mode` is "sync",
        "async" (answer 202 and run the work in the background) or "poll" (GET /operations/<id>)."""
        with self._transaction() as db:
            answer = self._fence(db, call) or self._claim(db, call, mode)
            self._log(db, call, answer.status)
            return answer

    def _fence(self, db, call: Call) -> Answer | None:
        if call.epoch is None or not call.job:
            return None
        row = db.execute("SELECT epoch FROM epochs WHERE job = ?", (call.job,)).fetchone()
        if row and row[0] > call.epoch:
            # X-Deployer-Epoch on a 409 is what tells the trigger "you lost the job", as opposed
            # to "your earlier attempt is still running" (409 without it).
            return Answer(409, {"error": "fenced", "job": call.job, "epoch": row[0], "yours": call.epoch},
                          {"X-Deployer-Epoch": str(row[0])})
        db.execute("INSERT INTO epochs VALUES (?, ?) ON CONFLICT (job) DO UPDATE SET epoch = "
                   "max(epoch, excluded.epoch)", (call.job, call.epoch))
        return None

    def _claim(self, db, call: Call, mode: str) -> Answer:
        if mode == "poll":   # never claims, only reads
            row = db.execute("SELECT key, state, status, body FROM runs WHERE location = ?",
                             (call.path,)).fetchone()
            if row is None:
                return Answer(404, {"error": "no such operation"})
            if row[1] == "running":
                return Answer(202, {"state": "running", "key": row[0]}, {"Retry-After": "1"})
            return Answer(row[2], row[3])
        if call.key is None:
            return Answer(200, "", execute=True)
        location = f"/operations/{uuid.uuid4().hex}" if mode == "async" else None
        # The primary key is the claim: whoever inserts the row runs the work, once.
        inserted = db.execute("INSERT INTO runs (key, state, location, started) VALUES (?, 'running', ?, ?) "
                              "ON CONFLICT (key) DO NOTHING", (call.key, location, time.time())).rowcount
        if inserted:
            return self._accepted(call.key, location, execute=True) if location else Answer(200, "", execute=True)
        state, status, body, location = db.execute(
            "SELECT state, status, body, location FROM runs WHERE key = ?", (call.key,)).fetchone()
        if state == "done":
            return Answer(status, body, {"Idempotent-Replayed": "true"})
        if location:
            return self._accepted(call.key, location)
        return Answer(409, {"error": "in progress", "key": call.key}, {"Retry-After": "1"})

    @staticmethod
    def _accepted(key: str, location: str, execute: bool = False) -> Answer:
        return Answer(202, {"state": "running", "key": key}, {"Location": location, "Retry-After": "1"},
                      execute=execute)

    def finish(self, key: str | None, status: int = 200) -> Answer:
        """Count the execution and store the answer every later request for the key gets."""
        with self._transaction() as db:
            count = db.execute("INSERT INTO executions VALUES (?, 1) ON CONFLICT (key) DO UPDATE "
                               "SET count = count + 1 RETURNING count", (key or "-",)).fetchone()[0]
            answer = Answer(status, {"code": 0, "key": key or "-", "executions": count})
            if key is not None:
                db.execute("UPDATE runs SET state = 'done', status = ?, body = ? WHERE key = ?",
                           (answer.status, answer.text(), key))
            return answer

    def log(self, call: Call, status: int) -> None:
        with closing(self._db()) as db:
            self._log(db, call, status)

    @staticmethod
    def _log(db, call: Call, status: int) -> None:
        db.execute("INSERT INTO requests (key, epoch, method, path, answered) VALUES (?, ?, ?, ?, ?)",
                   (call.key or "-", call.epoch, call.method, call.path, status))

    def executions(self) -> dict:
        with closing(self._db()) as db:
            return dict(db.execute("SELECT key, count FROM executions ORDER BY key"))

    def requests(self) -> list:
        with closing(self._db()) as db:
            rows = db.execute("SELECT key, epoch, method, path, answered FROM requests ORDER BY id")
            return [dict(zip(("key", "epoch", "method", "path", "answered"), row)) for row in rows]


class Handler(BaseHTTPRequestHandler):
    guard: Guard
    secret: bytes | None
    work_seconds: float
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        if self.path == "/_executions":
            return self._send(Answer(200, self.guard.executions()))
        if self.path == "/_requests":
            return self._send(Answer(200, self.guard.requests()))
        self._guarded()

    def do_POST(self):
        self._guarded()

    def _guarded(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        route = re.fullmatch(r"/(sync|async|operations)/[^/?]+(\?.*)?", self.path)
        mode = {"sync": "sync", "async": "async", "operations": "poll"}.get(route and route[1])
        if mode is None or (self.command == "GET") != (mode == "poll"):
            return self._send(Answer(404, {"error": "not found"}))
        call = parse_request(self.command, self.path, self.headers)
        if isinstance(call, Answer):
            return self._send(call)
        if self.secret is not None and not verify_v2(self.secret, self.command, self.path, self.headers, body):
            self.guard.log(call, 401)
            return self._send(Answer(401, {"error": "bad signature"}))
        answer = self.guard.admit(call, mode)
        if not answer.execute:
            return self._send(answer)
        if answer.status == 202:   # long work: answer now, run it in the background
            threading.Thread(target=self._work, args=(call.key,), daemon=True).start()
            return self._send(answer)
        self._send(self._work(call.key))

    def _work(self, key: str | None) -> Answer:
        time.sleep(self.work_seconds)
        return self.guard.finish(key)

    def _send(self, answer: Answer):
        data = answer.text().encode()
        self.send_response(answer.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in answer.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):   # the requests table is the log
        pass


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--db", required=True)
    parser.add_argument("--secret-file")
    parser.add_argument("--work-seconds", type=float, default=0)
    args = parser.parse_args(argv)
    Handler.guard = Guard(args.db)
    Handler.secret = open(args.secret_file, "rb").read().rstrip(b"\r\n") if args.secret_file else None
    Handler.work_seconds = args.work_seconds
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    print(f"listening on {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
