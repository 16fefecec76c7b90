"""Token policy for vision-language models: Qwen2-VL, Qwen2.5-VL and the newer Qwen-VL classes
(hub id, local path, or a config for a tiny random model), optional LoRA through peft.

The same token-policy family as :class:`CausalLMPolicy` (rows scored whole, same reference and
LoRA handling); what differs is the input side:

- a prompt is a list of chat messages whose content may hold image parts
  (``{"type": "image", "image": PIL.Image | path | url}``); a plain string is one user message.
  Images are resized by qwen-vl-utils (``smart_resize`` to multiples of patch x merge size,
  pixels within ``min_pixels`` / ``max_pixels``) and patchified by the model's processor;
- the processor returns *packed* vision inputs (``pixel_values`` [sum of patches, D] and
  ``image_grid_thw`` [images, 3]) that are not indexed by row. Each row keeps its own copy,
  padded (:data:`VISION_KEYS`: ``[N, max_patches, D]`` + a patch count, ``[N, max_images, 3]``
  + an image count), so ``Batch.select`` gathers any rows in any order and the forward re-packs
  exactly the selected rows' patches (:func:`pack_vision`);
- positions are the model's own multimodal rotary positions (mrope), computed inside the model
  from ``input_ids``, ``mm_token_type_ids`` and ``image_grid_thw``: no 1-D position ids are passed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Union

import torch

from workbench.environment import EnvSpec
from workbench.policies.causal_lm import CORE_INPUTS, CausalLMPolicy, load_pretrained, token_logprobs
from workbench.registry import ConfigError, POLICIES
from workbench.rollout.base import SamplingConfig, TokenRollout, training_logits
from workbench.rollout.hf import generate_encoded

Messages = List[Dict[str, Any]]
Prompt = Union[str, Messages]

# per-row vision inputs: padded copies of the packed tensors plus how much of each row is real
VISION_KEYS = ("pixel_values", "pixel_count", "image_grid_thw", "image_count")
VISION_MODULES = r".*\.visual\..*"  # the vision tower of every Qwen-VL class (peft exclude_modules)
QWEN_VL_SPECIAL_TOKENS = ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|image_pad|>", "<|vision_end|>",
                          "<|video_pad|>"]
# the Qwen2-VL chat format, for tokenizers built in code (hub processors bring their own template)
QWEN_VL_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def pad_vision(pixel_values: torch.Tensor, image_grid_thw: torch.Tensor, images_per_row: Sequence[int]) -> Dict[str, torch.Tensor]:
    """Split packed vision inputs into per-row padded tensors (:data:`VISION_KEYS`).

    ``images_per_row[i]`` consecutive images of ``image_grid_thw`` belong to row i; an image's
    patches are ``t * h * w`` consecutive rows of ``pixel_values``."""
    rows = len(images_per_row)
    patches = image_grid_thw.prod(-1).tolist()
    image_ends = torch.tensor(images_per_row).cumsum(0).tolist()
    bounds, start_image, start_patch = [], 0, 0
    for end_image in image_ends:
        count = sum(patches[start_image:end_image])
        bounds.append((start_image, end_image, start_patch, start_patch + count))
        start_image, start_patch = end_image, start_patch + count
    max_images = max(max(images_per_row), 1)
    max_patches = max(max(b[3] - b[2] for b in bounds), 1)
    out = {
        "pixel_values": pixel_values.new_zeros(rows, max_patches, pixel_values.shape[-1]),
        "pixel_count": torch.tensor([b[3] - b[2] for b in bounds]),
        "image_grid_thw": image_grid_thw.new_zeros(rows, max_images, 3),
        "image_count": torch.tensor(list(images_per_row)),
    }
    for i, (i0, i1, p0, p1) in enumerate(bounds):
        out["pixel_values"][i, : p1 - p0] = pixel_values[p0:p1]
        out["image_grid_thw"][i, : i1 - i0] = image_grid_thw[i0:i1]
    return out


def pack_vision(inputs: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """The model's packed ``pixel_values`` / ``image_grid_thw`` of the rows in ``inputs`` (in
    their order), from the per-row padded copies; {} when no row has an image."""
    if "pixel_values" not in inputs or int(inputs["image_count"].sum()) == 0:
        return {}
    pixel_count, image_count = inputs["pixel_count"].tolist(), inputs["image_count"].tolist()
    return {
        "pixel_values": torch.cat([pv[:c] for pv, c in zip(inputs["pixel_values"], pixel_count)]),
        "image_grid_thw": torch.cat([g[:c] for g, c in zip(inputs["image_grid_thw"], image_count)]),
    }


def select_rows(inputs: Dict[str, torch.Tensor], rows: Union[slice, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Every per-row input restricted to ``rows``."""
    return {k: v[rows] for k, v in inputs.items()}


