"""Run untrusted, model-written Python against unit tests; the reward is the fraction passed.

``run_tests(code, tests)`` starts a fresh interpreter (``python -I -S -B``) that executes
``code``, then ``setup``, then every test snippet (usually an ``assert``) in one namespace.
Each test is counted on its own: a failing, raising or hanging test (per-test alarm,
``SandboxLimits.test_seconds``) does not stop the next one. Nothing the candidate does makes
``run_tests`` raise; the outcome is a :class:`SandboxResult` with a ``status``.

Process layout::

    trainer --Popen--> launcher (this file run as a script; trusted, never runs candidate code)
                          \\--fork--> harness (limits, dropped uid; runs candidate + tests)

The launcher gets a clean environment, reads its job from stdin (an unlinked temp file),
sets up isolation and forks the harness. It stays outside the candidate's reach and, when
the harness ends or the trainer sends SIGTERM (wall-time limit), kills everything the
candidate started before reporting the exit status. If the trainer dies, PR_SET_PDEATHSIG
takes the launcher and the harness down with it.

Isolation (``run_tests(isolation=...)``, the ``code_tests`` reward's ``isolation`` option):

* ``"namespace"`` (default) -- new mount, network and PID namespaces (plus a user namespace
  when not root). Network: only a loopback that is down, so no socket reaches anything. PID:
  the harness is PID 1 of its namespace; when it exits the kernel kills every process it
  left (fork bombs, ``setsid`` escapees), and it cannot see or signal the trainer. Files: a
  new, empty root (tmpfs, read-only, entered with pivot_root; the host's tree is detached)
  that shows only the interpreter's prefixes (base install and venv), the shared-library
  directories (/lib*, /usr/lib*), /etc/ld.so.cache and /etc/localtime, all read-only and
  nosuid; /dev/null, zero, full, random, urandom; a /proc of the sandbox's own processes;
  ``/tmp`` (the working directory, also ``$HOME`` and ``$TMPDIR``) and ``/dev/shm``, a private
  size-capped tmpfs that vanishes with the namespace. No home directory, no checkout of the
  trainer, no other users' data is there, so this holds also when the trainer is not root
  and the code keeps the user's uid. Capabilities are dropped. Needs Linux >= 5.12
  (mount_setattr); no external tools, the system calls go through ctypes. Where the host
  cannot set this up (Docker's default seccomp profile, hosts that restrict unprivileged user
  namespaces), ``run_tests`` raises ConfigError naming the ``isolation`` option: model-written
  code never silently runs with less.
* ``"basic"`` -- explicit opt-in (logged once as a warning): a temporary working directory,
  and a Python audit hook that refuses sockets, ``exec``/``subprocess``/``ctypes``, signals to
  other processes, writes outside the working directory and reads of other processes'
  ``/proc`` entries (without root, also ``fork``: nothing could find the children later).
  Audit hooks are not a security boundary (C-level escapes exist) and the whole filesystem
  stays readable; only the uid drop (trainer running as root) keeps the user's files out of
  reach. Without root the code runs as the user and can read whatever the user can.

:func:`isolation_mode` says which mode this host can provide (probed once per process).

In both modes: rlimits on CPU time, address space, processes, file size, open files and
core dumps; ``PR_SET_NO_NEW_PRIVS``; a new session/process group; stdin is /dev/null; only
PATH, HOME, TMPDIR, LANG and two PYTHON* variables are set. When the trainer runs as root,
the harness also switches to a random unprivileged uid/gid from ``SANDBOX_UIDS`` (no
passwd entry needed): it cannot signal the trainer, cannot write the trainer's files, and
RLIMIT_NPROC (counted per uid) caps only this sandbox's processes. In basic mode the
launcher kills every process of that uid at the end (``kill(-1)`` as that uid).

Result channel and forging: the harness writes ``test <i> <outcome> <nonce_i>`` lines to an
unlinked temp file passed as an extra file descriptor. The parent drew a random nonce for
each test (and for the ``code`` and ``done`` lines) and counts only the first line per test
whose nonce matches. Printing fake results to stdout/stderr, writing guessed lines to every
descriptor, or reading the result file and replaying its lines therefore earns nothing:
test i's nonce appears in the file only once test i has been reported. The candidate also
gets its own copy of the ``builtins`` module, so patching ``builtins.exec`` (or ``compile``,
``enumerate``, ...) cannot turn the harness's test loop into "all passed". The limit: candidate
and tests share one interpreter, so deliberately adversarial code can still win (read the
nonces from the harness's frames, or return objects whose ``__eq__`` is always true).
Catching that needs tests that compare serialised values in another process.

Known limits: memory is capped per process (RLIMIT_AS), not per sandbox (no cgroups), so
``max_processes * memory_mb`` is the worst case; in namespace mode the code sees the venv's
files (site-packages) and the system's library directories, read-only; a prefix that lies
under /tmp is hidden by the private /tmp; in basic mode without root the candidate runs as
the trainer's uid and can read what the trainer can read; in basic mode as root, if the
interpreter lives where other users cannot read it, only the pre-imported
``_COMMON_MODULES`` are importable. RLIMIT_NPROC also counts threads. Linux only.
"""
from __future__ import annotations

