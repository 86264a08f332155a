"""The one module that touches the cron host: SSH connection policy and the agent round trips.

`Agent` is the seam: `SSHAgent` (built only by the CLI, over a fabric.Connection) runs
deployer/host/agent.py on the host, one SSH exec per request; `LocalAgent` runs the same
agent in this process against a temporary root, for tests. The functions below take an Agent
and speak the typed protocol (deployer/contract/protocol.py).
"""
from __future__ import annotations

import base64
import errno
import functools
import hashlib
import io
import json
import math
import os
import re
import select
import shlex
import socket
import time
import tokenize
import zlib
from pathlib import Path
from typing import Any, Callable, Optional

from . import buildcache
from .errors import AgentRefused, HostSetupError, RemoteCommandError, RemoteError
from .contract import paths, protocol
from .contract.protocol import (ApplyAnswer, ApplyRequest, FileWrite, HandoffAnswer, HandoffRequest, HistoryAnswer,
                                HistoryRequest, LogsRequest, PauseRequest, ReleaseAnswer, ReleaseRequest,
                                ResumeRequest, RunAnswer, RunRequest, StateRequest, StatusAnswer, StatusRequest,
                                StopAnswer, StopRequest, Takeover)
from .models import Host, Plan, RemoteState

CONNECT_TIMEOUT = 15
Progress = Optional[Callable[[str], None]]

# The agent, shipped in the `python3 -c` argument (an in-memory package) with every module of
# ours it imports (agent_modules): derived from the imports, never a list kept by hand.
AGENT_MODULE = "deployer.host.agent"
PROCESS_MODULE = "deployer.contract.process"  # the bootstrap imports it before the agent
# -I: no PYTHON* variable of the login session, no user site, no current directory on the path of
# what runs as root; -S: no site (the agent uses the standard library only), 2.6 ms of each start.
AGENT_FLAGS = ("-I", "-S")
# A meta-path finder over {module: (is_package, code)}: the host needs nothing of ours installed,
# and an installed `deployer` cannot shadow the version the client speaks. It starts with
# `import zlib,base64`: tests/e2e/test_faults.py finds a running agent by that text.
# Compiling the modules was a third of the agent's start (18 of 70 ms), paid by every command: the
# compiled modules are kept in AGENT_CACHE, named by the program's hash and the host Python's
# bytecode tag, and read back only from a root-owned file in a root-owned directory that nobody
# else may write (as a .pyc under /usr is trusted). Any error there compiles anew. Writing one
# removes the files older than a minute there (other versions'; an agent killed mid-write).
# The same file keeps, under the key '' (no module's name), the code dataclasses generates for the
# agent's classes (contract/process.py): another 11 ms of every start. It is saved once the
# agent's modules are imported, when either was compiled anew. The agent ends without the
# interpreter's teardown (process.exit_now): 11 ms more.
AGENT_CACHE = "/var/cache/deployer/agent"
BOOTSTRAP = """import zlib,base64,sys,json,os,time,marshal,importlib.machinery as M
P='%s'
D='%s'
K=D+'/%s-'+str(sys.implementation.cache_tag)+'.bin'
def safe(s):return s.st_uid==0 and not s.st_mode&0o22
def load():
 try:
  if not safe(os.stat(D)):return None
  with open(os.open(K,os.O_RDONLY|os.O_NOFOLLOW),'rb') as h:
   if not safe(os.fstat(h.fileno())):return None
   C=marshal.loads(h.read())
  return C if isinstance(C,dict) else None
 except (OSError,ValueError,EOFError,TypeError):return None
def save(C):
 try:
  os.makedirs(D,0o700,exist_ok=True)
  if not safe(os.stat(D)):return
  for n in os.listdir(D):
   if D+'/'+n!=K and os.lstat(D+'/'+n).st_mtime<time.time()-60:os.unlink(D+'/'+n)
  t='%%s.%%d'%%(K,os.getpid())
  with open(os.open(t,os.O_WRONLY|os.O_CREAT|os.O_EXCL|os.O_NOFOLLOW,0o600),'wb') as h:h.write(marshal.dumps(C))
  os.replace(t,K)
 except OSError:pass
C=load()
N=C is None
if N:C={n:(p,compile(s,'<deployer>/'+n,'exec')) for n,(p,s) in json.loads(zlib.decompress(base64.b64decode(P))).items()}
class F:
 def find_spec(self,name,path=None,target=None):
  return M.ModuleSpec(name,self,is_package=C[name][0]) if name in C else None
 def create_module(self,spec):return None
 def exec_module(self,module):exec(C[module.__name__][1],module.__dict__)
sys.meta_path.insert(0,F())
import deployer.contract.process as Q
X=Q.install(C.setdefault('',{}))
import deployer.host.agent as agent
if N or X.compiled:save(C)
agent.main()
Q.exit_now(0)
"""
MAX_ARGUMENT = 128 * 1024  # Linux's limit for one argv string (MAX_ARG_STRLEN)
COMMAND_ROOM = 8 * 1024  # what the agent command adds to the bootstrap: sudo, the python path, quoting


