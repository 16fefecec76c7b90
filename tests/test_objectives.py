"""Objective pieces checked against numbers worked out by hand."""
from __future__ import annotations

import dataclasses
import math
from types import SimpleNamespace

import pytest
import torch
from torch.testing import assert_close

from workbench.batch import Minibatch
from workbench.config import AlgoConfig
from workbench.objectives import (
    PolicyOutput,
    clipped_surrogate,
    kl_k1,
    kl_k2,
    kl_k3,
    log_ratio,
    objective,
    seq_mean_token_mean,
    seq_mean_token_sum,
    seq_mean_token_sum_norm,
    token_mean,
    value_loss,
)
from workbench.registry import KL_ESTIMATORS, LOSS_AGGREGATIONS, POLICY_LOSSES, ConfigError

F64 = torch.float64


def t(rows):
    return torch.tensor(rows, dtype=F64)


def lr_of(ratios):
    return torch.log(t(ratios))


# ---------------------------------------------------------------- clipped surrogate


# The clipped indicator is returned as float32 (``.float()``) whatever the input dtype, so
# indicator comparisons use check_dtype=False.


def test_clipped_surrogate_positive_advantage():
    loss, clipped = clipped_surrogate(lr_of([[0.5, 1.1, 1.5]]), t([[2.0, 2.0, 2.0]]), epsilon=0.2)
    # max(-A r, -A clip(r, 0.8, 1.2))
    expected = [max(-2.0 * 0.5, -2.0 * 0.8), -2.0 * 1.1, max(-2.0 * 1.5, -2.0 * 1.2)]  # -1.0, -2.2, -2.4
    assert_close(loss, t([expected]))
    assert_close(clipped, t([[0.0, 0.0, 1.0]]), check_dtype=False)


def test_clipped_surrogate_negative_advantage():
    loss, clipped = clipped_surrogate(lr_of([[0.5, 1.1, 1.5]]), t([[-2.0, -2.0, -2.0]]), epsilon=0.2)
    expected = [max(2.0 * 0.5, 2.0 * 0.8), 2.0 * 1.1, max(2.0 * 1.5, 2.0 * 1.2)]  # 1.6, 2.2, 3.0
    assert_close(loss, t([expected]))
    assert_close(clipped, t([[1.0, 0.0, 0.0]]), check_dtype=False)


def test_clipped_surrogate_is_registered_as_clip():
    from types import SimpleNamespace

    cfg = SimpleNamespace(epsilon=0.2, epsilon_high=0.28, dual_clip=3.0)
    lr, adv = lr_of([[0.5, 1.1, 1.5]]), t([[2.0, -2.0, 2.0]])
    for got, want in zip(POLICY_LOSSES.get("clip")(lr, adv, cfg), clipped_surrogate(lr, adv, 0.2, 0.28, 3.0)):
        torch.testing.assert_close(got, want)


def test_asymmetric_clip_changes_only_upper_bound():
    ratios = [[1.25, 1.5, 0.5, 0.7]]
    adv = t([[1.0, 1.0, -1.0, 1.0]])
    sym, sym_clipped = clipped_surrogate(lr_of(ratios), adv, epsilon=0.2)
    asym, asym_clipped = clipped_surrogate(lr_of(ratios), adv, epsilon=0.2, epsilon_high=0.28)
    # symmetric bounds [0.8, 1.2]
    assert_close(sym, t([[-1.2, -1.2, 0.8, -0.7]]))
    assert_close(sym_clipped, t([[1.0, 1.0, 1.0, 0.0]]), check_dtype=False)
    # upper bound 1.28: 1.25 is no longer clipped, 1.5 is clipped at 1.28; lower bound still 0.8
    assert_close(asym, t([[-1.25, -1.28, 0.8, -0.7]]))
    assert_close(asym_clipped, t([[0.0, 1.0, 1.0, 0.0]]), check_dtype=False)


