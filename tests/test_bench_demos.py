"""``workbench bench demos``: the headline figure of every README demo, re-measured by one command."""
import pytest

from workbench.bench.demos import (
    DEMOS, accuracy_gain_points, bench_demos, final_success_percent, jpeg_change_percent, parse_seeds,
)
from workbench.registry import BENCHMARKS, ConfigError


def test_figures_from_metric_rows():
    rows = [{"step": 0, "eval/jpeg_kb": 2.0, "eval/accuracy": 0.55}, {"step": 5, "loss/policy": 0.1},
            {"step": 10, "eval/jpeg_kb": 1.5, "eval/accuracy": 0.88, "eval/success": 0.5},
            {"step": 20, "eval/jpeg_kb": 1.25, "eval/accuracy": 0.9, "eval/success": 1.0}]
    assert jpeg_change_percent(rows) == pytest.approx(-37.5)  # (1.25 - 2) / 2
    assert accuracy_gain_points(rows) == pytest.approx(35.0)  # 90 % - 55 %
    assert final_success_percent(rows) == 100.0
    with pytest.raises(RuntimeError, match="eval/jpeg_kb"):
        jpeg_change_percent(rows[:1])
    assert DEMOS["ddpo"].passes(-30.0) and not DEMOS["ddpo"].passes(-29.9)  # lower is better: >= 30 % smaller
    assert DEMOS["franka_reach"].passes(90.0) and not DEMOS["franka_reach"].passes(80.0)


def test_seed_lists_and_bad_input():
    assert parse_seeds("3") == [0, 1, 2] and parse_seeds("1,4") == [1, 4]
    assert BENCHMARKS.get("demos") is bench_demos
    assert parse_seeds("4,") == [4]
    for bad in ("three", "0", ","):
        with pytest.raises(ConfigError, match="--seeds"):
            parse_seeds(bad)
    with pytest.raises(ConfigError, match="unknown demo 'cartpole'"):
        bench_demos(["--demos", "cartpole"])


@pytest.mark.slow
def test_every_demo_reaches_its_documented_figure_on_one_seed(capsys):
    """~20 min on 2 cores: franka reach (~75 s), arithmetic (~70 s), DDPO (~17 min), seed 0."""
    figures = bench_demos(["--seeds", "1"])  # seed 0
    print(capsys.readouterr().out)
    for name, f in figures["demos"].items():
        assert f["passed"], f"{name}: {f['figure']} {f['values']} misses its threshold {f['threshold']}"
