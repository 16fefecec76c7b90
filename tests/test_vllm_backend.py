"""The vLLM backend's CPU-testable parts (padding layout, the weights handed to the engine,
the engine and sampling arguments, syncing only when the weights changed); the engine itself
runs only on a GPU with vLLM installed."""
import pytest
import torch

from workbench.registry import ConfigError
from workbench.rollout.base import SamplingConfig
from workbench.rollout.vllm import WeightSync, WeightVersion, _pad, engine_kwargs, merged_state_dict, sampling_kwargs, save_for_engine
from workbench.tokenizer_utils import build_char_tokenizer


def tiny_qwen2(dtype=torch.float32, tie=False):
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    cfg = AutoConfig.for_model("qwen2", vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                               num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=tie)
    return AutoModelForCausalLM.from_config(cfg, dtype=dtype)


def lora_model(base, targets=("q_proj", "v_proj")):
    from peft import LoraConfig, get_peft_model

    return get_peft_model(base, LoraConfig(r=2, lora_alpha=4, target_modules=list(targets), init_lora_weights=False))


def test_pad_builds_the_shared_left_right_layout():
    tok = build_char_tokenizer()
    eos = tok.eos_token_id
    a, b = tok("12+3=")["input_ids"], tok("1=")["input_ids"]
    rows = [(a, tok("15")["input_ids"] + [eos], [-0.1, -0.2, -0.3]), (b, tok("111")["input_ids"], [-1.0, -1.0, -1.0])]
    out = _pad(rows, tok.pad_token_id, [eos], max_new=3, tokenizer=tok, device="cpu")
    assert out.prompt_length == 5 and out.input_ids.shape == (2, 8)
    assert out.attention_mask[1].tolist() == [0, 0, 0, 1, 1, 1, 1, 1]
    assert out.completion_mask.tolist() == [[1, 1, 1], [1, 1, 1]]
    assert out.completions == ["15", "111"]
    assert out.truncated.tolist() == [False, True]
    torch.testing.assert_close(out.rollout_logp[0], torch.tensor([-0.1, -0.2, -0.3]))


def test_merged_state_dict_has_the_base_checkpoints_names_and_w_plus_scaled_ba():
    base = tiny_qwen2()
    names = set(base.state_dict())
    model = lora_model(base)
    q = "model.layers.0.self_attn.q_proj.weight"
    lora = model.base_model.model.model.layers[0].self_attn.q_proj
    original = lora.base_layer.weight.detach().clone()
    expected = original + lora.scaling["default"] * lora.lora_B["default"].weight @ lora.lora_A["default"].weight
    weights = merged_state_dict(model)
    assert set(weights) == names
    torch.testing.assert_close(weights[q], expected)
    assert lora.scaling["default"] == 2.0 and not torch.equal(weights[q], original)
    torch.testing.assert_close(lora.base_layer.weight, original, rtol=0, atol=0)  # the model is untouched
    assert merged_state_dict(model, torch.bfloat16)[q].dtype == torch.bfloat16


@pytest.mark.parametrize("tie", [False, True])
def test_engine_checkpoint_of_a_lora_policy_loads_as_the_base_model(tmp_path, tie):
    """The folder vLLM starts from has exactly the base checkpoint's tensor names (no
    ``base_layer`` / ``lora_A.default``; tied embeddings saved once), in the engine's dtype,
    with the adapters merged."""
    from safetensors import safe_open

    base = tiny_qwen2(tie=tie)
    base.save_pretrained(tmp_path / "base")
    model = lora_model(base)
    save_for_engine(model, str(tmp_path / "engine"), torch.bfloat16)
    with safe_open(tmp_path / "base" / "model.safetensors", "pt") as f:
        base_names = set(f.keys())
    with safe_open(tmp_path / "engine" / "model.safetensors", "pt") as f:
        assert set(f.keys()) == base_names
        v = "model.layers.0.self_attn.v_proj.weight"
        assert f.get_tensor(v).dtype == torch.bfloat16
        torch.testing.assert_close(f.get_tensor(v), merged_state_dict(model, torch.bfloat16)[v], rtol=0, atol=0)


def test_engine_asks_for_processed_logprobs_and_sampling_params_follow_the_policy():
    kw = engine_kwargs("/m", torch.bfloat16, max_model_len=2048, enforce_eager=True)
    assert kw == {"model": "/m", "dtype": "bfloat16", "gpu_memory_utilization": 0.3, "max_model_len": 2048,
                  "enable_prefix_caching": True, "enforce_eager": True, "logprobs_mode": "processed_logprobs"}
    with pytest.raises(ConfigError, match="policy.vllm.logprobs_mode='raw_logprobs'"):
        engine_kwargs("/m", torch.bfloat16, logprobs_mode="raw_logprobs")
    sp = sampling_kwargs(SamplingConfig(max_new_tokens=16, temperature=0.7, top_p=0.9, top_k=0), n=4, eos_ids=[2, 7])
    assert sp == {"n": 4, "temperature": 0.7, "top_p": 0.9, "top_k": -1, "max_tokens": 16, "logprobs": 0, "stop_token_ids": [2, 7]}
    greedy = sampling_kwargs(SamplingConfig(temperature=-1.0, top_k=5), n=1, eos_ids=[2])
    assert greedy["temperature"] == 0.0 and greedy["top_k"] == 5


def test_weights_are_pushed_only_after_they_changed():
    from workbench.policies.causal_lm import CausalLMPolicy

    policy = CausalLMPolicy(CausalLMPolicy.Config(
        model_config=dict(model_type="qwen2", hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                          num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64),
        tokenizer="char", max_new_tokens=3, dtype="float32"))
    version = WeightVersion(policy.model)
    pushed = []
    sync = WeightSync(pushed.append, version.value, torch.bfloat16)
    assert sync(policy.model, version.value) is False  # the engine starts with these weights
    policy.rollout(["1+2="], n=2)  # collection / evaluation: no gradient, no change
    assert sync(policy.model, version.value) is False and pushed == []
    opt = torch.optim.Adam(policy.param_groups(), lr=1e-3, fused=True)  # fused Adam does not bump Tensor._version
    policy.log_probs({"input_ids": torch.tensor([[5, 6, 7]]), "attention_mask": torch.ones(1, 3, dtype=torch.long),
                     "prompt_length": torch.tensor([1])}).logp.sum().backward()
    opt.step()
    assert sync(policy.model, version.value) is True and len(pushed) == 1
    names = dict(pushed[0])
    assert set(names) == set(policy.model.state_dict()) and names["lm_head.weight"].dtype == torch.bfloat16
    assert sync(policy.model, version.value) is False  # evaluation right after: nothing moved
    policy.load_state_dict(policy.state_dict())  # resume / init_from
    assert sync(policy.model, version.value) is True and len(pushed) == 2


@pytest.mark.gpu
def test_vllm_rollout_matches_training_forward(tmp_path):
    pytest.importorskip("vllm")
    from workbench.policies.causal_lm import CausalLMPolicy

    policy = CausalLMPolicy(CausalLMPolicy.Config(
        model_config=dict(model_type="qwen2", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256),
        tokenizer="char", backend="vllm", max_new_tokens=8, dtype="float32")).cuda()
    out = policy.rollout(["12+34="], n=4)
    assert out.input_ids.shape[0] == 4
    assert ((out.logp - out.rollout_logp).abs() * out.completion_mask).max() < 1e-2
