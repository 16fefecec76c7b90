"""The vLLM backend's CPU-testable parts (padding layout, LoRA-merged weight names); the
engine itself runs only on a GPU with vLLM installed."""
import pytest
import torch

from workbench.rollout.vllm import _pad, merged_weights
from workbench.tokenizer_utils import build_char_tokenizer


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


def test_merged_weights_have_base_names_and_merged_values():
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    cfg = AutoConfig.for_model("qwen2", vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                               num_attention_heads=2, num_key_value_heads=1)
    base = AutoModelForCausalLM.from_config(cfg)
    names = set(base.state_dict())
    model = get_peft_model(base, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"], init_lora_weights=False))
    q = "model.layers.0.self_attn.q_proj.weight"
    lora = model.base_model.model.model.layers[0].self_attn.q_proj
    original = lora.base_layer.weight.detach().clone()
    expected = original + lora.scaling["default"] * lora.lora_B["default"].weight @ lora.lora_A["default"].weight
    with merged_weights(model) as pairs:
        weights = dict(pairs)
        assert set(weights) == names
        torch.testing.assert_close(weights[q], expected)
    torch.testing.assert_close(lora.base_layer.weight, original)  # unmerged again afterwards


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
