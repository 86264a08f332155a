"""The inventory `deployer init` writes: one host, one job, every line a newcomer needs explained."""
from __future__ import annotations

from .errors import DeployerError
from .inventory import NAME

STARTER = """\
# The deployer's inventory: the cron hosts, alert channels and jobs (README.md lists every key).
# Check it offline with `deployer validate`; `deployer plan` shows what `deployer push` would do.
# A comment is a line starting with # or ;. A value is read up to the end of its line.

[host:{host}]
# The machine whose systemd runs the jobs, reached over SSH (as `ssh` would: ~/.ssh/config too).
address = {address}
# user = ops
# port = 22
# identity_file = ~/.ssh/cron
# sudo = false

[defaults]
# Every job inherits these unless it sets its own.
timezone = UTC
timeout = 60s
# Extra attempts after a failure. A POST the service may have started is not sent again unless
# the job says idempotent = true (the service dedupes on its Idempotency-Key: docs/receiving.md).
retries = 0
# alert = ops

# An alert channel: a failed run is reported there. The token is read from the environment at
# push time (export DINGTALK_TOKEN=...) and never written into a unit file.
# [alert:ops]
# type = dingtalk
# token = ${{DINGTALK_TOKEN}}

[job:example]
# When: cron (5 fields, here every hour on the hour), a @macro (@daily), Quartz (6-7 fields),
# or instead on_calendar = a systemd calendar. `deployer schedule '0 * * * *'` shows the next runs.
schedule = 0 * * * *
# What: one HTTP request; success is the expected status (and JSON, if given).
url = http://settle-service:8080/api/settle
method = POST
expect_status = 2xx
# expect_json = code=0
"""


def starter_inventory(host: str, address: str) -> str:
    if not NAME.match(host):
        raise DeployerError(f"--host {host!r}: a host name must match [a-z0-9][a-z0-9-]{{0,62}}")
    if not address or any(c.isspace() or c in "#;[]" for c in address):
        raise DeployerError(f"--address {address!r}: give a host name or an IP address")
    return STARTER.format(host=host, address=address)
