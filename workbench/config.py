"""Configuration: YAML under ``configs/`` composed with Hydra, validated against dataclasses.

The composed tree has four sections: top-level run options (``RunConfig``), ``algo``
(``AlgoConfig``, one schema for the whole PPO/GRPO family), and ``env`` / ``policy``, each
validated by the config dataclass of the component its ``name`` selects.

One source of truth: every option and its default is a dataclass field (the YAML files hold
only what differs), a field with a fixed set of values declares it with :func:`choice`, and a
list of rewards with :func:`reward_specs`. :func:`validate` refuses, with one line naming the
key, an unknown key, a bad value or choice, bad reward options and any cross-section mistake
(``algo.beta`` without a reference, ...) at start-up, before a model loads.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from workbench.registry import (
    ADVANTAGES,
    ConfigError,
    ENVS,
    KL_ESTIMATORS,
    LOSS_AGGREGATIONS,
    LR_SCHEDULES,
    POLICIES,
    POLICY_LOSSES,
)
from workbench.fields import check_choices, choice, config_fields
from workbench.stages import configured_stages


# TRL's GRPOConfig.loss_type names -> (policy_loss, loss_agg_mode). DAPO and CISPO normalise by
# the tokens of the whole batch in TRL; here token-mean is over the minibatch, the same thing
# when num_minibatches is 1. Dr.GRPO divides by rows x a constant: loss_agg_norm, or by default
# the env's generation limit (Batch.max_steps = policy.max_new_tokens for text).
# A preset never overrides an explicit policy_loss / loss_agg_mode: a different one is an error.
LOSS_TYPES = {
    "grpo": ("clip", "seq-mean-token-mean"),
    "bnpo": ("clip", "token-mean"),
    "dapo": ("clip", "token-mean"),
    "dr_grpo": ("clip", "seq-mean-token-sum-norm"),
    "cispo": ("cispo", "token-mean"),
    "dispo": ("dispo", "token-mean"),
}


@dataclass
class AlgoConfig:
    """Every knob of the shared PPO/GRPO engine (TRL/verl names where they exist)."""

    name: str = "ppo"  # a label for logs; behaviour comes from the fields below
    advantage: str = choice("gae", registry=ADVANTAGES)  # gae | grpo | dr_grpo | rloo | reinforce_pp | per_prompt (DDPO stat tracking)
    advantage_clip: Optional[float] = None  # alias of advantage modifier {name: clip, bound: c} (DDPO / Flow-GRPO: 5)
    stat_buffer_size: int = 32  # per_prompt: rewards remembered per prompt (DDPO: 16-32)
    stat_min_count: int = 16  # per_prompt: below this many, normalise by the batch instead
    gamma: Optional[float] = None  # discount; unset: 0.99 (CleanRL GAE), but 1.0 for reinforce_pp (REINFORCE++ / OpenRLHF)
    gae_lambda: float = 0.95
    scale_rewards: str = choice("group", "batch", "none")  # grpo: divide by group | batch std, or none (TRL)
    normalize_advantages: str = choice("minibatch", "batch", "none")  # minibatch (CleanRL norm_adv) | batch | none
    loss_type: Optional[str] = choice(None, *LOSS_TYPES)  # TRL preset, sets policy_loss + loss_agg_mode: grpo | bnpo | dr_grpo | dapo | cispo | dispo
    policy_loss: Optional[str] = choice(None, registry=POLICY_LOSSES)  # clip (PPO/GRPO; default) | cispo (MiniMax-M1) | dispo
    cispo_cap: float = 5.0  # cispo: cap on the IS weight, > 1 (1 + MiniMax-M1's eps_high^IS; TRL/ScaleRL recommend 5)
    epsilon: float = 0.2  # PPO clip range (lower side)
    epsilon_high: Optional[float] = None  # upper clip; DAPO clip-higher uses 0.28
    dual_clip: Optional[float] = None  # Ye et al. 2020 dual clip constant c > 1
    dispo_pos_low: Optional[float] = None  # DISPO bounds for correct (A > 0) / incorrect (A < 0) tokens;
    dispo_pos_high: Optional[float] = None  # unset ones fall back to epsilon / epsilon_high
    dispo_neg_low: Optional[float] = None
    dispo_neg_high: Optional[float] = None
    top_entropy_quantile: float = 1.0  # < 1: alias of loss modifier {name: top_entropy, quantile: q} (0.2 in the paper)
    tis_cap: Optional[float] = None  # alias of loss modifier {name: tis, cap: c}: truncated IS for sampler mismatch (2.0-3.0)
    # algorithm stages (workbench/stages), each a list of {name: <stage>, <option>: value} run in order
    loss_modifiers: List[Dict[str, Any]] = field(default_factory=list)  # inside the objective: tis, top_entropy
    advantage_modifiers: List[Dict[str, Any]] = field(default_factory=list)  # after the estimator: clip
    reward_shapers: List[Dict[str, Any]] = field(default_factory=list)  # after the env's rewards: overlong
    importance_sampling_level: str = choice("token", "sequence")  # token | sequence (GSPO)
    loss_agg_mode: Optional[str] = choice(None, registry=LOSS_AGGREGATIONS)  # token-mean (default) | seq-mean-token-mean | seq-mean-token-sum | seq-mean-token-sum-norm
    loss_agg_norm: Optional[float] = None  # constant of seq-mean-token-sum-norm (Dr.GRPO); unset: the env's max steps per row
    vf_coef: float = 0.5
    value_clip: Optional[float] = 0.2  # clipped value loss range; null disables
    ent_coef: float = 0.0
    beta: float = 0.0  # KL-to-reference coefficient
    kl_estimator: str = choice("k3", registry=KL_ESTIMATORS)
    lr: float = 3e-4
    lr_schedule: str = choice("linear", registry=LR_SCHEDULES)  # linear (to 0) | constant | cosine
    adam_eps: float = 1e-5
    weight_decay: float = 0.0
    max_grad_norm: Optional[float] = 0.5
    update_epochs: int = 10
    num_minibatches: int = 32
    target_kl: Optional[float] = None  # stop the epoch loop when approx KL > 1.5 * target_kl

    def __post_init__(self) -> None:
        check_choices(self, "algo")
        self._apply_loss_type()
        if self.gamma is None:
            self.gamma = 1.0 if self.advantage == "reinforce_pp" else 0.99
        if not self.cispo_cap > 1:
            raise ConfigError(f"algo.cispo_cap must be > 1 (it caps the IS weight; TRL recommends 5.0), got {self.cispo_cap}")
        self.stages = configured_stages(self)  # the stage lists and their flat aliases, read once (not a config field)
        for key in ("epsilon", "lr"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"algo.{key} must be > 0, got {getattr(self, key)}")
        if self.epsilon_high is not None and self.epsilon_high <= 0:
            raise ConfigError(f"algo.epsilon_high must be > 0, got {self.epsilon_high}")
        if self.dual_clip is not None and self.dual_clip <= 1:
            raise ConfigError(f"algo.dual_clip must be > 1, got {self.dual_clip}")
        if not 0 <= self.gamma <= 1 or not 0 <= self.gae_lambda <= 1:
            raise ConfigError("algo.gamma and algo.gae_lambda must lie in [0, 1]")
        if self.stat_buffer_size < 1 or not 1 <= self.stat_min_count <= self.stat_buffer_size:
            raise ConfigError("algo.stat_buffer_size >= 1 and 1 <= algo.stat_min_count <= algo.stat_buffer_size are required")
        if self.update_epochs < 1 or self.num_minibatches < 1:
            raise ConfigError("algo.update_epochs and algo.num_minibatches must be >= 1")
        if self.loss_agg_norm is not None and not self.loss_agg_norm > 0:
            raise ConfigError(f"algo.loss_agg_norm must be > 0, got {self.loss_agg_norm}")

    def _apply_loss_type(self) -> None:
        """Fill policy_loss / loss_agg_mode from the ``loss_type`` preset, or their defaults;
        an explicit value that differs from the preset is a conflict, not silently replaced."""
        preset = (None, None)
        if self.loss_type is not None:
            preset = LOSS_TYPES[self.loss_type]
        for key, wanted, default in zip(("policy_loss", "loss_agg_mode"), preset, ("clip", "token-mean")):
            given = getattr(self, key)
            if given is not None and wanted is not None and given != wanted:
                raise ConfigError(f"algo.loss_type={self.loss_type} sets {key}={wanted} but algo.{key}={given} is given; "
                                  f"drop one of the two keys")
            setattr(self, key, given or wanted or default)


@dataclass
class SFTConfig:
    """Supervised warm-start on the env's demonstrations before RL (``steps: 0`` = none)."""

    steps: int = 0
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.0
    max_grad_norm: Optional[float] = 1.0
    lr_schedule: str = choice("cosine", registry=LR_SCHEDULES)
    log_every: int = 20

    def __post_init__(self) -> None:
        check_choices(self, "sft")
        if self.steps < 0 or self.batch_size < 1 or self.lr <= 0:
            raise ConfigError("sft.steps >= 0, sft.batch_size >= 1 and sft.lr > 0 are required")


