"""gaussian_cnn on pixel observations through gym_control: the Gaussian maths, uint8 storage,
frame stacking, Dict final observations, checkpointed env state, timm backbones, and PPO."""
import gc
import json
import math

import gymnasium as gym
import numpy as np
import pytest
import torch

from envs.gym_control import GymControlEnv, PixelConfig, PixelStack
from workbench import checkpoint
from workbench.advantages import compute_advantages
from workbench.config import AlgoConfig, compose, validate
from workbench.environment import EnvSpec
from workbench.policies.visuomotor import GaussianCNNPolicy
from workbench.registry import ConfigError
from workbench.trainer import Trainer, minibatches


def pixel_env(num_envs=2, steps=16, frame_stack=2, pixels=None, **kw):
    cfg = GymControlEnv.Config(id="InvertedPendulum-v5", num_envs=num_envs, rollout_steps=steps,
                               pixels=pixels or PixelConfig(width=64), frame_stack=frame_stack, **kw)
    return GymControlEnv(cfg, seed=3)


def make_policy(spec, **kw):
    torch.manual_seed(0)
    return GaussianCNNPolicy(GaussianCNNPolicy.Config(**kw), spec)


def dict_spec(channels=6, size=64, state=3, actions=2):
    space = gym.spaces.Dict({"pixels": gym.spaces.Box(0, 255, (channels, size, size), np.uint8),
                             "state": gym.spaces.Box(-np.inf, np.inf, (state,), np.float64)})
    return EnvSpec((channels, size, size), actions, observation_space=space)


def random_obs(spec, n, seed=0):
    rng = np.random.default_rng(seed)
    space = spec.observation_space
    return {"pixels": rng.integers(0, 256, (n, *space["pixels"].shape), dtype=np.uint8),
            "state": rng.normal(2.0, 3.0, (n, space["state"].shape[0]))}


def cells(out):
    """An act's inputs and actions as evaluate's [M, 1, ...] cells."""
    return {**{k: v[:, None] for k, v in out.obs.items()}, "actions": out.actions[:, None]}


def test_log_prob_entropy_and_value_are_computed_from_pixels_and_normalised_state():
    spec = dict_spec()
    p = make_policy(spec, log_std_init=-0.5)
    obs = random_obs(spec, 5)
    out = p.act(obs)  # folds this batch into the state statistics first
    state = np.clip((obs["state"] - p.obs_rms.mean) / np.sqrt(p.obs_rms.var + 1e-8), -10, 10)
    pixels = torch.as_tensor(obs["pixels"]).float() / 255 - 0.5
    features = torch.cat([p.encoder.trunk(p.encoder.backbone(pixels)), torch.as_tensor(state, dtype=torch.float32)], -1)
    mean = p.actor(features)
    dist = torch.distributions.Normal(mean, torch.full_like(mean, math.exp(-0.5)))
    torch.testing.assert_close(out.logp, dist.log_prob(out.actions).sum(-1))
    torch.testing.assert_close(p.entropy_per_step(), dist.entropy().sum(-1)[0])
    torch.testing.assert_close(out.values, p.critic(features).squeeze(-1))
    assert out.obs["pixels"].dtype == torch.uint8
    torch.testing.assert_close(p.log_probs(cells(out)).logp[:, 0], out.logp)


def test_collect_stores_uint8_pixels_and_evaluate_reproduces_logp_old():
    env = pixel_env(num_envs=2, steps=16, frame_stack=2)
    p = make_policy(env.spec())
    p.eval()
    batch = env.collect(p)
    inputs = batch.policy_inputs
    assert inputs["pixels"].dtype == torch.uint8 and inputs["pixels"].shape == (2, 16, 6, 64, 64)
    assert inputs["state"].dtype == torch.float32 and inputs["state"].shape == (2, 16, 4)
    assert inputs["actions"].shape == (2, 16, 1)
    batch = compute_advantages(batch, AlgoConfig())
    p.train()
    for mb in minibatches(batch, p.sample_unit, num_minibatches=4):  # the first PPO pass: ratio 1
        out = p.log_probs(mb.policy_inputs)
        torch.testing.assert_close(torch.exp(out.logp - mb.logp_old), torch.ones_like(mb.logp_old), atol=1e-5, rtol=0)
        torch.testing.assert_close(out.values, mb.values_old, atol=1e-5, rtol=0)
    env.close()


