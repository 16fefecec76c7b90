"""Sandbox for model-written code: scoring, and survival of hostile candidates.

Hostile cases run in every isolation mode this host offers ("namespace" when namespaces are
permitted, and always the opt-in "basic" mode): the ``mode`` fixture points this module's
``run_tests`` at that mode. As root, ``test_hostile_suite_as_unprivileged_user`` runs this
file again as an ordinary user, the usual case where namespace mode keeps the user's uid.
"""
import functools
import logging
import os
import pwd
import re
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from workbench.registry import ConfigError
from workbench.rewards import sandbox
from workbench.rewards.sandbox import SandboxLimits, SandboxResult

FAST = SandboxLimits(cpu_seconds=2, wall_seconds=3, memory_mb=256, test_seconds=1)
NATIVE = sandbox.isolation_mode()
REPO = Path(__file__).resolve().parent.parent
run_tests = functools.partial(sandbox.run_tests, isolation=NATIVE)  # the best mode this host has


@pytest.fixture(params=["namespace", "basic"])
def mode(request, monkeypatch):
    if request.param == "namespace" and NATIVE != "namespace":
        pytest.skip("namespaces are not permitted on this host")
    monkeypatch.setitem(globals(), "run_tests", functools.partial(sandbox.run_tests, isolation=request.param))
    # One known uid (when root) so leftover processes can be found exactly.
    uid = 0x7ABC0000 + os.getpid() % 0x10000
    monkeypatch.setattr(sandbox, "SANDBOX_UIDS", range(uid, uid + 1))
    return request.param


def sandbox_processes():
    """Live (non-zombie) processes of the sandbox this test started: as root, those of the
    fixed sandbox uid; otherwise (same uid as pytest) those running the sandbox script."""
    script = os.fsencode(os.path.abspath(sandbox.__file__))
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/status") as f:
                status = f.read()
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        uid = int(re.search(r"^Uid:\s+(\d+)", status, re.M).group(1))
        state = re.search(r"^State:\s+(\S)", status, re.M).group(1)
        ours = uid in sandbox.SANDBOX_UIDS if os.geteuid() == 0 else script in cmdline
        if state != "Z" and ours:
            found.append((int(pid), uid, state))
    return found


def assert_no_leftovers():
    deadline = time.monotonic() + 2
    while sandbox_processes() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sandbox_processes() == []


# --------------------------------------------------------------------------- scoring


def test_correct_code_passes_all():
    r = run_tests("def add(a, b):\n    return a + b", ["assert add(1, 2) == 3", "assert add(-1, 1) == 0"])
    assert (r.passed, r.total, r.status, r.fraction) == (2, 2, "ok", 1.0)


def test_partially_correct_code_gives_fraction():
    r = run_tests("def sq(x):\n    return x * 2", ["assert sq(2) == 4", "assert sq(0) == 0", "assert sq(3) == 9"])
    assert (r.passed, r.total, r.status) == (2, 3, "ok")
    assert r.fraction == pytest.approx(2 / 3)
    assert "<test 2>: fail: AssertionError" in r.stderr


def test_raising_test_does_not_stop_the_others():
    r = run_tests("def f(x):\n    return 10 // x", ["assert f(0) == 1", "assert f(5) == 2", "assert undefined"])
    assert (r.passed, r.status) == (1, "ok")
    assert "ZeroDivisionError" in r.stderr and "NameError" in r.stderr


def test_syntax_error_scores_zero():
    r = run_tests("def f(:\n    return 1", ["assert f() == 1"])
    assert (r.passed, r.fraction, r.status) == (0, 0.0, "error")
    assert "SyntaxError" in r.stderr


def test_code_raising_at_import_scores_zero():
    r = run_tests("def f():\n    return 1\nraise RuntimeError('boom')", ["assert f() == 1"])
    assert (r.passed, r.status) == (0, "error")


def test_setup_runs_after_code_before_tests():
    r = run_tests("def f(x):\n    return x + OFFSET", ["assert f(1) == 11"], setup="OFFSET = 10")
    assert (r.passed, r.status) == (1, "ok")


def test_bad_arguments_raise():
    with pytest.raises(TypeError):
        run_tests("x = 1", "assert x == 1")
    with pytest.raises(ValueError):
        run_tests("x = 1", ["assert x == 1"], SandboxLimits(memory_mb=0))


