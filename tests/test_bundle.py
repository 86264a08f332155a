"""The trigger zipapp: the same bytes from any process (else every push would upload it again)."""
import os
import subprocess
import sys

from tests.conftest import REPO

BUILD = ("import hashlib, deployer.bundle as b; "
         "print(hashlib.sha256(b._build(b._sources())).hexdigest())")


def test_two_fresh_processes_build_the_same_bundle():
    """Before: the bytecode made it differ between processes, and a no-op push from another
    machine (or a cold cache) re-uploaded it."""
    digests = set()
    for seed in ("1", "2", "random"):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        digests.add(subprocess.run([sys.executable, "-c", BUILD], env=env, cwd=REPO, capture_output=True,
                                   text=True, check=True).stdout.strip())
    assert len(digests) == 1


def test_the_bundle_carries_bytecode_that_is_used(tmp_path):
    from deployer.bundle import trigger_bundle

    path = tmp_path / "trigger.pyz"
    path.write_bytes(trigger_bundle())
    probe = f"import sys; sys.path.insert(0, {str(path)!r}); import deployer.host.run as r; print(r.__file__)"
    loaded = subprocess.run([sys.executable, "-I", "-S", "-c", probe], capture_output=True, text=True, check=True)
    assert loaded.stdout.strip().endswith("deployer/host/run.pyc"), "the module was compiled from source"
    ran = subprocess.run([sys.executable, "-I", "-S", str(path), "--help"], capture_output=True, text=True)
    assert ran.returncode == 0 and "--url" in ran.stdout


def test_boot_units_an_older_deployer_wrote_still_start_the_agent_from_a_new_bundle(tmp_path):
    """A crash between the new archive and the new units leaves the old recovery and hold units
    (`python3 -m deployer.hostside.agent --boot`) over the new archive: they must still find the agent."""
    from deployer.bundle import trigger_bundle

    path = tmp_path / "trigger.pyz"
    path.write_bytes(trigger_bundle())
    env = {"PYTHONPATH": str(path), "PATH": os.environ.get("PATH", "")}
    ran = subprocess.run([sys.executable, "-m", "deployer.hostside.agent", "--help"], capture_output=True,
                         text=True, env=env, cwd=tmp_path)
    new = subprocess.run([sys.executable, "-m", "deployer.host.agent", "--help"], capture_output=True,
                         text=True, env=env, cwd=tmp_path)
    assert "No module named" not in ran.stderr, ran.stderr
    assert (ran.returncode, ran.stdout) == (new.returncode, new.stdout)
