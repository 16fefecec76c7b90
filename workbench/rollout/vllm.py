"""The ``vllm`` rollout backend (GPU only): an in-process vLLM engine colocated with training.

vLLM is an optional extra (``pip install -e '.[vllm]'``, vLLM >= 0.10.2) and is imported only
when a policy asks for ``backend: vllm``. The engine starts from a copy of the current weights
saved under the base model's own parameter names (LoRA merged in), in the policy's ``dtype``.
Before a rollout the trained weights are copied into the engine again, but only when they
changed since the last copy (:class:`WeightVersion`), so evaluation rollouts between two
updates reuse the engine as it is. The engine runs in this process
(``VLLM_ENABLE_V1_MULTIPROCESSING=0``), so the copy passes tensors through ``LLM.collective_rpc``.

The sampler's own log-probs come back as ``rollout_logp``: those of the distribution it sampled
from (after temperature and top-k/top-p, ``logprobs_mode="processed_logprobs"``). The trainer
recomputes ``logp`` with the training forward, logs the mismatch, and can correct for it with
``algo.tis_cap``.

Everything except the engine calls is a plain function of tensors and configs
(:func:`merged_state_dict`, :func:`engine_kwargs`, :func:`sampling_kwargs`, :class:`WeightSync`),
tested on CPU without vLLM.
"""
from __future__ import annotations

import os
import tempfile
from typing import Any, Callable, Dict, List, Tuple

import torch

from workbench.registry import ConfigError
from workbench.rollout.base import SamplingConfig, TokenRollout

Weights = List[Tuple[str, torch.Tensor]]


def _load_weights(worker, weights: Weights) -> None:
    """Runs on each vLLM worker (``collective_rpc`` passes the worker as the first argument)."""
    worker.model_runner.model.load_weights(weights=weights)


def merged_state_dict(model, dtype: torch.dtype = None) -> Dict[str, torch.Tensor]:
    """The weights of ``model`` under the base model's own names (those of its checkpoint and of
    vLLM's loader), LoRA folded in: ``W + scaling * B @ A`` for every peft LoRA layer.

    Computed out of place: the model is not touched (an in-place merge/unmerge round trip would
    drift bf16 base weights by a rounding step each time). ``modules_to_save`` copies replace
    their originals. ``dtype``: cast every floating tensor to it (the engine's dtype); None keeps
    each tensor's own dtype (unmerged tensors then share storage with the model).
    """
    if not hasattr(model, "get_base_model"):  # a plain transformers model
        out = dict(model.state_dict())
    else:
        from peft.tuners.lora import LoraLayer

        out = {}
        for name, tensor in model.state_dict().items():
            if "lora_" in name or ".original_module." in name:
                continue  # adapters are folded in below; original_module is replaced by modules_to_save
            name = name.removeprefix("base_model.model.").replace(".base_layer.", ".")
            for adapter in getattr(model, "active_adapters", None) or ["default"]:
                name = name.replace(f".modules_to_save.{adapter}.", ".")
            out[name] = tensor
        for module_name, module in model.named_modules():
            if not isinstance(module, LoraLayer) or module.merged:
                continue
            if any(module.use_dora.get(a, False) for a in module.active_adapters):
                raise ConfigError("policy.lora.use_dora is not supported with backend=vllm (no merged DoRA export); use backend=hf")
            key = module_name.removeprefix("base_model.model.") + ".weight"
            weight = module.get_base_layer().weight
            merged = weight.float()
            for adapter in module.active_adapters:
                if adapter in module.lora_A or adapter in getattr(module, "lora_embedding_A", {}):
                    merged = merged + module.get_delta_weight(adapter).float()  # scaling * B @ A (fan_in_fan_out aware)
            out[key] = merged.to(weight.dtype)
    if dtype is not None:
        cast: Dict[Any, torch.Tensor] = {}  # by storage: tied weights (embeddings = lm_head) stay one tensor
        for k, v in out.items():
            if v.is_floating_point():
                key = (v.data_ptr(), tuple(v.shape))
                if key not in cast:
                    cast[key] = v.to(dtype)
                out[k] = cast[key]
    return out


