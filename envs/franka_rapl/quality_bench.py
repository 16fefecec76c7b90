"""``workbench bench rapl-franka``: RAPL vs the RLHF baseline as visual rewards for Franka Push.

The reward-quality experiment of RAPL (Tian et al., arXiv 2412.04835, Table 1: Spearman 0.59
for RAPL vs 0.38 for RLHF on a Franka task) on ``workbench/FrankaPush-v0`` with its forbidden
zone on. A simulated human (:func:`~envs.franka_rapl.oracle.oracle_score`: push the
cube to the goal, keep it out of the red zone) ranks triplets of scripted robot videos. For each
preference budget (triplets) and seed, both methods get the same triplets:

- RAPL aligns a :class:`~workbench.rewards.rapl.FrameEncoder` on them (Bradley-Terry over OT
  similarities, ``train_rapl_reward``); its reward is OT feature matching against the ``--demos``
  best videos of the training pool (the paper's expert demonstrations; RLHF never sees them);
- RLHF trains the same encoder architecture (same initial weights) plus a linear per-frame
  head on the three pairs each triplet implies (``train_rlhf_reward``), i.e. the same answers.

Both keep the weights of their best epoch on a validation split of the budget (the paper's 80/20)
and train for the same epochs (at least ``--min-updates`` optimiser steps, so small budgets are
not starved). The figure of merit is the Spearman correlation, on a held-out pool of episodes,
between each learned reward's episode score and the oracle's. The training and held-out pools
are made once (``--pool-seed``; ``--layouts N`` makes both share N fixed task layouts instead of
a new one per episode); ``--seeds`` varies the triplets drawn, the initial weights and the batch
order. A method wins when its paired mean advantage exceeds two standard errors (else "tie").

``--pretrain-epochs N`` stands in for the paper's pre-trained encoder (a frozen ImageNet
ResNet-18 under a trained head): before any preference is asked, the backbone is trained for N
epochs on a third, unlabeled pool (``--pretrain-episodes``, pool seed ``--pool-seed + 2``, never
the held-out one) to regress simulator scene quantities from single frames
(:mod:`~envs.franka_rapl.pretrain`). Both methods then start from that backbone, frozen
(``--trainable-stages`` defaults to 0), and train only their heads on the same triplets.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import tempfile
import time
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from envs.franka_rapl import oracle as oracles
from envs.franka_rapl import pool as pools
from envs.franka_rapl import pretrain as pre
from envs.franka_rapl.plots import plot_frames, plot_spearman
from workbench.registry import BENCHMARKS


def _int_list(text: str) -> List[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma list of integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="workbench bench rapl-franka", description=__doc__.splitlines()[0])
    p.add_argument("--budgets", type=_int_list, default=[20, 50, 100], help="preference budgets in triplets (comma list)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per budget (0..N-1)")
    p.add_argument("--train-episodes", type=int, default=200, help="episodes in the pool the triplets are drawn from")
    p.add_argument("--test-episodes", type=int, default=100, help="held-out episodes the Spearman is measured on")
    p.add_argument("--steps", type=int, default=100, help="env steps per episode (25 Hz)")
    p.add_argument("--frame-every", type=int, default=5, help="keep a frame every N steps (100 steps -> 21 frames)")
    p.add_argument("--size", type=int, default=64, help="frame size (px)")
    p.add_argument("--camera", default="side", choices=("front", "side", "top"))
    p.add_argument("--pool-seed", type=int, default=0)
    p.add_argument("--layouts", type=int, default=0,
                   help="distinct task layouts shared by both pools (0: every episode its own)")
    p.add_argument("--zone-lambda", type=float, default=None, help="oracle cost per step in the zone (metre-steps)")
    p.add_argument("--equal-tol", type=float, default=0.0, help="oracle: triplets within this return spread are 'equal'")
    p.add_argument("--epochs", type=int, default=15, help="training epochs, both methods (at least)")
    p.add_argument("--min-updates", type=int, default=60,
                   help="more epochs for small budgets, so every budget gets at least this many optimiser steps")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=10, help="triplets per step (RLHF: 3x as many pairs)")
    p.add_argument("--val-frac", type=float, default=0.2, help="share of each budget held out to pick the best epoch")
    p.add_argument("--demos", type=int, default=6, help="RAPL's preferred demonstrations (best of the training pool)")
    p.add_argument("--reg", type=float, default=None, help="Sinkhorn entropic weight (default: the library's)")
    p.add_argument("--temperature", type=float, default=1.0, help="RAPL Bradley-Terry temperature on OT similarities")
    p.add_argument("--backbone", default="cnn", help="'cnn' (tiny, random init) or a timm model name")
    p.add_argument("--weights", default=None, help="local backbone weights file for a timm backbone")
    p.add_argument("--trainable-stages", type=int, default=None,
                   help="train only the last N backbone stages (0: head only; default: all, or 0 with --pretrain-epochs)")
    p.add_argument("--embed-dim", type=int, default=32)
    p.add_argument("--image-size", type=int, default=None, help="encoder input size (default: 64 for cnn, timm's otherwise)")
    p.add_argument("--pretrain-epochs", type=int, default=0,
                   help="pre-train the backbone this many epochs to regress scene quantities (0: off)")
    p.add_argument("--pretrain-episodes", type=int, default=300,
                   help="episodes of the separate pre-training pool (pool seed --pool-seed + 2)")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--out", default=None, help="folder for results.json and the plots (default: a new temp folder)")
    args = p.parse_args(list(argv))
    checks = [(args.seeds >= 1, "--seeds must be >= 1"), (args.train_episodes >= 3, "--train-episodes must be >= 3"),
              (args.test_episodes >= 3, "--test-episodes must be >= 3"), (args.layouts >= 0, "--layouts must be >= 0"),
              (args.epochs >= 0 and args.min_updates >= 0, "--epochs and --min-updates must be >= 0"),
              (0 <= args.val_frac < 1, "--val-frac must be in [0, 1)"), (args.demos >= 1, "--demos must be >= 1"),
              (args.demos <= args.train_episodes, "--demos must not exceed --train-episodes"),
              (args.batch_size >= 1 and args.threads >= 1, "--batch-size and --threads must be >= 1"),
              (args.weights is None or args.backbone != "cnn", "--weights needs a timm --backbone, not 'cnn'"),
              (args.pretrain_epochs >= 0, "--pretrain-epochs must be >= 0"),
              (args.pretrain_episodes >= 3, "--pretrain-episodes must be >= 3")]
    for ok, msg in checks:
        if not ok:
            p.error(msg)
    return args


def _encoder(args: argparse.Namespace, seed: int, backbone: Optional[Dict[str, Any]] = None):
    """A fresh FrameEncoder; the same ``seed`` gives RAPL and RLHF identical initial weights.
    ``backbone``: a state dict (the pre-trained backbone) loaded over the initial backbone."""
    import torch
    from workbench.rewards.rapl import FrameEncoder

    torch.manual_seed(seed)
    enc = FrameEncoder(args.backbone, embed_dim=args.embed_dim, weights=args.weights,
                       trainable_stages=args.trainable_stages, image_size=args.image_size)
    if backbone is not None:
        enc.backbone.load_state_dict(backbone)  # requires_grad (the freezing) is kept
    return enc


def run_one(args, budget: int, seed: int, train, test, oracle, demos, reg: float, out: Optional[str] = None,
            backbone: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Both methods at one (budget, seed): Spearman on ``test``, final training accuracy, seconds.
    With ``out`` the two trained rewards are saved there (``rapl_b<budget>_s<seed>.safetensors``,
    ``rlhf_b<budget>_s<seed>.safetensors``) for ``env.video_reward`` (``workbench bench rapl-align``).
    ``backbone``: the pre-trained backbone's state dict both encoders start from."""
    from workbench.rewards.rapl import (epochs_for_updates, sample_triplets, spearman_with_oracle, split_triplets,
                                        train_rapl_reward, train_rlhf_reward)

    # the same seed draws the same first triplets at every budget, so budgets are nested
    trip_train, trip_val = split_triplets(sample_triplets(train, oracle, budget, seed=seed), args.val_frac)
    epochs = epochs_for_updates(len(trip_train), args.batch_size, args.epochs, args.min_updates)
    row: Dict[str, Any] = {"budget": budget, "seed": seed, "train_triplets": len(trip_train),
                           "val_triplets": len(trip_val or []), "epochs": epochs}
    fit = dict(val_triplets=trip_val, epochs=epochs, batch_size=args.batch_size, lr=args.lr, seed=seed)
    t0 = time.perf_counter()
    rapl, curve = train_rapl_reward(_encoder(args, seed, backbone), trip_train, demos, reg=reg,
                                    temperature=args.temperature, **fit)
    t1 = time.perf_counter()
    row["spearman_rapl"] = spearman_with_oracle(rapl, test, oracle)
    t2 = time.perf_counter()
    model, rcurve = train_rlhf_reward(_encoder(args, seed, backbone), trip_train, **fit)
    t3 = time.perf_counter()
    row["spearman_rlhf"] = spearman_with_oracle(model, test, oracle)
    t4 = time.perf_counter()
    if out is not None:
        rapl.save(os.path.join(out, f"rapl_b{budget}_s{seed}.safetensors"))
        model.save(os.path.join(out, f"rlhf_b{budget}_s{seed}.safetensors"))
    row.update(rapl_train_accuracy=curve[-1]["accuracy"], rlhf_train_accuracy=rcurve[-1]["accuracy"],
               rapl_train_s=t1 - t0, rapl_eval_s=t2 - t1, rlhf_train_s=t3 - t2, rlhf_eval_s=t4 - t3)
    if trip_val:
        row.update(rapl_best_val_loss=min(r["val_loss"] for r in curve), rlhf_best_val_loss=min(r["val_loss"] for r in rcurve))
    return row


