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


def test_the_trigger_s_jobspec_has_a_field_per_option_that_reaches_a_run_with_the_option_s_default():
    """Issue 20: JobSpec was a second, hand-kept list (with retries = 0 where the option says 2)."""
    import dataclasses

    from deployer.host import run

    fields = {f.name: f for f in dataclasses.fields(run.JobSpec)}
    reaching = [o for o in options.JOB_OPTIONS if o.flag or o.credential]
    assert set(fields) == {"name"} | {o.dest for o in reaching} | {name for name, *_ in run.SPEC_EXTRAS}
    for option in reaching:
        default = fields[option.dest].default
        assert default is dataclasses.MISSING if option.required else default == option.default, option.key
    # The trigger's argument parser has the same defaults: a unit that leaves a flag out gets them.
    parsed = cli.build_parser().parse_args(["--url", "http://svc/x"])
    assert all(getattr(parsed, o.dest) == o.default for o in options.TRIGGER_OPTIONS if not o.required)


def test_the_trigger_builds_its_jobspec_from_the_unit_s_arguments_and_credentials(tmp_path, monkeypatch):
    """Every option of a job, rendered into its unit (command line and credentials) and read back
    by the trigger, is the same value in the run's JobSpec."""
    ca = tmp_path / "ca.pem"
    ca.write_text("PEM\n")
    the_job = job(method="PUT", timeout=90, retries=0, expect_status="200,204", expect_json="code=0",
                  ping_url="http://hc/ping/x", idempotent=True, async_="poll", poll_every=2.5, body='{"a": 1}',
                  headers=(("X-A", "b"),), sign_secret="k", catch_up="none", concurrency="replace",
                  ca_file=options.local_file(str(ca)))
    directory = tmp_path / "credentials"
    directory.mkdir()
    for name, f in render.job_credentials(the_job).items():
        (directory / name).write_bytes(f.content)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(directory))
    args = cli.build_parser().parse_args(render.trigger_args(the_job))
    spec = cli.spec_of(args, cli.credential_values(), epoch=7)
    for option in options.JOB_OPTIONS:
        if option.flag or option.credential:
            wanted = getattr(the_job, option.dest)
            wanted = str(directory / option.credential) if option.parse is options.local_file and wanted else wanted
            assert getattr(spec, option.dest) == wanted, option.key
    assert (spec.name, spec.epoch) == ("settle", 7)
