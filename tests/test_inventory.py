from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deployer import inventory
from deployer.errors import InventoryError
from deployer.models import Host, Job

HOST = "[host:cron01]\naddress = 10.0.0.5\n"
ENV = {"DINGTALK_TOKEN": "tok-123", "DINGTALK_SECRET": "sec-456"}


def parse(text: str, env=ENV):
    return inventory.parse(text, "inv.ini", env)


def problems(text: str, env=ENV) -> list[str]:
    with pytest.raises(InventoryError) as caught:
        parse(text, env)
    return caught.value.lines()


def test_contract_example_parses_with_defaults_inherited():
    inv = parse(HOST + """
[defaults]                    ; inherited by every job unless it overrides
timezone = Asia/Shanghai
timeout = 90s
retries = 1
alert = ops

[alert:ops]
type = dingtalk
token = ${DINGTALK_TOKEN}     ; secret
secret = ${DINGTALK_SECRET}
endpoint = https://oapi.dingtalk.com/robot/send

[job:settle-hourly]
schedule = 0 * * * *
url = http://settle-service:8080/api/settle
expect_json = code=0, data.state="DONE"

[job:report]
on_calendar = Mon..Fri *-*-* 09:00:00
  Sat *-*-* 10:00:00
url = https://report/api
method = get
timeout = 5m
alert =
""")
    assert inv.hosts == (Host(name="cron01", address="10.0.0.5"),)
    settle, report = inv.jobs
    assert settle == Job(name="settle-hourly", url="http://settle-service:8080/api/settle", host="cron01",
                         schedule="0 * * * *", timezone="Asia/Shanghai", timeout=90, retries=1,
                         alert="ops", expect_json='code=0, data.state="DONE"')
    assert report.on_calendar == ("Mon..Fri *-*-* 09:00:00", "Sat *-*-* 10:00:00")
    assert (report.method, report.timeout, report.alert) == ("GET", 300, None)
    alert = inv.alert("ops")
    assert alert.token == "tok-123" and alert.secret == "sec-456"
    assert "tok-123" not in repr(alert), "a secret must never show in a repr"


