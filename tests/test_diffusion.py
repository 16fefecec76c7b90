"""DDPO pieces: the DDIM (eta > 0) policy, JPEG rewards, the diffusion env, and a short training run."""
import math

import numpy as np
import pytest
import torch

from workbench.advantages import compute_advantages
from workbench.batch import Minibatch
from workbench.config import AlgoConfig, compose, validate
from workbench.objectives import objective
from workbench.registry import ConfigError
from workbench.trainer import Trainer, minibatches

TINY = {
    "sample_size": 16,
    "in_channels": 3,
    "out_channels": 3,
    "layers_per_block": 1,
    "block_out_channels": [8, 16],
    "down_block_types": ["DownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "UpBlock2D"],
    "norm_num_groups": 4,
    "num_class_embeds": 5,
}


def make_policy(**kw):
    from workbench.policies.diffusion import DiffusionDDIMPolicy

    options = dict(unet_config=dict(TINY), num_steps=4, init_seed=0)
    options.update(kw)
    return DiffusionDDIMPolicy(DiffusionDDIMPolicy.Config(**options))


def make_env(**kw):
    from envs.diffusion import DiffusionEnv

    options = dict(prompts=[0, 1], prompts_per_iteration=2, group_size=3)
    options.update(kw)
    return DiffusionEnv(DiffusionEnv.Config(**options), seed=0)


def cells(batch, rows=None):
    """policy_inputs (and the row inputs) of every (row, step) cell as [M, 1, ...], in row-major order."""
    T = batch.num_steps
    return {**{k: v.reshape(-1, *v.shape[2:]).unsqueeze(1) for k, v in batch.policy_inputs.items()},
            **{k: v.repeat_interleave(T, 0).unsqueeze(1) for k, v in batch.row_inputs.items()}}


def test_step_logp_matches_torch_normal():
    from workbench.policies.diffusion import gaussian_logp

    policy = make_policy()
    gen = torch.Generator().manual_seed(0)
    _, traj = policy.sample(torch.tensor([0, 1, 2]), generator=gen)
    for step in (0, 2, 3):
        x_t, x_prev, cond = traj.x_t[:, step], traj.x_prev[:, step], traj.cond["class_labels"]
        t = policy.schedule["timesteps"][traj.step[:, step]]
        with torch.no_grad():
            eps = policy.model(x_t, t, class_labels=cond).sample
        # DDIM eq. 12/16 written out independently from the scheduler's alphas
        ac = policy.scheduler.alphas_cumprod
        tt = int(t[0])
        prev = tt - policy.scheduler.config.num_train_timesteps // policy.cfg.num_steps
        a_t = ac[tt]
        a_prev = ac[prev] if prev >= 0 else ac[0]  # set_alpha_to_one=False: the final alpha is alphas_cumprod[0]
        x0 = ((x_t - (1 - a_t).sqrt() * eps) / a_t.sqrt()).clamp(-1, 1)
        sigma = policy.cfg.eta * ((1 - a_prev) / (1 - a_t)).sqrt() * (1 - a_t / a_prev).sqrt()
        mean = a_prev.sqrt() * x0 + (1 - a_prev - sigma**2).sqrt() * eps
        expected = torch.distributions.Normal(mean, sigma).log_prob(x_prev).flatten(1).mean(1)
        torch.testing.assert_close(traj.logp[:, step], expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(gaussian_logp(x_prev, mean, sigma.expand(3)), expected, rtol=1e-5, atol=1e-5)
    assert torch.isfinite(traj.logp).all()  # incl. the last step (set_alpha_to_one=False, steps_offset=1)


def test_ddim_mean_matches_diffusers_scheduler_step():
    from workbench.policies.diffusion import ddim_step_mean_std

    policy = make_policy()
    sched = policy.scheduler
    x_t = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    eps = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    sched.set_timesteps(policy.cfg.num_steps)
    for i, t in enumerate(sched.timesteps):
        step = torch.full((2,), i)
        assert int(policy.schedule["timesteps"][i]) == int(t)
        a_t, a_prev = policy.schedule["alpha_t"][step], policy.schedule["alpha_prev"][step]
        mean, std = ddim_step_mean_std(eps, x_t, a_t, a_prev, 1.0, policy.clip_sample)
        noise = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))
        ref = sched.step(eps, int(t), x_t, eta=1.0, variance_noise=noise).prev_sample
        torch.testing.assert_close(mean + std.view(-1, 1, 1, 1) * noise, ref, rtol=1e-5, atol=1e-5)


