"""Advantage estimators checked against numbers worked out by hand.

Every expected value below is written as arithmetic on literal numbers (or a short loop
written independently of the implementation); the implementation is never used to produce
its own expected values.
"""
from __future__ import annotations

import math

import numpy as np
from types import SimpleNamespace

import pytest
import torch
from torch.testing import assert_close

from workbench.advantages import compute_advantages, gae
from workbench.batch import Batch
from workbench.config import AlgoConfig
from workbench.registry import ADVANTAGES, ConfigError

F64 = torch.float64


def t(rows):
    return torch.tensor(rows, dtype=F64)


def make_cfg(**overrides):
    cfg = dict(
        gamma=0.9,
        gae_lambda=0.8,
        scale_rewards="group",
        normalize_advantages="none",
        advantage="gae",
        advantage_clip=None,
        stat_buffer_size=4,
        stat_min_count=3,
    )
    cfg.update(overrides)
    cfg["stages"] = AlgoConfig(advantage_clip=cfg["advantage_clip"]).stages  # the clip modifier it stands for
    return SimpleNamespace(**cfg)


# ---------------------------------------------------------------- GAE

# One row, four steps, gamma = 0.9, lam = 0.8 (gamma * lam = 0.72):
#   step 0: ordinary step, recursion continues into step 1
#   step 1: true termination -> no bootstrap, recursion cut (next_values[1] = 3.0 must be ignored)
#   step 2: truncation -> bootstrapped from V(final obs) = 4.0, recursion cut
#   step 3: last step of the rollout, not done -> bootstrapped from next_values[3] = 0.7
GAE_REWARDS = [[1.0, 2.0, 0.5, -1.0]]
GAE_VALUES = [[0.5, 1.0, 2.0, 1.5]]
GAE_NEXT_VALUES = [[1.0, 3.0, 4.0, 0.7]]
GAE_DONES = [[0.0, 1.0, 1.0, 0.0]]
GAE_TRUNCATED = [[0.0, 0.0, 1.0, 0.0]]
GAE_TERMINATED = [[0.0, 1.0, 0.0, 0.0]]

_D0 = 1.0 + 0.9 * 1.0 - 0.5  # 1.4
_D1 = 2.0 - 1.0  # 1.0, no bootstrap after a termination
_D2 = 0.5 + 0.9 * 4.0 - 2.0  # 2.1, bootstrapped from the final observation
_D3 = -1.0 + 0.9 * 0.7 - 1.5  # -1.87, bootstrapped from next_values
GAE_EXPECTED_ADV = [[_D0 + 0.9 * 0.8 * _D1, _D1, _D2, _D3]]  # [2.12, 1.0, 2.1, -1.87]
GAE_EXPECTED_RET = [[_D0 + 0.72 * _D1 + 0.5, _D1 + 1.0, _D2 + 2.0, _D3 + 1.5]]


def test_gae_termination_truncation_and_final_bootstrap():
    adv, ret = gae(
        t(GAE_REWARDS), t(GAE_VALUES), t(GAE_NEXT_VALUES), t(GAE_DONES), t(GAE_TERMINATED), gamma=0.9, lam=0.8
    )
    assert_close(adv, t([[2.12, 1.0, 2.1, -1.87]]))
    assert_close(adv, t(GAE_EXPECTED_ADV))
    assert_close(ret, t(GAE_EXPECTED_RET))


def test_gae_without_dones_is_discounted_sum_of_deltas():
    rewards = [1.0, -0.5, 2.0]
    values = [0.2, 0.4, -0.3]
    next_values = [0.4, -0.3, 1.1]
    gamma, lam = 0.9, 0.8
    deltas = [rewards[i] + gamma * next_values[i] - values[i] for i in range(3)]
    # forward sum A_t = sum_k (gamma * lam)^k delta_{t+k}, independent of the backward recursion
    expected = [sum((gamma * lam) ** (k - i) * deltas[k] for k in range(i, 3)) for i in range(3)]
    zeros = t([[0.0, 0.0, 0.0]])
    adv, ret = gae(t([rewards]), t([values]), t([next_values]), zeros, zeros, gamma, lam)
    assert_close(adv, t([expected]))
    assert_close(ret, t([[expected[i] + values[i] for i in range(3)]]))