def _source(module: str) -> tuple[bool, str]:
    root = Path(__file__).resolve().parent.parent
    parts = module.split(".")
    package = root.joinpath(*parts, "__init__.py")
    if package.exists():
        return True, package.read_text()
    return False, root.joinpath(*parts[:-1], parts[-1] + ".py").read_text()


def _imports(module: str, source: str) -> set[str]:
    """The modules of ours that `source` (of `module`) imports, anywhere in it (a function's
    lazy import runs on the host too), absolute names."""
    import ast

    package = module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}
    return {name for name in found if name == "deployer" or name.startswith("deployer.")}


@functools.lru_cache(maxsize=1)
def agent_modules(starts: tuple[str, ...] = (AGENT_MODULE, PROCESS_MODULE)) -> tuple[str, ...]:
    """What the bootstrap imports (`starts`) and every module of ours they import, directly or not,
    with their packages."""
    root = Path(__file__).resolve().parent.parent
    exists = lambda name: (root.joinpath(*name.split("."), "__init__.py").exists()  # noqa: E731
                           or root.joinpath(*name.split(".")[:-1], name.split(".")[-1] + ".py").exists())
    seen, todo = set(), list(starts)
    while todo:
        name = todo.pop()
        if name in seen or not exists(name):
            continue  # `from deployer.contract import paths` names a module; `... import Held` does not
        seen.add(name)
        parents = [".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)]
        todo += parents + sorted(_imports(name, _source(name)[1]))
    return tuple(sorted(seen))


def without_comments(source: str) -> str:
    """`source` without its comments, every line where it was (a traceback from the host still
    points at the right line): they are a sixth of the packed agent, which must fit one argument."""
    lines = source.splitlines(keepends=True)
    comments = [t for t in tokenize.generate_tokens(io.StringIO(source).readline) if t.type == tokenize.COMMENT]
    for token in reversed(comments):
        (row, start), (_, end) = token.start, token.end
        line = lines[row - 1]
        lines[row - 1] = (line[:start] + line[end:]).rstrip() + ("\n" if line.endswith("\n") else "")
    return "".join(lines)


@functools.lru_cache(maxsize=1)
def bootstrap() -> str:
    """The `python3 -c` program: the agent package packed in (without comments), zlib + base64.
    Packing it took a command 0.1 s of CPU (a quarter of `history`'s own): it is kept in the build
    cache, keyed by every source file of the package (any of them may be the agent's)."""
    root = Path(__file__).resolve().parent
    files = [(str(path.relative_to(root)), path) for path in sorted(root.rglob("*.py"))]
    name = "agent-%s.py" % buildcache.key(Path(__file__).read_bytes(), files)
    program = buildcache.cached(name, lambda: _pack().encode()).decode()
    # The remote shell gets the whole command as one argument (sh -c), and sudo the program as
    # one: both must stay under MAX_ARG_STRLEN, with room for the python path and sudo.
    assert len(program) < MAX_ARGUMENT - COMMAND_ROOM, "the agent bootstrap grew too large for one argument"
    return program


def _pack(cache: str = AGENT_CACHE) -> str:
    sources = {m: (package, without_comments(text)) for m, (package, text) in
               ((m, _source(m)) for m in agent_modules())}
    packed = base64.b64encode(zlib.compress(json.dumps(sources).encode(), 9)).decode()
    # The cache file is named by the whole program (this one's layout of it too) and the directory.
    name = hashlib.sha256((BOOTSTRAP + packed + cache).encode()).hexdigest()[:32]
    return BOOTSTRAP % (packed, cache, name)


def _agent_command(host: Host) -> str:
    command = f"{shlex.quote(host.python)} {' '.join(AGENT_FLAGS)} -c {shlex.quote(bootstrap())}"
    return f"sudo -n {command}" if host.sudo else command


def connect(host: Host):
    """A fabric.Connection with host keys checked strictly unless the host says accept-new.

    Fabric's default silently trusts unknown hosts (AutoAddPolicy); we replace it.
    """
    import paramiko

    kwargs: dict[str, Any] = {}
    if host.identity_file:
        kwargs["key_filename"] = os.path.expanduser(host.identity_file)
    connection = _connection_class()(
        host.address, user=host.user, port=host.port, connect_kwargs=kwargs,
        connect_timeout=CONNECT_TIMEOUT,
    )
    client = connection.client
    # As ssh does: the given file, else ~/.ssh/known_hosts and the system's (fabric loads none).
    known_hosts = os.path.expanduser(host.known_hosts or "~/.ssh/known_hosts")
    for path in [known_hosts] + ([] if host.known_hosts else [SYSTEM_KNOWN_HOSTS]):
        if os.path.exists(path):
            _load_known_hosts(client, path, host, system=path != known_hosts)
    if host.host_key == "accept-new":
        client.set_missing_host_key_policy(_AcceptNew(known_hosts))
    else:
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
    return connection


SYSTEM_KNOWN_HOSTS = "/etc/ssh/ssh_known_hosts"


@functools.lru_cache(maxsize=None)
def _connection_class():
    """fabric.Connection, opening its TCP connection with Nagle's algorithm off (_tcp) unless a
    gateway from ~/.ssh/config (ProxyJump, ProxyCommand) makes it."""
    import fabric

    class Connection(fabric.Connection):
        def open(self):
            if self.is_connected or self.gateway:
                return super().open()
            self.connect_kwargs["sock"] = _tcp(self.host, self.port)
            try:
                return super().open()
            except BaseException:
                self.connect_kwargs["sock"].close()
                raise
            finally:
                self.connect_kwargs.pop("sock", None)

    return Connection


def _load_known_hosts(client, path: str, host: Host, system: bool) -> None:
    import paramiko

    try:
        (client.load_system_host_keys if system else client.load_host_keys)(path)
    except paramiko.hostkeys.InvalidHostKey as error:
        with open(path, encoding="utf-8", errors="replace") as handle:
            number = next((n for n, line in enumerate(handle, 1) if line.strip() == error.line.strip()), None)
        where = f"{path}:{number}" if number else path
        line = error.line.strip()
        shown = repr(line[:40]) + ("..." if len(line) > 40 else "")
        raise RemoteError(host.name, f"{where}: not a known_hosts entry ({shown}): remove or fix that line") from None
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or str(error)
        raise RemoteError(host.name, f"known_hosts {path}: cannot read: {reason}") from None


class _AcceptNew:
    """OpenSSH's StrictHostKeyChecking=accept-new: trust a first key, record it; a changed
    key is still refused (paramiko raises BadHostKeyException before asking a policy)."""

    def __init__(self, known_hosts: str):
        self.known_hosts = known_hosts

    def missing_host_key(self, client, hostname, key):
        client.get_host_keys().add(hostname, key.get_name(), key)
        os.makedirs(os.path.dirname(self.known_hosts) or ".", mode=0o700, exist_ok=True)
        with open(self.known_hosts, "a", encoding="ascii") as handle:
            handle.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")


def _quiet_paramiko() -> None:
    """paramiko's transport thread logs a failed handshake with its traceback (22 lines on stderr,
    through logging's last-resort handler, before our one line). The exception that follows
    says it all; nothing here configures logging, so this handler only takes that fallback."""
    import logging

    logger = logging.getLogger("paramiko")
    if not logger.handlers:
        logger.addHandler(logging.NullHandler())


def _keys_tried(connection) -> str:
    """What paramiko offers, in its order: the identity files, the ssh-agent, ~/.ssh/id_*."""
    kwargs = connection.connect_kwargs
    files = kwargs.get("key_filename") or []
    tried = [files] if isinstance(files, str) else list(files)
    if kwargs.get("allow_agent", True) and os.environ.get("SSH_AUTH_SOCK"):
        tried.append("the ssh-agent's keys")
    if kwargs.get("look_for_keys", True):
        tried += [p for p in (os.path.expanduser(f"~/.ssh/id_{kind}") for kind in ("rsa", "ecdsa", "ed25519"))
                  if os.path.isfile(p) and p not in tried]
    return ", ".join(tried) or "none"


def _open(connection, host: Host) -> None:
    _quiet_paramiko()
    if host.identity_file and not os.path.isfile(os.path.expanduser(host.identity_file)):
        exists = os.path.exists(os.path.expanduser(host.identity_file))
        raise RemoteError(host.name, f"identity_file {host.identity_file}: {'not a file' if exists else 'no such file'}")
    try:
        connection.open()
    except Exception as error:
        translated = _connect_error(error, connection, host)
        if translated is None:
            raise  # not a connection problem: a bug, keeps its traceback
        raise translated from None


def _tcp(address: str, port: int):
    """The TCP connection paramiko would open (each address in turn, refused or unreachable ones
    skipped, as its NoValidConnectionsError says), with Nagle's algorithm off. paramiko leaves it
    on: each small SSH packet then waited for the host's delayed ACK, 40 ms at a time, and that was
    two thirds of the handshake and nearly all of opening a channel (issue 25: a command's floor)."""
    import paramiko

    errors = {}
    found = socket.getaddrinfo(address, port, socket.AF_UNSPEC, socket.SOCK_STREAM)
    for family, kind, proto, _, target in found:
        sock = socket.socket(family, kind, proto)
        sock.settimeout(CONNECT_TIMEOUT)
        try:
            sock.connect(target)
        except OSError as error:
            sock.close()
            if error.errno not in (errno.ECONNREFUSED, errno.EHOSTUNREACH):
                raise
            errors[target[:2]] = error
            continue
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock
    raise paramiko.ssh_exception.NoValidConnectionsError(errors)


def fingerprint(key) -> str:
    """A host key as OpenSSH shows it (ssh, ssh-keygen -l, ssh-keyscan | ssh-keygen -lf -):
    `SHA256:` and the unpadded base64 of the SHA-256 of the key blob. paramiko's own
    get_fingerprint() is MD5, which no current OpenSSH prints, so it could not be compared."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def _described(key) -> str:
    return f"{key.get_name()} {fingerprint(key)}"


def _connect_error(error: Exception, connection, host: Host) -> Optional[RemoteError]:
    """paramiko's and the socket's failures -> one line naming what to check, or None."""
    import paramiko

    where = f"{host.address} port {connection.port}"  # fabric's: the inventory, else ~/.ssh/config
    who = f"{connection.user}@{where}"
    message = str(error)
    if isinstance(error, paramiko.BadHostKeyException):
        known = os.path.expanduser(host.known_hosts or "~/.ssh/known_hosts")
        entry = error.hostname if connection.port == 22 else f"[{error.hostname}]:{connection.port}"
        return RemoteError(host.name, f"host key for {error.hostname} CHANGED: known_hosts has "
                           f"{_described(error.expected_key)}, the host offered {_described(error.key)}; refusing to "
                           f"connect. If the host was rebuilt, remove the old key: ssh-keygen -R '{entry}' -f {known}")
    if isinstance(error, paramiko.PasswordRequiredException):
        return RemoteError(host.name, f"ssh {who}: a key is protected by a passphrase (tried "
                           f"{_keys_tried(connection)}); load it into ssh-agent (ssh-add) or use a key without one")
    if isinstance(error, paramiko.AuthenticationException):
        return RemoteError(host.name, f"ssh {who}: authentication failed: the host accepted none of the keys "
                           f"tried ({_keys_tried(connection)}): check user and identity_file in "
                           f"[host:{host.name}], and that the key's .pub is in that user's ~/.ssh/authorized_keys")
    if isinstance(error, paramiko.SSHException):
        if "not found in known_hosts" in message:
            known = os.path.expanduser(host.known_hosts or "~/.ssh/known_hosts")
            missing = "" if os.path.exists(known) else f" (the file {known} does not exist)"
            port = f"-p {connection.port} " if connection.port != 22 else ""
            return RemoteError(host.name, f"{host.address} is not in known_hosts{missing} and host_key = strict; "
                               f"add its key (ssh-keyscan {port}{host.address} >> {known}, after checking its "
                               "fingerprint) or set host_key = accept-new")
        if "No authentication methods available" in message:
            return RemoteError(host.name, f"ssh {who}: no key to offer (no identity_file, no ssh-agent, no "
                               f"~/.ssh/id_*): set identity_file in [host:{host.name}]")
        # No banner: something else listens there (HTTP), or nothing answers ("No existing session"
        # is what paramiko says after its banner timeout).
        if "protocol banner" in message or "No existing session" in message:
            return RemoteError(host.name, f"{where} does not answer as an SSH server (no SSH banner): check "
                               f"address and port in [host:{host.name}]")
        if "private key file" in message and host.identity_file:
            public = " (that is the public key: give the file without .pub)" \
                if host.identity_file.endswith(".pub") else ""
            return RemoteError(host.name, f"identity_file {host.identity_file}: not a private key that ssh can "
                               f"read{public}")
        return RemoteError(host.name, f"ssh {who}: {message}")
    if isinstance(error, paramiko.ssh_exception.NoValidConnectionsError):
        reasons = sorted({(e.strerror or str(e)).lower() for e in error.errors.values()})
        return RemoteError(host.name, f"cannot connect to {where}: {'; '.join(reasons)} (is sshd running there, "
                           "and is the port right?)")
    if isinstance(error, socket.gaierror):
        return RemoteError(host.name, f"cannot resolve address {host.address}: {error.strerror}")
    if isinstance(error, (socket.timeout, TimeoutError)):
        return RemoteError(host.name, f"cannot connect to {where}: no answer within {CONNECT_TIMEOUT}s (host "
                           "down, or a firewall dropping the connection?)")
    if isinstance(error, (OSError, EOFError)):
        reason = getattr(error, "strerror", None) or message or type(error).__name__
        return RemoteError(host.name, f"cannot connect to {where}: {reason.lower()}")
    return None


PROGRESS_PREFIX = b"@progress "
LINE_PREFIX = b"@line "  # a journal line of the job, streamed by `run` and `logs --follow`
ALIVE_LINE = b"@alive"  # the agent's heartbeat (agent.HEARTBEAT_SECONDS), so silence means trouble
READ_TIMEOUT = 45.0
# The most the client reads from a host: a compromised (or broken) host answering without end
# must not take this machine's memory. A legitimate answer is far smaller: `state` with every
# unit's text, or `logs --since 7d` of a chatty job.
MAX_ANSWER = 64 << 20  # stdout: the one JSON answer
MAX_STREAMED = 64 << 20  # `@line`s of a `run` or a `logs` (a `logs --follow` streams without end)
MAX_STDERR = 1 << 20  # any one stderr line, and what is not a report (a traceback's worth)
KEEPALIVE_SECONDS = 10
UPLOAD_CHUNK = 1 << 18


def execute(connection, host: Host, command: str, stdin: bytes = b"", step: str = "command",
            progress: Progress = None, read_timeout: float = None, output: Progress = None,
            max_streamed: Optional[int] = MAX_STREAMED, stop: Optional[Callable[[], bool]] = None) -> bytes:
    """Run one command with `stdin`; return all of stdout; raise RemoteCommandError on non-zero exit.

    Uses the paramiko channel directly: Invoke's stdin pump sleeps between 1 kB chunks,
    which would make a large push crawl. Lines `@progress ...` on the command's stderr
    are steps reported by the agent, passed to `progress`; `@line ...` lines are journal lines
    streamed as they happen, passed to `output`; `@alive` lines are its heartbeat.
    Reads until the host's end-of-file, not until its exit status (which may arrive first).
    A host silent for `read_timeout` seconds (a network black hole, a stopped sshd) is an error
    naming it; SSH keepalives keep idle NAT and firewall state open meanwhile. A host that
    sends more than MAX_ANSWER on stdout, MAX_STDERR of anything else on stderr, or more than
    `max_streamed` bytes of `@line`s (None: no limit, for a follow) is an error naming it.
    `stop()` true (Ctrl-C, taken by a signal handler) raises Stopped before the command is sent
    (nothing asked of the host), or between reads, within half a second: never an exception in
    the middle of one of paramiko's.
    """
    read_timeout = READ_TIMEOUT if read_timeout is None else read_timeout
    _open(connection, host)
    transport = connection.client.get_transport()
    transport.set_keepalive(KEEPALIVE_SECONDS)
    silent = (f"{step}: {host.address} stopped answering (nothing for {read_timeout:.0f}s; host down or "
              "network black hole?)")
    report = progress or (lambda text: None)
    try:
        channel = transport.open_session(timeout=read_timeout)
    except (socket.error, EOFError, paramiko_errors()) as error:
        raise RemoteError(host.name, f"{step}: cannot open a session on {host.address}: {error}") from None
    try:
        channel.settimeout(read_timeout)  # sendall() of the request gives up after it too
        if stop is not None and stop():  # Ctrl-C while connecting: nothing is asked of the host
            raise Stopped()
        channel.exec_command(command)
        try:
            for offset in range(0, len(stdin), UPLOAD_CHUNK):
                if len(stdin) > UPLOAD_CHUNK:
                    report(f"uploading {offset / 1e6:.1f} of {len(stdin) / 1e6:.1f} MB")
                channel.sendall(stdin[offset:offset + UPLOAD_CHUNK])
            channel.shutdown_write()
        except socket.timeout:
            raise
        except (OSError, EOFError):
            # The command ended before it read its input ("Socket is closed"): a missing program
            # exits 127 at once, and on a busy machine that comes before the request is sent. Its
            # exit status and stderr, read below, say why.
            if not channel.closed and not channel.exit_status_ready():
                raise
        out, err = bytearray(), bytearray()
        heard = time.monotonic()
        streamed = 0
        while True:
            if stop is not None and stop():
                raise Stopped()
            got = False
            while channel.recv_ready() and len(out) <= MAX_ANSWER:
                out += channel.recv(1 << 16)
                got = True
            while channel.recv_stderr_ready() and len(err) <= MAX_STDERR:
                err += channel.recv_stderr(1 << 16)
                got = True
            streamed += _take_reports(err, report, output)
            too_much = ("its answer" if len(out) > MAX_ANSWER else "job lines" if max_streamed is not None
                        and streamed > max_streamed else "other output" if len(err) > MAX_STDERR else "")
            if too_much:
                limit = MAX_ANSWER if too_much == "its answer" else max_streamed if too_much == "job lines" \
                    else MAX_STDERR
                raise RemoteError(host.name, f"{step}: {host.address} sent more than {limit >> 20} MiB of "
                                  f"{too_much}; stopped reading (a broken or compromised host?)")
            if (channel.eof_received or channel.closed) and not channel.recv_ready() \
                    and not channel.recv_stderr_ready():
                break
            if got:
                heard = time.monotonic()
            elif time.monotonic() - heard > read_timeout:
                raise RemoteError(host.name, silent)
            else:
                select.select([channel], [], [], 0.5)
        if not channel.status_event.wait(read_timeout):
            raise RemoteError(host.name, silent)
        status = channel.recv_exit_status()
    except socket.timeout:
        raise RemoteError(host.name, silent) from None
    finally:
        channel.close()
    if status != 0:
        raise RemoteCommandError(host.name, step, status, err.decode("utf-8", "replace"))
    return bytes(out)


def _take_reports(err: bytearray, report: Callable[[str], None], output: Progress = None) -> int:
    """Remove the agent's complete `@progress`, `@line` and `@alive` lines from `err`, in the order
    they came, reporting progress and passing journal lines to `output`; anything else stays.
    -> the bytes of journal lines taken."""
    kept, start, streamed = bytearray(), 0, 0
    while True:
        end = err.find(b"\n", start)
        if end < 0:
            break
        line = bytes(err[start:end])
        if line.startswith(PROGRESS_PREFIX):
            report("host: " + line[len(PROGRESS_PREFIX):].decode("utf-8", "replace"))
        elif line.startswith(LINE_PREFIX):
            streamed += len(line)
            if output is not None:
                output(line[len(LINE_PREFIX):].decode("utf-8", "replace"))
        elif line != ALIVE_LINE:
            kept += err[start:end + 1]
        start = end + 1
    err[:] = kept + err[start:]
    return streamed


# What an answer may hold where a name or a word of a vocabulary is expected: text beyond these
# (a job name with an escape sequence, a result "ok\x1b[2J") is refused, not printed. Free text
# (reasons, journal lines, calendars) is escaped where it is printed (contract/text.printable).
_JOB_NAME = paths.NAME
_UNIT_NAME = re.compile(r"^[A-Za-z0-9:_.@-]{1,256}$")
_SYSTEMD_WORD = re.compile(r"^[a-z-]{0,40}$")  # ActiveState=, Result=, UnitFileState= values
_RUN_ID = re.compile(r"^[A-Za-z0-9_-]{0,64}$")
_MACHINE = re.compile(r"^[0-9a-f]{32}$")  # StatusAnswer.machine
RUN_SOURCES = ("record", "systemd")
_UNIT_LISTS = ("started", "restarted", "stopped", "enabled_for_boot", "kept_paused", "paused")


def _iso_problem(what: str, text: str) -> Optional[str]:
    if not text:
        return None
    try:
        from datetime import datetime

        datetime.fromisoformat(text)
    except ValueError:
        return f"{what} {text[:40]!r} is not an ISO 8601 time"
    return None


def _number_problem(what: str, value) -> Optional[str]:
    return None if value is None or math.isfinite(value) else f"{what} {value!r} is not a number"


def _run_problem(run: protocol.RunInfo) -> Optional[str]:
    from .report import RUN_RESULTS  # the vocabulary of docs/json.md

    if run.result not in RUN_RESULTS:
        return f"run result {run.result[:40]!r} is not one of {', '.join(RUN_RESULTS)}"
    if run.source not in RUN_SOURCES:
        return f"run source {run.source[:40]!r} is not one of {', '.join(RUN_SOURCES)}"
    if not _RUN_ID.match(run.run):
        return f"run id {run.run[:40]!r} is not an id"
    if run.http_status is not None and not 100 <= run.http_status <= 599:
        return f"HTTP status {run.http_status!r}"
    for what in ("started", "slot", "duration"):
        problem = _number_problem(what, getattr(run, what))
        if problem:
            return problem
    return None


def _held_problem(held: Optional[protocol.Held]) -> Optional[str]:
    if held is None:
        return None
    return _iso_problem("held since", held.since) or _number_problem("down for", held.down_for_seconds) \
        or _number_problem("lease", held.lease_seconds)


def _audit_problem(entry: Optional[protocol.AuditEntry]) -> Optional[str]:
    """An audit entry's words come from their vocabularies; its free text is escaped where shown."""
    from .contract import audit

    if entry is None:
        return None
    if entry.action not in audit.ACTIONS:
        return f"audit action {entry.action[:40]!r} is not one of {', '.join(audit.ACTIONS)}"
    if entry.outcome not in audit.OUTCOMES:
        return f"audit outcome {entry.outcome[:40]!r} is not an outcome"
    if entry.actor.commit and not re.match(r"^[0-9a-f]{40}$", entry.actor.commit):
        return f"commit {entry.actor.commit[:40]!r} is not a git commit"
    if entry.actor.inventory_sha256 and not re.match(r"^[0-9a-f]{64}$", entry.actor.inventory_sha256):
        return f"inventory digest {entry.actor.inventory_sha256[:40]!r} is not a sha256"
    return _number_problem("audit time", entry.time)


def answer_problem(answer: Any) -> Optional[str]:
    """What is wrong with an agent's answer, or None: job names follow the name rule, unit names
    are unit names, words come from their vocabularies, times parse and numbers are finite."""
    if isinstance(answer, protocol.AuditAnswer):
        return next(filter(None, map(_audit_problem, answer.entries)), None) or _number_problem("now", answer.now)
    if isinstance(answer, protocol.StatusAnswer):
        problem = _audit_problem(answer.last_push)
        if problem:
            return problem
        for job in answer.jobs:
            if not _JOB_NAME.match(job.job or ""):
                return f"job name {str(job.job)[:40]!r} breaks the name rule"
            for unit in (job.timer, job.service):
                if not _UNIT_NAME.match(unit):
                    return f"unit name {unit[:40]!r}"
            for word in (job.timer_state, job.service_state, job.result, job.enabled):
                if not _SYSTEMD_WORD.match(word):
                    return f"systemd state {word[:40]!r} is not a systemd word"
            for what in ("next", "last", "started", "finished"):
                problem = _iso_problem(what, getattr(job, what))
                if problem:
                    return problem
            if job.last_run is not None:
                problem = _run_problem(job.last_run)
                if problem:
                    return problem
        if answer.machine and not _MACHINE.match(answer.machine):
            return f"machine {answer.machine[:40]!r} is not 32 hex digits"
        if answer.owner is not None and not _JOB_NAME.match(answer.owner):
            return f"owner {answer.owner[:40]!r} breaks the name rule"
        return _held_problem(answer.held)
    if isinstance(answer, protocol.HistoryAnswer):
        for run in answer.runs:
            problem = _run_problem(run)
            if problem:
                return problem
        return _number_problem("now", answer.now) or _number_problem("scheduled since", answer.scheduled_since)
    if isinstance(answer, protocol.RunAnswer):
        if not _SYSTEMD_WORD.match(answer.result):
            return f"systemd result {answer.result[:40]!r} is not a systemd word"
        problem = _held_problem(answer.held) or _iso_problem("attached to a run started", answer.attached)
        if problem:
            return problem
        return _run_problem(answer.run) if answer.run is not None else None
    if isinstance(answer, protocol.StopAnswer):
        problem = _iso_problem("stopped a run started", answer.started)
        if problem:
            return problem
        return _run_problem(answer.run) if answer.run is not None else None
    if isinstance(answer, (protocol.ReleaseAnswer, protocol.ApplyAnswer, protocol.StateAnswer)):
        problem = _held_problem(getattr(answer, "released", None) or getattr(answer, "held", None))
        if problem:
            return problem
    if isinstance(answer, protocol.StateAnswer):
        if answer.owner is not None and not _JOB_NAME.match(answer.owner):
            return f"owner {answer.owner[:40]!r} breaks the name rule"
        bad = next((job for job in getattr(answer, "epochs", {}) if not _JOB_NAME.match(job)), None)
        if bad is not None:
            return f"job name {bad[:40]!r} breaks the name rule"
    units = [getattr(answer, "timer", "")] if isinstance(answer, (protocol.PauseAnswer, protocol.ResumeAnswer)) \
        else [u for name in _UNIT_LISTS for u in getattr(answer, name, ())]
    bad = next((u for u in units if not _UNIT_NAME.match(u)), None)
    return f"unit name {bad[:40]!r}" if bad is not None else None


def paramiko_errors():
    import paramiko

    return paramiko.SSHException


class Stopped(Exception):
    """The caller's `stop()` said so: the read ended where it was safe to leave."""


class Agent:
    """The agent on one host, behind one method: a typed request in, its typed answer out.
    A refusal raises AgentRefused carrying the protocol's error code."""

    host: str

    def call(self, request: Any, progress: Progress = None, output: Progress = None,
             stop: Optional[Callable[[], bool]] = None) -> Any:
        """`output`: called with each journal line the agent streams while it works. `stop()`
        true ends a streaming call with Stopped."""
        raise NotImplementedError

    def _answer(self, request: Any, raw: bytes) -> Any:
        op = protocol.OP_OF_REQUEST[type(request)]
        try:
            answer = protocol.decode_answer(request, raw)
        except protocol.ProtocolError as error:
            raise AgentRefused(self.host, error.code, f"agent {op}: {error.message}") from None
        if isinstance(answer, protocol.Failure):
            if answer.code not in protocol.ERROR_CODES:
                raise RemoteError(self.host, f"agent {op}: refused with an unknown code {answer.code[:40]!r}: "
                                  f"{answer.message}")
            raise AgentRefused(self.host, answer.code, answer.message)
        problem = answer_problem(answer)
        if problem:
            raise RemoteError(self.host, f"agent {op}: the host's answer is not valid ({problem}); refusing it "
                              "(a broken or compromised host?)")
        return answer


class SSHAgent(Agent):
    """The agent run as `python3 -c <bootstrap>` over one SSH exec per request."""

    def __init__(self, connection, host: Host, actor: Optional[protocol.Actor] = None):
        self.connection = connection
        self.host_config = host
        self.host = host.name
        self.actor = actor  # who acts, from where: for the host's audit trail

    def call(self, request: Any, progress: Progress = None, output: Progress = None,
             stop: Optional[Callable[[], bool]] = None) -> Any:
        op = protocol.OP_OF_REQUEST[type(request)]
        try:
            follow = isinstance(request, LogsRequest) and request.follow
            raw = execute(self.connection, self.host_config, _agent_command(self.host_config),
                          protocol.encode_request(self.host, request, self.actor), step=f"agent {op}",
                          progress=progress,
                          output=output, max_streamed=None if follow else MAX_STREAMED, stop=stop)
        except RemoteCommandError as error:
            problem = _setup_problem(self.host_config, self.connection.user, error)
            if problem:
                raise HostSetupError(self.host, error.step, error.status, problem) from None
            raise
        return self._answer(request, raw)


def _setup_problem(host: Host, user: str, error: RemoteCommandError) -> Optional[str]:
    """What the host lacks to run the agent, said as what to do, or None."""
    said = str(error)
    # 127: the shell found no such program; sudo says "command not found" and exits 1
    if error.status == 127 or (host.sudo and f"sudo: {host.python}: command not found" in said):
        return f"{host.python} is not on {host.address}: install python3 there, or set python in [host:{host.name}]"
    if host.sudo and ("a password is required" in said or "not in the sudoers" in said or "may not run sudo" in said):
        return (f"sudo = true, but {user} on {host.address} may not run sudo without a password: give it a "
                "NOPASSWD rule in /etc/sudoers.d/, or log in as root")
    return None


class LocalAgent(Agent):
    """The same agent code, run in this process against `root` (a Layout) and a `systemd` boundary
    (tests pass a fake that answers from recorded outputs). Requests and answers still go
    through JSON, so the protocol is exercised exactly as over SSH."""

    def __init__(self, host: str, root: str, systemd: Any, actor: Optional[protocol.Actor] = None):
        self.host = host
        self.layout = paths.Layout(root)
        self.systemd = systemd
        self.actor = actor

    def call(self, request: Any, progress: Progress = None, output: Progress = None,
             stop: Optional[Callable[[], bool]] = None) -> Any:
        from .host import agent

        raw = agent.handle(protocol.encode_request(self.host, request, self.actor), layout=self.layout,
                           systemd=self.systemd, require_root=False, emit=output or (lambda line: True),
                           progress_to=progress or (lambda text: None))
        return self._answer(request, raw)


def ssh_agent(host: Host, actor: Optional[protocol.Actor] = None) -> SSHAgent:
    return SSHAgent(connect(host), host, actor)


def read_state(agent: Agent, contents: bool = False) -> RemoteState:
    answer = agent.call(StateRequest(contents=contents))
    return RemoteState(files=dict(answer.files),
                       contents={p: base64.b64decode(c) for p, c in answer.contents.items()},
                       paused=frozenset(answer.paused), owner=answer.owner, held=answer.held,
                       epochs=dict(answer.epochs))


def holds(agent: Agent, files_digest: str) -> tuple[bool, RemoteState]:
    """Whether the host holds exactly the files of `files_digest` (protocol.files_digest), and its
    state but the files and the epochs (neither is sent)."""
    answer = agent.call(StateRequest(expect=files_digest))
    return bool(answer.matched), RemoteState(paused=frozenset(answer.paused), owner=answer.owner, held=answer.held)


def apply(agent: Agent, plan: Plan, state: RemoteState, progress: Progress = None,
          stamps: Optional[dict] = None, takeover: Optional[Takeover] = None) -> ApplyAnswer:
    """Stage, verify, then switch; `state` guards against a host that changed meanwhile.
    `stamps`: timer -> last trigger (unix time) to give added timers (see `deployer move`)."""
    writes = tuple(FileWrite(path=f.path, content=base64.b64encode(f.content).decode(), mode=f.mode,
                             start=f.start) for f in plan.add + plan.change)
    request = ApplyRequest(write=writes, remove=tuple(plan.remove), expect=dict(state.files),
                           stamps=dict(stamps or {}), takeover=takeover)
    return agent.call(request, progress=progress)


def pause(agent: Agent, job: str) -> str:
    return agent.call(PauseRequest(job=job)).timer


def resume(agent: Agent, job: str) -> str:
    return agent.call(ResumeRequest(job=job)).timer


def handoff(agent: Agent, jobs: list[str]) -> HandoffAnswer:
    return agent.call(HandoffRequest(jobs=tuple(jobs)))


def status(agent: Agent) -> StatusAnswer:
    return agent.call(StatusRequest())


def alert_test(agent: Agent, channel: str) -> protocol.AlertTestAnswer:
    """Send a test message through `channel`'s alert unit on the host; what the channel answered."""
    return agent.call(protocol.AlertTestRequest(channel=channel))


def release(agent: Agent) -> ReleaseAnswer:
    return agent.call(ReleaseRequest())


def run(agent: Agent, job: str, output: Progress = None, slot: Optional[int] = None,
        force: bool = False, params: tuple = (), stop: Optional[Callable[[], bool]] = None) -> RunAnswer:
    """Run `job` now; `output` gets its journal lines as they happen, until `stop()` (then
    Stopped: the run goes on). `slot` (unix seconds): backfill that slot, under its
    Idempotency-Key, instead of a manual key of its own. `params`: (name, value) pairs for the
    job's ${{name}} placeholders. A held host refuses (AgentRefused, code `held`) unless `force`."""
    return agent.call(RunRequest(job=job, slot=slot, force=force, params=tuple(params)), output=output, stop=stop)


def stop(agent: Agent, job: str) -> StopAnswer:
    """Stop the run of `job` in progress on the agent's host (its trigger records it as an
    interrupted, failed run); StopAnswer.stopped is False when none was running."""
    return agent.call(StopRequest(job=job))


def logs(agent: Agent, job: str, lines: Optional[int], since: Optional[float] = None, follow: bool = False,
         output: Progress = None, stop: Optional[Callable[[], bool]] = None) -> str:
    """The job's journal; with `follow`, its lines go to `output` as they come, until `stop()`
    (then Stopped)."""
    return agent.call(LogsRequest(job=job, lines=lines, since=since, follow=follow), output=output,
                      stop=stop).output


def history(agent: Agent, job: str, since: float) -> HistoryAnswer:
    return agent.call(HistoryRequest(job=job, since=since))


def audit(agent: Agent, since: float) -> protocol.AuditAnswer:
    """The host's audit trail since `since` (unix seconds), oldest first."""
    return agent.call(protocol.AuditRequest(since=since))