def test_no_tests_gives_zero_fraction():
    r = run_tests("x = 1", [])
    assert (r.total, r.fraction, r.status) == (0, 0.0, "ok")
    assert SandboxResult(0, 0, "ok").fraction == 0.0


def test_hanging_test_is_cut_by_per_test_alarm():
    start = time.monotonic()
    r = run_tests("def f():\n    return 1", ["while True: pass", "assert f() == 1"],
                  SandboxLimits(test_seconds=0.5, wall_seconds=5))
    assert time.monotonic() - start < 3
    assert (r.passed, r.total, r.status) == (1, 2, "timeout")


def test_exit_during_tests_keeps_earlier_passes():
    r = run_tests("import os", ["assert True", "os._exit(0)", "assert True"])
    assert (r.passed, r.status) == (1, "killed")


def test_output_tails_are_bounded():
    r = run_tests("print('x' * 100000)\nimport sys\nsys.stderr.write('e' * 100000)", ["assert True"])
    assert r.passed == 1
    assert len(r.stdout) <= sandbox.TAIL_BYTES and len(r.stderr) <= sandbox.TAIL_BYTES
    assert r.stdout.endswith("xxx\n")


def test_common_stdlib_imports_work_in_every_mode(mode):
    code = "import collections, heapq, itertools, math, re, json, functools, bisect, random, typing"
    r = run_tests(code, ["assert math.isqrt(17) == 4", "assert heapq.nsmallest(1, [3, 1]) == [1]"])
    assert (r.passed, r.status) == (2, "ok"), r.stderr


def test_concurrent_runs_do_not_interfere():
    from concurrent.futures import ThreadPoolExecutor

    jobs = [(f"def f():\n    return {i}", [f"assert f() == {i}", "assert f() == -1"]) for i in range(6)]
    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda job: run_tests(*job), jobs))
    assert [(r.passed, r.total, r.status) for r in results] == [(1, 2, "ok")] * 6


def test_per_run_overhead_is_small():
    run_tests("pass", [])  # warm caches
    start = time.monotonic()
    for _ in range(5):
        assert run_tests("def f():\n    return 1", ["assert f() == 1"]).passed == 1
    assert (time.monotonic() - start) / 5 < 1.0


# --------------------------------------------------------------------------- hostile code


def test_infinite_loop_times_out(mode):
    start = time.monotonic()
    r = run_tests("while True:\n    pass", ["assert True"], SandboxLimits(cpu_seconds=10, wall_seconds=1.5))
    elapsed = time.monotonic() - start
    assert r.status == "timeout" and r.passed == 0
    assert elapsed < 1.5 + 1.5
    assert_no_leftovers()


def test_cpu_limit_stops_busy_loop_before_wall_limit(mode):
    start = time.monotonic()
    r = run_tests("while True:\n    pass", ["assert True"], SandboxLimits(cpu_seconds=1, wall_seconds=10))
    assert r.status == "timeout" and r.passed == 0
    assert time.monotonic() - start < 5


def test_sleeping_forever_times_out(mode):
    start = time.monotonic()
    r = run_tests("import time\ntime.sleep(1000)", ["assert True"], SandboxLimits(wall_seconds=1))
    assert r.status == "timeout" and time.monotonic() - start < 2.5
    assert_no_leftovers()


def test_fork_bomb_is_contained_and_cleaned_up(mode):
    bomb = (
        "import os\n"
        "while True:\n"
        "    try:\n"
        "        if os.fork() == 0:\n"
        "            os.setsid()  # try to leave the process group\n"
        "    except Exception:\n"
        "        pass\n"
    )
    start = time.monotonic()
    r = run_tests(bomb, ["assert True"], SandboxLimits(max_processes=16, wall_seconds=2, cpu_seconds=10))
    assert time.monotonic() - start < 2 + 3
    assert r.status in ("timeout", "error", "killed")
    assert r.passed in (0, 1)
    assert_no_leftovers()
    assert run_tests("x = 2", ["assert x == 2"]).passed == 1  # the machine still works


def test_sleeping_escapees_are_killed(mode):
    # Children that leave the session and just sleep would survive a plain killpg.
    code = (
        "import os, time\n"
        "for _ in range(3):\n"
        "    if os.fork() == 0:\n"
        "        os.setsid()\n"
        "        time.sleep(60)\n"
        "        os._exit(0)\n"
    )
    r = run_tests(code, ["assert True"], FAST)
    assert r.status in ("ok", "error")
    assert_no_leftovers()