@pytest.mark.parametrize("text, expected", [
    pytest.param("[job:a]\nschedule = 0 * * * *\nurl = http://x/\nretires = 2\n",
                 "inv.ini:6: [job:a] retires: unknown key (did you mean 'retries'?)", id="typo-suggests"),
    pytest.param("[jobs:a]\nurl = http://x/\n",
                 "inv.ini:3: [jobs:a]: unknown section; use [host:NAME], [alert:NAME], [job:NAME] or "
                 "[defaults] (did you mean 'job'?)", id="unknown-section"),
    pytest.param("[job:a]\nschedule = 0 * * * *\nurl = ftp://x/\n",
                 "inv.ini:5: [job:a] url: 'ftp://x/' is not an http:// or https:// URL with a host", id="url-scheme"),
    pytest.param("[job:a]\nschedule = 0 * * * *\n",
                 "inv.ini:3: [job:a] url: is required", id="missing-url"),
    pytest.param("[job:a]\nurl = http://x/\n",
                 "inv.ini:3: [job:a] schedule: give exactly one of schedule (cron), on_calendar (systemd) or after (another job)",
                 id="no-schedule"),
    pytest.param("[job:a]\nafter = nope\nurl = http://x/\n",
                 "inv.ini:4: [job:a] after: no [job:nope]", id="chain-after-unknown-job"),
    pytest.param("[job:a]\nschedule = 0 * * * *\nurl = http://x/\non_failure_run = clean\n"
                 "[job:cleanup]\nschedule = 0 * * * *\nurl = http://y/\n",
                 "inv.ini:6: [job:a] on_failure_run: no [job:clean] (did you mean 'cleanup'?)",
                 id="chain-on-failure-run-unknown-job"),
    pytest.param("[job:a]\nschedule = 0 * * * *\nurl = http://x/\n[job:b]\nafter = a\nschedule = 5 * * * *\n"
                 "url = http://y/\n",
                 "inv.ini:8: [job:b] schedule: a job started by after has no schedule of its own (it runs for its "
                 "parent's slot): remove it", id="chain-after-with-its-own-schedule"),
    pytest.param("[job:a]\nschedule = 0 * * * *\nurl = http://x/\non_failure_run = b\n[job:b]\n"
                 "on_calendar = hourly\nurl = http://y/\n",
                 "inv.ini:8: [job:b] on_calendar: a job started by another job's on_failure_run has no schedule of "
                 "its own (it runs for its parent's slot): remove it", id="chain-on-failure-target-with-a-calendar"),
    pytest.param("[job:a]\nafter = b\nurl = http://x/\n[job:b]\nafter = a\nurl = http://y/\n",
                 "inv.ini:4: [job:a] after: is part of a cycle (a -> b): after/on_failure_run must not loop",
                 id="chain-cycle"),
    pytest.param("[job:a]\nafter = a\nurl = http://x/\n",
                 "inv.ini:4: [job:a] after: names the job itself (a cycle)", id="chain-self"),
    pytest.param("[job:a]\nschedule = 0 25 * * *\nurl = http://x/\n",
                 "inv.ini:4: [job:a] schedule: cron '0 25 * * *': hour field: 25 is outside 0-23", id="bad-cron"),
    pytest.param("[job:a]\nschedule = 0 * * * *\nurl = http://x/\ntimeout = soon\n",
                 "inv.ini:6: [job:a] timeout: 'soon' is not a duration (e.g. 500ms, 90s, 5m, 1h30m, 7d; units: ms, "
                 "s, m, h, d)", id="duration"),
    pytest.param("[job:a]\nschedule = 0 * * * *\nurl = http://x/\ntimezone = Mars/Olympus\n",
                 "inv.ini:6: [job:a] timezone: 'Mars/Olympus' is not an IANA time zone (e.g. Asia/Shanghai, UTC)",
                 id="timezone"),
    pytest.param("[job:a]\nschedule = 0 * * * *\nurl = http://x/\nalert = opz\n",
                 "inv.ini:6: [job:a] alert: no [alert:opz]", id="missing-alert"),
    pytest.param("[job:A_b]\nschedule = 0 * * * *\nurl = http://x/\n",
                 "inv.ini:3: [job:A_b]: name 'A_b' must match [a-z0-9][a-z0-9-]{0,62} (did you mean [job:a-b]?)",
                 id="job-name"),
    pytest.param("[job:../etc]\nschedule = 0 * * * *\nurl = http://x/\n",
                 "inv.ini:3: [job:../etc]: name '../etc' must match [a-z0-9][a-z0-9-]{0,62}", id="path-escape"),
    pytest.param("[alert:ops]\ntype = dingtalk\ntoken = $DINGTALK_TOKEN\n",
                 "inv.ini:5: [alert:ops] token: '$DINGTALK_TOKEN' is taken literally: write ${DINGTALK_TOKEN} to "
                 "read it from the environment", id="shell-style-variable"),
    pytest.param("[alert:ops]\ntype = dingtalk\ntoken = ${NOPE}\n",
                 "inv.ini:5: [alert:ops] token: environment variable NOPE is not set", id="unset-variable"),
    pytest.param("[job:a]\nschedule = 0 * * * *\nurl = http://x/\nexpect_json = code=ok\n",
                 "inv.ini:6: [job:a] expect_json: value of 'code' is not a JSON literal (quote strings: code=\"DONE\")",
                 id="expect-json"),
    pytest.param("[job:a]\nschedule = 0 * * * *\nurl = http://x/\nexpect_json = code == 0\n",
                 "inv.ini:6: [job:a] expect_json: `==` is not the syntax: a rule is path=value with one `=`; "
                 "write code=0", id="expect-json-double-equals"),
    pytest.param("[job:a]\nschedule = @weekdays\nurl = http://x/\n",
                 "inv.ini:4: [job:a] schedule: unknown macro @weekdays (did you mean @weekly?)", id="unknown-macro"),
    pytest.param("[job:a]\non_calendar = @weekdays\nurl = http://x/\n",
                 "inv.ini:4: [job:a] on_calendar: unknown macro @weekdays (did you mean @weekly?); a macro goes in "
                 "schedule =, on_calendar takes systemd calendar lines", id="unknown-macro-on-calendar"),
    pytest.param("[job:a]\non_calendar = @weekly\nurl = http://x/\n",
                 "inv.ini:4: [job:a] on_calendar: @weekly is a cron macro: write schedule = @weekly; on_calendar "
                 "takes systemd calendar lines", id="cron-macro-on-calendar"),
    pytest.param("[job:a]\nschedule = 0 * * * *\nurl = http://x/\nalert_after = 0\n",
                 "inv.ini:6: [job:a] alert_after: '0' is not a whole number from 1 to 1000 (failed runs in a row "
                 "before the first alert)", id="alert-after"),
    pytest.param("[defaults]\nalert_repeat = hourly\n[job:a]\nschedule = 0 * * * *\nurl = http://x/\n",
                 "inv.ini:4: [defaults] alert_repeat: 'hourly' is not each, never or a duration (e.g. 500ms, 90s, "
                 "5m, 1h30m, 7d; units: ms, s, m, h, d)", id="alert-repeat-in-defaults"),
    pytest.param("[job:a]\nschedule = 0 * * * *\nurl = http://x/\nalert_repeat = 30s\n",
                 "inv.ini:6: [job:a] alert_repeat: '30s' is under 1m: reminders that often are `each` (every "
                 "failed run)", id="alert-repeat-too-often"),
    pytest.param("[job:a]\nschedule = 0 * * * *\nurl = http://x/\nalert_late = soon\n",
                 "inv.ini:6: [job:a] alert_late: 'soon' is not a duration (e.g. 500ms, 90s, 5m, 1h30m, 7d; units: "
                 "ms, s, m, h, d)", id="issue23-alert-late"),
    pytest.param("[defaults]\nalert_long = 10s\n[job:a]\nschedule = 0 * * * *\nurl = http://x/\n",
                 "inv.ini:4: [defaults] alert_long: '10s' is under 30s: the host looks every 15s",
                 id="issue23-alert-long-too-short-in-defaults"),
    pytest.param("[defaults]\ncatch_up = twice\n[job:a]\nschedule = 0 * * * *\nurl = http://x/\n",
                 "inv.ini:4: [defaults] catch_up: 'twice' is not once, none or a duration (e.g. 500ms, 90s, 5m, "
                 "1h30m, 7d; units: ms, s, m, h, d)", id="issue23-catch-up-in-defaults"),
    pytest.param("[job:a]\nschedule = 0 * * * *\nurl = http://x/\ncatch_up = 30s\n",
                 "inv.ini:6: [job:a] catch_up: '30s' is under 1m: a slot that late is on time (use none to skip "
                 "every missed slot)", id="issue23-catch-up-too-short"),
    pytest.param("[job:a]\nschedule = 0 * * * *\nurl = http://x/\nconcurrency = allow\n",
                 "inv.ini:6: [job:a] concurrency: 'allow' is not one of forbid, replace", id="issue23-concurrency"),
    pytest.param("[job:a]\nschedule = 0 * * * *\nschedule = 1 * * * *\nurl = http://x/\n",
                 "inv.ini:5: [job:a] schedule: appears twice; the first at line 4", id="duplicate-key"),
    pytest.param("[job:a]\nschedule = 0 * * * *\nurl = http://x/\n\n[job:b]\nschedule = 0 * * * *\n"
                 "url = http://y/\n\n[job:a]\nschedule = 5 * * * *\n",
                 "inv.ini:11: [job:a]: duplicates the one at line 3", id="duplicate-job"),
    pytest.param("[job:a]\nschedule = 0 * * * *\nurl = http://x/\n[job: a]\nschedule = 0 * * * *\nurl = http://y/\n",
                 "inv.ini:6: [job: a]: the same section as [job:a] (spaces around the name do not count)",
                 id="probe16-14-same-job-with-a-space"),
    pytest.param("[job:a]\nschedule = 0 * * * *\nurl = http://x/\n[job:\u00a0a]\nschedule = 0 * * * *\nurl = http://y/\n",
                 "inv.ini:6: [job:\u00a0a]: the same section as [job:a] (spaces around the name do not count)",
                 id="probe16-14-same-job-with-a-no-break-space"),
    pytest.param("[job:a]\nschedule = 0 * * * *\nurl = http://x/" + "a" * 150_000 + "\n",
                 "inv.ini:5: [job:a] url: is 150009 characters long; at most 8192",
                 id="probe16-15-a-url-longer-than-a-command-line-argument"),
])
def test_each_mistake_is_one_line_naming_file_section_and_key(text, expected):
    assert problems(HOST + text) == [expected]