@dataclass
class RunConfig:
    """Options of one run; ``env`` and ``policy`` are validated by their components."""

    name: str = "run"  # experiment name, used for the run directory
    seed: int = 1
    device: str = choice("auto", "cpu", "cuda", "cuda:<index>")
    precision: str = choice("auto", "fp32", "bf16")  # auto (bf16 autocast on CUDA) | fp32 | bf16
    threads: int = 1  # torch CPU threads; small MLPs are fastest on one
    total_steps: int = 100_000  # environment steps (control) or samples (text) to train for
    run_dir: Optional[str] = None  # default: runs/<name>-<timestamp>
    resume: Optional[str] = None  # a run directory to continue exactly
    checkpoint_every: int = 10  # iterations; 0 = only at the end
    keep_checkpoints: int = 2
    eval_every: int = 0  # env steps between evaluations; 0 = only at the end
    eval_episodes: int = 10
    final_video: bool = True  # the final evaluation writes <run_dir>/rollout.mp4 (envs that render)
    progress: bool = True
    imports: List[str] = field(default_factory=list)  # extra modules that register components
    init_from: Optional[str] = None  # a run directory or checkpoint file whose policy weights start this run
    sft: SFTConfig = field(default_factory=SFTConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    env: Any = None
    policy: Any = None

    def __post_init__(self) -> None:
        check_choices(self, "")
        if self.total_steps <= 0:
            raise ConfigError(f"total_steps must be > 0, got {self.total_steps}")


def config_dir() -> Path:
    """The packaged ``configs/`` folder (installed as the ``configs`` package)."""
    import configs

    return Path(configs.__file__).resolve().parent


def _validate_section(section: DictConfig, registry, what: str):
    if section is None or "name" not in section:
        raise ConfigError(f"{what}.name is missing; valid choices: {', '.join(registry.names())}")
    component = registry.get(section.name)
    schema = getattr(component, "Config", None)
    if schema is None:
        raise ConfigError(f"{what} '{section.name}' has no Config dataclass")
    return _to_dataclass(schema, section, what)


def _to_dataclass(schema, section, what: str):
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), section)
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or getattr(e, "key", None)
        valid = ", ".join(f.name for f in dataclasses.fields(_nested_schema(schema, str(key).split(".")[:-1])))
        key = f"{what}.{key}" if what else key
        msg = str(e).splitlines()[0]
        if "not in" in msg or "Key" in type(e).__name__:
            raise ConfigError(f"unknown config key '{key}'; valid keys: {valid}") from None
        raise ConfigError(f"bad value for '{key}': {msg}") from None


