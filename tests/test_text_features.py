"""Countdown reward, DAPO overlong punishment and dynamic sampling, EAD temperature schedules."""
import math
from dataclasses import dataclass
from typing import List

import pytest
import torch

from envs.text import TextEnv, soft_overlong_punishment
from workbench.policies.causal_lm import CausalLMPolicy
from workbench.registry import ConfigError
from workbench.rewards.base import RewardPipeline, build_reward
from workbench.rewards.countdown import check_equation, extract_equation
from workbench.rollout.base import (
    SamplingConfig,
    TokenRollout,
    concat_rollouts,
    normalize_schedule,
    position_temperatures,
    scheduled_temperature,
)
from workbench.stages.base import BATCH_FILTERS
from workbench.stages.batch_filters import RoundsConfig

TINY = dict(model_type="qwen2", hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
            num_key_value_heads=1, max_position_embeddings=64, tie_word_embeddings=True)


def tiny_policy(**kw):
    torch.manual_seed(0)
    return CausalLMPolicy(CausalLMPolicy.Config(model_config=TINY, tokenizer="char", max_new_tokens=6, **kw))


# ---------------------------------------------------------------------------------------- countdown


def cd(completions, numbers, target, **options):
    fn = build_reward("countdown", **options)
    n = len(completions)
    return fn(completions, numbers=[numbers] * n, target=[target] * n)


def test_countdown_correct_equations_score_one():
    out = cd(["<think>3+5 is 8, times 2</think><answer>(3+5)*2</answer>",
              "<answer>2*(5+3)</answer>",
              "<answer>3+5</answer> wait <answer>(3 + 5) * 2</answer>",  # the last answer counts
              "I think\n(5+3)*2\n",  # no tags: the last non-empty line
              "<answer>(3+5)*2 = 16</answer>"],  # a trailing "= result" is allowed when true
             [3, 5, 2], 16)
    assert out["score"] == [1.0] * 5
    assert out["well_formed"] == [1.0] * 5 and out["valid_numbers"] == [1.0] * 5


def test_countdown_wrong_equations_get_format_score_or_zero():
    texts = ["<answer>3+5*2</answer>",  # well-formed, wrong value
             "<answer>(3+3)*2+4</answer>",  # reuses 3 and uses 4 (not given)
             "<answer>4*4</answer>",  # a number not given
             "<answer>(3+5)*2 = 17</answer>",  # a false claim
             "<answer>2**3*2</answer>",  # power: not allowed at all
             "<answer>__import__('os').system('echo hi')</answer>",
             "<answer>abs(16)</answer>",
             "<answer></answer>",  # empty answer: falls back to the last line, which is the tags
             "",
             "<answer>-2+18</answer>",  # unary minus is not an operator of the game
             "<answer>8.0*2</answer>",  # float literal
             "<answer>16 = (3+5)*2</answer>",  # only "expression = integer"
             "<answer>(3+5)*2 == 16</answer>"]
    zero = cd(texts, [3, 5, 2], 16)
    assert zero["score"] == [0.0] * len(texts)
    partial = cd(texts, [3, 5, 2], 16, format_score=0.1)
    assert partial["score"] == [0.1, 0.1, 0.1, 0.1] + [0.0] * 9
    assert partial["well_formed"] == [1.0] * 4 + [0.0] * 9
    assert partial["valid_numbers"] == [1.0, 0.0, 0.0, 1.0] + [0.0] * 9


def test_countdown_number_multiplicity_and_use_all():
    assert check_equation("3*3+5", [3, 3, 5], 14)["correct"]  # 3 given twice
    assert not check_equation("3*3+5", [3, 5, 9], 14)["valid_numbers"]  # 3 given once
    assert check_equation("10+6", [10, 6, 7], 16)["correct"]  # unused numbers are fine by default
    assert not check_equation("10+6", [10, 6, 7], 16, use_all=True)["correct"]
    assert check_equation("10+6-7+7", [10, 6, 7, 7], 16, use_all=True)["correct"]


