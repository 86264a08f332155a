"""inventory.ini -> Inventory: typed sections, [defaults] inheritance, ${VAR}, every problem at once."""
from __future__ import annotations

import configparser
import difflib
import os
import re
from dataclasses import dataclass
from typing import Callable, Iterator, Mapping, Optional

from .errors import InventoryError, Problem, ScheduleError
from .contract import paths
from .contract.channels import CHANNEL_TYPES, Channel, all_fields, types_taking
from .contract.options import (CREDENTIAL_OPTIONS, placeholders, CREDENTIALS_LIMIT, JOB_OPTIONS, MAX_CREDENTIALS, OPTIONS_BY_KEY,
                                Invalid, boolean, credentials, credentials_size, duration_seconds, readable_file, text,
                                url)
from .models import Alert, Host, Inventory, Job, Secret
from .schedule import check_calendar_lines, to_calendar, unknown_macro

NAME = paths.NAME
_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_BARE_VARIABLE = re.compile(r"^\$([A-Za-z_][A-Za-z0-9_]*)$")
_CONTROL = paths.CONTROL

HOST_KEY_POLICIES = ("strict", "accept-new")
# A lease under 10s would be renewed every few seconds for no gain; one over a week would leave
# `deployer move` waiting for a week.
MIN_LEASE, MAX_LEASE = 10.0, 7 * 86400.0
# Parsing takes ~10x the file in memory (a 100 MB inventory took 940 MB); 8 MiB holds tens of
# thousands of jobs, far more than one cron host runs.
MAX_INVENTORY = 8 * 2**20


def port(value: str) -> int:
    if not value.isdigit() or not 1 <= int(value) <= 65535:
        raise Invalid(f"{value!r} is not a port (1-65535)")
    return int(value)


def address(value: str) -> str:
    """A host name or IP address, alone: ssh's user@host:port shorthand would otherwise reach the
    SSH library, which refuses it with its own traceback when port or user is also set."""
    if not value or any(c.isspace() for c in value):
        raise Invalid(f"{value!r} is not a host name or IP address")
    if "://" in value:
        raise Invalid(f"{value!r} is a URL; give the host name or IP address alone")
    user, at, rest = value.rpartition("@")
    if at:
        raise Invalid(f"{value!r} holds a user: write user = {user} and address = {rest}")
    bracketed = re.match(r"^\[([^\]]*)\](?::(.*))?$", value)
    host, port_ = bracketed.groups() if bracketed else value.partition(":")[::2]
    if bracketed or value.count(":") == 1:
        where = f"write port = {port_} and address = {host}" if port_ else f"write address = {host}"
        raise Invalid(f"{value!r} holds {'a port' if port_ else 'brackets' if bracketed else 'a colon'}: {where}")
    return value


_SIZE = re.compile(r"^\d+[KMGT]?$")


def whole_number(low: int, high: int) -> Callable[[str], int]:
    def parse(value: str) -> int:
        if not value.isdigit() or not low <= int(value) <= high:
            raise Invalid(f"{value!r} is not a whole number from {low} to {high}")
        return int(value)

    return parse


def size(value: str) -> str:
    """A systemd byte size: 512M, 2G, or bytes."""
    if not _SIZE.match(value) or int(value.rstrip("KMGT")) == 0:
        raise Invalid(f"{value!r} is not a size (e.g. 512M, 2G)")
    return value


def directory(value: str) -> str:
    """An absolute directory path for a unit's command line, or "" (the feature is off)."""
    if value and (not value.startswith("/") or any(c.isspace() for c in value) or "%" in value
                  or "/../" in value + "/"):
        raise Invalid(f"{value!r} is not an absolute directory path (no spaces, no '..'), or empty")
    return value.rstrip("/") or ("/" if value else "")


def one_of(choices: tuple[str, ...]) -> Callable[[str], str]:
    def parse(value: str) -> str:
        if value not in choices:
            # a short, closed list: a looser match still helps (dingding -> dingtalk, wechat -> wecom)
            raise Invalid(f"{value!r} is not one of {', '.join(choices)}" + _suggest(value, choices, 0.5))
        return value

    return parse


def lease(value: str) -> float:
    """How long a host's lease on its jobs lasts (renewed at a third of it while it is up)."""
    seconds = duration_seconds(value)
    if not MIN_LEASE <= seconds <= MAX_LEASE:
        raise Invalid(f"{value!r} must be between {MIN_LEASE:g}s and {MAX_LEASE / 86400:g}d")
    return seconds


# --- the schema ---------------------------------------------------------------------------