import builtins
import ctypes
import functools
import json
import logging
import math
import os
import resource
import secrets
import shutil
import signal
import stat
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass

# Random per-run uids/gids come from here when the trainer runs as root (below 2**31, in a
# range that neither distributions nor systemd hand out).
SANDBOX_UIDS = range(0x70000000, 0x7FFF0000)
TAIL_BYTES = 2048
logger = logging.getLogger(__name__)
_SETUP_FAILED = 125  # launcher exit code: isolation could not be set up

# Linux constants (<sched.h>, <sys/mount.h>, <linux/prctl.h>, <linux/mount.h>).
CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x20000, 0x10000000, 0x20000000, 0x40000000
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_BIND, MS_REC, MS_PRIVATE = 2, 4, 8, 4096, 16384, 1 << 18
MOUNT_ATTR_RDONLY, MOUNT_ATTR_NOSUID, AT_FDCWD, AT_RECURSIVE, SYS_MOUNT_SETATTR = 1, 2, -100, 0x8000, 442
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS = 1, 38
MNT_DETACH = 2


@dataclass(frozen=True)
class SandboxLimits:
    cpu_seconds: float = 5  # RLIMIT_CPU per process (SIGXCPU, then SIGKILL a second later)
    wall_seconds: float = 10  # whole run, launcher start to exit
    memory_mb: int = 512  # RLIMIT_AS per process
    max_processes: int = 32  # RLIMIT_NPROC (processes and threads of the sandbox uid)
    max_file_mb: int = 16  # RLIMIT_FSIZE; also bounds captured stdout/stderr
    max_open_files: int = 64  # RLIMIT_NOFILE
    test_seconds: float = 2.0  # per-test alarm (0: none); the wall limit still applies
    tmpfs_mb: int = 64  # size of the private /tmp in namespace mode


@dataclass
class SandboxResult:
    passed: int
    total: int
    status: str  # ok | error | timeout | memory | killed (see run_tests)
    stdout: str = ""  # last TAIL_BYTES of the candidate's stdout
    stderr: str = ""  # last TAIL_BYTES of stderr (tracebacks, one line per failed test)
    duration_s: float = 0.0

    @property
    def fraction(self) -> float:
        return self.passed / self.total if self.total else 0.0


def run_tests(code: str, tests: list[str], limits: SandboxLimits = SandboxLimits(),
              setup: str = "", isolation: str = "namespace") -> SandboxResult:
    """Run ``code``, then ``setup``, then each test in a sandbox and count the tests passed.

    ``isolation``: ``"namespace"`` (default; raises ConfigError where this host cannot set it
    up) or ``"basic"`` (explicit opt-in to the weaker mode, see the module docstring).
    ``status``: ``ok`` (every test ran to an outcome), ``error`` (code or setup did not
    compile or raised: no test counts; or the sandbox could not be started), ``timeout``
    (wall or CPU limit, or a test hit ``test_seconds``), ``memory`` (MemoryError under the
    address-space limit), ``killed`` (the harness died before finishing, e.g. ``os._exit``
    or a signal). Tests that passed before a timeout or a kill still count.
    """
    if isinstance(tests, str) or not all(isinstance(t, str) for t in tests):
        raise TypeError("tests must be a list of str")
    values = asdict(limits)
    if values.pop("test_seconds") < 0 or min(values.values()) <= 0:  # 0 would mean "unlimited"
        raise ValueError(f"sandbox limits must be positive: {limits}")
    mode = check_isolation(isolation)
    try:
        return _run(code, list(tests), limits, setup, mode)
    except OSError as exc:  # the host could not start a process, make a temp file, ...
        return SandboxResult(0, len(tests), "error", "", f"sandbox failed to start: {exc}")


