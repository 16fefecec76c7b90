"""Figures of ``workbench bench rapl-franka``: Spearman against the preference budget, and
frame strips of the held-out episodes the simulated human likes most and least."""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import numpy as np

__all__ = ["plot_spearman", "plot_frames"]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_spearman(per_budget: List[Dict[str, Any]], untrained: Optional[float], path: str,
                  pretrained: bool = False) -> None:
    """Mean Spearman (with error bars of one std over seeds) of RAPL and RLHF against the
    preference budget (triplets); a dashed line for RAPL with the unaligned encoder.
    ``pretrained``: both started from the frozen pre-trained backbone (said in the title)."""
    plt = _plt()
    budgets = [r["budget"] for r in per_budget]
    fig, ax = plt.subplots(figsize=(5, 3.6), dpi=120)
    for key, label, colour in (("spearman_rapl", "RAPL (aligned encoder + OT)", "tab:blue"),
                               ("spearman_rlhf", "RLHF (Bradley-Terry reward net)", "tab:orange")):
        mean = [np.nan if r[key] is None else r[key] for r in per_budget]
        std = [0.0 if r[f"{key}_std"] is None else r[f"{key}_std"] for r in per_budget]
        ax.errorbar(budgets, mean, yerr=std, marker="o", capsize=4, label=label, color=colour)
    if untrained is not None:
        label = "RAPL, pre-trained backbone, unaligned head" if pretrained else "RAPL, unaligned encoder"
        ax.axhline(untrained, ls="--", color="tab:gray", lw=1, label=label)
    ax.axhline(0.0, color="black", lw=0.5)
    ax.set_xscale("log")
    ax.xaxis.set_minor_locator(plt.NullLocator())
    ax.set_xticks(budgets)
    ax.set_xticklabels([str(b) for b in budgets])
    ax.set_xlabel("preference budget (triplets)")
    ax.set_ylabel("Spearman with the oracle (held-out)")
    ax.set_ylim(-1, 1)
    ax.set_title("FrankaPush with a forbidden zone" + ("\n(frozen pre-trained backbone, heads trained)" if pretrained else ""),
                 fontsize=9 if pretrained else None)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_frames(episodes: Sequence[Any], scores: Sequence[float], path: str, frames: int = 7) -> None:
    """A strip of ``frames`` evenly spaced frames of three held-out episodes: the oracle's
    favourite, a zone-crossing one (the best scored among those that enter the zone: a push
    the oracle dislikes for the zone alone) and the oracle's least favourite."""
    plt = _plt()
    order = np.argsort(scores)[::-1]
    crossing = [i for i in order if any(info["in_forbidden_zone"] for info in episodes[i].infos)]
    picks = [("preferred", order[0])]
    if crossing:
        picks.append(("crosses the zone", crossing[0]))
    picks.append(("least preferred", order[-1]))
    fig, axes = plt.subplots(len(picks), frames, figsize=(1.3 * frames, 1.45 * len(picks)), dpi=110, squeeze=False)
    for row, (label, i) in enumerate(picks):
        video = episodes[i].video
        idx = np.linspace(0, len(video) - 1, frames).round().astype(int)
        for col, k in enumerate(idx):
            ax = axes[row, col]
            ax.imshow(video[k], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if col == 0:
                ax.set_ylabel(f"{label}\n{episodes[i].behaviour}\n{scores[i]:.1f}", fontsize=6)
    fig.suptitle("held-out episodes: frames over time (left to right); oracle score at left", fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