def _gae_batch():
    # Row 0 is the hand-worked example; row 1 has 2 valid steps then padding (with garbage values).
    mask = t([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 0.0, 0.0]])
    return Batch(
        logp_old=torch.zeros(2, 4, dtype=F64),
        mask=mask,
        rewards=t([GAE_REWARDS[0], [1.0, 1.0, 5.0, 5.0]]),
        dones=t([GAE_DONES[0], [0.0, 1.0, 0.0, 0.0]]),
        truncated=t([GAE_TRUNCATED[0], [0.0, 0.0, 0.0, 0.0]]),
        values=t([GAE_VALUES[0], [0.5, 0.5, 9.0, 9.0]]),
        next_values=t([GAE_NEXT_VALUES[0], [0.5, 7.0, 9.0, 9.0]]),
    )


def test_registered_gae_estimator_matches_hand_values_and_masks_padding():
    adv, ret = ADVANTAGES.get("gae")(_gae_batch(), make_cfg())
    # row 1: step 1 terminated -> delta = 1 - 0.5; step 0: 1 + 0.9 * 0.5 - 0.5 = 0.95, plus 0.72 * 0.5
    row1_adv = [0.95 + 0.72 * 0.5, 0.5, 0.0, 0.0]
    row1_ret = [0.95 + 0.72 * 0.5 + 0.5, 0.5 + 0.5, 0.0, 0.0]
    assert_close(adv, t([GAE_EXPECTED_ADV[0], row1_adv]))
    assert_close(ret, t([GAE_EXPECTED_RET[0], row1_ret]))


def test_gae_estimator_without_truncated_treats_every_done_as_termination():
    batch = _gae_batch().with_(truncated=None)
    adv, _ = ADVANTAGES.get("gae")(batch, make_cfg())
    # step 2 is now a termination: delta = 0.5 - 2.0, no bootstrap from 4.0
    assert_close(adv[0], t([2.12, 1.0, 0.5 - 2.0, -1.87]))


def test_gae_estimator_without_values_raises_config_error():
    batch = _gae_batch().with_(values=None)
    with pytest.raises(ConfigError, match="values"):
        ADVANTAGES.get("gae")(batch, make_cfg())


# ---------------------------------------------------------------- group baselines

# Five rows, two interleaved groups: id 7 -> rows 0, 2, 4 (size 3); id 3 -> rows 1, 3 (size 2).
# Outcome reward on the last valid step; lengths 4, 2, 3, 1, 4.
# Scores: row0 = 1, row1 = 1, row2 = 0, row3 = 3, row4 = 2.
GROUP_MASK = [
    [1.0, 1.0, 1.0, 1.0],
    [1.0, 1.0, 0.0, 0.0],
    [1.0, 1.0, 1.0, 0.0],
    [1.0, 0.0, 0.0, 0.0],
    [1.0, 1.0, 1.0, 1.0],
]
GROUP_REWARDS = [
    [0.0, 0.0, 0.0, 1.0],
    [0.0, 1.0, 0.0, 0.0],
    [0.0, 0.0, 0.0, 0.0],
    [3.0, 0.0, 100.0, 0.0],  # 100 sits on padding and must not count
    [0.0, 0.0, 0.0, 2.0],
]


def _group_batch(rewards=GROUP_REWARDS, group=(7, 3, 7, 3, 7), mask=GROUP_MASK):
    n, steps = len(mask), len(mask[0])
    dones = [[1.0 if (j == sum(row) - 1) else 0.0 for j in range(steps)] for row in mask]
    return Batch(
        logp_old=torch.zeros(n, steps, dtype=F64),
        mask=t(mask),
        rewards=t(rewards),
        dones=t(dones),
        group=torch.tensor(group, dtype=torch.long),
    )


def _broadcast(per_row, mask=GROUP_MASK):
    return t([[a * m for m in row] for a, row in zip(per_row, mask)])


def test_grpo_group_scale_uses_group_mean_and_unbiased_std():
    adv, ret = ADVANTAGES.get("grpo")(_group_batch(), make_cfg(scale_rewards="group"))
    # group 7: scores 1, 0, 2 -> mean 1, unbiased std sqrt((0 + 1 + 1) / 2) = 1
    # group 3: scores 1, 3 -> mean 2, unbiased std sqrt((1 + 1) / 1) = sqrt(2)
    std7, std3 = math.sqrt((0.0 + 1.0 + 1.0) / 2), math.sqrt((1.0 + 1.0) / 1)
    per_row = [(1 - 1) / std7, (1 - 2) / std3, (0 - 1) / std7, (3 - 2) / std3, (2 - 1) / std7]
    assert ret is None
    assert_close(adv, _broadcast(per_row), atol=1e-5, rtol=1e-5)