_ANNOUNCED: set = set()  # modes already logged by this process


def check_isolation(isolation: str) -> str:
    """The mode to run in for the ``isolation`` option; logs it once per process.

    Model-written code never silently runs without namespaces: ``"namespace"`` where they
    cannot be set up is a ConfigError that names the opt-in, ``isolation: basic``.
    """
    from workbench.registry import ConfigError  # not at module level: the launcher runs with -I

    if isolation not in ("namespace", "basic"):
        raise ConfigError(f"sandbox isolation must be 'namespace' or 'basic', got {isolation!r}")
    if isolation == "namespace" and isolation_mode() != "namespace":
        raise ConfigError(
            f"sandbox isolation 'namespace' is not available on this host ({_probe()[1] or 'probe failed'}); "
            "set 'isolation: basic' in the code_tests reward options to run model-written code with only "
            "an audit hook and rlimits, which is not a security boundary")
    if isolation not in _ANNOUNCED:
        _ANNOUNCED.add(isolation)
        if isolation == "basic":
            logger.warning("sandbox isolation: basic (opted in): model-written code runs with an audit hook and "
                           "rlimits only, which is not a security boundary%s",
                           "" if os.geteuid() == 0 else ", as your own user, able to read your files")
        else:
            logger.info("sandbox isolation: namespace")
    return isolation


def isolation_mode() -> str:
    """``"namespace"`` if a trivial job runs with full namespace isolation here, else ``"basic"``."""
    return _probe()[0]


@functools.lru_cache(maxsize=None)
def _probe() -> tuple:
    """(mode, why namespaces failed): runs a trivial job once per process (~0.1 s).

    Probing with the real launcher tests exactly the code path that later runs: unshare, the
    new root, tmpfs, /proc and the uid switch.
    """
    if not sys.platform.startswith("linux"):
        return "basic", f"namespaces need Linux, this is {sys.platform}"
    try:
        probe = _run("x = 1", ["assert x == 1"], SandboxLimits(), "", "namespace")
    except OSError as exc:
        return "basic", str(exc)
    if probe.status == "ok" and probe.passed == 1:
        return "namespace", ""
    reason = (probe.stderr.strip().splitlines() or [f"probe status {probe.status}"])[-1]
    return "basic", reason[:200]


# --------------------------------------------------------------------------- trainer side


def _run(code: str, tests: list[str], limits: SandboxLimits, setup: str, mode: str) -> SandboxResult:
    import subprocess  # here, not at module level: the harness must not have _posixsubprocess loaded

    uid = SANDBOX_UIDS.start + secrets.randbelow(len(SANDBOX_UIDS)) if os.geteuid() == 0 else None
    workdir = "/tmp" if mode == "namespace" else tempfile.mkdtemp(prefix="wb-sandbox-")
    nonces = {"code": secrets.token_hex(8), "done": secrets.token_hex(8),
              "tests": [secrets.token_hex(8) for _ in tests]}
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir,
           "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1", "PYTHONNOUSERSITE": "1"}
    start = time.monotonic()
    try:
        if mode == "basic" and uid is not None:
            os.chown(workdir, uid, uid)
        with tempfile.TemporaryFile() as job, tempfile.TemporaryFile() as out, \
                tempfile.TemporaryFile() as err, tempfile.TemporaryFile() as res:
            job.write(json.dumps({
                "code": code, "setup": setup, "tests": tests, "limits": asdict(limits),
                "mode": mode, "uid": uid, "workdir": workdir, "nonces": nonces,
                "result_fd": res.fileno(), "trainer_pid": os.getpid()}).encode())
            job.seek(0)
            proc = subprocess.Popen(
                [sys.executable, "-I", "-S", "-B", os.path.abspath(__file__)],
                stdin=job, stdout=out, stderr=err, pass_fds=(res.fileno(),), env=env, cwd="/",
                start_new_session=True)
            try:
                finished = _wait(proc, limits.wall_seconds)
            except BaseException:  # e.g. KeyboardInterrupt in the trainer: leave nothing behind
                _stop(proc)
                raise
            rc, timed_out = (proc.wait(), False) if finished else (_stop(proc), True)
            duration = time.monotonic() - start
            res.seek(0)
            lines = res.read().decode("utf-8", "replace").splitlines()
            stdout, stderr = _tail(out), _tail(err)
    finally:
        if mode == "basic":
            shutil.rmtree(workdir, onerror=_force_remove)
    return _summarise(lines, nonces, len(tests), rc, timed_out, stdout, stderr, duration)


