"""Installed the three ways a newcomer installs it, deployer renders and pushes (issue 24 item 3).

`pip install --user` used to fail every command that renders (a 43-line traceback: the templates
were looked up under sys.prefix, and a --user install puts data files under ~/.local). The wheel
is built once per session from this checkout, installed into a venv, with `pip install --user`
(into a throwaway PYTHONUSERBASE) and with pipx (into a throwaway PIPX_HOME); each install then
renders and pushes to a real cron host, whose trigger (the zipapp built from the installed
package) calls a loopback service. A zipped install (the wheel on sys.path) renders too.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.httpserver import Reply

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
SKIPPED = {".git", ".venv", "build", "dist", ".pytest_cache", ".hypothesis", "__pycache__", "demo-state"}


def run(argv: list, env: dict | None = None, cwd=None, timeout: float = 600) -> subprocess.CompletedProcess:
    result = subprocess.run([str(a) for a in argv], capture_output=True, text=True, env=env, cwd=cwd,
                            timeout=timeout)
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, argv))} exited {result.returncode}:\n"
                             f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


@pytest.fixture(scope="session")
def source(tmp_path_factory) -> Path:
    """A copy of this checkout to build from (a build writes build/ and *.egg-info into it)."""
    copy = tmp_path_factory.mktemp("source") / "deployer"
    shutil.copytree(REPO, copy, symlinks=True,
                    ignore=lambda _, names: [n for n in names if n in SKIPPED or n.endswith(".egg-info")])
    return copy


@pytest.fixture(scope="session")
def wheel(source, tmp_path_factory) -> Path:
    """deployer's wheel, built once per session, as `pip install .` and `pipx install .` build it."""
    out = tmp_path_factory.mktemp("wheel")
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", out, source])
    (built,) = out.glob("deployer-*.whl")
    return built


def install(how: str, wheel: Path, root: Path) -> tuple[Path, Path, dict]:
    """(the `deployer` command, the python it runs with, the environment it needs) after installing."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "PIPX"))}
    if how == "venv":
        run(["/usr/bin/python3", "-m", "venv", root / "venv"], env=env)
        run([root / "venv/bin/python", "-m", "pip", "install", "-q", wheel], env=env)
        return root / "venv/bin/deployer", root / "venv/bin/python", env
    if how == "user":
        env["PYTHONUSERBASE"] = str(root / "userbase")
        # Debian's python3 is "externally managed" (PEP 668): a --user install must say so.
        run(["/usr/bin/python3", "-m", "pip", "install", "-q", "--user", "--break-system-packages", wheel], env=env)
        return root / "userbase/bin/deployer", Path("/usr/bin/python3"), env
    if how == "pipx":
        env.update(PIPX_HOME=str(root / "pipx"), PIPX_BIN_DIR=str(root / "pipx-bin"))
        run(["pipx", "install", wheel], env=env)
        return root / "pipx-bin/deployer", root / "pipx/venvs/deployer/bin/python", env
    raise ValueError(how)


@pytest.mark.parametrize("how", ["venv", "user", "pipx"])
def test_an_installed_deployer_renders_and_pushes(how, wheel, tmp_path, cron01, server, write_inventory):
    if how == "pipx" and not shutil.which("pipx"):
        pytest.fail("pipx is not installed (make install puts it in: apt-get install pipx)")
    command, python, env = install(how, wheel, tmp_path / "installed")
    home = tmp_path / "home"  # no ~/.ssh, no cached trigger bundle: built from the installed package
    home.mkdir()
    env.update(HOME=str(home))
    env.pop("SSH_AUTH_SOCK", None)
    where = run([python, "-c", "import deployer; print(deployer.__file__)"], env=env, cwd=tmp_path).stdout.strip()
    assert where.startswith(str(tmp_path / "installed")), f"{how}: deployer imported from {where}"

    server.routes["/installed"] = Reply()
    inventory = write_inventory(cron01.inventory_host() + f"""
[job:installed]
on_calendar = *:*:0/2
url = {server.url("/installed")}
""")
    rendered = run([command, "render", "--out", tmp_path / "units", "-i", inventory], env=env, cwd=tmp_path)
    assert "wrote" in rendered.stdout and rendered.stderr == ""
    service = (tmp_path / "units" / "deployer-installed.service").read_text()
    assert "trigger.pyz\" \"--job\" \"installed\"" in service

    run([command, "push", "--host", "cron01", "-i", inventory], env=env, cwd=tmp_path)
    assert server.wait_for("/installed", timeout=90)[0].headers["X-Deployer-Job"] == "installed"


def test_a_zipped_install_renders(wheel, tmp_path, write_inventory):
    """The wheel itself on sys.path (zipimport): the templates are read through importlib.resources."""
    inventory = write_inventory("[host:cron01]\naddress = 10.0.0.5\n[job:zipped]\nschedule = 0 * * * *\n"
                                "url = http://x/\n")
    program = ("import sys; sys.path.insert(0, sys.argv[1]); import deployer; "
               "assert deployer.__file__.startswith(sys.argv[1]), deployer.__file__; "
               "from deployer.cli import main; sys.argv[1:2] = []; main()")
    result = run([sys.executable, "-c", program, wheel, "render", "--out", tmp_path / "units", "-i", inventory],
                 cwd=tmp_path)
    assert "wrote" in result.stdout
    assert "\"--job\" \"zipped\"" in (tmp_path / "units" / "deployer-zipped.service").read_text()


def _shipped(wheel: Path) -> set:
    import zipfile

    with zipfile.ZipFile(wheel) as archive:
        return set(archive.namelist())


def test_the_wheel_carries_every_template_and_everything_the_host_is_sent(wheel):
    """units/*.j2 as deployer/units (no hand-kept list), the host-side package the agent and the
    trigger zipapp are built from, and trigger.py."""
    names = _shipped(wheel)
    assert {f"deployer/units/{p.name}" for p in (REPO / "units").glob("*.j2")} <= names
    for package in ("contract", "host", "hostside"):
        assert {f"deployer/{package}/{p.name}" for p in (REPO / "deployer" / package).glob("*.py")} <= names
    assert {"deployer/__init__.py", "deployer/bundle.py", "deployer/remote.py", "trigger.py"} <= names


def test_a_wheel_built_from_the_sdist_carries_the_templates_too(source, tmp_path):
    """`python -m build` and an index install go through the sdist: the link must arrive as files."""
    sdist = run([sys.executable, "-c", "import sys; from setuptools import build_meta; "
                 "print(build_meta.build_sdist(sys.argv[1]))", tmp_path / "sdist"], cwd=source).stdout.split()[-1]
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", tmp_path / "wheel", tmp_path / "sdist" / sdist])
    (rebuilt,) = (tmp_path / "wheel").glob("deployer-*.whl")
    assert {n for n in _shipped(rebuilt) if n.startswith("deployer/units/")} == \
        {f"deployer/units/{p.name}" for p in (REPO / "units").glob("*.j2")}
