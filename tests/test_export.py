"""`workbench export`: each policy family leaves a run in the format its own library loads, and
that library reproduces the trained policy's outputs from the exported files alone.

Run directories are made as the trainer makes them (config.yaml + a checkpoint holding
``{"policy": state_dict}``), with every trainable weight moved off its initial value, so an
export that dropped the trained values (e.g. LoRA B left at zero) would fail the comparison.
"""
import json

import numpy as np
import pytest
import torch

from workbench import checkpoint, config
from workbench.registry import ConfigError, ENVS, POLICIES


def make_run(tmp_path, overrides, name="run"):
    """A run directory with a "trained" policy; returns (run_dir, the policy in eval mode, env spec)."""
    run = config.validate(config.compose(overrides))
    run_dir = tmp_path / name
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(config.to_yaml(run))
    env = ENVS.get(run.env.name)(run.env, seed=run.seed)
    spec = env.spec()
    env.close()
    policy = POLICIES.get(run.policy.name)(run.policy, spec)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in policy.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=gen).to(p.dtype))
    if hasattr(policy, "obs_rms"):  # statistics a trained control policy would have gathered
        policy.obs_rms.update(np.random.default_rng(0).normal(2.0, 3.0, (64, *policy.obs_rms.mean.shape)))
    checkpoint.save(checkpoint.checkpoint_path(run_dir / "checkpoints", 3), {"policy": policy.state_dict()})
    return run_dir, policy.eval(), spec


TEXT = ["experiment=arithmetic_grpo_tiny", "policy.model_config.num_hidden_layers=1"]


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_token_policy_full_and_lora_merged_load_with_transformers(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from workbench.export import export_run

    for name, extra in (("full", []), ("lora", ["policy.lora={r: 4, lora_alpha: 8, target_modules: all-linear}"])):
        run_dir, policy, _ = make_run(tmp_path, TEXT + extra, name)
        out = tmp_path / f"{name}_out"
        info = export_run(run_dir, out)
        assert info["checkpoint"] == "ckpt_00000003.safetensors" and info["format"].startswith("transformers")
        tok = AutoTokenizer.from_pretrained(out)
        ids = torch.tensor([tok("12+34=")["input_ids"]])
        assert ids.tolist() == [policy.tokenizer("12+34=")["input_ids"]]
        model = AutoModelForCausalLM.from_pretrained(out).eval()
        assert not any("lora" in k for k in model.state_dict())
        torch.testing.assert_close(_logits(model, ids), _logits(policy.model, ids), rtol=1e-5, atol=1e-5)
        assert json.loads((out / "export.json").read_text())["policy"] == "causal_lm"


def test_token_policy_lora_adapter_loads_with_peft(tmp_path):
    from peft import PeftModel
    from transformers import AutoConfig, AutoModelForCausalLM

    from workbench.export import export_run
    from workbench.tokenizer_utils import build_char_tokenizer

    base_dir = tmp_path / "base"  # a base model on disk, as a user's hub model would be
    torch.manual_seed(0)
    cfg = AutoConfig.for_model("qwen2", hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                               num_key_value_heads=1, max_position_embeddings=64, vocab_size=len(build_char_tokenizer()))
    AutoModelForCausalLM.from_config(cfg).save_pretrained(base_dir)
    build_char_tokenizer().save_pretrained(base_dir)
    lora = "policy.lora={r: 4, target_modules: all-linear}"
    overrides = [f"policy.model={base_dir}", "~policy.model_config", "policy.tokenizer=null", lora]
    run_dir, policy, _ = make_run(tmp_path, TEXT[:1] + overrides)
    out = tmp_path / "adapter"
    info = export_run(run_dir, out, lora="adapter")
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in out.iterdir()}
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == str(base_dir)
    assert "PeftModel" in info["load"]
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), out).eval()
    ids = torch.tensor([[5, 9, 14, 3, 7]])
    torch.testing.assert_close(_logits(model, ids), _logits(policy.model, ids), rtol=1e-5, atol=1e-5)
    base = AutoModelForCausalLM.from_pretrained(base_dir).eval()
    assert (_logits(base, ids) - _logits(policy.model, ids)).abs().max() > 1e-3  # the adapter carries trained values


