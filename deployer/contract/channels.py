"""Alert channels, each declared once: its endpoint, the fields it takes (`fields`: token,
signing secret, endpoint, or one of its own), how text from elsewhere is escaped for it, the
request that delivers a message, and how to tell that the channel accepted it.

The inventory's `[alert:NAME]` keys and rules, the alert unit's credentials and arguments, the
alert sender's arguments, the watcher's channel config and the Kubernetes export all read
CHANNEL_TYPES and their `fields`: a channel type that needs one more field (Telegram's chat_id)
is its `Field(...)` here, plus its use in the type's `build`. Pure: `now` is given.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from dataclasses import dataclass, replace
from typing import Any, Callable, Optional

from deployer.contract import options


class Secret(str):
    """A string that never shows itself in a repr, a log line or a traceback."""

    def __repr__(self) -> str:
        return "Secret('***')"


@dataclass(frozen=True)
class Field:
    """One key of an `[alert:NAME]` that a channel type takes.

    `secret`: it reaches the alert sender as a credential (LoadCredential=, a Kubernetes Secret),
    never on a command line, in a unit file or the journal; else as the argument `flag` (and, in
    Kubernetes, the environment variable `env`). `purpose` names it in "... is only for T"."""

    key: str
    parse: Callable[[str], Any] = options.text
    required: bool = False
    secret: bool = False
    purpose: str = ""
    help: str = ""

    @property
    def flag(self) -> str:
        return "--" + self.key.replace("_", "-")

    @property
    def env(self) -> str:
        """Where a run that alerts by itself (Kubernetes) finds it."""
        return "DEPLOYER_ALERT_" + self.key.upper()


TOKEN = Field("token", required=True, secret=True, help="the robot's token (a credential)")
SIGNING_SECRET = Field("secret", secret=True, purpose="signing", help="the robot's signing secret (a credential)")
ENDPOINT = Field("endpoint", options.url, help="override the channel's URL (proxies, tests)")


@dataclass(frozen=True)
class Channel:
    """One `[alert:NAME]`: the inventory's record and what the alert sender delivers through.
    The fields every type shares are attributes; a type's own ones are in `extra` (`value(key)`
    reads either)."""

    name: str
    type: str
    token: Secret = Secret("")
    secret: Optional[Secret] = None
    endpoint: Optional[str] = None
    extra: tuple = ()  # (key, value) pairs, sorted: the fields of its type beyond these three

    @classmethod
    def of(cls, name: str, type: str, values: dict) -> "Channel":
        """From field key -> value (keys not given keep their defaults)."""
        own = {key: value for key, value in values.items() if key in _SHARED}
        extra = tuple(sorted((key, value) for key, value in values.items() if key not in _SHARED))
        return cls(name, type, extra=extra, **own)

    def value(self, key: str) -> Any:
        return getattr(self, key) if key in _SHARED else dict(self.extra).get(key)


_SHARED = ("token", "secret", "endpoint")


@dataclass(frozen=True)
class Outbound:
    """One HTTP request that delivers an alert, and how to tell that it was accepted."""

    url: str
    params: dict
    json: dict
    headers: dict
    accepted: Callable[[int, bytes], "tuple[bool, str]"]


def plain(markdown: str) -> str:
    """Our markdown as plain text: a bold paragraph (`**title**`) loses its stars and a quoted
    line its `> `; data (a masked `***`, a `>` in a body) keeps what it has."""
    return re.sub(r"(?m)^> ", "  ", re.sub(r"(?m)^\*\*(.*)\*\*$", r"\1", markdown))


# --- how each channel escapes text from elsewhere -------------------------------------------
# A message is our markup around data (job names, URLs, the run's journal lines with the body
# excerpt of a service): the data goes through its channel's `escape` so that it stays text,
# never a mention, a link, an image or markup. Newlines in data become spaces everywhere: a line
# of data must not start a block (a heading, a quote, a link definition) of its own. A `>` is
# markup only where it opens a quote (at the start of a line) or closes a `<...>`, which no
# escaped data holds: elsewhere it stays itself, so `POST URL -> 500` reads as written.


def _one_line(text: str) -> str:
    return re.sub(r"[\r\n\u2028\u2029]+", " ", str(text))


def _quote_opener(text: str, escaped: str) -> str:
    """`text` with a leading `>` (a quote where the data starts a line) replaced by `escaped`."""
    return re.sub(r"^(\s*)>", lambda m: m.group(1) + escaped, text)


def slack_escape(text: str) -> str:
    """Slack's control characters: every `&` and `<` (`<!channel>`, `<@U123>`, `<http://x|text>`
    links all need one); a `>` only where it would open a quote, since with every `<` escaped no
    `>` can close anything. (An `&gt;` in the middle of a line is shown as such by Slack-compatible
    receivers and notification previews: `->` came out as `-&gt;`.)"""
    return _quote_opener(_one_line(text).replace("&", "&amp;").replace("<", "&lt;"), "&gt;")


_MARKDOWN = re.compile(r"([\\`*_\[\]()!#|~])")


def markdown_escape(text: str) -> str:
    """DingTalk and WeCom markdown: every character that opens markup (`[text](url)` links,
    `![](img)` images, emphasis, code, headings, tables) gets a backslash, so that no `](` or
    `![` survives even where a renderer ignores backslashes; `<` (HTML, WeCom's `<@userid>`
    mentions, `<font>`) becomes its fullwidth look-alike, which no renderer reads as a tag, and a
    `>` that would open a quote gets a backslash."""
    return _quote_opener(_MARKDOWN.sub(r"\\\1", _one_line(text)).replace("<", "\uff1c"), "\\>")


def feishu_escape(text: str) -> str:
    """Feishu text messages read `<at user_id="all"></at>` as a mention of everyone: `<` becomes
    its fullwidth look-alike (no tag opens, so a `>` closes none)."""
    return _one_line(text).replace("<", "\uff1c")


def webhook_escape(text: str) -> str:
    """A generic webhook gets JSON, which carries any text as text."""
    return _one_line(text)


# --- how each channel says "accepted" ------------------------------------------------------


def by_status(status: int, body: bytes) -> tuple[bool, str]:
    return status < 300, f"HTTP {status}"


def _by_code(key: str) -> Callable[[int, bytes], tuple[bool, str]]:
    """DingTalk and WeCom (errcode) and Feishu (code) answer HTTP 200 even when they refuse."""

    def accepted(status: int, body: bytes) -> tuple[bool, str]:
        if status >= 300:
            return False, f"HTTP {status}"
        try:
            answer = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return False, "answer is not JSON"
        if not isinstance(answer, dict):
            return False, "answer is not a JSON object"
        code = answer.get(key, answer.get("StatusCode"))
        return code == 0, f"{key} {code}: {answer.get('errmsg') or answer.get('msg') or ''}".strip()

    return accepted


def by_slack_ok(status: int, body: bytes) -> tuple[bool, str]:
    if status >= 300:
        return False, f"HTTP {status}"
    return body.strip() == b"ok", body[:100].decode("utf-8", "replace")


# --- signing -------------------------------------------------------------------------------


def dingtalk_sign(secret: str, timestamp_ms: int) -> str:
    """base64(HMAC-SHA256(key=secret, msg="{timestamp_ms}\n{secret}")); URL-encoded when sent."""
    digest = hmac.new(secret.encode(), f"{timestamp_ms}\n{secret}".encode(), hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def feishu_sign(secret: str, timestamp_s: int) -> str:
    """Feishu's own scheme: the key is "{timestamp}\n{secret}" and the message is empty."""
    digest = hmac.new(f"{timestamp_s}\n{secret}".encode(), b"", hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


# --- the messages --------------------------------------------------------------------------


def _dingtalk(channel: Channel, endpoint: str, title: str, text: str, events: list, now: float) -> Outbound:
    params = {"access_token": channel.token}
    if channel.secret:
        stamp = int(now * 1000)
        params.update(timestamp=str(stamp), sign=dingtalk_sign(channel.secret, stamp))
    body = {"msgtype": "markdown", "markdown": {"title": title, "text": text}}
    return Outbound(endpoint, params, body, {}, _by_code("errcode"))


def _wecom(channel: Channel, endpoint: str, title: str, text: str, events: list, now: float) -> Outbound:
    return Outbound(endpoint, {"key": channel.token}, {"msgtype": "markdown", "markdown": {"content": text}},
                    {}, _by_code("errcode"))


def _feishu(channel: Channel, endpoint: str, title: str, text: str, events: list, now: float) -> Outbound:
    body: dict = {"msg_type": "text", "content": {"text": plain(text)}}
    if channel.secret:
        stamp = int(now)
        body.update(timestamp=str(stamp), sign=feishu_sign(channel.secret, stamp))
    return Outbound(endpoint.rstrip("/") + "/" + channel.token, {}, body, {}, _by_code("code"))


def _slack(channel: Channel, endpoint: str, title: str, text: str, events: list, now: float) -> Outbound:
    return Outbound(endpoint.rstrip("/") + "/" + channel.token, {}, {"text": plain(text)}, {}, by_slack_ok)


# The webhook document's version: 2 added `version`, `reason`, `slot`, `signal` and `events`,
# and made `exit_status` a number (or null) where version 1 (no `version` field) had text.
WEBHOOK_VERSION = 2
# Every field of an event, by kind, in the document's order (docs/alerts.md describes each).
EVENT_FIELDS = {
    "failed": ("kind", "job", "host", "slot", "reason", "method", "url", "result", "exit_status", "signal", "time",
               "invocation", "lines"),
    "recovered": ("kind", "job", "host", "time", "failed_runs", "failing_for"),
    "held": ("kind", "host", "since", "time", "down_for", "lease", "reason"),
    "test": ("kind", "host", "time"),  # `deployer alert test`: no job failed
    # The watcher (host/watch.py): a slot not started alert_late after its time, a run still
    # going after alert_long, and each one's end.
    "late": ("kind", "job", "host", "slot", "late_by", "alert_late", "reason", "time"),
    "late_ended": ("kind", "job", "host", "slot", "started", "late_by", "time"),
    "long": ("kind", "job", "host", "since", "running_for", "alert_long", "invocation", "time"),
    "long_ended": ("kind", "job", "host", "since", "ran_for", "result", "invocation", "time"),
}
WATCH_KINDS = ("late", "late_ended", "long", "long_ended")


def exit_number(event: dict) -> Optional[int]:
    """An event's exit status as a number (an event queued by an earlier version has it as text)."""
    status = event.get("exit_status")
    if isinstance(status, bool):
        return None
    if isinstance(status, int):
        return status
    return int(status) if isinstance(status, str) and status.isdigit() and not event.get("signal") else None


def typed_event(event: dict) -> dict:
    """An event as the webhook document carries it: its kind's fields, each of its type, in
    order (an event queued by an earlier version lacks some and has `exit_status` as text)."""
    kind = event.get("kind", "failed")
    typed = {name: event.get(name) for name in EVENT_FIELDS.get(kind, EVENT_FIELDS["failed"])}
    if kind == "failed":
        typed["exit_status"] = exit_number(event)
        typed["reason"] = event.get("reason") or str(event.get("result") or "")
        typed["lines"] = [str(line) for line in event.get("lines") or []]
        typed["invocation"] = str(event.get("invocation") or "")
    return typed


def webhook_document(title: str, text: str, events: list) -> dict:
    """What a `webhook` channel POSTs (docs/alerts.md): the message, the last event's fields at
    the top (as version 1 had them), and every event the message reports in `events`."""
    typed = [typed_event(event) for event in events]
    return {"version": WEBHOOK_VERSION, "title": title, "text": plain(text), **typed[-1], "events": typed}


def _webhook(channel: Channel, endpoint: str, title: str, text: str, events: list, now: float) -> Outbound:
    headers = {"Authorization": f"Bearer {channel.token}"} if channel.token else {}
    return Outbound(endpoint, {}, webhook_document(title, text, events), headers, by_status)


# --- the alert policy of a job ---------------------------------------------------------------


@dataclass(frozen=True)
class AlertPolicy:
    """When a failing job's alerts go out (its alert_after and alert_repeat).

    `after` failed runs in a row before the first alert; then `repeat`: "each" (every failed run
    alerts: with after = 1, the behaviour before policies), "never" (that first alert only), or
    seconds between reminders. The renderer writes it into the job's unit (ALERT_POLICY_KEY=) when
    it is not the default; the alert program reads it back from there (unitkeys.ALERT_POLICY)."""

    after: int = 1
    repeat: object = "each"

    @classmethod
    def of(cls, after: int, repeat) -> "AlertPolicy":
        """The inventory's values; `repeat` None (not set): each with after = 1, else never."""
        return cls(after, repeat if repeat is not None else "each" if after == 1 else "never")

    def decide(self, failures: int, alerted: float, new: int, now: float) -> bool:
        """Whether `new` failed runs (taking the streak to `failures`) alert, the last alert of the
        streak having gone out at `alerted` (0: none yet)."""
        if new <= 0:
            return False
        if not alerted:
            return failures >= self.after
        if self.repeat == "each":
            return True
        return self.repeat != "never" and now - alerted >= float(self.repeat)


@dataclass(frozen=True)
class ChannelType:
    name: str
    build: Callable[..., Outbound]
    endpoint: str = ""  # the default; a type without one declares its `endpoint` field required
    fields: tuple = (TOKEN, ENDPOINT)  # in the order they are checked, rendered and exported
    escape: Callable[[str], str] = webhook_escape  # text from elsewhere -> text in this channel's message

    @property
    def token_required(self) -> bool:
        return any(f.key == "token" and f.required for f in self.fields)

    def field(self, key: str) -> Optional[Field]:
        return next((f for f in self.fields if f.key == key), None)


CHANNEL_TYPES = {t.name: t for t in (
    ChannelType("dingtalk", _dingtalk, "https://oapi.dingtalk.com/robot/send", (TOKEN, SIGNING_SECRET, ENDPOINT),
                escape=markdown_escape),
    ChannelType("wecom", _wecom, "https://qyapi.weixin.qq.com/cgi-bin/webhook/send", escape=markdown_escape),
    ChannelType("feishu", _feishu, "https://open.feishu.cn/open-apis/bot/v2/hook/", (TOKEN, SIGNING_SECRET, ENDPOINT),
                escape=feishu_escape),
    ChannelType("slack", _slack, "https://hooks.slack.com/services/", escape=slack_escape),
    ChannelType("webhook", _webhook, fields=(replace(TOKEN, required=False), replace(ENDPOINT, required=True)),
                escape=webhook_escape),
)}


def all_fields() -> dict:
    """key -> Field, over every channel type (a key means one thing whichever type takes it)."""
    found: dict = {}
    for kind in CHANNEL_TYPES.values():
        for field_ in kind.fields:
            found.setdefault(field_.key, field_)
    return found


def types_taking(key: str) -> list:
    return [kind.name for kind in CHANNEL_TYPES.values() if kind.field(key)]


def received(name: str, type: str, plain: Callable[[str], Optional[str]], secret: Callable[[str], str]) -> Channel:
    """The channel as the alert sender gets it: each field of its type from where it travels, a
    secret one from `secret(key)` (its credential), the others from `plain(key)` (its argument);
    as text, the inventory having parsed them."""
    return Channel.of(name, type, {f.key: Secret(secret(f.key) or "") if f.secret else plain(f.key) or ""
                                   for f in CHANNEL_TYPES[type].fields})


def build_outbound(channel: Channel, title: str, text: str, events: list, now: float) -> Outbound:
    """The request for one message on one channel, about `events` (the webhook carries them)."""
    kind = CHANNEL_TYPES[channel.type]
    return kind.build(channel, channel.endpoint or kind.endpoint, title, text, events, now)
