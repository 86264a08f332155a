"""Alert channel types declare their fields (contract/channels.py): the inventory, the alert units,
the alert sender and the Kubernetes export all follow from that one declaration (issue 20)."""
from __future__ import annotations

import json

import pytest

from deployer import inventory, k8s, render
from deployer.errors import InventoryError
from deployer.contract import channels, paths
from deployer.host import alert, trigger as cli
from tests.httpserver import Reply

EVENT = {"kind": "failed", "job": "settle", "host": "cron01", "method": "POST", "url": "http://svc/settle",
         "result": "exit-code", "exit_status": "1", "time": "2026-11-24T15:00:01+0800", "lines": []}
CHAT_ID, BOT_SECRET, TOKEN = "-1001234567", "bot-secret-not-in-units", "tok-not-in-units"


def _telegram(channel, endpoint, title, text, events, now):
    """A Telegram-style robot: the chat to post to is a field of the channel's own."""
    body = {"chat_id": channel.value("chat_id"), "text": channels.plain(text),
            "signed_with": channel.value("bot_secret")}
    return channels.Outbound(endpoint.rstrip("/") + "/bot" + channel.token + "/sendMessage", {}, body, {},
                             channels.by_status)


@pytest.fixture
def telegram(monkeypatch):
    """A throwaway channel type with two fields of its own, one plain and one secret: nothing
    else in the code base knows about it."""
    kind = channels.ChannelType("telegram", _telegram, "https://api.telegram.org/", fields=(
        channels.TOKEN,
        channels.Field("chat_id", required=True, help="the chat the robot posts to"),
        channels.Field("bot_secret", secret=True, help="a secret of the robot's own"),
        channels.ENDPOINT))
    monkeypatch.setitem(channels.CHANNEL_TYPES, "telegram", kind)
    return kind


def parse(alert_section: str, env=None):
    text = ("[host:cron01]\naddress = 10.0.0.5\n\n[alert:tg]\n" + alert_section +
            "\n[job:settle]\nurl = http://svc/settle\nschedule = 0 * * * *\nalert = tg\nalert_late = 5m\n")
    return inventory.parse(text, "inv.ini", env or {})


FULL = f"type = telegram\ntoken = {TOKEN}\nchat_id = {CHAT_ID}\nbot_secret = ${{BOT}}\n"


def test_every_channel_field_means_one_thing_whichever_type_takes_it():
    """A key is one inventory key: the same parser and the same secrecy in every type."""
    every = channels.all_fields()
    for kind in channels.CHANNEL_TYPES.values():
        for field in kind.fields:
            assert (field.parse, field.secret) == (every[field.key].parse, every[field.key].secret), field.key
    assert set(inventory.SCHEMA["alert"]) == {"type"} | set(every)


def test_the_inventory_reads_a_new_channel_types_fields(telegram):
    inv = parse(FULL, {"BOT": BOT_SECRET})
    [tg] = inv.alerts
    assert (tg.type, tg.value("chat_id"), tg.value("bot_secret"), tg.token) == ("telegram", CHAT_ID, BOT_SECRET, TOKEN)
    assert isinstance(tg.value("bot_secret"), channels.Secret), "a secret field never shows in a repr"
    assert BOT_SECRET not in repr(inv)


@pytest.mark.parametrize("section, error", [
    pytest.param(f"type = telegram\ntoken = {TOKEN}\n", "inv.ini:4: [alert:tg] chat_id: is required for type = telegram",
                 id="missing"),
    pytest.param(f"type = dingtalk\ntoken = {TOKEN}\nchat_id = 1\n",
                 "inv.ini:7: [alert:tg] chat_id: chat_id is only for telegram, not dingtalk", id="another-types"),
    pytest.param(f"type = telegram\ntoken = {TOKEN}\nchat_id = 1\nchatid = 2\n",
                 "inv.ini:8: [alert:tg] chatid: unknown key (did you mean 'chat_id'?)", id="misspelt"),
    pytest.param(f"type = telegram\ntoken = {TOKEN}\nchat_id = 1\nsecret = s\n",
                 "inv.ini:8: [alert:tg] secret: signing is only for dingtalk and feishu, not telegram",
                 id="a-field-it-does-not-take"),
])
def test_a_new_channel_types_fields_are_checked_with_one_line_naming_file_section_and_key(telegram, section, error):
    with pytest.raises(InventoryError) as refused:
        parse(section)
    assert str(refused.value) == error


def alert_files(inv):
    return {f.path: f for f in render.host_files(inv, "cron01")}


