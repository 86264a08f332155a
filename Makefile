# Everything runs from a virtualenv in .venv; system packages come from apt (Debian, as root).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
SYSTEM_PACKAGES := systemd-container openssh-server openssh-client sudo python3 python3-venv openssl ca-certificates
SYSTEM_PACKAGES += python3-pip pipx  # tests/e2e/test_install.py: `pip install --user` and pipx, each pushing
# For tests/e2e/test_metrics.py. Without their recommends (prometheus-node-exporter-collectors pulls
# smartmontools, nvme-cli, openipmi: services that fail in the test containers, which share this
# machine's /etc and /usr). Debian enables (and, with systemd as PID 1, starts) the two servers on
# this machine: disabled here (stopped too where systemd runs); a test starts its own, on free ports.
# For tests/test_receivers.py: the Java reference service (docs/receiving/) is compiled and run
# there with the JDK and Debian's SQLite JDBC driver (the same schema as the Python one).
JAVA_PACKAGES := default-jdk-headless libxerial-sqlite-jdbc-java
METRICS_PACKAGES := prometheus prometheus-node-exporter
PROMETHEUS_UNITS := prometheus.service prometheus-node-exporter.service prometheus-node-exporter-apt.timer \
                    prometheus-node-exporter-ipmitool-sensor.timer prometheus-node-exporter-mellanox-hca-temp.timer \
                    prometheus-node-exporter-nvme.timer prometheus-node-exporter-smartmon.timer

.PHONY: install system-packages check test test-slow test-fast demo bench bench-scale bench-burst bytecode clean

install: system-packages $(VENV)/.installed

system-packages:
	@missing=""; for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; fi
	@missing=""; for p in $(JAVA_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; fi
	@missing=""; for p in $(METRICS_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing && \
	  { systemctl disable --now $(PROMETHEUS_UNITS) >/dev/null 2>&1 || systemctl disable $(PROMETHEUS_UNITS) >/dev/null 2>&1 || true; \
	    for s in prometheus prometheus-node-exporter; do [ -x /etc/init.d/$$s ] && /etc/init.d/$$s stop >/dev/null 2>&1; done; true; }; fi

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

## Everything CI runs (.ci/run): the suite, then the slow walks.
check: test test-slow

## All tests but the slow walks, end-to-end ones included (they boot real systemd hosts; they need root).
## Six workers take tests as they free up (worksteal: a file's tests spread over the workers,
## so the longest file no longer sets the time; each worker boots its own hosts, each in a
## cgroup of its own: tests/cronhost.py). Most e2e time is waiting for timers: four workers on
## two cores left a third of the CPU idle after the first minutes; six took 10:15 where four took
## 12:15, the CPU then 81% busy (docs/performance.md). TEST_WORKERS=1
## runs them one by one. The tests judge by what was recorded, not by time windows; how they did
## next to a load is in docs/performance.md.
TEST_WORKERS ?= 6
test: install
	$(PY) -m pytest -n $(TEST_WORKERS) --dist worksteal --hypothesis-profile=repeatable -m 'not slow'

## The slow walks (-m slow): every zone's every DST change 2000-2037 against cron and Quartz, the
## cron property's 1,000 examples, 9-kill fault walks, a 30-slot gateway-timeout run and the Java
## reference service's minute-long once proofs (the Python one's run in `make test`). Apart, so
## that the suite an engineer runs stays short (it has 100 examples and 3 kills); CI runs both.
test-slow: install
	$(PY) -m pytest -n 2 --dist worksteal --hypothesis-profile=repeatable -m slow

## Unit tests only: no root, no containers, and not the slow every-zone schedule walk.
test-fast: install
	$(PY) -m pytest -m 'not e2e and not slow' --ignore=tests/e2e

## Boot a local demo cron host, push ./inventory.ini to it, show the timers and first results.
demo: install
	$(PY) -m tests.demo

## The benchmarks time the client as pip installs it, with its modules compiled to bytecode: an
## editable install has none, and with PYTHONDONTWRITEBYTECODE set every command compiled a dozen
## of them again (30 ms of the 0.4 s a small command costs).
bytecode: install
	$(PY) -m compileall -q deployer

bench: install bytecode
	$(PY) bench/push.py
	$(PY) bench/scale.py --jobs $(SCALE_JOBS)

## Issue 25: every command at N jobs beside its by-hand reference on the same host (docs/performance.md).
## SCALE_JOBS=1000,10000 adds the 10,000-job host (many minutes).
SCALE_JOBS ?= 1000
bench-scale: install bytecode
	$(PY) bench/scale.py --jobs $(SCALE_JOBS)

## 100 timers due the same second: deployer vs the stdlib floor and curl, in and out of the sandbox.
bench-burst: install bytecode
	@dpkg -s curl >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq curl; }
	$(PY) bench/burst.py $(BURST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
