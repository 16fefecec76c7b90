import math

import numpy as np
import pytest
import torch

from workbench.environment import EnvSpec
from workbench.policies.gaussian_mlp import GaussianMLPPolicy, fast_forward, mlp


@pytest.mark.parametrize("activation", ["tanh", "relu", "elu", "silu"])
def test_fast_forward_equals_module_call(activation):
    net = mlp([5, 16, 16, 3], activation, 0.01, ortho=True)
    x = torch.randn(7, 5)
    torch.testing.assert_close(fast_forward(net, x), net(x), rtol=0, atol=0)


def policy(**kw):
    return GaussianMLPPolicy(GaussianMLPPolicy.Config(**kw), EnvSpec((3,), 2))


def test_log_prob_and_entropy_are_the_diagonal_gaussian_ones():
    torch.manual_seed(0)
    p = policy(log_std_init=-0.5, normalize_obs=False)
    obs = np.random.default_rng(0).normal(size=(4, 3))
    out = p.act(obs)
    mean = p.actor(torch.as_tensor(obs, dtype=torch.float32))
    dist = torch.distributions.Normal(mean, torch.full_like(mean, math.exp(-0.5)))
    torch.testing.assert_close(out.logp, dist.log_prob(out.actions).sum(-1))
    torch.testing.assert_close(p.entropy_per_step(), dist.entropy().sum(-1)[0])
    inputs = {"obs": out.obs[:, None], "actions": out.actions[:, None]}
    torch.testing.assert_close(p.log_probs(inputs).logp[:, 0], out.logp)


def test_deterministic_act_returns_the_mean_and_obs_stats_update_only_when_asked():
    p = policy()
    obs = np.ones((2, 3))
    before = p.obs_rms.count
    out = p.act(obs, deterministic=True, update_stats=False)
    assert p.obs_rms.count == before
    torch.testing.assert_close(out.actions, p.actor(out.obs))
    p.act(obs)
    assert p.obs_rms.count == before + 2


def test_observation_statistics_are_saved_in_the_state_dict():
    p = policy()
    p.act(np.random.default_rng(1).normal(3.0, 2.0, size=(64, 3)))
    q = policy()
    q.load_state_dict(p.state_dict())
    np.testing.assert_array_equal(q.obs_rms.mean, p.obs_rms.mean)
    np.testing.assert_array_equal(q.obs_rms.var, p.obs_rms.var)
    assert q.obs_rms.count == p.obs_rms.count


def test_running_mean_std_matches_numpy_over_chunks():
    from workbench.normalization import RunningMeanStd

    data = np.random.default_rng(2).normal(1.0, 3.0, size=(101, 4))
    rms = RunningMeanStd((4,), epsilon=0.0)
    rms.count = 0.0
    for chunk in (data[:1], data[1:40], data[40:41], data[41:]):
        rms.update(chunk)
    np.testing.assert_allclose(rms.mean, data.mean(0))
    np.testing.assert_allclose(rms.var, data.var(0))
