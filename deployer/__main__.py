"""`deployer` (the console script) and `python -m deployer`: the CLI, with the code dataclasses
generates kept from one command to the next (contract/dataclass_code.py) before any class of
ours is made."""
from .buildcache import directory
from .contract import dataclass_code

dataclass_code.install_for_user(str(directory()))

from .cli import main  # noqa: E402 - after the install: cli's imports make classes

if __name__ == "__main__":
    main()