class Clock(gym.Env):
    """Dict observations whose pixel [h, w, c] at step t reads 10 t + c + 100 h + 50 w."""

    observation_space = gym.spaces.Dict({"pixels": gym.spaces.Box(0, 255, (2, 2, 3), np.uint8),
                                         "state": gym.spaces.Box(-1, 1, (1,), np.float32)})
    action_space = gym.spaces.Box(-1, 1, (1,), np.float32)

    def reset(self, seed=None, options=None):
        self.t = 0
        return self._obs(), {}

    def step(self, action):
        self.t += 1
        return self._obs(), 0.0, False, False, {}

    def _obs(self):
        h, w, c = np.meshgrid(np.arange(2), np.arange(2), np.arange(3), indexing="ij")
        return {"pixels": (10 * self.t + c + 100 * h + 50 * w).astype(np.uint8), "state": np.zeros(1, np.float32)}


def test_frame_stack_is_channel_first_in_time_order_and_refills_at_reset():
    env = PixelStack(Clock(), k=3)
    assert env.observation_space["pixels"].shape == (9, 2, 2)
    h, w = np.meshgrid(np.arange(2), np.arange(2), indexing="ij")

    def expect(times):
        return np.stack([10 * t + c + 100 * h + 50 * w for t in times for c in range(3)])

    obs, _ = env.reset()
    np.testing.assert_array_equal(obs["pixels"], expect([0, 0, 0]))
    for t in (1, 2, 3):
        obs, *_ = env.step(np.zeros(1))
    np.testing.assert_array_equal(obs["pixels"], expect([1, 2, 3]))
    obs, _ = env.reset()
    np.testing.assert_array_equal(obs["pixels"], expect([0, 0, 0]))
    assert obs["pixels"].dtype == np.uint8 and obs["state"].shape == (1,)


def test_pixels_only_observations_evaluate_and_write_a_video(tmp_path):
    env = pixel_env(num_envs=1, steps=8, frame_stack=3, pixels=PixelConfig(width=64, height=48, state=False))
    spec = env.spec()
    assert spec.observation_shape == (9, 48, 64) and list(spec.observation_space.spaces) == ["pixels"]
    p = make_policy(spec, encoder="drq")
    assert set(env.collect(p).policy_inputs) == {"pixels", "actions"}
    metrics = env.evaluate(p, episodes=1, video_path=str(tmp_path / "eval.mp4"))
    assert metrics["eval/episodes"] == 1 and (tmp_path / "eval.mp4").stat().st_size > 0
    env.close()


def test_frames_stay_right_when_other_envs_free_their_gl_contexts():
    env_a, env_b = pixel_env(steps=8, frame_stack=1), pixel_env(steps=8, frame_stack=1)  # same seed, same episodes
    p = make_policy(env_a.spec())
    stats, rng = p.get_extra_state(), torch.get_rng_state()
    expected = [env_a.collect(p).policy_inputs["pixels"] for _ in range(2)]
    env_a.evaluate(p, episodes=1)  # an evaluation env makes, then frees, its own GL context
    p.set_extra_state(stats)
    torch.set_rng_state(rng)
    got = [env_b.collect(p).policy_inputs["pixels"]]
    env_a.close()  # while env_b's context is current
    del env_a
    gc.collect()
    got.append(env_b.collect(p).policy_inputs["pixels"])
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, atol=0, rtol=0)
    env_b.close()


def test_truncation_is_bootstrapped_with_the_final_dict_observation():
    env = pixel_env(num_envs=1, steps=8, kwargs={"max_episode_steps": 4})
    p = make_policy(env.spec())
    p.actor[-1].weight.data.zero_()  # mean action 0, tiny noise: the pole stays up
    p.log_std.data.fill_(-8.0)
    seen, value_of = [], p.value_of
    p.value_of = lambda obs: seen.append((obs, value_of(obs))) or seen[-1][1]
    batch = env.collect(p)
    assert batch.truncated[0].nonzero().flatten().tolist() == [3, 7]
    final, value = seen[0]
    assert final["pixels"].shape == (1, 6, 64, 64) and final["state"].shape == (1, 4)
    torch.testing.assert_close(batch.next_values[0, 3], value[0])
    env.close()