def test_every_problem_is_reported_at_once():
    found = problems(HOST + "[job:a]\nschedul = 0 * * * *\nurl = nope\n[job:b]\nschedule = 0 * * *\nurl = http://x/\n")
    assert [p.split(": ")[1] for p in found] == [
        "[job:a] schedul", "[job:a] url", "[job:a] schedule", "[job:b] schedule"]


def test_several_hosts_require_each_job_to_name_one():
    two = HOST + "[host:cron02]\naddress = 10.0.0.6\n"
    assert problems(two + "[job:a]\nschedule = 0 * * * *\nurl = http://x/\n") == [
        "inv.ini:5: [job:a] host: is required: the inventory has 2 [host:*] sections; "
        "set host here or in [defaults]"]
    inv = parse(two + "[defaults]\nhost = cron02\n[job:a]\nschedule = 0 * * * *\nurl = http://x/\n")
    assert inv.jobs_for("cron02")[0].name == "a" and inv.jobs_for("cron01") == ()


def test_odd_but_legal_url_is_kept_byte_for_byte():
    odd = "https://h.example/a%20b/$x;y?q='\"&z=\\é#frag"
    inv = parse(HOST + f"[job:a]\nschedule = 0 * * * *\nurl = {odd}\n")
    assert inv.jobs[0].url == odd


def test_a_control_character_in_a_value_is_refused():
    assert "contains a control character" in problems(HOST + "[job:a]\nschedule = 0 * * * *\nurl = http://x/\n"
                                                      "expect_status = 2xx\x1b\n")[0]


def test_unreadable_file_is_a_clear_error(tmp_path):
    with pytest.raises(InventoryError) as caught:
        inventory.load(str(tmp_path / "missing.ini"))
    assert caught.value.lines() == [f"{tmp_path / 'missing.ini'}: cannot read: No such file or directory "
                                    "(give the inventory with -i FILE or $DEPLOYER_INVENTORY)"]


