"""Run logging: rich progress, TensorBoard scalars, metrics.jsonl, and a learning-curve PNG."""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

class RunDirLock:
    """One writer per run directory: an exclusive ``flock`` on ``run_dir/.lock``, held for the
    run's life. The kernel drops a flock when its process dies, so the lock file a killed run
    leaves behind is stale and simply taken over; the pid written in it names the holder."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / ".lock"
        self.fd: Optional[int] = None

    def acquire(self) -> None:
        import fcntl
        import os

        from workbench.registry import ConfigError

        if self.fd is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise ConfigError(f"run_dir {self.path.parent} is in use by another workbench run (pid {holder}); "
                              f"wait for it to end or choose another run_dir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd

    def release(self) -> None:
        import os

        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor drops the flock; the file stays (harmless)
            self.fd = None
    # no __del__: at exit the kernel drops the flock with the process's descriptors


_HELD: Dict[Path, RunDirLock] = {}  # this process's locks: taking one twice (cli, then trainer) is a no-op


def lock_run_dir(run_dir: Path) -> None:
    """Hold ``run_dir``'s lock (ConfigError naming the holder's pid if another process has it)."""
    key = Path(run_dir).resolve()
    if key not in _HELD:
        lock = RunDirLock(Path(run_dir))
        lock.acquire()
        _HELD[key] = lock


def release_run_dir(run_dir: Path) -> None:
    lock = _HELD.pop(Path(run_dir).resolve(), None)
    if lock is not None:
        lock.release()


# what the progress line shows, first found wins: metric -> label
HEADLINE = {"episode/return": "return", "accuracy": "accuracy", "reward/per_row": "reward"}


class RunLogger:
    def __init__(self, run_dir: Path, total_steps: int, start_step: int = 0, progress: bool = True, tensorboard: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.console = Console(stderr=True)
        self.metrics_file = open(self.run_dir / "metrics.jsonl", "a", buffering=1)
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(self.run_dir / "tb"))
            except ImportError:  # tensorboard is a core dependency, but logging must not kill a run
                self.console.print("[yellow]tensorboard not importable; TensorBoard logging off[/]")
        self.interactive = progress and sys.stderr.isatty()
        self.progress: Optional[Progress] = None
        if self.interactive:
            self.progress = Progress(
                TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                TimeElapsedColumn(), TimeRemainingColumn(), console=self.console,
            )
            self.task = self.progress.add_task("train", total=total_steps, completed=start_step, info="")
            self.progress.start()
        self.last_print = 0.0
        self.last_return: Optional[tuple] = None
        self.headline_rank = len(HEADLINE)
        self.last_speed = 0.0

    def log(self, step: int, metrics: Dict[str, float]) -> None:
        clean = {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(float(v))}
        self.metrics_file.write(json.dumps({"step": step, **clean}) + "\n")
        if self.writer is not None:
            for k, v in clean.items():
                self.writer.add_scalar(k, v, step)
        if "sft/step" in clean:
            if time.monotonic() - self.last_print > 5 or self.progress is not None:
                self.last_print = time.monotonic()
                self.console.print(f"sft step {int(clean['sft/step']):>6,}  loss {clean.get('sft/loss', float('nan')):.4f}", highlight=False)
            return
        for rank, key in enumerate(HEADLINE):
            if key in clean and rank <= self.headline_rank:  # never fall back to a lesser metric
                self.headline_rank, self.last_return = rank, (HEADLINE[key], clean[key])
                break
        if "perf/steps_per_s" in clean:
            self.last_speed = clean["perf/steps_per_s"]
        info = f"{self.last_speed:,.0f} steps/s" if self.last_speed else ""
        if self.last_return is not None:
            info += f"  {self.last_return[0]} {self.last_return[1]:,.3g}"
        if self.progress is not None:
            self.progress.update(self.task, completed=step, info=info)
        elif time.monotonic() - self.last_print > 5 or "eval/return_mean" in clean:
            self.last_print = time.monotonic()
            extra = ""
            if "eval/accuracy" in clean:
                extra = f"  eval accuracy {clean['eval/accuracy']:.3f}"
            elif "eval/return_mean" in clean:
                extra = f"  eval {clean['eval/return_mean']:,.1f} ± {clean.get('eval/return_std', 0):,.1f}"
            self.console.print(f"step {step:>9,}  {info}{extra}", highlight=False)

    def message(self, text: str) -> None:
        self.console.print(text, highlight=False)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
        if self.writer is not None:
            self.writer.close()
        self.metrics_file.close()


def read_metrics(run_dir: Path) -> List[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_learning_curve(run_dir: Path, title: str = "") -> Path:
    """Plot returns (training episodes and evaluations) and losses against steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(run_dir)
    has_episodes = any("episode/return" in r for r in rows)
    has_accuracy = any("accuracy" in r for r in rows)
    returns = [("episode/return", "train episodes"), ("eval/return_mean", "eval (deterministic)")]
    panels = [
        ("return", returns if has_episodes else
         [("accuracy", "train accuracy (sampled)"), ("eval/accuracy", "eval accuracy (greedy)")] if has_accuracy else
         [("reward/per_row", "train reward"), ("eval/return_mean", "eval reward")]),
        ("losses", [("loss/policy", "policy"), ("loss/value", "value")]),
        ("update", [("policy/approx_kl", "approx KL"), ("policy/clip_frac", "clip fraction")]),
        ("entropy", [("policy/entropy", "entropy per step")]),
    ]
    if any("episode/success" in r for r in rows):  # tasks with a success test (e.g. Franka)
        panels.insert(1, ("success rate", [("episode/success", "train episodes"), ("eval/success", "eval (deterministic)")]))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 4))
    for ax, (name, series) in zip(axes, panels):
        for key, label in series:
            pts = [(r["step"], r[key]) for r in rows if key in r]
            if pts:
                xs, ys = zip(*pts)
                style = "o-" if key.startswith("eval") else "-"
                if key.startswith("eval") and "sft/step" in "".join(rows[0]):
                    label += " (step 0 = after SFT)"
                ax.plot(xs, ys, style, label=label, markersize=3)
        if name == "return" and has_episodes:
            stds = [(r["step"], r["eval/return_mean"], r.get("eval/return_std", 0.0)) for r in rows if "eval/return_mean" in r]
            if stds:
                xs, m, s = zip(*stds)
                ax.fill_between(xs, [a - b for a, b in zip(m, s)], [a + b for a, b in zip(m, s)], alpha=0.2, color="C1")
        ax.set_title(name)
        ax.set_xlabel("env steps" if has_episodes else "samples")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    out = Path(run_dir) / "learning_curve.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
