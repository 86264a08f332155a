"""Success rules: is this response a successful run? Pure; the deployer validates inventories
with the same parsers the trigger judges with."""
import json
import re
from dataclasses import dataclass
from typing import Any

# expect_json needs the whole document; a body larger than this is judged a failure, not parsed.
MAX_JSON_BODY = 1 << 20


class RuleError(ValueError):
    """An expect_status / expect_json rule that cannot be parsed."""


_STATUS_ITEM = re.compile(r"^([1-5])xx$|^([1-5][0-9]{2})(?:-([1-5][0-9]{2}))?$")


def parse_expect_status(text: str) -> tuple[tuple[int, int], ...]:
    """`2xx`, `200`, `200-299`, comma-separated -> inclusive (low, high) ranges."""
    ranges = []
    for item in (part.strip().lower() for part in text.split(",")):
        match = _STATUS_ITEM.match(item)
        if not match:
            raise RuleError(f"{item!r} is not a status (use 2xx, 200 or 200-204)")
        klass, low, high = match.groups()
        if klass:
            ranges.append((int(klass) * 100, int(klass) * 100 + 99))
        else:
            ranges.append((int(low), int(high or low)))
            if ranges[-1][0] > ranges[-1][1]:
                raise RuleError(f"{item!r} runs backwards")
    if not ranges:
        raise RuleError("no status given")
    return tuple(ranges)


_PATH = re.compile(r"\s*([A-Za-z0-9_$-]+(?:\.[A-Za-z0-9_$-]+)*)\s*=\s*")


def parse_expect_json(text: str) -> tuple[tuple[tuple[str, ...], Any], ...]:
    """`code=0, data.state="DONE"` -> ((("code",), 0), (("data", "state"), "DONE")).

    Values are JSON literals, so a string may itself contain commas or `=`.
    """
    rules = []
    decoder = json.JSONDecoder()
    pos, text = 0, text.strip()
    while pos < len(text):
        match = _PATH.match(text, pos)
        if not match:
            raise RuleError(f"expected PATH=VALUE at {text[pos:]!r}")
        if text.startswith("=", match.end()):
            raise RuleError(_double_equals(text, match))
        try:
            value, end = decoder.raw_decode(text, match.end())
        except json.JSONDecodeError:
            raise RuleError(f"value of {match.group(1)!r} is not a JSON literal "
                            f"(quote strings: {match.group(1)}=\"DONE\")") from None
        rules.append((tuple(match.group(1).split(".")), value))
        rest = text[end:].lstrip()
        if rest and not rest.startswith(","):
            raise RuleError(f"expected ',' after the value of {match.group(1)!r}")
        pos = len(text) - len(rest) + (1 if rest else 0)
    return tuple(rules)


def _double_equals(text: str, match: "re.Match") -> str:
    """`code == 0`: a comparison habit; the rule is path=value, one `=`, and says so with the fix."""
    path, start = match.group(1), match.end() + 1
    start += len(text[start:]) - len(text[start:].lstrip())
    try:
        end = json.JSONDecoder().raw_decode(text, start)[1]
        fix = f"{path}={text[start:end]}"
    except json.JSONDecodeError:
        fix = f"{path}=VALUE"
    return f"`==` is not the syntax: a rule is path=value with one `=`; write {fix}"


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str
    retryable: bool = False  # another attempt may succeed
    reached: bool = True  # the service may have started the work (so resending may run it twice)


# Answers that say the service did not act on the request: 429 Too Many Requests and 503 Service
# Unavailable (RFC 9110 15.6.4: "currently unable to handle the request").
NOT_ACTED = (429, 503)


def _lookup(document: Any, path: tuple[str, ...]) -> tuple[bool, Any]:
    for part in path:
        if isinstance(document, dict) and part in document:
            document = document[part]
        elif isinstance(document, list) and part.isdigit() and int(part) < len(document):
            document = document[int(part)]
        else:
            return False, None
    return True, document


def judge(status: int, body: bytes, expect_status, expect_json) -> Verdict:
    """Success = status in range AND every JSON rule holds.

    5xx, 429 and 409 are retryable; other 4xx and business failures are not: the service saw
    the request and said no, and repeating a settlement that said no is not ours to decide.
    Every answer but 429 and 503 may come from a service that started the work (a gateway's
    502/504 says nothing of what is behind it; a 409 is a key still being processed): whether
    such an attempt is sent again is the trigger's call (run.may_resend).
    """
    if not any(low <= status <= high for low, high in expect_status):
        retryable = status >= 500 or status in (429, 409)
        return Verdict(False, f"status {status} not expected", retryable, reached=status not in NOT_ACTED)
    if expect_json:
        if len(body) > MAX_JSON_BODY:
            return Verdict(False, "body is over %d bytes; expect_json reads at most that" % MAX_JSON_BODY)
        try:
            document = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return Verdict(False, "body is not JSON but expect_json needs it")
        except RecursionError:
            return Verdict(False, "body JSON is nested too deeply to judge")
        for path, want in expect_json:
            found, got = _lookup(document, path)
            name = ".".join(path)
            if not found:
                return Verdict(False, f"{name} missing from the JSON body")
            # JSON true is not 1: Python's True == 1 must not pass a rule.
            if got != want or isinstance(got, bool) != isinstance(want, bool):
                return Verdict(False, f"{name} is {json.dumps(got)}, expected {json.dumps(want)}")
    return Verdict(True, f"status {status}")