@dataclass
@POLICIES.register("vlm")
class VLMPolicy(CausalLMPolicy):
    sample_unit = "row"

    @dataclass
    class Config(CausalLMPolicy.Config):
        name: str = "vlm"
        # model_config: {model_type: qwen2_vl | qwen2_5_vl | qwen3_vl, text_config: {...}, vision_config: {...}};
        # vocab size, special-token ids and the chat format come from the tokenizer
        min_pixels: Optional[int] = None  # qwen-vl-utils smart_resize bounds per image (None: its defaults)
        max_pixels: Optional[int] = None
        train_vision: bool = False  # false: the vision tower is frozen (and gets no LoRA adapters)
        chat_template: bool = True  # prompts are chat messages, always formatted with the processor's template

        def __post_init__(self) -> None:
            super().__post_init__()
            if self.backend == "vllm":
                raise ConfigError("policy=vlm: the vllm backend does not pass images yet (multi_modal_data); use backend=hf")
            if self.temperature_schedule is not None:
                raise ConfigError("policy=vlm: temperature_schedule is not supported yet")
            if not self.chat_template:
                raise ConfigError("policy=vlm: prompts are chat messages; policy.chat_template cannot be false")
            for key in ("min_pixels", "max_pixels"):
                value = getattr(self, key)
                if value is not None and (not isinstance(value, int) or value <= 0):
                    raise ConfigError(f"policy.{key} must be a positive number of pixels, got {value!r}")
            if self.min_pixels and self.max_pixels and self.min_pixels > self.max_pixels:
                raise ConfigError(f"policy.min_pixels={self.min_pixels} exceeds policy.max_pixels={self.max_pixels}")
            if self.lora and not self.train_vision:
                self.lora = {"exclude_modules": VISION_MODULES, **self.lora}

    def __init__(self, cfg: "VLMPolicy.Config", spec: Optional[EnvSpec] = None) -> None:
        super().__init__(cfg, spec)
        if not cfg.train_vision:
            for name, p in self.model.named_parameters():
                if ".visual." in f".{name}.":
                    p.requires_grad_(False)
        # placeholders the processor inserts: never sampled (a sampled <|image_pad|> would have no image)
        self.vision_token_ids = sorted({getattr(self.model.config, f"{name}_token_id") for name in
                                        ("image", "video", "vision_start", "vision_end")} - {None})
        text_config = self.model.config.get_text_config()
        self.context = getattr(text_config, "max_position_embeddings", None)
        if self.context is not None and cfg.max_new_tokens >= self.context:
            raise ConfigError(f"policy.max_new_tokens={cfg.max_new_tokens} does not fit the model's context "
                              f"(max_position_embeddings={self.context}) beside a prompt; lower it")

    # ------------------------------------------------------------------ loading
    def _load_tokenizer(self, cfg):
        """Builds ``self.processor`` (image processor + tokenizer + chat template) and returns its tokenizer."""
        pixel_options = {k: v for k, v in (("min_pixels", cfg.min_pixels), ("max_pixels", cfg.max_pixels)) if v}
        if cfg.tokenizer == "char":
            self.processor = self._char_processor(pixel_options)
        else:
            from transformers import AutoProcessor

            source = cfg.tokenizer or cfg.model
            if source is None:
                raise ConfigError("policy.tokenizer is needed with policy.model_config (a path, a hub id, or 'char')")
            try:
                self.processor = AutoProcessor.from_pretrained(source, **pixel_options)
            except (OSError, ValueError) as e:
                raise ConfigError(f"cannot load processor '{source}': {str(e).splitlines()[0]}") from None
        tok = self.processor.tokenizer
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        return tok

    @staticmethod
    def _char_processor(pixel_options: Dict[str, int]):
        """A Qwen2-VL processor built offline: the character tokenizer plus the chat-format tokens."""
        from transformers import Qwen2VLImageProcessor, Qwen2VLProcessor, Qwen2VLVideoProcessor

        from workbench.tokenizer_utils import build_char_tokenizer

        tok = build_char_tokenizer()
        tok.add_special_tokens({"additional_special_tokens": QWEN_VL_SPECIAL_TOKENS})
        return Qwen2VLProcessor(image_processor=Qwen2VLImageProcessor(**pixel_options), tokenizer=tok,
                                video_processor=Qwen2VLVideoProcessor(), chat_template=QWEN_VL_CHAT_TEMPLATE)

    def _load_model(self, cfg, vocab_size: int, dtype: torch.dtype):
        from transformers import AutoConfig, AutoModelForImageTextToText

        if cfg.model_config is not None:
            options = dict(cfg.model_config)
            model_type = options.pop("model_type", None)
            if model_type is None:
                raise ConfigError("policy.model_config needs a model_type (e.g. qwen2_vl)")
            tok = self.tokenizer
            text = {"vocab_size": vocab_size, "bos_token_id": None, "eos_token_id": tok.eos_token_id,
                    "pad_token_id": tok.pad_token_id, **dict(options.pop("text_config", {}))}
            ids = {f"{name}_token_id": tok.convert_tokens_to_ids(f"<|{name}|>")
                   for name in ("vision_start", "vision_end")}
            ids.update(image_token_id=tok.convert_tokens_to_ids("<|image_pad|>"),
                       video_token_id=tok.convert_tokens_to_ids("<|video_pad|>"))
            try:
                model_config = AutoConfig.for_model(model_type, text_config=text, **{**ids, **options})
            except (TypeError, ValueError) as e:
                raise ConfigError(f"policy.model_config: {str(e).splitlines()[0]}") from None
            return AutoModelForImageTextToText.from_config(model_config, dtype=dtype)
        return load_pretrained(AutoModelForImageTextToText, cfg.model, dtype)

    def _eos_ids(self) -> List[int]:
        """The tokenizer's and generation config's EOS, plus ``<|im_end|>`` (the end of a chat turn)."""
        ids = set(super()._eos_ids())
        im_end = self.tokenizer.convert_tokens_to_ids("<|im_end|>")
        if isinstance(im_end, int) and im_end != self.tokenizer.unk_token_id:
            ids.add(im_end)
        return sorted(ids)

    # ------------------------------------------------------------------ encoding
    def messages(self, prompt: Prompt) -> Messages:
        """Chat messages of a prompt (a plain string is one user turn), with the system prompt and
        the configured pixel bounds on every image part."""
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        if self.cfg.system_prompt and messages[0].get("role") != "system":
            messages = [{"role": "system", "content": self.cfg.system_prompt}] + messages
        bounds = {k: v for k, v in (("min_pixels", self.cfg.min_pixels), ("max_pixels", self.cfg.max_pixels)) if v}
        out = []
        for message in messages:
            content = message.get("content")
            if isinstance(content, list):
                content = [{**bounds, **part} if part.get("type") == "image" else part for part in content]
            out.append({**message, "content": content})
        return out

    def encode_prompts(self, prompts: Sequence[Prompt]) -> Dict[str, torch.Tensor]:
        """Left-padded prompt tokens (``input_ids``, ``attention_mask``; each image's placeholder
        expanded to its token count) and the per-row vision inputs of each prompt."""
        from qwen_vl_utils import process_vision_info

        conversations = [self.messages(p) for p in prompts]
        texts = [self.processor.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in conversations]
        patch_size = getattr(self.processor.image_processor, "patch_size", 14)
        images, images_per_row = [], []
        for messages in conversations:
            found, videos = process_vision_info(messages, image_patch_size=patch_size)
            if videos:
                raise ValueError("policy=vlm: video parts are not supported yet")
            images.extend(found or [])
            images_per_row.append(len(found or []))
        enc = self.processor(text=texts, images=images or None, return_tensors="pt", padding=True, padding_side="left")
        out = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
        if images:
            out.update(pad_vision(enc["pixel_values"], enc["image_grid_thw"], images_per_row))
        return out

    def _model_inputs(self, inputs: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """What the model's forward / generate takes: tokens, modality types, packed vision."""
        ids = inputs["input_ids"]
        config = self.model.config
        mm_types = torch.zeros_like(ids, dtype=torch.int)
        mm_types[ids == config.image_token_id] = 1
        mm_types[ids == config.video_token_id] = 2
        return {"input_ids": ids, "attention_mask": inputs["attention_mask"], "mm_token_type_ids": mm_types,
                **pack_vision(inputs)}

    def _without_vision_tokens(self, logits: torch.Tensor) -> torch.Tensor:
        """[..., V] logits with the vision placeholders masked out: the distribution both the
        sampler and the training forward use (a large negative, not -inf, keeps entropy finite)."""
        ids = torch.tensor(self.vision_token_ids, device=logits.device)
        return logits.index_fill(-1, ids, -1e30)

    # ------------------------------------------------------------------ rollout
    @torch.no_grad()
    def rollout(self, prompts: List[Prompt], n: int, sampling: Optional[SamplingConfig] = None) -> TokenRollout:
        """``n`` completions per prompt, with each row's vision inputs; ``logp`` recomputed by the
        training forward where needed, ``ref_logp`` under the reference."""
        sampling = sampling or self.sampling
        was_training = self.model.training
        self.model.eval()
        enc = {k: v.to(self.device) for k, v in self.encode_prompts(prompts).items()}
        if self.context is not None and enc["input_ids"].shape[1] + sampling.max_new_tokens > self.context:
            raise ConfigError(f"policy.max_new_tokens={sampling.max_new_tokens} plus a prompt of {enc['input_ids'].shape[1]} "
                              f"tokens exceeds the model's context (max_position_embeddings={self.context})")
        rows = {k: v.repeat_interleave(n, dim=0) for k, v in enc.items()}
        out = self._generate(rows, sampling)
        out.logp = self._recompute(out, reference=False) if self._needs_recompute() else out.rollout_logp
        if self.cfg.reference != "none":
            out.ref_logp = self._recompute(out, reference=True)
        self.model.train(was_training)
        return out

    def _generate(self, rows: Dict[str, torch.Tensor], sampling: SamplingConfig) -> TokenRollout:
        """The hf backend's ``generate`` on encoded rows with their images; the vision placeholders
        are never sampled and are masked out of the log-probs alike."""
        out = generate_encoded(self.model, self.tokenizer, rows["input_ids"], rows["attention_mask"], sampling, self.eos_ids,
                               model_inputs=self._model_inputs(rows), suppress_tokens=self.vision_token_ids,
                               mask_logits=self._without_vision_tokens)
        out.row_inputs = {k: v for k, v in rows.items() if k in VISION_KEYS}
        return out

    def policy_inputs(self, out: TokenRollout) -> Dict[str, torch.Tensor]:
        """The rollout's rows as ``log_probs`` inputs (tokens, prompt length, vision inputs)."""
        N = out.input_ids.shape[0]
        return {"input_ids": out.input_ids, "attention_mask": out.attention_mask,
                "prompt_length": torch.full((N,), out.prompt_length, device=out.input_ids.device), **out.row_inputs}

    def _recompute(self, out: TokenRollout, reference: bool) -> torch.Tensor:
        inputs = self.policy_inputs(out)
        chunks = []
        for start in range(0, out.input_ids.shape[0], self.cfg.micro_batch_size):
            rows = slice(start, start + self.cfg.micro_batch_size)
            logp, _ = self._forward(select_rows(inputs, rows), reference=reference, with_entropy=False)
            chunks.append(logp)
        return torch.cat(chunks) * out.completion_mask

    def encode_demonstrations(self, prompts: List[Prompt], targets: List[str]):
        """Left-padded prompts (with their vision inputs) + right-padded targets ending in EOS,
        as ``policy_inputs`` and a [B, T] mask over the target tokens (what SFT trains on)."""
        enc = self.encode_prompts(prompts)
        tok = self.tokenizer
        target_ids = [tok(t, add_special_tokens=False)["input_ids"] + [self.eos_ids[0]] for t in targets]
        T = max(len(t) for t in target_ids)
        ids = torch.full((len(targets), T), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros(len(targets), T)
        for i, t in enumerate(target_ids):
            ids[i, : len(t)] = torch.tensor(t)
            mask[i, : len(t)] = 1.0
        P = enc["input_ids"].shape[1]
        inputs = {**enc,
                  "input_ids": torch.cat([enc["input_ids"], ids], dim=1),
                  "attention_mask": torch.cat([enc["attention_mask"], mask.long()], dim=1),
                  "prompt_length": torch.full((len(targets),), P)}
        return inputs, mask

    # ------------------------------------------------------------------ scoring
    def _forward(self, inputs: Dict[str, torch.Tensor], reference: bool = False, with_entropy: bool = True):
        """Completion log-probs of whole rows; the model derives the mrope positions itself."""
        unknown = [k for k in inputs if k not in CORE_INPUTS and k not in VISION_KEYS]
        if unknown:
            raise ValueError(f"policy=vlm: unexpected policy inputs {unknown}")
        ids = inputs["input_ids"]
        P = int(inputs["prompt_length"][0])
        model_inputs = self._model_inputs(inputs)
        if reference and self.cfg.reference == "lora_base":
            with self.model.disable_adapter():
                logits = self.model(**model_inputs).logits
        else:
            model = self.reference if reference else self.model
            logits = model(**model_inputs).logits
        logits = training_logits(self._without_vision_tokens(logits[:, P - 1:-1].float()), self.sampling)
        return token_logprobs(logits, ids[:, P:], with_entropy)