def _wait(proc, timeout: float) -> bool:
    """Wait for exit; a pidfd wakes us at once (Popen.wait(timeout) polls with sleeps)."""
    import select
    import subprocess

    try:
        pidfd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):
        try:
            proc.wait(timeout=timeout)
            return True
        except subprocess.TimeoutExpired:
            return False
    try:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        return bool(poller.poll(max(0, int(timeout * 1000))))
    finally:
        os.close(pidfd)


def _stop(proc) -> int:
    """Wall time is up: SIGTERM makes the launcher kill the sandbox; SIGKILL if it hangs."""
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=2)
    except Exception:
        os.killpg(proc.pid, signal.SIGKILL)  # launcher not reaped yet: its pgid is still ours
        return proc.wait()


def _summarise(lines, nonces, total, rc, timed_out, stdout, stderr, duration) -> SandboxResult:
    """Turn the harness's nonce-stamped lines and the launcher's exit code into a result."""
    code_outcome, outcomes, done = None, {}, False
    for words in (line.split() for line in lines):  # lines without the right nonce are ignored
        if words == ["done", nonces["done"]]:
            done = True
        elif len(words) == 3 and words[0] == "code" and words[2] == nonces["code"]:
            code_outcome = code_outcome or words[1]
        elif (len(words) == 4 and words[0] == "test" and words[1].isdigit() and int(words[1]) < total
              and words[3] == nonces["tests"][int(words[1])]):
            outcomes.setdefault(int(words[1]), words[2])  # first valid report per test wins
    passed = sum(1 for o in outcomes.values() if o == "pass")
    seen = set(outcomes.values())
    if timed_out or rc == 128 + signal.SIGXCPU:
        status = "timeout"
    elif code_outcome is None:  # never got through the candidate: setup failure, _exit, signal
        status = "killed" if rc < 0 or rc > 128 else "error"
    elif code_outcome != "pass":
        status = {"memory": "memory", "timeout": "timeout"}.get(code_outcome, "error")
    elif "memory" in seen:
        status = "memory"
    elif not done:
        status = "killed"
    elif "timeout" in seen:
        status = "timeout"
    else:
        status = "ok"
    return SandboxResult(passed, total, status, stdout, stderr, round(duration, 4))


def _tail(f) -> str:
    size = f.seek(0, os.SEEK_END)
    f.seek(max(0, size - TAIL_BYTES))
    return f.read().decode("utf-8", "replace")


def _force_remove(func, path, _exc_info):
    """rmtree helper: the candidate may have chmod-ed its directories to 000."""
    try:
        os.chmod(os.path.dirname(path), 0o700)
        if os.path.isdir(path) and not os.path.islink(path):
            os.chmod(path, 0o700)
            shutil.rmtree(path, ignore_errors=True)
        else:
            func(path)
    except OSError:
        pass


# --------------------------------------------------------------------------- launcher side

_libc = ctypes.CDLL(None, use_errno=True)


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(source, target, fstype=None, flags=0, data=None) -> None:
    enc = lambda s: None if s is None else os.fsencode(s)  # noqa: E731
    _check(_libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)),
           f"mount {target}")