def test_countdown_division_by_zero_and_huge_numbers():
    r = check_equation("5/(3-3)", [5, 3, 3], 1)
    assert r == {"well_formed": True, "valid_numbers": True, "correct": False}
    assert cd(["<answer>5/(3-3)</answer>"], [5, 3, 3], 1, format_score=0.2)["score"] == [0.2]
    # a huge literal is never evaluated: it is not a given number (or not even parsed)
    assert not check_equation("99999999999999999999*99999999999999999999", [2, 3], 6)["valid_numbers"]
    assert not check_equation("9" * 5000, [9], 9)["well_formed"]
    assert not check_equation("(" * 300 + "1" + ")" * 300, [1], 1)["well_formed"]


def test_countdown_exact_arithmetic_with_fractional_intermediates():
    # 8 / (3 - 8/3) is 23.999999999999986 in floats, exactly 24 with fractions
    assert check_equation("8/(3-8/3)", [3, 3, 8, 8], 24, tolerance=0.0)["correct"]
    assert check_equation("5*(5-1/5)", [1, 5, 5, 5], 24, tolerance=0.0)["correct"]
    assert not check_equation("7/2", [7, 2], 3)["correct"]  # no rounding of non-integer results
    assert check_equation("7/2", [7, 2], 3.5)["correct"]
    assert check_equation("1/3", [1, 3], 0.3333333)["correct"]  # within the tolerance
    assert not check_equation("1/3", [1, 3], 0.3333333, tolerance=1e-9)["correct"]


def test_countdown_whitespace_unicode_and_column_formats():
    texts = ["<answer>\n  ( 20 − 4 ) × 2\n</answer>", "<answer>(20 – 4)·2</answer>", "<answer>(20-4)*2</answer>"]
    fn = build_reward("countdown")
    out = fn(texts, numbers=["[20, 4, 2]", (20, 4, 2), torch.tensor([2, 4, 20])], target=["32", 32, torch.tensor(32)])
    assert out["score"] == [1.0, 1.0, 1.0]
    assert extract_equation("work\n\n  40/8  \n\n") == "40/8"
    assert extract_equation([{"role": "assistant", "content": "<answer>1+2</answer>"}]) == "1+2"


def test_countdown_options_and_pipeline():
    with pytest.raises(ConfigError, match="format_score"):
        build_reward("countdown", format_score=1.5)
    with pytest.raises(ConfigError, match="unknown option"):
        build_reward("countdown", answer_column="x")
    pipe = RewardPipeline([{"name": "countdown", "weight": 1.0, "format_score": 0.1},
                           {"name": "think_answer_format", "weight": 0.5}])
    res = pipe(["<think>a</think><answer>(3+5)*2</answer>", "<think>a</think><answer>3+5</answer>", "16"],
               numbers=[[3, 5, 2]] * 3, target=[16] * 3, question=["q"] * 3)
    assert res.components["countdown"] == [1.0, 0.1, 0.1]  # "16" is well-formed, 16 is not given
    assert res.components["countdown/well_formed"] == [1.0, 1.0, 1.0]
    assert res.components["countdown/valid_numbers"] == [1.0, 1.0, 0.0]
    assert res.scores == pytest.approx([1.5, 0.6, 0.1])
    res = pipe(["<answer>1</answer>"], numbers=[[1]])  # no target column: a counted failure, not a crash
    assert res.failures["countdown"] == 1 and res.components["countdown"] == [0.0]


def test_countdown_env_config_composes_and_scores():
    from workbench.config import compose, validate

    run = validate(compose(["experiment=arithmetic_grpo_tiny", "env=countdown"]))
    assert run.env.task == "countdown" and run.env.accuracy_reward == "countdown"
    env = TextEnv(run.env, seed=0)
    item = env._train_item()
    assert {"numbers", "target"} <= set(item)
    res = env._score(["<think>x</think><answer>0</answer>"], [item])
    assert set(res.components) >= {"countdown", "think_answer_format"} and res.scores == [pytest.approx(0.1)]


# -------------------------------------------------------------------------------- fake rollouts