class _AlertKeys(Mapping):
    """The [alert:NAME] keys: `type`, and every field a channel type declares (channels.py), read
    from CHANNEL_TYPES when asked: a channel type's fields are declared there alone."""

    def _keys(self) -> dict:
        return {"type": one_of(tuple(CHANNEL_TYPES)), **{key: f.parse for key, f in all_fields().items()}}

    def __getitem__(self, key: str) -> Callable[[str], object]:
        return self._keys()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys())

    def __len__(self) -> int:
        return len(self._keys())


SCHEMA: Mapping[str, Mapping[str, Callable[[str], object]]] = {
    "host": {
        "address": address,
        "port": port,
        "user": text,
        "identity_file": readable_file,
        "known_hosts": text,
        "host_key": one_of(HOST_KEY_POLICIES),
        "sudo": boolean,
        "python": text,
        "sandbox": one_of(("strict", "fast")),
        "cpu_weight": whole_number(1, 10000),
        "memory_max": size,
        "tasks_max": whole_number(1, 1 << 22),
        "metrics_dir": directory,
        "heartbeat_url": url,
        "lease": lease,
    },
    "defaults": {o.key: o.parse for o in JOB_OPTIONS if not o.job_only},
    "alert": _AlertKeys(),
    "job": {o.key: o.parse for o in JOB_OPTIONS},
}
REQUIRED = {"host": ("address",), "alert": ("type",), "job": tuple(o.key for o in JOB_OPTIONS if o.required)}
SECRET_KEYS = {"heartbeat_url"}  # a Healthchecks URL is its own password; and a channel's secret fields


def _secret(kind: str, key: str) -> bool:
    field_ = all_fields().get(key) if kind == "alert" else None
    return key in SECRET_KEYS or bool(field_ and field_.secret)
MULTILINE_KEYS = {o.key for o in JOB_OPTIONS if o.multiline}  # one value per (continuation) line


@dataclass
class _Collector:
    """Gathers problems so that one `validate` shows every mistake at once."""

    path: str
    lines: dict[tuple[str, Optional[str]], int]

    def __post_init__(self):
        self.problems: list[Problem] = []

    def has(self, section: str, key: str) -> bool:
        return any(p.section == section and p.key == key for p in self.problems)

    def add(self, section: Optional[str], key: Optional[str], message: str) -> None:
        line = self.lines.get((section, key)) or self.lines.get((section, None))
        self.problems.append(Problem(self.path, section, key, message, line))


def _line_numbers(source: str) -> dict[tuple[str, Optional[str]], int]:
    """(section, key) -> first line, so an error points where the operator must look."""
    found: dict[tuple[str, Optional[str]], int] = {}
    section = None
    for number, raw in enumerate(source.splitlines(), 1):
        stripped = raw.strip()
        if stripped.startswith("[") and "]" in stripped:
            section = stripped[1 : stripped.index("]")].strip()
            found.setdefault((section, None), number)
        elif section and stripped and not raw[0].isspace() and stripped[0] not in ";#":
            key = re.split(r"[=:]", stripped, 1)[0].strip().lower()
            found.setdefault((section, key), number)
    return found


_ASSIGNMENT = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*=")
_KEY = re.compile(r"^\s*([^=:]*?)\s*[=:]")


def _indented_lines(source: str, path: str) -> tuple[str, list[Problem]]:
    """Indented lines that INI would glue onto the key above, refused one by one.

    configparser reads an indented line as more of the previous value (that is how on_calendar
    and headers hold one entry per line), so a stray `  url = ...` became part of `schedule`,
    and then came two wrong errors. Indentation is refused rather than guessed away: every
    other INI reader would still see a continuation, and a multi-line key needs it. Returns
    the source with those lines repaired as meant (so the rest is still checked) and the problems.
    """
    lines = source.split("\n")
    problems: list[Problem] = []
    section, key, key_line, key_indent = None, None, 0, 0
    for index, raw in enumerate(lines):
        stripped = raw.strip()
        if not stripped:
            key = None  # empty_lines_in_values=False: a blank line ends a value
            continue
        if stripped[0] in ";#":
            continue
        indent = len(raw) - len(raw.lstrip())
        if key is not None and indent > key_indent:
            assignment = _ASSIGNMENT.match(raw)
            if key in MULTILINE_KEYS and not assignment and not stripped.startswith("["):
                continue  # one more on_calendar / headers entry
            number = index + 1
            if assignment or stripped.startswith("["):
                what = assignment.group(1).lower() if assignment else None
                problems.append(Problem(path, section, what, "is indented, so INI reads it as more of "
                                        f"{key!r} (line {key_line}): remove the leading spaces", number))
                lines[index] = raw = raw.lstrip()
                indent = 0
            else:
                problems.append(Problem(path, section, key, f"line {number} is indented, so INI reads it as more "
                                        f"of this value, which takes one line: join the lines, or remove the "
                                        f"leading spaces", key_line))
                lines[index] = ";"  # keeps the line numbers of what follows
                continue
        if stripped.startswith("[") and "]" in stripped:
            section, key = stripped[1:stripped.index("]")].strip(), None
            continue
        match = _KEY.match(raw)
        if match:
            key, key_line, key_indent = match.group(1).lower(), index + 1, indent
    return "\n".join(lines), problems