def test_dual_clip_caps_negative_advantage_loss_and_leaves_positive_unchanged():
    ratios = [[5.0, 2.0, 5.0, 0.1]]
    adv = t([[-1.0, -1.0, 1.0, 1.0]])
    loss, _ = clipped_surrogate(lr_of(ratios), adv, epsilon=0.2, dual_clip=3.0)
    expected = [
        min(max(1.0 * 5.0, 1.0 * 1.2), 3.0 * 1.0),  # 5 capped at -c * A = 3
        max(1.0 * 2.0, 1.0 * 1.2),  # 2 < 3, unchanged
        max(-5.0, -1.2),  # positive A: -1.2, unchanged
        max(-0.1, -0.8),  # positive A: -0.1 (not lowered to -c * A = -3)
    ]
    assert_close(loss, t([expected]))
    plain, _ = clipped_surrogate(lr_of(ratios), adv, epsilon=0.2)
    assert_close(loss[:, 2:], plain[:, 2:])


@pytest.mark.parametrize("c", [1.0, 0.5])
def test_dual_clip_not_above_one_raises_config_error(c):
    with pytest.raises(ConfigError):
        clipped_surrogate(lr_of([[1.0]]), t([[-1.0]]), epsilon=0.2, dual_clip=c)


# ---------------------------------------------------------------- log ratio

LOGP = [[-1.0, -2.0, -0.5], [-0.3, -0.7, -9.0]]
LOGP_OLD = [[-1.5, -1.0, -0.5], [-0.2, -0.9, 0.0]]
RAGGED = [[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]]


def test_log_ratio_sequence_level_is_masked_mean_broadcast_per_token():
    out = log_ratio(t(LOGP), t(LOGP_OLD), t(RAGGED), "sequence")
    row0 = (0.5 + (-1.0) + 0.0) / 3  # -1/6
    row1 = ((-0.1) + 0.2) / 2  # 0.05; the padded token (-9.0) is left out
    assert_close(out, t([[row0] * 3, [row1] * 3]))


def test_log_ratio_sequence_level_gradient_is_one_per_token():
    logp = t(LOGP).requires_grad_(True)
    out = log_ratio(logp, t(LOGP_OLD), t(RAGGED), "sequence")
    out.sum().backward()
    assert_close(logp.grad, torch.ones(2, 3, dtype=F64))
    # and each token's log-ratio depends only on its own logp (identity Jacobian)
    jac = torch.autograd.functional.jacobian(lambda lp: log_ratio(lp, t(LOGP_OLD), t(RAGGED), "sequence"), t(LOGP))
    assert_close(jac.reshape(6, 6), torch.eye(6, dtype=F64))


def test_log_ratio_token_level_is_logp_minus_old():
    out = log_ratio(t(LOGP), t(LOGP_OLD), t(RAGGED), "token")
    assert_close(out, t([[-1.0 + 1.5, -2.0 + 1.0, 0.0], [-0.3 + 0.2, -0.7 + 0.9, -9.0]]))


def test_log_ratio_bad_level_raises_config_error():
    with pytest.raises(ConfigError, match="valid choices"):
        log_ratio(t(LOGP), t(LOGP_OLD), t(RAGGED), "trajectory")


# ---------------------------------------------------------------- loss aggregation

AGG_LOSS = [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]
AGG_MASK = [[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]]


def test_token_mean_aggregation():
    assert_close(token_mean(t(AGG_LOSS), t(AGG_MASK)), t((1.0 + 2.0 + 4.0) / 3))


def test_seq_mean_token_mean_aggregation():
    assert_close(seq_mean_token_mean(t(AGG_LOSS), t(AGG_MASK)), t(((1.0 + 2.0) / 2 + 4.0 / 1) / 2))


def test_seq_mean_token_sum_aggregation():
    assert_close(seq_mean_token_sum(t(AGG_LOSS), t(AGG_MASK)), t(((1.0 + 2.0) + 4.0) / 2))


def test_seq_mean_token_sum_norm_needs_a_constant():
    # the padded width of a minibatch changes every iteration: it is never the normaliser
    with pytest.raises(ConfigError, match="algo.loss_agg_norm"):
        seq_mean_token_sum_norm(t(AGG_LOSS), t(AGG_MASK))
    with pytest.raises(ConfigError, match="algo.loss_agg_norm"):
        seq_mean_token_sum_norm(t(AGG_LOSS), t(AGG_MASK), None)


