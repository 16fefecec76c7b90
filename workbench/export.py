"""Get a trained policy out of a run directory, in the format its own library loads.

A run keeps its policy inside the engine's checkpoint (optimizer, RNG and all). ``export_run``
rebuilds the policy from the run's ``config.yaml`` and newest checkpoint (exactly as
``workbench eval`` does) and writes it where a user's own tools read it:

- token policies (``causal_lm``): a transformers ``save_pretrained`` folder with the tokenizer,
  LoRA merged into the weights (``lora="merge"``, the default), or the adapter alone as a peft
  folder (``lora="adapter"``: ``PeftModel.from_pretrained(base, OUT)``);
- denoising policies on a diffusers pipeline (SD, SD3) trained with LoRA: the adapter in the
  format ``pipe.load_lora_weights(OUT)`` reads (``pytorch_lora_weights.safetensors``);
  full or merged denoisers: ``OUT/unet`` (or ``OUT/transformer``) as a ``save_pretrained``
  folder plus ``OUT/scheduler``;
- control policies (``gaussian_mlp``, ``gaussian_cnn``): ``OUT/model.safetensors`` (weights and
  the observation normaliser's statistics) and ``OUT/policy.json``; ``load_control_policy(OUT)``
  turns them back into a callable mapping raw observations to the deterministic action.

Each policy family registers its exporter with ``@exporter(PolicyClass)``; the most specific
class of a policy's MRO wins, so a new family adds one function here and nothing else changes.
Every export also writes ``OUT/export.json``: what was exported and how to load it.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import numpy as np
import torch

from workbench.environment import EnvSpec
from workbench.policies.causal_lm import CausalLMPolicy
from workbench.policies.denoising import DenoisingPolicy
from workbench.policies.gaussian_mlp import GaussianMLPPolicy
from workbench.policies.visuomotor import GaussianCNNPolicy
from workbench.registry import ConfigError, POLICIES

CONTROL_FORMAT = "workbench-control-policy-v1"
LORA_MODES = ("merge", "adapter")

# policy class -> fn(policy, out, lora, spec) -> {"format": ..., "load": ...}; the policy may be
# modified (export_run builds one only to export it)
EXPORTERS: Dict[type, Callable[..., Dict[str, str]]] = {}


def exporter(*classes: type):
    def register(fn):
        for cls in classes:
            EXPORTERS[cls] = fn
        return fn

    return register


def load_trained(run_dir: Path, checkpoint_path: Optional[str] = None):
    """(run config, env, policy, checkpoint path) of a finished or running run, weights from its
    newest checkpoint (or ``checkpoint_path``)."""
    from workbench import checkpoint, config
    from workbench.registry import ENVS, POLICIES

    run = config.load_saved(run_dir, [])
    path = Path(checkpoint_path) if checkpoint_path else checkpoint.latest(run_dir / "checkpoints")
    if path is None or not path.exists():
        raise ConfigError(f"no checkpoint found in {run_dir / 'checkpoints'}")
    env = ENVS.get(run.env.name)(run.env, seed=run.seed)
    policy = POLICIES.get(run.policy.name)(run.policy, env.spec())
    policy.load_state_dict(checkpoint.load(path)["policy"])
    torch.set_num_threads(run.threads)
    return run, env, policy.eval(), path


def export_policy(policy, out: Path, lora: Optional[str] = None, spec: Optional[EnvSpec] = None) -> Dict[str, str]:
    """Write ``policy`` into the (existing, empty) folder ``out``; ``lora``: merge | adapter |
    None (the family's default). Returns what was written and how to load it."""
    if lora not in (None, *LORA_MODES):
        raise ConfigError(f"export: lora={lora!r} is not valid; valid choices: {', '.join(LORA_MODES)}")
    fn = next((EXPORTERS[c] for c in type(policy).__mro__ if c in EXPORTERS), None)
    if fn is None:
        raise ConfigError(f"export: no exporter for policy {type(policy).__name__}; "
                          f"exportable: {', '.join(sorted(c.__name__ for c in EXPORTERS))}")
    with torch.no_grad():
        return fn(policy, Path(out), lora, spec)


def export_run(run_dir: Path, out: Path, checkpoint_path: Optional[str] = None, lora: Optional[str] = None,
               force: bool = False) -> Dict[str, str]:
    """Export the policy of ``run_dir``'s newest (or the given) checkpoint to ``out``.

    The export is written to a temporary folder beside ``out`` and renamed into place, so a
    failed export leaves nothing half-written. An existing non-empty ``out`` is replaced only
    with ``force``."""
    run_dir, out = Path(run_dir), Path(out)
    if not run_dir.is_dir():
        raise ConfigError(f"no such run directory: {run_dir}")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"export: OUT {out} is a file; give a folder path")
    if out.exists() and any(out.iterdir()) and not force:
        raise ConfigError(f"export: OUT {out} exists and is not empty; choose another folder or pass --force to replace it")
    if out.resolve() == run_dir.resolve() or out.resolve() in run_dir.resolve().parents:
        raise ConfigError(f"export: OUT {out} would replace the run directory {run_dir}; choose another folder")
    run, env, policy, path = load_trained(run_dir, checkpoint_path)
    try:
        spec = env.spec()
    finally:
        env.close()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        info = export_policy(policy, tmp, lora, spec)
        info = {"run_dir": str(run_dir), "checkpoint": path.name, "policy": run.policy.name, **info}
        (tmp / "export.json").write_text(json.dumps(info, indent=1) + "\n")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return info