# Keys whose value is free text: a space then `#` or `;` may well be part of it (a body's
# "batch #7 ; retry", a header, a secret, a file name). There an inline comment needs two spaces
# (or a tab) before it, as every example writes it; one space is refused, not guessed. Other keys
# cannot hold a space before `#` or `;` (a URL, a number, a zone, a cron line), so there `value ; x`
# is always a comment.
# A channel's secret fields (a token, a signing secret) are free text too.
FREE_TEXT_KEYS = frozenset({"body", "headers", "expect_json", "content_type", "sign_secret", "identity_file",
                            "known_hosts", "ca_file", "client_cert", "client_key", "python"}
                           | {key for key, f in all_fields().items() if f.secret})


def _free_text(key: Optional[str]) -> bool:
    field_ = all_fields().get(key or "")
    return key in FREE_TEXT_KEYS or bool(field_ and field_.secret)
_ESCAPED = re.compile(r"\\([#;])")


def _comment_start(line: str) -> int:
    """Where an inline comment begins: a `;` or `#` right after white space (configparser's rule,
    kept so that every inventory reads as before); -1 when there is none."""
    for index in range(1, len(line)):
        if line[index] in ";#" and line[index - 1].isspace():
            return index
    return -1


def _open_quote(text_: str) -> bool:
    """Whether text ends inside a double-quoted string (a backslash escapes the next character)."""
    inside, index = False, 0
    while index < len(text_):
        if text_[index] == "\\":
            index += 1
        elif text_[index] == '"':
            inside = not inside
        index += 1
    return inside


def _inline_comments(source: str, path: str) -> tuple[str, list[Problem]]:
    """The source without its inline comments, and the ones whose cut would be ambiguous, refused.

    configparser would cut `body = {"note": "batch #7 ; retry"}` at ` #` without a word, and the
    service would receive `{"note": "batch`. We cut comments here instead, by the same rule, and
    refuse a cut that may have been meant as text: one inside a "quoted string" (any key), or one
    after a single space in a free-text key. A literal `#` or `;` is written `\\#` or `\\;`
    (unescaped in _section_values, after this cut and before ${VAR} expansion).
    """
    lines = source.split("\n")
    problems: list[Problem] = []
    section, key, key_indent = None, None, 0
    for index, raw in enumerate(lines):
        stripped = raw.strip()
        if not stripped or stripped[0] in ";#":
            if not stripped:
                key = None
            continue
        indent = len(raw) - len(raw.lstrip())
        start = _comment_start(raw)
        head = raw if start < 0 else raw[:start]
        if stripped.startswith("[") and "]" in stripped:
            section, key = stripped[1:stripped.index("]")].strip(), None
            lines[index] = head.rstrip()
            continue
        match = _KEY.match(head)
        if (key is None or indent <= key_indent) and match:
            key, key_indent = match.group(1).lower(), indent
            value = head[match.end():]
        else:
            value = head
        if start < 0:
            continue
        lines[index] = head.rstrip()
        mark, comment = raw[start], raw[start:].rstrip()
        single_space = not raw[start - 2:start - 1].isspace() and raw[start - 1] == " "
        if _open_quote(value):
            why, otherwise = "inside a quoted string", "close the quote before a comment"
        elif _free_text(key) and single_space:
            why, otherwise = "after a single space", "put two spaces before a comment"
        else:
            continue
        shown = comment if len(comment) <= 30 else comment[:27] + "..."
        problems.append(Problem(path, section, key, f"{shown!r} would be cut off as a comment ({mark} {why}): "
                                f"write \\{mark} for a literal {mark}, or {otherwise}", index + 1))
    return "\n".join(lines), problems


def _quotes_hint(value: str) -> str:
    """Shell and YAML habits: `url = "http://..."` keeps its quotes in INI."""
    quoted = len(value) > 1 and value[0] == value[-1] and value[0] in "\"'"
    return " (INI values take no quotes: remove them)" if quoted else ""


def _suggest(word: str, choices, cutoff: float = 0.6) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=cutoff)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _first_line(report: _Collector, section: str, key: Optional[str]) -> str:
    """`at line 12`: configparser names only the line of the second of two."""
    line = report.lines.get((section.strip(), key))
    return f"at line {line}" if line else "above"