def engine_kwargs(path: str, dtype: torch.dtype, gpu_memory_utilization: float = 0.3, max_model_len: int = 4096,
                  **llm_kwargs: Any) -> Dict[str, Any]:
    """Arguments of ``vllm.LLM`` for the colocated engine.

    ``logprobs_mode="processed_logprobs"``: the log-probs vLLM returns are those of the
    distribution it sampled from, after temperature and top-k/top-p (its default,
    ``raw_logprobs``, is the model's softmax before them, so with temperature != 1 the
    sampler/trainer mismatch and the TIS weights would be wrong). It is an engine argument
    (``ModelConfig.logprobs_mode`` in ``vllm/config/model.py``: "Processed means the values
    after applying all processors, including temperature and top_k/top_p"), not a
    ``SamplingParams`` field; TRL's colocated GRPO passes it the same way. A user's
    ``policy.vllm`` may not override it.
    """
    if llm_kwargs.get("logprobs_mode", "processed_logprobs") != "processed_logprobs":
        raise ConfigError(f"policy.vllm.logprobs_mode={llm_kwargs['logprobs_mode']!r}: the trainer needs processed_logprobs "
                          "(the log-probs of the distribution actually sampled); remove the key")
    return {"model": path, "dtype": str(dtype).removeprefix("torch."), "gpu_memory_utilization": gpu_memory_utilization,
            "max_model_len": max_model_len, "enable_prefix_caching": True, **llm_kwargs, "logprobs_mode": "processed_logprobs"}


def sampling_kwargs(sampling: SamplingConfig, n: int, eos_ids: List[int]) -> Dict[str, Any]:
    """Arguments of ``vllm.SamplingParams`` for one rollout: ``n`` samples per prompt, the
    sampled token's log-prob only (``logprobs=0``), stop at any EOS id (kept in the output).
    ``temperature`` 0 is greedy in vLLM, as ``<= 0`` is in :class:`SamplingConfig`; ``top_k``
    0 (off) is vLLM's -1."""
    return {"n": n, "temperature": max(sampling.temperature, 0.0), "top_p": sampling.top_p,
            "top_k": sampling.top_k if sampling.top_k > 0 else -1, "max_tokens": sampling.max_new_tokens,
            "logprobs": 0, "stop_token_ids": list(eos_ids)}


