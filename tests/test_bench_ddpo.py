import json
import os
import subprocess
import sys


def test_bench_ddpo_json_line():
    out = subprocess.run(
        [sys.executable, "-m", "workbench.cli", "bench", "ddpo", "--json", "--iterations", "1", "--prompts", "2",
         "--group-size", "2", "--num-steps", "3", "--minibatches", "2", "--threads", "1"],
        capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert out.returncode == 0, out.stderr
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    assert figures["bench"] == "ddpo" and figures["images_per_iteration"] == 4
    assert figures["ours_s_per_iteration"] > 0 and figures["ceiling_s_per_iteration"] > 0
    assert abs(figures["overhead"] - figures["ours_s_per_iteration"] / figures["ceiling_s_per_iteration"]) < 0.01
