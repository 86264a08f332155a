"""Job options, declared once: the inventory, the unit's command line and the trigger agree."""
import pytest

from deployer import inventory, render
from deployer.contract import options
from deployer.host import trigger as cli
from deployer.models import Job


@pytest.mark.parametrize("text, seconds", [
    ("90s", 90), ("5m", 300), ("1h30m", 5400), ("45", 45), ("2h", 7200), ("500ms", 0.5), ("1.5h", 5400),
    ("1m 30s", 90), ("1d", 86400), ("1d12h", 129600), ("7d", 604800),
])
def test_one_duration_syntax(text, seconds):
    assert options.duration_seconds(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "5x", "m5", "-5s", "5s-"])
def test_durations_refused(text):
    with pytest.raises(options.Invalid):
        options.duration_seconds(text)


def test_a_refused_duration_lists_the_accepted_units():
    """Issue 24 item 8: `timeout = 1d` was refused while `--since 7d` took `d`."""
    with pytest.raises(options.Invalid) as caught:
        options.duration_seconds("1w")
    assert str(caught.value) == "'1w' is not a duration (e.g. 500ms, 90s, 5m, 1h30m, 7d; units: ms, s, m, h, d)"


def test_timeout_bounds():
    assert options.timeout("1s") == 1 and options.timeout("24h") == 86400 and options.timeout("1d") == 86400
    for text in ("500ms", "25h"):
        with pytest.raises(options.Invalid, match="between 1s and 24h"):
            options.timeout(text)


def test_every_option_is_a_job_field_and_an_inventory_key():
    fields = set(Job.__dataclass_fields__)
    for option in options.JOB_OPTIONS:
        assert option.dest in fields
        assert option.key in inventory.SCHEMA["job"]
        assert (option.key in inventory.SCHEMA["defaults"]) == (not option.job_only)


def job(**values) -> Job:
    return Job(name="settle", host="cron01", url="https://svc:8443/api/settle?x=1", schedule="0 * * * *",
               **values)


@pytest.mark.parametrize("values", [
    pytest.param({}, id="defaults"),
    pytest.param({"method": "PUT", "timeout": 90, "retries": 0, "expect_status": "200,204",
                  "expect_json": 'code=0, data.state="DONE"', "ping_url": "http://hc/ping/x",
                  "idempotent": True, "async_": "poll", "poll_every": 2.5}, id="all-set"),
])
def test_the_trigger_parses_back_what_the_unit_says(values):
    """The unit's command line, read by the trigger's own parser, gives back the job's values."""
    the_job = job(**values)
    args = cli.build_parser().parse_args(render.trigger_args(the_job))
    for option in options.TRIGGER_OPTIONS:
        assert getattr(args, option.dest) == getattr(the_job, option.dest), option.key
    assert args.job == the_job.name


def test_defaults_are_said_on_the_command_line_and_unset_options_are_not():
    args = render.trigger_args(job())
    assert args == ["--job", "settle", "--url", "https://svc:8443/api/settle?x=1", "--method", "POST",
                    "--timeout", "60s", "--retries", "2", "--expect-status", "2xx"]


@pytest.mark.parametrize("text, hint", [
    pytest.param("asia/shanghai", " (did you mean 'Asia/Shanghai'?)", id="case"),
    pytest.param("Europe/Berln", " (did you mean 'Europe/Berlin'?)", id="misspelt"),
    pytest.param("CST", "", id="an-abbreviation-has-no-single-answer"),
])
def test_a_wrong_time_zone_suggests_the_one_meant(text, hint):
    with pytest.raises(options.Invalid) as refused:
        options.timezone(text)
    assert str(refused.value) == f"{text!r} is not an IANA time zone (e.g. Asia/Shanghai, UTC){hint}"