def _make_readonly(path: str, recursive: bool = True) -> None:
    """Read-only + nosuid in one call, with every mount below if ``recursive`` (mount_setattr,
    Linux >= 5.12)."""
    attr = (ctypes.c_uint64 * 4)(MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID, 0, 0, 0)
    ret = _libc.syscall(ctypes.c_long(SYS_MOUNT_SETATTR), ctypes.c_long(AT_FDCWD),
                        ctypes.c_char_p(os.fsencode(path)), ctypes.c_long(AT_RECURSIVE if recursive else 0),
                        ctypes.byref(attr), ctypes.c_long(ctypes.sizeof(attr)))
    _check(ret, f"mount_setattr {path}")


def _prctl(option: int, value: int) -> None:
    _check(_libc.prctl(option, ctypes.c_ulong(value), 0, 0, 0), f"prctl {option}")


def _first_hidden_dir(path: str):
    """The topmost directory on ``path`` that other users cannot traverse, or None."""
    current = "/"
    for part in path.strip("/").split("/"):
        current = os.path.join(current, part)
        if not os.stat(current).st_mode & stat.S_IXOTH:
            return current
    return None


def _root_contents() -> tuple:
    """(directories, files, symlinks) the sandbox's root shows, each read-only.

    Only what the interpreter needs: its prefixes (the venv and the base install, at the
    paths ``sys.path`` names), the shared-library directories and the loader cache. Nothing
    else -- no /home, no /root, no trainer checkout, no /etc/passwd -- exists in there.
    """
    dirs, links = [], {}
    for path in ("/lib", "/lib64", "/lib32", "/libx32", "/usr/lib", "/usr/lib64", "/usr/lib32", "/usr/libx32"):
        if os.path.islink(path):  # merged /usr: /lib -> usr/lib
            links[path] = os.readlink(path)
        elif os.path.isdir(path):
            dirs.append(path)
    venv = os.path.dirname(os.path.dirname(os.path.abspath(sys.executable)))  # sys.prefix is not it under -S
    dirs += [os.path.abspath(p) for p in (sys.base_prefix, sys.prefix, os.path.dirname(os.__file__))]
    dirs += [venv] if os.path.isfile(os.path.join(venv, "pyvenv.cfg")) else []
    kept = []
    for path in sorted(set(dirs)):  # a directory inside one already shown comes with it
        if path != "/" and not any(path.startswith(k + "/") for k in kept):
            kept.append(path)
    files = [f for f in ("/etc/ld.so.cache", "/etc/localtime") if os.path.exists(f)]
    return kept, files, links


_DEVICES = ("null", "zero", "full", "random", "urandom")
_OLD_ROOT = "/.old-root"  # where pivot_root parks the host's tree until the harness detaches it
_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "ppc64le": 203, "ppc64": 203, "s390x": 217}