def test_the_alert_unit_gets_plain_fields_as_arguments_and_secret_ones_as_credentials(telegram):
    files = alert_files(parse(FULL, {"BOT": BOT_SECRET}))
    unit = files[f"{paths.UNIT_DIR}/{paths.alert_template('tg')}"].content.decode()
    assert f'"--chat-id" "{CHAT_ID}"' in unit.split("ExecStart=", 1)[1].splitlines()[0]
    assert f"LoadCredential=bot_secret:{paths.credential('tg', 'bot_secret')}" in unit
    assert f"LoadCredential=token:{paths.credential('tg', 'token')}" in unit
    secret = files[paths.credential("tg", "bot_secret")]
    assert (secret.content, secret.mode, secret.secret) == (BOT_SECRET.encode(), 0o600, True)
    for f in files.values():  # units, the watcher's config among them: never a secret value
        if not f.secret:
            assert BOT_SECRET.encode() not in f.content and TOKEN.encode() not in f.content, f.path
    watch = files[f"{paths.UNIT_DIR}/{paths.WATCH_SERVICE}"].content.decode()
    config = json.loads(watch.split(paths.WATCH_KEY + "=", 1)[1].splitlines()[0].replace("%%", "%"))
    assert config["channels"]["tg"] == {"type": "telegram", "chat_id": CHAT_ID, "endpoint": ""}
    sender = files[f"{paths.UNIT_DIR}/{paths.WATCH_SEND_SERVICE}"].content.decode()
    assert f"LoadCredential=tg.bot_secret:{paths.credential('tg', 'bot_secret')}" in sender


def credentials_directory(tmp_path, files, channel: str) -> str:
    """What systemd hands the unit: each LoadCredential= file under its name."""
    for f in files.values():
        if f.secret and f.path.startswith(paths.credential(channel, "")):
            (tmp_path / f.path[len(paths.credential(channel, "")):]).write_bytes(f.content)
    return str(tmp_path)


def test_the_alert_sender_receives_the_new_fields_and_delivers_with_them(telegram, server, tmp_path, monkeypatch):
    """The rendered unit's command line, parsed by the trigger, and its credentials as systemd
    hands them over: the channel the sender builds has every field, and its message uses them."""
    inv = parse(FULL + f"endpoint = {server.url('/')}\n", {"BOT": BOT_SECRET})
    files = alert_files(inv)
    argv = render.alert_argv(inv.alert("tg"), inv.host("cron01"))
    args = cli.build_parser().parse_args([str(a) for a in argv[argv.index(paths.TRIGGER_PATH) + 1:]])
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", credentials_directory(tmp_path, files, "tg"))
    channel = cli.alert_channel(args)
    assert channel == inv.alert("tg")
    server.routes[f"/bot{TOKEN}/sendMessage"] = Reply(200, b"{}")
    assert alert.deliver(channel, [EVENT], log=lambda _: None, sleep=lambda _: None)
    [request] = server.received(f"/bot{TOKEN}/sendMessage")
    body = json.loads(request.body)
    assert (body["chat_id"], body["signed_with"]) == (CHAT_ID, BOT_SECRET)


def test_a_run_that_alerts_by_itself_reads_the_new_fields_from_its_environment(telegram, monkeypatch):
    """Kubernetes: the export sets the plain fields as values and the secret ones from the
    channel's Secret; the trigger reads both back."""
    inv = parse(FULL, {"BOT": BOT_SECRET})
    [cronjob], _ = k8s.export(inv)
    env = {e["name"]: e for e in cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["DEPLOYER_ALERT_CHAT_ID"]["value"] == CHAT_ID
    assert env["DEPLOYER_ALERT_BOT_SECRET"]["valueFrom"] == {
        "secretKeyRef": {"name": k8s.secret_name("tg"), "key": "bot_secret"}}
    assert "--from-literal=bot_secret=" in " ".join(k8s.secret_commands(inv, None))
    assert BOT_SECRET not in json.dumps(cronjob)
    for name in ("DEPLOYER_ALERT_TYPE", "DEPLOYER_ALERT_CHAT_ID"):
        monkeypatch.setenv(name, env[name]["value"])
    monkeypatch.setenv("DEPLOYER_ALERT_TOKEN", TOKEN)
    monkeypatch.setenv("DEPLOYER_ALERT_BOT_SECRET", BOT_SECRET)
    channel = cli.inline_channel(cli.build_parser().parse_args(["--url", "http://svc/settle"]))
    assert (channel.type, channel.value("chat_id"), channel.value("bot_secret")) == ("telegram", CHAT_ID, BOT_SECRET)
