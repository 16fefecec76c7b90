"""Text-to-image denoising policies on tiny pipelines loaded from disk: SD (DDIM, DDPO) and SD3
(Flow-GRPO's SDE), trained-step windows, branch sampling, prompt sets, configs."""
import math

import pytest
import torch

from workbench.advantages import compute_advantages
from workbench.config import AlgoConfig, compose, validate
from workbench.objectives import objective
from workbench.registry import ConfigError
from workbench.trainer import Trainer, minibatches


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory):
    from tiny_pipelines import build_tiny_sd, build_tiny_sd3

    root = tmp_path_factory.mktemp("pipelines")
    return {"sd": str(build_tiny_sd(root / "sd")), "sd3": str(build_tiny_sd3(root / "sd3"))}


def flow_policy(path, **kw):
    from workbench.policies.flow import FlowSDEPolicy

    options = dict(pretrained=path, num_steps=3, guidance_scale=2.0)
    options.update(kw)
    return FlowSDEPolicy(FlowSDEPolicy.Config(**options))


def sd_policy(path, **kw):
    from workbench.policies.diffusion import DiffusionDDIMPolicy

    options = dict(pretrained=path, num_steps=3, guidance_scale=3.0)
    options.update(kw)
    return DiffusionDDIMPolicy(DiffusionDDIMPolicy.Config(**options))


def text_env(**kw):
    from envs.diffusion import DiffusionEnv

    options = dict(prompts=["a red cube", "a blue ball"], prompts_per_iteration=2, group_size=2)
    options.update(kw)
    return DiffusionEnv(DiffusionEnv.Config(**options), seed=0)


def first_pass(policy, batch, algo):
    """Every minibatch of one epoch: ratio and KL as the trainer's first pass sees them."""
    batch = compute_advantages(batch, algo)
    for mb in minibatches(batch, policy.sample_unit, algo.num_minibatches):
        yield mb, policy.log_probs(mb.policy_inputs)


def test_flow_step_logp_matches_torch_normal_and_ode_limit_matches_diffusers(pipelines):
    from diffusers import FlowMatchEulerDiscreteScheduler

    from workbench.policies.flow import flow_sde_mean_std

    policy = flow_policy(pipelines["sd3"], guidance_scale=1.0)
    _, traj = policy.sample(["a cat", "a dog"], generator=torch.Generator().manual_seed(0))
    sigmas = policy.schedule["sigma"].tolist() + [0.0]
    for i in range(3):
        x, x_next = traj.x_t[:, i], traj.x_prev[:, i]
        with torch.no_grad():
            v = policy.model(hidden_states=x, timestep=policy.schedule["timesteps"][i].expand(2), **traj.cond).sample
        s, s_next = sigmas[i], sigmas[i + 1]
        dt = s_next - s
        s_t = 0.7 * math.sqrt(s / (1 - (sigmas[1] if s == 1 else s)))  # Flow-GRPO's sigma_t, sigma_max at t = 1
        mean = x * (1 + s_t**2 / (2 * s) * dt) + v * (1 + s_t**2 * (1 - s) / (2 * s)) * dt
        expected = torch.distributions.Normal(mean, s_t * math.sqrt(-dt)).log_prob(x_next).flatten(1).mean(1)
        torch.testing.assert_close(traj.logp[:, i], expected, rtol=1e-5, atol=1e-5)
    # noise_level -> 0 is the ODE: diffusers' Euler step x + v dt
    sched = FlowMatchEulerDiscreteScheduler.from_config(policy.scheduler.config)
    sched.set_timesteps(3)
    x, v = torch.randn(2, 4, 16, 16), torch.randn(2, 4, 16, 16)
    mean, std = flow_sde_mean_std(v, x, sched.sigmas[1].expand(2), sched.sigmas[2].expand(2), float(sched.sigmas[1]), 0.0)
    sched.set_begin_index(1)
    ref = sched.step(v, sched.timesteps[1], x, return_dict=False)[0]
    torch.testing.assert_close(mean, ref, rtol=1e-5, atol=1e-5)
    assert float(std.abs().max()) == 0.0


