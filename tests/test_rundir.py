"""A run directory is protected: one writer at a time (a lock held for the run's life, a stale
one taken over), a checkpoint that cannot be written or read is named in one line, resume falls
back to the previous intact checkpoint, and resume overrides that change the saved config are
listed."""
import errno
import os
import subprocess
import sys

from workbench import checkpoint
from workbench.cli import main
from workbench.runlog import read_metrics

# 16 InvertedPendulum steps per iteration, a checkpoint after each
SMALL = ["experiment=inverted_pendulum_ppo", "env.num_envs=1", "env.rollout_steps=16", "algo.num_minibatches=2",
         "algo.update_epochs=1", "eval_episodes=0", "checkpoint_every=1", "keep_checkpoints=2", "progress=false"]

HOLD = """
import sys, time
from workbench.runlog import RunDirLock
lock = RunDirLock(sys.argv[1]); lock.acquire()
print("held", flush=True)
time.sleep(60)
"""


def train(capsys, *args):
    rc = main(["train", *args])
    return rc, capsys.readouterr().err


def last_line(err: str) -> str:
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


def test_second_writer_is_refused_while_the_first_holds_the_lock(tmp_path, capsys):
    run_dir = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        rc, err = train(capsys, *SMALL, "total_steps=16", f"run_dir={run_dir}")
        assert rc == 2
        assert last_line(err) == (f"workbench: error: run_dir {run_dir} is in use by another workbench run (pid {holder.pid}); "
                                  f"wait for it to end or choose another run_dir")
        assert not (run_dir / "metrics.jsonl").exists() and not (run_dir / "checkpoints").exists()
    finally:
        holder.kill()
        holder.wait()


def test_a_stale_lock_of_a_killed_run_is_taken_over(tmp_path, capsys):
    run_dir = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    holder.kill()  # killed: the lock file stays behind, naming a dead pid
    holder.wait()
    assert (run_dir / ".lock").read_text().strip() == str(holder.pid)
    rc, err = train(capsys, *SMALL, "total_steps=16", f"run_dir={run_dir}")
    assert rc == 0, err
    assert [r["step"] for r in read_metrics(run_dir)] == [16]
    assert (run_dir / ".lock").read_text().strip() == str(os.getpid())


def test_full_disk_during_a_checkpoint_names_the_path_and_the_last_intact_one(tmp_path, capsys, monkeypatch):
    run_dir = tmp_path / "run"
    real_save, calls = checkpoint.save_file, []

    def fill_up(tensors, filename, metadata=None):
        calls.append(filename)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(tensors, filename, metadata=metadata)

    monkeypatch.setattr(checkpoint, "save_file", fill_up)
    rc, err = train(capsys, *SMALL, "total_steps=48", f"run_dir={run_dir}")
    assert rc == 1
    ckpts = run_dir / "checkpoints"
    assert last_line(err) == (f"workbench: error: cannot write checkpoint {ckpts / 'ckpt_00000002.safetensors'}: "
                              f"[Errno 28] No space left on device; the last intact checkpoint is "
                              f"{ckpts / 'ckpt_00000001.safetensors'} (continue with resume={run_dir} once there is room)")
    assert [p.name for p in ckpts.iterdir()] == ["ckpt_00000001.safetensors"]  # no temp file left behind


def test_resume_falls_back_to_the_previous_intact_checkpoint(tmp_path, capsys):
    run_dir = tmp_path / "run"
    rc, err = train(capsys, *SMALL, "total_steps=32", f"run_dir={run_dir}")
    assert rc == 0, err
    newest = run_dir / "checkpoints" / "ckpt_00000002.safetensors"
    newest.write_bytes(newest.read_bytes()[:1000])  # a truncated copy
    rc, err = train(capsys, f"resume={run_dir}", "total_steps=48")
    assert rc == 0, err
    assert (f"checkpoint {newest} is unreadable (header too small" in err or f"checkpoint {newest} is unreadable" in err)
    assert f"resuming from {run_dir / 'checkpoints' / 'ckpt_00000001.safetensors'}" in err
    assert "resuming" in err and "at step 16" in err
    assert [r["step"] for r in read_metrics(run_dir)] == [16, 32, 48]  # step 32 retrained, not logged twice


def test_resume_with_no_intact_checkpoint_is_one_line(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert train(capsys, *SMALL, "total_steps=32", f"run_dir={run_dir}")[0] == 0
    for p in checkpoint.list_checkpoints(run_dir / "checkpoints"):
        p.write_bytes(b"truncated")
    rc, err = train(capsys, f"resume={run_dir}")
    assert rc == 1
    assert last_line(err) == (f"workbench: error: no intact checkpoint to resume from in {run_dir / 'checkpoints'} "
                              f"(unreadable: ckpt_00000002.safetensors, ckpt_00000001.safetensors)")


def test_resume_lists_the_settings_that_differ_from_the_saved_config(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert train(capsys, *SMALL, "total_steps=16", f"run_dir={run_dir}")[0] == 0
    rc, err = train(capsys, f"resume={run_dir}", "total_steps=32", "algo.lr=0.0001")
    assert rc == 0, err
    assert (f"resume={run_dir} changes the saved config: algo.lr 0.0003 -> 0.0001, "
            f"total_steps 16 -> 32 (extends the run)") in err
    rc, err = train(capsys, f"resume={run_dir}", "total_steps=32")  # already done: nothing differs, nothing said
    assert rc == 0, err
    assert "changes the saved config" not in err


def test_refusing_a_used_run_dir_prints_one_line_and_nothing_at_exit(tmp_path):
    """The refusal comes after the lock is taken: the lock must be let go cleanly (a lock object
    left to interpreter shutdown printed an 'Exception ignored' traceback after the message)."""
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "ckpt_00000001.safetensors").write_bytes(b"x")
    code = f"import sys; from workbench.cli import main; sys.exit(main(['train', *{SMALL!r}, 'run_dir={run_dir}']))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [f"workbench: error: run_dir {run_dir} already holds checkpoints; "
                                                f"continue it with resume={run_dir}"]
