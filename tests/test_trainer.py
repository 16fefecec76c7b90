import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from workbench.batch import Batch
from workbench.config import compose, validate
from workbench.runlog import read_metrics
from workbench.trainer import Trainer, TrainingError, minibatches

SMALL = ["env=inverted_pendulum", "env.num_envs=2", "env.rollout_steps=64", "algo.num_minibatches=4", "algo.update_epochs=2", "progress=false"]


def trainer_for(tmp_path, *overrides):
    return Trainer(validate(compose([*SMALL, *overrides])), tmp_path / "run")


def test_minibatches_cover_every_valid_cell_once(tmp_path):
    tr = trainer_for(tmp_path)
    from workbench.advantages import compute_advantages

    batch = compute_advantages(tr.env.assign_rewards(tr.env.collect(tr.policy)), tr.algo)
    batch = batch.with_(mask=batch.mask.clone())
    batch.mask[1, 10:] = 0  # padding cells must never be sampled
    seen = torch.cat([mb.logp_old.flatten() for mb in minibatches(batch, "cell", 4)])
    expected = batch.logp_old[batch.mask > 0]
    assert sorted(seen.tolist()) == sorted(expected.tolist())  # every valid cell once, none dropped
    rows = list(minibatches(batch, "row", 2))
    assert [mb.mask.shape for mb in rows] == [(1, 64), (1, 64)]
    tr.env.close()


def small_batch(rows, steps, valid=None):
    logp = torch.arange(rows * steps, dtype=torch.float32).view(rows, steps)
    mask = torch.ones(rows, steps) if valid is None else valid
    return Batch(logp_old=logp, mask=mask, rewards=torch.zeros_like(logp), dones=torch.zeros_like(logp),
                 advantages=torch.zeros_like(logp))


def test_minibatches_use_every_sample_once_in_balanced_sizes():
    # 10 valid cells in 4 minibatches: 3 + 3 + 2 + 2 (the old split dropped 10 % 4 = 2 of them)
    valid = torch.ones(2, 6)
    valid[1, 4:] = 0
    batch = small_batch(2, 6, valid)
    mbs = list(minibatches(batch, "cell", 4))
    assert [mb.logp_old.numel() for mb in mbs] == [3, 3, 2, 2]
    assert sorted(torch.cat([mb.logp_old.flatten() for mb in mbs]).tolist()) == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
    # 5 rows in 2 minibatches: 3 + 2; fewer samples than minibatches: one sample each
    rows = list(minibatches(small_batch(5, 2), "row", 2))
    assert [mb.logp_old.shape[0] for mb in rows] == [3, 2]
    assert sorted(torch.cat([mb.logp_old[:, 0] for mb in rows]).tolist()) == [0, 2, 4, 6, 8]
    assert [mb.logp_old.shape[0] for mb in minibatches(small_batch(3, 2), "row", 8)] == [1, 1, 1]


def test_minibatches_unchanged_when_the_count_divides_evenly():
    # the control demos' figures depend on these exact minibatches: contiguous slices of one permutation
    batch = small_batch(4, 6)
    torch.manual_seed(3)
    order = torch.randperm(24)
    torch.manual_seed(3)
    got = [mb.logp_old.flatten().long() for mb in minibatches(batch, "cell", 4)]
    assert [g.tolist() for g in got] == [order[i * 6:(i + 1) * 6].tolist() for i in range(4)]


def test_ppo_learns_inverted_pendulum(tmp_path):
    tr = trainer_for(tmp_path, "total_steps=24576", "env.num_envs=4", "env.rollout_steps=256", "algo.update_epochs=10",
                     "eval_episodes=5", "checkpoint_every=0")
    before = tr.env.evaluate(tr.policy, 5)["eval/return_mean"]
    tr = trainer_for(tmp_path, "total_steps=24576", "env.num_envs=4", "env.rollout_steps=256", "algo.update_epochs=10",
                     "eval_episodes=5", "checkpoint_every=0")
    final = tr.train(plot=False)
    assert before < 60
    assert final["eval/return_mean"] >= 300, final
    returns = [r["episode/return"] for r in read_metrics(tmp_path / "run") if "episode/return" in r]
    assert sum(returns[-3:]) / 3 > 3 * sum(returns[:3]) / 3