def test_flow_ratio_is_one_kl_zero_at_lora_init_and_checkpoint_holds_adapters_only(pipelines):
    policy = flow_policy(pipelines["sd3"], lora={"r": 2}, reference="lora_base", timestep_fraction=0.67)
    env = text_env()
    batch = env.assign_rewards(env.collect(policy))
    assert set(batch.row_inputs) == {"encoder_hidden_states", "pooled_projections"}
    assert batch.mask.sum(1).eq(2).all()  # round(3 * 0.67) steps per image
    algo = AlgoConfig(advantage="grpo", num_minibatches=2, update_epochs=1, beta=0.1, epsilon=1e-4)
    for mb, out in first_pass(policy, batch, algo):
        torch.testing.assert_close(torch.exp(out.logp - mb.logp_old), torch.ones_like(out.logp), rtol=0, atol=1e-4)
        assert float(out.kl.detach().abs().max()) == 0.0
        loss, _ = objective(out, mb, algo)
        loss.backward()
    assert all(p.grad is not None for p in policy.parameters() if p.requires_grad)
    state = policy.state_dict()
    params = dict(policy.named_parameters())
    assert {k for k, p in params.items() if p.requires_grad} <= set(state)  # the adapters are saved,
    assert not {k for k, p in params.items() if not p.requires_grad} & set(state)  # frozen base weights are not
    fresh = flow_policy(pipelines["sd3"], lora={"r": 2}, reference="lora_base")
    fresh.load_state_dict(state)
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, state[k])


def test_flow_refuses_the_deterministic_ode_and_a_missing_model(pipelines, tmp_path):
    from workbench.policies.flow import FlowSDEPolicy

    with pytest.raises(ConfigError, match="noise_level"):
        FlowSDEPolicy.Config(pretrained=pipelines["sd3"], noise_level=0.0)
    with pytest.raises(ConfigError, match="pretrained"):
        flow_policy(str(tmp_path / "nothing-here"))
    with pytest.raises(ConfigError, match="diffusion_flow needs"):
        flow_policy(pipelines["sd"])  # an SD-1.x pipeline has no transformer
    with pytest.raises(ConfigError, match="text-conditioned"):
        flow_policy(pipelines["sd3"]).sample([0, 1])


def test_flow_evaluation_runs_more_deterministic_steps(pipelines):
    policy = flow_policy(pipelines["sd3"], eval_num_steps=5)
    images, traj = policy.sample(["a cat"], generator=torch.Generator().manual_seed(1), evaluation=True)
    again, _ = policy.sample(["a cat"], generator=torch.Generator().manual_seed(2), evaluation=True)
    assert traj.x_t.shape[1] == 5 and traj.train_mask.sum() == 0
    assert not torch.equal(images, again)  # the start noise differs; the chain itself is the ODE
    assert images.shape == (1, 3, 32, 32) and 0 <= float(images.min()) and float(images.max()) <= 1


def test_sd_pipeline_ddpo_ratio_one_and_kl_zero_with_lora(pipelines):
    policy = sd_policy(pipelines["sd"], lora={"r": 2}, reference="lora_base")
    assert "model.conv_in.weight" not in policy.state_dict()
    env = text_env()
    batch = env.assign_rewards(env.collect(policy))
    assert batch.row_inputs["encoder_hidden_states"].shape[0] == batch.num_rows
    algo = AlgoConfig(advantage="grpo", num_minibatches=3, update_epochs=1, beta=0.1)
    for mb, out in first_pass(policy, batch, algo):
        torch.testing.assert_close(torch.exp(out.logp - mb.logp_old), torch.ones_like(out.logp), rtol=0, atol=1e-4)
        assert float(out.kl.detach().abs().max()) == 0.0
    with pytest.raises(ConfigError, match="eta"):
        sd_policy(pipelines["sd"], eta=0.0)


def test_trained_window_and_backward_progressive_schedule():
    from workbench.stages.step_selectors import trained_window

    assert trained_window(10, 0, None, None, 100) == (0, 10)
    assert trained_window(10, 0, [2, -2], None, 100) == (2, 8)
    # B²-DiffuRL: 20 steps, 14 trained first, all 20 by the end of 100 stages (14 + floor(i * 7 / 100))
    starts = [trained_window(20, i, None, 14, 100)[0] for i in (0, 14, 15, 50, 99, 150)]
    assert starts == [6, 6, 5, 3, 0, 0]
    with pytest.raises(ConfigError, match="train_window"):
        validate(compose(["experiment=ddpo_compressibility_demo", "policy.train_window=[5,2]"]))


