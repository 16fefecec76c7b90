"""The ``workbench`` command: train, eval, export, list, bench.

User mistakes (unknown key, bad value, missing run directory) end with one line on stderr
and exit code 2, never a traceback.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import List, Optional

from workbench.registry import ConfigError


def _err(msg: str, code: int = 2) -> int:
    print(f"workbench: error: {msg}", file=sys.stderr)
    return code


def _split_resume(overrides: List[str]) -> tuple[Optional[str], List[str]]:
    resume, rest = None, []
    for o in overrides:
        if o.startswith("resume="):
            resume = o.split("=", 1)[1] or None
        else:
            rest.append(o)
    return resume, rest


def build_run(overrides: List[str]):
    """(RunConfig, run_dir, resuming) from command-line overrides."""
    from workbench import config
    from workbench.runlog import lock_run_dir, release_run_dir

    resume, rest = _split_resume(overrides)
    if resume:
        run_dir = Path(resume)
        if not run_dir.is_dir():
            raise ConfigError(f"resume={resume}: no such run directory")
        run = config.load_saved(run_dir, rest)
        _report_changes(run_dir, config.changed_keys(config.load_saved(run_dir, []), run))
        lock_run_dir(run_dir)
        run.resume = str(run_dir)
        return run, run_dir, True
    run = config.validate(config.compose(rest))
    run_dir = Path(run.run_dir) if run.run_dir else Path("runs") / f"{run.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    lock_run_dir(run_dir)  # a second writer is refused here, before it reads or writes anything
    if (run_dir / "checkpoints").exists() and any((run_dir / "checkpoints").iterdir()):
        release_run_dir(run_dir)
        raise ConfigError(f"run_dir {run_dir} already holds checkpoints; continue it with resume={run_dir}")
    return run, run_dir, False


def _report_changes(run_dir: Path, changes: list) -> None:
    """One line naming the settings a resume changes (extending total_steps is the usual one)."""
    if changes:
        parts = [f"{k} {old} -> {new}" + (" (extends the run)" if k == "total_steps" and new > old else "")
                 for k, old, new in changes]
        print(f"resume={run_dir} changes the saved config: {', '.join(parts)}", file=sys.stderr)


def cmd_train(args) -> int:
    from workbench.runlog import eval_summary, release_run_dir
    from workbench.trainer import Trainer

    run, run_dir, resuming = build_run(args.overrides)
    try:
        trainer = Trainer(run, run_dir)
        if resuming:
            trainer.resume()
            print(f"resuming {run_dir} at step {trainer.step:,}", file=sys.stderr)
        else:
            print(f"run directory: {run_dir}", file=sys.stderr)
        final = trainer.train()
    finally:
        release_run_dir(run_dir)
    if final:
        print(f"final eval: {eval_summary(final, trainer.env.display())}", file=sys.stderr)
    if (run_dir / "rollout.mp4").exists():
        print(f"rollout video: {run_dir / 'rollout.mp4'}", file=sys.stderr)
    print(f"learning curve: {run_dir / 'learning_curve.png'}", file=sys.stderr)
    return 0


def cmd_sft(args) -> int:
    """Supervised fine-tuning only: the run directory can then start RL with init_from=RUN_DIR."""
    from workbench.runlog import RunLogger, eval_summary, plot_learning_curve, release_run_dir
    from workbench.trainer import Trainer

    run, run_dir, _ = build_run(args.overrides)
    if run.sft.steps <= 0:
        raise ConfigError("workbench sft needs sft.steps > 0")
    trainer = Trainer(run, run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    from workbench.config import to_yaml

    (run_dir / "config.yaml").write_text(to_yaml(run))
    display = trainer.env.display()
    logger = RunLogger(run_dir, run.sft.steps, progress=False, display=display)
    try:
        trainer.warm_start(logger)
        if run.eval_episodes > 0:
            final = trainer.env.evaluate(trainer.policy, run.eval_episodes)
            logger.log(0, final)
            print(f"after SFT: eval {eval_summary(final, display)}", file=sys.stderr)
    finally:
        logger.close()
        trainer.env.close()
        release_run_dir(run_dir)  # held since build_run
    plot_learning_curve(run_dir, display, title=f"{run.name} (SFT)")
    print(f"start RL from it with: workbench train ... init_from={run_dir}", file=sys.stderr)
    return 0


def cmd_eval(args) -> int:
    import json

    from workbench.runlog import eval_summary

    os.environ.setdefault("MUJOCO_GL", "egl")
    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"no such run directory: {run_dir}")
    from workbench.export import load_trained

    run, env, policy, path = load_trained(run_dir, args.checkpoint)
    display = env.display()
    video = None if args.no_video or not display.renders else str(Path(args.video) if args.video else run_dir / "eval.mp4")
    try:
        if args.k > 1 and not display.pass_at_k:
            raise ConfigError(f"--k {args.k}: env {run.env.name} does not sample k answers per item; leave --k out")
        options = {"k": args.k} if args.k > 1 else {}  # pass_at_k envs add eval/mean@k and eval/pass@j
        result = env.evaluate(policy, args.episodes, video_path=video, seed=args.seed, **options)
    finally:
        env.close()
    how = f"{display.evaluation} " if display.evaluation else ""
    sampled = "".join(f"  {k.split('/', 1)[1]} {v:.3f}" for k, v in result.items() if options and "@" in k)
    print(f"{path.name}: {how}{eval_summary(result, display)}{sampled}" + (f"; video {video}" if video else ""))
    (run_dir / "eval.json").write_text(json.dumps({"checkpoint": path.name, **result}, indent=1))
    return 0


def cmd_export(args) -> int:
    """Write a run's trained policy where its own library loads it (see workbench.export)."""
    from workbench.export import export_run

    lora = "merge" if args.merge_lora else "adapter" if args.adapter else None
    info = export_run(Path(args.run_dir), Path(args.out), args.checkpoint, lora, args.force)
    print(f"{info['checkpoint']} -> {args.out} ({info['format']}); load with: {info['load']}")
    return 0


