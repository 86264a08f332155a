"""deployer/contract/process.py: our classes' generated code compiled once, kept safely."""
from __future__ import annotations

import dataclasses
import marshal
import os
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest

from deployer.contract import process

ROOT = Path(__file__).resolve().parent.parent

# No `from __future__ import annotations` here: the generated __init__ must keep real types.
CLASSES = textwrap.dedent("""
    from dataclasses import dataclass, field
    from typing import Optional

    @dataclass(frozen=True)
    class Run:
        job: str
        slot: Optional[int] = None
        tags: tuple = ()
        notes: frozenset = field(default_factory=frozenset)

    @dataclass
    class Counter:
        count: int = 0
""")


@pytest.fixture
def installed():
    """Whatever a test installs is gone after it: the rest of the suite builds classes as usual."""
    before = dataclasses.__dict__.get("exec")
    yield
    if before is None:
        dataclasses.__dict__.pop("exec", None)
    else:
        dataclasses.exec = before


def _module(name: str):
    module = types.ModuleType(name)
    sys.modules[name] = module
    try:
        exec(compile(CLASSES, name, "exec", dont_inherit=True), module.__dict__)
    finally:
        del sys.modules[name]
    return module


def _behaviour(module):
    run, other = module.Run("settle", 5), module.Run("settle", 5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        run.job = "x"
    counter = module.Counter()
    counter.count += 1
    return (repr(run), run == other, hash(run) == hash(other), run.notes, run.tags, repr(counter),
            dict(module.Run.__init__.__annotations__), [f.name for f in dataclasses.fields(module.Run)])


def test_a_class_of_ours_built_from_kept_code_is_the_class_dataclasses_builds(installed):
    plain = _behaviour(_module("deployer.plain"))
    cache = process.install({})
    first = _behaviour(_module("deployer.first"))
    assert cache.compiled == len(cache.codes) > 0  # (a text per function, or per class from 3.13)
    assert first[:-2] == plain[:-2] and first[-1] == plain[-1]
    assert first[-2] == plain[-2] == {"job": str, "slot": first[-2]["slot"], "tags": tuple, "notes": frozenset,
                                      "return": None}

    again = process.install(cache.codes)
    second = _behaviour(_module("deployer.second"))
    assert again.compiled == 0  # every text was kept: nothing compiled
    assert second[:-2] == plain[:-2] and second[-2:] == first[-2:]


def test_only_our_classes_go_through_the_cache_and_anyone_elses_are_built_as_before(installed):
    plain = _behaviour(_module("somebody.plain"))
    cache = process.install({})
    elses = _behaviour(_module("somebody.else"))
    assert cache.compiled == 0 and cache.codes == {}
    assert elses[:-2] == plain[:-2] and elses[-2:] == plain[-2:]  # their annotations are types, not strings
    assert elses[-2]["job"] is str
    _module("deployer.ours")
    assert cache.compiled > 0


def test_the_classes_made_by_make_dataclass_are_ours_too():
    """Job and JobSpec are made in our modules, not in `types`: their code goes through the cache."""
    from deployer.host.run import JobSpec
    from deployer.models import Job

    for made, module in ((Job, "deployer.models"), (JobSpec, "deployer.host.run")):
        assert made.__module__ == module and made.__init__.__globals__["__name__"] == module


def test_the_kept_codes_are_this_users_alone_and_read_only_when_nobody_else_may_write_them(installed, tmp_path):
    cache = process.install({})
    _module("deployer.kept")
    directory = tmp_path / "cache"
    path = str(directory / process.file_name())
    process.save(path, cache)
    assert oct(directory.stat().st_mode & 0o777) == "0o700"
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    assert os.listdir(directory) == [process.file_name()]  # no temporary file left
    stale, young = Path(path + ".123.tmp"), Path(path + ".456.tmp")  # saves killed before their rename
    stale.write_bytes(b"")
    young.write_bytes(b"")
    os.utime(stale, (1, 1))
    process.save(path, cache)
    assert sorted(os.listdir(directory)) == sorted([process.file_name(), young.name])
    young.unlink()
    assert process.load(path) == cache.codes and cache.codes

    os.chmod(path, 0o620)
    assert process.load(path) == {}
    os.chmod(path, 0o600)
    directory.chmod(0o777)
    assert process.load(path) == {}
    directory.chmod(0o700)

    elsewhere = tmp_path / "elsewhere"
    os.replace(path, elsewhere)
    os.symlink(elsewhere, path)
    assert process.load(path) == {}  # a link in its place is not followed
    os.unlink(path)

    for damage in (b"", b"\x00garbage", marshal.dumps(["not", "a", "dict"])):
        Path(path).write_bytes(damage)
        assert process.load(path) == {}
    code = compile("", "x", "exec")
    Path(path).write_bytes(marshal.dumps({"text": "not code", 3: code, "ok": code}))
    assert list(process.load(path)) == ["ok"]


def test_a_cache_that_cannot_be_written_costs_nothing_but_the_compiling(installed, tmp_path):
    cache = process.install({})
    _module("deployer.unwritable")
    (tmp_path / "file").write_text("")
    process.save(str(tmp_path / "file" / "codes"), cache)  # its directory is a file
    assert process.load(str(tmp_path / "file" / "codes")) == {}


def test_texts_of_older_versions_do_not_pile_up(installed, monkeypatch):
    monkeypatch.setattr(process, "MAX_TEXTS", 5)
    old = {f"old text {n}": compile("", "x", "exec") for n in range(5)}
    cache = process.install(dict(old))
    _module("deployer.current")
    kept = cache.to_keep()
    assert not set(old) & set(kept) and kept and set(kept) == cache.used


def test_the_command_keeps_the_codes_and_a_second_command_compiles_none(tmp_path):
    """`deployer` (python -m) writes the file at exit; the next command reads it and, having
    compiled nothing, leaves it as it was."""
    inventory = tmp_path / "inventory.ini"
    inventory.write_text("[host:cron01]\naddress = 127.0.0.1\n\n[job:settle]\nschedule = @hourly\n"
                         "url = http://127.0.0.1:8080/settle\n")
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "xdg"), "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "deployer", "validate", "-i", str(inventory)]
    subprocess.run(command, env=env, check=True, capture_output=True)
    kept = tmp_path / "xdg" / "deployer" / process.file_name()
    codes = marshal.loads(kept.read_bytes())
    assert any("def __init__(self,job" in text for text in codes) and oct(kept.stat().st_mode & 0o777) == "0o600"
    written = kept.stat().st_mtime_ns
    os.utime(kept, ns=(written - 10**9, written - 10**9))
    subprocess.run(command, env=env, check=True, capture_output=True)
    assert kept.stat().st_mtime_ns == written - 10**9


