import json
import random

import pytest
import torch

from envs.text import TextEnv, pass_at_k
from envs.text_tasks import Arithmetic, Countdown, Dataset
from workbench.policies.causal_lm import CausalLMPolicy, token_logprobs
from workbench.registry import ConfigError
from workbench.rollout.base import completion_mask_from_eos
from workbench.tokenizer_utils import build_char_tokenizer

TINY = dict(model_type="qwen2", hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
            num_key_value_heads=1, max_position_embeddings=64, tie_word_embeddings=True)


def tiny_policy(**kw):
    torch.manual_seed(0)
    return CausalLMPolicy(CausalLMPolicy.Config(model_config=TINY, tokenizer="char", max_new_tokens=6, **kw))


def test_char_tokenizer_roundtrip_and_left_padding():
    tok = build_char_tokenizer()
    enc = tok(["12+3=", "7-1="], padding=True, padding_side="left", add_special_tokens=False)
    assert enc["attention_mask"][1][0] == 0 and enc["input_ids"][1][0] == tok.pad_token_id
    assert tok.batch_decode(enc["input_ids"], skip_special_tokens=True) == ["12+3=", "7-1="]


def test_completion_mask_keeps_first_eos_and_drops_the_rest():
    ids = torch.tensor([[5, 1, 7, 1], [5, 6, 7, 8], [1, 5, 5, 5]])
    assert completion_mask_from_eos(ids, [1]).tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]


def test_token_logprobs_and_entropy_against_softmax():
    logits = torch.randn(2, 3, 11, dtype=torch.float64)
    targets = torch.randint(0, 11, (2, 3))
    logp, ent = token_logprobs(logits, targets)
    ref = torch.log_softmax(logits, -1)
    torch.testing.assert_close(logp, ref.gather(-1, targets[..., None]).squeeze(-1).float())
    torch.testing.assert_close(ent, -(ref.exp() * ref).sum(-1).float())


def test_rollout_logp_equals_training_forward_with_same_masking():
    p = tiny_policy(recompute_logp="true")
    out = p.rollout(["12+34=", "5="], n=3)
    N = out.input_ids.shape[0]
    assert N == 6 and out.completion_mask.shape == out.logp.shape
    inputs = {"input_ids": out.input_ids, "attention_mask": out.attention_mask, "prompt_length": torch.full((N,), out.prompt_length)}
    ev = p.log_probs(inputs)
    torch.testing.assert_close(ev.logp * out.completion_mask, out.logp)
    # the sampler's own log-probs agree with the recomputation up to kernel noise
    assert ((out.rollout_logp - out.logp).abs() * out.completion_mask).max() < 1e-4
    assert (out.rollout_logp[out.completion_mask == 0] == 0).all()


def test_reference_models():
    frozen = tiny_policy(reference="frozen")
    out = frozen.rollout(["1+1="], n=2)
    torch.testing.assert_close(out.ref_logp, out.logp)
    assert any(k.startswith("reference.") for k in frozen.state_dict())  # a resumed run keeps its anchor
    for p in frozen.model.parameters():
        p.data.add_(0.1)
    moved = frozen.rollout(["1+1="], n=2)
    assert not torch.allclose(moved.ref_logp, moved.logp)
    frozen.reset_reference()
    again = frozen.rollout(["1+1="], n=2)
    torch.testing.assert_close(again.ref_logp, again.logp)
    lora = tiny_policy(lora={"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}, reference="lora_base")
    trainable = [n for n, p in lora.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    for p in lora.parameters():
        if p.requires_grad:
            p.data.add_(0.5)  # move the adapters away from their zero init
    out = lora.rollout(["1+1="], n=2)
    assert not torch.allclose(out.ref_logp, out.logp)


def test_policy_config_errors():
    with pytest.raises(ConfigError, match="exactly one of policy.model"):
        CausalLMPolicy.Config()
    with pytest.raises(ConfigError, match="lora_base needs policy.lora"):
        CausalLMPolicy.Config(model_config=TINY, reference="lora_base")
    with pytest.raises(ConfigError, match="use policy.reference=lora_base"):
        CausalLMPolicy.Config(model_config=TINY, reference="frozen", lora={"r": 4})
    with pytest.raises(ConfigError, match="cannot load model|neither a local path"):
        CausalLMPolicy(CausalLMPolicy.Config(model="/no/such/model", tokenizer="char"))


def test_encode_demonstrations_masks_exactly_the_target_and_eos():
    p = tiny_policy()
    inputs, mask = p.encode_demonstrations(["12+3=", "1+1="], ["15", "2"])
    P = int(inputs["prompt_length"][0])
    assert mask.tolist() == [[1, 1, 1], [1, 1, 0]]
    target = inputs["input_ids"][0, P:]
    assert p.tokenizer.decode(target[:2]) == "15" and int(target[2]) == p.eos_ids[0]


def test_arithmetic_and_countdown_items_are_correct():
    rng = random.Random(0)
    item = Arithmetic(digits=3, ops="+-*").make(rng)
    a, rest = item["question"][:-1], item["answer"]
    assert str(eval(a)) == rest
    cd = Countdown(count=4, max_number=9)
    for _ in range(20):
        x = cd.make(rng)
        assert 0 < x["target"] <= 1000 and len(x["numbers"]) == 4 and str(x["target"]) in x["question"]


def test_dataset_task_from_jsonl(tmp_path):
    path = tmp_path / "gsm.jsonl"
    rows = [{"question": f"q{i}?", "answer": f"work... #### {i * 2}", "level": i} for i in range(20)]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    task = Dataset(str(path), eval_fraction=0.25)
    assert len(task.held_out) == 5 and len(task.train) == 15
    assert task.held_out[0] == {"question": "q0?", "answer": "0", "level": 0}
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "x", "solution": "1"}))
    with pytest.raises(ConfigError, match="bad.jsonl line 1 has no 'answer'"):
        Dataset(str(bad))
    with pytest.raises(ConfigError, match="dataset file not found"):
        Dataset(str(tmp_path / "missing.jsonl"))