def test_adapter_of_a_random_init_base_is_refused_with_the_way_out(tmp_path):
    from workbench.export import export_run

    run_dir, _, _ = make_run(tmp_path, TEXT + ["policy.lora={r: 2, target_modules: all-linear}"])
    with pytest.raises(ConfigError, match="export the merged model"):
        export_run(run_dir, tmp_path / "out", lora="adapter")
    assert not (tmp_path / "out").exists()


UNET = ["experiment=ddpo_compressibility_demo", "policy.num_steps=2", "policy.train_window=null", "env.prompts_per_iteration=2", "env.group_size=2"]


def test_class_conditioned_unet_full_and_lora_merged_load_with_diffusers(tmp_path):
    from diffusers import DDIMScheduler, UNet2DModel

    from workbench.export import export_run

    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    t, labels = torch.tensor([900, 10]), torch.tensor([0, 3])
    for name, extra in (("full", []), ("lora", ["policy.lora={r: 4, lora_alpha: 8}"])):
        run_dir, policy, _ = make_run(tmp_path, UNET + extra, name)
        out = tmp_path / f"{name}_out"
        export_run(run_dir, out)
        unet = UNet2DModel.from_pretrained(out, subfolder="unet").eval()
        with torch.no_grad():
            torch.testing.assert_close(unet(x, t, class_labels=labels).sample, policy.model(x, t, class_labels=labels).sample,
                                       rtol=1e-4, atol=1e-5)
        sched = DDIMScheduler.from_pretrained(out, subfolder="scheduler")
        assert sched.config.steps_offset == 1 and sched.config.set_alpha_to_one is False
    with pytest.raises(ConfigError, match="bare UNet2DModel; export the merged model"):
        export_run(tmp_path / "lora", tmp_path / "adapter_out", lora="adapter")