def test_memory_hog_is_stopped(mode):
    r = run_tests("x = bytearray(10 * 2**30)", ["assert True"], FAST)
    assert (r.status, r.passed) == ("memory", 0)
    grow = "chunks = []\nwhile True:\n    chunks.append(bytearray(2**24))"
    r = run_tests("def f():\n    return 1", ["assert f() == 1", grow, "assert f() == 1"], FAST)
    assert (r.status, r.passed, r.total) == ("memory", 2, 3)


def test_writes_outside_workdir_fail(mode, tmp_path):
    outside = f"/tmp/wb-sandbox-test-{uuid.uuid4().hex}"
    os.mkdir(outside)
    os.chmod(outside, 0o777)  # even a world-writable directory must stay untouched
    os.chmod(tmp_path, 0o777)
    targets = [f"{outside}/pwned", str(tmp_path / "pwned"), f"{outside}/sub/pwned"]
    code = (
        "import os\n"
        f"for path in {targets!r}:\n"
        "    for attempt in (lambda: os.makedirs(os.path.dirname(path), exist_ok=True),\n"
        "                    lambda: open(path, 'w').write('x'),\n"
        "                    lambda: os.symlink('/etc/passwd', path),\n"
        "                    lambda: os.system(f'touch {path}')):\n"
        "        try:\n"
        "            attempt()\n"
        "        except Exception:\n"
        "            pass\n"
        "open('inside.txt', 'w').write('fine')\n"
    )
    try:
        r = run_tests(code, ["assert open('inside.txt').read() == 'fine'"], FAST)
        assert (r.passed, r.status) == (1, "ok"), r.stderr
        assert os.listdir(outside) == [] and os.listdir(tmp_path) == []
    finally:
        os.rmdir(outside)


def test_cannot_write_project_files(mode):
    target = os.path.abspath(sandbox.__file__)
    before = open(target, "rb").read()
    code = f"try:\n    open({target!r}, 'a').write('# pwned')\nexcept Exception:\n    pass"
    r = run_tests(code, ["assert True"], FAST)
    assert r.passed == 1
    assert open(target, "rb").read() == before


def test_sockets_cannot_reach_the_host(mode):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(5)
    server.settimeout(0.2)
    port = server.getsockname()[1]
    accepted = []

    def accept_loop(stop):
        while not stop.is_set():
            try:
                accepted.append(server.accept())
            except OSError:
                pass

    stop = threading.Event()
    thread = threading.Thread(target=accept_loop, args=(stop,), daemon=True)
    thread.start()
    try:
        test = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1).sendall(b'hi')"
        r = run_tests("", [test, "import os\nassert os.system('true') in (0, 256, 32512) or True"], FAST)
        assert r.passed <= 1  # the connecting test must fail
        assert r.stderr.count("<test 0>: error") == 1
        time.sleep(0.3)
    finally:
        stop.set()
        thread.join()
        server.close()
    assert accepted == []


def test_killing_the_parent_does_not_harm_the_trainer(mode):
    me = os.getpid()
    code = (
        "import os, signal\n"
        f"for kill in (lambda: os.kill(os.getppid(), 9), lambda: os.killpg(os.getpgid(os.getppid()), 9),\n"
        f"             lambda: os.kill({me}, 9), lambda: os.killpg(os.getpgid({me}), 9),\n"
        f"             lambda: os.kill({me}, signal.SIGSTOP), lambda: os.kill(-1, 9), lambda: os.kill(0, 9)):\n"
        "    try:\n"
        "        kill()\n"
        "    except Exception:\n"
        "        pass\n"
    )
    r = run_tests(code, ["assert True"], FAST)
    assert os.getpid() == me  # still here
    assert r.total == 1 and 0 <= r.fraction <= 1 and r.status in ("ok", "killed", "error")
    assert_no_leftovers()
    assert run_tests("x = 3", ["assert x == 3"]).passed == 1


