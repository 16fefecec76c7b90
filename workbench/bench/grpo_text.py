"""``workbench bench grpo-text``: our GRPO step vs TRL's ``GRPOTrainer`` on the same tiny model.

Both sides load one saved tiny random-init Qwen2 (``configs/policy/tiny_qwen2.yaml``'s
architecture) and the character tokenizer from the same folder, see the same arithmetic
prompts in the same order, and run with matched settings: prompts per step, group size
(TRL ``num_generations``), max completion length, temperature 1 / top-p 1 / no top-k,
``math_accuracy`` reward, group-scaled advantages, clip epsilon 0.2, token-mean loss (TRL
``loss_type="dapo"``), beta 0 (no reference model), one optimiser step per generation batch
(TRL ``num_iterations=1``, ``steps_per_generation=1``, ``gradient_accumulation_steps=1``),
Adam with weight decay 0 (TRL's AdamW with ``weight_decay=0`` is the same update), the same
lr / betas / eps, grad-norm clip 1.0, constant lr, fp32, no gradient checkpointing, CPU,
one torch thread. Each side runs in a fresh spawned process, one after the other; ``--rounds``
repeats the pair, alternating which side goes first.

A step is everything between two consecutive steps of each trainer's own loop: sampling,
reward, advantages, the loss forward/backward and the optimiser step. Neither side runs an
extra forward for the old log-probs here: TRL uses the detached training log-probs when
``num_iterations=1``; ours takes the sampler's own (``policy.recompute_logp=auto`` skips the
recompute when the sampler is the trained fp32 model). Figures are seconds
per step, the median over the timed steps after ``--warmup`` untimed ones; ``ratio`` is
TRL's over ours (higher is better for us).
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Dict, List

from workbench.registry import BENCHMARKS

EXPERIMENT = "arithmetic_grpo_tiny"


def run_config(model_dir: str, prompts: int, group_size: int, max_new_tokens: int, steps: int, seed: int):
    """Our ``arithmetic_grpo_tiny`` run on the saved model, sized for ``steps`` iterations."""
    from workbench.config import compose, validate

    return validate(compose([
        f"experiment={EXPERIMENT}", f"seed={seed}", f"total_steps={steps * prompts * group_size}",
        f"++policy.model={model_dir}", "policy.model_config=null", "policy.tokenizer=null", "policy.dtype=float32",
        f"policy.max_new_tokens={max_new_tokens}", "policy.temperature=1.0", "++policy.top_p=1.0", "++policy.top_k=0",
        f"env.prompts_per_iteration={prompts}", f"env.group_size={group_size}",
        "eval_episodes=0", "eval_every=0", "checkpoint_every=0", "progress=false", "device=cpu", "precision=fp32",
        "threads=1",
    ]))


def save_tiny_model(out_dir: Path, seed: int) -> None:
    """The tiny Qwen2 of ``configs/policy/tiny_qwen2.yaml`` with random weights and the char tokenizer."""
    import torch
    from omegaconf import OmegaConf
    from transformers import AutoConfig, AutoModelForCausalLM

    from workbench.config import config_dir
    from workbench.tokenizer_utils import build_char_tokenizer

    tok = build_char_tokenizer()
    options = dict(OmegaConf.to_container(OmegaConf.load(config_dir() / "policy" / "tiny_qwen2.yaml").model_config))
    model_type = options.pop("model_type")
    options.update(vocab_size=len(tok), pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=None)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **options), dtype=torch.float32)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.bos_token_id = None
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)


def training_items(model_dir: str, prompts: int, group_size: int, max_new_tokens: int, steps: int, seed: int) -> List[Dict]:
    """The items our trainer's env draws in its first ``steps`` iterations, in order (same seed,
    same held-out exclusion), so TRL gets exactly the same prompts."""
    from workbench.registry import ENVS

    run = run_config(model_dir, prompts, group_size, max_new_tokens, steps, seed)
    env = ENVS.get(run.env.name)(run.env, seed=run.seed)
    return [env._train_item() for _ in range(steps * prompts)]


def ours_times(model_dir: str, prompts: int, group_size: int, max_new_tokens: int, steps: int, seed: int) -> Dict:
    """Seconds of each iteration of ``Trainer.train`` (collect, score, advantages, update)."""
    from workbench.runlog import RunLogger
    from workbench.trainer import Trainer

    run = run_config(model_dir, prompts, group_size, max_new_tokens, steps, seed)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(run, tmp)
        logger = RunLogger(trainer.run_dir, run.total_steps, progress=False, tensorboard=False, display=trainer.env.display())
        stamps, lengths, collect = [], [], []

        def log(step, metrics):  # time the loop, not the console
            stamps.append(time.perf_counter())
            lengths.append(metrics["response/length_mean"])
            collect.append(metrics["perf/collect_s"])

        logger.log = log
        trainer.save_checkpoint = lambda: None
        stamps.append(time.perf_counter())
        trainer.train(logger, plot=False)
    return {"step_s": [b - a for a, b in zip(stamps, stamps[1:])], "generate_s": collect, "completion_length": lengths,
            "optimizer": type(trainer.optimizer).__name__}


def trl_times(model_dir: str, items: List[Dict], prompts: int, group_size: int, max_new_tokens: int, steps: int,
              seed: int, algo) -> Dict:
    """Seconds of each step of TRL's ``GRPOTrainer.train`` (between consecutive ``on_step_end``)."""
    import torch
    from datasets import Dataset
    from transformers import PrinterCallback, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from workbench.rewards import RewardPipeline

    pipeline = RewardPipeline([{"name": "math_accuracy", "weight": 1.0}])

    def math_accuracy(prompts, completions, answer, **kwargs):
        return pipeline(completions, answer=list(answer)).scores

    class Stamps(TrainerCallback):
        def __init__(self):
            self.stamps: List[float] = []
            self.lengths: List[float] = []
            self.trainer = None

        def on_train_begin(self, args, state, control, **kwargs):
            self.stamps.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kwargs):
            self.stamps.append(time.perf_counter())
            self.lengths.append(self.trainer._metrics["train"]["completions/mean_length"][-1])

    dataset = Dataset.from_list([{"prompt": x["question"], "answer": x["answer"]} for x in items])
    with tempfile.TemporaryDirectory() as tmp:
        args = GRPOConfig(
            output_dir=tmp, seed=seed, use_cpu=True, bf16=False, fp16=False, gradient_checkpointing=False,
            max_steps=steps, per_device_train_batch_size=prompts * group_size, gradient_accumulation_steps=1,
            steps_per_generation=1, num_generations=group_size, num_iterations=1, max_completion_length=max_new_tokens,
            temperature=1.0, top_p=1.0, top_k=0, beta=0.0, epsilon=algo.epsilon, loss_type="dapo",
            scale_rewards=algo.scale_rewards, mask_truncated_completions=False, importance_sampling_level="token",
            learning_rate=algo.lr, lr_scheduler_type="constant", warmup_steps=0, optim="adamw_torch", weight_decay=0.0,
            adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=algo.adam_eps, max_grad_norm=algo.max_grad_norm,
            use_vllm=False, shuffle_dataset=False, remove_unused_columns=False, dataloader_num_workers=0,
            logging_strategy="no", save_strategy="no", eval_strategy="no", report_to="none", log_completions=False,
            disable_tqdm=True, model_init_kwargs={"dtype": torch.float32},
        )
        stamps = Stamps()
        trainer = GRPOTrainer(model=model_dir, reward_funcs=[math_accuracy], args=args, train_dataset=dataset,
                              callbacks=[stamps])
        trainer.remove_callback(PrinterCallback)  # no end-of-training summary on stdout
        stamps.trainer = trainer
        # time its generate-and-score phase (sampling, reward, advantages) without changing it
        generate_s: List[float] = []
        generate_and_score = trainer._generate_and_score_completions

        def timed(inputs):
            t0 = time.perf_counter()
            out = generate_and_score(inputs)
            generate_s.append(time.perf_counter() - t0)
            return out

        trainer._generate_and_score_completions = timed
        torch.set_num_threads(1)
        trainer.train()
        inner = getattr(trainer.optimizer, "optimizer", trainer.optimizer)  # accelerate wraps it
    return {"step_s": [b - a for a, b in zip(stamps.stamps, stamps.stamps[1:])], "generate_s": generate_s,
            "completion_length": stamps.lengths, "optimizer": type(inner).__name__}


