"""The run log follows the env's declaration (``Environment.display()``): the final line, the
progress line and the learning-curve panels, for every modality."""
import inspect
import json

from workbench.environment import RETURN, EnvDisplay, Headline
from workbench.registry import ENVS
from workbench.runlog import RunLogger, curve_panels, eval_summary, plot_learning_curve, read_metrics

ACCURACY = EnvDisplay("arithmetic", headline=(Headline("accuracy", "eval/accuracy", "accuracy", fmt=".3f"),),
                      evaluation="greedy", eval_unit="held-out items", step_unit="samples")


def diffusion_display():
    from envs.diffusion import DiffusionEnv

    return DiffusionEnv(DiffusionEnv.Config(), seed=0).display()


def write_rows(run_dir, rows):
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_diffusion_run_shows_its_declared_reward_and_jpeg_size(tmp_path):
    display = diffusion_display()
    assert display.name == "jpeg_compressibility" and not display.renders
    final = {"eval/return_mean": -1.25, "eval/return_std": 0.5, "eval/jpeg_kb": 1.25, "eval/episodes": 4.0}
    write_rows(tmp_path, [
        {"step": 0, **final},
        {"step": 6, "image/reward_mean": -1.5, "image/jpeg_kb": 1.5, "reward/per_row": -1.5, "loss/policy": 0.1},
        {"step": 12, **final},
    ])
    assert eval_summary(final, display) == "reward -1.250 ± 0.500, JPEG size (kB) 1.250 over 4 images"
    panels = curve_panels(read_metrics(tmp_path), display)
    assert [p.title for p in panels] == ["reward", "JPEG size (kB) (lower is better)", "losses", "update", "entropy"]
    reward = panels[0].series
    assert [(s.key, s.label, s.evaluation, s.spread) for s in reward] == [
        ("image/reward_mean", "train", False, None), ("eval/return_mean", "eval (fixed noise)", True, "eval/return_std")]
    assert plot_learning_curve(tmp_path, display, title="t").stat().st_size > 0


def test_final_lines_of_control_and_text():
    success = Headline("success", "eval/success", "episode/success", fmt=".0%")
    control = EnvDisplay("FrankaReach", headline=(RETURN, success), renders=True)
    metrics = {"eval/return_mean": 1234.56, "eval/return_std": 7.0, "eval/success": 0.5, "eval/episodes": 2.0}
    assert eval_summary(metrics, control) == "return 1,234.6 ± 7.0, success 50% over 2 episodes"
    del metrics["eval/success"]  # a task without a success test: the figure is left out
    assert eval_summary(metrics, control) == "return 1,234.6 ± 7.0 over 2 episodes"
    text = {"eval/accuracy": 0.625, "eval/return_mean": 0.625, "eval/return_std": 0.48, "eval/episodes": 8.0}
    assert eval_summary(text, ACCURACY) == "accuracy 0.625 over 8 held-out items"


def test_a_declared_figure_the_run_never_logged_gets_no_panel():
    success = Headline("success", "eval/success", "episode/success", fmt=".0%")
    display = EnvDisplay("Pendulum-v1", headline=(RETURN, success), evaluation="deterministic")
    rows = [{"step": 2048, "episode/return": -1200.0}, {"step": 4096, "eval/return_mean": -900.0}]
    assert [p.title for p in curve_panels(rows, display)] == ["return", "losses", "update", "entropy"]
    rows[0]["sft/step"] = 0.0
    assert curve_panels(rows, display)[0].series[1].label == "eval (deterministic) (step 0 = after SFT)"


def test_progress_line_shows_the_declared_figures(tmp_path, capsys):
    logger = RunLogger(tmp_path, 64, progress=False, tensorboard=False, display=ACCURACY)
    logger.log(32, {"accuracy": 0.25, "episode/return": 9.0, "perf/steps_per_s": 100.0})
    logger.log(64, {"eval/accuracy": 0.5, "eval/return_mean": 0.5, "eval/episodes": 4.0})
    logger.close()
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].split() == ["step", "32", "100", "steps/s", "accuracy", "0.250"]
    assert lines[1].endswith("accuracy 0.250  eval accuracy 0.500")


def test_every_env_evaluates_with_one_signature():
    """The CLI calls evaluate(policy, episodes, video_path=..., seed=...) on any env, no TypeError catch."""
    for name in ENVS.names():
        params = list(inspect.signature(ENVS.get(name).evaluate).parameters.values())[1:5]
        assert [(p.name, p.default) for p in params[2:]] == [("video_path", None), ("seed", None)], name
        assert [p.name for p in params[:2]] == ["policy", "episodes"], name


def test_a_long_progress_line_stays_one_line_in_a_log_file(tmp_path, capsys):
    success = Headline("success", "eval/success", "episode/success", fmt=".0%")
    logger = RunLogger(tmp_path, 10**6, progress=False, tensorboard=False, display=EnvDisplay("x", headline=(RETURN, success)))
    logger.log(20480, {"episode/return": 1.9, "episode/success": 0.12, "perf/steps_per_s": 1000.0, "eval/return_mean": 23.1,
                       "eval/return_std": 15.2, "eval/success": 0.4, "eval/episodes": 10.0})
    logger.close()
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and len(lines[0]) > 80 and lines[0].endswith("success 40%"), lines
