"""VLM token policy: a tiny random Qwen2-VL built offline; training log-probs match the
sampler's, also after rows are gathered in another order."""
import pytest
import torch
from PIL import Image

from workbench.batch import Batch
from workbench.policies.vlm import VLMPolicy, pack_vision, pad_vision
from workbench.registry import ConfigError, POLICIES
from workbench.rollout.base import TokenRollout

TINY_QWEN2_VL = {
    "model_type": "qwen2_vl",
    "text_config": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                    "intermediate_size": 128,
                    "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}},
    "vision_config": {"depth": 1, "embed_dim": 32, "hidden_size": 64, "num_heads": 2, "mlp_ratio": 2},
}


def make_policy(**options):
    torch.manual_seed(0)
    options = {"model_config": TINY_QWEN2_VL, **options}
    cfg = VLMPolicy.Config(tokenizer="char", max_new_tokens=6, min_pixels=28 * 28, max_pixels=84 * 84, **options)
    return VLMPolicy(cfg)


def image_prompt(width, height, color, text):
    return [{"role": "user", "content": [{"type": "image", "image": Image.new("RGB", (width, height), color)},
                                         {"type": "text", "text": text}]}]


@pytest.fixture(scope="module")
def policy():
    return make_policy()


def test_registered_and_vision_frozen_by_default(policy):
    assert POLICIES.get("vlm") is VLMPolicy
    visual = [p.requires_grad for n, p in policy.model.named_parameters() if ".visual." in f".{n}."]
    text = [p.requires_grad for n, p in policy.model.named_parameters() if ".visual." not in f".{n}."]
    assert visual and not any(visual) and all(text)


def test_pad_and_pack_vision_round_trip():
    grid = torch.tensor([[1, 2, 2], [1, 2, 4], [1, 4, 2]])  # 4, 8, 8 patches
    pixels = torch.arange(20.0).unsqueeze(1).repeat(1, 3)
    rows = pad_vision(pixels, grid, [2, 0, 1])
    assert rows["pixel_values"].shape == (3, 12, 3) and rows["pixel_count"].tolist() == [12, 0, 8]
    assert rows["image_count"].tolist() == [2, 0, 1]
    packed = pack_vision({k: v[[2, 0]] for k, v in rows.items()})  # rows in another order
    assert torch.equal(packed["image_grid_thw"], grid[[2, 0, 1]])
    assert torch.equal(packed["pixel_values"], torch.cat([pixels[12:], pixels[:12]]))


def test_log_probs_match_rollout_with_images_of_different_sizes(policy):
    torch.manual_seed(1)
    prompts = [image_prompt(56, 56, (200, 30, 30), "red?"), image_prompt(84, 56, (30, 200, 30), "where is it?")]
    out = policy.rollout(prompts, n=2)
    grids = out.row_inputs["image_grid_thw"][:, 0].tolist()
    assert grids[0] == grids[1] == [1, 4, 4] and grids[2] == grids[3] == [1, 4, 6]
    assert out.logp is out.rollout_logp  # hf sampler in fp32: no recompute needed (auto)
    inputs = policy.policy_inputs(out)
    mask = out.completion_mask
    assert mask.sum() > 0
    with torch.no_grad():
        new = policy.log_probs(inputs).logp * mask
    torch.testing.assert_close(new, out.rollout_logp, atol=1e-5, rtol=0)
    tokens = {k: v for k, v in inputs.items() if k not in out.row_inputs}
    batch = Batch(logp_old=out.logp, mask=mask, rewards=torch.zeros_like(mask), dones=torch.zeros_like(mask),
                  advantages=torch.zeros_like(mask), policy_inputs=tokens, row_inputs=out.row_inputs)
    order = torch.tensor([3, 0, 2])
    minibatch = batch.select(order, "row")
    with torch.no_grad():
        picked = policy.log_probs(minibatch.policy_inputs).logp * minibatch.mask
    torch.testing.assert_close(picked, out.rollout_logp[order], atol=1e-5, rtol=0)
    assert out.select([2, 1]).row_inputs["image_grid_thw"][:, 0].tolist() == [[1, 4, 6], [1, 4, 4]]