def _mean_std(values: Sequence[float]):
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return None, None
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def winner(runs: List[Dict[str, Any]]) -> Optional[str]:
    """"rapl" or "rlhf" when the mean paired difference of their Spearmans (same budget, seed,
    triplets) exceeds two standard errors, else "tie"; with one run, whichever is higher."""
    diffs = [r["spearman_rapl"] - r["spearman_rlhf"] for r in runs]
    diffs = [d for d in diffs if math.isfinite(d)]
    if not diffs:
        return None
    mean = statistics.fmean(diffs)
    se = statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else 0.0
    return "tie" if abs(mean) <= 2 * se or mean == 0 else ("rapl" if mean > 0 else "rlhf")


def summarise(runs: List[Dict[str, Any]], budgets: Sequence[int]) -> List[Dict[str, Any]]:
    """Per budget: mean and std over seeds of both Spearmans, their ratio (RAPL / RLHF, when
    RLHF's is positive) and the winner (see :func:`winner`)."""
    out = []
    for b in budgets:
        rows = [r for r in runs if r["budget"] == b]
        ra, ra_sd = _mean_std([r["spearman_rapl"] for r in rows])
        rl, rl_sd = _mean_std([r["spearman_rlhf"] for r in rows])
        ratio = ra / rl if ra is not None and rl is not None and rl > 0 else None
        out.append({"budget": b, "seeds": len(rows), "spearman_rapl": ra, "spearman_rapl_std": ra_sd,
                    "spearman_rlhf": rl, "spearman_rlhf_std": rl_sd, "ratio": ratio, "winner": winner(rows)})
    return out


