"""Mixed precision: trained weights stay float32 masters while compute runs in bf16 autocast;
frozen weights (reference copy, LoRA base) may be bf16. A bf16 master would lose Adam's small
steps: at lr 1e-6 a weight of 0.02 (bf16 rounding step ~1.2e-4) would not move at all."""
import pytest
import torch

from workbench.policies.causal_lm import CausalLMPolicy
from workbench.registry import ConfigError
from workbench.trainer import check_master_weights

TINY = dict(model_type="qwen2", hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
            num_key_value_heads=1, max_position_embeddings=64)


def test_bf16_run_trains_fp32_masters_by_exactly_fp32_adams_step(tmp_path):
    """precision=bf16 with policy.dtype=bfloat16: one update through the trainer at lr 1e-6 moves
    every trained weight by Adam's first step, -lr * g / (|g| + eps), the forward running in bf16."""
    from workbench.advantages import compute_advantages
    from workbench.config import compose, validate
    from workbench.trainer import Trainer

    run = validate(compose(["experiment=arithmetic_grpo_tiny", "policy.dtype=bfloat16", "policy.reference=frozen",
                            "precision=bf16", "device=cpu", "threads=1", "algo.lr=1e-6", "algo.update_epochs=1",
                            "algo.num_minibatches=1", "env.prompts_per_iteration=2", "env.group_size=4", "progress=false",
                            "policy.model_config.num_hidden_layers=1"]))
    tr = Trainer(run, tmp_path / "run")
    policy = tr.policy
    assert {p.dtype for p in tr.params} == {torch.float32}
    assert {p.dtype for p in policy.reference.parameters()} == {torch.bfloat16}  # frozen: bf16 is fine
    with torch.autocast("cpu", dtype=torch.bfloat16):
        batch = tr.env.collect(policy)
    batch = compute_advantages(batch, tr.algo, {})
    sign = torch.tensor([1.0, -1.0]).repeat(batch.num_rows // 2)  # rewards of a random model are all 0: set advantages
    batch.advantages = sign[:, None] * batch.mask  # [N, T]

    before = [p.detach().clone() for p in tr.params]
    grads, head_dtypes = [], []
    tr.optimizer.register_step_pre_hook(lambda opt, args, kwargs: grads.extend(p.grad.clone() for p in tr.params))
    policy.model.lm_head.register_forward_hook(lambda m, i, out: head_dtypes.append(out.dtype))
    policy.train()
    tr.update(batch)

    assert head_dtypes == [torch.bfloat16]  # the training forward ran in bf16
    lr, eps = 1e-6, run.algo.adam_eps
    moved = 0
    for p, p0, g in zip(tr.params, before, grads):
        expected = -lr * g / (g.abs() + eps)  # Adam's first step (bias-corrected m = g, v = g^2)
        ulp = torch.finfo(torch.float32).eps * p0.abs()  # the delta is exact up to p's own fp32 rounding
        assert ((p.detach() - p0 - expected).abs() <= ulp + 1e-10).all()
        moved += int(((p.detach() - p0).abs() > 0.5 * lr).sum())
    assert moved > 1000  # most weights with a real gradient moved by ~lr


def test_lora_base_in_bf16_with_fp32_adapters_runs_with_and_without_autocast():
    policy = CausalLMPolicy(CausalLMPolicy.Config(model_config=TINY, tokenizer="char", dtype="bfloat16",
                                                  lora={"r": 2, "lora_alpha": 4, "target_modules": ["q_proj", "v_proj"]},
                                                  reference="lora_base", max_new_tokens=3))
    trained = {p.dtype for p in policy.model.parameters() if p.requires_grad}
    frozen = {p.dtype for p in policy.model.parameters() if not p.requires_grad}
    assert trained == {torch.float32} and frozen == {torch.bfloat16}
    out = policy.rollout(["1+2="], n=2)
    assert out.logp.dtype == torch.float32 and torch.isfinite(out.logp).all()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = policy.rollout(["1+2="], n=2)
    assert torch.isfinite(out.ref_logp).all()


def test_needs_recompute_when_the_sampler_computes_in_bf16():
    policy = CausalLMPolicy(CausalLMPolicy.Config(model_config=TINY, tokenizer="char", dtype="bfloat16",
                                                  max_new_tokens=16))
    assert {p.dtype for p in policy.parameters()} == {torch.float32}  # full fine-tuning: masters, no frozen copy
    assert policy._needs_recompute() is False  # fp32 compute: generate and the training forward agree
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert policy._needs_recompute() is True


def test_trainer_refuses_bf16_trained_parameters():
    check_master_weights([torch.zeros(2), torch.nn.Parameter(torch.zeros(2))], "p")
    with pytest.raises(ConfigError, match="policy p: trained parameters are bfloat16; the policy must keep them float32"):
        check_master_weights([torch.zeros(2), torch.zeros(2, dtype=torch.bfloat16)], "p")