def _nested_schema(schema, parents: List[str]):
    """The dataclass of the nested section ``parents`` (e.g. ``["pixels"]`` of an env)."""
    for name in parents:
        factory = {f.name: f.default_factory for f in dataclasses.fields(schema)}.get(name)
        if not (dataclasses.is_dataclass(factory) and isinstance(factory, type)):
            break
        schema = factory
    return schema


def validate(cfg: DictConfig) -> RunConfig:
    """Turn a composed config into typed dataclasses, failing with one clear line."""
    import workbench.plugins as plugins

    plugins.load(list(cfg.get("imports") or []))
    top = OmegaConf.create({k: v for k, v in cfg.items() if k not in ("algo", "env", "policy", "sft")})
    run = _to_dataclass(RunConfig, top, "") if top else RunConfig()
    run.sft = _to_dataclass(SFTConfig, cfg.get("sft") or {}, "sft")
    run.algo = _to_dataclass(AlgoConfig, cfg.get("algo") or {}, "algo")
    run.env = _validate_section(cfg.get("env"), ENVS, "env")
    run.policy = _validate_section(cfg.get("policy"), POLICIES, "policy")
    check_choices(run, "")  # every section's own __post_init__ checks too; this covers plugin configs
    _check_reward_specs(run)
    _check_acting_contract(run)
    # cross-section checks: each would otherwise fail mid-run, after the model has loaded
    _check_reference(run)
    _check_overlong_buffer(run)
    _check_ead_pairing(run)
    _check_groups(run)
    return run


def _check_reward_specs(run: RunConfig) -> None:
    """Check every field declared with :func:`reward_specs` (reward names, options and their
    types) without building a reward: a reward that loads a model would load it only here."""
    from workbench.rewards.base import check_reward_specs

    for path, f, value in config_fields(run, ""):
        if f.metadata.get("reward_specs"):
            check_reward_specs(value, path)


