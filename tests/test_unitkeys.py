"""The X-Deployer-* keys: every value round-trips through a unit, recorded units decode to what
they say, and a missing or unreadable line is the key's default."""
from __future__ import annotations

from pathlib import Path

import pytest

from deployer import render
from deployer.contract import paths, unitkeys
from deployer.host import alert, metrics
from deployer.contract.channels import AlertPolicy
from deployer.contract.unitkeys import (ALERT_POLICY, METRICS, REQUEST, WATCH, Request, Timing, WatchChannel,
                                        WatchConfig, Watched)
from deployer.models import Job

DATA = Path(__file__).parent / "data"
# Units the renderer wrote: tests/data/golden (golden.ini, pinned by test_render) and
# tests/data/unitkeys (unitkeys.ini: the keys golden.ini has no job for; recorded once).
RECORDED = {path.name: path.read_text(encoding="utf-8")
            for directory in (DATA / "golden", DATA / "unitkeys") for path in directory.iterdir()
            if path.name.startswith(paths.UNIT_PREFIX)}

ODD_URL = "https://u:***@h.example/a%20b/$x;y?q='\"&z=\\é\u2028"
WATCH_CONFIG = WatchConfig(
    (Watched("a", "ops", late=300.0, calendar=("*-*-* 02:00:00 Asia/Shanghai", "Sat *-*-* 10:00:00")),
     Watched("b", "chat", long=1800)),
    {"chat": WatchChannel("webhook", {"endpoint": "https://hooks.example/x"}), "ops": WatchChannel("dingtalk", {"endpoint": ""})})


def unit(*lines: str) -> str:
    """A unit as the renderer lays it out: the marker, [Unit] with the key, then other sections."""
    return "\n".join([paths.MARKER, "[Unit]", "Description=deployer job x: GET http://x/", *lines,
                      "", "[Service]", "Type=oneshot", ""])


@pytest.mark.parametrize("key, value", [
    pytest.param(REQUEST, Request("PUT", ODD_URL), id="request-odd-url"),
    pytest.param(REQUEST, Request("GET", "http://x/"), id="request"),
    pytest.param(ALERT_POLICY, AlertPolicy(3, "never"), id="policy-after-3"),
    pytest.param(ALERT_POLICY, AlertPolicy(2, 3600), id="policy-reminders"),
    pytest.param(ALERT_POLICY, AlertPolicy(1, 90.5), id="policy-fractional-reminder"),
    pytest.param(METRICS, Timing(3600, 60), id="metrics"),
    pytest.param(METRICS, Timing(0, 90.5), id="metrics-reboot-fractional-timeout"),
    pytest.param(WATCH, WATCH_CONFIG, id="watch"),
    pytest.param(WATCH, WatchConfig(), id="watch-nothing"),
])
def test_every_key_round_trips_through_a_unit(key, value):
    line = key.line(value)
    assert line.startswith(key.name + "=") and "\n" not in line and line.isascii()
    assert key.read(unit(line)) == value


@pytest.mark.parametrize("name, key, value", [
    pytest.param("deployer-settle-hourly.service", REQUEST,
                 Request("POST", "http://settle-service:8080/api/settle"), id="request"),
    pytest.param("deployer-odd-url.service", REQUEST,
                 Request("PUT", "https://h.example/a%20b/$x;y?q='\"&z=\\é"), id="request-odd-url"),
    pytest.param("deployer-secret-url.service", REQUEST,
                 Request("POST", "http://svc:***@settle-service:8080/api/poll?page=1&api_key=***"),
                 id="request-redacted"),
    pytest.param("deployer-settle-hourly.service", ALERT_POLICY, AlertPolicy(), id="policy-default-no-line"),
    pytest.param("deployer-policy-remind.service", ALERT_POLICY, AlertPolicy(2, 3600), id="policy-reminders"),
    pytest.param("deployer-policy-each.service", ALERT_POLICY, AlertPolicy(2, "each"), id="policy-each"),
    pytest.param("deployer-settle-hourly.timer", METRICS, Timing(3600, 60), id="metrics"),
    pytest.param("deployer-odd-url.timer", METRICS, Timing(169200, 300), id="metrics-on-calendar"),
    pytest.param("deployer-policy-remind.timer", METRICS, Timing(86400, 90.5), id="metrics-fractional-timeout"),
    pytest.param("deployer-policy-each.timer", METRICS, Timing(0, 60), id="metrics-reboot"),
    pytest.param("deployer-host@metrics.service", METRICS, Timing(), id="metrics-none-in-another-unit"),
    pytest.param("deployer-host@watch.service", WATCH, WatchConfig(
        (Watched("child", "chat", late=60), Watched("policy-each", "ops", long=600),
         Watched("policy-remind", "chat", 300, 1800, ("*-*-* 03:00:00 Asia/Shanghai",))),
        {"chat": WatchChannel("webhook", {"endpoint": "https://hooks.example/x"}),
         "ops": WatchChannel("dingtalk", {"endpoint": "https://robot.example/send"})}), id="watch"),
])
def test_recorded_units_decode_to_what_they_say(name, key, value):
    assert key.read(RECORDED[name]) == value


