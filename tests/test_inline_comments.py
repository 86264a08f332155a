"""Inline comments and a literal `#` / `;`: every key's value arrives byte for byte, or is refused.

Issue 24 item 1: `body = {"note": "batch #7 ; retry"}` validated, and the service received
`{"note": "batch`. The rule (README, "The inventory"): a `;` or `#` after white space starts a
comment; `\\#` and `\\;` write a literal one; a cut inside a "quoted string", or after a single
space in a free-text key, is refused with how to write it. Table-driven over every key of every
section (JOB_OPTIONS and the host and alert keys), so a new key must be entered here too.
"""
from __future__ import annotations

import pytest

from deployer import inventory
from deployer.errors import InventoryError
from deployer.contract.options import JOB_OPTIONS, OPTIONS_BY_KEY, credentials
from deployer.render import option_values, trigger_args

BASE = {
    "host": {"address": "10.0.0.5"},
    "alert": {"type": "dingtalk", "token": "tok"},
    "job": {"schedule": "0 * * * *", "url": "http://x/"},
}
SECTIONS = {"host": "host:cron01", "alert": "alert:ops", "job": "job:a"}

# key -> (plain value, free text holding " #" and " ;" or None where the key cannot hold it).
# `{tmp}` is a directory of this test: files a file key reads. Free-text keys must carry it.
VALUES = {
    "host": {
        "address": ("10.0.0.5", None),
        "port": ("2222", None),
        "user": ("ops", None),
        "identity_file": ("{tmp}/cron", "{tmp}/cron #7 ; old"),
        "known_hosts": ("~/.ssh/known_hosts", "~/keys/known #7 ; hosts"),
        "host_key": ("accept-new", None),
        "sudo": ("true", None),
        "python": ("/usr/bin/python3", "/opt/py #7 ; 3/bin/python3"),
        "sandbox": ("fast", None),
        "cpu_weight": ("50", None),
        "memory_max": ("512M", None),
        "tasks_max": ("64", None),
        "metrics_dir": ("/var/lib/node-exporter", None),
        "heartbeat_url": ("https://hc.example/ping/abc", None),
        "lease": ("10m", None),
    },
    "alert": {
        "type": ("dingtalk", None),
        "token": ("tok-1", "tok #7 ; 1"),
        "secret": ("sec-1", "sec #7 ; 1"),
        "endpoint": ("https://oapi.example/robot/send", None),
    },
    "job": {
        "url": ("http://x/api", None),
        "schedule": ("30 2 * * *", None),
        "on_calendar": ("*-*-* 09:00:00", None),
        "method": ("GET", None),
        "timeout": ("90s", None),
        "retries": ("3", None),
        "expect_status": ("200", None),
        "expect_json": ("code=0", 'note="batch #7 ; retry"'),
        "idempotent": ("true", None),
        "async": ("poll", None),
        "poll_every": ("30s", None),
        "ping_url": ("https://hc.example/ping/x", None),
        "body": ('{"a": 1}', '{"note": "batch #7 ; retry"}'),
        "content_type": ("text/plain", "text/plain ; note=#7"),
        "headers": ("X-A: 1", "X-Note: batch #7 ; retry"),
        "ca_file": ("{tmp}/ca.pem", "{tmp}/ca #7 ; old.pem"),
        "client_cert": ("{tmp}/cert.pem", "{tmp}/cert #7 ; old.pem"),
        "client_key": ("{tmp}/key.pem", "{tmp}/key #7 ; old.pem"),
        "sign_secret": ("s3cret", "s3 #7 ; cret"),
        "timezone": ("Asia/Shanghai", None),
        "alert": ("ops", None),
        "alert_after": ("3", None),
        "alert_repeat": ("1h", None),
        "alert_late": ("5m", None),
        "alert_long": ("30m", None),
        "host": ("cron01", None),
        "after": ("b", None),  # chaining: [job:b] is added (inventory_with)
        "on_failure_run": ("b", None),
        "params": ("n=1", None),  # the url uses ${{n}} (inventory_with)
        "catch_up": ("2h", None),
        "concurrency": ("replace", None),
    },
}
KEYS = [(kind, key) for kind, keys in VALUES.items() for key in keys]