def _read_config(path: str, source: str, report: _Collector) -> Optional[configparser.RawConfigParser]:
    config = configparser.RawConfigParser(
        comment_prefixes=(";", "#"),
        inline_comment_prefixes=None,  # cut by _inline_comments, which refuses an ambiguous cut
        strict=True,
        empty_lines_in_values=False,
        default_section="\0no-default-section",  # [DEFAULT] is not ours: report it as unknown
    )
    try:
        config.read_string(source, source=path)
    except configparser.DuplicateSectionError as error:
        first = _first_line(report, error.section, None)
        report.problems.append(Problem(path, error.section, None, f"duplicates the one {first}", error.lineno))
    except configparser.DuplicateOptionError as error:
        first = _first_line(report, error.section, error.option)
        report.problems.append(Problem(path, error.section, error.option, f"appears twice; the first {first}",
                                       error.lineno))
    except configparser.MissingSectionHeaderError as error:
        report.problems.append(Problem(path, None, None, "a key before any [section]", error.lineno))
    except configparser.ParsingError as error:
        for lineno, line in error.errors:
            report.problems.append(Problem(path, None, None, f"cannot parse {line.strip()!r}", lineno))
    else:
        return config
    return None


def _expand(value: str, env: Mapping[str, str]) -> tuple[str, list[str]]:
    missing: list[str] = []

    def replace(match: re.Match) -> str:
        if match.group(1) not in env:
            missing.append(match.group(1))
            return ""
        return env[match.group(1)]

    return _VARIABLE.sub(replace, value), missing


def _section_values(config, section: str, kind: str, env, report, variables: Optional[dict] = None
                    ) -> dict[str, object]:
    """Parse one section's keys with the schema; unknown, unset and invalid keys are reported."""
    schema = SCHEMA[kind]
    values: dict[str, object] = {}
    for key, raw in config.items(section):
        if key not in schema:
            report.add(section, key, "unknown key" + _suggest(key, schema))
            continue
        if report.has(section, key):
            continue  # already refused (an ambiguous comment): what is left of it is not what was meant
        raw = _ESCAPED.sub(r"\1", raw)  # `\#` and `\;`: a literal # and ;
        bare = _BARE_VARIABLE.match(raw.strip())
        if bare:  # shell habit: `$TOKEN` would be pushed as the five characters "$TOKEN"
            report.add(section, key, f"{raw.strip()!r} is taken literally: write ${{{bare.group(1)}}} to read it "
                       "from the environment")
            continue
        whole = _VARIABLE.fullmatch(raw.strip())
        if whole and variables is not None:
            kind_, _, title = section.partition(":")
            variables[f"{kind_.strip()}:{title.strip()}" if title else section, key] = whole.group(1)
        expanded, missing = _expand(raw.strip(), env)
        if missing:
            report.add(section, key, f"environment variable {missing[0]} is not set")
            continue
        try:
            for line in expanded.splitlines() if key in MULTILINE_KEYS else [expanded]:
                text(line)
            value = schema[key](expanded)
        except Invalid as error:
            report.add(section, key, str(error) + _quotes_hint(expanded))
            continue
        values[key] = Secret(value) if _secret(kind, key) and value else value
    for key in REQUIRED.get(kind, ()):
        if key not in values and not report.has(section, key):
            report.add(section, key, "is required")
    return values


_SECTION = re.compile(r"^\[\s*(host|alert|job)\s*:\s*([^\]\s]+)\s*\]", re.M)


def declared_names(path: str, kind: str) -> list[str]:
    """The NAME of every [kind:NAME] in the file, in order, checking nothing else: shell
    completion reads it on every Tab, and an inventory with an unset ${VAR} or a typo
    elsewhere must still complete. [] when the file cannot be read."""
    try:
        with open(path, encoding="utf-8") as handle:
            source = handle.read(MAX_INVENTORY)
    except (OSError, UnicodeDecodeError):
        return []
    names = [name for found, name in _SECTION.findall(source) if found == kind and NAME.match(name)]
    return list(dict.fromkeys(names))


def load(path: str, env: Optional[Mapping[str, str]] = None) -> Inventory:
    """Read and check an inventory; raise InventoryError listing every problem found."""
    return parse(read_source(path), path, os.environ if env is None else env)