@pytest.mark.parametrize("name", sorted(n for n, text in RECORDED.items() if "\nX-Deployer-" in text))
def test_a_recorded_line_is_what_encoding_its_value_writes(name):
    """The renderer writes through the codec: decoding a recorded line and encoding it again gives
    the same bytes (the golden files did not change when render.py moved to it)."""
    lines = [line for line in RECORDED[name].split("\n") if line.startswith("X-Deployer-")]
    keys = {key.name: key for key in (REQUEST, ALERT_POLICY, METRICS, WATCH)}
    assert lines and all(keys[line.split("=", 1)[0]].line(keys[line.split("=", 1)[0]].read(line)) == line
                         for line in lines)


@pytest.mark.parametrize("key, value", [
    pytest.param(REQUEST, None, id="request-missing"),
    pytest.param(REQUEST, "", id="request-empty"),
    pytest.param(REQUEST, '{"method": "GET", "url": "http://x/"', id="request-cut"),
    pytest.param(REQUEST, '["GET", "http://x/"]', id="request-not-an-object"),
    pytest.param(REQUEST, '{"method": "GET"}', id="request-no-url"),
    pytest.param(REQUEST, '{"method": "GET", "url": 5}', id="request-url-not-text"),
    pytest.param(ALERT_POLICY, None, id="policy-missing"),
    pytest.param(ALERT_POLICY, "", id="policy-empty"),
    pytest.param(ALERT_POLICY, "{", id="policy-cut"),
    pytest.param(ALERT_POLICY, "[]", id="policy-not-an-object"),
    pytest.param(ALERT_POLICY, '{"after": 0, "repeat": "each"}', id="policy-after-0"),
    pytest.param(ALERT_POLICY, '{"after": 2, "repeat": "sometimes"}', id="policy-unknown-repeat"),
    pytest.param(ALERT_POLICY, '{"after": 2, "repeat": -5}', id="policy-negative-repeat"),
    pytest.param(METRICS, None, id="metrics-missing"),
    pytest.param(METRICS, '{"period": 3600', id="metrics-cut"),
    pytest.param(METRICS, "[3600, 60]", id="metrics-not-an-object"),
    pytest.param(METRICS, '{"period": "hourly", "timeout": 60}', id="metrics-period-not-a-number"),
    pytest.param(METRICS, '{"period": [3600], "timeout": 60}', id="metrics-period-a-list"),
])
def test_a_missing_or_unreadable_line_is_the_default(key, value):
    text = unit() if value is None else unit(f"{key.name}={value}")
    assert key.read(text) == key.default
    assert key.default == {REQUEST: Request("", "(unknown)"), ALERT_POLICY: AlertPolicy(1, "each"),
                           METRICS: Timing(0.0, 0.0)}[key]


def test_a_metrics_line_without_a_value_is_zero():
    """The collector's reading since issue 14: a null or absent number is 0."""
    assert METRICS.read(unit('X-Deployer-Metrics={"period": null}')) == Timing(0, 0)


