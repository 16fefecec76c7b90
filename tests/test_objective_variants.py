"""CISPO, DISPO, forward KL, high-entropy token selection, truncated IS and loss_type presets,
each against numbers computed by hand."""
import math
from types import SimpleNamespace

import pytest
import torch

from workbench.batch import Minibatch
from workbench.config import AlgoConfig
from workbench.objectives import PolicyOutput, high_entropy_mask, objective
from workbench.registry import ConfigError, KL_ESTIMATORS, POLICY_LOSSES


def t(*rows):
    return torch.tensor(rows, dtype=torch.float64)


def lr_of(*ratios):
    return torch.log(t(*ratios)).requires_grad_(True)


def test_cispo_caps_the_weight_but_keeps_every_gradient():
    cfg = SimpleNamespace(epsilon=0.2, epsilon_high=None, cispo_cap=2.0)
    lr = lr_of([0.5, 1.5, 3.0])
    adv = t([1.0, -2.0, 1.0])
    loss, clipped = POLICY_LOSSES.get("cispo")(lr, adv, cfg)
    # value: -min(r, 2) * A * log r
    expected = [-0.5 * 1.0 * math.log(0.5), -1.5 * -2.0 * math.log(1.5), -2.0 * 1.0 * math.log(3.0)]
    torch.testing.assert_close(loss, t(expected))
    assert clipped.tolist() == [[0.0, 0.0, 1.0]]
    loss.sum().backward()
    # d/d(log r) = -sg(min(r, cap)) * A: non-zero even where the weight is capped
    torch.testing.assert_close(lr.grad, t([-0.5, 3.0, -2.0]))


def test_dispo_uses_separate_bounds_for_correct_and_incorrect_tokens():
    cfg = SimpleNamespace(epsilon=0.2, epsilon_high=None, dispo_pos_low=0.1, dispo_pos_high=0.5,
                          dispo_neg_low=0.6, dispo_neg_high=0.05)
    lr = lr_of([0.85, 1.4, 0.5, 1.1])
    adv = t([1.0, 1.0, -1.0, -1.0])
    loss, outside = POLICY_LOSSES.get("dispo")(lr, adv, cfg)
    # correct tokens: band [0.9, 1.5] -> 0.85 outside, 1.4 inside
    # incorrect tokens: band [0.4, 1.05] -> 0.5 inside, 1.1 outside
    assert outside.tolist() == [[1.0, 0.0, 0.0, 1.0]]
    loss.sum().backward()
    torch.testing.assert_close(lr.grad, t([0.0, -1.4, 0.5, 0.0]))
    torch.testing.assert_close(loss.detach(), t([0.0, -1.4 * math.log(1.4), 0.5 * math.log(0.5), 0.0]))


def test_dispo_bounds_fall_back_to_epsilons():
    cfg = SimpleNamespace(epsilon=0.2, epsilon_high=0.28, dispo_pos_low=None, dispo_pos_high=None,
                          dispo_neg_low=None, dispo_neg_high=None)
    _, outside = POLICY_LOSSES.get("dispo")(lr_of([0.79, 1.27, 1.29]), t([1.0, 1.0, -1.0]), cfg)
    assert outside.tolist() == [[1.0, 0.0, 1.0]]


def test_forward_kl_estimator():
    logp, ref = t([-1.0, -2.0, -0.5]), t([-1.5, -1.0, -0.5])
    rho = torch.exp(ref - logp)
    expected = [r * math.log(r) - r + 1 for r in rho[0].tolist()]
    got = KL_ESTIMATORS.get("forward")(logp, ref)
    torch.testing.assert_close(got, t(expected))
    assert (got >= 0).all() and got[0, 2] == 0


def test_forward_kl_is_unbiased_for_kl_ref_to_pi():
    pi = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    ref = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)
    per_action = KL_ESTIMATORS.get("forward")(pi.log(), ref.log())
    torch.testing.assert_close((pi * per_action).sum(), (ref * (ref / pi).log()).sum())


