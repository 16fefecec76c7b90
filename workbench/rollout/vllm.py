"""The ``vllm`` rollout backend (GPU only): an in-process vLLM engine colocated with training.

vLLM is an optional extra (``pip install -e '.[vllm]'``) and is imported only when a policy asks
for ``backend: vllm``. After every update the trained weights are copied into the engine
(LoRA adapters are merged for the copy and unmerged after), so each rollout samples from the
current policy. The engine runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``), so the
weight copy passes tensors by reference through ``LLM.collective_rpc``.

The sampler's own log-probs come back as ``rollout_logp``; the trainer recomputes ``logp``
with the training forward, logs the mismatch, and can correct for it with ``algo.tis_cap``.
"""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from typing import Any, Iterator, List, Tuple

import torch

from workbench.registry import ConfigError
from workbench.rollout.base import SamplingConfig, TokenRollout


def _load_weights(worker, weights: List[Tuple[str, torch.Tensor]]) -> None:
    """Runs on each vLLM worker (``collective_rpc`` passes the worker as the first argument)."""
    worker.model_runner.model.load_weights(weights=weights)


@contextmanager
def merged_weights(model) -> Iterator[List[Tuple[str, torch.Tensor]]]:
    """(name, tensor) pairs with base-model names, LoRA adapters merged in (peft), valid inside
    the ``with`` block only: the tensors share storage with the model, which is unmerged on exit."""
    is_peft = hasattr(model, "merge_adapter")
    if is_peft:
        model.merge_adapter()
    try:
        weights = []
        for name, tensor in model.state_dict().items():
            if is_peft:
                if "lora_" in name or "modules_to_save" in name:
                    continue
                name = name.removeprefix("base_model.model.").replace(".base_layer", "")
            weights.append((name, tensor))
        yield weights
    finally:
        if is_peft:
            model.unmerge_adapter()


class VLLMBackend:
    def __init__(self, policy, gpu_memory_utilization: float = 0.3, max_model_len: int = 4096, **llm_kwargs: Any) -> None:
        if not torch.cuda.is_available():
            raise ConfigError("policy.backend=vllm needs a CUDA GPU; use backend=hf on CPU")
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        try:
            from vllm import LLM
        except ImportError:
            raise ConfigError("policy.backend=vllm needs vLLM: pip install -e '.[vllm]'") from None
        # vLLM loads from a path: save the current weights and tokenizer once
        self._dir = tempfile.TemporaryDirectory(prefix="workbench-vllm-")
        base = policy.model.get_base_model() if hasattr(policy.model, "get_base_model") else policy.model
        base.save_pretrained(self._dir.name)
        policy.tokenizer.save_pretrained(self._dir.name)
        self.llm = LLM(model=self._dir.name, dtype=str(next(base.parameters()).dtype).removeprefix("torch."),
                       gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len,
                       enable_prefix_caching=True, **llm_kwargs)
        self._synced_version = None

    def sync_weights(self, model) -> None:
        with merged_weights(model) as weights:
            self.llm.collective_rpc(_load_weights, args=(weights,))
        self.llm.reset_prefix_cache()

    @torch.no_grad()
    def generate(self, model, tokenizer, prompts: List[str], n: int, sampling: SamplingConfig, eos_ids: List[int]) -> TokenRollout:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        self.sync_weights(model)  # the policy changed since the last rollout
        device = next(model.parameters()).device
        prompt_ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        params = SamplingParams(n=n, temperature=max(sampling.temperature, 0.0), top_p=sampling.top_p,
                                top_k=sampling.top_k if sampling.top_k > 0 else -1, max_tokens=sampling.max_new_tokens,
                                logprobs=0, stop_token_ids=eos_ids)
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=ids) for ids in prompt_ids], params, use_tqdm=False)
        rows: List[Tuple[List[int], List[int], List[float]]] = []
        for ids, out in zip(prompt_ids, outputs):
            for c in out.outputs:
                lp = [next(iter(d.values())).logprob if d else 0.0 for d in (c.logprobs or [])]
                rows.append((ids, list(c.token_ids), lp))
        return _pad(rows, tokenizer.pad_token_id, eos_ids, sampling.max_new_tokens, tokenizer, device)


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