def make_rollout(prompts: List[List[int]], completions: List[List[int]], texts: List[str], pad: int = 0,
                 truncated=None) -> TokenRollout:
    """A TokenRollout in the hf backend's layout; rollout_logp = -(0.1 * (t + 1)), logp 0.01 below."""
    N, P, T = len(prompts), max(map(len, prompts)), max(map(len, completions))
    ids = torch.full((N, P + T), pad, dtype=torch.long)
    attn = torch.zeros(N, P + T, dtype=torch.long)
    cmask = torch.zeros(N, T)
    for i, (p, c) in enumerate(zip(prompts, completions)):
        ids[i, P - len(p):P] = torch.tensor(p)
        attn[i, P - len(p):P] = 1
        ids[i, P:P + len(c)] = torch.tensor(c)
        attn[i, P:P + len(c)] = 1
        cmask[i, :len(c)] = 1
    rlogp = -0.1 * torch.arange(1, T + 1).float().expand(N, T) * cmask
    return TokenRollout(ids, attn, P, cmask, rlogp, list(texts),
                        torch.tensor(truncated or [False] * N), logp=(rlogp - 0.01) * cmask)


class FakeTokenizer:
    pad_token_id = 0


class ScriptedPolicy:
    """Returns pre-made rollouts, one per call, and checks the call's shape."""

    def __init__(self, rollouts, max_new_tokens: int = 8):
        self.rollouts = list(rollouts)
        self.sampling = SamplingConfig(max_new_tokens, 1.0)
        self.tokenizer = FakeTokenizer()
        self.calls = []

    def rollout(self, prompts, n, sampling=None):
        out = self.rollouts.pop(0)
        assert out.num_rows == len(prompts) * n
        self.calls.append((list(prompts), n))
        return out


def scripted_env(**kw):
    base = dict(prompts_per_iteration=2, group_size=2, eval_size=5, task_kwargs={"digits": 1, "ops": "+"},
                rewards=[{"name": "regex_match", "pattern": "^1$"}], accuracy_reward="regex_match")
    base.update(kw)
    return TextEnv(TextEnv.Config(**base), seed=0)


def last_token_rewards(batch):
    last = batch.mask.sum(1).long() - 1
    return batch.rewards[torch.arange(batch.num_rows), last].tolist()


# ------------------------------------------------------------------------------ overlong (DAPO)


def test_soft_overlong_punishment_values():
    # L_max = 10, L_cache = 4: free up to 6 tokens, then linear down to -penalty at 10
    assert soft_overlong_punishment([1, 6, 7, 8, 9, 10, 11], 10, 4) == [0.0, 0.0, -0.25, -0.5, -0.75, -1.0, -1.0]
    assert soft_overlong_punishment([8, 10], 10, 4, penalty=0.5) == [-0.25, -0.5]
    assert soft_overlong_punishment([10], 10, 0) == [0.0]
    assert soft_overlong_punishment([2, 3], 4, 4) == [-0.5, -0.75]  # buffer = L_max


def test_overlong_penalty_in_env_score_and_metrics():
    # lengths 2, 5, 6, 8 with L_max = 8 (policy max_new_tokens), L_cache = 4
    out = make_rollout([[5, 6]] * 4, [[1] * 2, [1] * 5, [1] * 6, [1] * 8], ["1", "0", "1", "1"],
                       truncated=[False, False, False, True])
    env = scripted_env(overlong_buffer=4, overlong_penalty=2.0)
    batch = env.collect(ScriptedPolicy([out], max_new_tokens=8))
    scored = env.assign_rewards(batch)
    assert last_token_rewards(scored) == pytest.approx([1.0, -0.5, 1.0 - 1.0, 1.0 - 2.0])
    assert scored.rewards.sum() == pytest.approx(sum([1.0, -0.5, 0.0, -1.0]))
    m = env.pop_metrics()
    assert m["reward/overlong"] == pytest.approx((0 - 0.5 - 1.0 - 2.0) / 4)
    assert m["reward/total"] == pytest.approx(-0.5 / 4) and m["accuracy"] == 0.75
    assert m["reward/regex_match"] == 0.75


def test_overlong_off_by_default_and_buffer_checked():
    out = make_rollout([[5]] * 4, [[1] * 8] * 4, ["1", "0", "0", "0"])
    env = scripted_env()
    scored = env.assign_rewards(env.collect(ScriptedPolicy([out], max_new_tokens=8)))
    assert last_token_rewards(scored) == [1.0, 0.0, 0.0, 0.0] and "reward/overlong" not in env.pop_metrics()
    with pytest.raises(ConfigError, match="exceeds policy.max_new_tokens"):
        scripted_env(overlong_buffer=9).collect(ScriptedPolicy([out], max_new_tokens=8))
    with pytest.raises(ConfigError, match="overlong"):
        TextEnv.Config(overlong_buffer=-1)


