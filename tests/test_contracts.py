"""Acting contracts: a policy and an env that cannot work together are refused at start-up
(before any model loads) in one line naming both; every registered policy and env declares
its contract; Batch.select hands out rows and cells; the collectors fill the Batch."""
import pytest
import torch

import workbench.plugins as plugins
from workbench.batch import Batch
from workbench.cli import main
from workbench.config import compose, validate
from workbench.policies.base import ControlActor, DenoisingSampler, Policy, TokenGenerator
from workbench.registry import ConfigError, ENVS, POLICIES
from workbench.rollout.denoising import terminal_rewards

CONTRACTS = (TokenGenerator, ControlActor, DenoisingSampler)


def test_a_token_policy_in_a_control_env_is_refused_before_any_model_loads():
    with pytest.raises(ConfigError) as e:
        validate(compose(["experiment=franka_reach_ppo", "policy=tiny_qwen2"]))
    msg = str(e.value)
    assert "policy causal_lm (a token generator) cannot act in env gym_control, which needs a control actor" in msg
    assert "policy=gaussian_mlp" in msg and "policy=gaussian_cnn" in msg and "tiny_qwen2" not in msg.split("use ")[1]


def test_a_control_policy_in_a_text_env_is_refused(capsys):
    assert main(["train", "experiment=arithmetic_grpo_tiny", "policy=gaussian_mlp", "progress=false"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot act in env text, which needs a token generator" in err[0], err


def test_ppo_on_a_text_experiment_fails_at_start_up_not_after_the_model_loads():
    with pytest.raises(ConfigError, match="algo.advantage=gae needs a critic, but policy causal_lm has none"):
        validate(compose(["experiment=arithmetic_grpo_tiny", "algo=ppo"]))


def test_every_registered_policy_and_env_declares_an_acting_contract():
    plugins.load()
    for name in POLICIES.names():
        cls = POLICIES.get(name)
        assert issubclass(cls, Policy) and sum(issubclass(cls, c) for c in CONTRACTS) == 1, name
    for name in ENVS.names():
        assert ENVS.get(name).policy_contract in CONTRACTS, name


def _batch() -> Batch:
    # 2 rows x 3 steps; row 1's last step is padding; a per-row input and a per-cell input
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    logp = torch.arange(6.0).view(2, 3)
    return Batch(logp_old=logp, mask=mask, rewards=torch.zeros(2, 3), dones=torch.zeros(2, 3),
                 advantages=logp * 10, policy_inputs={"x": torch.arange(12.0).view(2, 3, 2)},
                 row_inputs={"cond": torch.tensor([[7.0], [8.0]])})


def test_select_cells_takes_each_cells_step_input_and_its_rows_input():
    b = _batch()
    ids = b.sample_ids("cell")
    assert ids.tolist() == [0, 1, 2, 3, 4]  # row * T + step of the valid cells
    mb = b.select(torch.tensor([4, 0]), "cell")
    assert mb.logp_old.tolist() == [[4.0], [0.0]] and mb.advantages.tolist() == [[40.0], [0.0]]
    assert mb.policy_inputs["x"].tolist() == [[[8.0, 9.0]], [[0.0, 1.0]]]  # cell (1, 1) and (0, 0)
    assert mb.policy_inputs["cond"].tolist() == [[[8.0]], [[7.0]]]  # their rows' conditioning
    assert mb.returns is None and mb.values_old is None


def test_select_rows_and_the_loss_mask():
    b = _batch().with_(loss_mask=torch.tensor([[1.0, 0.0, 1.0], [1.0, 1.0, 1.0]]))
    assert b.sample_ids("cell").tolist() == [0, 2, 3, 4]
    mb = b.select(torch.tensor([1]), "row")
    assert mb.mask.tolist() == [[1.0, 1.0, 0.0]] and mb.policy_inputs["cond"].tolist() == [[8.0]]
    with pytest.raises(ValueError, match="unit"):
        b.select(torch.tensor([0]), "token")


def test_terminal_rewards_sit_on_each_rows_last_trained_step():
    b = _batch().with_(mask=torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 1.0]]))
    out = terminal_rewards(b, torch.tensor([2.5, -1.0]))
    assert out.rewards.tolist() == [[0.0, 2.5, 0.0], [0.0, 0.0, -1.0]]
    assert (out.rewards * out.mask).sum(1).tolist() == [2.5, -1.0]


def test_sft_on_an_env_without_demonstrations_is_refused_at_start_up():
    with pytest.raises(ConfigError, match="sft.steps > 0 needs an env with demonstrations.*env gym_control with policy gaussian_mlp"):
        validate(compose(["experiment=franka_reach_ppo", "sft.steps=5"]))
    validate(compose(["experiment=arithmetic_grpo_tiny", "sft.steps=5"]))  # text + causal_lm: fine


def test_a_reward_shaper_the_env_cannot_feed_is_refused_at_start_up():
    with pytest.raises(ConfigError, match="overlong needs a generation limit per row, which env diffusion does not have"):
        validate(compose(["experiment=ddpo_compressibility_demo", "algo.reward_shapers=[{name: overlong}]"]))
    validate(compose(["experiment=arithmetic_grpo_tiny", "algo.reward_shapers=[{name: overlong, buffer: 4}]"]))