def test_checkpointed_env_state_with_stacked_frames_reproduces_the_next_rollout(tmp_path):
    env_a = pixel_env(frame_stack=3)
    p = make_policy(env_a.spec())
    env_a.collect(p)
    path = checkpoint.save(tmp_path / "ckpt.safetensors", {"env": env_a.state_dict(), "policy": p.state_dict()})
    rng = torch.get_rng_state()
    expected = env_a.collect(p)

    env_b = pixel_env(frame_stack=3)  # other actions, so other frames in its stacks
    env_b.collect(p)
    state = checkpoint.load(path)
    env_b.load_state_dict(state["env"])
    p.load_state_dict(state["policy"])
    torch.set_rng_state(rng)
    got = env_b.collect(p)
    for name in ("logp_old", "rewards", "dones", "values", "next_values"):
        torch.testing.assert_close(getattr(got, name), getattr(expected, name), atol=0, rtol=0)
    for key in ("pixels", "state"):
        torch.testing.assert_close(got.policy_inputs[key], expected.policy_inputs[key], atol=0, rtol=0)
    env_a.close()
    env_b.close()


def test_async_pixel_envs_render_in_their_workers_and_restore():
    env = pixel_env(num_envs=2, steps=8, frame_stack=2, vectorization="async")  # forkserver workers
    p = make_policy(env.spec())
    env.collect(p)
    state, stats, rng = env.state_dict(), p.get_extra_state(), torch.get_rng_state()
    expected = env.collect(p)
    env.load_state_dict(state)
    p.set_extra_state(stats)
    torch.set_rng_state(rng)
    got = env.collect(p)
    assert got.policy_inputs["pixels"].float().mean() > 1  # the cart and pole are drawn, not a black frame
    torch.testing.assert_close(got.policy_inputs["pixels"], expected.policy_inputs["pixels"], atol=0, rtol=0)
    env.close()


def test_timm_backbone_by_name_with_local_weights_frozen_and_batchnorm_on_running_stats(tmp_path):
    import timm
    from safetensors.torch import save_file
    from timm.models import adapt_input_conv

    source = timm.create_model("test_resnet", pretrained=False, num_classes=0).state_dict()  # 3 channels
    save_file({k: v.contiguous() for k, v in source.items()}, str(tmp_path / "w.safetensors"))
    spec = dict_spec(channels=6, size=32)
    p = make_policy(spec, encoder="timm:test_resnet", weights=str(tmp_path / "w.safetensors"), freeze_encoder=True)
    loaded = p.encoder.backbone.state_dict()
    torch.testing.assert_close(loaded["conv1.0.weight"], adapt_input_conv(6, source["conv1.0.weight"]))  # two stacked frames
    for k, v in source.items():
        if k != "conv1.0.weight":
            torch.testing.assert_close(loaded[k], v)
    trainable = {id(q) for g in p.param_groups() for q in g["params"]}
    assert not any(id(q) in trainable or q.requires_grad for q in p.encoder.backbone.parameters())
    assert id(p.encoder.trunk[0].weight) in trainable
    p.train()  # the backbone stays in eval mode: evaluate scores exactly what act sampled
    out = p.act(random_obs(spec, 4))
    torch.testing.assert_close(p.log_probs(cells(out)).logp[:, 0], out.logp)


@pytest.mark.parametrize("share", [True, False])
def test_the_critic_trains_the_actor_encoder_only_when_shared(share):
    spec = dict_spec(size=32)
    p = make_policy(spec, encoder="drq", share_encoder=share)
    p.log_probs(cells(p.act(random_obs(spec, 3)))).values.sum().backward()
    actor_grad = p.encoder.trunk[0].weight.grad
    assert (actor_grad is not None and actor_grad.abs().sum() > 0) == share
    assert share or p.critic_encoder.trunk[0].weight.grad.abs().sum() > 0