# ---------------------------------------------------------------------- dynamic sampling (DAPO)


def test_dynamic_sampling_filters_groups_and_repads_rounds():
    # round 1 (P=2, T=1): group 0 all "1" (dropped), group 1 mixed (kept)
    r1 = make_rollout([[11, 12]] * 2 + [[13]] * 2, [[21]] * 4, ["1", "1", "1", "0"])
    # round 2 (P=3, T=3): group 0 all "0" (dropped), group 1 mixed (kept) -> 2 groups, stop
    r2 = make_rollout([[31, 32, 33]] * 2 + [[34, 35]] * 2, [[41], [42, 43], [44, 45, 46], [47]], ["0", "0", "0", "1"])
    unused = make_rollout([[1]] * 4, [[1]] * 4, ["1"] * 4)
    policy = ScriptedPolicy([r1, r2, unused])
    env = scripted_env(dynamic_sampling=True, max_sampling_rounds=3)
    batch = env.collect(policy)
    assert len(policy.calls) == 2 and all(n == 2 and len(p) == 2 for p, n in policy.calls)
    pi = batch.policy_inputs
    assert pi["prompt_length"].tolist() == [3, 3, 3, 3]
    assert pi["input_ids"].tolist() == [[0, 0, 13, 21, 0, 0], [0, 0, 13, 21, 0, 0],
                                        [0, 34, 35, 44, 45, 46], [0, 34, 35, 47, 0, 0]]
    assert pi["attention_mask"].tolist() == [[0, 0, 1, 1, 0, 0], [0, 0, 1, 1, 0, 0],
                                             [0, 1, 1, 1, 1, 1], [0, 1, 1, 1, 0, 0]]
    assert batch.mask.tolist() == [[1, 0, 0], [1, 0, 0], [1, 1, 1], [1, 0, 0]]
    torch.testing.assert_close(batch.logp_old, torch.tensor([[-0.11, 0, 0], [-0.11, 0, 0], [-0.11, -0.21, -0.31],
                                                             [-0.11, 0, 0]]))
    assert batch.group.tolist() == [0, 0, 1, 1]
    assert batch.dones.tolist() == [[1, 0, 0], [1, 0, 0], [0, 0, 1], [1, 0, 0]]
    m = env.pop_metrics()
    assert (m["sampling/rounds"], m["sampling/kept_groups"], m["sampling/dropped_groups"]) == (2.0, 2.0, 2.0)
    assert m["accuracy"] == pytest.approx(4 / 8)  # over all 8 sampled completions, not the kept 4
    scored = env.assign_rewards(batch)
    assert last_token_rewards(scored) == [1.0, 0.0, 0.0, 1.0]
    assert scored.rewards.sum() == 2.0


def test_dynamic_sampling_discards_surplus_and_handles_shortage():
    mixed = ["1", "0", "0", "1"]  # both groups vary
    env = scripted_env(dynamic_sampling=True, prompts_per_iteration=1, max_sampling_rounds=2)
    batch = env.collect(ScriptedPolicy([make_rollout([[7]] * 2, [[1], [2]], mixed[:2])]))
    assert batch.num_rows == 2 and env.pop_metrics()["sampling/rounds"] == 1.0
    # K = 2, but only one group varies in 2 rounds: the batch holds just that group
    env = scripted_env(dynamic_sampling=True, max_sampling_rounds=2)
    r1 = make_rollout([[7]] * 4, [[1]] * 4, ["0", "0", "1", "1"])
    r2 = make_rollout([[8, 9]] * 4, [[1], [2, 3], [4], [5]], ["1", "0", "0", "0"])
    batch = env.collect(ScriptedPolicy([r1, r2]))
    assert batch.num_rows == 2 and batch.group.tolist() == [0, 0]
    assert batch.policy_inputs["input_ids"].tolist() == [[8, 9, 1, 0], [8, 9, 2, 3]]
    m = env.pop_metrics()
    assert (m["sampling/rounds"], m["sampling/kept_groups"], m["sampling/dropped_groups"]) == (2.0, 1.0, 3.0)
    assert last_token_rewards(env.assign_rewards(batch)) == [1.0, 0.0]


