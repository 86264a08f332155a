"""Hostile inventories (hypothesis): every input parses or is refused with InventoryError (never
another exception), and whatever is accepted renders units whose structure no value can change
and whose Exec arguments systemd reads back byte for byte."""
from __future__ import annotations

import json
import re

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from deployer import inventory
from deployer.errors import InventoryError
from deployer.render import host_files, trigger_argv

HOST = "[host:cron01]\naddress = 10.0.0.5\n"
NASTY = st.sampled_from(list("%$\"'\\;#=[]{}()<>|&*?!`~^@:/.,-_+ \té中\x00\x1b\x7f\r\n") + ["${X}", "${NOPE}", "%i",
                                                                                             "$$", "\nExecStartPre=/bin/evil"])
text = st.lists(st.one_of(NASTY, st.characters(codec="utf-8", exclude_categories=("Cs",))), max_size=30).map("".join)
KEYS = ["schedule", "on_calendar", "url", "method", "timezone", "timeout", "retries", "alert", "expect_status",
        "expect_json", "ping_url", "host", "bogus"]

VISIBLE = st.characters(codec="utf-8", exclude_categories=("Cs", "Cc", "Cf", "Zs", "Zl", "Zp", "Co", "Cn"))
# A URL an operator may legitimately write: anything visible in path and query, including
# %, $, quotes, ;, backslashes, # and non-ASCII (configparser needs white space before ; or #
# to read a comment, and a URL has none).
legal_url = st.builds(lambda path, query: f"http://127.0.0.1:8080/{path}?{query}",
                      st.text(alphabet=VISIBLE, max_size=25), st.text(alphabet=VISIBLE, max_size=25))
hostile_url = st.builds(lambda scheme, rest: scheme + rest, st.sampled_from(["http://", "https://", "ftp://", ""]), text)


@st.composite
def inventories(draw):
    sections = [HOST]
    for _ in range(draw(st.integers(1, 3))):
        name = draw(st.one_of(st.from_regex(r"[a-z0-9][a-z0-9-]{0,10}", fullmatch=True), text))
        lines = [f"[job:{name}]", "schedule = " + draw(st.one_of(st.just("0 * * * *"), text)),
                 "url = " + draw(st.one_of(legal_url, hostile_url))]
        for key in draw(st.lists(st.sampled_from(KEYS), max_size=4)):
            value = draw(st.one_of(text, hostile_url, st.sampled_from(["0 * * * *", "*:*:0/2", "@daily", "2xx", "code=0"])))
            lines.append(f"{key} = {value}")
        sections.append("\n".join(lines) + "\n")
    return "\n".join(sections)


ALLOWED_LINE = re.compile(r"^(#.*|\[(Unit|Service|Timer|Install|Slice)\]|[A-Z][A-Za-z]+=.*|X-Deployer-(Request|Metrics)=\{.*\}|)$")


def unquote_exec(line: str) -> list[str]:
    """systemd's reading of our Exec lines: "..." words with C escapes, %% -> %, $$ -> $."""
    words = re.findall(r'"((?:[^"\\]|\\.)*)"', line)
    assert " ".join(f'"{w}"' for w in words) == line, f"not a sequence of quoted words: {line!r}"
    return [re.sub(r"\\(.)", r"\1", w).replace("%%", "%").replace("$$", "$") for w in words]


def check_units(inv) -> None:
    for f in host_files(inv, "cron01"):
        if f.secret or not f.path.startswith("/etc/systemd/system/"):  # credentials are data, not units
            continue
        for line in f.content.decode().split("\n"):
            assert ALLOWED_LINE.match(line), f"{f.name}: unexpected line {line!r}"
        execs = [line[len("ExecStart="):] for line in f.content.decode().splitlines() if line.startswith("ExecStart=")]
        if f.name.endswith(".service") and "@" not in f.name:
            job = next(j for j in inv.jobs if f.name == f"deployer-{j.name}.service")
            assert unquote_exec(execs[0]) == trigger_argv(job, "/usr/bin/python3")


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(source=inventories(), env=st.dictionaries(st.sampled_from(["X", "Y"]), text, max_size=2))
def test_any_inventory_is_parsed_or_refused_and_never_changes_a_units_structure(source, env):
    try:
        inv = inventory.parse(source, "fuzz.ini", env)
    except InventoryError as error:
        assert all("\n" not in line for line in error.lines())
        return
    check_units(inv)


json_literal = st.one_of(st.integers(-10, 10), st.booleans(), st.none(), st.text(alphabet=VISIBLE, max_size=10))
expect_json = st.lists(st.tuples(st.from_regex(r"[a-z]{1,5}(\.[a-z0-9]{1,3}){0,2}", fullmatch=True), json_literal),
                       max_size=3).map(lambda rules: ", ".join(f"{p}={json.dumps(v, ensure_ascii=False)}" for p, v in rules))


def as_written(value: str) -> str:
    """A value in inventory syntax: a backslash before every # and ; (one is taken off when read)."""
    return re.sub(r"([#;])", r"\\\1", value)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(url=legal_url, rules=expect_json, method=st.sampled_from(["get", "POST", "Put"]))
@example(url="http://127.0.0.1:8080/?\\;", rules="", method="get")  # a backslash before ;: written \\;
def test_odd_but_legal_values_are_accepted_and_delivered_byte_for_byte(url, rules, method):
    """Written as the inventory's grammar says (every # and ; as \\# and \\;, README), any
    visible text arrives byte for byte."""
    source = HOST + f"[job:odd]\nschedule = 0 * * * *\nurl = {as_written(url)}\nmethod = {method}\n"
    source += f"expect_json = {as_written(rules)}\n" if rules else ""
    inv = inventory.parse(source, "odd.ini", {})
    assert inv.jobs[0].url == url and inv.jobs[0].expect_json == rules
    check_units(inv)