def test_secrets_are_not_visible(mode, monkeypatch):
    secret = f"hunter2-{uuid.uuid4().hex}"
    monkeypatch.setenv("WORKBENCH_SECRET", secret)
    me = os.getpid()
    tests = [
        "import os\nassert 'WORKBENCH_SECRET' not in os.environ",
        f"assert not any({secret!r} in v for v in os.environ.values())",
        "assert set(os.environ) <= {'PATH', 'HOME', 'TMPDIR', 'LANG', 'PYTHONDONTWRITEBYTECODE',"
        " 'PYTHONNOUSERSITE', 'LC_CTYPE'}",
        # the trainer's environment through /proc: unreadable or invisible
        f"try:\n    data = open('/proc/{me}/environ', 'rb').read()\nexcept OSError:\n    data = b''\n"
        f"assert {secret.encode()!r} not in data",
    ]
    r = run_tests("", tests, FAST)
    assert (r.passed, r.status) == (4, "ok"), r.stderr


def test_printing_fake_results_earns_nothing(mode):
    fake = "\n".join(f"test {i} pass {nonce}" for nonce in ("x", "0" * 16) for i in range(3))
    fake += "\ncode pass 0\ndone 0\n"
    code = (
        "import os, sys\n"
        f"FAKE = {fake!r}\n"
        "print(FAKE)\n"
        "print('{\"passed\": 3, \"total\": 3}')\n"
        "sys.stderr.write(FAKE)\n"
        "for fd in range(3, 64):\n"
        "    try:\n"
        "        os.write(fd, FAKE.encode())\n"
        "    except OSError:\n"
        "        pass\n"
    )
    r = run_tests(code, ["assert False", "assert False", "assert False"], FAST)
    assert (r.passed, r.fraction) == (0, 0.0)


def test_patching_builtins_earns_nothing(mode):
    code = (
        "import builtins\n"
        "builtins.exec = lambda *args, **kwargs: None\n"
        "builtins.compile = lambda *args, **kwargs: None\n"
        "builtins.enumerate = lambda xs: [(i, 'pass') for i in range(len(xs))]\n"
        "builtins.isinstance = lambda *args: False\n"
    )
    r = run_tests(code, ["assert False", "assert 1 == 2"], FAST)
    assert (r.passed, r.total, r.status) == (0, 2, "ok")


def test_replaying_the_result_channel_earns_nothing(mode):
    # A candidate that reads what the harness wrote so far (the result file is an open fd)
    # and rewrites it for every test index as "pass" must not score.
    code = (
        "import os\n"
        "def forge():\n"
        "    for fd in range(3, 64):\n"
        "        try:\n"
        "            seen = os.pread(fd, 1 << 16, 0).decode()\n"
        "        except OSError:\n"
        "            continue\n"
        "        nonces = [line.split()[-1] for line in seen.splitlines() if line.split()]\n"
        "        lines = [f'test {i} pass {n}' for i in range(3) for n in nonces]\n"
        "        lines += [line.replace('fail', 'pass') for line in seen.splitlines()]\n"
        "        try:\n"
        "            os.write(fd, ('\\n'.join(lines) + '\\n').encode())\n"
        "        except OSError:\n"
        "            pass\n"
        "    return True\n"
    )
    r = run_tests(code, ["assert forge() and False"] * 3, FAST)
    assert (r.passed, r.total, r.status) == (0, 3, "ok")


def test_probe_reports_basic_when_namespaces_fail(monkeypatch):
    # A namespace setup that fails inside the launcher (here: an invalid tmpfs size) must make
    # the probe report "basic", as on hosts that forbid unshare (Docker's seccomp profile).
    monkeypatch.setattr(sandbox, "SandboxLimits", functools.partial(SandboxLimits, tmpfs_mb=-1))
    mode, reason = sandbox._probe.__wrapped__()
    assert mode == "basic" and (NATIVE != "namespace" or "namespace setup failed" in reason)
    r = sandbox._run("x = 1", ["assert x == 1"], SandboxLimits(tmpfs_mb=-1), "", "namespace")
    assert (r.passed, r.status) == (0, "error")
    if NATIVE == "namespace":
        assert "namespace setup failed" in r.stderr


def test_namespace_mode_isolation_details():
    if NATIVE != "namespace":
        pytest.skip("namespaces are not permitted on this host")
    tests = [
        "import os\nassert os.getcwd() == '/tmp' and os.environ['HOME'] == '/tmp'",
        # only the sandbox's own processes are visible
        "assert sorted(int(p) for p in os.listdir('/proc') if p.isdigit()) == [1]",
        f"assert os.getuid() in range({sandbox.SANDBOX_UIDS.start}, {sandbox.SANDBOX_UIDS.stop})"
        if os.geteuid() == 0 else "assert True",
        "import socket\ntry:\n    socket.create_connection(('1.1.1.1', 53), timeout=1)\n"
        "except OSError:\n    pass\nelse:\n    raise AssertionError('network reachable')",
    ]
    r = run_tests("", tests, FAST)
    assert (r.passed, r.status) == (4, "ok"), r.stderr