def _enter_namespaces(job: dict) -> None:
    """Move the launcher into new mount/net/pid namespaces under a new, minimal root.

    The root is a fresh tmpfs holding read-only binds of :func:`_root_contents`, a few
    device nodes, an empty /proc (the harness mounts its own) and the private /tmp. The
    host's tree stays reachable at ``_OLD_ROOT`` only until the harness has mounted /proc
    (a user namespace may mount proc only while a full one is visible), then it is detached.
    """
    import platform

    rootless = os.geteuid() != 0
    uid, gid = os.getuid(), os.getgid()
    dirs, files, links = _root_contents()
    if platform.machine() not in _PIVOT_ROOT:
        raise OSError(0, f"pivot_root: unknown system call number on {platform.machine()}")
    _check(_libc.unshare(CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID | (CLONE_NEWUSER if rootless else 0)),
           "unshare")
    if rootless:  # map only our own uid/gid; enough for mounts inside the new user namespace
        for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
            with open(f"/proc/self/{name}", "w") as f:
                f.write(text)
    _mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing we mount propagates to the host
    # Handles (in this namespace) before the staging tmpfs covers /tmp, where a prefix might live.
    sources = {p: os.open(os.path.realpath(p), os.O_PATH) for p in dirs + files
               + [f"/dev/{d}" for d in _DEVICES if os.path.exists(f"/dev/{d}")]}
    new = "/tmp"  # staging mount point (only in our namespace)
    _mount("tmpfs", new, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=0755")
    for path, fd in sources.items():
        target = new + path
        if os.path.isdir(f"/proc/self/fd/{fd}"):
            os.makedirs(target, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            os.close(os.open(target, os.O_CREAT | os.O_WRONLY, 0o644))
        _mount(f"/proc/self/fd/{fd}", target, None, MS_BIND | MS_REC)  # MS_REC: user namespaces need it
        os.close(fd)
        if not path.startswith("/dev/"):  # writing to /dev/null must work
            _make_readonly(target)
    for path, target in links.items():
        os.symlink(target, new + path)
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                         ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):
        os.symlink(target, f"{new}/dev/{name}")
    for path in ("/proc", "/tmp", "/dev/shm", _OLD_ROOT):
        os.makedirs(new + path, exist_ok=True)
    owner = job["uid"] if job["uid"] is not None else uid
    _mount("tmpfs", new + "/tmp", "tmpfs", MS_NOSUID | MS_NODEV,
           f"size={int(job['limits']['tmpfs_mb'])}m,mode=0700,uid={owner},gid={owner}")
    _mount(new + "/tmp", new + "/dev/shm", None, MS_BIND)
    _check(_libc.syscall(ctypes.c_long(_PIVOT_ROOT[platform.machine()]), ctypes.c_char_p(new.encode()),
                         ctypes.c_char_p((new + _OLD_ROOT).encode())), "pivot_root")
    os.chdir("/")


def _finish_root() -> None:
    """Harness, after mounting /proc: detach the host's tree and make / read-only."""
    _check(_libc.umount2(ctypes.c_char_p(_OLD_ROOT.encode()), ctypes.c_int(MNT_DETACH)), "umount old root")
    os.rmdir(_OLD_ROOT)
    _make_readonly("/", recursive=False)


def _launcher_main() -> None:
    job = json.load(sys.stdin)
    os.umask(0o022)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)  # the job file (with the nonces) is gone from our fd table
    os.close(devnull)
    _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)  # trainer gone -> clean up (SIGTERM handler)
    if os.getppid() != job["trainer_pid"]:
        os._exit(_SETUP_FAILED)
    try:
        if job["mode"] == "namespace":
            _enter_namespaces(job)
    except OSError as exc:
        print(f"sandbox: namespace setup failed: {exc}", file=sys.stderr, flush=True)
        os._exit(_SETUP_FAILED)
    # SIGTERM (wall time up, or trainer gone) is blocked across fork so the handler always
    # knows the child's pid; the harness resets and unblocks it.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    child = os.fork()
    if child == 0:
        _harness_main(job)  # never returns
    signal.signal(signal.SIGTERM, lambda *_: _finish(child, job))
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    os.close(job["result_fd"])
    os.waitid(os.P_PID, child, os.WEXITED | os.WNOWAIT)  # leave the zombie: pid/pgid stay ours
    _finish(child, job)