def test_pass_at_k_unbiased_estimator():
    assert pass_at_k(5, 2, 1) == pytest.approx(0.4)
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - 3 / 10)
    assert pass_at_k(5, 0, 3) == 0.0 and pass_at_k(5, 4, 2) == 1.0


def text_env(**kw):
    cfg = TextEnv.Config(prompts_per_iteration=3, group_size=4, eval_size=10, task_kwargs={"digits": 1, "ops": "+"}, **kw)
    return TextEnv(cfg, seed=0)


def test_text_env_batch_groups_and_terminal_rewards():
    env, p = text_env(), tiny_policy()
    batch = env.collect(p)
    assert batch.logp_old.shape[0] == 12 and batch.group.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    # force one correct completion so the reward lands somewhere
    env._pending["completions"][5] = env._pending["items"][5]["answer"]
    scored = env.assign_rewards(batch)
    last = batch.mask.sum(1).long() - 1
    assert scored.rewards[5, last[5]] == 1.0 and scored.rewards.sum() >= 1.0
    assert (scored.rewards * (1 - batch.dones)).abs().sum() == 0  # only on the last valid token
    metrics = env.pop_metrics()
    assert {"accuracy", "reward/math_accuracy", "response/length_mean", "rollout/logp_mismatch"} <= set(metrics)


def test_held_out_items_never_appear_in_training():
    env = text_env()
    held = {x["question"] for x in env.held_out}
    assert all(env._train_item()["question"] not in held for _ in range(200))


def test_mask_truncated_completions():
    env, p = text_env(mask_truncated_completions=True), tiny_policy()
    batch = env.collect(p)
    lengths = batch.dones.argmax(1)
    for i in range(batch.num_rows):
        if batch.mask[i].sum() == 0:
            continue
        assert batch.mask[i, : lengths[i] + 1].all()


def test_eval_reports_greedy_accuracy_and_pass_at_k():
    env, p = text_env(), tiny_policy()
    m = env.evaluate(p, episodes=5, k=4)
    assert m["eval/episodes"] == 5 and 0 <= m["eval/accuracy"] <= 1
    assert {"eval/mean@4", "eval/pass@1", "eval/pass@2", "eval/pass@4"} <= set(m)
    assert m["eval/pass@1"] <= m["eval/pass@2"] <= m["eval/pass@4"]


def test_sft_then_grpo_through_the_shared_trainer(tmp_path):
    from workbench.config import compose, validate
    from workbench.runlog import read_metrics
    from workbench.trainer import Trainer

    run = validate(compose(["experiment=arithmetic_grpo_tiny", "total_steps=64", "env.prompts_per_iteration=4",
                            "env.group_size=4", "eval_episodes=8", "eval_every=32", "sft.steps=40", "sft.batch_size=16",
                            "progress=false", "policy.model_config.num_hidden_layers=1"]))
    tr = Trainer(run, tmp_path / "run")
    tr.train(plot=True)
    rows = read_metrics(tmp_path / "run")
    sft = [r["sft/loss"] for r in rows if "sft/loss" in r]
    assert len(sft) == 2 and sft[-1] < sft[0]
    assert [r["step"] for r in rows if "eval/accuracy" in r] == [0, 32, 64]  # after SFT, periodic, final
    assert any("accuracy" in r and "loss/policy" in r for r in rows)
    assert (tmp_path / "run" / "learning_curve.png").exists()