@pytest.mark.parametrize("key, value, message", [
    pytest.param("memory_max", "lots", "'lots' is not a size (e.g. 512M, 2G)", id="memory"),
    pytest.param("memory_max", "0M", "'0M' is not a size (e.g. 512M, 2G)", id="memory-zero"),
    pytest.param("cpu_weight", "0", "'0' is not a whole number from 1 to 10000", id="cpu-weight"),
    pytest.param("tasks_max", "-1", "'-1' is not a whole number from 1 to 4194304", id="tasks"),
    pytest.param("sandbox", "none", "'none' is not one of strict, fast", id="sandbox"),
    pytest.param("lease", "5s", "'5s' must be between 10s and 7d", id="lease-too-short"),
    pytest.param("lease", "8d", "'8d' must be between 10s and 7d", id="lease-too-long"),
    pytest.param("lease", "soon", "'soon' is not a duration (e.g. 500ms, 90s, 5m, 1h30m, 7d; units: ms, s, m, h, d)",
                 id="lease-not-a-duration"),
])
def test_host_ceiling_values(key, value, message):
    assert problems(f"{HOST}{key} = {value}\n") == [f"inv.ini:3: [host:cron01] {key}: {message}"]


def test_a_hosts_lease_is_5_minutes_unless_it_says_otherwise():
    assert parse(HOST).hosts[0].lease == 300.0
    assert parse(HOST + "lease = 1h30m\n").hosts[0].lease == 5400.0
    assert parse(HOST + "lease = 7d\n").hosts[0].lease == 7 * 86400.0


def test_a_timeout_takes_days_as_history_since_does():
    """Issue 24 item 8: `timeout = 1d` was refused ('not a duration') while `--since 7d` took `d`."""
    assert parse(f"{HOST}[job:a]\nschedule = 0 * * * *\nurl = http://x/\ntimeout = 1d\n").jobs[0].timeout == 86400


def test_an_identity_file_that_cannot_be_read_is_refused_like_a_ca_file(tmp_path, monkeypatch):
    """Issue 24 item 8: `validate` passed a missing identity_file; `push` found it at the host."""
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".ssh").mkdir()
    (tmp_path / ".ssh" / "cron").write_text("a key\n")
    assert parse(HOST + "identity_file = ~/.ssh/cron\n").hosts[0].identity_file == "~/.ssh/cron"
    assert problems(HOST + "identity_file = ~/.ssh/crn\n") == [
        f"inv.ini:3: [host:cron01] identity_file: cannot read ~/.ssh/crn ({tmp_path}/.ssh/crn): No such file or "
        "directory"]
    assert problems(HOST + f"identity_file = {tmp_path}\n") == [
        f"inv.ini:3: [host:cron01] identity_file: cannot read {tmp_path}: Is a directory"]


def test_host_ceiling_parsed():
    inv = parse(HOST + "memory_max = 2G\ncpu_weight = 50\ntasks_max = 512\n")
    assert (inv.hosts[0].memory_max, inv.hosts[0].cpu_weight, inv.hosts[0].tasks_max) == ("2G", 50, 512)


@pytest.mark.parametrize("key, value, message", [
    pytest.param("metrics_dir", "var/lib/x", "'var/lib/x' is not an absolute directory path (no spaces, no '..'), "
                 "or empty", id="relative"),
    pytest.param("metrics_dir", "/var/lib/../etc", "'/var/lib/../etc' is not an absolute directory path (no spaces, "
                 "no '..'), or empty", id="dot-dot"),
    pytest.param("metrics_dir", "/var/lib/a b", "'/var/lib/a b' is not an absolute directory path (no spaces, "
                 "no '..'), or empty", id="space"),
    pytest.param("heartbeat_url", "hc.example/ping", "'hc.example/ping' is not an http:// or https:// URL with a host",
                 id="heartbeat-url"),
])
def test_host_metrics_values(key, value, message):
    assert problems(f"{HOST}{key} = {value}\n") == [f"inv.ini:3: [host:cron01] {key}: {message}"]


def test_host_metrics_parsed():
    default = parse(HOST).hosts[0]
    assert (default.metrics_dir, default.heartbeat_url) == ("/var/lib/prometheus/node-exporter", None)
    host = parse(HOST + "metrics_dir = /srv/textfiles/\nheartbeat_url = https://hc.example/ping/abc\n").hosts[0]
    assert (host.metrics_dir, host.heartbeat_url) == ("/srv/textfiles", "https://hc.example/ping/abc")
    assert "abc" not in repr(host)  # a Healthchecks URL is a secret
    assert parse(HOST + "metrics_dir =\n").hosts[0].metrics_dir == ""


JOB = "[job:a]\nschedule = 0 * * * *\nurl = http://x/\n"


