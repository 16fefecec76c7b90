import json
import math
import os
import subprocess
import sys

import pytest

ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "workbench.cli", *args], capture_output=True, text=True, env=ENV, cwd=cwd)


def test_list_shows_registries():
    out = cli("list")
    assert out.returncode == 0
    text = out.stdout
    for word in ("gym_control", "gaussian_mlp", "gae", "grpo", "rloo", "reinforce_pp", "k3", "token-mean", "ppo-mujoco", "halfcheetah_ppo"):
        assert word in text


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "algo.epsilonn=0.1"], "unknown config key 'algo.epsilonn'; valid keys: name, advantage"),
        (["train", "experiment=nope"], "Available options in 'experiment'"),
        (["train", "env.id=Hopper-v99"], "unknown gymnasium env id 'Hopper-v99'"),
        (["train", "algo.advantage=ppo"], "valid choices: dr_grpo, gae, grpo, per_prompt, reinforce_pp, rloo"),
        (["train", "resume=/no/such/run"], "no such run directory"),
        (["eval", "/no/such/run"], "no such run directory"),
        (["bench", "nope"], "unknown benchmark 'nope'; valid choices: "),
    ],
)
def test_user_mistakes_give_one_line_and_exit_2(args, message):
    out = cli(*args)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("workbench: error: "), out.stderr
    assert message in lines[0]
    assert "Traceback" not in out.stderr


def test_train_then_eval_writes_video_and_scores(tmp_path):
    run_dir = tmp_path / "run"
    out = cli("train", "total_steps=512", "env.num_envs=2", "env.rollout_steps=128", "eval_episodes=1", f"run_dir={run_dir}")
    assert out.returncode == 0, out.stderr
    assert "final eval: return" in out.stderr and "rollout video" in out.stderr
    assert (run_dir / "rollout.mp4").stat().st_size > 0  # the default job (Franka reach) saves its final rollout
    out = cli("eval", str(run_dir), "--episodes", "2")
    assert out.returncode == 0, out.stderr
    assert "return" in out.stdout and "over 2 episodes" in out.stdout
    result = json.loads((run_dir / "eval.json").read_text())
    assert result["eval/episodes"] == 2 and math.isfinite(result["eval/return_mean"]) and 0 <= result["eval/success"] <= 1
    import cv2

    video = cv2.VideoCapture(str(run_dir / "eval.mp4"))
    assert video.isOpened() and int(video.get(cv2.CAP_PROP_FRAME_COUNT)) > 1
    ok, frame = video.read()
    assert ok and frame.shape == (240, 240, 3) and frame.std() > 5  # a real rendered scene, not a blank frame
    # a second train into the same directory is refused, with the way to continue named
    again = cli("train", f"run_dir={run_dir}")
    assert again.returncode == 2 and f"resume={run_dir}" in again.stderr


def test_bench_ppo_mujoco_json_line():
    pytest.importorskip("stable_baselines3")
    out = cli("bench", "ppo-mujoco", "--steps", "2048", "--profiles", "cleanrl", "--env", "InvertedPendulum-v5", "--json")
    assert out.returncode == 0, out.stderr
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    assert figures["bench"] == "ppo-mujoco"
    row = figures["cleanrl"]
    assert row["ours_steps_per_s"] > 0 and row["sb3_steps_per_s"] > 0 and row["raw_env_steps_per_s"] > 0
    assert figures["ratio"] == row["ratio"] == pytest.approx(row["ours_steps_per_s"] / row["sb3_steps_per_s"], rel=1e-2)


def test_text_run_eval_reports_pass_at_k(tmp_path):
    run_dir = tmp_path / "text"
    out = cli("train", "experiment=arithmetic_grpo_tiny", "total_steps=32", "env.prompts_per_iteration=4", "env.group_size=4",
              "eval_episodes=4", "eval_every=0", "policy.model_config.num_hidden_layers=1", f"run_dir={run_dir}")
    assert out.returncode == 0, out.stderr
    assert "final eval: accuracy" in out.stderr
    out = cli("eval", str(run_dir), "--episodes", "6", "--k", "4")
    assert out.returncode == 0, out.stderr
    assert "greedy accuracy" in out.stdout and "pass@4" in out.stdout and "mean@4" in out.stdout
    result = json.loads((run_dir / "eval.json").read_text())
    assert result["eval/episodes"] == 6 and 0 <= result["eval/pass@1"] <= result["eval/pass@4"] <= 1
    assert not (run_dir / "eval.mp4").exists()


def test_diffusion_run_lines_follow_its_declared_metrics(tmp_path, capsys):
    """An image run's final line and eval line show its declared reward and JPEG size (not a
    return guessed from metric names); an option its evaluation lacks is one line, exit 2."""
    import re

    from workbench.cli import main

    run_dir = tmp_path / "ddpo"
    code = main(["train", "experiment=ddpo_compressibility_demo", "progress=false", "threads=1", "total_steps=6",
                 "eval_episodes=2", "eval_every=0", f"run_dir={run_dir}", "env.prompts_per_iteration=2", "env.group_size=3",
                 "policy.num_steps=4", "policy.unet_config.sample_size=16", "policy.unet_config.block_out_channels=[8,16]",
                 "policy.unet_config.norm_num_groups=4"])
    assert code == 0
    final = [line for line in capsys.readouterr().err.splitlines() if line.startswith("final eval: ")]
    number = r"-?\d+\.\d{3}"
    figures = rf"reward {number} ± {number}, JPEG size \(kB\) {number}"
    assert len(final) == 1 and re.fullmatch(rf"final eval: {figures} over 2 images", final[0]), final
    assert (run_dir / "learning_curve.png").stat().st_size > 0
    assert main(["eval", str(run_dir), "--episodes", "3"]) == 0
    out = capsys.readouterr().out
    assert re.fullmatch(rf"ckpt_\d+\.safetensors: fixed noise {figures} over 3 images\n", out), out
    assert not (run_dir / "eval.mp4").exists()  # the env declares no video
    assert main(["eval", str(run_dir), "--k", "4"]) == 2
    refused = "workbench: error: --k 4: env diffusion does not sample k answers per item; leave --k out"
    assert capsys.readouterr().err.strip() == refused
