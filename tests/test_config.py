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


# ------------------------------------------------------------------ keys the YAML leaves to the dataclasses
def test_keys_absent_from_the_yaml_are_set_without_a_plus():
    """The YAML holds only what differs from the dataclass defaults; every declared key can
    still be set on the command line as ``key=value`` (no ``+``, no retry)."""
    run = run_of("experiment=arithmetic_grpo_tiny", "policy.reference=frozen", "seed=7", "sft.steps=3", "env.eval_size=9")
    assert (run.policy.reference, run.seed, run.sft.steps, run.env.eval_size) == ("frozen", 7, 3, 9)


def test_typo_in_a_key_absent_from_the_yaml_names_the_valid_keys():
    with pytest.raises(ConfigError, match="unknown config key 'algo.lrr'; valid keys: name, advantage"):
        run_of("algo.lrr=1")
    with pytest.raises(ConfigError, match="unknown config key 'env.pixels.widthh'; valid keys: width, height, state$"):
        run_of("env.pixels.widthh=64")
    with pytest.raises(ConfigError, match="unknown config key 'seedd'; valid keys: name, seed"):
        run_of("seedd=1")


def test_yaml_files_repeat_no_dataclass_default():
    """Defaults live only in the dataclasses: a group YAML (and config.yaml) sets a key only
    to a value that differs from its section's default. ``name``, ``task`` and ``id`` stay:
    they say which component, text task or gymnasium env the file configures."""
    import dataclasses

    from omegaconf import OmegaConf

    import workbench.plugins as plugins
    from workbench.config import AlgoConfig, RunConfig, SFTConfig, config_dir
    from workbench.registry import ENVS, POLICIES

    plugins.load()

    def default(f):
        if f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
            return OmegaConf.to_container(OmegaConf.structured(value)) if dataclasses.is_dataclass(value) else value
        return f.default

    def repeated(data, schema):
        defaults = {f.name: default(f) for f in dataclasses.fields(schema)}
        return [k for k, v in data.items() if k not in ("name", "task", "id") and k in defaults
                and v == defaults[k] and type(v) is type(defaults[k])]

    found = {}
    root = OmegaConf.to_container(OmegaConf.load(config_dir() / "config.yaml"))
    found["config.yaml"] = repeated({k: v for k, v in root.items() if k != "sft"}, RunConfig) + repeated(root.get("sft", {}), SFTConfig)
    for group, schema_of in (("algo", lambda d: AlgoConfig), ("env", lambda d: ENVS.get(d["name"]).Config),
                             ("policy", lambda d: POLICIES.get(d["name"]).Config)):
        for path in sorted((config_dir() / group).glob("*.yaml")):
            data = OmegaConf.to_container(OmegaConf.load(path))
            found[f"{group}/{path.name}"] = repeated(data, schema_of(data))
    assert {k: v for k, v in found.items() if v} == {}


# ------------------------------------------------------------------ choices declared on the fields
def test_choices_are_checked_generically_with_one_message():
    from dataclasses import dataclass, field
    from typing import Optional

    from workbench.fields import check_choices, choice
    from workbench.registry import LR_SCHEDULES

    @dataclass
    class Inner:
        mode: str = choice("fast", "slow")

    @dataclass
    class Section:
        backend: Optional[str] = choice(None, "a", "b")
        encoder: str = choice("conv", "timm:<model name>")
        schedule: str = choice("linear", registry=LR_SCHEDULES)
        inner: Inner = field(default_factory=Inner)

    check_choices(Section(), "x")
    check_choices(Section(backend="b", encoder="timm:resnet10t", schedule="cosine"), "x")
    cases = [
        (Section(backend="c"), "x.backend='c' is not valid; valid choices: a, b, null"),
        (Section(encoder="timm:"), "x.encoder='timm:' is not valid; valid choices: conv, timm:<model name>"),
        (Section(schedule="cos"), "x.schedule='cos' is not valid; valid choices: constant, cosine, linear"),
        (Section(inner=Inner(mode="medium")), "x.inner.mode='medium' is not valid; valid choices: fast, slow"),
    ]
    for section, message in cases:
        with pytest.raises(ConfigError) as info:
            check_choices(section, "x")
        assert str(info.value) == message


@pytest.mark.parametrize("override, message", [
    ("env.async_context=threads", "env.async_context='threads' is not valid; valid choices: fork, forkserver, spawn, null"),
    ("algo.kl_estimator=k9", "algo.kl_estimator='k9' is not valid; valid choices: "),
    ("sft.lr_schedule=cos", "sft.lr_schedule='cos' is not valid; valid choices: "),
    ("device=cuda1", "device='cuda1' is not valid; valid choices: auto, cpu, cuda, cuda:<index>"),
])
def test_declared_choices_reach_the_user_in_one_form(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        run_of(override)
    assert run_of("device=cuda:1").device == "cuda:1"
