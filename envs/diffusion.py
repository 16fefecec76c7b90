"""Image generation by a diffusion policy, rewarded on the final image (DDPO / Flow-GRPO-style RL).

One iteration samples ``group_size`` images for each of ``prompts_per_iteration`` prompts. A
trajectory is one image's denoising chain: N = images, T = the policy's ``num_steps``. The
image reward (the shared reward library, e.g. ``jpeg_compressibility``, ``aesthetic_score``,
``vlm_judge``) is terminal: it sits on the last trained step of each row, so
``sum(rewards * mask)`` over a row is the image's reward whichever steps are trained;
``dones`` is 1 on the last step. ``prompt_id`` is the prompt's index in the prompt set, stable
over the run (DDPO's per-prompt statistics remember rewards by it). Groups are prompts too,
except with ``branch: true`` (B²-DiffuRL): then each group is one trunk that branches at the
first trained step, so a prompt drawn twice (``prompt_order: random``) gives two groups, each
comparing only branches of one shared chain.

Prompts: class ids for a class-conditioned UNet, or text for a text-to-image pipeline; given
as a list in YAML (``prompts``; an entry may be a mapping ``{prompt: ..., <metadata>: ...}``),
or read from ``prompt_file``: a text file with one prompt per line, a JSON/JSONL/CSV/Parquet
file or a hub dataset whose ``prompt_column`` holds the prompts. Every other column (or
metadata key) reaches the rewards as a per-sample column of that name, beside ``prompt``.

Images: the reward pipeline is called with the images as ``completions`` (for an image
generator the completion is the image). Image grids go to ``image_dir`` (by default
``<run_dir>/images``): ``train_<iteration>.png`` every ``image_every`` iterations,
``eval_<n>.png`` at every evaluation (the first is the policy before RL, the last after). The
env declares the reward and the JPEG size as its headline figures (``display``), so the run's
``learning_curve.png`` and final line show both.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

from workbench.batch import Batch
from workbench.environment import EnvDisplay, Environment, Headline
from workbench.fields import check_choices, choice, reward_specs
from workbench.policies.base import DenoisingSampler
from workbench.registry import ConfigError, ENVS
from workbench.rollout.denoising import collect_chains, terminal_rewards

def image_grid(images: torch.Tensor, cols: Optional[int] = None, pad: int = 2) -> np.ndarray:
    """[B, C, H, W] floats in [0, 1] -> one HWC uint8 grid (white padding)."""
    imgs = (images.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    B, H, W, C = imgs.shape
    cols = cols or int(math.ceil(math.sqrt(B)))
    rows = int(math.ceil(B / cols))
    grid = np.full((rows * (H + pad) + pad, cols * (W + pad) + pad, C), 255, dtype=np.uint8)
    for i, im in enumerate(imgs):
        r, c = divmod(i, cols)
        grid[pad + r * (H + pad): pad + r * (H + pad) + H, pad + c * (W + pad): pad + c * (W + pad) + W] = im
    return grid


def save_grid(path: Path, images: torch.Tensor, cols: Optional[int] = None, scale: int = 2) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(image_grid(images, cols).squeeze())
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    img.save(path)
    return path


def load_prompts(source: str, column: str = "prompt", split: str = "train") -> List[Any]:
    """Prompts from a text file (one per line; blank lines and ``#`` comments skipped), a
    JSON/JSONL/CSV/Parquet file or a hub dataset. Table rows become ``{prompt, **metadata}``."""
    path = Path(source)
    if path.suffix in ("", ".txt") and path.is_file():
        lines = [ln.strip() for ln in path.read_text().splitlines()]
        return [ln for ln in lines if ln and not ln.startswith("#")]
    from envs.datafiles import SUFFIXES, read_rows

    if path.exists():
        if path.suffix not in SUFFIXES:
            raise ConfigError(f"env.prompt_file={source!r}: unknown file type; use .txt, .json, .jsonl, .csv or .parquet")
        rows = read_rows(path, "env.prompt_file", column)  # checked line by line: one-line errors, no pyarrow traceback
    elif path.suffix in SUFFIXES or path.suffix == ".txt" or source.startswith((".", "/")):
        raise ConfigError(f"env.prompt_file not found: {source}")
    else:
        import datasets

        try:
            table = datasets.load_dataset(source, split=split)
        except Exception as e:  # offline, unknown name, bad split: one clear line
            raise ConfigError(f"cannot load prompt dataset '{source}' (split {split}): {str(e).splitlines()[0]}") from None
        rows = [(f"row {i}", row) for i, row in enumerate(table)]
    for where, row in rows:
        if row.get(column) is None:
            raise ConfigError(f"prompt set '{source}' {where} has no column '{column}' (it has {sorted(row)}); set env.prompt_column")
    return [{**{k: v for k, v in row.items() if k != column}, "prompt": row[column]} for _, row in rows]


def split_prompts(entries: Sequence[Any]) -> tuple:
    """(prompts, metadata columns) from entries that are plain prompts or ``{prompt, ...}``."""
    prompts: List[Any] = []
    keys: List[str] = []
    for i, e in enumerate(entries):
        if isinstance(e, dict):
            if "prompt" not in e:
                raise ConfigError(f"env.prompts[{i}] is a mapping without a 'prompt' key: {e!r}")
            keys += [k for k in e if k != "prompt" and k not in keys]
            prompts.append(e["prompt"])
        elif isinstance(e, (int, str)):
            prompts.append(e)
        else:
            raise ConfigError(f"env.prompts[{i}] must be a class id, a string or a mapping, got {e!r}")
    meta = {k: [e.get(k) if isinstance(e, dict) else None for e in entries] for k in keys}
    return prompts, meta


@ENVS.register("diffusion")
class DiffusionEnv(Environment):
    policy_contract = DenoisingSampler
    @dataclass
    class Config:
        name: str = "diffusion"
        prompts: List[Any] = field(default_factory=lambda: [0, 1, 2, 3])  # class ids, strings or {prompt, **metadata}
        prompt_file: Optional[str] = None  # .txt (one per line), .json/.jsonl/.csv/.parquet or a hub dataset; replaces prompts
        prompt_column: str = "prompt"  # the prompt column of a table or dataset
        prompt_split: str = "train"  # split of a hub dataset
        prompt_order: str = choice("cycle", "random")  # cycle: in order; random: DDPO draws prompts at random
        prompts_per_iteration: int = 4  # prompts per iteration
        group_size: int = 8  # images per prompt (the GRPO group)
        branch: bool = False  # B²-DiffuRL branch sampling: a group shares its chain up to the first trained step
        rewards: List[Dict[str, Any]] = reward_specs({"name": "jpeg_compressibility", "weight": 1.0})
        failure_score: float = 0.0  # reward of an image whose reward function raised
        jpeg_quality: int = 95  # for the image/jpeg_kb metric
        image_dir: Optional[str] = None  # where image grids go; null: <run_dir>/images when trained by the Trainer
        image_every: int = 10  # iterations between training-image grids (0: never)
        eval_seed: int = 12345  # fixed noise of evaluations, so they compare across a run

        def __post_init__(self) -> None:
            check_choices(self, "env")
            if not self.prompts and not self.prompt_file:
                raise ConfigError("env.prompts must list at least one prompt (or set env.prompt_file)")
            if self.prompts_per_iteration < 1 or self.group_size < 1:
                raise ConfigError("env.prompts_per_iteration and env.group_size must be >= 1")
            if self.image_every < 0:
                raise ConfigError(f"env.image_every must be >= 0, got {self.image_every}")
            if self.branch and self.group_size < 2:
                raise ConfigError("env.branch needs env.group_size >= 2 (a trunk with one branch compares nothing)")

    def attach(self, run_dir) -> None:
        if self.cfg.image_dir is None:
            self.cfg.image_dir = str(Path(run_dir) / "images")

    def __init__(self, cfg: "DiffusionEnv.Config", seed: int) -> None:
        from workbench.rewards.base import RewardPipeline

        self.cfg, self.seed = cfg, seed
        entries = load_prompts(cfg.prompt_file, cfg.prompt_column, cfg.prompt_split) if cfg.prompt_file else list(cfg.prompts)
        if not entries:
            raise ConfigError(f"env.prompt_file={cfg.prompt_file!r} holds no prompts")
        self.prompts, self.metadata = split_prompts(entries)
        self.rewards = RewardPipeline(list(cfg.rewards), failure_score=cfg.failure_score)
        self.generator = torch.Generator().manual_seed(seed)
        self.steps_per_collect = cfg.prompts_per_iteration * cfg.group_size
        self.iteration = 0  # collects so far
        self.next_prompt = 0  # index into prompts of the next iteration's first prompt
        self.evaluations = 0
        self._pending: Optional[Dict[str, Any]] = None
        self._metrics: Dict[str, float] = {}

    # ------------------------------------------------------------------ rewards
    def _score(self, images: torch.Tensor, index: List[int]):
        from workbench.rewards.image import jpeg_size_kb

        pil = [_to_pil(x) for x in images]
        columns = {"prompt": [self.prompts[i] for i in index], **{k: [v[i] for i in index] for k, v in self.metadata.items()}}
        result = self.rewards(pil, **columns)
        kb = [jpeg_size_kb(x, self.cfg.jpeg_quality) for x in pil]
        return result, kb

    # ------------------------------------------------------------------ collect
    def _iteration_prompts(self) -> List[int]:
        """Indices into the prompt set of this iteration's prompts."""
        P, K = len(self.prompts), self.cfg.prompts_per_iteration
        if self.cfg.prompt_order == "random":
            return torch.randint(P, (K,), generator=self.generator).tolist()
        chosen = [(self.next_prompt + i) % P for i in range(K)]
        self.next_prompt = (self.next_prompt + K) % P
        return chosen

    def collect(self, policy) -> Batch:
        chosen = self._iteration_prompts()
        G = self.cfg.group_size
        index = [i for i in chosen for _ in range(G)]
        trunks = torch.arange(len(chosen)).repeat_interleave(G)  # [N] slot of the row's prompt in this iteration
        groups = trunks if self.cfg.branch else torch.tensor(index)  # B²: a trunk's branches; else the prompt's samples
        images, batch = collect_chains(policy, [self.prompts[i] for i in index], group=groups, prompt_id=torch.tensor(index),
                                       generator=self.generator, iteration=self.iteration,
                                       trunks=trunks if self.cfg.branch else None)
        self.iteration += 1
        self._pending = {"images": images, "index": index}
        self._metrics = {"train/trained_steps": float(batch.mask.sum(1).mean())}
        if self.cfg.image_dir and self.cfg.image_every and (self.iteration == 1 or self.iteration % self.cfg.image_every == 0):
            save_grid(Path(self.cfg.image_dir) / f"train_{self.iteration:05d}.png", images, cols=G)
        return batch

    def assign_rewards(self, batch: Batch) -> Batch:
        if self._pending is None:
            raise RuntimeError("score() called before collect()")
        pending, self._pending = self._pending, None
        result, kb = self._score(pending["images"], pending["index"])
        self._metrics.update(result.metrics())
        self._metrics["image/jpeg_kb"] = float(np.mean(kb))
        self._metrics["image/reward_mean"] = float(np.mean(result.scores))
        return terminal_rewards(batch, torch.tensor(result.scores, dtype=batch.rewards.dtype))

    def pop_metrics(self) -> Dict[str, float]:
        metrics, self._metrics = self._metrics, {}
        return metrics

    # ------------------------------------------------------------------ evaluate
    def display(self) -> EnvDisplay:
        """The image reward and the images' JPEG size (smaller is better), train and evaluation."""
        reward = Headline("reward", "eval/return_mean", "image/reward_mean", spread="eval/return_std", fmt=".3f")
        jpeg = Headline("JPEG size (kB)", "eval/jpeg_kb", "image/jpeg_kb", higher_is_better=False, fmt=".3f")
        return EnvDisplay(name=" + ".join(self.rewards.names), headline=(reward, jpeg), evaluation="fixed noise",
                          eval_unit="images", step_unit="samples")

    @torch.no_grad()
    def evaluate(self, policy, episodes: int, video_path: Optional[str] = None, seed: Optional[int] = None) -> Dict[str, float]:
        """Reward and JPEG size of ``episodes`` images (prompts cycled) from fixed noise.

        ``video_path`` (or ``image_dir``) receives the image grid."""
        n = max(1, int(episodes))
        P = len(self.prompts)
        index = [i % P for i in range(n)]
        generator = torch.Generator().manual_seed(self.cfg.eval_seed if seed is None else seed)
        was_training = policy.training
        policy.eval()
        try:
            images, _ = policy.sample([self.prompts[i] for i in index], generator=generator, evaluation=True)
        finally:
            policy.train(was_training)
        result, kb = self._score(images, index)
        scores = np.asarray(result.scores, dtype=np.float64)
        cols = min(P, n)
        if video_path is not None:
            save_grid(Path(video_path), images, cols=cols)
        if self.cfg.image_dir:
            save_grid(Path(self.cfg.image_dir) / f"eval_{self.evaluations:03d}.png", images, cols=cols)
        self.evaluations += 1
        return {"eval/return_mean": float(scores.mean()), "eval/return_std": float(scores.std()),
                "eval/jpeg_kb": float(np.mean(kb)), "eval/episodes": float(n)}

    # ------------------------------------------------------------------ state
    def state_dict(self) -> Dict[str, Any]:
        return {"generator": self.generator.get_state(), "iteration": self.iteration,
                "next_prompt": self.next_prompt, "evaluations": self.evaluations}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        self.iteration = int(state["iteration"])
        self.next_prompt = int(state["next_prompt"])
        self.evaluations = int(state.get("evaluations", 0))  # a checkpoint's "history" (old reward_curve.png) is ignored


def _to_pil(image: torch.Tensor):
    from workbench.rewards.image import to_pil

    return to_pil(image)