def load_for_job(path: str, job: str, env: Optional[Mapping[str, str]] = None) -> Inventory:
    """The inventory as a read of one job's runs needs it (`history`, `logs`): [defaults], every
    [host:*] and [alert:*], and [job:JOB] are read and checked as `load` reads them; of each other
    job only its name and `on_failure_run` (which decides whether JOB may go without a schedule).
    The Inventory holds JOB alone. At 10,000 jobs checking them all cost `history` three times
    what its one journal read costs (issue 25); and a mistake in another job's section does not
    hide a job's runs on the day they are needed. A JOB the file does not declare is `load`'s
    error, with its did-you-mean."""
    env = os.environ if env is None else env
    source = read_source(path).removeprefix("\ufeff")
    focused = _only_job(source, job, keep_lines=False)
    if focused is None:
        return parse(source, path, env)
    try:
        return parse(focused[0], path, env, others=focused[1])
    except InventoryError:
        # Read again with the other jobs' lines blanked, not cut: the errors name their lines.
        blanked, others = _only_job(source, job)
        return parse(blanked, path, env, others=others)


# Section lines, each after a "\n" (the text is searched with one put before it): any; any but a
# job's; a job's, with its name. Then `on_failure_run =` (as `.lower()` reads a key; re.I would
# also take a dotless i), and the indented section or key lines that INI may read as more of the
# value above.
_ANY_SECTION = re.compile(r"\n\[[^\]\n]*\]")
_OTHER_THAN_JOB_SECTION = re.compile(r"\n\[(?![^\S\n]*job[^\S\n]*(?::|\]))[^\]\n]*\]")
_JOB_SECTION = re.compile(r"\n\[[^\S\n]*job[^\S\n]*(?::([^\]\n]*))?\]")
_FAILURE_RUN_KEY = r"[oO][nN]_[fF][aA][iI][lL][uU][rR][eE]_[rR][uU][nN][^\S\n]*[=:]"
_FAILURE_RUN = re.compile(r"\n" + _FAILURE_RUN_KEY + r"([^\n]*)")
_INDENTED_SECTION_OR_FAILURE_RUN = re.compile(r"\n[^\S\n]+(?:\[|" + _FAILURE_RUN_KEY + ")")


def _only_job(source: str, job: str, keep_lines: bool = True) -> Optional[tuple[str, dict[str, str]]]:
    """The source with every line of the other job sections blanked (the line numbers kept, for
    the errors), and those jobs' names -> `on_failure_run` as written ("" when none); None if
    no [job:JOB] is written. Where no section line and no `on_failure_run` is indented, the
    sections are found by searching the text, not line by line (10,000 jobs: 21 ms of
    `history`'s 300 -> a few); there, unless `keep_lines`, those sections are cut out, not
    blanked (reading 30,000 blank lines took 15 ms more)."""
    text = "\n" + source
    if _INDENTED_SECTION_OR_FAILURE_RUN.search(text):
        return _only_job_by_line(source, job)
    kept = [section.start() for section in _OTHER_THAN_JOB_SECTION.finditer(text)]
    others: dict[str, str] = {}
    found = False
    for section in _JOB_SECTION.finditer(text):
        title = (section.group(1) or "").strip()
        if title == job:
            kept.append(section.start())
            found = True
        else:
            others[title] = ""
    if not found:
        return None
    for failure_run in _FAILURE_RUN.finditer(text):  # a section's last counts, as in configparser
        title = _title(text, _section_before(text, failure_run.start()))
        if title in others:
            value = failure_run.group(1)
            cut = _comment_start(value)
            others[title] = (value if cut < 0 else value[:cut]).strip()
    first = _ANY_SECTION.search(text)
    spans = [(0, first.start() if first else len(text))]  # kept: what comes before any section
    for start in sorted(kept):
        after = _ANY_SECTION.search(text, start + 1)
        spans.append((start, after.start() if after else len(text)))
    pieces, end = [], 0
    for start, stop in spans:
        pieces += ["\n" * text.count("\n", end, start) if keep_lines else "", text[start:stop]]
        end = stop
    if keep_lines:
        pieces.append("\n" * text.count("\n", end))
    return "".join(pieces)[1:], others


def _section_before(text: str, position: int) -> int:
    """Where the section holding `position` begins (-1: before any)."""
    start = text.rfind("\n[", 0, position)
    while start >= 0 and not _ANY_SECTION.match(text, start):
        start = text.rfind("\n[", 0, start)
    return start


def _title(text: str, start: int) -> Optional[str]:
    """The job's name in the section line at `start`; None if it is not a job's."""
    found = _JOB_SECTION.match(text, start) if start >= 0 else None
    return None if found is None else (found.group(1) or "").strip()