def test_dynamic_sampling_with_no_varying_group_keeps_the_last_round():
    env = scripted_env(dynamic_sampling=True, max_sampling_rounds=2)
    r1 = make_rollout([[7]] * 4, [[1]] * 4, ["0"] * 4)
    r2 = make_rollout([[8]] * 4, [[2]] * 4, ["1", "1", "0", "0"])
    batch = env.collect(ScriptedPolicy([r1, r2]))
    assert batch.num_rows == 4 and batch.policy_inputs["input_ids"][:, 0].tolist() == [8] * 4
    m = env.pop_metrics()
    assert (m["sampling/rounds"], m["sampling/kept_groups"], m["sampling/dropped_groups"]) == (2.0, 0.0, 4.0)
    assert last_token_rewards(env.assign_rewards(batch)) == [1.0, 1.0, 0.0, 0.0]


def test_dynamic_sampling_counts_overlong_in_the_filter():
    # same accuracy in the group, different overlong punishment -> the rewards differ: kept
    env = scripted_env(dynamic_sampling=True, prompts_per_iteration=1, overlong_buffer=2, max_sampling_rounds=1)
    batch = env.collect(ScriptedPolicy([make_rollout([[7]] * 2, [[1] * 8, [1]], ["1", "1"])], max_new_tokens=8))
    assert env.pop_metrics()["sampling/kept_groups"] == 1.0
    assert last_token_rewards(env.assign_rewards(batch)) == [0.0, 1.0]
    with pytest.raises(ConfigError, match="group_size >= 2"):
        TextEnv.Config(dynamic_sampling=True, group_size=1)


def test_concat_rollouts_keeps_log_probs_of_a_real_model():
    p = tiny_policy()
    a = p.rollout(["1+1="], n=2)
    b = p.rollout(["12+345=", "9+9="], n=1)
    assert a.prompt_length != b.prompt_length
    merged = concat_rollouts([a, b], p.tokenizer.pad_token_id)
    N = merged.num_rows
    inputs = {"input_ids": merged.input_ids, "attention_mask": merged.attention_mask,
              "prompt_length": torch.full((N,), merged.prompt_length)}
    logp = p.log_probs(inputs).logp * merged.completion_mask
    torch.testing.assert_close(logp, merged.logp, atol=1e-5, rtol=0)
    assert merged.completions == a.completions + b.completions
    assert merged.select([2, 0]).completions == [b.completions[0], a.completions[0]]


def test_dynamic_sampling_with_a_real_policy_end_to_end():
    p = tiny_policy()
    env = TextEnv(TextEnv.Config(prompts_per_iteration=2, group_size=3, eval_size=5, dynamic_sampling=True,
                                 max_sampling_rounds=3, task_kwargs={"digits": 1, "ops": "+"},
                                 rewards=[{"name": "regex_match", "pattern": "[0-4]"}], accuracy_reward="regex_match"),
                  seed=0)
    batch = env.collect(p)
    scored = env.assign_rewards(batch)
    m = env.pop_metrics()
    assert batch.num_rows % 3 == 0 and batch.num_rows == 3 * max(1, int(m["sampling/kept_groups"]))
    P = int(batch.policy_inputs["prompt_length"][0])
    assert (batch.policy_inputs["prompt_length"] == P).all()
    ev = p.log_probs(batch.policy_inputs).logp * batch.mask
    torch.testing.assert_close(ev, batch.logp_old, atol=1e-5, rtol=0)
    if m["sampling/kept_groups"] > 0:
        totals = scored.rewards.sum(1).view(-1, 3)
        assert ((totals.max(1).values - totals.min(1).values) > 0).all()


# --------------------------------------------------------------------------------------- EAD