def _env() -> dict:
    """Output buffered, as where it is not a terminal (without PYTHONUNBUFFERED, which CI may set)."""
    return {**{k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}, "PYTHONPATH": str(ROOT)}


def _python(program: str, **kwargs) -> subprocess.CompletedProcess:
    env = _env()
    kwargs = kwargs or {"capture_output": True}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(program)], env=env, timeout=60, **kwargs)


EXITING = """
    import atexit, sys, threading, time
    from deployer.contract import process
    class TornDown:
        def __del__(self, open=open, path=sys.argv[1] + ".teardown"):  # builtins go before it at teardown
            open(path, "w").write("the interpreter tore this down")
    kept = TornDown()
    atexit.register(lambda: open(sys.argv[1], "w").write("atexit ran"))
    print("buffered output", end="")
    sys.stderr.write("buffered error")
    if sys.argv[3] == "thread":
        threading.Thread(target=lambda: (time.sleep(0.3), print(" and the thread's", end=""))).start()
    status = {"none": None, "three": 3, "text": "a message", "big": 258}[sys.argv[2]]
    process.exit_now(status) if sys.argv[4] == "now" else sys.exit(status)
"""


@pytest.mark.parametrize("status", ["none", "three", "text", "big"])
@pytest.mark.parametrize("thread", ["thread", "no thread"])
def test_exit_now_ends_a_process_as_python_would(tmp_path, status, thread):
    """Same status, output, error output and atexit handlers as sys.exit; a thread that is not a
    daemon is waited for, as Python waits for it."""
    ends = {}
    for how in ("now", "python"):
        marker = tmp_path / how
        done = _python(EXITING.replace("sys.argv[1]", repr(str(marker))).replace("sys.argv[2]", repr(status))
                       .replace("sys.argv[3]", repr(thread)).replace("sys.argv[4]", repr(how)))
        torn_down = Path(f"{marker}.teardown").exists()
        ends[how] = (done.returncode, done.stdout, done.stderr, marker.read_text(), torn_down)
    assert ends["now"][:4] == ends["python"][:4]
    assert ends["now"][3] == "atexit ran"
    # Taken the quick way only where nothing unusual asks for Python's: no teardown then.
    assert (ends["python"][4], ends["now"][4]) == (True, status == "text" or thread == "thread")
    assert ends["now"][0] == {"none": 0, "three": 3, "text": 1, "big": 2}[status]


