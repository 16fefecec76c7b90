import numpy as np
import pytest
import torch

from envs.gym_control import GymControlEnv, ReturnScaler
from workbench.policies.gaussian_mlp import GaussianMLPPolicy


def make(num_envs=2, steps=64, **kw):
    cfg = GymControlEnv.Config(id="InvertedPendulum-v5", num_envs=num_envs, rollout_steps=steps, **kw)
    env = GymControlEnv(cfg, seed=3)
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(GaussianMLPPolicy.Config(), env.spec())
    return env, policy


def test_batch_shapes_and_contents():
    env, policy = make()
    batch = env.collect(policy)
    assert batch.logp_old.shape == (2, 64)
    assert batch.policy_inputs["obs"].shape == (2, 64, 4)
    assert batch.policy_inputs["actions"].shape == (2, 64, 1)
    # stored log-probs are those the policy recomputes from the stored inputs
    out = policy.log_probs({k: v.reshape(-1, 1, v.shape[-1]) for k, v in batch.policy_inputs.items()})
    torch.testing.assert_close(out.logp.reshape(2, 64), batch.logp_old, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.values.reshape(2, 64), batch.values, atol=1e-5, rtol=0)
    # within a row, next_values are the following step's values except at truncations
    same = batch.truncated[:, :-1] == 0
    torch.testing.assert_close(batch.next_values[:, :-1][same], batch.values[:, 1:][same])
    env.close()


def test_truncation_is_bootstrapped_with_final_observation_value():
    env, policy = make(num_envs=1, steps=12, kwargs={"max_episode_steps": 5})
    policy.actor[-1].weight.data.zero_()  # mean action 0 and tiny noise: the pole stays up for 5 steps
    policy.log_std.data.fill_(-8.0)
    seen = []
    value_of = policy.value_of

    def spy(obs):
        seen.append((np.array(obs), value_of(obs)))
        return seen[-1][1]

    policy.value_of = spy
    batch = env.collect(policy)
    assert batch.dones[0].nonzero().flatten().tolist() == [4, 9]
    assert batch.truncated[0].nonzero().flatten().tolist() == [4, 9]
    final_obs, final_value = seen[0]  # the first value_of call is the first truncation's final observation
    assert final_obs.shape == (1, 4)
    torch.testing.assert_close(batch.next_values[0, 4], final_value[0])
    torch.testing.assert_close(batch.next_values[0, 9], seen[1][1][0])
    # the reset observation that follows is a different state with a different value
    assert not torch.allclose(batch.next_values[0, 4], batch.values[0, 5])
    env.close()


def test_termination_is_not_marked_truncated():
    env, policy = make(num_envs=1, steps=200)
    policy.log_std.data.fill_(1.5)  # wild actions make the pole fall: terminations
    batch = env.collect(policy)
    assert batch.dones.sum() > 0
    assert batch.truncated.sum() == 0
    env.close()


def test_state_roundtrip_reproduces_the_next_rollout_exactly():
    env_a, policy = make()
    env_a.collect(policy)
    state, rng = env_a.state_dict(), torch.get_rng_state()
    stats = policy.get_extra_state()
    expected = env_a.collect(policy)

    env_b, _ = make()  # a fresh env at a different point of its episodes
    env_b.collect(policy)
    env_b.load_state_dict(state)
    policy.set_extra_state(stats)
    torch.set_rng_state(rng)
    got = env_b.collect(policy)
    for name in ("logp_old", "rewards", "dones", "values", "next_values"):
        torch.testing.assert_close(getattr(got, name), getattr(expected, name), atol=0, rtol=0)
    torch.testing.assert_close(got.policy_inputs["obs"], expected.policy_inputs["obs"], atol=0, rtol=0)
    env_a.close()
    env_b.close()


def test_return_scaler_matches_hand_computation():
    scaler = ReturnScaler(num_envs=1, gamma=0.5, clip=0.0, epsilon=0.0)
    rewards = np.array([[1.0], [2.0], [4.0]])
    dones = np.array([[False], [True], [False]])
    out = scaler(rewards, dones)
    # discounted returns fed to the running variance: 1, 2 + 0.5*1 = 2.5, then reset -> 4
    returns, expected = [], []
    count, mean, var = 1e-4, 0.0, 1.0
    for g, r in ((1.0, 1.0), (2.5, 2.0), (4.0, 4.0)):
        delta, total = g - mean, count + 1
        mean, var = mean + delta / total, (var * count + delta**2 * count / total) / total
        count = total
        expected.append(r / np.sqrt(var))
    np.testing.assert_allclose(out[:, 0], expected)


def test_unknown_env_id_and_non_box_action_space():
    from workbench.registry import ConfigError

    with pytest.raises(ConfigError, match="unknown gymnasium env id 'Hopper-v99'; similar: .*Hopper-v5"):
        GymControlEnv(GymControlEnv.Config(id="Hopper-v99"), seed=0)
    with pytest.raises(ConfigError, match="needs a Box"):
        GymControlEnv(GymControlEnv.Config(id="CartPole-v1"), seed=0)


def test_async_vector_env_collects_and_restores():
    env, policy = make(num_envs=2, steps=16, vectorization="async")
    env.collect(policy)
    state = env.state_dict()
    assert len(state["sims"]) == 2 and "mujoco" in state["sims"][0]
    env.load_state_dict(state)
    env.close()


@pytest.mark.parametrize("name", ["halfcheetah", "hopper", "walker2d", "ant", "inverted_pendulum", "reacher"])
def test_every_shipped_env_config_collects(name):
    from workbench.config import compose, validate
    from workbench.registry import ENVS, POLICIES

    run = validate(compose([f"env={name}", "env.rollout_steps=8", "env.num_envs=2"]))
    env = ENVS.get(run.env.name)(run.env, seed=0)
    policy = POLICIES.get(run.policy.name)(run.policy, env.spec())
    batch = env.assign_rewards(env.collect(policy))
    assert batch.rewards.shape == (2, 8) and torch.isfinite(batch.rewards).all()
    env.close()


def test_evaluation_episodes_score_each_episode_from_its_infos():
    import gymnasium as gym

    from workbench.rollout.control import run_episodes

    env, policy = make(num_envs=1, steps=8)
    single = gym.make("InvertedPendulum-v5", max_episode_steps=5)
    m, frames = run_episodes(policy, single, 3, base_seed=7, low=env.low, high=env.high,
                             score_episode=lambda infos: {"infos": len(infos)})
    # the reset info and one info per step; every episode here lasts at most 5 steps
    assert m["eval/infos"] == pytest.approx(m["eval/length_mean"] + 1) and m["eval/length_mean"] <= 5
    assert m["eval/episodes"] == 3 and frames == []
    again, _ = run_episodes(policy, single, 3, base_seed=7, low=env.low, high=env.high)
    assert again["eval/return_mean"] == m["eval/return_mean"] and "eval/infos" not in again  # seeded, deterministic
    single.close()
    env.close()