def cmd_list(args) -> int:
    from workbench import plugins, registry
    import workbench.schedules  # noqa: F401
    import workbench.advantages  # noqa: F401
    import workbench.objectives  # noqa: F401
    import workbench.bench  # noqa: F401

    plugins.load()
    from workbench.config import config_dir

    rows = [(kind, ", ".join(reg.names()) or "(none yet)") for kind, reg in registry.ALL.items()]
    rows.append(("experiments", ", ".join(sorted(p.stem for p in (config_dir() / "experiment").glob("*.yaml")))))
    width = max(len(kind) for kind, _ in rows)
    for kind, names in rows:
        print(f"{kind:{width}s} {names}")
    return 0


def cmd_bench(args) -> int:
    from workbench.bench import run_benchmark

    as_json = args.json or "--json" in args.rest
    return run_benchmark(args.name, as_json, [a for a in args.rest if a != "--json"])


def main(argv: Optional[List[str]] = None) -> int:
    os.environ.setdefault("MUJOCO_GL", "egl")  # offscreen rendering; must be set before mujoco is imported
    parser = argparse.ArgumentParser(prog="workbench", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train; arguments are config overrides, e.g. experiment=halfcheetah_ppo algo.epsilon=0.1")
    p.add_argument("overrides", nargs="*")
    p.set_defaults(fn=cmd_train)
    p = sub.add_parser("sft", help="supervised fine-tuning on the env's demonstrations (sft.steps > 0); same overrides as train")
    p.add_argument("overrides", nargs="*")
    p.set_defaults(fn=cmd_sft)
    p = sub.add_parser("eval", help="evaluate a run directory's newest checkpoint and save a video")
    p.add_argument("run_dir")
    p.add_argument("--episodes", type=int, default=10)
    p.add_argument("--checkpoint", default=None, help="a specific checkpoint file")
    p.add_argument("--video", default=None, help="mp4 path (default RUN_DIR/eval.mp4)")
    p.add_argument("--no-video", action="store_true")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--k", type=int, default=1, help="text envs: also sample k answers per item for mean@k and pass@k (k <= 64)")
    p.set_defaults(fn=cmd_eval)
    p = sub.add_parser("export", help="write a run's trained policy as a transformers / diffusers / safetensors folder")
    p.add_argument("run_dir")
    p.add_argument("out")
    p.add_argument("--checkpoint", default=None, help="a specific checkpoint file (default: the newest)")
    lora = p.add_mutually_exclusive_group()
    lora.add_argument("--merge-lora", action="store_true", help="fold LoRA adapters into full weights")
    lora.add_argument("--adapter", action="store_true", help="write the LoRA adapter alone (peft / diffusers LoRA format)")
    p.add_argument("--force", action="store_true", help="replace OUT if it exists and is not empty")
    p.set_defaults(fn=cmd_export)
    p = sub.add_parser("list", help="registered envs, policies, algorithms, rewards, benchmarks and experiments")
    p.set_defaults(fn=cmd_list)
    p = sub.add_parser("bench", help="benchmark against a peer; --json ends with one JSON line of figures")
    p.add_argument("name")
    p.add_argument("--json", action="store_true")
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(fn=cmd_bench)
    args = parser.parse_args(argv)
    try:
        return args.fn(args)
    except ConfigError as e:
        return _err(str(e))
    except Exception as e:  # a run that had to stop (TrainingError): one line, data kept
        from workbench.trainer import TrainingError

        if isinstance(e, TrainingError):
            return _err(str(e), code=1)
        raise
    except KeyboardInterrupt:
        return _err("interrupted", 130)


if __name__ == "__main__":
    sys.exit(main())