def test_dr_grpo_normaliser_is_the_generation_limit_whatever_the_padding():
    # Dr.GRPO: sum of valid token losses / (rows x max generation length). The env's limit
    # (Minibatch.max_steps) is the constant when algo.loss_agg_norm is unset; padding the
    # minibatch wider must not change the loss.
    cfg = obj_cfg(loss_agg_mode="seq-mean-token-sum-norm", vf_coef=0.0, ent_coef=0.0, beta=0.0)
    adv = t([[1.0, 1.0, 0.0], [-2.0, 0.0, 0.0]])
    mask = t(AGG_MASK)  # 3 valid tokens
    for extra in (0, 5):
        pad = lambda x: torch.nn.functional.pad(x, (0, extra))  # noqa: E731
        mb = Minibatch(logp_old=pad(torch.zeros(2, 3, dtype=torch.float64)), mask=pad(mask), advantages=pad(adv),
                       returns=None, values_old=None, ref_logp=None, policy_inputs={}, max_steps=10)
        loss, _ = objective(PolicyOutput(logp=pad(torch.zeros(2, 3, dtype=torch.float64))), mb, cfg)
        # ratio 1: per-token loss -A -> (-1 - 1 + 2) / (2 x 10) = 0
        assert_close(loss, t(0.0))
        adv2 = pad(t([[1.0, 0.5, 0.0], [3.0, 0.0, 0.0]]))
        loss, _ = objective(PolicyOutput(logp=pad(torch.zeros(2, 3, dtype=torch.float64))),
                            dataclasses.replace(mb, advantages=adv2), cfg)
        assert_close(loss, t(-(1.0 + 0.5 + 3.0) / (2 * 10)))
    # an explicit algo.loss_agg_norm wins over the env's limit
    loss, _ = objective(PolicyOutput(logp=torch.zeros(2, 3, dtype=torch.float64)),
                        Minibatch(logp_old=torch.zeros(2, 3, dtype=torch.float64), mask=mask,
                                  advantages=t([[1.0, 0.5, 0.0], [3.0, 0.0, 0.0]]), returns=None, values_old=None,
                                  ref_logp=None, policy_inputs={}, max_steps=10), obj_cfg(
                            loss_agg_mode="seq-mean-token-sum-norm", loss_agg_norm=4.0, vf_coef=0.0, ent_coef=0.0, beta=0.0))
    assert_close(loss, t(-(1.0 + 0.5 + 3.0) / (2 * 4)))


def test_seq_mean_token_sum_norm_with_norm_constant():
    assert_close(seq_mean_token_sum_norm(t(AGG_LOSS), t(AGG_MASK), 10.0), t((1.0 + 2.0 + 4.0) / (2 * 10.0)))


@pytest.mark.parametrize(
    "name,fn",
    [
        ("token-mean", token_mean),
        ("seq-mean-token-mean", seq_mean_token_mean),
        ("seq-mean-token-sum", seq_mean_token_sum),
        ("seq-mean-token-sum-norm", seq_mean_token_sum_norm),
    ],
)
def test_aggregation_modes_are_registered(name, fn):
    assert LOSS_AGGREGATIONS.get(name) is fn