def _check_reference(run: RunConfig) -> None:
    """The KL term needs the reference's log-probs; a policy config that can keep a reference
    declares ``has_reference`` (a config without it has none)."""
    if run.algo.beta > 0 and not getattr(run.policy, "has_reference", False):
        raise ConfigError(f"algo.beta={run.algo.beta} needs a KL reference, but policy {run.policy.name} has none: "
                          f"set policy.reference (frozen, or lora_base with policy.lora) or algo.beta=0")


def _check_overlong_buffer(run: RunConfig) -> None:
    """DAPO's overlong buffer is the last stretch of the generation limit (L_max - L_cache > 0)."""
    buffer, limit = getattr(run.env, "overlong_buffer", 0), getattr(run.policy, "max_new_tokens", None)
    if buffer and limit is not None and buffer > limit:
        raise ConfigError(f"env.overlong_buffer={buffer} exceeds policy.max_new_tokens={limit} "
                          f"(the buffer is the last stretch of the generation limit); lower it or raise the limit")


# advantage estimators that read the critic's values (Batch.values / next_values)
CRITIC_ESTIMATORS = ("gae",)


def _check_acting_contract(run: RunConfig) -> None:
    """A policy that cannot act in the env, or an estimator that needs a critic the policy
    lacks, is refused here, before any model loads (one line naming both)."""
    from workbench.policies.base import TokenGenerator, check_compatible

    env_cls, policy_cls = ENVS.get(run.env.name), POLICIES.get(run.policy.name)
    wanted = getattr(env_cls, "policy_contract", None)
    check_compatible(env_cls, policy_cls, run.env.name, run.policy.name,
                     suggestions=_policy_configs(wanted) if wanted is not None else ())
    if run.sft.steps > 0 and not (getattr(env_cls, "has_demonstrations", False) and issubclass(policy_cls, TokenGenerator)):
        from workbench.sft import SFT_NEEDS

        raise ConfigError(f"{SFT_NEEDS}; env {run.env.name} with policy {run.policy.name} has none")
    for shaper in run.algo.stages.reward_shapers:
        if getattr(shaper.fn, "needs_step_limit", False) and not getattr(env_cls, "has_step_limit", False):
            raise ConfigError(f"algo.reward_shapers: {shaper.name} needs a generation limit per row, which env "
                              f"{run.env.name} does not have")
    if run.algo.advantage in CRITIC_ESTIMATORS and not getattr(policy_cls, "has_critic", False):
        raise ConfigError(f"algo.advantage={run.algo.advantage} needs a critic, but policy {run.policy.name} has none; "
                          f"use a critic-free estimator (algo=grpo, or algo.advantage=rloo | reinforce_pp)")


def _policy_configs(contract: type) -> List[str]:
    """The policy configs under configs/policy whose policy fulfils ``contract`` (for messages)."""
    fitting = []
    for path in sorted((config_dir() / "policy").glob("*.yaml")):
        name = OmegaConf.load(path).get("name")
        if name in POLICIES and isinstance(POLICIES.get(name), type) and issubclass(POLICIES.get(name), contract):
            fitting.append(path.stem)
    return fitting


# advantage estimators that compare the samples of one group: a group of one gives advantage 0
GROUP_ESTIMATORS = ("grpo", "dr_grpo", "rloo")


def _check_groups(run: RunConfig) -> None:
    """A group estimator on groups of one trains on all-zero advantages without a word: refuse it."""
    group_size = getattr(run.env, "group_size", None)  # envs that sample groups (text, diffusion) declare it
    if run.algo.advantage in GROUP_ESTIMATORS and group_size == 1:
        raise ConfigError(f"algo.advantage={run.algo.advantage} compares the samples of a group, but env.group_size=1 "
                          f"makes every advantage 0 (nothing is learned); set env.group_size >= 2")


def _check_ead_pairing(run: RunConfig) -> None:
    """EAD pairing trains the T = 1 policy on tokens sampled at other temperatures: without a
    truncated-IS cap the objective would not correct for it at all."""
    schedule = getattr(run.policy, "temperature_schedule", None)  # token policies' EAD option
    if schedule and dict(schedule).get("train_at_temperature_one") and run.algo.tis_cap is None:
        raise ConfigError("policy.temperature_schedule.train_at_temperature_one needs algo.tis_cap "
                          "(the truncated IS cap of pi_1 / pi_EAD, e.g. 2.0)")


