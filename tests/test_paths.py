"""Host paths and unit names: one declaration, and a Layout that moves them under a root."""
import pytest

from deployer.contract import paths


@pytest.mark.parametrize("job", ["../etc", "A", "-x", "a.b", "a/b", "", "x" * 64])
def test_unit_names_refuse_anything_outside_the_job_name_grammar(job):
    with pytest.raises(paths.BadName):
        paths.job_unit(job, "timer")


def test_unit_names():
    assert paths.job_unit("settle-hourly", "timer") == "deployer-settle-hourly.timer"
    assert paths.instance(paths.alert_template("ops"), "settle") == "deployer-alert-ops@settle.service"
    assert paths.instance(paths.recovery_template("ops"), "settle") == "deployer-recovery-ops@settle.service"


@pytest.mark.parametrize("name, job", [
    pytest.param("deployer-settle.timer", "settle", id="timer"),
    pytest.param("/etc/systemd/system/deployer-settle.service", "settle", id="service-path"),
    pytest.param("deployer-alert-ops@.service", None, id="alert-template"),
    pytest.param("deployer-alert-ops.timer", "alert-ops", id="a-job-may-start-with-alert"),
    pytest.param("other.timer", None, id="not-ours"),
    pytest.param("deployer-Bad.timer", None, id="bad-name"),
])
def test_job_of_unit(name, job):
    assert paths.job_of_unit(name) == job


def test_layout_moves_every_path_under_its_root(tmp_path):
    layout = paths.Layout(str(tmp_path))
    for name in ("unit_dir", "lib_dir", "credentials_dir", "state_dir", "journal", "paused_dir", "owner",
                 "run_dir", "lock", "timer_stamps"):
        moved = getattr(layout, name)
        assert moved.startswith(str(tmp_path) + "/"), name
        assert layout.to_host(moved) == getattr(paths.Layout(), name)