class WeightVersion:
    """A counter that moves whenever a module's weights may have changed: when a gradient lands
    on one of its trained parameters (an optimizer step follows; this covers RL updates and
    SFT alike) and when a state dict is loaded into it (resume, ``init_from``). Rollouts under
    ``no_grad`` (collection, evaluation) leave it alone.

    Hooks rather than ``Tensor._version``: fused Adam (the trainer's optimizer) writes the
    parameters without bumping their version counters."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.value = 0
        for p in module.parameters():
            if p.requires_grad:
                p.register_post_accumulate_grad_hook(self._bump)
        module.register_load_state_dict_post_hook(self._bump)

    def _bump(self, *_: Any) -> None:
        self.value += 1


class WeightSync:
    """Copies the weights into the engine through ``push`` only when ``version`` moved since
    the last copy (the engine starts with the weights of ``version`` at construction)."""

    def __init__(self, push: Callable[[Weights], None], version: int, dtype: torch.dtype) -> None:
        self.push, self.synced, self.dtype = push, version, dtype

    def __call__(self, model, version: int) -> bool:
        if version == self.synced:
            return False
        self.push(list(merged_state_dict(model, self.dtype).items()))
        self.synced = version
        return True


class VLLMBackend:
    def __init__(self, policy, **llm_kwargs: Any) -> None:
        if not torch.cuda.is_available():
            raise ConfigError("policy.backend=vllm needs a CUDA GPU; use backend=hf on CPU")
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        try:
            from vllm import LLM
        except ImportError:
            raise ConfigError("policy.backend=vllm needs vLLM: pip install -e '.[vllm]'") from None
        dtype = policy.frozen_dtype
        # vLLM loads from a path: save the current weights (base names, LoRA merged) and tokenizer once
        self._dir = tempfile.TemporaryDirectory(prefix="workbench-vllm-")
        save_for_engine(policy.model, self._dir.name, dtype)
        policy.tokenizer.save_pretrained(self._dir.name)
        try:
            self.llm = LLM(**engine_kwargs(self._dir.name, dtype, **llm_kwargs))
        except TypeError as e:
            raise ConfigError(f"policy.vllm: {e} (logprobs_mode needs vLLM >= 0.10.2)") from None
        self.version = WeightVersion(policy.model)
        self.sync = WeightSync(self._push, self.version.value, dtype)

    def _push(self, weights: Weights) -> None:
        self.llm.collective_rpc(_load_weights, args=(weights,))
        self.llm.reset_prefix_cache()

    @torch.no_grad()
    def generate(self, model, tokenizer, prompts: List[str], n: int, sampling: SamplingConfig, eos_ids: List[int]) -> TokenRollout:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        self.sync(model, self.version.value)  # only if the policy changed since the last copy
        device = next(model.parameters()).device
        prompt_ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        params = SamplingParams(**sampling_kwargs(sampling, n, eos_ids))
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=ids) for ids in prompt_ids], params, use_tqdm=False)
        rows: List[Tuple[List[int], List[int], List[float]]] = []
        for ids, out in zip(prompt_ids, outputs):
            for c in out.outputs:
                lp = [next(iter(d.values())).logprob if d else 0.0 for d in (c.logprobs or [])]
                rows.append((ids, list(c.token_ids), lp))
        return _pad(rows, tokenizer.pad_token_id, eos_ids, sampling.max_new_tokens, tokenizer, device)


def save_for_engine(model, path: str, dtype: torch.dtype) -> None:
    """A ``save_pretrained`` folder vLLM loads: the base model's config and
    :func:`merged_state_dict` in ``dtype`` (no peft ``base_layer`` / ``lora_A`` names)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    base.save_pretrained(path, state_dict=merged_state_dict(model, dtype))


def _pad(rows, pad_id: int, eos_ids: List[int], max_new: int, tokenizer, device) -> TokenRollout:
    """Left-pad prompts and right-pad completions into the shared [N, P + T] layout."""
    P = max(len(r[0]) for r in rows)
    T = max(1, max(len(r[1]) for r in rows))
    N = len(rows)
    prompt = torch.full((N, P), pad_id, dtype=torch.long)
    prompt_mask = torch.zeros(N, P, dtype=torch.long)
    completion = torch.full((N, T), pad_id, dtype=torch.long)
    logp = torch.zeros(N, T)
    for i, (p, c, lp) in enumerate(rows):
        prompt[i, P - len(p):] = torch.tensor(p)
        prompt_mask[i, P - len(p):] = 1
        if c:
            completion[i, : len(c)] = torch.tensor(c)
            logp[i, : len(lp)] = torch.tensor(lp)
    # vLLM stops at the first stop token and includes it: every returned token is valid
    mask = (torch.arange(T)[None, :] < torch.tensor([len(r[1]) for r in rows])[:, None]).float()
    lengths = mask.sum(1).long()
    last = completion.gather(1, (lengths - 1).clamp(min=0)[:, None]).squeeze(1)
    truncated = ~torch.isin(last, torch.tensor(eos_ids)) & (lengths >= max_new)
    return TokenRollout(
        input_ids=torch.cat([prompt, completion], 1).to(device),
        attention_mask=torch.cat([prompt_mask, mask.long()], 1).to(device),
        prompt_length=P,
        completion_mask=mask.to(device),
        rollout_logp=(logp * mask).to(device),
        completions=tokenizer.batch_decode(completion, skip_special_tokens=True),
        truncated=truncated.to(device),
    )