def test_seq_mean_token_mean_skips_fully_masked_row():
    loss = t([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]])
    mask = t([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    assert_close(seq_mean_token_mean(loss, mask), t(((1.0 + 2.0) / 2 + 7.0) / 2))


def test_aggregation_of_fully_masked_minibatch_is_zero_not_nan():
    loss = t([[1.0, 2.0], [3.0, 4.0]])
    mask = torch.zeros(2, 2, dtype=F64)
    assert_close(seq_mean_token_mean(loss, mask), t(0.0))
    assert_close(token_mean(loss, mask), t(0.0))


# ---------------------------------------------------------------- KL estimators

KL_LOGP = [[-1.0, -2.0, -0.5]]
KL_REF = [[-1.5, -1.0, -0.5]]


def test_kl_k1():
    assert_close(kl_k1(t(KL_LOGP), t(KL_REF)), t([[-1.0 + 1.5, -2.0 + 1.0, 0.0]]))


def test_kl_k2():
    assert_close(kl_k2(t(KL_LOGP), t(KL_REF)), t([[0.5 * 0.5**2, 0.5 * 1.0**2, 0.0]]))


def test_kl_k3():
    # r = ref - logp = -0.5, 1.0, 0.0; k3 = exp(r) - r - 1
    expected = [math.exp(-0.5) + 0.5 - 1.0, math.exp(1.0) - 1.0 - 1.0, 0.0]
    assert_close(kl_k3(t(KL_LOGP), t(KL_REF)), t([expected]))


def test_kl_k3_nonnegative_and_zero_when_equal():
    g = torch.Generator().manual_seed(0)
    logp = -torch.rand(4, 7, generator=g, dtype=F64) * 5
    ref = -torch.rand(4, 7, generator=g, dtype=F64) * 5
    assert bool((kl_k3(logp, ref) >= 0).all())
    assert_close(kl_k3(logp, logp), torch.zeros(4, 7, dtype=F64))


def test_kl_estimators_registered():
    assert KL_ESTIMATORS.get("k1") is kl_k1
    assert KL_ESTIMATORS.get("k2") is kl_k2
    assert KL_ESTIMATORS.get("k3") is kl_k3


# ---------------------------------------------------------------- value loss

V = [[1.0, 2.0, 2.9]]
V_OLD = [[0.8, 1.0, 0.5]]
RETURNS = [[1.5, 1.0, 3.0]]


def test_value_loss_unclipped():
    expected = [0.5 * (1.0 - 1.5) ** 2, 0.5 * (2.0 - 1.0) ** 2, 0.5 * (2.9 - 3.0) ** 2]
    assert_close(value_loss(t(V), t(V_OLD), t(RETURNS), None), t([expected]))
    assert_close(value_loss(t(V), None, t(RETURNS), 0.2), t([expected]))


def test_value_loss_clipped():
    # clipped values: 0.8 + 0.2 = 1.0, 1.0 + 0.2 = 1.2, 0.5 + 0.2 = 0.7
    expected = [
        0.5 * max((1.0 - 1.5) ** 2, (1.0 - 1.5) ** 2),  # 0.125
        0.5 * max((2.0 - 1.0) ** 2, (1.2 - 1.0) ** 2),  # unclipped larger: 0.5
        0.5 * max((2.9 - 3.0) ** 2, (0.7 - 3.0) ** 2),  # clipped larger: 0.5 * 5.29
    ]
    assert_close(value_loss(t(V), t(V_OLD), t(RETURNS), 0.2), t([expected]))
    assert_close(value_loss(t(V), t(V_OLD), t(RETURNS), 0.2)[0, 2], t(0.5 * 5.29))


# ---------------------------------------------------------------- full objective

# M = 2 rows, T = 3, row 1 has one padded step. Ratios chosen by hand:
OBJ_MASK = [[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]]
OBJ_LOGP_OLD = [[-1.0, -2.0, -0.5], [-0.7, -1.2, -3.0]]
OBJ_RATIOS = [[1.0, 1.5, 0.5], [1.1, 0.9, 7.0]]
OBJ_ADV = [[1.0, 1.0, -1.0], [-2.0, 2.0, 0.0]]
# per-token clipped surrogate with epsilon 0.2:
#   (1.0, A=1) -> -1.0; (1.5, A=1) -> -1.2 clipped; (0.5, A=-1) -> 0.8 clipped;
#   (1.1, A=-2) -> 2.2; (0.9, A=2) -> -1.8
OBJ_POLICY = (-1.0 - 1.2 + 0.8 + 2.2 - 1.8) / 5  # -0.2 (token-mean over 5 valid steps)
OBJ_CLIP_FRAC = 2 / 5
OBJ_APPROX_KL = (
    0.0 + (0.5 - math.log(1.5)) + (-0.5 - math.log(0.5)) + (0.1 - math.log(1.1)) + (-0.1 - math.log(0.9))
) / 5
OBJ_VALUES = [[1.0, 2.0, 3.0], [0.0, 1.0, 99.0]]
OBJ_RETURNS = [[1.5, 1.0, 3.0], [1.0, 1.0, 0.0]]
OBJ_VALUE = 0.5 * (0.25 + 1.0 + 0.0 + 1.0 + 0.0) / 5  # 0.225
OBJ_ENTROPY = [[0.5, 1.0, 1.5], [2.0, 1.0, 100.0]]
OBJ_ENT = (0.5 + 1.0 + 1.5 + 2.0 + 1.0) / 5  # 1.2
OBJ_KL = [[0.1, 0.2, 0.3], [0.4, 0.0, 50.0]]
OBJ_KL_TERM = (0.1 + 0.2 + 0.3 + 0.4 + 0.0) / 5  # 0.2
# ref_logp such that r = ref - logp is 0, log 2, -log 2, 0, 0 (and anything on padding)
OBJ_R = [[0.0, math.log(2.0), -math.log(2.0)], [0.0, 0.0, 5.0]]
OBJ_K3_TERM = (0.0 + (2.0 - math.log(2.0) - 1.0) + (0.5 + math.log(2.0) - 1.0) + 0.0 + 0.0) / 5  # 0.1


def obj_cfg(**overrides):
    cfg = dict(
        loss_agg_mode="token-mean",
        loss_agg_norm=None,
        importance_sampling_level="token",
        policy_loss="clip",
        epsilon=0.2,
        epsilon_high=None,
        dual_clip=None,
        vf_coef=0.5,
        value_clip=None,
        ent_coef=0.01,
        beta=0.1,
        kl_estimator="k3",
        advantage="gae",
        tis_cap=None,
        top_entropy_quantile=1.0,
    )
    cfg.update(overrides)
    # the loss modifiers these flat options stand for, read as AlgoConfig reads them
    cfg["stages"] = AlgoConfig(tis_cap=cfg["tis_cap"], top_entropy_quantile=cfg["top_entropy_quantile"]).stages
    return SimpleNamespace(**cfg)


def obj_logp():
    return t(OBJ_LOGP_OLD) + torch.log(t(OBJ_RATIOS))


def obj_minibatch(returns=True):
    return Minibatch(
        logp_old=t(OBJ_LOGP_OLD),
        mask=t(OBJ_MASK),
        advantages=t(OBJ_ADV),
        returns=t(OBJ_RETURNS) if returns else None,
        values_old=None,
        ref_logp=None,
        policy_inputs={},
    )


def obj_output(kl=True, ref=False, values=True, entropy=True):
    logp = obj_logp()
    return PolicyOutput(
        logp=logp,
        entropy=t(OBJ_ENTROPY) if entropy else None,
        values=t(OBJ_VALUES) if values else None,
        ref_logp=(logp + t(OBJ_R)) if ref else None,
        kl=t(OBJ_KL) if kl else None,
    )


def test_objective_total_is_policy_plus_value_minus_entropy_plus_kl():
    loss, metrics = objective(obj_output(kl=True), obj_minibatch(), obj_cfg())
    expected = OBJ_POLICY + 0.5 * OBJ_VALUE - 0.01 * OBJ_ENT + 0.1 * OBJ_KL_TERM  # -0.0795
    assert_close(loss, t(expected))
    assert_close(loss, t(-0.0795))
    assert_close(metrics["loss/policy"], t(OBJ_POLICY))
    assert_close(metrics["loss/value"], t(OBJ_VALUE))
    assert_close(metrics["policy/entropy"], t(OBJ_ENT))
    assert_close(metrics["loss/kl_ref"], t(OBJ_KL_TERM))


def test_objective_metrics_approx_kl_and_clip_frac():
    _, metrics = objective(obj_output(), obj_minibatch(), obj_cfg())
    assert_close(metrics["policy/approx_kl"], t(OBJ_APPROX_KL))
    assert_close(metrics["policy/clip_frac"], t(OBJ_CLIP_FRAC))


def test_objective_prefers_closed_form_kl_over_ref_logp():
    _, metrics = objective(obj_output(kl=True, ref=True), obj_minibatch(), obj_cfg())
    assert_close(metrics["loss/kl_ref"], t(OBJ_KL_TERM))


def test_objective_uses_k_estimator_on_ref_logp_without_closed_form():
    loss, metrics = objective(obj_output(kl=False, ref=True), obj_minibatch(), obj_cfg(kl_estimator="k3"))
    assert_close(metrics["loss/kl_ref"], t(OBJ_K3_TERM))
    assert_close(loss, t(OBJ_POLICY + 0.5 * OBJ_VALUE - 0.01 * OBJ_ENT + 0.1 * OBJ_K3_TERM))
    _, metrics_k2 = objective(obj_output(kl=False, ref=True), obj_minibatch(), obj_cfg(kl_estimator="k2"))
    assert_close(metrics_k2["loss/kl_ref"], t((0.5 * math.log(2.0) ** 2 + 0.5 * math.log(2.0) ** 2) / 5))


def test_objective_beta_without_kl_or_ref_logp_raises_config_error():
    with pytest.raises(ConfigError, match="beta"):
        objective(obj_output(kl=False, ref=False), obj_minibatch(), obj_cfg(beta=0.1))


def test_objective_beta_zero_ignores_kl():
    loss, metrics = objective(obj_output(kl=False, ref=False), obj_minibatch(), obj_cfg(beta=0.0))
    assert "loss/kl_ref" not in metrics
    assert_close(loss, t(OBJ_POLICY + 0.5 * OBJ_VALUE - 0.01 * OBJ_ENT))


def test_objective_policy_only_when_no_values_and_no_entropy():
    loss, metrics = objective(
        obj_output(kl=False, values=False, entropy=False), obj_minibatch(returns=False), obj_cfg(beta=0.0)
    )
    assert_close(loss, t(OBJ_POLICY))
    assert set(metrics) == {"loss/policy", "policy/approx_kl", "policy/clip_frac"}


def test_objective_value_loss_without_returns_raises_config_error():
    with pytest.raises(ConfigError, match="vf_coef"):
        objective(obj_output(), obj_minibatch(returns=False), obj_cfg(advantage="grpo"))


def test_objective_gradient_flows_to_logp():
    out = obj_output(kl=False, values=False, entropy=False)
    out.logp.requires_grad_(True)
    loss, _ = objective(out, obj_minibatch(returns=False), obj_cfg(beta=0.0))
    loss.backward()
    # d/dlogp of -A * r / 5 where unclipped, 0 where clipped, 0 on padding
    expected = t([[-1.0 * 1.0 / 5, 0.0, 0.0], [2.0 * 1.1 / 5, -2.0 * 0.9 / 5, 0.0]])
    assert_close(out.logp.grad, expected)


def test_objective_sequence_level_ratio_uses_length_normalised_row_ratio():
    _, metrics = objective(
        obj_output(kl=False, values=False, entropy=False), obj_minibatch(returns=False),
        obj_cfg(beta=0.0, importance_sampling_level="sequence"),
    )
    # row 0: ratio (1.0 * 1.5 * 0.5) ** (1/3) ~ 0.909 (inside [0.8, 1.2]), advantages 1, 1, -1
    # row 1: ratio (1.1 * 0.9) ** (1/2) ~ 0.995, advantages -2, 2 -> sums to 0
    r0, r1 = 0.75 ** (1 / 3), 0.99 ** 0.5
    expected = (-1.0 * r0 - 1.0 * r0 + 1.0 * r0 + 2.0 * r1 - 2.0 * r1) / 5
    assert_close(metrics["loss/policy"], t(expected))
    assert_close(metrics["policy/clip_frac"], t(0.0))
    # approx_kl is still measured per token
    assert_close(metrics["policy/approx_kl"], t(OBJ_APPROX_KL))
