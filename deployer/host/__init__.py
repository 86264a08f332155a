"""The programs that run on the cron host, and the one boundary through which they touch it.

`systemctl.py` and `dbus.py` are the only modules that run systemctl, systemd-analyze or journalctl
or talk D-Bus; `journal.py` is the one journal reader. The programs over them: `agent.py` (what the
deployer asks over SSH, and the boot, hold and lease entry points), `trigger.py` (a job's run, with
`run.py`, `http.py`, `slot.py`, `chain.py`), `alert.py`, `metrics.py` and `watch.py`.
Standard library only: the host has nothing but python3.
"""