def test_high_entropy_mask_keeps_the_top_quantile_of_valid_tokens():
    entropy = t([0.1, 0.9, 0.5, 7.0], [0.3, 0.8, 0.2, 0.0])
    mask = t([1, 1, 1, 0], [1, 1, 1, 1])  # the 7.0 sits on padding and must not count
    got = high_entropy_mask(entropy, mask, 0.3)  # top 30% of 7 valid tokens: threshold = 70th percentile
    values = torch.tensor([0.1, 0.9, 0.5, 0.3, 0.8, 0.2, 0.0], dtype=torch.float64)
    threshold = torch.quantile(values, 0.7)
    assert 0.5 <= threshold <= 0.8
    assert got.tolist() == [[0, 1, 0, 0], [0, 1, 0, 0]]
    assert torch.equal(high_entropy_mask(entropy, mask, 1.0), mask)


def cfg(**kw):
    return AlgoConfig(**{"advantage": "grpo", "vf_coef": 0.0, "normalize_advantages": "none", **kw})


def minibatch(**kw):
    defaults = dict(logp_old=t([-1.0, -1.0]), mask=t([1.0, 1.0]), advantages=t([1.0, 1.0]), returns=None,
                    values_old=None, ref_logp=None, policy_inputs={})
    defaults.update(kw)
    return Minibatch(**defaults)


def test_truncated_importance_sampling_weights_the_policy_loss():
    logp = t([-1.0, -1.0])
    mb = minibatch(rollout_logp=t([-1.5, -0.5]))  # weights exp(0.5)=1.65 capped at 1.2, and exp(-0.5)=0.61
    loss, metrics = objective(PolicyOutput(logp=logp), mb, cfg(tis_cap=1.2, loss_agg_mode="token-mean"))
    w = [1.2, math.exp(-0.5)]
    assert float(loss) == pytest.approx(-(w[0] + w[1]) / 2)
    assert float(metrics["policy/tis_weight"]) == pytest.approx(sum(w) / 2)


def test_top_entropy_quantile_trains_only_selected_tokens():
    logp = t([-1.0, -1.0]).requires_grad_(True)
    out = PolicyOutput(logp=logp, entropy=t([0.1, 2.0]))
    loss, _ = objective(out, minibatch(), cfg(top_entropy_quantile=0.5, loss_agg_mode="token-mean"))
    loss.backward()
    assert logp.grad[0, 0] == 0 and logp.grad[0, 1] != 0
    with pytest.raises(ConfigError, match="per-token entropy"):
        objective(PolicyOutput(logp=t([-1.0, -1.0])), minibatch(), cfg(top_entropy_quantile=0.5))


@pytest.mark.parametrize("loss_type, loss, agg", [
    ("grpo", "clip", "seq-mean-token-mean"), ("bnpo", "clip", "token-mean"), ("dapo", "clip", "token-mean"),
    ("dr_grpo", "clip", "seq-mean-token-sum-norm"), ("cispo", "cispo", "token-mean"), ("dispo", "dispo", "token-mean"),
])
def test_loss_type_presets(loss_type, loss, agg):
    c = AlgoConfig(loss_type=loss_type)
    assert (c.policy_loss, c.loss_agg_mode) == (loss, agg)


def test_bad_variant_options():
    with pytest.raises(ConfigError, match="valid choices: grpo, bnpo, dapo, dr_grpo, cispo, dispo"):
        AlgoConfig(loss_type="ppo2")
    with pytest.raises(ConfigError, match="top_entropy_quantile"):
        AlgoConfig(top_entropy_quantile=0.0)
    with pytest.raises(ConfigError, match="tis_cap"):
        AlgoConfig(tis_cap=-1.0)


