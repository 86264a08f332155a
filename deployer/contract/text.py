"""Text that came from elsewhere (a service, a host, a journal): made printable for a terminal,
and with every secret value a run knows masked. Standard library only (runs on the host too).

`printable` is the one place that decides what reaches the operator's terminal; each alert
channel's own escaping (markup, mentions, links) lives beside it in channels.py.
"""
from __future__ import annotations

import base64
import json
import re
from urllib.parse import parse_qsl, quote, unquote, urlsplit

# The one way a duration is written, and what options.duration_seconds reads back.
_DURATION_PARTS = (("d", 86400), ("h", 3600), ("m", 60), ("s", 1))


def duration_text(seconds: float, largest: int = 0) -> str:
    """7200 -> `2h`, 5400 -> `1h30m`, 90 -> `1m30s`, 0.5 -> `500ms`. With `largest`, only that many
    of the largest units, the rest dropped (an elapsed time for a person: 7985 -> `2h13m`)."""
    whole, rest = int(seconds), seconds - int(seconds)
    parts = []
    for unit, size in _DURATION_PARTS:
        if whole >= size:
            parts.append("%d%s" % (whole // size, unit))
            whole %= size
    if rest and not largest:
        parts.append("%gms" % round(rest * 1000))
    return "".join(parts[:largest] if largest else parts) or "0s"


# C0 controls, DEL, C1 controls, and lone surrogates (which a terminal encoder cannot even write).
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_CONTROL_KEEPING_LINES = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")
_NAMED = {"\x1b": "\\e", "\r": "\\r", "\n": "\\n", "\b": "\\b", "\a": "\\a", "\f": "\\f", "\v": "\\v",
          "\x00": "\\0"}


def _shown(match) -> str:
    char = match.group(0)
    code = ord(char)
    return _NAMED.get(char) or ("\\x%02x" % code if code < 0x100 else "\\u%04x" % code)


def printable(text, newlines: bool = False) -> str:
    """`text` with every C0 and C1 control and DEL shown as a visible escape (`\\e`, `\\r`,
    `\\x9b`): no ESC/CSI/OSC sequence, bell, backspace or carriage return reaches a terminal as
    such. A tab stays; a newline stays only with `newlines` (text meant as several lines)."""
    text = "" if text is None else str(text)
    if not newlines:
        return _CONTROL.sub(lambda m: "\t" if m.group(0) == "\t" else _shown(m), text)
    return _CONTROL_KEEPING_LINES.sub(_shown, text)


# -- secrets ------------------------------------------------------------------------------------

MASK = "***"
# A shorter "secret" would mask innocent text everywhere (and guards nothing worth guarding).
MIN_SECRET = 4
# Query parameters whose values are secrets by their name (api_key=, token=, sig=...): masked in
# what a run logs (here) and kept out of the unit (options.redact_url), one list for both.
SECRET_QUERY = re.compile(r"(?i)(key|token|secret|pass|pwd|auth|sig|session|credential|cookie|private|jwt)")
_SECRET_QUERY = SECRET_QUERY


def _forms(secret: str) -> set:
    """A secret as a service may echo it back: as sent, percent-encoded, JSON-escaped."""
    return {secret, quote(secret, safe=""), json.dumps(secret)[1:-1]}


def header_secrets(value: str) -> list:
    """The secret parts of one header value: all of it, and for `Scheme credentials` (Bearer,
    Basic, Token...) the credentials alone; for Basic also what they decode to, and the password."""
    value = value.strip()
    found = [value]
    scheme, _, credentials = value.partition(" ")
    credentials = credentials.strip()
    if credentials and " " not in credentials:
        found.append(credentials)
        if scheme.lower() == "basic":
            try:
                decoded = base64.b64decode(credentials, validate=True).decode("utf-8")
            except (ValueError, UnicodeDecodeError):
                decoded = ""
            if decoded:
                found += [decoded, decoded.partition(":")[2]]
    return found


def url_secrets(url: str) -> list:
    """The URL's password (and the Basic credentials a client makes of its userinfo), and the
    values of query parameters named like secrets."""
    try:
        parts = urlsplit(url)
        password = parts.password
        query = parse_qsl(parts.query, keep_blank_values=True)
    except ValueError:
        return []
    found = []
    if password is not None:
        user = unquote(parts.username or "")
        found += [unquote(password), password]
        found += header_secrets("Basic " + base64.b64encode(f"{user}:{unquote(password)}".encode()).decode())
    found += [value for name, value in query if _SECRET_QUERY.search(name)]
    return found


class Masker:
    """Replaces every known secret value (in the forms a service may echo it) with MASK."""

    def __init__(self, secrets=()):
        forms = set()
        for secret in secrets:
            if secret and len(secret) >= MIN_SECRET:
                forms |= {f for f in _forms(secret) if len(f) >= MIN_SECRET}
        # Longest first: a secret that contains another is masked whole.
        self.pattern = re.compile("|".join(map(re.escape, sorted(forms, key=len, reverse=True)))) if forms else None

    def __call__(self, text: str) -> str:
        return self.pattern.sub(MASK, text) if self.pattern and text else text

    def __bool__(self) -> bool:
        return self.pattern is not None


def run_masker(url: str, headers=(), sign_secret=None, extra=()) -> Masker:
    """Every secret value a run knows: each header value from the `headers` credential (and its
    credentials part), the signing secret, the URL's password and secret-looking query values."""
    secrets = [s for _, value in headers for s in header_secrets(str(value))]
    secrets += url_secrets(url) + ([sign_secret] if sign_secret else []) + list(extra)
    return Masker(secrets)


CLOCK_FORMAT = "%Y-%m-%d %H:%M:%S UTC"  # as the CLI writes a moment (report.CLOCK_FORMAT), in UTC here


def utc_clock(seconds: float) -> str:
    """A moment as every deployer text on the host writes it: `2026-12-06 04:00:00 UTC`."""
    import time

    return time.strftime(CLOCK_FORMAT, time.gmtime(seconds))


def clock_of_iso(stamp: str) -> str:
    """An ISO 8601 time with its offset -> utc_clock(); anything else as it came."""
    import datetime

    try:
        return utc_clock(datetime.datetime.fromisoformat(stamp).timestamp())
    except (TypeError, ValueError):
        return str(stamp)