def test_qwen2_5_vl_log_probs_match_rollout():
    config = {**TINY_QWEN2_VL, "model_type": "qwen2_5_vl",
              "vision_config": {"depth": 2, "hidden_size": 32, "out_hidden_size": 64, "intermediate_size": 64,
                                "num_heads": 2, "fullatt_block_indexes": [1], "window_size": 56}}
    policy = make_policy(model_config=config)
    assert type(policy.model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    out = policy.rollout([image_prompt(56, 56, (200, 30, 30), "red?"), image_prompt(84, 56, (30, 200, 30), "hm")], n=2)
    with torch.no_grad():
        new = policy.log_probs(policy.policy_inputs(out)).logp * out.completion_mask
    torch.testing.assert_close(new, out.rollout_logp, atol=1e-5, rtol=0)


def test_lora_excludes_vision_tower_unless_trained():
    frozen = make_policy(lora={"r": 4, "target_modules": "all-linear"})
    adapters = [n for n, p in frozen.model.named_parameters() if p.requires_grad]
    assert adapters and all("lora_" in n and ".visual." not in n for n in adapters)
    trained = make_policy(lora={"r": 4, "target_modules": "all-linear"}, train_vision=True)
    assert any(".visual." in n for n, p in trained.model.named_parameters() if p.requires_grad)


def test_lora_reference_is_the_base_and_recompute_matches():
    policy = make_policy(lora={"r": 4, "target_modules": "all-linear"}, reference="lora_base", recompute_logp="true")
    out = policy.rollout([image_prompt(28, 56, (0, 0, 255), "blue?")], n=2)
    assert out.logp is not out.rollout_logp
    torch.testing.assert_close(out.logp, out.rollout_logp, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.ref_logp, out.logp, atol=1e-6, rtol=0)  # fresh adapters: B = 0


def test_bad_options_are_config_errors():
    with pytest.raises(ConfigError, match="min_pixels=10000 exceeds policy.max_pixels=100"):
        VLMPolicy.Config(model_config=TINY_QWEN2_VL, tokenizer="char", min_pixels=10000, max_pixels=100)
    with pytest.raises(ConfigError, match="vllm backend does not pass images"):
        VLMPolicy.Config(model_config=TINY_QWEN2_VL, tokenizer="char", backend="vllm")
    with pytest.raises(ConfigError, match="model_config needs a model_type"):
        VLMPolicy(VLMPolicy.Config(model_config={"text_config": {}}, tokenizer="char"))


def test_rounds_of_vlm_rollouts_concatenate_with_their_images_and_reach_the_batch():
    from workbench.rollout.base import concat_rollouts
    from workbench.rollout.tokens import token_batch

    a = TokenRollout(input_ids=torch.ones(2, 3, dtype=torch.long), attention_mask=torch.ones(2, 3, dtype=torch.long),
                     prompt_length=2, completion_mask=torch.ones(2, 1), rollout_logp=torch.zeros(2, 1),
                     completions=["a", "b"], truncated=torch.zeros(2, dtype=torch.bool), logp=torch.zeros(2, 1),
                     row_inputs={"pixel_values": torch.ones(2, 4, 3), "pixel_count": torch.tensor([4, 4])})
    b = TokenRollout(input_ids=torch.ones(1, 4, dtype=torch.long), attention_mask=torch.ones(1, 4, dtype=torch.long),
                     prompt_length=2, completion_mask=torch.ones(1, 2), rollout_logp=torch.zeros(1, 2),
                     completions=["c"], truncated=torch.zeros(1, dtype=torch.bool), logp=torch.zeros(1, 2),
                     row_inputs={"pixel_values": 2 * torch.ones(1, 6, 3), "pixel_count": torch.tensor([6])})
    both = concat_rollouts([a, b], pad_token_id=0)
    pv = both.row_inputs["pixel_values"]
    assert pv.shape == (3, 6, 3) and pv[0, 4:].abs().sum() == 0 and pv[2].eq(2).all()  # zero padding past each row's count
    assert both.row_inputs["pixel_count"].tolist() == [4, 4, 6]
    assert both.select([2, 0]).row_inputs["pixel_count"].tolist() == [6, 4]
    batch = token_batch(both, group_size=1, max_steps=2)
    assert batch.row_inputs["pixel_count"].tolist() == [4, 4, 6]