def _side(side: str, model_dir: str, items: List[Dict], shape: tuple, steps: int, seed: int) -> Dict:
    """One side's run, in a fresh interpreter (see ``_run_side``)."""
    import torch

    torch.set_num_threads(1)
    with _quiet():
        if side == "ours":
            return ours_times(model_dir, *shape, steps, seed)
        return trl_times(model_dir, items, *shape, steps, seed, run_config(model_dir, *shape, steps, seed).algo)


def _run_side(side: str, model_dir: str, items: List[Dict], shape: tuple, steps: int, seed: int) -> Dict:
    """Each run gets its own spawned process: in one process the second side would find warm
    caches left by the first (math-verify parses of the same gold answers, lazy imports)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_side, side, model_dir, items, shape, steps, seed).result()


def _versions() -> Dict[str, str]:
    import importlib.metadata as md

    return {name: md.version(name) for name in ("torch", "transformers", "trl", "accelerate")}


def _quiet():
    """Silence transformers' progress bars and a deprecation warning for the length of the run."""
    import contextlib
    import warnings

    from transformers.utils import logging as hf_logging

    @contextlib.contextmanager
    def ctx():
        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning, message=".*(gradient|activation)_checkpointing.*")
            try:
                yield
            finally:
                if bars:
                    hf_logging.enable_progress_bar()

    return ctx()