def test_schedule_values_and_validation():
    s = normalize_schedule({"start": 1.2, "end": 0.1, "decay": 10})
    assert scheduled_temperature(s, 0) == pytest.approx(1.2)
    assert scheduled_temperature(s, 5) == pytest.approx(2.2 - math.exp(0.5))
    assert scheduled_temperature(s, 30) == 0.1 and scheduled_temperature(s, 10**6) == 0.1
    lin = normalize_schedule({"kind": "linear", "start": 1.0, "end": 0.5, "over_tokens": 4, "hold_tokens": 1,
                              "hold_temperature": 0.9})
    assert [scheduled_temperature(lin, t) for t in range(7)] == pytest.approx([0.9, 0.875, 0.75, 0.625, 0.5, 0.5, 0.5])
    temps = position_temperatures(SamplingConfig(8, 1.0, temperature_schedule={"start": 1.2, "end": 0.1, "decay": 10}), 3)
    assert temps.tolist() == pytest.approx([1.2, 2.2 - math.exp(0.1), 2.2 - math.exp(0.2)])
    assert position_temperatures(SamplingConfig(8, 0.7), 3) is None
    assert SamplingConfig(8, 0.0).greedy and not SamplingConfig(8, 0.0, temperature_schedule=dict(s)).greedy
    for bad, msg in [({"start": 0.5, "end": 1.0, "decay": 1}, "end <= start"), ({"start": 1, "end": 0.5}, "needs decay"),
                     ({"kind": "cosine", "start": 1, "end": 1}, "kind"), ({"start": 1, "end": 1, "decay": 1, "x": 1}, "unknown"),
                     ({"start": 1, "end": 1, "decay": 0}, "decay must be > 0")]:
        with pytest.raises(ConfigError, match=msg):
            SamplingConfig(8, 1.0, temperature_schedule=bad)


def test_position_temperature_processor_divides_by_t_of_position():
    from workbench.rollout.hf import PositionTemperature

    proc = PositionTemperature({"kind": "linear", "start": 2.0, "end": 1.0, "over_tokens": 2}, prompt_length=3)
    scores = torch.tensor([[2.0, 4.0]])
    assert proc(torch.zeros(1, 3, dtype=torch.long), scores).tolist()[0] == [1.0, 2.0]  # t = 0: T = 2
    assert proc(torch.zeros(1, 4, dtype=torch.long), scores).tolist()[0] == pytest.approx([4 / 3, 8 / 3])  # T(1) = 1.5
    assert proc(torch.zeros(1, 9, dtype=torch.long), scores).tolist()[0] == [2.0, 4.0]  # t = 6: T = 1


def test_constant_schedule_equals_plain_temperature_sampling():
    p = tiny_policy()
    prompts = ["1+2=", "34+5="]
    torch.manual_seed(123)
    plain = p.rollout(prompts, n=3, sampling=SamplingConfig(6, 0.7))
    for schedule in ({"start": 0.7, "end": 0.7, "decay": 3}, {"kind": "linear", "start": 0.7, "end": 0.7, "over_tokens": 4}):
        torch.manual_seed(123)
        annealed = p.rollout(prompts, n=3, sampling=SamplingConfig(6, 1.0, temperature_schedule=schedule))
        assert torch.equal(annealed.input_ids, plain.input_ids) and annealed.completions == plain.completions
        torch.testing.assert_close(annealed.rollout_logp, plain.rollout_logp, atol=1e-6, rtol=0)


def test_annealed_rollout_logp_uses_per_position_temperature():
    p = tiny_policy()
    sampling = SamplingConfig(6, 1.0, temperature_schedule={"start": 3.0, "end": 0.3, "decay": 2.0})
    torch.manual_seed(7)
    out = p.rollout(["1+2=", "34+5="], n=4, sampling=sampling)
    P, T = out.prompt_length, out.completion_mask.shape[1]
    with torch.no_grad():
        attn = out.attention_mask
        logits = p.model(input_ids=out.input_ids, attention_mask=attn,
                         position_ids=(attn.cumsum(-1) - 1).clamp(min=0)).logits[:, P - 1:-1].float()
    temps = [scheduled_temperature(normalize_schedule(sampling.temperature_schedule), t) for t in range(T)]
    manual = torch.stack([torch.log_softmax(logits[:, t] / temps[t], -1) for t in range(T)], 1)
    manual = manual.gather(-1, out.completion_ids.unsqueeze(-1)).squeeze(-1) * out.completion_mask
    torch.testing.assert_close(out.rollout_logp, manual, atol=1e-4, rtol=0)
    # and it is not the single-temperature log-prob
    single = torch.log_softmax(logits, -1).gather(-1, out.completion_ids.unsqueeze(-1)).squeeze(-1) * out.completion_mask
    assert (out.rollout_logp - single).abs().max() > 1e-2


