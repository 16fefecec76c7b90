import pytest

from workbench.config import compose, validate
from workbench.registry import ConfigError


def run_of(*overrides):
    return validate(compose(list(overrides)))


def test_default_composes_to_quickstart():
    run = run_of()
    assert run.name == "quickstart"
    assert run.env.id == "workbench/FrankaReach-v0"
    assert run.algo.advantage == "gae"
    assert run.policy.hidden == [64, 64]


def test_experiment_and_overrides_compose():
    run = run_of("experiment=halfcheetah_ppo", "algo.epsilon=0.1", "env.num_envs=3", "policy.hidden=[32,32]")
    assert (run.env.id, run.algo.epsilon, run.env.num_envs, run.policy.hidden) == ("HalfCheetah-v5", 0.1, 3, [32, 32])
    assert run.total_steps == 1_000_000


def test_unknown_key_names_it():
    with pytest.raises(ConfigError, match="algo.epsilonn"):
        run_of("algo.epsilonn=0.1")


def test_unknown_component_key_lists_valid_keys():
    with pytest.raises(ConfigError, match="unknown config key 'env.foo'.*valid keys: .*rollout_steps"):
        run_of("+env.foo=1")


def test_bad_value_type():
    with pytest.raises(ConfigError, match="algo.epsilon"):
        run_of("algo.epsilon=abc")


@pytest.mark.parametrize(
    "override, pattern",
    [
        ("algo.advantage=gea", "valid choices: dr_grpo, gae, grpo, per_prompt, reinforce_pp, rloo"),
        ("algo.loss_agg_mode=mean", "valid choices: seq-mean-token-mean"),
        ("algo.importance_sampling_level=seq", "valid choices: token, sequence"),
        ("algo.dual_clip=0.5", "dual_clip must be > 1"),
        ("algo.epsilon=0", "epsilon must be > 0"),
        ("env.vectorization=threads", "valid choices: sync, async"),
        ("policy.activation=gelu", "valid choices: tanh, relu"),
        ("precision=fp8", "valid choices: auto, fp32, bf16"),
        ("device=tpu", "valid choices: auto, cpu, cuda"),
    ],
)
def test_bad_values_list_choices(override, pattern):
    with pytest.raises(ConfigError, match=pattern):
        run_of(override)


def test_unknown_experiment_lists_options():
    with pytest.raises(ConfigError, match="halfcheetah_ppo"):
        run_of("experiment=halfcheetah")


def test_unknown_env_name():
    with pytest.raises(ConfigError, match="unknown env 'nope'; valid choices: .*gym_control, text"):
        run_of("env.name=nope")


def test_gpu_text_experiment_composes_without_loading_anything():
    run = run_of("experiment=gsm8k_grpo_qwen0.5b")
    assert (run.policy.model, run.policy.backend, run.env.task) == ("Qwen/Qwen2.5-0.5B-Instruct", "vllm", "dataset")
    assert (run.algo.policy_loss, run.algo.loss_agg_mode, run.algo.epsilon_high) == ("clip", "token-mean", 0.28)