def test_branch_sampling_shares_the_chain_before_the_window(pipelines):
    policy = flow_policy(pipelines["sd3"], num_steps=4, train_window=[2, 4])
    env = text_env(branch=True, group_size=3)
    batch = env.collect(policy)
    x = batch.policy_inputs["x_t"]
    for g in range(2):
        rows = x[3 * g:3 * g + 3]
        assert torch.equal(rows[0, :3], rows[1, :3]) and torch.equal(rows[0, :3], rows[2, :3])  # shared through step 2's input
        assert not torch.equal(rows[0, 3], rows[1, 3])  # the branches split at step 2
    assert not torch.equal(x[0, 0], x[3, 0])  # different trunks
    assert batch.mask[:, :2].eq(0).all() and batch.mask[:, 2:].eq(1).all()
    out = policy.log_probs({**{k: v[:, 2:3] for k, v in batch.policy_inputs.items()},
                           **{k: v.unsqueeze(1) for k, v in batch.row_inputs.items()}})
    torch.testing.assert_close(out.logp[:, 0], batch.logp_old[:, 2], rtol=0, atol=1e-5)


def test_prompt_file_with_metadata_reaches_the_rewards(tmp_path):
    import json

    from envs.diffusion import DiffusionEnv, load_prompts
    from workbench.registry import REWARDS

    seen = {}

    @REWARDS.register("_test_metadata_echo")
    def echo():
        def fn(completions, prompt, colour, **_):
            seen["prompt"], seen["colour"] = list(prompt), list(colour)
            return [1.0 if c == "red" else 0.0 for c in colour]
        return fn

    path = tmp_path / "prompts.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [{"text": "a red cube", "colour": "red"}, {"text": "sky", "colour": "blue"}]))
    assert load_prompts(str(path), "text") == [{"colour": "red", "prompt": "a red cube"}, {"colour": "blue", "prompt": "sky"}]
    txt = tmp_path / "p.txt"
    txt.write_text("# animals\ncat\n\ndog\n")
    assert load_prompts(str(txt)) == ["cat", "dog"]
    with pytest.raises(ConfigError, match="no column"):
        load_prompts(str(path), "prompt")
    with pytest.raises(ConfigError, match="not found"):
        load_prompts(str(tmp_path / "missing.jsonl"))
    env = DiffusionEnv(DiffusionEnv.Config(prompt_file=str(path), prompt_column="text", prompts_per_iteration=2, group_size=1,
                                           rewards=[{"name": "_test_metadata_echo"}]), seed=0)
    result, _ = env._score(torch.rand(2, 3, 8, 8), [1, 0])
    assert seen == {"prompt": ["sky", "a red cube"], "colour": ["blue", "red"]} and result.scores == [0.0, 1.0]


def test_shipped_gpu_diffusion_configs_compose_and_validate():
    for name, policy in (("sd15_ddpo_compressibility", "diffusion_ddim"), ("sd35m_flow_grpo_compressibility", "diffusion_flow")):
        run = validate(compose([f"experiment={name}"]))
        assert run.policy.name == policy and run.policy.lora and run.device == "cuda"
        assert run.algo.advantage_clip == 5.0 and len(run.env.prompts) == 45


def test_flow_grpo_trains_through_the_trainer(pipelines, tmp_path):
    overrides = [
        "experiment=ddpo_compressibility_demo", "policy=sd35m_flow_lora", f"policy.pretrained={pipelines['sd3']}",
        "policy.resolution=32", "policy.num_steps=2", "policy.eval_num_steps=3", "policy.weights_dtype=float32",
        "policy.lora={r: 2}", "env=animal_prompts", "env.prompts_per_iteration=2", "env.group_size=2",
        "algo.advantage=per_prompt", "algo.stat_min_count=2", "algo.advantage_clip=5", "algo.num_minibatches=2",
        "algo.beta=0.01", "algo.lr=1e-3", "progress=false", "threads=1", "total_steps=8", "eval_episodes=2",
        f"run_dir={tmp_path / 'run'}",
    ]
    run = validate(compose(overrides))
    trainer = Trainer(run, tmp_path / "run")
    before = {k: v.clone() for k, v in trainer.policy.state_dict().items()}
    final = trainer.train(plot=False)
    assert trainer.iteration == 2 and math.isfinite(final["eval/return_mean"])
    assert any(not torch.equal(before[k], v) for k, v in trainer.policy.state_dict().items())
    assert trainer.advantage_state["per_prompt"]  # the DDPO tracker remembered rewards by prompt
    resumed = Trainer(run, tmp_path / "run")
    resumed.resume()
    assert resumed.advantage_state == trainer.advantage_state