def test_ead_training_forward_uses_the_samplers_per_position_temperatures():
    import torch as _torch

    from workbench.policies.causal_lm import CausalLMPolicy

    _torch.manual_seed(0)
    policy = CausalLMPolicy(CausalLMPolicy.Config(
        model_config=dict(model_type="qwen2", hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                          num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64),
        tokenizer="char", max_new_tokens=6, recompute_logp="true",
        temperature_schedule={"kind": "linear", "start": 3.0, "end": 0.5, "over_tokens": 5}))
    out = policy.rollout(["12+3="], n=4)
    assert ((out.logp - out.rollout_logp).abs() * out.completion_mask).max() < 1e-4


def test_countdown_demonstrations_are_correct_equations():
    from omegaconf import OmegaConf

    from envs.text import TextEnv
    from workbench.config import config_dir
    from workbench.rewards.base import RewardPipeline

    env = TextEnv(TextEnv.Config(**OmegaConf.to_container(OmegaConf.load(config_dir() / "env" / "countdown.yaml"))), seed=0)
    env.rng.seed(0)
    raw = [env._train_item() for _ in range(8)]
    env.rng.seed(0)
    prompts, targets = env.demonstrations(8)
    assert prompts == [env.prompt(x) for x in raw]
    assert all(t.startswith("<think></think><answer>") for t in targets)
    scores = RewardPipeline([{"name": "countdown"}])(targets, numbers=[x["numbers"] for x in raw], target=[x["target"] for x in raw])
    assert scores.components["countdown"] == [1.0] * 8, (targets, raw)


# ------------------------------------------------------------------ truncated completions, Dr.GRPO constant


def test_masked_truncated_completion_keeps_its_reward_in_the_group_baseline():
    # one group of two: "1" scores 1; the truncated "2222" scores 0 + overlong -1 (L_max 4, L_cache 1)
    from workbench.advantages import compute_advantages
    from workbench.config import AlgoConfig
    from workbench.trainer import minibatches

    out = make_rollout([[5], [5]], [[1], [2, 2, 2, 2]], ["1", "2222"], truncated=[False, True])
    env = scripted_env(prompts_per_iteration=1, mask_truncated_completions=True, overlong_buffer=1)
    batch = env.assign_rewards(env.collect(ScriptedPolicy([out], max_new_tokens=4)))
    assert last_token_rewards(batch) == [1.0, -1.0]
    # Dr.GRPO (no std): the baseline is the mean of the true rewards, 0, not (1 + 0) / 2
    adv = compute_advantages(batch, AlgoConfig(advantage="dr_grpo", normalize_advantages="none")).advantages
    assert adv[0, 0] == 1.0 and adv[1, :4].tolist() == [-1.0] * 4
    # ... and the truncated row stays out of the loss
    mb = next(minibatches(compute_advantages(batch, AlgoConfig(advantage="dr_grpo")), "row", 1))
    assert mb.mask.sum() == 1.0 and mb.mask.shape == (2, 4)
    assert batch.mask.sum() == 5.0  # advantages and reward metrics see every valid token


def test_text_batch_carries_the_generation_limit_for_dr_grpo():
    from workbench.trainer import minibatches

    out = make_rollout([[5], [5]], [[1], [2, 2]], ["1", "22"])
    env = scripted_env(prompts_per_iteration=1)
    batch = env.assign_rewards(env.collect(ScriptedPolicy([out], max_new_tokens=8)))
    assert batch.max_steps == 8 and batch.num_steps == 2
    assert next(minibatches(batch.with_(advantages=torch.zeros(2, 2)), "row", 1)).max_steps == 8


# ---------------------------------------------------------------------- EAD pairing