def test_grpo_batch_scale_divides_by_whole_batch_std():
    adv, _ = ADVANTAGES.get("grpo")(_group_batch(), make_cfg(scale_rewards="batch"))
    # all scores 1, 1, 0, 3, 2: mean 1.4, squared deviations 0.16 + 0.16 + 1.96 + 2.56 + 0.36 = 5.2
    batch_std = math.sqrt(5.2 / 4)
    per_row = [0.0 / batch_std, -1.0 / batch_std, -1.0 / batch_std, 1.0 / batch_std, 1.0 / batch_std]
    assert_close(adv, _broadcast(per_row), atol=1e-5, rtol=1e-5)


def test_grpo_scale_none_is_group_mean_difference():
    adv, _ = ADVANTAGES.get("grpo")(_group_batch(), make_cfg(scale_rewards="none"))
    assert_close(adv, _broadcast([1 - 1, 1 - 2, 0 - 1, 3 - 2, 2 - 1]))


def test_grpo_unknown_scale_rewards_raises_config_error():
    with pytest.raises(ConfigError, match="valid choices"):
        ADVANTAGES.get("grpo")(_group_batch(), make_cfg(scale_rewards="rows"))


def test_dr_grpo_is_group_mean_difference_regardless_of_scale_rewards():
    adv, ret = ADVANTAGES.get("dr_grpo")(_group_batch(), make_cfg(scale_rewards="group"))
    assert ret is None
    assert_close(adv, _broadcast([1 - 1, 1 - 2, 0 - 1, 3 - 2, 2 - 1]))


def test_rloo_subtracts_leave_one_out_mean():
    adv, ret = ADVANTAGES.get("rloo")(_group_batch(), make_cfg())
    per_row = [
        1 - (0 + 2) / 2,  # row 0 vs rows 2, 4
        1 - 3 / 1,  # row 1 vs row 3
        0 - (1 + 2) / 2,  # row 2 vs rows 0, 4
        3 - 1 / 1,  # row 3 vs row 1
        2 - (1 + 0) / 2,  # row 4 vs rows 0, 2
    ]
    assert ret is None
    assert_close(adv, _broadcast(per_row))


@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "rloo"])
def test_group_estimators_are_zero_on_padding(name):
    adv, _ = ADVANTAGES.get(name)(_group_batch(), make_cfg(scale_rewards="group"))
    padding = t(GROUP_MASK) == 0
    assert bool((adv[padding] == 0).all())


