"""`deployer` (the console script) and `python -m deployer`: the CLI, started and ended at the
cost of ours, not of Python's (contract/process.py): the code dataclasses generates is kept from
one command to the next, installed before any class of ours is made."""
from .buildcache import directory
from .contract import process

try:
    process.install_for_user(str(directory()))
except (OSError, RuntimeError, KeyError):  # no home to keep a cache in: a cache never stops a command
    pass

from .cli import main as cli  # noqa: E402 - after the install: cli's imports make classes


def main():
    try:
        cli()
    except SystemExit as done:
        process.exit_now(done.code)
    process.exit_now(0)


if __name__ == "__main__":
    main()