def test_ead_pairing_trains_the_t1_policy_with_truncated_is():
    # sample with the annealed schedule, train the T = 1 policy: logp_old and evaluate() are the
    # T = 1 log-probs of the sampled tokens, rollout_logp the annealed (behaviour) ones
    schedule = {"kind": "linear", "start": 3.0, "end": 0.5, "over_tokens": 5, "train_at_temperature_one": True}
    p = tiny_policy(temperature_schedule=schedule)
    assert normalize_schedule(schedule)["train_at_temperature_one"] is True
    assert normalize_schedule({"start": 1.2, "end": 0.1, "decay": 10})["train_at_temperature_one"] is False
    torch.manual_seed(7)
    out = p.rollout(["1+2=", "34+5="], n=4)
    P, T = out.prompt_length, out.completion_mask.shape[1]
    with torch.no_grad():
        attn = out.attention_mask
        logits = p.model(input_ids=out.input_ids, attention_mask=attn,
                         position_ids=(attn.cumsum(-1) - 1).clamp(min=0)).logits[:, P - 1:-1].float()
    temps = [scheduled_temperature(normalize_schedule(schedule), t) for t in range(T)]
    take = lambda lp: lp.gather(-1, out.completion_ids.unsqueeze(-1)).squeeze(-1) * out.completion_mask  # noqa: E731
    annealed = take(torch.stack([torch.log_softmax(logits[:, t] / temps[t], -1) for t in range(T)], 1))
    at_one = take(torch.log_softmax(logits, -1))
    torch.testing.assert_close(out.rollout_logp, annealed, atol=1e-4, rtol=0)
    torch.testing.assert_close(out.logp, at_one, atol=1e-4, rtol=0)
    assert (out.logp - out.rollout_logp).abs().max() > 1e-2
    inputs = {"input_ids": out.input_ids, "attention_mask": out.attention_mask,
              "prompt_length": torch.full((out.num_rows,), P)}
    with torch.no_grad():
        torch.testing.assert_close(p.log_probs(inputs).logp * out.completion_mask, at_one, atol=1e-4, rtol=0)


def test_ead_pairing_needs_a_truncated_is_cap():
    from workbench.config import compose, validate

    pairing = "+policy.temperature_schedule={start: 1.2, end: 0.5, decay: 10, train_at_temperature_one: true}"
    with pytest.raises(ConfigError, match="train_at_temperature_one needs algo.tis_cap"):
        validate(compose(["experiment=arithmetic_grpo_tiny", pairing]))
    run = validate(compose(["experiment=arithmetic_grpo_tiny", pairing, "algo.tis_cap=2.0"]))
    assert run.policy.temperature_schedule["train_at_temperature_one"] is True and run.algo.tis_cap == 2.0
    with pytest.raises(ConfigError, match="drop policy.recompute_logp=false"):
        tiny_policy(recompute_logp="false", temperature_schedule={"start": 1.2, "end": 0.5, "decay": 10,
                                                                  "train_at_temperature_one": True})
    with pytest.raises(ConfigError, match="train_at_temperature_one must be true or false"):
        normalize_schedule({"start": 1.2, "end": 0.5, "decay": 10, "train_at_temperature_one": "yes"})


# ------------------------------------------------------------------------------ a new batch filter, by config alone

@dataclass
class _AllCorrectConfig(RoundsConfig):
    min_mean: float = 1.0  # keep groups whose mean reward reaches this


@BATCH_FILTERS.register("_test_solved_groups", config=_AllCorrectConfig)
def _solved_groups(scores, group, cfg):
    """Keep only the groups whose mean reward is at least min_mean (the opposite of DAPO's filter)."""
    ids = group.unique()
    return ids[torch.stack([scores[group == g].mean() for g in ids]) >= cfg.min_mean]


def test_a_registered_batch_filter_is_chosen_in_env_config_and_run_over_rounds():
    r1 = make_rollout([[11]] * 4, [[21]] * 4, ["1", "1", "1", "0"])  # group 0 solved, group 1 not
    r2 = make_rollout([[31]] * 4, [[41]] * 4, ["0", "0", "1", "1"])  # group 1 solved
    policy = ScriptedPolicy([r1, r2])
    env = scripted_env(batch_filter={"name": "_test_solved_groups", "max_rounds": 2})
    batch = env.collect(policy)
    assert len(policy.calls) == 2 and batch.num_rows == 4
    assert batch.policy_inputs["input_ids"][:, 0].tolist() == [11, 11, 31, 31]  # r1's group 0, r2's group 1
    m = env.pop_metrics()
    assert (m["sampling/rounds"], m["sampling/kept_groups"], m["sampling/dropped_groups"]) == (2.0, 2.0, 2.0)
    with pytest.raises(ConfigError, match=r"env.batch_filter: batch filter '_test_solved_groups' has no option 'min'"):
        scripted_env(batch_filter={"name": "_test_solved_groups", "min": 0.5})
    with pytest.raises(ConfigError, match="drop it or env.batch_filter"):
        scripted_env(dynamic_sampling=True, batch_filter={"name": "dynamic_sampling"})