def test_a_utf8_byte_order_mark_is_accepted(tmp_path):
    """Before: `inv.ini:1: a key before any [section]` (Windows editors write a BOM)."""
    path = tmp_path / "inventory.ini"
    path.write_bytes(b"\xef\xbb\xbf" + (HOST + JOB).encode())
    inv = inventory.load(str(path))
    assert inv.hosts[0].name == "cron01" and inv.jobs[0].url == "http://x/"


@pytest.mark.parametrize("text, expected", [
    pytest.param("[job:a]\nschedule = 0 * * * *\n  url = http://x/\n",
                 ["inv.ini:5: [job:a] url: is indented, so INI reads it as more of 'schedule' (line 4): "
                  "remove the leading spaces"], id="indented-key-is-one-error-not-two-wrong-ones"),
    pytest.param("[job:a]\non_calendar = Mon *-*-* 09:00\n  Sat *-*-* 10:00\n\turl = http://x/\n",
                 ["inv.ini:6: [job:a] url: is indented, so INI reads it as more of 'on_calendar' (line 4): "
                  "remove the leading spaces"], id="after-a-multi-line-key-too"),
    pytest.param("[job:a]\nschedule = 0 * * * *\nurl = http://x/\n  [job:b]\nschedule = 0 * * * *\n",
                 ["inv.ini:6: [job:a]: is indented, so INI reads it as more of 'url' (line 5): "
                  "remove the leading spaces",
                  "inv.ini:6: [job:b] url: is required"], id="indented-section-and-the-rest-still-checked"),
    pytest.param("[job:a]\nschedule = 0 * * * *\nurl = http://x/\n  y/z\n",
                 ["inv.ini:5: [job:a] url: line 6 is indented, so INI reads it as more of this value, which "
                  "takes one line: join the lines, or remove the leading spaces"], id="a-wrapped-value"),
    pytest.param("[job:a]\nschedule = 0 * * * *\nurl = http://x/\n  timeout = 5s\nretires = 1\n",
                 ["inv.ini:6: [job:a] timeout: is indented, so INI reads it as more of 'url' (line 5): "
                  "remove the leading spaces",
                  "inv.ini:7: [job:a] retires: unknown key (did you mean 'retries'?)"], id="other-problems-too"),
])
def test_an_indented_line_is_one_error_naming_its_line_and_the_fix(text, expected):
    assert problems(HOST + text) == expected


def test_indentation_stays_legal_where_ini_means_it():
    inv = parse(HOST + "[job:a]\n  ; an indented comment\non_calendar = Mon *-*-* 09:00\n  Sat *-*-* 10:00\n"
                "url = http://x/\nheaders = Authorization: Bearer t\n  X-Timeout: 5\n\n  [job:b]\n"
                "  schedule = 0 * * * *\n  url = http://y/\n")
    a, b = inv.jobs
    assert a.on_calendar == ("Mon *-*-* 09:00", "Sat *-*-* 10:00")
    assert a.headers == (("Authorization", "Bearer t"), ("X-Timeout", "5"))
    assert b.url == "http://y/", "an indented section after a blank line is a section (the value ended)"


@pytest.mark.parametrize("text, expected", [
    pytest.param("[alert:ops]\ntype = dingding\ntoken = t\n" + JOB + "alert = ops\n",
                 ["inv.ini:4: [alert:ops] type: 'dingding' is not one of dingtalk, wecom, feishu, slack, webhook "
                  "(did you mean 'dingtalk'?)"], id="bad-type-is-not-also-a-missing-alert"),
    pytest.param("[defaults]\nalert = ops\n[alert:ops]\ntype = wechat\n" + JOB,
                 ["inv.ini:6: [alert:ops] type: 'wechat' is not one of dingtalk, wecom, feishu, slack, webhook "
                  "(did you mean 'wecom'?)"], id="from-defaults"),
    pytest.param("[host:cron02]\nport = 22\n" + JOB + "host = cron02\n",
                 ["inv.ini:3: [host:cron02] address: is required"], id="host-without-address"),
    pytest.param(JOB.replace("http://x/", '"http://x/"'),
                 ["inv.ini:5: [job:a] url: '\"http://x/\"' is not an http:// or https:// URL with a host "
                  "(INI values take no quotes: remove them)"], id="quoted-url"),
    pytest.param(JOB.replace("0 * * * *", "'0 * * * *'"),
                 ["inv.ini:4: [job:a] schedule: cron \"'0 * * * *'\": minute field: cannot parse \"'0\" "
                  "(INI values take no quotes: remove them)"], id="quoted-schedule"),
])
def test_a_broken_section_is_reported_once_not_again_where_it_is_used(text, expected):
    assert problems(HOST + text) == expected


