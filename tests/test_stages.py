"""Algorithm stages (workbench/stages): each stage against a hand-computed example, the generic
config checks, and the flat TRL/verl aliases of AlgoConfig."""
import math

import pytest
import torch

from workbench import registry
from workbench.batch import Batch, Minibatch, PolicyOutput
from workbench.config import AlgoConfig, compose, validate
from workbench.objectives import objective
from workbench.registry import ConfigError
from workbench.stages import ADVANTAGE_MODIFIERS, BATCH_FILTERS, LOSS_MODIFIERS, REWARD_SHAPERS, STEP_SELECTORS


def t(*rows):
    return torch.tensor(rows, dtype=torch.float64)


def stage(kind, entry):
    return kind.build(entry, "test")


def minibatch(**kw):
    fields = dict(logp_old=t([-1.0, -1.0]), mask=t([1.0, 1.0]), advantages=t([1.0, 1.0]), returns=None,
                  values_old=None, ref_logp=None, policy_inputs={})
    return Minibatch(**{**fields, **kw})


# ---------------------------------------------------------------- loss modifiers

def test_tis_weights_each_step_by_the_capped_ratio_and_logs_the_mean_weight():
    tis = stage(LOSS_MODIFIERS, {"name": "tis", "cap": 1.2})
    mb = minibatch(rollout_logp=t([-1.5, -0.5]))  # pi_old / pi_sampler = e^0.5 = 1.65 (capped to 1.2), e^-0.5
    pg, metrics = tis(t([2.0, 3.0]), PolicyOutput(logp=t([-1.0, -1.0])), mb)
    torch.testing.assert_close(pg, t([2.0 * 1.2, 3.0 * math.exp(-0.5)]))
    assert float(metrics["policy/tis_weight"]) == pytest.approx((1.2 + math.exp(-0.5)) / 2)
    unchanged, none = tis(t([2.0, 3.0]), PolicyOutput(logp=t([-1.0, -1.0])), minibatch())  # the trained model sampled
    assert unchanged.tolist() == [[2.0, 3.0]] and none == {}


def test_top_entropy_keeps_only_the_loss_of_the_highest_entropy_tokens():
    top = stage(LOSS_MODIFIERS, {"name": "top_entropy", "quantile": 0.5})
    out = PolicyOutput(logp=t([-1.0] * 4), entropy=t([0.1, 2.0, 0.5, 3.0]))
    # threshold = median of the 4 valid entropies = (0.5 + 2.0) / 2 = 1.25: tokens 1 and 3 stay
    pg, _ = top(t([1.0, 2.0, 3.0, 4.0]), out, minibatch(logp_old=t([-1.0] * 4), mask=t([1.0] * 4), advantages=t([1.0] * 4)))
    assert pg.tolist() == [[0.0, 2.0, 0.0, 4.0]]
    with pytest.raises(ConfigError, match="per-token entropy"):
        top(t([1.0, 2.0]), PolicyOutput(logp=t([-1.0, -1.0])), minibatch())


def test_objective_applies_listed_loss_modifiers_exactly_like_their_aliases():
    mb = minibatch(rollout_logp=t([-1.5, -0.5]), logp_old=t([-1.0, -0.7]))
    out = PolicyOutput(logp=t([-0.9, -1.0]), entropy=t([0.1, 2.0]))
    base = dict(advantage="grpo", vf_coef=0.0, normalize_advantages="none")
    by_alias, m1 = objective(out, mb, AlgoConfig(**base, tis_cap=1.2, top_entropy_quantile=0.5))
    listed, m2 = objective(out, mb, AlgoConfig(**base, loss_modifiers=[{"name": "tis", "cap": 1.2},
                                                                          {"name": "top_entropy", "quantile": 0.5}]))
    assert torch.equal(by_alias, listed) and torch.equal(m1["policy/tis_weight"], m2["policy/tis_weight"])


# ---------------------------------------------------------------- advantage modifiers

def test_clip_bounds_advantages():
    clip = stage(ADVANTAGE_MODIFIERS, {"name": "clip", "bound": 5})
    assert clip(t([-7.0, 0.5, 9.0]), None).tolist() == [[-5.0, 0.5, 5.0]]