def _only_job_by_line(source: str, job: str) -> Optional[tuple[str, dict[str, str]]]:
    """_only_job, line by line, following INI's continuation rule."""
    lines = source.split("\n")
    others: dict[str, str] = {}
    other, found = None, False
    key_indent = None  # the indentation of the key whose value is open (INI's continuation rule)
    for index, raw in enumerate(lines):
        stripped = raw.strip()
        indent = len(raw) - len(raw.lstrip())
        more = key_indent is not None and indent > key_indent  # more of that key's value
        if not stripped:
            key_indent = None  # empty_lines_in_values=False: a blank line ends a value
        elif stripped[0] not in ";#" and not more:
            key_indent = indent
        if not more and stripped.startswith("[") and "]" in stripped:
            key_indent = None
            kind, _, title = stripped[1:stripped.index("]")].partition(":")
            kind, title = kind.strip(), title.strip()
            other = title if kind == "job" and title != job else None
            found = found or (kind == "job" and title == job)
            if other is None:
                continue
            others.setdefault(other, "")
        elif other is None:
            continue
        key = _KEY.match(raw)
        if key and not more and key.group(1).lower() == "on_failure_run":
            value = raw[key.end():]
            cut = _comment_start(value)
            others[other] = (value if cut < 0 else value[:cut]).strip()
        lines[index] = ""
    return ("\n".join(lines), others) if found else None


def read_source(path: str) -> str:
    """The inventory's text, as `load` reads it: `load(path)` is `parse(readread_source(path), path, os.environ)`."""
    try:
        with open(path, encoding="utf-8") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size > MAX_INVENTORY:
                raise InventoryError([Problem(path, None, None, f"is {size} bytes: an inventory may be at most "
                                              f"{MAX_INVENTORY} bytes ({MAX_INVENTORY // 2**20} MiB); split it "
                                              "(one file per host, -i FILE)")])
            source = handle.read(MAX_INVENTORY + 1)
    except FileNotFoundError as error:
        raise InventoryError([Problem(path, None, None, f"cannot read: {error.strerror} (give the inventory "
                                      "with -i FILE or $DEPLOYER_INVENTORY)")]) from None
    except OSError as error:
        raise InventoryError([Problem(path, None, None, f"cannot read: {error.strerror}")]) from None
    except UnicodeDecodeError:
        raise InventoryError([Problem(path, None, None, "is not UTF-8 text")]) from None
    return source


def parse(source: str, path: str, env: Mapping[str, str], others: Optional[Mapping[str, str]] = None) -> Inventory:
    """Check an inventory's text. `others`: jobs whose sections load_for_job took out (name ->
    on_failure_run as written), declared but not checked."""
    # A UTF-8 byte order mark (Windows editors write one) is not a key before any [section].
    source, indented = _indented_lines(source.removeprefix("\ufeff"), path)
    source, commented = _inline_comments(source, path)
    report = _Collector(path, _line_numbers(source))
    report.problems.extend(indented + commented)
    config = _read_config(path, source, report)
    if config is None:
        raise InventoryError(report.problems)

    hosts: list[Host] = []
    alerts: list[Alert] = []
    job_sections: list[tuple[str, str, dict]] = []
    defaults: dict[str, object] = {}
    seen: dict[tuple[str, str], str] = {}
    variables: dict[tuple[str, str], str] = {}
    # Every [host:*] and [alert:*] written, valid or not: a reference to one that has its own
    # problem (type = dingding) is not also "no [alert:ops]".
    declared: dict[str, list[str]] = {"host": [], "alert": []}
    for section in config.sections():
        kind, _, title = section.partition(":")
        kind, title = kind.strip(), title.strip()
        if (kind, title) in seen and kind in ("host", "alert", "job"):
            # configparser compares names as written: [job:a] and [job: a] would be two sections
            report.add(section, None, f"the same section as [{seen[kind, title]}] (spaces around the "
                       "name do not count)")
            continue
        seen[kind, title] = section
        if section == "defaults":
            defaults = _section_values(config, section, "defaults", env, report)
            continue
        if kind not in ("host", "alert", "job") or not title:
            hint = _suggest(kind, ("host", "alert", "job", "defaults"))
            report.add(section, None, "unknown section; use [host:NAME], [alert:NAME], "
                       "[job:NAME] or [defaults]" + hint)
            continue
        if not NAME.match(title):
            meant = title.lower().replace("_", "-").replace(" ", "-")
            hint = f" (did you mean [{kind}:{meant}]?)" if NAME.match(meant) else ""
            report.add(section, None, f"name {title!r} must match [a-z0-9][a-z0-9-]{{0,62}}{hint}")
            continue
        values = _section_values(config, section, kind, env, report, variables)
        if kind in declared:
            declared[kind].append(title)
        if kind == "host" and "address" in values:
            hosts.append(Host(name=title, **values))
        elif kind == "alert" and "type" in values:
            alerts.append(_alert(title, values, section, report))
        elif kind == "job":
            job_sections.append((section, title, values))

    for key in ("host", "alert"):
        ref = defaults.get(key)
        if ref and ref not in declared[key]:
            report.add("defaults", key, f"no [{key}:{ref}]" + _suggest(ref, declared[key]))
    # Jobs another one starts when it fails: they have no schedule of their own (see _job).
    failure_targets = {v["on_failure_run"] for _, _, v in job_sections if v.get("on_failure_run")}
    failure_targets |= {_expand(target, env)[0] for target in (others or {}).values() if target}
    jobs = [j for j in (_job(s, t, v, defaults, declared["host"], declared["alert"], report, t in failure_targets)
                        for s, t, v in job_sections) if j]
    _check_native_calendars(jobs, report)
    _check_chains(jobs, [t for _, t, _ in job_sections] + list(others or ()), report)
    if report.problems:
        raise InventoryError(report.problems)
    return Inventory(path, tuple(hosts), tuple(alerts), tuple(jobs), variables)