def _finish(child: int, job: dict) -> None:
    """Kill whatever the candidate started, reap the harness, exit with its status."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    for target in (lambda: os.killpg(child, signal.SIGKILL), lambda: os.kill(child, signal.SIGKILL)):
        try:
            target()
        except OSError:
            pass
    if job["mode"] == "basic" and job["uid"] is not None:
        _kill_uid(job["uid"])
    # (namespace mode: PID 1 of the namespace dying makes the kernel kill the rest)
    _, status, usage = os.wait4(child, 0)
    if os.WIFEXITED(status):
        os._exit(os.WEXITSTATUS(status))
    # A loop in C never runs the harness's SIGXCPU handler (and PID 1 ignores the default
    # action), so RLIMIT_CPU ends it with the hard limit's SIGKILL: report the CPU limit.
    if usage.ru_utime + usage.ru_stime >= job["limits"]["cpu_seconds"]:
        os._exit(128 + signal.SIGXCPU)
    os._exit(128 + os.WTERMSIG(status))


def _kill_uid(uid: int) -> None:
    """SIGKILL every process of ``uid``: a helper switches to it and calls kill(-1), until none."""
    for _ in range(20):
        helper = os.fork()
        if helper == 0:
            try:
                os.setuid(uid)
                os.kill(-1, signal.SIGKILL)  # all processes we may signal (our uid), not ourselves
                os._exit(0)
            except ProcessLookupError:
                os._exit(1)  # nothing left
            except BaseException:
                os._exit(2)
        _, status = os.waitpid(helper, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            return


# --------------------------------------------------------------------------- harness side

_COMMON_MODULES = ("array bisect collections copy dataclasses datetime decimal enum fractions "
                   "functools hashlib heapq io itertools json math operator random re socket statistics "
                   "string textwrap time typing unicodedata").split()


def _harness_main(job: dict) -> None:
    """Forked child: lock itself down, then run candidate and tests. Always ends in _exit."""
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
        os.setpgid(0, 0)  # own process group: kill(0, ...) cannot reach the launcher's group
        if job["mode"] == "namespace":  # we are PID 1: show only our namespace in /proc
            _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
            _finish_root()
        os.chdir(job["workdir"])
        os.closerange(3, job["result_fd"])
        os.closerange(job["result_fd"] + 1, 1 << 16)
        lim, mb = job["limits"], 1 << 20
        cpu = math.ceil(lim["cpu_seconds"])
        for res, value in ((resource.RLIMIT_CPU, (cpu, cpu + 1)),  # SIGXCPU, then SIGKILL
                           (resource.RLIMIT_AS, lim["memory_mb"] * mb),
                           (resource.RLIMIT_NPROC, lim["max_processes"]),
                           (resource.RLIMIT_FSIZE, lim["max_file_mb"] * mb),
                           (resource.RLIMIT_NOFILE, lim["max_open_files"]),
                           (resource.RLIMIT_CORE, 0)):
            resource.setrlimit(res, value if isinstance(value, tuple) else (int(value), int(value)))
        if job["uid"] is not None:
            if job["mode"] == "basic" and not _others_can_read(os.path.dirname(os.__file__)):
                for name in _COMMON_MODULES:  # the stdlib is unreadable after the switch
                    __import__(name)
            os.setgroups([])
            os.setgid(job["uid"])
            os.setuid(job["uid"])  # from root: also clears every capability
        _drop_capabilities()  # rootless namespace mode: the caps we hold in our user namespace
        _prctl(PR_SET_NO_NEW_PRIVS, 1)  # setuid binaries (sudo, su) cannot raise privileges
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # after setuid, which clears it
        # PID 1 ignores SIGXCPU's default action; a handler makes the soft CPU limit work.
        signal.signal(signal.SIGXCPU, lambda *_: os._exit(128 + signal.SIGXCPU))
        if job["mode"] == "basic":
            sys.addaudithook(_make_guard(job["workdir"], may_fork=job["uid"] is not None))
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(_SETUP_FAILED)
    _run_harness(job)


def _others_can_read(path: str) -> bool:
    return _first_hidden_dir(path) is None and bool(os.stat(path).st_mode & stat.S_IROTH)


class _TestTimeout(BaseException):
    """Raised by the per-test alarm; BaseException so ``except Exception`` does not eat it."""


def _run_harness(job: dict) -> None:
    nonces, fd, write = job["nonces"], job["result_fd"], os.write  # bound before candidate runs

    def report(*words) -> None:
        try:
            write(fd, (" ".join(str(w) for w in words) + "\n").encode())
        except Exception:
            pass

    # The candidate gets a copy of the builtins module, so `builtins.exec = lambda *a: None`
    # changes its copy, not the exec/compile/enumerate this harness uses to run the tests.
    own_builtins = type(builtins)("builtins")
    own_builtins.__dict__.update(builtins.__dict__)
    sys.modules["builtins"] = own_builtins
    namespace = {"__name__": "__main__", "__builtins__": own_builtins}
    outcome = _execute(job["code"], "<candidate>", namespace, 0)
    if outcome == "pass" and job["setup"]:
        outcome = _execute(job["setup"], "<setup>", namespace, 0)
    report("code", outcome, nonces["code"])
    if outcome == "pass":
        for i, test in enumerate(job["tests"]):
            outcome = _execute(test, f"<test {i}>", namespace, job["limits"]["test_seconds"])
            report("test", i, outcome, nonces["tests"][i])
    report("done", nonces["done"])
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            stream.flush()
        except BaseException:
            pass
    os._exit(0)  # no atexit handlers, no waiting for the candidate's threads


def _execute(source: str, filename: str, namespace: dict, seconds: float) -> str:
    """exec one snippet; pass | fail (AssertionError) | error | memory | timeout."""
    def on_alarm(_signum, _frame):
        raise _TestTimeout

    try:
        try:
            signal.signal(signal.SIGALRM, on_alarm)
            signal.setitimer(signal.ITIMER_REAL, max(0.0, seconds))
            exec(compile(source, filename, "exec"), namespace)
            return "pass"
        finally:  # an alarm landing here is still caught below
            signal.setitimer(signal.ITIMER_REAL, 0)
    except BaseException as exc:
        outcome = ("fail" if isinstance(exc, AssertionError) else "memory" if isinstance(exc, MemoryError)
                   else "timeout" if isinstance(exc, _TestTimeout) else "error")
        try:
            if filename in ("<candidate>", "<setup>"):
                traceback.print_exception(exc)
            else:
                print(f"{filename}: {outcome}: {type(exc).__name__}: {exc}"[:300], file=sys.stderr)
        except BaseException:
            pass
        return outcome


def _drop_capabilities() -> None:
    """capset(2) with empty sets (header version 3 = 0x20080522, pid 0 = this thread)."""
    _check(_libc.capset((ctypes.c_uint32 * 2)(0x20080522, 0), (ctypes.c_uint32 * 6)()), "capset")


def _make_guard(workdir: str, may_fork: bool):
    """Audit hook for basic mode: refuse what namespaces would otherwise prevent.

    Without a uid of its own (``may_fork`` False) nothing could find the processes the
    candidate forks once they leave the process group, so forking is refused too.
    """
    root = os.path.realpath(workdir)
    denied = {"socket.__new__", "os.system", "os.exec", "os.posix_spawn", "os.forkpty",
              "subprocess.Popen", "ctypes.dlopen", "ctypes.dlsym", "ctypes.call_function",
              "ctypes.cdata", "os.setxattr", "os.removexattr"} | (set() if may_fork else {"os.fork"})
    path_events = {"os.rename": 2, "os.remove": 1, "os.rmdir": 1, "os.mkdir": 1, "os.symlink": 2,
                   "os.link": 2, "os.chmod": 1, "os.chown": 1, "os.truncate": 1, "os.utime": 1}
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    realpath, getpid, getpgid, fsdecode = os.path.realpath, os.getpid, os.getpgid, os.fsdecode

    def inside(path) -> bool:
        if isinstance(path, int):
            return True  # an fd the process already holds
        real = realpath(fsdecode(path))
        return real == root or real.startswith(root + "/")

    def guard(event: str, args: tuple) -> None:
        if event in denied:
            raise PermissionError(f"sandbox: {event} is not allowed")
        if event == "import" and str(args[0]).split(".")[0] in ("_posixsubprocess", "ctypes", "_ctypes"):
            raise PermissionError(f"sandbox: import {args[0]} is not allowed")
        if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
            if args[2] & write_flags and not inside(args[0]):
                raise PermissionError(f"sandbox: writing {args[0]!r} is not allowed")
            parts = realpath(fsdecode(args[0])).split("/")
            if len(parts) > 2 and parts[1] == "proc" and parts[2].isdigit() and int(parts[2]) != getpid():
                raise PermissionError("sandbox: other processes' /proc entries are off limits")
        if event in path_events and not all(inside(a) for a in args[:path_events[event]]):
            raise PermissionError(f"sandbox: {event} outside the working directory")
        if event == "os.kill" and args[0] != getpid() or event == "os.killpg" and args[0] != getpgid(0):
            raise PermissionError("sandbox: signals to other processes are not allowed")

    return guard


if __name__ == "__main__":
    _launcher_main()