def test_the_table_covers_every_key_of_every_section():
    assert {kind: set(keys) for kind, keys in VALUES.items()} == {
        "host": set(inventory.SCHEMA["host"]), "alert": set(inventory.SCHEMA["alert"]),
        "job": {option.key for option in JOB_OPTIONS}}
    # the keys that can hold a space before # or ; are the ones where one space is refused
    assert {key for keys in VALUES.values() for key, (_, literal) in keys.items() if literal} == \
        inventory.FREE_TEXT_KEYS


@pytest.fixture
def tmp(tmp_path):
    for kind in VALUES.values():
        for plain, literal in kind.values():
            for value in (plain, literal):
                if value and value.startswith("{tmp}"):
                    (tmp_path / value[len("{tmp}/"):]).write_text(f"PEM of {value[6:]}\n")
    return str(tmp_path)


def inventory_with(kind: str, key: str, written: str) -> str:
    """The base inventory with `key = written` in the `kind` section (the one line under test)."""
    out = []
    for each, section in SECTIONS.items():
        values = dict(BASE[each])
        if each == kind:
            if key in ("schedule", "on_calendar", "after"):  # a job with after has no schedule
                values.pop("schedule")
            values[key] = written
            if key == "params":  # a declared parameter must be used
                values["url"] += "?n=${{n}}"
        out.append(f"[{section}]\n" + "".join(f"{k} = {v}\n" for k, v in values.items()))
    if kind == "job" and key in ("after", "on_failure_run"):  # the job named (on_failure_run's: no schedule)
        out.append("[job:b]\nurl = http://y/\n" + ("schedule = 0 * * * *\n" if key == "after" else ""))
    return "\n".join(out)


def parsed(kind: str, key: str, written: str, tmp: str):
    inv = inventory.parse(inventory_with(kind, key, written.replace("{tmp}", tmp)), "inv.ini", {})
    found = {"host": inv.hosts, "alert": inv.alerts, "job": inv.jobs}[kind][0]
    return found, getattr(found, OPTIONS_BY_KEY[key].dest if kind == "job" else key)


def expected(kind: str, key: str, text: str, tmp: str):
    return inventory.SCHEMA[kind][key](text.replace("{tmp}", tmp))


def same(value, wanted) -> bool:
    """Equal as the host would get it: a secret by its text, a file by its path and its bytes."""
    if hasattr(wanted, "content"):
        return str(value) == str(wanted) and value.content == wanted.content
    return (str(value) if type(value).__name__ == "Secret" else value) == wanted


def refusal(kind: str, key: str, written: str, tmp: str) -> str:
    with pytest.raises(InventoryError) as caught:
        parsed(kind, key, written, tmp)
    lines = caught.value.lines()
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.parametrize("mark", ["#", ";"])
@pytest.mark.parametrize("kind, key", KEYS, ids=[f"{k}.{key}" for k, key in KEYS])
def test_a_comment_after_two_spaces_is_cut_from_every_key(kind, key, mark, tmp):
    plain = VALUES[kind][key][0]
    _, value = parsed(kind, key, f"{plain}   {mark} a comment, as the README writes them", tmp)
    assert same(value, expected(kind, key, plain, tmp))


@pytest.mark.parametrize("mark", ["#", ";"])
@pytest.mark.parametrize("kind, key", KEYS, ids=[f"{k}.{key}" for k, key in KEYS])
def test_an_escaped_mark_is_a_literal_one_in_every_key_or_the_value_is_refused(kind, key, mark, tmp):
    plain, literal = VALUES[kind][key]
    if literal is None:  # not text: the literal reaches the key's parser, which keeps it or refuses it
        try:
            _, value = parsed(kind, key, f"{plain} \\{mark}7", tmp)
        except InventoryError as error:
            assert f"inv.ini:" in error.lines()[0] and f"[{SECTIONS[kind]}] {key}:" in error.lines()[0]
            return
        assert same(value, expected(kind, key, f"{plain} {mark}7", tmp))
        return
    written = literal.replace("#", "\\#").replace(";", "\\;")
    _, value = parsed(kind, key, written, tmp)
    assert same(value, expected(kind, key, literal, tmp))