@pytest.mark.parametrize("text", [
    pytest.param(unit(), id="missing"),
    pytest.param(unit("X-Deployer-Watch={"), id="cut"),
    pytest.param(unit('X-Deployer-Watch={"jobs": {}}'), id="no-channels"),
    pytest.param(unit('X-Deployer-Watch={"jobs": {"a": {}}, "channels": {}}'), id="job-without-channel"),
    pytest.param(unit('X-Deployer-Watch={"jobs": [], "channels": {}}'), id="jobs-not-an-object"),
    pytest.param(unit('X-Deployer-Watch={"jobs": {}, "channels": {"ops": {"endpoint": ""}}}'), id="channel-no-type"),
])
def test_the_watcher_has_no_default_an_unreadable_configuration_is_an_error(text):
    with pytest.raises(ValueError, match="X-Deployer-Watch"):
        WATCH.read(text)


def test_the_first_line_counts_and_a_line_ends_only_at_a_newline():
    """systemd splits a unit at \\n only: a Description= holding U+2028 is one line, and no key."""
    first, second = REQUEST.line(Request("GET", "http://a/")), REQUEST.line(Request("GET", "http://b/"))
    assert REQUEST.read(unit(first, second)) == Request("GET", "http://a/")
    forged = "Description=deployer job x: GET http://x/\u2028" + REQUEST.line(Request("DELETE", "http://evil/"))
    assert REQUEST.read(forged + "\n") == Request()
    assert REQUEST.read(unit(first).replace("\n", "\r\n")) == Request("GET", "http://a/")


@pytest.mark.parametrize("name, channel", [
    pytest.param("deployer-settle-hourly.service", "ops", id="alerting"),
    pytest.param("deployer-odd-url.service", "", id="no-alert-metrics-soon-only"),
    pytest.param("deployer-child.service", "chat", id="chained"),
    pytest.param("deployer-policy-remind.service", "chat", id="other-channel"),
    pytest.param("deployer-settle-hourly.timer", "", id="a-timer"),
])
def test_the_alert_channel_is_read_from_the_recorded_onfailure_line(name, channel):
    assert unitkeys.alert_channel(RECORDED[name]) == channel


def test_the_renderer_and_the_host_agree_on_every_job_fact(tmp_path, monkeypatch):
    """Rendered by render.job_units, installed, read back by the host programs' own functions."""
    job = Job(name="odd", host="cron01", url="https://u:pw@h.example/a%20b/$x;y?q='\"&z=\\é", method="PUT",
              schedule="0 * * * *", alert="ops", alert_after=3, alert_repeat=7200, timeout=90.5)
    layout = paths.Layout(str(tmp_path))
    unit_dir = Path(layout.unit_dir)
    unit_dir.mkdir(parents=True)
    for file in render.job_units(job, metrics=True, period=3600):
        if file.path.startswith(paths.UNIT_DIR + "/"):
            (unit_dir / file.name).write_bytes(file.content)
    assert METRICS.read(metrics.installed_jobs(layout)["odd"]) == Timing(3600, 90.5)  # the collector's Layout
    monkeypatch.setattr(paths, "UNIT_DIR", str(unit_dir))  # the alert program's fixed path
    assert alert.job_request("odd") == ("PUT", "https://u:***@h.example/a%20b/$x;y?q='\"&z=\\é")
    assert alert.job_policy("odd") == AlertPolicy(3, 7200)
    assert alert.channel_of("odd") == "ops"
    assert METRICS.read_unit(paths.job_unit("odd", "timer")) == Timing(3600, 90.5)


def test_a_unit_that_cannot_be_read_has_no_lines(tmp_path, monkeypatch):
    """A job pruned since its run, a unit never installed, bytes that are not UTF-8: the defaults
    (and for the watcher, an error naming its unit)."""
    monkeypatch.setattr(paths, "UNIT_DIR", str(tmp_path))
    (tmp_path / "deployer-bad.service").write_bytes(b"X-Deployer-Alert-Policy={\"after\": 3, \"repeat\": \"never\"}\n\xff")
    assert unitkeys.unit_text("deployer-missing.service") == ""
    assert unitkeys.unit_text("deployer-bad.service") == ""
    assert ALERT_POLICY.read_unit("deployer-bad.service") == AlertPolicy()
    assert (alert.job_request("missing"), alert.job_policy("missing"), alert.channel_of("missing")) == \
        (("", "(unknown)"), AlertPolicy(), "")
    with pytest.raises(ValueError, match=f"{paths.WATCH_SERVICE}: no X-Deployer-Watch line"):
        WATCH.read_unit(paths.WATCH_SERVICE)