@BENCHMARKS.register("grpo-text")
def bench_grpo_text(argv: List[str]) -> Dict:
    parser = argparse.ArgumentParser(prog="workbench bench grpo-text")
    parser.add_argument("--steps", type=int, default=20, help="timed optimiser steps per side and round")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before them")
    parser.add_argument("--rounds", type=int, default=3, help="fresh trainer pairs, alternating which side goes first")
    parser.add_argument("--prompts", type=int, default=16, help="prompts per step")
    parser.add_argument("--group-size", type=int, default=8, help="completions per prompt (TRL num_generations)")
    parser.add_argument("--max-new-tokens", type=int, default=8, help="max completion length")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    if min(args.steps, args.rounds, args.prompts, args.max_new_tokens) < 1 or args.warmup < 0 or args.group_size < 2:
        parser.error("--steps, --rounds, --prompts, --max-new-tokens >= 1; --warmup >= 0; --group-size >= 2")
    try:
        import trl  # noqa: F401
    except ImportError:
        raise SystemExit("workbench bench grpo-text needs the peer: pip install trl")
    import torch

    torch.set_num_threads(1)
    total = args.warmup + args.steps
    shape = (args.prompts, args.group_size, args.max_new_tokens)
    ours: Dict[str, List[float]] = {"step_s": [], "generate_s": [], "completion_length": []}
    peer: Dict[str, List[float]] = {"step_s": [], "generate_s": [], "completion_length": []}
    round_ratios: List[float] = []  # each round's pair ran back to back: less exposed to drifting load
    with tempfile.TemporaryDirectory() as tmp, _quiet():
        save_tiny_model(Path(tmp), args.seed)
        items = training_items(tmp, *shape, total, args.seed)
        for r in range(args.rounds):
            for side in (("ours", "trl") if r % 2 == 0 else ("trl", "ours")):
                got = _run_side(side, tmp, items, shape, total, args.seed)
                if side == "ours":
                    ours_optimizer, into = got["optimizer"], ours
                else:
                    trl_optimizer, into = got["optimizer"], peer
                if len(got["step_s"]) != total:
                    raise RuntimeError(f"{side}: expected {total} steps, timed {len(got['step_s'])}")
                for key in into:
                    into[key].extend(got[key][args.warmup:])
            round_ratios.append(statistics.median(peer["step_s"][-args.steps:]) / statistics.median(ours["step_s"][-args.steps:]))
    med = statistics.median
    ours_s, trl_s = med(ours["step_s"]), med(peer["step_s"])
    figures: Dict = {
        "bench": "grpo-text", "model": "tiny_qwen2 (random init, char tokenizer)", "task": "arithmetic 2-digit +-",
        "prompts": args.prompts, "group_size": args.group_size, "max_new_tokens": args.max_new_tokens,
        "steps": args.steps, "warmup": args.warmup, "rounds": args.rounds, "seed": args.seed, "torch_threads": 1,
        "ours_s_per_step": ours_s, "trl_s_per_step": trl_s, "ratio": trl_s / ours_s,
        "round_ratios": [round(x, 3) for x in round_ratios],
        "ours_s_per_step_mean": statistics.fmean(ours["step_s"]), "trl_s_per_step_mean": statistics.fmean(peer["step_s"]),
        # the generate-and-score phase of a step (sampling, reward, advantages; ours also recomputes log-probs)
        "ours_generate_s": med(ours["generate_s"]), "trl_generate_s": med(peer["generate_s"]),
        "ours_completion_length": statistics.fmean(ours["completion_length"]),
        "trl_completion_length": statistics.fmean(peer["completion_length"]),
        "ours_optimizer": ours_optimizer, "trl_optimizer": trl_optimizer,
        "versions": _versions(),
    }
    print(f"grpo-text {args.prompts} prompts x {args.group_size} samples, <= {args.max_new_tokens} new tokens: "
          f"ours {ours_s:.4f} s/step  TRL {trl_s:.4f} s/step  ratio {trl_s / ours_s:4.2f}x  "
          f"(median of {args.rounds} x {args.steps} steps; generate+score ours {figures['ours_generate_s']:.4f} s, "
          f"TRL {figures['trl_generate_s']:.4f} s; mean completion length ours {figures['ours_completion_length']:.2f}, "
          f"TRL {figures['trl_completion_length']:.2f})", flush=True)
    return figures