def test_recompute_logp_modes():
    p = tiny_policy(recompute_logp=False)
    out = p.rollout(["12+3="], n=2)
    assert out.logp is out.rollout_logp
    assert tiny_policy()._needs_recompute() is False  # auto: hf sampler in fp32 is the trained model itself
    assert tiny_policy(recompute_logp="true")._needs_recompute() is True
    with torch.autocast("cpu", dtype=torch.bfloat16):  # bf16 compute (precision=bf16): sampler != training forward
        assert tiny_policy()._needs_recompute() is True
    with pytest.raises(ConfigError, match="recompute_logp"):
        tiny_policy(recompute_logp="sometimes")


def test_flawed_teacher_forgets_every_carry():
    item = lambda a, b: {"operands": [a, b], "ops": "+", "answer": str(a + b)}  # noqa: E731
    assert [Arithmetic.flawed_answer(item(a, b)) for a, b in [(27, 38), (12, 34), (95, 17), (99, 1)]] == ["55", "46", "102", "90"]
    assert Arithmetic.flawed_answer({"operands": [50, 7], "ops": "-", "answer": "43"}) == "43"


def test_demonstration_flaw_rate_mixes_flawed_answers():
    correct = TextEnv(TextEnv.Config(task_kwargs={"digits": 2, "ops": "+"}), seed=0)
    flawed = TextEnv(TextEnv.Config(task_kwargs={"digits": 2, "ops": "+"}, demonstration_flaw_rate=1.0), seed=0)
    good, bad = correct.demonstrations(200)[1], flawed.demonstrations(200)[1]
    differs = sum(g != b for g, b in zip(good, bad))
    assert 60 < differs < 140  # about half of random 2-digit additions carry
    with pytest.raises(ConfigError, match="flawed teacher"):
        TextEnv(TextEnv.Config(task="countdown", demonstration_flaw_rate=0.5), seed=0).demonstrations(2)


def test_cpu_demo_grpo_repairs_flawed_sft_by_15_points(tmp_path):
    """The README's text demo, shortened: held-out greedy accuracy after GRPO beats the SFT model by >= 15 points."""
    from workbench.config import compose, validate
    from workbench.runlog import read_metrics
    from workbench.trainer import Trainer

    run = validate(compose(["experiment=arithmetic_demo", "total_steps=49152", "progress=false"]))
    Trainer(run, tmp_path / "run").train(plot=False)
    acc = [r["eval/accuracy"] for r in read_metrics(tmp_path / "run") if "eval/accuracy" in r]
    assert acc[-1] - acc[0] >= 0.15, acc


def test_hub_dataset_offline_is_one_clear_error():
    with pytest.raises(ConfigError, match="cannot load dataset 'someone/no-such-set'"):
        Dataset("someone/no-such-set", config_name="main")


def test_kl_anchor_is_the_model_rl_starts_from(tmp_path):
    """After SFT (or init_from) the frozen reference equals the starting policy, not the random init."""
    from workbench.config import compose, validate
    from workbench.runlog import RunLogger
    from workbench.trainer import Trainer

    overrides = ["experiment=arithmetic_grpo_tiny", "sft.steps=5", "policy.reference=frozen", "algo.beta=0.1",
                 "env.prompts_per_iteration=2", "env.group_size=2", "progress=false", "policy.model_config.num_hidden_layers=1"]
    tr = Trainer(validate(compose(overrides)), tmp_path / "sft")
    (tmp_path / "sft").mkdir()
    tr.warm_start(RunLogger(tmp_path / "sft", 1, progress=False, tensorboard=False))
    batch = tr.env.collect(tr.policy)
    torch.testing.assert_close(batch.ref_logp, batch.logp_old)
    rl = Trainer(validate(compose([*overrides[:1], "sft.steps=0", *overrides[2:], f"init_from={tmp_path / 'sft'}"])), tmp_path / "rl")
    batch = rl.env.collect(rl.policy)
    torch.testing.assert_close(batch.ref_logp, batch.logp_old)
