"""The shipped alert rules (docs/prometheus/) pass their promtool tests, and a broken rule fails them."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "docs" / "prometheus" / "deployer-rules.yml"
RULE_TESTS = ROOT / "tests" / "data" / "prometheus" / "rules_test.yml"


def promtool() -> str:
    found = shutil.which("promtool")
    if not found:
        message = "promtool is missing (apt-get install prometheus; `make install` does)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)
    return found


def test_rules_are_valid():
    result = subprocess.run([promtool(), "check", "rules", str(RULES)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 6 rules found" in result.stdout


def run_rule_tests(rules: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    tests = tmp_path / "rules_test.yml"
    tests.write_text(RULE_TESTS.read_text().replace("../../../docs/prometheus/deployer-rules.yml", str(rules)))
    return subprocess.run([promtool(), "test", "rules", str(tests)], capture_output=True, text=True)


def test_the_shipped_rules_pass_their_tests(tmp_path):
    result = run_rule_tests(RULES, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("before, after", [
    pytest.param("expr: deployer_job_last_success == 0", "expr: deployer_job_last_success == 1", id="failed"),
    pytest.param(" unless on(deployer_host, deployer_job) deployer_job_paused == 1\n", "\n",
                 id="failed-ignores-pause"),
    pytest.param("* 1.1 + 300", "* 2 + 300", id="missed-grace"),
    pytest.param("unless deployer_job_paused == 1\n", "\n", id="missed-ignores-pause"),
    pytest.param("2 * avg_over_time", "20 * avg_over_time", id="running-long"),
    pytest.param("0.8 * deployer_job_timeout_seconds", "0.9 * deployer_job_timeout_seconds", id="near-timeout"),
    pytest.param("[1d]) > 180", "[1m]) > 180", id="heartbeat-forgets-a-dead-host"),
    pytest.param('up{job="node"} == 0', 'up{job="node"} == 2', id="node-exporter"),
])
def test_a_broken_rule_fails_the_tests(tmp_path, before, after):
    text = RULES.read_text()
    assert text.count(before) == 1
    broken = tmp_path / "broken-rules.yml"
    broken.write_text(text.replace(before, after))
    result = run_rule_tests(broken, tmp_path)
    assert result.returncode != 0, f"the rule tests did not notice {before!r} -> {after!r}"