def _check_chains(jobs: list[Job], declared: list[str], report: _Collector) -> None:
    """`after` and `on_failure_run` name a declared job on the same host, and no chain comes back
    to where it started (systemd would start the units of a loop forever)."""
    by_name = {job.name: job for job in jobs}
    edges: dict[str, list[tuple[str, str]]] = {}  # parent -> [(child, the key that links them)]
    for job in jobs:
        for key, parent, child in (("after", job.after, job.name), ("on_failure_run", job.name, job.on_failure_run)):
            named = job.after if key == "after" else job.on_failure_run
            if not named:
                continue
            if named not in declared:
                report.add(f"job:{job.name}", key, f"no [job:{named}]" + _suggest(named, declared))
            elif named == job.name:
                report.add(f"job:{job.name}", key, "names the job itself (a cycle)")
            elif named in by_name and by_name[named].host != job.host:
                report.add(f"job:{job.name}", key, f"[job:{named}] runs on host {by_name[named].host}, this job on "
                           f"{job.host}: a chain runs on one host (systemd starts the next unit there)")
            elif named in by_name:
                edges.setdefault(parent, []).append((child, key))
    reach = {start: _reachable(start, edges) for start in edges}
    reported: set[str] = set()
    for start in sorted(edges):
        if start in reported or start not in reach[start]:
            continue
        loop = {name for name in reach[start] if start in reach.get(name, ())}  # the jobs of this cycle
        reported |= loop
        # Named once, at the first key (in file order) that links two jobs of the cycle.
        name, key = next((job.name, key) for job in jobs for key, parent, child in
                         (("after", job.after, job.name), ("on_failure_run", job.name, job.on_failure_run))
                         if parent in loop and child in loop)
        report.add(f"job:{name}", key, f"is part of a cycle ({' -> '.join(sorted(loop))}): after/on_failure_run "
                   "must not loop")


def _reachable(start: str, edges: dict) -> set[str]:
    """The jobs a chain from `start` reaches (`start` itself only through a cycle)."""
    seen, todo = set(), [start]
    while todo:
        for child, _ in edges.get(todo.pop(), ()):
            if child not in seen:
                seen.add(child)
                todo.append(child)
    return seen


def _check_native_calendars(jobs: list[Job], report: _Collector) -> None:
    """systemd itself judges on_calendar lines (one local systemd-analyze call for all), after
    the cron macros written there."""
    lines = {}
    for job in jobs:
        for line in job.on_calendar:
            macro = _macro_on_calendar(line)
            if macro:
                report.add(f"job:{job.name}", "on_calendar", macro)
            else:
                lines[job.name, line] = to_calendar(None, (line,), job.timezone).lines[0]
    try:
        refused = check_calendar_lines(sorted(set(lines.values())))
    except ScheduleError:
        return  # no systemd-analyze here: the host's `systemd-analyze verify` will judge them
    for (job, line), zoned in lines.items():
        if zoned in refused:
            report.add(f"job:{job}", "on_calendar", f"systemd cannot parse {line!r}")


def _macro_on_calendar(line: str) -> Optional[str]:
    """`on_calendar = @weekly`: systemd reads `@` as a Unix time (`@1700000000`) and would say
    only "cannot parse"; name the macro, and where one goes."""
    word = line.split()[0]
    if not word.startswith("@") or word[1:2].isdigit():
        return None
    wrong = unknown_macro(word)
    if wrong:
        return f"{wrong}; a macro goes in schedule =, on_calendar takes systemd calendar lines"
    return f"{word} is a cron macro: write schedule = {line}; on_calendar takes systemd calendar lines"


