"""Run logging: rich progress, TensorBoard scalars, metrics.jsonl, and a learning-curve PNG.

What the progress line, the evaluation lines and the learning-curve panels show is the env's
declared headline (``Environment.display()``), the same for every modality.
"""
from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Tuple

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from workbench.environment import EnvDisplay

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


def headline_text(metrics: Mapping[str, float], display: EnvDisplay) -> str:
    """The declared evaluation figures found in ``metrics``: 'return 12.3 ± 1.0, success 50%'."""
    parts = []
    for h in display.headline:
        if h.key in metrics:
            spread = f" ± {metrics[h.spread]:{h.fmt}}" if h.spread is not None and h.spread in metrics else ""
            parts.append(f"{h.label} {metrics[h.key]:{h.fmt}}{spread}")
    return ", ".join(parts)


def eval_summary(metrics: Mapping[str, float], display: EnvDisplay) -> str:
    """One evaluation in a line: its headline figures and what they were measured over."""
    over = f" over {int(metrics['eval/episodes'])} {display.eval_unit}" if "eval/episodes" in metrics else ""
    return headline_text(metrics, display) + over


class RunLogger:
    def __init__(self, run_dir: Path, total_steps: int, start_step: int = 0, progress: bool = True, tensorboard: bool = True,
                 display: Optional[EnvDisplay] = None) -> None:
        self.run_dir = Path(run_dir)
        self.display = display or EnvDisplay(name=self.run_dir.name)
        self.console = Console(stderr=True, soft_wrap=True)  # a log line stays one line in a file or a narrow terminal
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
        self.last_train: Dict[str, float] = {}  # headline label -> its latest training value
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
        for h in self.display.headline:
            if h.train_key is not None and h.train_key in clean:
                self.last_train[h.label] = clean[h.train_key]
        if "perf/steps_per_s" in clean:
            self.last_speed = clean["perf/steps_per_s"]
        info = f"{self.last_speed:,.0f} steps/s" if self.last_speed else ""
        info += "".join(f"  {h.label} {self.last_train[h.label]:{h.fmt}}"
                        for h in self.display.headline if h.label in self.last_train)
        evaluated = headline_text(clean, self.display)
        if self.progress is not None:
            self.progress.update(self.task, completed=step, info=info)
        elif time.monotonic() - self.last_print > 5 or evaluated:
            self.last_print = time.monotonic()
            extra = f"  eval {evaluated}" if evaluated else ""
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


@dataclass(frozen=True)
class Series:
    """One line of a panel: ``key`` of metrics.jsonl against steps. An evaluation line gets
    markers and, when ``spread`` names its standard deviation, a ±1 std band."""

    key: str
    label: str
    evaluation: bool = False
    spread: Optional[str] = None


@dataclass(frozen=True)
class Panel:
    """One subplot of learning_curve.png."""

    title: str
    series: Tuple[Series, ...]


def curve_panels(rows: List[dict], display: EnvDisplay) -> List[Panel]:
    """A panel per declared headline figure that the run logged, then losses, update and entropy."""
    logged = {k for r in rows for k in r}
    after_sft = " (step 0 = after SFT)" if rows and "sft/step" in rows[0] else ""
    evaluated = (f"eval ({display.evaluation})" if display.evaluation else "eval") + after_sft
    panels = []
    for h in display.headline:
        if h.key in logged or h.train_key in logged:
            train = (Series(h.train_key, "train"),) if h.train_key is not None else ()
            panels.append(Panel(h.label if h.higher_is_better else f"{h.label} (lower is better)",
                                train + (Series(h.key, evaluated, evaluation=True, spread=h.spread),)))
    return panels + [
        Panel("losses", (Series("loss/policy", "policy"), Series("loss/value", "value"))),
        Panel("update", (Series("policy/approx_kl", "approx KL"), Series("policy/clip_frac", "clip fraction"))),
        Panel("entropy", (Series("policy/entropy", "entropy per step"),)),
    ]


def plot_learning_curve(run_dir: Path, display: EnvDisplay, title: str = "") -> Path:
    """Plot the env's declared headline figures (training samples and evaluations) and the
    update's losses against steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(run_dir)
    panels = curve_panels(rows, display)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 4))
    for ax, panel in zip(axes, panels):
        for line in panel.series:
            pts = [(r["step"], r[line.key], r.get(line.spread, 0.0)) for r in rows if line.key in r]
            if not pts:
                continue
            xs, ys, stds = zip(*pts)
            (drawn,) = ax.plot(xs, ys, "o-" if line.evaluation else "-", label=line.label, markersize=3)
            if line.spread is not None and any(line.spread in r for r in rows):
                ax.fill_between(xs, [m - s for m, s in zip(ys, stds)], [m + s for m, s in zip(ys, stds)],
                                alpha=0.2, color=drawn.get_color())
        ax.set_title(panel.title)
        ax.set_xlabel(display.step_unit)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    out = Path(run_dir) / "learning_curve.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
