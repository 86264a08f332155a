#!/usr/bin/env python3
"""Trigger one scheduled job over HTTP: the entry point of the original recipe,
`trigger.py -url URL -token TOKEN`. The code lives in deployer/host/trigger.py (and the modules beside it);
on a cron host both run from the zipapp the deployer installs."""
import sys

from deployer.host.trigger import main

if __name__ == "__main__":
    sys.exit(main())