def compose(overrides: List[str]) -> DictConfig:
    """Compose ``configs/config.yaml`` with command-line overrides (Hydra syntax).

    Switching the text task on the command line (``env.task=dataset`` on an arithmetic
    experiment) drops the old task's ``task_kwargs``: only those given on the command line stay.
    """
    cfg = _compose(overrides)
    task_keys = [o for o in overrides if _key(o) == "env.task"]
    if task_keys and cfg.get("env") is not None and "task_kwargs" in cfg.env:
        base = _compose([o for o in overrides if not (_key(o) == "env.task" or _key(o).startswith("env.task_kwargs"))])
        if base.get("env") is None or base.env.get("task") != cfg.env.task:
            given = _given_task_kwargs(overrides)
            with open_dict(cfg):
                cfg.env.task_kwargs = {k: v for k, v in cfg.env.task_kwargs.items() if k in given}
    return cfg


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _given_task_kwargs(overrides: List[str]) -> set:
    """The ``env.task_kwargs`` keys named on the command line (``env.task_kwargs.path=...`` or ``={path: ...}``)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    given = set()
    for o in OverridesParser.create().parse_overrides([o for o in overrides if _key(o).startswith("env.task_kwargs")]):
        parts = o.key_or_group.split(".")
        if len(parts) > 2:
            given.add(parts[2])
        elif isinstance(o.value(), dict):
            given.update(o.value())
    return given


def _compose(overrides: List[str]) -> DictConfig:
    """Hydra composes the config groups (``experiment=...``, ``env=gsm8k``); every ``key=value``
    is then set here. The YAML holds only what differs from the dataclass defaults, so a key it
    leaves out (``policy.reference``) is set like any other, ``+`` or not; a typo is refused by
    :func:`validate`, which names the section's valid keys."""
    from hydra import compose as hydra_compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
        groups = [o.input_line for o in parsed if _selects_group(o)]
        with initialize_config_dir(version_base=None, config_dir=str(config_dir())):
            cfg = hydra_compose(config_name="config", overrides=groups)
    except (HydraException, OmegaConfBaseException) as e:
        raise ConfigError(" ".join(str(e).split()).split(" Config search path:")[0]) from None
    with open_dict(cfg):
        for o in parsed:
            if not _selects_group(o):
                _apply(cfg, o)
    return cfg


def _selects_group(override) -> bool:
    """``experiment=x``, ``env=gsm8k``: an override that picks a YAML file of a config group."""
    key = override.key_or_group
    return override.package is not None or "/" in key or (config_dir() / key).is_dir()


def _apply(cfg: DictConfig, override) -> None:
    """Set (``key=v``, ``+key=v``, ``++key=v``) or delete (``~key``) one key, as Hydra would."""
    key, line = override.key_or_group, override.input_line
    if override.is_sweep_override():
        raise ConfigError(f"'{line}' lists several values; one run takes one value per key")
    try:
        if override.is_delete():
            if OmegaConf.select(cfg, key, default=None) is None:
                raise ConfigError(f"cannot delete '{key}': the config does not set it")
            parent, _, leaf = key.rpartition(".")
            del (OmegaConf.select(cfg, parent) if parent else cfg)[leaf]
        else:
            OmegaConf.update(cfg, key, override.value(), merge=True, force_add=True)
    except OmegaConfBaseException as e:
        raise ConfigError(f"cannot apply '{line}': {str(e).splitlines()[0]}") from None


def to_yaml(run: RunConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(run))


def changed_keys(old: RunConfig, new: RunConfig) -> List[tuple]:
    """(dotted key, old value, new value) of every setting that differs, in key order."""
    def flat(node: Any, prefix: str = "") -> dict:
        if isinstance(node, dict):
            return {k: v for key, value in node.items() for k, v in flat(value, f"{prefix}{key}.").items()}
        return {prefix[:-1]: node}

    a = flat(OmegaConf.to_container(OmegaConf.structured(old)))
    b = flat(OmegaConf.to_container(OmegaConf.structured(new)))
    return [(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def load_saved(run_dir: Path, overrides: List[str]) -> RunConfig:
    """The resolved config a run saved, with ``key=value`` overrides applied (for resume)."""
    path = Path(run_dir) / "config.yaml"
    if not path.exists():
        raise ConfigError(f"no config.yaml in run directory '{run_dir}'")
    base = OmegaConf.load(path)
    try:
        extra = OmegaConf.from_dotlist([o.lstrip("+") for o in overrides])
    except OmegaConfBaseException as e:
        raise ConfigError(f"bad override: {e}") from None
    return validate(OmegaConf.merge(base, extra))