@pytest.mark.parametrize("value, message", [
    pytest.param("10.0.0.5:2222", "'10.0.0.5:2222' holds a port: write port = 2222 and address = 10.0.0.5", id="port"),
    pytest.param("ops@cron01.example", "'ops@cron01.example' holds a user: write user = ops and address = "
                 "cron01.example", id="user"),
    pytest.param("[fd00::5]:2222", "'[fd00::5]:2222' holds a port: write port = 2222 and address = fd00::5",
                 id="ipv6-port"),
    pytest.param("[fd00::5]", "'[fd00::5]' holds brackets: write address = fd00::5", id="ipv6-brackets"),
    pytest.param("ssh://cron01", "'ssh://cron01' is a URL; give the host name or IP address alone", id="url"),
])
def test_an_address_with_ssh_shorthand_says_where_each_part_goes(value, message):
    """Before: `address = 10.0.0.5:22` (or ops@...) ended in fabric's ValueError traceback."""
    assert problems(f"[host:cron01]\naddress = {value}\n") == [f"inv.ini:2: [host:cron01] address: {message}"]


@pytest.mark.parametrize("value", ["10.0.0.5", "cron01.example.com", "fd00::5", "fe80::1%eth0"])
def test_plain_addresses_and_ipv6_are_accepted(value):
    assert parse(f"[host:cron01]\naddress = {value}\n").hosts[0].address == value


# -- issue 22 item 12: what systemd or this machine cannot take is refused by validate -----------

BIG_JOB = "[job:big]\nschedule = * * * * *\nurl = http://svc/x\n"


def test_a_body_over_systemds_credential_limit_is_refused_with_the_limit():
    from deployer.contract.options import CREDENTIALS_LIMIT, MAX_CREDENTIALS

    assert parse(HOST + BIG_JOB + "body = " + "x" * (MAX_CREDENTIALS - len("body")) + "\n").jobs[0].body
    found = problems(HOST + BIG_JOB + "body = " + "x" * (1024 * 1024 + 1) + "\n")
    assert len(found) == 1 and found[0].startswith("inv.ini:6: [job:big] body: the run's credentials (body) "
                                                    "come to 1048581 bytes")
    assert str(CREDENTIALS_LIMIT) in found[0] and "exit 243" in found[0]


def test_credentials_count_together_and_name_the_largest():
    headers = "headers = X-A: " + "h" * 600_000 + "\n"
    found = problems(HOST + BIG_JOB + headers + "body = " + "b" * 500_000 + "\n")
    assert len(found) == 1 and "[job:big] headers: the run's credentials (body, headers)" in found[0]


def test_a_huge_inventory_is_refused_before_it_is_read(tmp_path):
    from deployer.inventory import MAX_INVENTORY

    path = tmp_path / "inventory.ini"
    path.write_text(HOST + BIG_JOB + ";" + "x" * MAX_INVENTORY + "\n")
    with pytest.raises(InventoryError) as refused:
        inventory.load(str(path))
    assert f"inventory.ini: is {path.stat().st_size} bytes: an inventory may be at most {MAX_INVENTORY} bytes (8 MiB)" \
        in str(refused.value)


def test_a_huge_local_file_is_refused_without_reading_it_whole(tmp_path):
    from deployer.contract.options import MAX_CREDENTIALS

    big = tmp_path / "ca.pem"
    big.write_bytes(b"x" * (MAX_CREDENTIALS + 10))
    found = problems(HOST + BIG_JOB + f"ca_file = {big}\n")
    assert len(found) == 1 and f"[job:big] ca_file: {big} is over {MAX_CREDENTIALS} bytes" in found[0]


# -- run parameters (issue 23 item 7) --------------------------------------------------------------

PARAMS_JOB = HOST + """[job:settle]
schedule = 0 2 * * *
url = http://svc/settle?batch=${{batch}}
body = {"region": "${{region}}"}
params = batch=1, region=cn
"""


def test_params_are_declared_with_their_defaults_in_order():
    assert parse(PARAMS_JOB).jobs[0].params == (("batch", "1"), ("region", "cn"))


@pytest.mark.parametrize("change, expected", [
    pytest.param(("batch=${{batch}}", "batch=${{batchh}}"),
                 "inv.ini:5: [job:settle] url: ${{batchh}} is not declared in params (add params = batchh=DEFAULT)",
                 id="undeclared-in-url"),
    pytest.param(("params = batch=1, region=cn", "params = batch=1, region=cn, extra=2"),
                 "inv.ini:7: [job:settle] params: extra is used in neither url nor body (write ${{extra}} there)",
                 id="declared-unused"),
    pytest.param(("params = batch=1, region=cn", "params = batch=1, Region=cn"),
                 "inv.ini:7: [job:settle] params: 'Region' is not a parameter name ([a-z_][a-z0-9_]*)",
                 id="bad-name"),
    pytest.param(("params = batch=1, region=cn", "params = batch=1, region"),
                 "inv.ini:7: [job:settle] params: 'region' is not name=default (an empty default: region=)",
                 id="no-default"),
])
def test_a_params_mistake_is_one_line_naming_the_key(change, expected):
    found = problems(PARAMS_JOB.replace(*change))
    assert found[0] == expected, found