def test_forward_kl_gradient_is_the_analytic_forward_kl_gradient():
    # categorical pi = softmax(theta) over 4 outcomes; the per-sample estimator's gradient,
    # averaged exactly over outcomes drawn from pi (weights pi, held fixed as the sampler),
    # must equal grad_theta KL(ref || pi) = -sum_x ref(x) grad log pi(x) = pi - ref.
    theta = torch.tensor([0.3, -0.2, 1.0, 0.1], dtype=torch.float64, requires_grad=True)
    ref = torch.tensor([0.1, 0.4, 0.2, 0.3], dtype=torch.float64)
    logp = torch.log_softmax(theta, dim=0)
    per_outcome = KL_ESTIMATORS.get("forward")(logp[None], ref.log()[None])[0]  # [4]
    expected_value = (ref * (ref.log() - logp)).sum()
    torch.testing.assert_close((logp.exp().detach() * per_outcome).sum(), expected_value.detach())
    (logp.exp().detach() * per_outcome).sum().backward()
    analytic = torch.softmax(theta, 0).detach() - ref  # d/dtheta [-sum ref log softmax(theta)]
    torch.testing.assert_close(theta.grad, analytic)
    # the same as autograd through the exact KL
    theta2 = theta.detach().clone().requires_grad_(True)
    (ref * (ref.log() - torch.log_softmax(theta2, 0))).sum().backward()
    torch.testing.assert_close(theta.grad, theta2.grad)


def test_cispo_cap_is_its_own_option_not_epsilon_high():
    # a DAPO-style epsilon_high=0.28 left in the config must not become the IS-weight cap
    c = AlgoConfig(loss_type="cispo", epsilon_high=0.28)
    assert c.cispo_cap == 5.0  # TRL's / ScaleRL's recommended cap
    lr = lr_of([2.0, 8.0])
    loss, clipped = POLICY_LOSSES.get("cispo")(lr, t([1.0, 1.0]), c)
    torch.testing.assert_close(loss.detach(), t([-2.0 * math.log(2.0), -5.0 * math.log(8.0)]))
    assert clipped.tolist() == [[0.0, 1.0]]
    assert AlgoConfig(loss_type="cispo", cispo_cap=3.0).cispo_cap == 3.0
    for bad in (1.0, 0.28):
        with pytest.raises(ConfigError, match=r"algo.cispo_cap must be > 1"):
            AlgoConfig(loss_type="cispo", cispo_cap=bad)


def test_loss_type_conflicting_with_explicit_keys_is_an_error():
    with pytest.raises(ConfigError, match=r"algo.loss_type=cispo .*algo.policy_loss=clip"):
        AlgoConfig(loss_type="cispo", policy_loss="clip")
    with pytest.raises(ConfigError, match=r"algo.loss_type=dr_grpo .*algo.loss_agg_mode=token-mean"):
        AlgoConfig(loss_type="dr_grpo", loss_agg_mode="token-mean")
    # keys equal to the preset, or left unset, are fine
    c = AlgoConfig(loss_type="cispo", policy_loss="cispo", loss_agg_mode="token-mean")
    assert (c.policy_loss, c.loss_agg_mode) == ("cispo", "token-mean")
    assert (AlgoConfig().policy_loss, AlgoConfig().loss_agg_mode) == ("clip", "token-mean")
    assert AlgoConfig(policy_loss="dispo").policy_loss == "dispo"


def test_loss_type_on_the_composed_grpo_config():
    from workbench.config import compose, validate

    run = validate(compose(["experiment=gsm8k_grpo_qwen0.5b", "algo.loss_type=cispo"]))
    assert (run.algo.policy_loss, run.algo.loss_agg_mode) == ("cispo", "token-mean")
    run = validate(compose(["experiment=gsm8k_grpo_qwen0.5b", "algo.loss_type=dr_grpo"]))
    assert (run.algo.policy_loss, run.algo.loss_agg_mode) == ("clip", "seq-mean-token-sum-norm")
    with pytest.raises(ConfigError, match=r"algo.loss_type=grpo .*algo.policy_loss=cispo"):
        validate(compose(["experiment=gsm8k_grpo_qwen0.5b", "algo.loss_type=grpo", "algo.policy_loss=cispo"]))