@pytest.mark.parametrize("mark", ["#", ";"])
@pytest.mark.parametrize("kind, key", KEYS, ids=[f"{k}.{key}" for k, key in KEYS])
def test_a_mark_after_one_space_is_refused_where_it_could_be_text_and_a_comment_elsewhere(kind, key, mark, tmp):
    plain, literal = VALUES[kind][key]
    if literal is None:  # `port = 2222 #7`: a port cannot hold ` #7`, so it is a comment
        _, value = parsed(kind, key, f"{plain} {mark}7", tmp)
        assert same(value, expected(kind, key, plain, tmp))
        return
    cut = literal[:min(literal.index(" #") if " #" in literal else len(literal), literal.index(" ;"))]
    line = refusal(kind, key, cut + f" {mark}7 x", tmp)
    assert line.startswith(f"inv.ini:") and f"[{SECTIONS[kind]}] {key}: '{mark}7 x' would be cut off" in line
    assert f"write \\{mark} for a literal {mark}, or " in line


@pytest.mark.parametrize("mark", ["#", ";"])
@pytest.mark.parametrize("kind, key", KEYS, ids=[f"{k}.{key}" for k, key in KEYS])
def test_a_mark_with_no_space_before_it_is_part_of_the_value_or_refused(kind, key, mark, tmp):
    plain = VALUES[kind][key][0]
    written = plain + mark + "7"
    try:
        _, value = parsed(kind, key, written, tmp)
    except InventoryError as error:
        assert f"[{SECTIONS[kind]}] {key}:" in error.lines()[0]
        return
    assert same(value, expected(kind, key, written, tmp))


def test_the_issue_body_is_refused_with_the_fix_then_arrives_byte_for_byte():
    text = inventory_with("job", "body", '{"note": "batch #7 ; retry"}')
    with pytest.raises(InventoryError) as caught:
        inventory.parse(text, "inv.ini", {})
    assert caught.value.lines() == [
        "inv.ini:11: [job:a] body: '#7 ; retry\"}' would be cut off as a comment (# inside a quoted string): "
        "write \\# for a literal #, or close the quote before a comment"]
    job = inventory.parse(inventory_with("job", "body", '{"note": "batch \\#7 \\; retry"}'), "inv.ini", {}).jobs[0]
    assert credentials(option_values(job))["body"] == b'{"note": "batch #7 ; retry"}'


@pytest.mark.parametrize("key, written", [
    pytest.param("url", 'http://x/?q="a #b"', id="url"),
    pytest.param("expect_json", 'msg="a  ; b"', id="expect_json-two-spaces"),
    pytest.param("body", '{"a": "x\\" #y"}', id="body-escaped-quote"),
])
def test_a_comment_starting_inside_a_quoted_string_is_refused_whatever_the_spaces(key, written, tmp):
    assert "inside a quoted string" in refusal("job", key, written, tmp)


def test_what_reaches_the_host_is_the_literal_text():
    """The trigger's command line and the credential files carry exactly what was written."""
    text = inventory_with("job", "expect_json", 'note="a \\#7 \\; b"').replace(
        "url = http://x/\n", "url = http://x/a;b#c\nheaders = X-Note: a \\#7 \\; b\n    X-Two: \\;\n"
        "content_type = text/plain \\; charset=utf-8\n")
    job = inventory.parse(text, "inv.ini", {}).jobs[0]
    args = trigger_args(job)
    assert args[args.index("--url") + 1] == "http://x/a;b#c"
    assert args[args.index("--expect-json") + 1] == 'note="a #7 ; b"'
    assert args[args.index("--content-type") + 1] == "text/plain ; charset=utf-8"
    assert credentials(option_values(job))["headers"] == b"X-Note: a #7 ; b\nX-Two: ;\n"


def test_a_backslash_before_a_mark_is_written_twice_and_other_backslashes_stay():
    body = '{"path": "C:\\\\tmp", "re": "\\\\\\#"}'  # the inventory text: C:\\tmp and \\\#
    job = inventory.parse(inventory_with("job", "body", body), "inv.ini", {}).jobs[0]
    assert job.body == '{"path": "C:\\\\tmp", "re": "\\\\#"}'


def test_environment_values_are_never_unescaped_or_cut():
    text = inventory_with("job", "body", "${BODY}")
    job = inventory.parse(text, "inv.ini", {"BODY": 'a \\# b ; c'}).jobs[0]
    assert job.body == 'a \\# b ; c'


def test_section_headers_and_continuation_lines_keep_their_comments():
    text = inventory_with("job", "headers", "X-A: 1   ; first\n    X-B: 2\t# second").replace(
        "[job:a]", "[job:a]   ; the job")
    job = inventory.parse(text, "inv.ini", {}).jobs[0]
    assert job.headers == (("X-A", "1"), ("X-B", "2"))