def test_a_chain_runs_on_one_host():
    """Issue 23 item 8: systemd starts the next unit on the host that ran the first."""
    text = (HOST + "[host:cron02]\naddress = 10.0.0.6\n[job:extract]\nschedule = 0 2 * * *\nurl = http://x/\n"
            "host = cron01\n[job:load]\nafter = extract\nurl = http://y/\nhost = cron02\n")
    assert problems(text) == ["inv.ini:10: [job:load] after: [job:extract] runs on host cron01, this job on cron02: a "
                              "chain runs on one host (systemd starts the next unit there)"]


def test_a_longer_cycle_through_on_failure_run_is_refused_once():
    text = HOST + ("[job:a]\nschedule = 0 * * * *\nurl = http://x/\non_failure_run = b\n"
                   "[job:b]\nurl = http://y/\non_failure_run = c\n[job:c]\nafter = b\nurl = http://z/\n"
                   "on_failure_run = b\n")
    found = problems(text)
    assert found == ["inv.ini:9: [job:b] on_failure_run: is part of a cycle (b -> c): after/on_failure_run must "
                     "not loop"], found


def test_chained_jobs_parse_with_their_parents():
    inv = parse(HOST + "[job:extract]\nschedule = 0 2 * * *\nurl = http://x/\non_failure_run = cleanup\n"
                "[job:load]\nafter = extract\nurl = http://y/\n[job:cleanup]\nurl = http://z/\n", ENV)
    jobs = {j.name: j for j in inv.jobs}
    assert jobs["load"].after == "extract" and jobs["extract"].on_failure_run == "cleanup"
    assert [(how, j.name) for how, j in inv.children("extract")] == [("after", "load"), ("on_failure", "cleanup")]
    assert inv.parents("cleanup") == (("on_failure", "extract"),)


def test_issue23_catch_up_and_concurrency_come_from_defaults_and_a_job_overrides_them():
    inv = parse(HOST + "[defaults]\ncatch_up = 2h\nconcurrency = replace\n[job:a]\nschedule = 0 7 * * *\n"
                "url = http://x/\n[job:b]\nschedule = 0 2 * * *\nurl = http://y/\ncatch_up = once\n"
                "concurrency = forbid\n[job:c]\nschedule = 0 3 * * *\nurl = http://z/\ncatch_up = none\n")
    jobs = {j.name: j for j in inv.jobs}
    assert (jobs["a"].catch_up, jobs["a"].concurrency) == (7200, "replace")
    assert (jobs["b"].catch_up, jobs["b"].concurrency) == ("once", "forbid")
    assert jobs["c"].catch_up == "none"


def test_every_host_key_is_a_host_field_and_every_host_field_a_key():
    """Issue 20: [host:NAME]'s keys (SCHEMA) and models.Host's fields are two lists; this ties them
    (a key without a field crashed the reader, a field without a key could never be set)."""
    import dataclasses

    assert set(inventory.SCHEMA["host"]) == {f.name for f in dataclasses.fields(Host)} - {"name"}


# -- load_for_job: what `history` and `logs` read (issue 25) -----------------------------------

RICH = """\ufeff[host:cron01]
address = 10.0.0.5
[host:cron02]
address = 10.0.0.6

[alert:ops]
type = dingtalk
token = ${DINGTALK_TOKEN}

[defaults]
host = cron01
timezone = Asia/Shanghai
alert = ops

[job:settle]
schedule = 0 * * * *
url = http://svc/settle?key=${DINGTALK_SECRET}
on_failure_run = cleanup  ; undoes a half settle
headers =
  X-A: 1
  X-B: 2   ; two values

[job:report]
after = settle
url = http://svc/report  # a comment

[job:cleanup]
url = http://svc/cleanup
body = {"note": "batch \\#7"}

[job:nightly]
host = cron02
on_calendar =
  *-*-* 02:00:00
  *-*-* 03:00:00
url = http://svc/nightly
"""


@pytest.mark.parametrize("name", ["settle", "report", "cleanup", "nightly"])
def test_a_job_read_alone_is_the_job_the_whole_inventory_reads(tmp_path, name):
    path = tmp_path / "inv.ini"
    path.write_text(RICH)
    whole = inventory.load(str(path), ENV)
    alone = inventory.load_for_job(str(path), name, ENV)
    assert alone.jobs == tuple(j for j in whole.jobs if j.name == name)
    assert (alone.hosts, alone.alerts) == (whole.hosts, whole.alerts)


def test_a_mistake_in_another_job_does_not_hide_this_ones_runs(tmp_path):
    path = tmp_path / "inv.ini"
    path.write_text(RICH + "\n[job:broken]\nschedule = 61 * * * *\nurl = http://svc/${UNSET}\nbogus = 1\n"
                           "url = twice\n  url = indented\nbody = {\"a\": \"b #c\"}\n[job:Bad Name]\nurl = x\n"
                           "[job:half]\nbody =\n  [1, 2]\n  [job:settle]\n\n  [job:indented-after-a-blank]\nurl = y\n")
    with pytest.raises(InventoryError):
        inventory.load(str(path), ENV)
    assert inventory.load_for_job(str(path), "settle", ENV).jobs[0].name == "settle"