def _clean(x: Any) -> Any:
    """JSON-safe copy: NaN/inf -> None, numpy scalars -> Python, floats rounded to 4 places."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return round(float(x), 4) if math.isfinite(float(x)) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


@BENCHMARKS.register("rapl-franka")
def bench_rapl_franka(argv: List[str]) -> Dict[str, Any]:
    """Run the experiment (options: :func:`parse_args`); write ``results.json`` (figures plus
    every run and the arguments), ``spearman_vs_budget.png`` and ``frames_preferred_vs_not.png``
    to ``--out``. Returns the figures: ``spearman_rapl`` / ``spearman_rlhf`` (budget -> mean over
    seeds), ``per_budget`` (means, stds, ratio, winner), the overall ``winner`` and ``ratio``
    (mean RAPL / mean RLHF Spearman), references (``spearman_rapl_untrained``: OT with the
    unaligned encoder; ``spearman_distance_only``: the oracle without its zone term), pool
    facts with steps/s and rendered frames/s, seconds per stage, and ``pretrain`` (None, or
    with ``--pretrain-epochs`` the pre-training fit per quantity and where the backbone is saved:
    ``pretrained_backbone.safetensors``)."""
    args = parse_args(argv)
    if args.pretrain_epochs and args.trainable_stages is None:
        args.trainable_stages = 0  # the paper's setting: a frozen pre-trained backbone
    import torch
    from workbench.rewards.rapl import DEFAULT_REG, Rollout, spearman_with_oracle

    torch.set_num_threads(args.threads)
    out = args.out or tempfile.mkdtemp(prefix="rapl-franka-")
    os.makedirs(out, exist_ok=True)
    zone_lambda = oracles.ZONE_LAMBDA if args.zone_lambda is None else args.zone_lambda
    reg = DEFAULT_REG if args.reg is None else args.reg
    oracle = oracles.make_oracle(zone_lambda, args.equal_tol)
    timings: Dict[str, float] = {}

    t = time.perf_counter()
    env = pools.make_env(args.size, args.camera)
    cfg = dict(steps=args.steps, frame_every=args.frame_every, size=args.size, camera=args.camera, layouts=args.layouts)
    train_pool = pools.generate_pool(pools.PoolConfig(args.train_episodes, seed=args.pool_seed, **cfg), env)
    test_pool = pools.generate_pool(pools.PoolConfig(args.test_episodes, seed=args.pool_seed + 1, **cfg), env)
    timings["pool_s"] = time.perf_counter() - t
    gen_s = train_pool.seconds + test_pool.seconds
    steps, frames = train_pool.steps + test_pool.steps, train_pool.frames + test_pool.frames
    print(f"rapl-franka pools: {args.train_episodes} + {args.test_episodes} episodes, {steps} steps and {frames} "
          f"frames in {gen_s:.1f} s ({steps / gen_s:.0f} steps/s, {frames / gen_s:.0f} rendered frames/s)", flush=True)
    backbone, pretrain = None, None
    if args.pretrain_epochs:
        t = time.perf_counter()
        pre_pool = pools.generate_pool(pools.PoolConfig(args.pretrain_episodes, seed=args.pool_seed + 2, **cfg), env)
        timings["pretrain_pool_s"] = time.perf_counter() - t
        backbone, pretrain = _pretrain(args, pre_pool, out)
        timings["pretrain_s"] = pretrain["seconds"]
        del pre_pool
    env.close()

    train = [Rollout(e.video, e.infos) for e in train_pool.episodes]
    test = [Rollout(e.video, e.infos) for e in test_pool.episodes]
    demo_idx = oracle.rank(train)[:args.demos]
    demos = [train[i].video for i in demo_idx]

    t = time.perf_counter()
    untrained = [spearman_with_oracle(_rapl_untrained(args, s, demos, reg, backbone), test, oracle)
                 for s in range(args.seeds)]
    timings["untrained_eval_s"] = time.perf_counter() - t
    distance_only = spearman_with_oracle(_DistanceOnly(test), test, oracle)

    runs = []
    for budget in args.budgets:
        for seed in range(args.seeds):
            row = run_one(args, budget, seed, train, test, oracle, demos, reg, out, backbone)
            runs.append(row)
            print(f"  budget {budget:4d} seed {seed}: Spearman RAPL {row['spearman_rapl']:+.3f}  RLHF "
                  f"{row['spearman_rlhf']:+.3f}  (train {row['rapl_train_s']:.0f} s / {row['rlhf_train_s']:.0f} s)", flush=True)
    for key in ("rapl_train_s", "rapl_eval_s", "rlhf_train_s", "rlhf_eval_s"):
        timings[key] = sum(r[key] for r in runs)
    per_budget = summarise(runs, args.budgets)

    all_rapl, _ = _mean_std([r["spearman_rapl"] for r in runs])
    all_rlhf, _ = _mean_std([r["spearman_rlhf"] for r in runs])
    overall = winner(runs)
    t = time.perf_counter()
    plot_spearman(per_budget, _mean_std(untrained)[0], os.path.join(out, "spearman_vs_budget.png"),
                  pretrained=pretrain is not None)
    scores = [oracle.returns(r) for r in test]
    plot_frames(test_pool.episodes, scores, os.path.join(out, "frames_preferred_vs_not.png"))
    timings["plots_s"] = time.perf_counter() - t

    behaviours = {b: _mean_std([s for s, e in zip(scores, test_pool.episodes) if e.behaviour == b])[0]
                  for b in pools.BEHAVIOURS}
    figures = {
        "bench": "rapl-franka", "budgets": args.budgets, "seeds": args.seeds,
        "spearman_rapl": {str(r["budget"]): r["spearman_rapl"] for r in per_budget},
        "spearman_rlhf": {str(r["budget"]): r["spearman_rlhf"] for r in per_budget},
        "per_budget": per_budget, "winner": overall,
        "spearman_rapl_mean": all_rapl, "spearman_rlhf_mean": all_rlhf,
        "ratio": all_rapl / all_rlhf if all_rapl is not None and all_rlhf is not None and all_rlhf > 0 else None,
        "spearman_rapl_untrained": _mean_std(untrained)[0], "spearman_distance_only": distance_only,
        "pool": {"train_episodes": args.train_episodes, "test_episodes": args.test_episodes, "steps": args.steps,
                 "frames_per_episode": len(train[0].video), "size": args.size, "camera": args.camera,
                 "layouts": args.layouts, "zone_lambda": zone_lambda, "oracle_by_behaviour": behaviours,
                 "steps_per_s": steps / gen_s, "frames_per_s": frames / gen_s},
        "encoder": {"backbone": args.backbone, "weights": args.weights, "embed_dim": args.embed_dim,
                    "trainable_stages": args.trainable_stages, "epochs": args.epochs, "min_updates": args.min_updates,
                    "lr": args.lr, "reg": reg},
        "pretrain": pretrain, "timings_s": timings, "out": out,
    }
    figures = _clean(figures)
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump({**figures, "runs": _clean(runs), "untrained_per_seed": _clean(untrained),
                   "args": vars(args)}, f, indent=1)
    table = "  ".join(f"B={r['budget']}: RAPL {_pm(r['spearman_rapl'], r['spearman_rapl_std'])} vs RLHF "
                      f"{_pm(r['spearman_rlhf'], r['spearman_rlhf_std'])}" for r in figures["per_budget"])
    print(f"rapl-franka Spearman with the oracle ({args.seeds} seeds): {table}; winner {overall}; "
          f"results in {out}", flush=True)
    return figures


def _pm(mean, std) -> str:
    return "n/a" if mean is None else f"{mean:+.3f}±{std:.3f}"


def _rapl_untrained(args, seed: int, demos, reg: float, backbone: Optional[Dict[str, Any]] = None):
    """RAPL's reward with the encoder at its initial weights (what alignment starts from: with
    ``backbone``, the pre-trained backbone under an untrained head)."""
    from workbench.rewards.rapl import RAPLReward

    return RAPLReward(_encoder(args, seed, backbone), demos, reg=reg)


def _pretrain(args, pool, out: str):
    """Pre-train a backbone on ``pool`` (see :mod:`~envs.franka_rapl.pretrain`): its initial
    weights from ``torch.manual_seed(args.pool_seed)``, 10% of the episodes held out for the
    fit. Saves it to ``out/pretrained_backbone.safetensors`` and returns ``(state dict, JSON
    figures)``: the fit per quantity, the curve, sizes, seconds, the file and a digest."""
    enc = _encoder(args, args.pool_seed)
    videos = [e.video for e in pool.episodes]
    labels = [pre.frame_labels(e.infos, e.zone, len(e.video), args.frame_every) for e in pool.episodes]
    res = pre.pretrain_backbone(enc, videos, labels, epochs=args.pretrain_epochs, lr=args.lr, seed=args.pool_seed)
    path = os.path.join(out, "pretrained_backbone.safetensors")
    figures = {"episodes": args.pretrain_episodes, "epochs": args.pretrain_epochs, "pool_seed": args.pool_seed + 2,
               "quantities": list(pre.QUANTITIES), **res.summary(), "path": path, "digest": pre.state_digest(res.state)}
    pre.save_backbone(res.state, path, _clean({k: v for k, v in figures.items() if k != "curve"}))
    fit = " ".join(f"{q} {f['r2']:.2f}" for q, f in res.fit.items())
    print(f"rapl-franka pretraining: {res.frames} frames x {args.pretrain_epochs} epochs in {res.seconds:.0f} s; "
          f"held-out R^2 {fit} (mean {res.mean_r2:.2f})", flush=True)
    return res.state, figures


class _DistanceOnly:
    """Privileged reference: -sum of cube-goal distances, the oracle without its zone term.
    Its Spearman shows how much of the oracle's ranking the zone decides."""

    def __init__(self, rollouts) -> None:
        self._by_video = {id(r.video): -sum(float(i["dist_object_goal"]) for i in r.infos) for r in rollouts}

    def score(self, video) -> float:
        return self._by_video[id(video)]