# ---------------------------------------------------------------- reward shapers

def overlong_batch(lengths, max_steps):
    mask = torch.tensor([[1.0] * n + [0.0] * (12 - n) for n in lengths])
    return Batch(logp_old=torch.zeros_like(mask), mask=mask, rewards=torch.zeros_like(mask), dones=torch.zeros_like(mask),
                 max_steps=max_steps)


def test_overlong_punishes_lengths_in_the_buffer_linearly():
    shaper = stage(REWARD_SHAPERS, {"name": "overlong", "buffer": 4, "penalty": 2.0})
    # L_max 10, buffer 4: free up to 6; 7 -> (6 - 7) / 4 * 2 = -0.5; 9 -> -1.5; 10 -> -2; beyond -> -2
    got = shaper(overlong_batch([1, 6, 7, 9, 10, 12], max_steps=10))
    assert got.dtype == torch.float64 and got.tolist() == [0.0, 0.0, -0.5, -1.5, -2.0, -2.0]
    with pytest.raises(ConfigError, match="exceeds the generation limit 3"):
        shaper(overlong_batch([1], max_steps=3))
    with pytest.raises(ConfigError, match="Batch.max_steps"):
        shaper(overlong_batch([1], max_steps=None))


# ---------------------------------------------------------------- batch filters

def test_dynamic_sampling_keeps_the_first_groups_whose_rewards_differ():
    keep = stage(BATCH_FILTERS, {"name": "dynamic_sampling"})
    scores = t([1.0, 1.0, 0.0, 1.0, 0.5, 0.5 + 1e-7, 2.0, 0.0])[0]  # groups 1 and 3 vary; 2 is within 1e-6
    group = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    assert keep(scores, group).tolist() == [1, 3]
    assert keep(scores, torch.tensor([7, 7, 3, 3, 9, 9, 5, 5])).tolist() == [3, 5]  # ids, ascending
    assert keep.cfg.max_rounds == 4


# ---------------------------------------------------------------- step selectors

def test_window_selector_keeps_the_window_and_grows_it_backwards():
    window = stage(STEP_SELECTORS, {"name": "window", "window": [1, -1]})
    assert window(torch.ones(2, 5), 0, None).tolist() == [[0, 1, 1, 1, 0]] * 2
    progressive = stage(STEP_SELECTORS, {"name": "window", "progressive_start": 1, "progressive_iterations": 10})
    # 1 + floor(i * (5 - 1 + 1) / 10) of 5 steps, the last ones
    assert progressive(torch.ones(1, 5), 0, None).tolist() == [[0, 0, 0, 0, 1]]
    assert progressive(torch.ones(1, 5), 2, None).tolist() == [[0, 0, 0, 1, 1]]
    assert progressive(torch.ones(1, 5), 4, None).tolist() == [[0, 0, 1, 1, 1]]
    assert progressive(torch.ones(1, 5), 10, None).tolist() == [[1, 1, 1, 1, 1]]


def test_timestep_fraction_trains_a_random_share_of_each_rows_steps_with_one_draw():
    fraction = stage(STEP_SELECTORS, {"name": "timestep_fraction", "fraction": 0.5})
    window = torch.tensor([[0.0, 1.0, 1.0, 1.0, 1.0, 0.0]] * 3)
    generator = torch.Generator().manual_seed(0)
    mask = fraction(window, 0, generator)
    assert mask.sum(1).tolist() == [2.0, 2.0, 2.0] and bool((mask <= window).all())  # 2 of each row's 4 steps
    replay = torch.Generator().manual_seed(0)
    torch.rand(3, 4, generator=replay)  # the one draw it makes
    assert torch.equal(torch.rand(5, generator=generator), torch.rand(5, generator=replay))
    assert torch.equal(stage(STEP_SELECTORS, {"name": "timestep_fraction"})(window, 0, None), window)


# ---------------------------------------------------------------- config checks and aliases

