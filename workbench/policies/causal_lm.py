"""Token policy: any transformers causal LM (hub id, local path, or a config for a tiny
random model), optional LoRA through peft, optional reference model for KL.

Each generated token is one step of a trajectory. Rows are scored whole (``sample_unit =
"row"``): one forward pass gives every token's log-prob, with exactly the masking and
position ids the rollout used. Vision-language models plug in by adding their pixel inputs to
``policy_inputs``; the forward passes every extra input through to the model.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from workbench.batch import PolicyOutput
from workbench.environment import EnvSpec
from workbench.fields import check_choices, choice
from workbench.policies.base import TokenGenerator
from workbench.registry import ConfigError, POLICIES
from workbench.rollout.base import SamplingConfig, TokenRollout, normalize_schedule, trains_at_temperature_one, training_logits

CORE_INPUTS = ("input_ids", "attention_mask", "prompt_length")


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor, with_entropy: bool = True):
    """Per-token log-probs [B, T] of ``targets`` under ``logits`` [B, T, V], and entropies.

    Entropy uses H = logZ - E_p[logit], which needs one softmax and no log of tiny numbers.
    """
    logits = logits.float()
    logz = torch.logsumexp(logits, dim=-1)
    logp = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logz
    entropy = None
    if with_entropy:
        entropy = logz - (torch.softmax(logits, dim=-1) * logits).sum(-1)
    return logp, entropy


def load_pretrained(auto_class, model: str, dtype: torch.dtype):
    """``auto_class.from_pretrained(model)`` with one-line errors naming ``policy.model``."""
    if Path(model).expanduser().exists() is False and "/" not in model:
        raise ConfigError(f"policy.model '{model}' is neither a local path nor a hub id")
    try:
        return auto_class.from_pretrained(model, dtype=dtype)
    except OSError as e:
        raise ConfigError(f"cannot load model '{model}': {str(e).splitlines()[0]}") from None


@POLICIES.register("causal_lm")
class CausalLMPolicy(TokenGenerator):
    sample_unit = "row"

    @dataclass
    class Config:
        name: str = "causal_lm"
        model: Optional[str] = None  # hub id or local path for from_pretrained
        model_config: Optional[Dict[str, Any]] = None  # or a config dict ({model_type: qwen2, ...}): random init
        tokenizer: Optional[str] = None  # default: the model's; "char" builds a character tokenizer in code
        # dtype of the weights that do not train (the frozen reference, the base under LoRA) and of
        # the vLLM engine's copy: auto (bf16 on CUDA, fp32 on CPU) | float32 | bfloat16. Trained
        # weights are always float32 masters; bf16 compute comes from the run's precision (autocast)
        dtype: str = choice("auto", "float32", "bfloat16")
        lora: Optional[Dict[str, Any]] = None  # peft LoraConfig fields, e.g. {r: 16, lora_alpha: 32, target_modules: all-linear}
        reference: str = choice("none", "frozen", "lora_base")  # frozen: a copy of the initial weights; lora_base: adapters disabled
        chat_template: bool = False  # wrap each prompt as a user message with the tokenizer's chat template
        system_prompt: Optional[str] = None
        backend: str = choice("hf", "vllm")
        max_new_tokens: int = 64
        temperature: float = 1.0
        top_p: float = 1.0
        top_k: int = 0
        temperature_schedule: Optional[Dict[str, Any]] = None  # EAD (Yang et al. 2025, "Exploratory Annealed Decoding"); see SamplingConfig
        micro_batch_size: int = 64  # rows per forward pass when recomputing log-probs
        # logp_old from a no-grad training forward (true), or the sampler's own log-probs (false).
        # auto: recompute unless the sampler is this very model in fp32 (hf backend), where both
        # are the same computation (measured mismatch ~1e-7)
        recompute_logp: str = choice("auto", "true", "false")
        gradient_checkpointing: bool = False
        vllm: Dict[str, Any] = field(default_factory=dict)  # extra vllm.LLM arguments

        def __post_init__(self) -> None:
            self.recompute_logp = str(self.recompute_logp).lower()  # YAML true/false arrive as "True"/"False"
            check_choices(self, "policy")
            if (self.model is None) == (self.model_config is None):
                raise ConfigError("policy: give exactly one of policy.model (hub id or path) and policy.model_config")
            if self.reference == "lora_base" and not self.lora:
                raise ConfigError("policy.reference=lora_base needs policy.lora")
            if self.reference == "frozen" and self.lora:
                raise ConfigError("with policy.lora use policy.reference=lora_base (the adapters switched off)")
            if self.temperature_schedule is not None:
                normalize_schedule(dict(self.temperature_schedule))
                if self.backend == "vllm":
                    raise ConfigError("policy.temperature_schedule is supported by the hf backend only (vLLM would ignore it)")
                if normalize_schedule(dict(self.temperature_schedule))["train_at_temperature_one"] \
                        and str(self.recompute_logp).lower() == "false":
                    raise ConfigError("policy.temperature_schedule.train_at_temperature_one needs the T = 1 log-probs "
                                      "recomputed: drop policy.recompute_logp=false")

        @property
        def has_reference(self) -> bool:
            """Whether the policy keeps a KL reference (``algo.beta > 0`` needs one)."""
            return self.reference != "none"

    def __init__(self, cfg: "CausalLMPolicy.Config", spec: Optional[EnvSpec] = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.tokenizer = self._load_tokenizer(cfg)
        self.frozen_dtype = self._frozen_dtype(cfg)
        # full fine-tuning loads float32 (the trained weights); LoRA loads its frozen base in frozen_dtype
        self.model = self._load_model(cfg, len(self.tokenizer), self.frozen_dtype if cfg.lora else torch.float32)
        if cfg.gradient_checkpointing:
            self.model.gradient_checkpointing_enable()
        self.reference = None
        if cfg.reference == "frozen":
            self.reference = copy.deepcopy(self.model).to(self.frozen_dtype).eval().requires_grad_(False)
        if cfg.lora:
            from peft import LoraConfig, get_peft_model

            try:
                self.model = get_peft_model(self.model, LoraConfig(task_type="CAUSAL_LM", **cfg.lora))
            except TypeError as e:
                raise ConfigError(f"policy.lora: {e}") from None
        for p in self.model.parameters():
            if p.requires_grad:  # fp32 masters: Adam's lr-1e-6 steps vanish in bf16 (rounding step ~1e-4 at 0.02)
                p.data = p.data.float()
        self.eos_ids = self._eos_ids()
        self.sampling = SamplingConfig(cfg.max_new_tokens, cfg.temperature, cfg.top_p, cfg.top_k, cfg.temperature_schedule)
        self.context = getattr(self.model.config, "max_position_embeddings", None)  # positions the model was built for
        if self.context is not None and cfg.max_new_tokens >= self.context:
            raise ConfigError(f"policy.max_new_tokens={cfg.max_new_tokens} does not fit the model's context "
                              f"(max_position_embeddings={self.context}) beside a prompt; lower it")
        self._backend = None

    # ------------------------------------------------------------------ loading
    @staticmethod
    def _load_tokenizer(cfg):
        if cfg.tokenizer == "char":
            from workbench.tokenizer_utils import build_char_tokenizer

            return build_char_tokenizer()
        from transformers import AutoTokenizer

        source = cfg.tokenizer or cfg.model
        if source is None:
            raise ConfigError("policy.tokenizer is needed with policy.model_config (a path, a hub id, or 'char')")
        try:
            tok = AutoTokenizer.from_pretrained(source)
        except (OSError, ValueError) as e:
            raise ConfigError(f"cannot load tokenizer '{source}': {str(e).splitlines()[0]}") from None
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        return tok

    @staticmethod
    def _frozen_dtype(cfg) -> torch.dtype:
        dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}.get(cfg.dtype)
        if dtype is None:
            dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
        return dtype

    @staticmethod
    def _load_model(cfg, vocab_size: int, dtype: torch.dtype):
        from transformers import AutoConfig, AutoModelForCausalLM

        if cfg.model_config is not None:
            options = dict(cfg.model_config)
            model_type = options.pop("model_type", None)
            if model_type is None:
                raise ConfigError("policy.model_config needs a model_type (e.g. qwen2)")
            options.setdefault("vocab_size", vocab_size)
            model_config = AutoConfig.for_model(model_type, **options)
            return AutoModelForCausalLM.from_config(model_config, dtype=dtype)
        return load_pretrained(AutoModelForCausalLM, cfg.model, dtype)

    def _eos_ids(self) -> List[int]:
        ids = {self.tokenizer.eos_token_id}
        gen = getattr(self.model, "generation_config", None)
        extra = getattr(gen, "eos_token_id", None) if gen is not None else None
        ids.update(extra if isinstance(extra, (list, tuple)) else [extra])
        return sorted(i for i in ids if i is not None)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # ------------------------------------------------------------------ rollout
    def format_prompt(self, prompt: str) -> str:
        if not self.cfg.chat_template:
            return prompt
        messages = ([{"role": "system", "content": self.cfg.system_prompt}] if self.cfg.system_prompt else [])
        messages.append({"role": "user", "content": prompt})
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def backend(self):
        if self._backend is None:
            if self.cfg.backend == "vllm":
                from workbench.rollout.vllm import VLLMBackend

                self._backend = VLLMBackend(self, **self.cfg.vllm)
            else:
                from workbench.rollout import hf

                self._backend = hf
        return self._backend

    @torch.no_grad()
    def rollout(self, prompts: List[str], n: int, sampling: Optional[SamplingConfig] = None) -> TokenRollout:
        """Sample ``n`` completions per prompt; recompute their log-probs with the training
        forward (``logp``, the ratio's denominator) and under the reference (``ref_logp``)."""
        was_training = self.model.training
        self.model.eval()
        texts = [self.format_prompt(p) for p in prompts]
        self._check_context(texts, sampling or self.sampling)
        out = self.backend().generate(self.model, self.tokenizer, texts, n, sampling or self.sampling, self.eos_ids)
        out.logp = self._recompute(out, reference=False) if self._needs_recompute() else out.rollout_logp
        if self.cfg.reference != "none":
            out.ref_logp = self._recompute(out, reference=True)
        self.model.train(was_training)
        return out

    def _check_context(self, texts: List[str], sampling: SamplingConfig) -> None:
        """Refuse a generation that would run past the model's positions (it would not stop)."""
        if self.context is None:
            return
        longest = max(len(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"])
        if longest + sampling.max_new_tokens > self.context:
            raise ConfigError(f"policy.max_new_tokens={sampling.max_new_tokens} plus a prompt of {longest} tokens exceeds "
                              f"the model's context (max_position_embeddings={self.context}); lower max_new_tokens to "
                              f"{self.context - longest} or shorten the prompts")

    def _needs_recompute(self) -> bool:
        if trains_at_temperature_one(self.sampling):
            return True  # EAD pairing: rollout_logp is the annealed behaviour, logp_old the T = 1 policy
        if self.cfg.recompute_logp != "auto":
            return self.cfg.recompute_logp == "true"
        # the hf sampler is this very model; in float32 (no autocast, no bf16 weights) its
        # cached generation and the training forward agree to ~1e-7
        fp32 = not torch.is_autocast_enabled(self.device.type) and all(p.dtype == torch.float32 for p in self.model.parameters())
        return not (self.cfg.backend == "hf" and fp32)

    def _recompute(self, out: TokenRollout, reference: bool) -> torch.Tensor:
        chunks = []
        prompt_length = torch.full((out.input_ids.shape[0],), out.prompt_length, device=out.input_ids.device)
        for start in range(0, out.input_ids.shape[0], self.cfg.micro_batch_size):
            rows = slice(start, start + self.cfg.micro_batch_size)
            inputs = {"input_ids": out.input_ids[rows], "attention_mask": out.attention_mask[rows], "prompt_length": prompt_length[rows]}
            logp, _ = self._forward(inputs, reference=reference, with_entropy=False)
            chunks.append(logp)
        return torch.cat(chunks) * out.completion_mask

    def encode_demonstrations(self, prompts: List[str], targets: List[str]):
        """Left-padded prompts + right-padded targets ending in EOS, as ``policy_inputs`` and a
        [B, T] mask over the target tokens (what SFT trains on)."""
        tok = self.tokenizer
        enc = tok([self.format_prompt(p) for p in prompts], return_tensors="pt", padding=True, padding_side="left",
                  add_special_tokens=False)
        target_ids = [tok(t, add_special_tokens=False)["input_ids"] + [self.eos_ids[0]] for t in targets]
        T = max(len(t) for t in target_ids)
        ids = torch.full((len(targets), T), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros(len(targets), T)
        for i, t in enumerate(target_ids):
            ids[i, : len(t)] = torch.tensor(t)
            mask[i, : len(t)] = 1.0
        P = enc["input_ids"].shape[1]
        inputs = {
            "input_ids": torch.cat([enc["input_ids"], ids], dim=1),
            "attention_mask": torch.cat([enc["attention_mask"], mask.long()], dim=1),
            "prompt_length": torch.full((len(targets),), P),
        }
        return inputs, mask

    # ------------------------------------------------------------------ scoring
    def _forward(self, inputs: Dict[str, torch.Tensor], reference: bool = False, with_entropy: bool = True):
        ids, attn = inputs["input_ids"], inputs["attention_mask"]
        P = int(inputs["prompt_length"][0])
        extra = {k: v for k, v in inputs.items() if k not in CORE_INPUTS}  # e.g. pixel_values for VLMs
        position_ids = (attn.cumsum(-1) - 1).clamp(min=0)
        if reference and self.cfg.reference == "lora_base":
            with self.model.disable_adapter():
                logits = self.model(input_ids=ids, attention_mask=attn, position_ids=position_ids, **extra).logits
        else:
            model = self.reference if reference else self.model
            logits = model(input_ids=ids, attention_mask=attn, position_ids=position_ids, **extra).logits
        logits = logits[:, P - 1:-1]
        logits = training_logits(logits, self.sampling)  # the sampler's temperatures (T = 1 under EAD pairing)
        return token_logprobs(logits, ids[:, P:], with_entropy)

    def log_probs(self, policy_inputs: Dict[str, torch.Tensor]) -> PolicyOutput:
        """Log-probs and entropies [M, T] of the completion tokens of whole rows."""
        logp, entropy = self._forward(policy_inputs)
        return PolicyOutput(logp=logp, entropy=entropy)

    def param_groups(self) -> list:
        return [{"params": [p for p in self.model.parameters() if p.requires_grad]}]

    def reset_reference(self) -> None:
        """Make the frozen reference the current weights (called when training starts from
        init_from or after SFT: the KL anchor is the model RL starts from, not the random init).
        The reference is part of the state dict, so a resumed run keeps the same anchor."""
        if self.reference is not None:
            self.reference.load_state_dict(self.model.state_dict())