# ---------------------------------------------------------------------- token policies
@exporter(CausalLMPolicy)
def export_causal_lm(policy: CausalLMPolicy, out: Path, lora: Optional[str], spec=None) -> Dict[str, str]:
    """transformers folder (LoRA merged) or, with lora="adapter", the peft adapter folder."""
    from peft import PeftModel

    model, is_peft = policy.model, isinstance(policy.model, PeftModel)
    if lora == "adapter":
        if not is_peft:
            raise ConfigError("export --adapter: this run trained the full model (no policy.lora); export it without --adapter")
        if policy.cfg.model is None:
            raise ConfigError("export --adapter: the base model was built from policy.model_config (random weights) and "
                              "cannot be loaded again; export the merged model (without --adapter)")
        model.peft_config["default"].base_model_name_or_path = policy.cfg.model
        model.save_pretrained(out)
        policy.tokenizer.save_pretrained(out)
        return {"format": "peft LoRA adapter",
                "load": f"PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained({policy.cfg.model!r}), OUT)"}
    merged = model.merge_and_unload() if is_peft else model
    merged.save_pretrained(out)
    policy.tokenizer.save_pretrained(out)
    return {"format": "transformers" + (" (LoRA merged)" if is_peft else ""),
            "load": "AutoModelForCausalLM.from_pretrained(OUT); AutoTokenizer.from_pretrained(OUT)"}


# ---------------------------------------------------------------------- denoising policies
def _pipeline_component(policy: DenoisingPolicy):
    """(diffusers pipeline class, component name of the trained model) when the policy was
    loaded from a pipeline folder, else (None, None)."""
    import diffusers

    from workbench.policies.diffusion import pipeline_config

    index = pipeline_config(policy.cfg.pretrained) if getattr(policy.cfg, "pretrained", None) else {}
    name = type(policy.model).__name__
    component = next((k for k, v in index.items() if isinstance(v, (list, tuple)) and v and v[-1] == name), None)
    pipe_cls = getattr(diffusers, str(index.get("_class_name")), None)
    return (pipe_cls, component) if component and pipe_cls is not None else (None, None)


def merged_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A plain diffusers model (no peft layers) whose weights are ``model``'s with the LoRA
    adapters folded in (W + scale * B A)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for m in model.modules():
        if isinstance(m, BaseTunerLayer):
            m.merge()
    state = {k.replace(".base_layer.", "."): v for k, v in model.state_dict().items() if "lora_" not in k}
    plain = type(model).from_config(model.config).to(next(model.parameters()).dtype)
    plain.load_state_dict(state, strict=True)
    return plain