def test_bad_inputs_fail_with_one_clear_line():
    with pytest.raises(ConfigError, match="needs Dict observations with uint8 'pixels'"):
        GaussianCNNPolicy(GaussianCNNPolicy.Config(), EnvSpec((4,), 1))
    with pytest.raises(ConfigError, match="valid choices: nature, drq, timm:<model name>"):
        GaussianCNNPolicy.Config(encoder="vgg")
    with pytest.raises(ConfigError, match="need a timm encoder"):
        GaussianCNNPolicy.Config(weights="w.safetensors")
    with pytest.raises(ConfigError, match="unknown timm model 'no_such_net'"):
        make_policy(dict_spec(), encoder="timm:no_such_net")
    with pytest.raises(ConfigError, match="policy.weights: no file at /nonexistent.safetensors"):
        make_policy(dict_spec(), encoder="timm:test_resnet", weights="/nonexistent.safetensors")
    with pytest.raises(ConfigError, match="does not fit 16x16 pixels"):
        make_policy(dict_spec(size=16), encoder="nature")
    with pytest.raises(ConfigError, match="env.pixels needs a MuJoCo env"):
        GymControlEnv(GymControlEnv.Config(id="Pendulum-v1", pixels=PixelConfig(width=32)), seed=0)


def pixel_run(tmp_path, *overrides):
    return validate(compose(["experiment=inverted_pendulum_ppo", "env.pixels.width=64", "policy=gaussian_cnn", "progress=false",
                             "device=cpu", f"run_dir={tmp_path}", *overrides]))


def test_trainer_runs_ppo_on_pixels_and_resumes_from_its_checkpoint(tmp_path):
    small = ["env.frame_stack=2", "env.num_envs=2", "env.rollout_steps=32", "algo.update_epochs=2",
             "algo.num_minibatches=2", "eval_episodes=1", "checkpoint_every=1"]
    Trainer(pixel_run(tmp_path, *small, "total_steps=128"), tmp_path).train(plot=False)
    resumed = Trainer(pixel_run(tmp_path, *small, "total_steps=192"), tmp_path)
    resumed.resume()
    assert resumed.step == 128
    final = resumed.train(plot=False)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    trained = [r for r in rows if "perf/steps_per_s" in r]
    assert [r["step"] for r in trained] == [64, 128, 192]
    assert all(math.isfinite(v) for r in trained for v in r.values())
    assert final["eval/episodes"] == 1


def test_ppo_from_pixels_and_state_learns_to_balance_the_pendulum(tmp_path):
    run = pixel_run(tmp_path, "seed=1", "env.num_envs=4", "env.rollout_steps=256", "algo.update_epochs=4", "algo.num_minibatches=4",
                    "algo.lr=1e-3", "total_steps=10240", "eval_episodes=3", "checkpoint_every=0")
    trainer = Trainer(run, tmp_path)
    before = trainer.env.evaluate(trainer.policy, 3)["eval/return_mean"]
    after = trainer.train(plot=False)["eval/return_mean"]
    assert after > max(60.0, 2.5 * before), (before, after)  # ~25 -> 100-400 in ~30 s on 2 cores


@pytest.mark.slow
def test_ppo_from_pixels_alone_starts_to_balance_the_pendulum(tmp_path):
    """No state: three stacked 64x64 frames only (~2.5-4 min on 2 cores)."""
    run = pixel_run(tmp_path, "seed=1", "env.pixels.state=false", "env.frame_stack=3", "env.num_envs=4", "env.rollout_steps=256",
                    "algo.update_epochs=4", "algo.num_minibatches=4", "algo.lr=1e-3", "total_steps=40960",
                    "eval_every=0", "eval_episodes=0", "checkpoint_every=0")
    Trainer(run, tmp_path).train(plot=False)
    returns = [r["episode/return"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
               if "episode/return" in (r := json.loads(line))]
    quarter = len(returns) // 4
    first, last = np.mean(returns[:quarter]), np.mean(returns[-quarter:])
    assert last > 2 * first, (first, last)  # ~8 (falls at once) -> ~25 over the last 10k steps