def test_bad_entries_fail_with_one_line_naming_the_key():
    with pytest.raises(ConfigError, match=r"algo.loss_modifiers\[0\]: loss modifier 'tis' has no option 'capp'; valid options: cap"):
        AlgoConfig(loss_modifiers=[{"name": "tis", "capp": 2.0}])
    with pytest.raises(ConfigError, match=r"algo.loss_modifiers\[0\]: unknown loss modifier 'tiss'; valid choices: tis, top_entropy"):
        AlgoConfig(loss_modifiers=[{"name": "tiss"}])
    with pytest.raises(ConfigError, match=r"algo.advantage_modifiers\[0\]: advantage modifier 'clip': bound must be > 0"):
        AlgoConfig(advantage_modifiers=[{"name": "clip", "bound": -1.0}])
    with pytest.raises(ConfigError, match="bad value for 'cap'"):
        AlgoConfig(loss_modifiers=[{"name": "tis", "cap": "high"}])
    with pytest.raises(ConfigError, match=r"algo.reward_shapers\[0\] must be a mapping"):
        AlgoConfig(reward_shapers=["overlong"])
    with pytest.raises(ConfigError, match="names 'tis' twice"):
        AlgoConfig(loss_modifiers=[{"name": "tis"}, {"name": "tis", "cap": 3.0}])
    with pytest.raises(ConfigError, match="algo.advantage_clip"):
        AlgoConfig(advantage_clip=0.0)
    with pytest.raises(ConfigError, match="algo.top_entropy_quantile"):
        AlgoConfig(top_entropy_quantile=1.5)


def test_flat_aliases_are_stages_and_conflicts_are_refused():
    stages = AlgoConfig(tis_cap=2.0, top_entropy_quantile=0.2, advantage_clip=5.0,
                        loss_modifiers=[{"name": "top_entropy", "quantile": 0.2}]).stages
    assert [(s.name, s.cfg) for s in stages.loss_modifiers] == [
        ("tis", LOSS_MODIFIERS.get("tis").Config(cap=2.0)), ("top_entropy", LOSS_MODIFIERS.get("top_entropy").Config(0.2))]
    assert [s.name for s in stages.advantage_modifiers] == ["clip"] and stages.advantage_modifiers[0].cfg.bound == 5.0
    assert AlgoConfig().stages.loss_modifiers == [] and AlgoConfig(top_entropy_quantile=1.0).stages.loss_modifiers == []
    with pytest.raises(ConfigError, match=r"algo.tis_cap=2.0 but algo.loss_modifiers gives tis cap=3.0; drop one"):
        AlgoConfig(tis_cap=2.0, loss_modifiers=[{"name": "tis", "cap": 3.0}])


def test_stage_lists_come_from_the_command_line_and_show_in_workbench_list():
    run = validate(compose(["experiment=arithmetic_grpo_tiny", "algo.loss_modifiers=[{name: tis, cap: 2.5}]",
                            "algo.reward_shapers=[{name: overlong, buffer: 8, penalty: 0.5}]"]))
    assert run.algo.stages.loss_modifiers[0].cfg.cap == 2.5 and run.algo.stages.reward_shapers[0].cfg.buffer == 8
    for kind in ("loss_modifiers", "advantage_modifiers", "reward_shapers", "batch_filters", "step_selectors"):
        assert registry.ALL[kind].names()


def test_reward_shapers_put_their_term_on_each_rows_last_valid_step():
    from workbench.stages.reward_shapers import shape_rewards

    # two completions of 3 and 1 tokens under a generation limit of 4; overlong buffer 2, penalty 1:
    # |y| = 3 -> (2 - 3) / 2 = -0.5; |y| = 1 -> 0
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    rewards = torch.tensor([[0.0, 0.0, 1.0, 0.0], [2.0, 0.0, 0.0, 0.0]])
    batch = Batch(logp_old=torch.zeros(2, 4), mask=mask, rewards=rewards, dones=torch.zeros(2, 4), max_steps=4)
    shaper = stage(REWARD_SHAPERS, {"name": "overlong", "buffer": 2, "penalty": 1.0})
    shaped, metrics = shape_rewards(batch, [shaper])
    assert shaped.rewards.tolist() == [[0.0, 0.0, 0.5, 0.0], [2.0, 0.0, 0.0, 0.0]]
    assert metrics == {"reward/overlong": -0.25}
    assert batch.rewards.tolist() == rewards.tolist()  # batches are values: the input is unchanged