@exporter(DenoisingPolicy)
def export_denoiser(policy: DenoisingPolicy, out: Path, lora: Optional[str], spec=None) -> Dict[str, str]:
    """LoRA on a pipeline: diffusers LoRA weights (default); otherwise the (merged) denoiser
    as a save_pretrained folder plus the scheduler."""
    pipe_cls, component = _pipeline_component(policy)
    has_lora = bool(policy.cfg.lora)
    if lora == "adapter" and not has_lora:
        raise ConfigError("export --adapter: this run trained the full model (no policy.lora); export it without --adapter")
    if has_lora and (lora == "adapter" or (lora is None and pipe_cls is not None)):  # a bare model: merged by default
        if pipe_cls is None:
            raise ConfigError("export --adapter: diffusers loads LoRA weights into pipelines only, and this model is a bare "
                              f"{type(policy.model).__name__}; export the merged model (--merge-lora)")
        from peft.utils import get_peft_model_state_dict

        # peft's own key names (lora_A / lora_B), which every diffusers LoRA loader reads;
        # convert_state_dict_to_diffusers would rename only the to_q/k/v/out keys (to lora.down /
        # lora.up), and SD3's loader then silently skips them
        layers = get_peft_model_state_dict(policy.model)
        metadata = policy.model.peft_config["default"].to_dict()
        pipe_cls.save_lora_weights(out, **{f"{component}_lora_layers": layers, f"{component}_lora_adapter_metadata": metadata})
        return {"format": f"diffusers LoRA ({pipe_cls.__name__}, {component})",
                "load": f"{pipe_cls.__name__}.from_pretrained({policy.cfg.pretrained!r}).load_lora_weights(OUT)"}
    model = merged_copy(policy.model) if has_lora else policy.model
    sub = component or "unet"
    model.save_pretrained(out / sub)
    policy.scheduler.save_pretrained(out / "scheduler")
    cls = type(model).__name__
    load = f"{cls}.from_pretrained(OUT, subfolder={sub!r})"
    if pipe_cls is not None:
        load += f"; {pipe_cls.__name__}.from_pretrained({policy.cfg.pretrained!r}, {sub}=that model)"
    return {"format": f"diffusers {cls}" + (" (LoRA merged)" if has_lora else ""), "load": load}


# ---------------------------------------------------------------------- control policies
def _space_to_json(space) -> Any:
    spaces = getattr(space, "spaces", None)
    if isinstance(spaces, dict):
        return {k: _space_to_json(v) for k, v in spaces.items()}
    return {"shape": list(space.shape), "dtype": str(np.dtype(space.dtype))}


def _space_from_json(data: Dict[str, Any]):
    import gymnasium as gym

    if "shape" in data and "dtype" in data:
        dtype = np.dtype(data["dtype"])
        low, high = (0, 255) if dtype == np.uint8 else (-np.inf, np.inf)
        return gym.spaces.Box(low, high, tuple(data["shape"]), dtype)
    return gym.spaces.Dict({k: _space_from_json(v) for k, v in data.items()})


@exporter(GaussianMLPPolicy, GaussianCNNPolicy)
def export_control(policy, out: Path, lora: Optional[str], spec: Optional[EnvSpec]) -> Dict[str, str]:
    """model.safetensors (every weight, and the observation statistics as ``obs_rms.*``) and
    policy.json (the policy config, observation and action spaces)."""
    from safetensors.torch import save_file

    if lora is not None:
        flag = "--merge-lora" if lora == "merge" else "--adapter"
        raise ConfigError(f"export {flag}: control policies have no LoRA; drop the flag")
    if spec is None:
        raise ConfigError("export: a control policy needs its env's spec (observation and action spaces)")
    tensors = {k: v.detach().cpu().contiguous() for k, v in policy.state_dict().items() if isinstance(v, torch.Tensor)}
    for k, v in policy.obs_rms.state_dict().items():  # float64, as the policy normalises with them
        tensors[f"obs_rms.{k}"] = torch.from_numpy(np.array(v, dtype=np.float64).reshape(-1))
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": CONTROL_FORMAT})

    def bound(b):
        return None if b is None else np.broadcast_to(np.asarray(b, dtype=np.float64), (spec.action_dim,)).tolist()

    config = {
        "format": CONTROL_FORMAT,
        "policy": asdict(policy.cfg),
        "observation_shape": list(spec.observation_shape),
        "observation_space": _space_to_json(spec.observation_space) if spec.observation_space is not None else None,
        "action_dim": int(spec.action_dim),
        "action_low": bound(spec.action_low),
        "action_high": bound(spec.action_high),
    }
    (out / "policy.json").write_text(json.dumps(config, indent=1) + "\n")
    return {"format": CONTROL_FORMAT, "load": "workbench.export.load_control_policy(OUT)(raw_obs) -> action"}