def test_sd_lora_loads_with_load_lora_weights_and_reproduces_the_unet(tmp_path):
    from diffusers import StableDiffusionPipeline

    from workbench.export import export_run
    from tiny_pipelines import build_tiny_sd

    sd = build_tiny_sd(tmp_path / "sd")
    run_dir, policy, _ = make_run(tmp_path, UNET + ["env=animal_prompts", f"policy.pretrained={sd}",
                                                    "policy.lora={r: 2, lora_alpha: 4}"])
    out = tmp_path / "lora"
    info = export_run(run_dir, out)
    assert (out / "pytorch_lora_weights.safetensors").exists() and "load_lora_weights" in info["load"]
    pipe = StableDiffusionPipeline.from_pretrained(sd, safety_checker=None, requires_safety_checker=False)
    x, t = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0)), torch.tensor([900, 10])
    cond = torch.randn(2, 16, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = pipe.unet(x, t, encoder_hidden_states=cond).sample
        pipe.load_lora_weights(out)
        after = pipe.unet(x, t, encoder_hidden_states=cond).sample
        trained = policy.model(x, t, encoder_hidden_states=cond).sample
    torch.testing.assert_close(after, trained, rtol=1e-4, atol=1e-5)
    assert (before - trained).abs().max() > 1e-3  # the adapter changed the UNet


def test_sd3_lora_as_diffusers_lora_and_merged_transformer(tmp_path):
    from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline

    from workbench.export import export_run
    from tiny_pipelines import build_tiny_sd3

    sd3 = build_tiny_sd3(tmp_path / "sd3")
    run_dir, policy, _ = make_run(tmp_path, UNET + ["env=animal_prompts", "policy=sd35m_flow_lora", f"policy.pretrained={sd3}",
                                                    "policy.resolution=32", "policy.weights_dtype=float32", "policy.lora={r: 2}"])
    x = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    cond = {"encoder_hidden_states": torch.randn(2, 5, 64, generator=torch.Generator().manual_seed(1)),
            "pooled_projections": torch.randn(2, 64, generator=torch.Generator().manual_seed(2)),
            "timestep": torch.tensor([900.0, 10.0])}
    with torch.no_grad():
        trained = policy.model(hidden_states=x, **cond).sample
    export_run(run_dir, tmp_path / "lora")
    pipe = StableDiffusion3Pipeline.from_pretrained(sd3, text_encoder_3=None, tokenizer_3=None)  # the tiny pipeline has no T5
    pipe.load_lora_weights(tmp_path / "lora")
    export_run(run_dir, tmp_path / "merged", lora="merge")
    merged = SD3Transformer2DModel.from_pretrained(tmp_path / "merged", subfolder="transformer")
    with torch.no_grad():
        torch.testing.assert_close(pipe.transformer(hidden_states=x, **cond).sample, trained, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(merged(hidden_states=x, **cond).sample, trained, rtol=1e-4, atol=1e-5)


CONTROL = ["experiment=inverted_pendulum_ppo", "env.num_envs=1"]


def test_control_policy_loader_reproduces_deterministic_actions_on_raw_observations(tmp_path):
    from workbench.export import export_run, load_control_policy

    run_dir, policy, spec = make_run(tmp_path, CONTROL)
    out = tmp_path / "ctrl"
    export_run(run_dir, out)
    assert sorted(p.name for p in out.iterdir()) == ["export.json", "model.safetensors", "policy.json"]
    act = load_control_policy(out)
    obs = np.random.default_rng(3).normal(2.0, 3.0, (5, spec.observation_shape[0]))  # raw: far from normalised
    expected = np.clip(policy.act(obs, deterministic=True, update_stats=False).actions.numpy(), spec.action_low, spec.action_high)
    np.testing.assert_array_equal(act(obs), expected.astype(np.float32))
    one = policy.act(obs[:1], deterministic=True, update_stats=False).actions.numpy()[0]
    one = np.clip(one, spec.action_low, spec.action_high)
    np.testing.assert_array_equal(act(obs[0]), one.astype(np.float32))  # one observation -> one action (a batch of one)
    np.testing.assert_array_equal(act.policy.obs_rms.mean, policy.obs_rms.mean)  # statistics travel, exactly


def test_pixel_control_policy_round_trips(tmp_path):
    import gymnasium as gym

    from workbench.environment import EnvSpec
    from workbench.export import export_policy, load_control_policy
    from workbench.policies.visuomotor import GaussianCNNPolicy

    space = gym.spaces.Dict({"pixels": gym.spaces.Box(0, 255, (3, 36, 36), np.uint8),
                             "state": gym.spaces.Box(-np.inf, np.inf, (4,))})
    spec = EnvSpec((3, 36, 36), 2, np.array([-1.0, -1.0]), np.array([1.0, 1.0]), space)
    policy = GaussianCNNPolicy(GaussianCNNPolicy.Config(encoder="drq", feature_dim=8, hidden=[16]), spec)
    policy.obs_rms.update(np.random.default_rng(0).normal(1.0, 2.0, (32, 4)))
    with torch.no_grad():
        policy.actor[-1].weight.mul_(100)  # actions large enough to reach the clip
    export_policy(policy, tmp_path, spec=spec)
    rng = np.random.default_rng(1)
    obs = {"pixels": rng.integers(0, 256, (3, 3, 36, 36), dtype=np.uint8), "state": rng.normal(size=(3, 4))}
    expected = np.clip(policy.act(obs, deterministic=True, update_stats=False).actions.numpy(), -1, 1)
    np.testing.assert_array_equal(load_control_policy(tmp_path)(obs), expected.astype(np.float32))


def test_cli_export_errors_are_one_line(tmp_path):
    from workbench.cli import main

    empty = tmp_path / "empty_run"
    empty.mkdir()
    run = config.validate(config.compose(CONTROL))
    (empty / "config.yaml").write_text(config.to_yaml(run))
    assert main(["export", str(empty), str(tmp_path / "out")]) == 2  # no checkpoints
    run_dir, _, _ = make_run(tmp_path, CONTROL)
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("x")
    assert main(["export", str(run_dir), str(taken)]) == 2
    assert (taken / "keep.txt").exists()
    assert main(["export", str(run_dir), str(taken), "--force"]) == 0
    assert not (taken / "keep.txt").exists() and (taken / "policy.json").exists()
    assert main(["export", str(run_dir), str(tmp_path / "o2"), "--merge-lora"]) == 2  # control policies have no LoRA


def test_cli_export_messages(tmp_path, capsys):
    from workbench.cli import main

    empty = tmp_path / "run"
    (empty / "checkpoints").mkdir(parents=True)
    (empty / "config.yaml").write_text(config.to_yaml(config.validate(config.compose(CONTROL))))
    main(["export", str(empty), str(tmp_path / "out")])
    assert capsys.readouterr().err == f"workbench: error: no checkpoint found in {empty / 'checkpoints'}\n"
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "f").write_text("")
    main(["export", str(empty), str(tmp_path / "busy")])
    assert capsys.readouterr().err == (f"workbench: error: export: OUT {tmp_path / 'busy'} exists and is not empty; "
                                       "choose another folder or pass --force to replace it\n")
