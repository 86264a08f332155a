"""A literal `#` and `;` reach a real service from a real cron host byte for byte (issue 24 item 1)."""
from __future__ import annotations

import pytest

from tests.httpserver import Reply

pytestmark = pytest.mark.e2e


def test_escaped_marks_arrive_byte_for_byte_and_comments_do_not(cron01, server, deployer, write_inventory):
    server.routes["/note;v=1"] = Reply()
    inventory = write_inventory(cron01.inventory_host() + f"""
[job:note]                                    ; a comment on the section
on_calendar = *:*:0/2                         ; every two seconds
url = {server.url("/note;v=1#frag")}
body = {{"note": "batch \\#7 \\; retry", "tag":"#x;y"}}   ; sent as written, less this comment
headers = X-Note: batch \\#7 \\; retry  # two spaces: a comment
    X-Tag: \\#x;y
content_type = text/plain \\; charset=utf-8
""")
    deployer("validate", "-i", inventory, check=True)
    deployer("push", "--host", "cron01", "-i", inventory, check=True)

    request = server.wait_for("/note;v=1", timeout=90)[0]
    assert request.body == b'{"note": "batch #7 ; retry", "tag":"#x;y"}'
    assert request.headers["X-Note"] == "batch #7 ; retry"
    assert request.headers["X-Tag"] == "#x;y"
    assert request.headers["Content-Type"] == "text/plain ; charset=utf-8"


def test_the_issue_inventory_is_refused_before_anything_is_pushed(cron01, server, deployer, write_inventory):
    inventory = write_inventory(cron01.inventory_host() + f"""
[job:note]
on_calendar = *:*:0/2
url = {server.url("/note")}
body = {{"note": "batch #7 ; retry"}}
""")
    result = deployer("push", "--host", "cron01", "-i", inventory, check=False)
    assert result.returncode == 1
    assert ("[job:note] body: '#7 ; retry\"}' would be cut off as a comment (# inside a quoted string): "
            "write \\# for a literal #, or close the quote before a comment") in result.stderr
    assert cron01.ssh("ls /etc/systemd/system/ | grep -c '^deployer-note' || true").stdout.strip() == "0"