def test_a_mistake_in_the_job_read_is_the_same_error_on_the_same_line(tmp_path):
    path = tmp_path / "inv.ini"
    path.write_text(RICH.replace("schedule = 0 * * * *", "schedule = 0 * * *\nbogus = 1"))
    with pytest.raises(InventoryError) as whole:
        inventory.load(str(path), ENV)
    with pytest.raises(InventoryError) as alone:
        inventory.load_for_job(str(path), "settle", ENV)
    assert alone.value.lines() == whole.value.lines()
    assert any(":17:" in line or "line 17" in line for line in alone.value.lines()), alone.value.lines()


def test_a_failure_target_read_alone_still_needs_no_schedule_and_a_chain_still_names_a_real_job(tmp_path):
    path = tmp_path / "inv.ini"
    path.write_text(RICH.replace("after = settle", "after = setle"))
    with pytest.raises(InventoryError) as alone:
        inventory.load_for_job(str(path), "report", ENV)
    assert alone.value.lines() == [f"{path}:24: [job:report] after: no [job:setle] (did you mean 'settle'?)"]
    assert inventory.load_for_job(str(path), "cleanup", ENV).jobs[0].name == "cleanup"  # on_failure_run's target


def test_a_job_not_in_the_file_is_the_whole_reads_error(tmp_path):
    path = tmp_path / "inv.ini"
    path.write_text(RICH + "[job:broken]\nbogus = 1\n")
    with pytest.raises(InventoryError) as whole:
        inventory.load(str(path), ENV)
    with pytest.raises(InventoryError) as alone:
        inventory.load_for_job(str(path), "setle", ENV)
    assert alone.value.lines() == whole.value.lines()


# The section search of _only_job against its line-by-line reading, on inventories built from
# the lines that decide it: section lines (spaced, `[job]`, `[job:]`, no `]`, indented),
# on_failure_run however written (case, `:`, a comment, a longer key, indented), values that
# run on over indented lines, comments, blank lines and CRLF.
LINE = st.sampled_from([
    "[job:a]", "[job:b]", "[ job : b ]", "[job: a ]", "[job]", "[job:]", "[host:cron01]", "[alert:ops]", "[defaults]",
    "[jobs:a]", "[job:a] trailing", "[not closed", "  [job:b]", "\t[job:a]", "[JOB:b]", "[Job:a]",
    "on_failure_run = a", "ON_FAILURE_RUN: b  ; why", "on_failure_run=c # not a comment", "On_Failure_Run =",
    "on_failure_runner = x", "  on_failure_run = d", "on_faılure_run = e", "url = http://svc/a", "headers =",
    "  X-A: 1", "    more", "; comment [job:b]", "# on_failure_run = z", "", " ", "key = [job:b]"])


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines=st.lists(LINE, max_size=14), crlf=st.booleans(), job=st.sampled_from(["a", "b", ""]))
def test_the_section_search_reads_every_inventory_as_the_line_by_line_reading(lines, crlf, job):
    source = ("\r\n" if crlf else "\n").join(lines) + ("\n" if len(lines) % 2 else "")  # ending or not
    assert inventory._only_job(source, job) == inventory._only_job_by_line(source, job)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(jobs=st.lists(st.tuples(st.sampled_from(["a", "b", "c", "d"]), st.sampled_from([
    "schedule = 0 * * * *\nurl = http://svc/x", "url = http://svc/y\non_failure_run = c",
    "schedule = 0 * * * *\nurl = http://svc/z\nheaders =\n  X-A: 1\n\n", "url = http://svc/w", "bogus = 1",
    "schedule = 61 * * * *\nurl = http://svc/v", "after = a\nurl = http://svc/u"])), min_size=1, max_size=6),
    job=st.sampled_from(["a", "b", "c", "d"]))
def test_a_job_read_from_the_cut_text_is_the_one_read_with_every_line_kept(tmp_path_factory, jobs, job):
    """load_for_job reads the other jobs' sections cut out, and again with them blanked when it
    finds a mistake: it reads the same inventory, and the cut text refuses whatever the blanked
    one refuses (else load_for_job would return where it must raise)."""
    source = "[host:cron01]\naddress = 10.0.0.5\n\n" + "".join(f"[job:{n}]\n{body}\n" for n, body in jobs)
    path = tmp_path_factory.mktemp("inv") / "inventory.ini"
    path.write_text(source)
    blanked = inventory._only_job(source, job)
    if blanked is None:
        return
    try:
        expected = inventory.parse(blanked[0], str(path), ENV, others=blanked[1])
    except InventoryError as error:
        with pytest.raises(InventoryError) as alone:
            inventory.load_for_job(str(path), job, ENV)
        assert alone.value.lines() == error.lines()
    else:
        assert inventory.load_for_job(str(path), job, ENV) == expected
