"""``workbench bench rapl-franka`` / ``rapl-align`` (``envs/franka_rapl``): the JSON figures of a
tiny run, the oracle, the pools, and that the engine finds them through the plugins alone."""
import json
import math
import subprocess
import sys

import numpy as np
import pytest

from envs.franka_rapl import oracle as oracles
from envs.franka_rapl import pool as pools

TINY = ["--budgets", "5", "--seeds", "1", "--train-episodes", "12", "--test-episodes", "8", "--epochs", "2",
        "--min-updates", "0", "--demos", "2"]


@pytest.fixture(scope="module")
def env():
    e = pools.make_env(size=32)
    yield e
    e.close()


def test_bench_json_line_has_finite_correlations(tmp_path):
    out = subprocess.run([sys.executable, "-m", "workbench.cli", "bench", "rapl-franka", "--json", *TINY,
                          "--out", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    figures = json.loads(lines[-1])
    assert any(line.startswith("rapl-franka ") for line in lines[:-1])  # the human line comes first
    for key in ("bench", "budgets", "spearman_rapl", "spearman_rlhf", "per_budget", "winner", "ratio",
                "spearman_rapl_untrained", "spearman_distance_only", "pool", "timings_s"):
        assert key in figures, key
    assert figures["bench"] == "rapl-franka" and figures["budgets"] == [5]
    assert figures["winner"] in ("rapl", "rlhf", "tie")
    row = figures["per_budget"][0]
    for value in (figures["spearman_rapl"]["5"], figures["spearman_rlhf"]["5"], row["spearman_rapl"],
                  row["spearman_rlhf"], figures["spearman_rapl_untrained"]):
        assert value is not None and math.isfinite(value) and -1.0 <= value <= 1.0
    assert figures["pool"]["frames_per_episode"] == 21 and figures["pool"]["frames_per_s"] > 0
    assert all(v >= 0 for v in figures["timings_s"].values())
    for name in ("results.json", "spearman_vs_budget.png", "frames_preferred_vs_not.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    saved = json.loads((tmp_path / "results.json").read_text())
    assert len(saved["runs"]) == 1 and saved["runs"][0]["train_triplets"] == 4  # 1 of 5 triplets validates


def test_engine_import_does_not_import_envs():
    code = ("import sys, workbench.bench, workbench.rewards.rapl, workbench.rewards.rapl.train; "
            "from workbench.registry import BENCHMARKS; print('envs' in sys.modules, 'rapl-franka' in BENCHMARKS)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False False"


def test_the_cli_finds_both_benchmarks_through_the_plugins():
    """A fresh ``workbench bench`` reaches each benchmark's own option checks (not 'unknown benchmark')."""
    for argv, said in ((["rapl-franka", "--budgets", "0"], "workbench bench rapl-franka: error: argument --budgets"),
                       (["rapl-align", "--rewards", "x", "--methods", "dance"], "--methods: unknown ['dance']")):
        out = subprocess.run([sys.executable, "-m", "workbench.cli", "bench", *argv], capture_output=True, text=True,
                             timeout=120)
        assert out.returncode != 0 and said in out.stderr, out.stderr


def test_bad_options_are_one_line_errors():
    from envs.franka_rapl.quality_bench import parse_args

    for bad in (["--budgets", "0,5"], ["--budgets", "a"], ["--val-frac", "1"], ["--weights", "x.pt"], ["--layouts", "-1"],
                ["--pretrain-epochs", "-1"], ["--pretrain-episodes", "2"]):
        with pytest.raises(SystemExit):
            parse_args(bad)


# seeds 0, 1 and 3: layouts where the detour's longer way costs less than the straight push's
# steps in the zone (in about 1 of 4 layouts a quick push clips the zone for only a few steps
# and wins: the oracle trades time for zone steps, see oracle_score)
@pytest.mark.parametrize("seed", [0, 1, 3])
def test_oracle_ranks_detour_above_zone_crossing_above_no_push(env, seed):
    episodes = {b: pools.run_episode(env, b, seed, size=32) for b in ("detour", "straight", "idle")}
    zone_steps = {b: sum(i["in_forbidden_zone"] for i in e.infos) for b, e in episodes.items()}
    assert zone_steps["detour"] == 0 and zone_steps["straight"] > 0 and zone_steps["idle"] == 0
    assert episodes["detour"].infos[-1]["dist_object_goal"] < 0.05  # both pushes arrive
    assert episodes["straight"].infos[-1]["dist_object_goal"] < 0.05
    score = {b: oracles.oracle_score(e.infos) for b, e in episodes.items()}
    assert score["detour"] > score["straight"] > score["idle"], score
    oracle = oracles.make_oracle()
    from workbench.rewards.rapl import Rollout

    rollouts = [Rollout(episodes[b].video, episodes[b].infos) for b in ("idle", "straight", "detour")]
    assert oracle.rank(rollouts) == [2, 1, 0]
    assert episodes["detour"].video.shape == (21, 32, 32, 3) and episodes["detour"].video.dtype == np.uint8


def test_oracle_score_definition_and_bad_input():
    infos = [{"dist_object_goal": 0.1, "in_forbidden_zone": False}, {"dist_object_goal": 0.2, "in_forbidden_zone": True}]
    assert oracles.oracle_score(infos) == pytest.approx(-0.3 - oracles.ZONE_LAMBDA)
    assert oracles.oracle_score(infos, zone_lambda=0) == pytest.approx(-0.3)
    with pytest.raises(ValueError, match="at least one"):
        oracles.oracle_score([])
    with pytest.raises(ValueError, match="in_forbidden_zone"):
        oracles.oracle_score([{"dist_object_goal": 0.1}])
    with pytest.raises(ValueError, match="zone_lambda"):
        oracles.oracle_score(infos, zone_lambda=-1)


def test_pool_is_deterministic_and_mixes_behaviours(env):
    cfg = pools.PoolConfig(episodes=6, steps=20, frame_every=10, size=32, seed=3)
    a, b = pools.generate_pool(cfg, env), pools.generate_pool(cfg, env)
    assert sorted(a.behaviour_counts) == sorted(pools.BEHAVIOURS) and sum(a.behaviour_counts.values()) == 6
    assert len({e.behaviour for e in a.episodes}) == 6  # 6 episodes: one of each kind
    for x, y in zip(a.episodes, b.episodes):
        assert x.behaviour == y.behaviour and x.seed == y.seed and np.array_equal(x.video, y.video)
        assert len(x.infos) == 21 and x.video.shape == (3, 32, 32, 3)
    assert a.steps == 120 and a.frames == 18 and a.seconds > 0
    fixed = [pools.generate_pool(pools.PoolConfig(episodes=3, steps=1, size=32, seed=s, layouts=1), env) for s in (0, 1)]
    starts = {tuple(np.round(e.infos[0]["object_pos"], 9)) for p in fixed for e in p.episodes}
    assert len(starts) == 1  # one layout shared by pools of different seeds
    with pytest.raises(ValueError, match="behaviour"):
        pools.run_episode(env, "dance", 0)
    with pytest.raises(ValueError, match="at least 3"):
        pools.PoolConfig(episodes=2)


def test_bench_rapl_align_trains_on_learned_rewards_and_scores_with_the_oracle(tmp_path):
    """One short PPO iteration per method on saved reward checkpoints; the oracle scores the policies."""
    from envs.franka_rapl.alignment_bench import bench_rapl_align
    from workbench.registry import ConfigError
    from workbench.rewards.rapl import FrameEncoder, RAPLReward, RLHFRewardModel

    demo = np.random.default_rng(0).integers(0, 255, (4, 64, 64, 3), dtype=np.uint8)
    RAPLReward(FrameEncoder("cnn", embed_dim=8, head_hidden=0), demos=[demo]).save(str(tmp_path / "rapl_b5_s0.safetensors"))
    RLHFRewardModel(FrameEncoder("cnn", embed_dim=8, head_hidden=0)).save(str(tmp_path / "rlhf_b5_s0.safetensors"))
    figures = bench_rapl_align(["--rewards", str(tmp_path), "--budget", "5", "--steps", "2000", "--eval-episodes", "1",
                                "--out", str(tmp_path / "out")])
    for method in ("rapl", "rlhf", "task"):
        assert np.isfinite(figures[f"{method}_oracle_score"]) and 0 <= figures[f"{method}_success"] <= 1
    assert figures["winner"] in ("rapl", "rlhf", "tie")
    rows = [json.loads(line) for line in (tmp_path / "out" / "rapl" / "metrics.jsonl").read_text().splitlines()]
    assert any("reward/video_return" in r for r in rows)  # the learned reward was on the steps
    with pytest.raises(ConfigError, match="no rapl_b7_s0"):
        bench_rapl_align(["--rewards", str(tmp_path), "--budget", "7", "--steps", "2000"])


def test_pretraining_gives_both_methods_the_same_frozen_backbone(tmp_path):
    """--pretrain-epochs: the backbone is fitted to scene quantities on its own pool, saved, and
    both trained rewards keep it bit for bit (frozen); the figures carry the fit."""
    import torch

    from envs.franka_rapl import pretrain as pre
    from envs.franka_rapl.quality_bench import bench_rapl_franka
    from workbench.rewards.rapl import RAPLReward, RLHFRewardModel

    figures = bench_rapl_franka([*TINY, "--pretrain-epochs", "1", "--pretrain-episodes", "6", "--out", str(tmp_path)])
    fit = figures["pretrain"]
    assert fit["epochs"] == 1 and fit["episodes"] == 6 and figures["encoder"]["trainable_stages"] == 0
    assert sorted(fit["fit"]) == sorted(pre.QUANTITIES) and fit["frames"] == 5 * 21 and fit["val_frames"] == 21
    for q in fit["fit"].values():
        assert q["rmse_cm"] is not None and q["rmse_cm"] >= 0 and (q["r2"] is None or q["r2"] <= 1)
    assert [row["epoch"] for row in fit["curve"]] == [0, 1] and figures["timings_s"]["pretrain_s"] > 0
    state, meta = pre.load_backbone(str(tmp_path / "pretrained_backbone.safetensors"))
    assert meta["digest"] == fit["digest"] == pre.state_digest(state)
    for model in (RAPLReward.load(str(tmp_path / "rapl_b5_s0.safetensors")).encoder,
                  RLHFRewardModel.load(str(tmp_path / "rlhf_b5_s0.safetensors")).encoder):
        assert model.config["trainable_stages"] == 0
        assert not any(p.requires_grad for p in model.backbone.parameters())
        assert any(p.requires_grad for p in model.head.parameters())
        trained = model.backbone.state_dict()
        assert all(torch.equal(trained[k], v) for k, v in state.items())  # untouched by preference training
    assert json.loads((tmp_path / "results.json").read_text())["pretrain"]["digest"] == fit["digest"]


def test_frame_labels_follow_the_rendered_steps():
    from envs.franka_rapl import pretrain as pre

    infos = [{"object_pos": [t, 0.1, 0.02], "goal_pos": [0.5, 0.2, 0.02], "ee_pos": [0.3, t, 0.1]} for t in range(11)]
    y = pre.frame_labels(infos, zone=[0.4, 0.15], frames=3, frame_every=5)
    assert y.shape == (3, len(pre.QUANTITIES)) and y.dtype == np.float32
    assert y[:, 0].tolist() == [0, 5, 10] and y[:, 7].tolist() == [0, 5, 10]  # cube x, TCP y at steps 0, 5, 10
    assert np.allclose(y[1], [5, 0.1, 0.5, 0.2, 0.4, 0.15, 0.3, 5, 0.1])
    with pytest.raises(ValueError, match="zone"):
        pre.frame_labels(infos, None, 3, 5)
    with pytest.raises(ValueError, match="infos"):
        pre.frame_labels(infos, [0.4, 0.15], 4, 5)