def test_output_that_cannot_be_written_is_reported_as_python_reports_it():
    """The reader of the output went away (`deployer status | head -0`): the flush at the exit
    fails, and Python's own report of it and its status are kept."""
    ends = {}
    for how in ("now", "python"):
        program = f"""
            import sys
            from deployer.contract import process
            print("x" * 100)
            sys.stdin.read()  # until the test has closed the output's reading end
            process.exit_now(0) if {how!r} == "now" else sys.exit(0)
        """
        child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(program)], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 env=_env())
        child.stdout.close()
        child.stdin.close()
        error = child.stderr.read()
        ends[how] = (child.wait(timeout=60), error)
    assert ends["now"] == ends["python"]
    assert ends["now"][0] == 120 and b"BrokenPipeError" in ends["now"][1] and b"Traceback" not in ends["now"][1]


def test_a_process_started_without_an_output_exits_as_python_would():
    ends = {}
    for how in ("now", "python"):
        program = f"""
            import sys
            from deployer.contract import process
            assert sys.stdout is None
            process.exit_now(4) if {how!r} == "now" else sys.exit(4)
        """
        done = _python(program, stderr=subprocess.PIPE, preexec_fn=lambda: os.close(1))
        ends[how] = (done.returncode, done.stderr)
    assert ends["now"] == ends["python"] == (4, b"")


def test_an_atexit_handler_that_fails_is_reported_and_the_status_kept():
    ends = {}
    for how in ("now", "python"):
        program = f"""
            import atexit, sys
            from deployer.contract import process
            atexit.register(lambda: 1 / 0)
            process.exit_now(0) if {how!r} == "now" else sys.exit(0)
        """
        done = _python(program)
        ends[how] = (done.returncode, b"ZeroDivisionError" in done.stderr, done.stderr.count(b"Traceback"))
    assert ends["now"] == ends["python"] == (0, True, 1)


def test_the_command_exits_with_the_cli_status_and_its_output(tmp_path):
    """`python -m deployer` (and the console script, the same main): 0, 1 with one line, 2."""
    bad = tmp_path / "bad.ini"
    bad.write_text("[job:settle]\nschedule = every now and then\nurl = http://127.0.0.1/\n")
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "xdg"), "PYTHONPATH": str(ROOT)}
    def run(*args):
        return subprocess.run([sys.executable, "-m", "deployer", *args], env=env, capture_output=True, text=True,
                              timeout=60)

    version = run("--version")
    assert (version.returncode, "version" in version.stdout) == (0, True)
    refused = run("validate", "-i", str(bad))
    assert refused.returncode == 1 and refused.stdout == ""
    assert refused.stderr.startswith(f"deployer: error: {bad}") and "Traceback" not in refused.stderr
    usage = run("no-such-command")
    assert usage.returncode == 2 and "No such command" in usage.stderr