def _alert(title: str, values: dict, section: str, report: _Collector) -> Alert:
    """The channel's fields as its type declares them (channels.CHANNEL_TYPES): each required one
    given, none that only other types take."""
    kind = CHANNEL_TYPES[values["type"]]
    for field_ in kind.fields:
        if field_.required and not values.get(field_.key) and not report.has(section, field_.key):
            report.add(section, field_.key, f"is required for type = {kind.name}")
    for key in values:
        if key != "type" and values[key] and not kind.field(key):
            field_ = all_fields()[key]
            report.add(section, key, f"{field_.purpose or key} is only for {' and '.join(types_taking(key))}, "
                       f"not {kind.name}")
    return Channel.of(title, kind.name, {key: value for key, value in values.items() if key != "type"})


def _params_match(section, merged, report) -> bool:
    """Every ${{name}} in the url and body is declared in params, and every declared one is used."""
    declared = [name for name, _ in merged.get("params") or ()]
    used = {key: placeholders(str(merged.get(key) or "")) for key in ("url", "body")}
    ok = True
    for key, names in used.items():
        undeclared = [name for name in names if name not in declared]
        if undeclared:
            report.add(section, key, f"${{{{{undeclared[0]}}}}} is not declared in params "
                       f"(add params = {undeclared[0]}=DEFAULT)")
            ok = False
    unused = [name for name in declared if not any(name in names for names in used.values())]
    if unused and not report.has(section, "params"):
        report.add(section, "params", f"{unused[0]} is used in neither url nor body (write ${{{{{unused[0]}}}}} there)")
        ok = False
    return ok


def _job(section, title, values, defaults, hosts: list[str], alert_names: list[str], report,
         started_on_failure: bool = False) -> Optional[Job]:
    merged = {**defaults, **values}
    ok = True
    already_wrong = report.has(section, "schedule") or report.has(section, "on_calendar")
    # A chained job runs for its parent's slot (after =, or another's on_failure_run): a
    # calendar of its own would give it two meanings of "slot", and systemd 252 would key its
    # chained runs by the timer's last elapse ($TRIGGER_UNIT stays in a later start's environment).
    chained = bool(merged.get("after")) or started_on_failure
    calendar = [k for k in ("schedule", "on_calendar") if k in merged]
    if chained and calendar and not already_wrong:
        why = "after" if merged.get("after") else "another job's on_failure_run"
        report.add(section, calendar[0], f"a job started by {why} has no schedule of its own "
                   "(it runs for its parent's slot): remove it")
        ok = False
    elif not chained and len(calendar) != 1 and not already_wrong:
        report.add(section, "schedule", "give exactly one of schedule (cron), on_calendar (systemd) or after "
                   "(another job)")
        ok = False
    host = merged.get("host")
    if host is None:
        if len(hosts) == 1:
            host = hosts[0]
        else:
            report.add(section, "host", "is required: the inventory has "
                       f"{len(hosts) or 'no'} [host:*] sections; set host here or in [defaults]")
            ok = False
    elif "host" in values and host not in hosts:
        report.add(section, "host", f"no [host:{host}]" + _suggest(host, hosts))
        ok = False
    alert = merged.get("alert")
    if "alert" in values and alert and alert not in alert_names:
        report.add(section, "alert", f"no [alert:{alert}]" + _suggest(alert, alert_names))
        ok = False
    zone = merged.get("timezone", "UTC")
    if "schedule" in merged:
        try:
            to_calendar(merged["schedule"], (), zone)
        except ScheduleError as error:
            report.add(section, "schedule", str(error) + _quotes_hint(merged["schedule"]))
            ok = False
    if not _params_match(section, merged, report) or not ok or "url" not in merged:
        return None
    found = credentials(merged)
    if credentials_size(found) > MAX_CREDENTIALS:
        key = max(found, key=lambda name: len(found[name]))
        key = next(o.key for o in CREDENTIAL_OPTIONS if o.credential == key)
        report.add(section, key, f"the run's credentials ({', '.join(sorted(found))}) come to "
                   f"{credentials_size(found)} bytes; at most {MAX_CREDENTIALS} (systemd refuses a run more than "
                   f"{CREDENTIALS_LIMIT} bytes of credentials, names included, and the deployer keeps 4 KiB): "
                   "every run would fail with exit 243. Send less, or let the service fetch it")
        return None
    fields = {OPTIONS_BY_KEY[k].dest if k in OPTIONS_BY_KEY else k: v for k, v in merged.items()}
    fields = {k: v for k, v in fields.items() if k in Job.__dataclass_fields__}
    fields.update(name=title, host=host, alert=alert)
    return Job(**fields)