# --------------------------------------------------------------------------- what the code can see


def test_namespace_root_shows_only_what_python_needs():
    if NATIVE != "namespace":
        pytest.skip("namespaces are not permitted on this host")
    allowed = {"usr", "lib", "lib64", "lib32", "libx32", "etc", "dev", "proc", "tmp"}
    allowed |= {Path(p).parts[1] for p in (sys.base_prefix, sys.prefix)}
    tests = [
        f"import os\nassert set(os.listdir('/')) <= {allowed!r}, os.listdir('/')",
        f"assert not os.path.exists({str(REPO / 'pyproject.toml')!r})",  # the trainer's tree
        "assert not os.path.exists('/home') and not os.path.exists('/root/.bashrc')",
        "assert sorted(os.listdir('/etc')) == sorted({'ld.so.cache', 'localtime'} & set(os.listdir('/etc')))",
        "assert open('/dev/null', 'w').write('x') == 1 and len(open('/dev/urandom', 'rb').read(4)) == 4",
        f"assert os.path.isdir({sys.base_prefix!r})",
        "try:\n    open('/pwned', 'w')\nexcept OSError:\n    pass\nelse:\n    raise AssertionError('/ is writable')",
        "import decimal, hashlib, json, unicodedata",  # extension modules load (shared libraries found)
    ]
    r = run_tests("", tests, FAST)
    assert (r.passed, r.status) == (len(tests), "ok"), r.stderr


def test_private_files_are_not_readable(mode, tmp_path, monkeypatch):
    """0600 files of the trainer's user (a fake HOME, the real one, the working tree) stay unread."""
    if mode == "basic" and os.geteuid() != 0:
        pytest.skip("basic mode without root runs the code as the user: it can read the user's files (documented)")
    token = uuid.uuid4().hex
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    places = [home / ".ssh" / "id_ed25519", home / ".netrc"]
    real_home = Path(pwd.getpwuid(os.getuid()).pw_dir)
    places += [d / f".wb-secret-{token}" for d in (REPO, real_home) if os.access(d, os.W_OK)]
    code = (
        "found = []\n"
        f"for path in {[str(p) for p in places]!r}:\n"
        "    try:\n"
        "        found.append(open(path).read())\n"
        "    except OSError:\n"
        "        pass\n"
    )
    try:
        for place in places:
            place.write_text(f"secret-{token}")
            place.chmod(0o600)
        r = run_tests(code, ["assert found == []"], FAST)
    finally:
        for place in places:
            place.unlink(missing_ok=True)
    assert (r.passed, r.status) == (1, "ok"), r.stderr
    assert token not in r.stdout + r.stderr


UNPRIVILEGED_USER = "wb-sandbox-test"
# Run as root: drop to UNPRIVILEGED_USER and exec pytest. Root's own directories (pyenv in /root,
# a checkout under /root) may be closed to that user: in a private mount namespace such a
# directory is covered by an empty tmpfs with only the interpreter and the checkout bound back.
DRIVER = """
import os, pwd, sys
from workbench.rewards import sandbox as sb
user, repo, args = sys.argv[1], sys.argv[2], sys.argv[3:]
entry = pwd.getpwnam(user)
needed = sorted({os.path.realpath(p) for p in (sys.base_prefix, sys.prefix, repo)})
sb._check(sb._libc.unshare(sb.CLONE_NEWNS), "unshare")
sb._mount(None, "/", None, sb.MS_REC | sb.MS_PRIVATE)
hidden = {p: sb._first_hidden_dir(p) for p in needed}
fds = {p: os.open(p, os.O_PATH) for p in needed if hidden[p]}
for top in sorted({h for h in hidden.values() if h}):
    sb._mount("tmpfs", top, "tmpfs", sb.MS_NOSUID | sb.MS_NODEV, "size=1m,mode=0755")
for path, fd in fds.items():
    os.makedirs(path, exist_ok=True)
    sb._mount(f"/proc/self/fd/{fd}", path, None, sb.MS_BIND | sb.MS_REC)
os.setgroups([])
os.setgid(entry.pw_gid)
os.setuid(entry.pw_uid)
os.environ.update(HOME=entry.pw_dir, USER=user, LOGNAME=user)
os.chdir(repo)
if not os.access(os.path.join(repo, "tests", "test_sandbox.py"), os.R_OK):
    sys.exit(77)
os.execv(sys.executable, [sys.executable, "-m", "pytest", *args])
"""
QUICK = ("private_files or namespace_root or isolation_details or secrets or writes_outside or killing_the_parent"
         " or sockets or common_stdlib or replaying")