class ControlPolicy:
    """A trained control policy as a function: raw observations -> the action the env executes
    (the Gaussian's mean, clipped to the action bounds), with the training-time observation
    normalisation applied. Takes one observation ([D], or a dict of unbatched arrays) or a
    batch ([E, D]) and returns [A] or [E, A] float32.

    ``policy`` is the rebuilt workbench policy (``policy.act`` for log-probs and values)."""

    def __init__(self, policy, low: Optional[np.ndarray], high: Optional[np.ndarray], observation_shape) -> None:
        self.policy, self.low, self.high = policy.eval(), low, high
        self.observation_shape = tuple(observation_shape)

    def _single(self, obs) -> bool:
        if isinstance(obs, dict):
            return np.asarray(obs["pixels"]).ndim == 3
        return np.asarray(obs).ndim == len(self.observation_shape)

    def __call__(self, obs) -> np.ndarray:
        single = self._single(obs)
        if isinstance(obs, dict):
            batch = {k: np.asarray(v)[None] if single else np.asarray(v) for k, v in obs.items()}
        else:
            batch = np.asarray(obs, dtype=np.float64)[None] if single else np.asarray(obs, dtype=np.float64)
        actions = self.policy.act(batch, deterministic=True, update_stats=False).actions.cpu().numpy()  # [E, A]
        if self.low is not None and self.high is not None:
            actions = np.clip(actions, self.low, self.high)
        actions = actions.astype(np.float32)
        return actions[0] if single else actions


def load_control_policy(folder: str | Path, device: str = "cpu") -> ControlPolicy:
    """Rebuild a control policy written by ``workbench export`` (``policy.json`` +
    ``model.safetensors``) as a callable: ``load_control_policy(OUT)(obs) -> action``."""
    from safetensors.torch import load_file

    folder = Path(folder)
    meta_path, weights_path = folder / "policy.json", folder / "model.safetensors"
    if not meta_path.exists() or not weights_path.exists():
        raise ConfigError(f"{folder} is not an exported control policy (needs policy.json and model.safetensors)")
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != CONTROL_FORMAT:
        raise ConfigError(f"{meta_path}: format {meta.get('format')!r} is not {CONTROL_FORMAT}")
    import workbench.policies  # noqa: F401  (registers the policy classes)

    options = dict(meta["policy"])
    cls = POLICIES.get(options["name"])
    if "weights" in options:  # every weight is in model.safetensors: never reach for the original files
        options.update(weights=None, pretrained=False)
    space = meta.get("observation_space")
    spec = EnvSpec(tuple(meta["observation_shape"]), int(meta["action_dim"]), meta.get("action_low"), meta.get("action_high"),
                   _space_from_json(space) if space else None)
    policy = cls(cls.Config(**options), spec)
    tensors = load_file(str(weights_path))
    rms = {k.split(".", 1)[1]: tensors.pop(k).numpy() for k in list(tensors) if k.startswith("obs_rms.")}
    rms["count"] = rms["count"].reshape(())
    policy.load_state_dict({**tensors, "_extra_state": rms})
    low = None if meta.get("action_low") is None else np.asarray(meta["action_low"], dtype=np.float64)
    high = None if meta.get("action_high") is None else np.asarray(meta["action_high"], dtype=np.float64)
    return ControlPolicy(policy.to(device), low, high, meta["observation_shape"])