def test_nonfinite_loss_is_skipped_then_stops(tmp_path):
    tr = trainer_for(tmp_path, "total_steps=1024", "checkpoint_every=0", "eval_episodes=0")
    weights = [p.detach().clone() for p in tr.policy.parameters()]
    log_probs = tr.policy.log_probs

    def poisoned(inputs):
        out = log_probs(inputs)
        out.logp = out.logp * float("nan")
        return out

    tr.policy.log_probs = poisoned
    with pytest.raises(TrainingError, match="non-finite"):
        tr.train(plot=False)
    for before, p in zip(weights, tr.policy.parameters()):
        torch.testing.assert_close(p.detach(), before)  # no NaN ever reached the weights
    assert tr.nonfinite_updates == 11


def test_run_directory_contents(tmp_path):
    tr = trainer_for(tmp_path, "total_steps=256", "eval_episodes=2", "checkpoint_every=1", "keep_checkpoints=2")
    tr.train()
    run = tmp_path / "run"
    assert {"config.yaml", "metrics.jsonl", "learning_curve.png", "checkpoints", "tb"} <= {p.name for p in run.iterdir()}
    assert len(list((run / "checkpoints").iterdir())) == 2
    assert "eval/return_mean" in read_metrics(run)[-1]
    assert any(p.name.startswith("events.out.tfevents") for p in (run / "tb").iterdir())


def _train_cmd(run_dir, *extra):
    return [sys.executable, "-m", "workbench.cli", "train", *SMALL, "total_steps=3840", "checkpoint_every=1",
            "keep_checkpoints=3", "eval_episodes=0", "algo.update_epochs=8", f"run_dir={run_dir}", *extra]


def _comparable(run_dir):
    return [{k: v for k, v in row.items() if not k.startswith("perf/")} for row in read_metrics(run_dir)]


def test_sigkill_and_resume_matches_uninterrupted_run(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    full, killed = tmp_path / "full", tmp_path / "killed"
    subprocess.run(_train_cmd(full), check=True, env=env, capture_output=True)

    proc = subprocess.Popen(_train_cmd(killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    target = killed / "checkpoints" / "ckpt_00000010.safetensors"
    deadline = time.time() + 120
    while not target.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert _comparable(killed) != _comparable(full)

    subprocess.run([sys.executable, "-m", "workbench.cli", "train", f"resume={killed}"], check=True, env=env, capture_output=True)
    assert _comparable(killed) == _comparable(full)
    assert len(_comparable(full)) == 30


def test_target_kl_stops_the_epoch_loop_early(tmp_path):
    from workbench.advantages import compute_advantages

    tr = trainer_for(tmp_path, "algo.target_kl=1e-9", "algo.lr=0.01", "algo.update_epochs=5")
    batch = compute_advantages(tr.env.assign_rewards(tr.env.collect(tr.policy)), tr.algo)
    stats = tr.update(batch)
    # KL is measured before each step: the first minibatch sees the collecting policy (KL 0),
    # the second sees the first step's change and stops the loop (5 epochs x 4 were allowed)
    assert stats["update/minibatches"] == 2
    tr.env.close()


def test_linear_lr_schedule_reaches_zero_at_the_end(tmp_path):
    tr = trainer_for(tmp_path, "total_steps=512", "eval_episodes=0", "algo.lr=0.001")
    tr.train(plot=False)
    lrs = [r["lr"] for r in read_metrics(tmp_path / "run")]
    assert lrs == pytest.approx([0.001, 0.00075, 0.0005, 0.00025])


@pytest.mark.gpu
def test_cuda_bf16_training_runs_and_keeps_fp32_master_weights(tmp_path):
    tr = trainer_for(tmp_path, "device=cuda", "precision=bf16", "total_steps=512", "eval_episodes=1")
    assert tr.bf16 and tr.policy.log_std.device.type == "cuda"
    final = tr.train(plot=False)
    assert all(p.dtype == torch.float32 for p in tr.policy.parameters())
    assert final["eval/return_mean"] > 0
