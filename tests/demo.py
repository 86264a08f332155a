"""The README's demo (not a test): a local cron host, a demo service, ./inventory.ini pushed to it.

    make demo            # boots, pushes, shows list-timers and the first results, then stops
    make demo KEEP=1     # ... and keeps the host running until Ctrl-C, to look around
"""
from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.cronhost import CronHost
from tests.httpserver import RecordingServer, json_reply

REPO = Path(__file__).resolve().parent.parent


def say(text: str) -> None:
    print(f"\n\033[1m{text}\033[0m", flush=True)


def deployer(*args: str, env: dict) -> int:
    print(f"$ deployer {' '.join(shlex.quote(a) for a in args)}", flush=True)
    return subprocess.run([sys.executable, "-m", "deployer", *args], env=env, cwd=REPO).returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", action="store_true", default=bool(os.environ.get("KEEP")),
                        help="keep the host running until Ctrl-C")
    args = parser.parse_args()

    routes = {"/api/settle": json_reply({"code": 0, "data": {"state": "DONE"}}),
              "/api/report": json_reply({"code": 0})}
    workdir = Path(tempfile.mkdtemp(prefix="deployer-demo-"))
    with RecordingServer(routes) as service, CronHost("cron01", workdir=workdir) as host:
        env = dict(os.environ, CRON01_PORT=str(host.port), CRON01_IDENTITY=str(host.key),
                   CRON01_KNOWN_HOSTS=str(host.known_hosts), DEMO_SERVICE_PORT=str(service.port))
        say(f"cron01 is up: a systemd {host.ssh('systemctl --version').stdout.split()[1]} host, "
            f"sshd on 127.0.0.1:{host.port}; the demo service listens on 127.0.0.1:{service.port}")
        deployer("validate", env=env)
        say("What push would change (nothing is installed yet):")
        deployer("plan", "--host", "cron01", env=env)
        say("Push:")
        if deployer("push", "--host", "cron01", env=env) != 0:
            return 1
        say("On the host: systemctl list-timers 'deployer-*'")
        print(host.ssh("systemctl list-timers 'deployer-*'").stdout, flush=True)
        say("Waiting for the settle job's first runs (every 5 seconds)...")
        for request in service.wait_for("/api/settle", count=2, timeout=30):
            print(f"  service received {request.method} {request.path} "
                  f"(Idempotency-Key: {request.headers.get('Idempotency-Key')}, "
                  f"X-Deployer-Epoch: {request.headers.get('X-Deployer-Epoch')})")
        time.sleep(0.5)  # let the second run write its last journal line
        say("Results:")
        deployer("status", "--host", "cron01", env=env)
        deployer("logs", "settle", "--host", "cron01", "-n", "6", env=env)
        say("A second push changes nothing:")
        deployer("push", "--host", "cron01", env=env)
        if args.keep:
            say("The host stays up until Ctrl-C. Try, in another shell:")
            print(f"  {' '.join(host.ssh_args(shared=False))} systemctl list-timers")
            exports = " ".join(f"{k}={shlex.quote(env[k])}" for k in
                               ("CRON01_PORT", "CRON01_IDENTITY", "CRON01_KNOWN_HOSTS", "DEMO_SERVICE_PORT"))
            print(f"  {exports} .venv/bin/deployer status")
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                pass
        say("Stopping cron01.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