@pytest.mark.parametrize("name,scale", [("grpo", "group"), ("grpo", "batch"), ("grpo", "none"), ("dr_grpo", "group"), ("rloo", "group")])
def test_group_with_equal_rewards_gives_zero_advantages_without_nan(name, scale):
    # group 7 all score 1.0; group 3 scores 0.0 and 2.0 (so the batch std is not zero)
    rewards = [
        [0.0, 0.0, 0.0, 1.0],
        [0.0, 0.0, 0.0, 0.0],
        [0.0, 0.0, 1.0, 0.0],
        [2.0, 0.0, 0.0, 0.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
    adv, _ = ADVANTAGES.get(name)(_group_batch(rewards=rewards), make_cfg(scale_rewards=scale))
    assert not bool(torch.isnan(adv).any())
    assert_close(adv[[0, 2, 4]], torch.zeros(3, 4, dtype=F64))


def test_grpo_whole_batch_equal_rewards_gives_zero_without_nan():
    rewards = [[0.0, 0.0, 0.0, 1.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]
    for scale in ("group", "batch", "none"):
        adv, _ = ADVANTAGES.get("grpo")(_group_batch(rewards=rewards), make_cfg(scale_rewards=scale))
        assert not bool(torch.isnan(adv).any())
        assert_close(adv, torch.zeros(5, 4, dtype=F64))


def test_rloo_raises_value_error_for_single_member_group():
    batch = _group_batch(group=(7, 3, 7, 5, 7))  # group 5 has only row 3; group 3 only row 1
    with pytest.raises(ValueError, match="at least 2"):
        ADVANTAGES.get("rloo")(batch, make_cfg())


def test_group_estimator_without_group_raises_config_error():
    batch = _group_batch().with_(group=None)
    with pytest.raises(ConfigError, match="group"):
        ADVANTAGES.get("grpo")(batch, make_cfg())


# ---------------------------------------------------------------- REINFORCE++


def test_reinforce_pp_discounted_reward_to_go_cut_at_dones_and_whitened():
    gamma = 0.5
    batch = Batch(
        logp_old=torch.zeros(2, 3, dtype=F64),
        mask=t([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]]),
        rewards=t([[1.0, 3.0, 2.0], [0.0, 4.0, 0.0]]),
        dones=t([[0.0, 1.0, 0.0], [0.0, 1.0, 0.0]]),
    )
    adv, ret = ADVANTAGES.get("reinforce_pp")(batch, make_cfg(gamma=gamma))
    # row 0: step 2 -> 2; step 1 ends an episode -> 3; step 0 -> 1 + 0.5 * 3 = 2.5
    # row 1: step 1 -> 4; step 0 -> 0 + 0.5 * 4 = 2; step 2 is padding
    rtg = [2.5, 3.0, 2.0, 2.0, 4.0]
    mean = (2.5 + 3.0 + 2.0 + 2.0 + 4.0) / 5  # 2.7
    std = math.sqrt(((-0.2) ** 2 + 0.3**2 + (-0.7) ** 2 + (-0.7) ** 2 + 1.3**2) / (5 - 1))  # sqrt(0.7)
    w = [(x - mean) / std for x in rtg]
    assert ret is None
    assert_close(adv, t([[w[0], w[1], w[2]], [w[3], w[4], 0.0]]), atol=1e-7, rtol=1e-7)


# ---------------------------------------------------------------- compute_advantages


def test_compute_advantages_batch_normalisation_whitens_over_valid_steps():
    batch = _group_batch()
    out = compute_advantages(batch, make_cfg(advantage="dr_grpo", normalize_advantages="batch"))
    # dr_grpo per-row advantages 0, -1, -1, 1, 1 over 4, 2, 3, 1, 4 valid steps (14 entries)
    # sum = 0 - 2 - 3 + 1 + 4 = 0 -> mean 0; sum of squares = 0 + 2 + 3 + 1 + 4 = 10
    std = math.sqrt(10 / (14 - 1))
    expected = _broadcast([0.0, -1.0 / std, -1.0 / std, 1.0 / std, 1.0 / std])
    assert_close(out.advantages, expected, atol=1e-7, rtol=1e-7)
    assert out.returns is None
    assert batch.advantages is None  # the input batch is left untouched


def test_compute_advantages_without_batch_normalisation_keeps_raw_values():
    out = compute_advantages(_gae_batch(), make_cfg(advantage="gae", normalize_advantages="minibatch"))
    assert_close(out.advantages[0], t(GAE_EXPECTED_ADV[0]))
    assert_close(out.returns[0], t(GAE_EXPECTED_RET[0]))


# ---------------------------------------------------------------- registry


def test_unknown_estimator_raises_config_error_listing_valid_choices():
    with pytest.raises(ConfigError) as info:
        ADVANTAGES.get("ppo_magic")
    message = str(info.value)
    assert "ppo_magic" in message
    assert "valid choices" in message
    for name in ("dr_grpo", "gae", "grpo", "reinforce_pp", "rloo"):
        assert name in message


def test_compute_advantages_with_unknown_estimator_raises_config_error():
    with pytest.raises(ConfigError, match="valid choices"):
        compute_advantages(_gae_batch(), make_cfg(advantage="nope"))


def test_gae_recursion_stops_at_padding_after_a_non_terminal_step():
    """A row padded after a step that is not an episode end bootstraps from next_values
    and never reads the junk that sits in the padding."""
    from types import SimpleNamespace

    from workbench.advantages import ADVANTAGES
    from workbench.batch import Batch

    t = lambda *v: torch.tensor([v], dtype=torch.float64)  # noqa: E731
    batch = Batch(
        logp_old=t(0, 0, 0), mask=t(1, 1, 0), rewards=t(1.0, 2.0, 99.0), dones=t(0, 0, 0),
        truncated=t(0, 0, 0), values=t(0.5, 1.0, 50.0), next_values=t(1.0, 3.0, 60.0),
    )
    cfg = SimpleNamespace(gamma=0.9, gae_lambda=0.8)
    adv, _ = ADVANTAGES.get("gae")(batch, cfg)
    d1 = 2.0 + 0.9 * 3.0 - 1.0  # last valid step bootstraps from its next value
    d0 = 1.0 + 0.9 * 1.0 - 0.5
    torch.testing.assert_close(adv, t(d0 + 0.9 * 0.8 * d1, d1, 0.0))


def test_per_prompt_stat_tracking_uses_batch_stats_until_the_buffer_fills_then_its_history():
    """DDPO's tracker by hand: prompt 7 has 2 rewards (< min_count 3) -> batch mean/std; the
    next iteration it holds 4 (buffer 4) -> its own mean/std, the oldest dropped after that."""
    from workbench.advantages import compute_advantages
    from workbench.batch import Batch

    def batch(rewards, groups):
        r = torch.tensor(rewards, dtype=torch.float64)[:, None]
        return Batch(logp_old=torch.zeros_like(r), mask=torch.ones_like(r), rewards=r, dones=torch.ones_like(r),
                     group=torch.tensor(groups))

    cfg = make_cfg(advantage="per_prompt")
    state = {}
    first = compute_advantages(batch([1.0, 3.0, 10.0, 14.0], [7, 7, 9, 9]), cfg, state).advantages[:, 0]
    allr = np.array([1.0, 3.0, 10.0, 14.0])
    expected = (allr - allr.mean()) / (allr.std() + 1e-6)  # population std, as numpy / DDPO
    np.testing.assert_allclose(first.numpy(), expected, rtol=1e-9)
    assert state["per_prompt"] == {7: [1.0, 3.0], 9: [10.0, 14.0]}
    second = compute_advantages(batch([5.0, 7.0], [7, 7]), cfg, state).advantages[:, 0]
    hist = np.array([1.0, 3.0, 5.0, 7.0])
    np.testing.assert_allclose(second.numpy(), (np.array([5.0, 7.0]) - hist.mean()) / (hist.std() + 1e-6), rtol=1e-9)
    compute_advantages(batch([9.0], [7]), cfg, state)
    assert state["per_prompt"][7] == [3.0, 5.0, 7.0, 9.0]  # buffer_size 4: the oldest reward left


def test_advantage_clip_bounds_advantages():
    from workbench.advantages import compute_advantages
    from workbench.batch import Batch

    r = torch.tensor([[0.0], [0.0], [0.0], [100.0]])
    b = Batch(logp_old=torch.zeros_like(r), mask=torch.ones_like(r), rewards=r, dones=torch.ones_like(r), group=torch.zeros(4).long())
    free = compute_advantages(b, make_cfg(advantage="dr_grpo")).advantages
    clipped = compute_advantages(b, make_cfg(advantage="dr_grpo", advantage_clip=5.0)).advantages
    assert float(free.max()) == 75.0 and float(free.min()) == -25.0
    assert clipped.flatten().tolist() == [-5.0, -5.0, -5.0, 5.0]


def test_reinforce_pp_defaults_to_gamma_one_and_gae_to_099():
    # REINFORCE++ (and OpenRLHF's default) does not discount over tokens: gamma = 1 unless set
    from workbench.config import AlgoConfig

    assert AlgoConfig(advantage="reinforce_pp").gamma == 1.0
    assert AlgoConfig(advantage="gae").gamma == 0.99 and AlgoConfig().gamma == 0.99
    assert AlgoConfig(advantage="reinforce_pp", gamma=0.9).gamma == 0.9
    # a 3-token completion with its outcome reward 1 on the last token: every token's reward-to-go is 1
    batch = Batch(logp_old=torch.zeros(2, 3, dtype=F64), mask=t([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]]),
                  rewards=t([[0.0, 0.0, 1.0], [0.0, 0.0, 0.0]]), dones=t([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0]]))
    adv, _ = ADVANTAGES.get("reinforce_pp")(batch, AlgoConfig(advantage="reinforce_pp"))
    # rtg = [1, 1, 1, 0, 0]: mean 0.6, unbiased std sqrt((3 * 0.16 + 2 * 0.36) / 4) = sqrt(0.3)
    hi, lo = 0.4 / math.sqrt(0.3), -0.6 / math.sqrt(0.3)
    assert_close(adv, t([[hi, hi, hi], [lo, lo, 0.0]]), atol=1e-6, rtol=1e-6)