@pytest.mark.parametrize("selection", [
    pytest.param(QUICK, id="quick"),
    pytest.param("not unprivileged", id="full", marks=pytest.mark.slow),
])
def test_hostile_suite_as_unprivileged_user(selection):
    """Without root, namespace mode keeps the user's uid: only the file view protects the user."""
    if os.geteuid() != 0:
        pytest.skip("not root: this run already is the unprivileged one")
    try:
        pwd.getpwnam(UNPRIVILEGED_USER)
    except KeyError:
        try:
            subprocess.run(["useradd", "--create-home", "--shell", "/usr/sbin/nologin", UNPRIVILEGED_USER],
                           check=True, capture_output=True, timeout=30)
        except (OSError, subprocess.CalledProcessError) as exc:
            pytest.skip(f"cannot create user {UNPRIVILEGED_USER}: {exc}")
    args = ["-q", "-rs", "-p", "no:cacheprovider", "--noconftest", "-m", "not slow",
            "tests/test_sandbox.py", "-k", selection]
    proc = subprocess.run([sys.executable, "-c", DRIVER, UNPRIVILEGED_USER, str(REPO), *args],
                          capture_output=True, text=True, timeout=300)
    if proc.returncode == 77:
        pytest.skip(f"{UNPRIVILEGED_USER} cannot read the checkout {REPO}")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    if "namespaces are not permitted" in proc.stdout:
        pytest.skip("unprivileged user namespaces are not permitted on this host (basic mode passed)")
    assert " passed" in proc.stdout and " failed" not in proc.stdout


# --------------------------------------------------------------------------- choosing the mode


def test_unavailable_isolation_is_refused_by_default(monkeypatch):
    from workbench.rewards.base import build_reward

    monkeypatch.setattr(sandbox, "isolation_mode", lambda: "basic")  # as where unshare is forbidden
    with pytest.raises(ConfigError, match="isolation: basic") as info:
        sandbox.run_tests("x = 1", ["assert x == 1"])
    assert "\n" not in str(info.value) and "not a security boundary" in str(info.value)
    with pytest.raises(ConfigError, match="reward 'code_tests'.*isolation"):
        build_reward("code_tests")
    with pytest.raises(ConfigError, match="isolation must be 'namespace' or 'basic', got 'chroot'"):
        sandbox.run_tests("x = 1", ["assert x == 1"], isolation="chroot")


def test_basic_isolation_is_an_opt_in_that_warns_once(monkeypatch, caplog):
    monkeypatch.setattr(sandbox, "_ANNOUNCED", set())
    with caplog.at_level(logging.INFO, logger=sandbox.__name__):
        results = [sandbox.run_tests("x = 1", ["assert x == 1"], isolation="basic") for _ in range(2)]
    assert [(r.passed, r.status) for r in results] == [(1, "ok"), (1, "ok")]
    messages = [(rec.levelno, rec.getMessage()) for rec in caplog.records if rec.name == sandbox.__name__]
    assert len(messages) == 1 and messages[0][0] == logging.WARNING
    assert "isolation: basic" in messages[0][1] and "not a security boundary" in messages[0][1]


def test_code_tests_reward_records_the_isolation_mode():
    from workbench.rewards.base import RewardPipeline, build_reward

    completions, tests = ["def f():\n    return 1", "f = None"], [["assert f() == 1"]] * 2
    isolated = 1.0 if NATIVE == "namespace" else 0.0
    assert build_reward("code_tests", isolation=NATIVE)(completions, tests=tests) == {
        "score": [1.0, 0.0], "namespace_isolation": [isolated, isolated]}
    metrics = RewardPipeline([{"name": "code_tests", "isolation": "basic"}])(completions, tests=tests).metrics()
    assert (metrics["reward/code_tests"], metrics["reward/code_tests/namespace_isolation"]) == (0.5, 0.0)
