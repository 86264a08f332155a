"""Hostile and odd values on a real host: accepted ones arrive byte for byte, refused ones change
nothing, and no value ever adds a directive or reaches a shell."""
from __future__ import annotations

import re

import pytest

from deployer.host.run import redact_url
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.test_fuzz import legal_url

pytestmark = pytest.mark.e2e


def exec_start_urls(host, jobs: list[str]) -> dict[str, str]:
    """The --url argument of each job as systemd parsed it ($$ is expanded when it execs)."""
    shown = host.ssh("systemctl show -p Id,ExecStart " + " ".join(f"deployer-{j}.service" for j in jobs)).stdout
    urls = {}
    for block in shown.strip().split("\n\n"):
        unit = re.search(r"^Id=deployer-(.+)\.service$", block, re.M).group(1)
        argv = re.search(r"argv\[\]=(.*?) ; ignore_errors", block).group(1).split(" ")
        urls[unit] = argv[argv.index("--url") + 1].replace("$$", "$")
    return urls


@settings(max_examples=3, deadline=None, suppress_health_check=list(HealthCheck))
@given(urls=st.lists(legal_url, min_size=8, max_size=8, unique=True))
def test_odd_urls_reach_the_trigger_byte_for_byte(shared_cron01, deployer, write_inventory, urls):
    jobs = {f"odd{i}": url for i, url in enumerate(urls)}
    body = "".join(f"[job:{name}]\nschedule = 0 3 * * *\nurl = {url}\nretries = 0\ntimeout = 30s\n"
                   for name, url in jobs.items())
    deployer("push", "-i", write_inventory(shared_cron01.inventory_host() + body), check=True)

    # A URL that carries a secret (a user name, a password, a secret-named query value) reaches the
    # unit redacted and the trigger whole, as a credential (issue 22 item 3): byte for byte either way.
    shown = {name: redact_url(url) for name, url in jobs.items()}
    assert exec_start_urls(shared_cron01, list(jobs)) == shown
    ran = deployer("run", "odd0", "-i", write_inventory(shared_cron01.inventory_host() + body), check=False)
    assert f"POST {shown['odd0']} -> " in ran.stdout, "the trigger logs the URL it was given (redacted)"


@pytest.mark.parametrize("value", [
    pytest.param("http://h/x\nExecStartPre=/bin/touch /tmp/pwned", id="newline-directive"),
    pytest.param("http://h/x\\\nExecStartPre=/bin/touch /tmp/pwned", id="continuation"),
    pytest.param("http://h/$(touch /tmp/pwned)", id="shell"),
    pytest.param("http://h/`touch /tmp/pwned`", id="backticks"),
])
def test_injection_through_an_environment_variable_is_refused_or_inert(shared_cron01, deployer, write_inventory,
                                                                       server, value):
    path = write_inventory(shared_cron01.inventory_host() + f"[job:safe]\nschedule = 0 3 * * *\nurl = {server.url('/s')}\n")
    deployer("push", "-i", path, check=True)
    before = shared_cron01.ssh("sha256sum /etc/systemd/system/deployer-*").stdout
    write_inventory(shared_cron01.inventory_host() + "[job:evil]\nschedule = 0 3 * * *\nurl = ${EVIL}\nretries = 0\n"
                    "timeout = 3s\n")

    result = deployer("push", "-i", path, env={"EVIL": value}, check=False)
    if result.returncode == 0:  # accepted: it must be inert data, delivered as one argument
        assert exec_start_urls(shared_cron01, ["evil"]) == {"evil": value}
        deployer("run", "evil", "-i", path, env={"EVIL": value}, check=False)
    else:
        assert result.returncode == 1 and result.stderr.count("\n") == 1
        assert "[job:evil] url:" in result.stderr and "Traceback" not in result.stderr
        assert shared_cron01.ssh("sha256sum /etc/systemd/system/deployer-*").stdout == before
    assert shared_cron01.ssh("test -e /tmp/pwned", check=False).returncode == 1, "an injected command ran"
    assert shared_cron01.ssh("grep -l ExecStartPre /etc/systemd/system/deployer-* || true").stdout == ""