def test_evaluate_reproduces_logp_old_and_ratio_is_one():
    policy = make_policy(reference="frozen", timestep_fraction=0.5)
    env = make_env()
    batch = env.assign_rewards(env.collect(policy))
    out = policy.log_probs(cells(batch))
    assert out.logp.shape == (batch.num_rows * batch.num_steps, 1)
    torch.testing.assert_close(out.logp.view_as(batch.logp_old), batch.logp_old, rtol=0, atol=1e-5)
    # the PPO ratio of the first pass through the trainer's own cell sampler is 1
    algo = AlgoConfig(advantage="grpo", num_minibatches=2, update_epochs=1, beta=0.1)
    batch = compute_advantages(batch, algo)
    for mb in minibatches(batch, policy.sample_unit, algo.num_minibatches):
        out = policy.log_probs(mb.policy_inputs)
        ratio = torch.exp(out.logp - mb.logp_old)
        torch.testing.assert_close(ratio, torch.ones_like(ratio), rtol=0, atol=1e-4)
        # KL to the frozen reference is exactly 0 at init
        assert out.kl is not None and out.kl.shape == mb.mask.shape
        assert float(out.kl.detach().abs().max()) == 0.0
        loss, metrics = objective(out, mb, algo)
        assert torch.isfinite(loss) and float(metrics["loss/kl_ref"]) == 0.0
        loss.backward()


def test_kl_is_zero_with_lora_reference_at_init_and_positive_after_change():
    policy = make_policy(lora={"r": 2, "target_modules": ["conv1", "conv2"]}, reference="lora_base")
    trainable = [n for n, p in policy.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    env = make_env()
    batch = env.assign_rewards(env.collect(policy))
    out = policy.log_probs(cells(batch))
    assert float(out.kl.detach().abs().max()) == 0.0  # lora_B starts at zero
    with torch.no_grad():
        for n, p in policy.model.named_parameters():
            if "lora_B" in n:
                p.add_(0.05)
    out = policy.log_probs(cells(batch))
    assert float(out.kl.detach().min()) > 0.0


def test_eta_zero_is_refused():
    from workbench.policies.diffusion import DiffusionDDIMPolicy

    with pytest.raises(ConfigError, match="eta"):
        DiffusionDDIMPolicy.Config(eta=0.0)
    with pytest.raises(ConfigError, match="policy.eta"):
        validate(compose(["experiment=ddpo_compressibility_demo", "policy.eta=0"]))


def test_jpeg_reward_prefers_flat_images():
    from workbench.rewards import RewardPipeline, build_reward
    from workbench.rewards.image import jpeg_size_kb

    flat = np.full((32, 32, 3), 128, dtype=np.uint8)
    noise = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    assert jpeg_size_kb(flat) < jpeg_size_kb(noise)
    comp = build_reward("jpeg_compressibility")
    out = comp([flat, noise])
    assert out["score"][0] > out["score"][1]  # flat compresses better: higher reward
    assert out["score"][0] == pytest.approx(-out["kb"][0])
    incomp = build_reward("jpeg_incompressibility", scale=0.002)([flat, noise])
    assert incomp["score"][1] > incomp["score"][0] > 0
    # through the pipeline, images as completions or as an ``images`` column, float CHW tensors too
    pipe = RewardPipeline([{"name": "jpeg_compressibility", "scale": 0.002}])
    chw = torch.from_numpy(noise).permute(2, 0, 1).float() / 255
    result = pipe([flat, chw])
    assert result.scores[0] > result.scores[1] and result.num_failures == 0
    assert pipe(["a", "b"], images=[flat, noise]).scores == result.scores
    with pytest.raises(ConfigError):
        build_reward("jpeg_compressibility", scale=-1)


def test_env_batch_shapes_and_rewards(tmp_path):
    policy = make_policy()
    env = make_env(image_dir=str(tmp_path / "images"), image_every=1)
    batch = env.collect(policy)
    N, T = 6, 4
    assert batch.logp_old.shape == batch.mask.shape == batch.rewards.shape == batch.dones.shape == (N, T)
    assert batch.group.tolist() == [0, 0, 0, 1, 1, 1]
    pi = batch.policy_inputs
    assert pi["x_t"].shape == pi["x_prev"].shape == (N, T, 3, 16, 16)
    assert pi["step"].shape == (N, T) and pi["step"][0].tolist() == [0, 1, 2, 3]
    assert batch.row_inputs["class_labels"].tolist() == [0, 0, 0, 1, 1, 1]  # stored once per row
    ts = policy.schedule["timesteps"].tolist()
    assert ts == sorted(ts, reverse=True)  # noisiest first
    assert torch.equal(pi["x_t"][:, 1:], pi["x_prev"][:, :-1])  # a chain
    assert batch.dones[:, -1].eq(1).all() and batch.dones[:, :-1].eq(0).all()
    assert batch.mask.eq(1).all()
    batch = env.assign_rewards(batch)
    assert batch.rewards[:, :-1].eq(0).all() and (batch.rewards[:, -1] < 0).all()
    metrics = env.pop_metrics()
    assert metrics["image/jpeg_kb"] > 0
    assert metrics["reward/jpeg_compressibility"] == pytest.approx(-metrics["image/jpeg_kb"], rel=1e-6)
    assert (tmp_path / "images" / "train_00001.png").exists()
    ev = env.evaluate(policy, 4)
    assert set(ev) >= {"eval/return_mean", "eval/jpeg_kb"} and ev["eval/return_mean"] == pytest.approx(-ev["eval/jpeg_kb"])
    assert env.evaluate(policy, 4) == ev  # fixed noise
    assert (tmp_path / "images" / "eval_000.png").exists()


def test_timestep_fraction_masks_steps_and_reward_sits_on_last_trained_step():
    policy = make_policy(timestep_fraction=0.5)
    env = make_env()
    batch = env.assign_rewards(env.collect(policy))
    assert batch.mask.sum(1).eq(2).all()
    scores = (batch.rewards * batch.mask).sum(1)
    assert (scores < 0).all() and batch.rewards.ne(0).sum(1).eq(1).all()


def test_guidance_uses_null_class():
    policy = make_policy(guidance_scale=3.0)
    assert policy.conditioner.null_class == 4
    with pytest.raises(ConfigError, match="null class"):
        policy.sample(torch.tensor([4]))
    env = make_env()
    batch = env.assign_rewards(env.collect(policy))
    out = policy.log_probs(cells(batch))
    torch.testing.assert_close(out.logp.view_as(batch.logp_old), batch.logp_old, rtol=0, atol=1e-5)


def test_two_iteration_training_run(tmp_path):
    overrides = [
        "experiment=ddpo_compressibility_demo", "progress=false", "threads=1", "total_steps=12", "eval_episodes=4",
        "eval_every=0", f"run_dir={tmp_path / 'run'}",  # images default to <run_dir>/images
        "env.prompts_per_iteration=2", "env.group_size=3", "env.image_every=1", "policy.num_steps=4",
        "policy.unet_config.sample_size=16", "policy.unet_config.block_out_channels=[8,16]",
        "policy.unet_config.norm_num_groups=4", "algo.num_minibatches=2",
    ]
    run = validate(compose(overrides))
    trainer = Trainer(run, tmp_path / "run")
    before = [p.detach().clone() for p in trainer.policy.parameters()]
    final = trainer.train(plot=True)
    assert trainer.iteration == 2 and trainer.step == 12
    assert math.isfinite(final["eval/jpeg_kb"])
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.policy.parameters()))
    from workbench.runlog import read_metrics

    rows = read_metrics(tmp_path / "run")
    assert [r["step"] for r in rows if "image/jpeg_kb" in r] == [6, 12]
    assert (tmp_path / "run" / "learning_curve.png").exists()
    assert (tmp_path / "run" / "images" / "train_00002.png").exists()
    # the run's learning curve (not an env-drawn reward_curve.png) shows the declared reward and JPEG size
    from workbench.runlog import curve_panels

    panels = curve_panels(rows, trainer.env.display())
    assert [p.title for p in panels[:2]] == ["reward", "JPEG size (kB) (lower is better)"]
    assert [s.key for s in panels[1].series] == ["image/jpeg_kb", "eval/jpeg_kb"]
    assert not (tmp_path / "run" / "images" / "reward_curve.png").exists()
    # exact resume of the env and policy state from the checkpoint
    resumed = Trainer(run, tmp_path / "run")
    resumed.resume()
    assert resumed.step == 12
    for a, b in zip(resumed.policy.state_dict().values(), trainer.policy.state_dict().values()):
        assert torch.equal(a, b)
    assert torch.equal(resumed.env.generator.get_state(), trainer.env.generator.get_state())


