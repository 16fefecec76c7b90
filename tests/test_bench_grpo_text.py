import json
import subprocess
import sys

import pytest

from workbench.bench.grpo_text import bench_grpo_text

TINY = ["--steps", "2", "--warmup", "1", "--rounds", "1", "--prompts", "2", "--group-size", "2", "--max-new-tokens", "4"]


def test_bench_grpo_text_figures():
    pytest.importorskip("trl")
    figures = bench_grpo_text(TINY)
    for key in ("ours_s_per_step", "trl_s_per_step", "ratio", "ours_generate_s", "trl_generate_s",
                "ours_completion_length", "trl_completion_length", "prompts", "group_size", "max_new_tokens", "versions"):
        assert key in figures, key
    assert figures["ours_s_per_step"] > 0 and figures["trl_s_per_step"] > 0
    assert figures["ratio"] == pytest.approx(figures["trl_s_per_step"] / figures["ours_s_per_step"])
    assert (figures["prompts"], figures["group_size"], figures["max_new_tokens"]) == (2, 2, 4)
    assert 0 < figures["ours_completion_length"] <= 4 and 0 < figures["trl_completion_length"] <= 4
    assert figures["versions"]["trl"]


def test_bench_grpo_text_json_line():
    pytest.importorskip("trl")
    out = subprocess.run([sys.executable, "-m", "workbench.cli", "bench", "grpo-text", *TINY, "--json"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    figures = json.loads(lines[-1])
    assert figures["bench"] == "grpo-text" and figures["ratio"] > 0
    assert any(line.startswith("grpo-text ") for line in lines[:-1])  # the human line comes first


def test_bench_grpo_text_without_trl_says_how_to_get_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "trl", None)  # import trl raises ImportError
    with pytest.raises(SystemExit, match="pip install trl"):
        bench_grpo_text(TINY)