def test_from_pretrained_loads_saved_unet(tmp_path):
    policy = make_policy()
    policy.model.save_pretrained(tmp_path / "unet")
    loaded = make_policy(pretrained=str(tmp_path / "unet"), unet_config={})
    for a, b in zip(policy.model.state_dict().values(), loaded.model.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(ConfigError, match="pretrained"):
        make_policy(pretrained=str(tmp_path / "missing"))


def test_branch_groups_are_trunks_even_when_a_random_prompt_repeats():
    """B²-DiffuRL: advantages compare the branches of one trunk. With prompt_order=random a prompt
    drawn twice must not merge its two trunks into one group; per-prompt statistics still
    remember the rewards by prompt."""
    policy = make_policy(train_window=[2, 4])
    env = make_env(prompts=[3], prompt_order="random", branch=True)  # one prompt: always drawn twice
    batch = env.assign_rewards(env.collect(policy))
    assert batch.group.tolist() == [0, 0, 0, 1, 1, 1]  # one group per trunk
    assert batch.prompt_id.tolist() == [0, 0, 0, 0, 0, 0]
    x = batch.policy_inputs["x_t"]
    assert torch.equal(x[0, :3], x[2, :3]) and not torch.equal(x[0, 0], x[3, 0])  # two trunks, each shared
    r = batch.rewards[:, -1]
    adv = compute_advantages(batch, AlgoConfig(advantage="dr_grpo")).advantages[:, -1]
    torch.testing.assert_close(adv, torch.cat([r[:3] - r[:3].mean(), r[3:] - r[3:].mean()]))  # baseline per trunk
    state = {}
    compute_advantages(batch, AlgoConfig(advantage="per_prompt", stat_min_count=1), state)
    assert list(state["per_prompt"]) == [0] and len(state["per_prompt"][0]) == 6  # keyed by prompt, not trunk
