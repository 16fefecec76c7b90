"""Bad input, tried as a new user would through ``workbench train``: every mistake in a config
value, a data file or row, an env option, a model path or a checkpoint ends in one line on
stderr (``workbench: error: ...``) naming the file/row/key and what to do; never a traceback."""
import json

import pytest
import torch

from workbench.cli import main

# the tiny text run: 1-layer random Qwen2, 2 prompts x 2 samples per iteration
TEXT = ["experiment=arithmetic_grpo_tiny", "total_steps=4", "env.prompts_per_iteration=2", "env.group_size=2",
        "eval_episodes=2", "policy.model_config.num_hidden_layers=1", "progress=false"]
PENDULUM = ["experiment=inverted_pendulum_ppo", "env.num_envs=1", "env.rollout_steps=16", "total_steps=16",
            "eval_episodes=0", "progress=false"]
DIFFUSION = ["experiment=ddpo_compressibility_demo", "total_steps=8", "progress=false"]


def one_line_error(capsys, args, code=2, only=False) -> str:
    """Run the CLI in-process; the exit must be ``code`` with one error line and no traceback
    (``only``: and nothing else on stderr)."""
    rc = main(["train", *args])
    err = capsys.readouterr().err
    assert rc == code, err
    assert "Traceback" not in err
    assert not only or len(err.strip().splitlines()) == 1, err
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("workbench:")]
    assert len(lines) == 1 and err.strip().splitlines()[-1] == lines[0], err
    assert lines[0].startswith("workbench: error: ")
    return lines[0]


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def dataset_args(tmp_path, path, *extra):
    return [*TEXT, "env.task=dataset", f"env.task_kwargs.path={path}", *extra, f"run_dir={tmp_path / 'run'}"]


# ------------------------------------------------------------------ text data files and rows
def test_jsonl_line_that_is_not_json_names_the_line(tmp_path, capsys):
    data = write_jsonl(tmp_path / "qa.jsonl", [{"question": "1+1=", "answer": "2"}, {"question": "2+2=", "answer": "4"},
                                                "not json", {"question": "3+3=", "answer": "6"}])
    line = one_line_error(capsys, dataset_args(tmp_path, data))
    assert f"{data} line 3 is not JSON" in line


def test_row_without_answer_names_the_row_and_field(tmp_path, capsys):
    data = write_jsonl(tmp_path / "qa.jsonl", [{"question": "1+1=", "answer": "2"}, {"question": "2+2="},
                                                {"question": "3+3=", "answer": "6"}])
    line = one_line_error(capsys, dataset_args(tmp_path, data))
    assert f"{data} line 2" in line and "no 'answer'" in line


def test_dataset_split_names_do_not_apply_to_a_local_file(tmp_path, capsys):
    """The GSM8K env names hub splits (eval_split: test): on a local file the held-out set would
    be the training file itself, which ended in 'raise its difficulty'."""
    data = write_jsonl(tmp_path / "qa.jsonl", [{"question": f"{i}+1=", "answer": str(i + 1)} for i in range(5)])
    line = one_line_error(capsys, [*TEXT, "env=gsm8k", f"env.task_kwargs.path={data}", f"run_dir={tmp_path / 'run'}"])
    assert "env.task_kwargs.eval_split='test'" in line and "env.task_kwargs.eval_path" in line
    assert "difficulty" not in line


def test_eval_file_holding_every_training_row_is_named(tmp_path, capsys):
    data = write_jsonl(tmp_path / "qa.jsonl", [{"question": f"{i}+1=", "answer": str(i + 1)} for i in range(5)])
    line = one_line_error(capsys, dataset_args(tmp_path, data, f"+env.task_kwargs.eval_path={data}"))
    assert f"every row of {data} is also in the held-out set" in line and "difficulty" not in line


def test_switching_the_task_drops_the_old_tasks_options():
    from workbench.config import compose

    cfg = compose(["experiment=arithmetic_grpo_tiny", "env.task=dataset", "env.task_kwargs.path=/x.jsonl"])
    assert dict(cfg.env.task_kwargs) == {"path": "/x.jsonl"}  # the arithmetic 'digits' and 'ops' are gone
    same = compose(["experiment=arithmetic_grpo_tiny", "env.task=arithmetic", "env.task_kwargs.ops=+"])
    assert dict(same.env.task_kwargs) == {"digits": 2, "ops": "+"}  # same task: its options stay


def test_switching_the_task_on_the_command_line_trains(tmp_path, capsys):
    data = write_jsonl(tmp_path / "qa.jsonl", [{"question": f"{i}+1=", "answer": str(i + 1)} for i in range(20)])
    assert main(["train", *dataset_args(tmp_path, data, "eval_episodes=0")]) == 0, capsys.readouterr().err


# ------------------------------------------------------------------ diffusion prompt files
def test_prompt_csv_without_header_names_the_column(tmp_path, capsys):
    prompts = tmp_path / "prompts.csv"
    prompts.write_text("a cat\n")
    line = one_line_error(capsys, [*DIFFUSION, f"env.prompt_file={prompts}", f"run_dir={tmp_path / 'run'}"])
    assert f"env.prompt_file={prompts}" in line and "header" in line and "'prompt'" in line


def test_prompt_jsonl_bad_line_is_named(tmp_path, capsys):
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "a cat"}, "{broken"])
    line = one_line_error(capsys, [*DIFFUSION, f"env.prompt_file={prompts}", f"run_dir={tmp_path / 'run'}"])
    assert f"{prompts} line 2 is not JSON" in line


# ------------------------------------------------------------------ gymnasium env options
@pytest.mark.parametrize("option", ["env.kwargs.reset_noise_scale=abc", "env.kwargs.frame_skip=0",
                                    "env.kwargs.xml_file=/no/such.xml", "env.kwargs.nope=1"])
def test_bad_gym_env_option_is_one_line(tmp_path, capsys, option):
    line = one_line_error(capsys, [*PENDULUM, "+" + option, f"run_dir={tmp_path / 'run'}"], only=True)
    assert "env.kwargs" in line and "InvertedPendulum-v5" in line


def test_bad_gym_env_option_in_async_workers_is_one_line(tmp_path, capsys):
    """The workers' traceback arrives as a gymnasium warning (seen only outside pytest, which
    captures warnings): it must not reach the user."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "workbench.cli", "train", *PENDULUM, "env.vectorization=async", "env.num_envs=2",
                          "+env.kwargs.reset_noise_scale=abc", f"run_dir={tmp_path / 'run'}"], capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [("workbench: error: env.kwargs {'reset_noise_scale': 'abc'} made env.id='InvertedPendulum-v5' fail "
                    "(TypeError: bad operand type for unary -: 'str'); fix or drop the option")], out.stderr


# ------------------------------------------------------------------ checkpoints and model paths
def test_init_from_a_file_that_is_not_a_checkpoint(tmp_path, capsys):
    bad = tmp_path / "weights.safetensors"
    bad.write_text("hello")
    line = one_line_error(capsys, [*PENDULUM, f"init_from={bad}", f"run_dir={tmp_path / 'run'}"])
    assert f"init_from={bad}" in line and "not a readable workbench checkpoint" in line


def test_init_from_a_checkpoint_of_another_model(tmp_path, capsys):
    from workbench import checkpoint

    other = checkpoint.save(tmp_path / "other.safetensors", {"policy": {"w": torch.ones(3)}})
    line = one_line_error(capsys, [*PENDULUM, f"init_from={other}", f"run_dir={tmp_path / 'run'}"])
    assert f"init_from={other}" in line and "do not fit this policy" in line


def test_model_path_that_does_not_exist(tmp_path, capsys):
    line = one_line_error(capsys, [*TEXT, "policy.model_config=null", "policy.model=/no/such/model",
                                   "policy.tokenizer=char", f"run_dir={tmp_path / 'run'}"])
    assert "/no/such/model" in line


# ------------------------------------------------------------------ configs that cannot learn or run
def test_group_estimator_with_groups_of_one_is_refused(tmp_path, capsys):
    line = one_line_error(capsys, [*TEXT, "env.group_size=1", f"run_dir={tmp_path / 'run'}"])
    assert "algo.advantage=grpo" in line and "env.group_size=1" in line
    assert not (tmp_path / "run").exists()  # refused at start-up, before anything is written


def test_max_new_tokens_beyond_the_models_context_is_refused(tmp_path, capsys):
    line = one_line_error(capsys, [*TEXT, "policy.max_new_tokens=100000", f"run_dir={tmp_path / 'run'}"])
    assert "policy.max_new_tokens=100000" in line and "max_position_embeddings=256" in line


def test_max_new_tokens_that_only_the_prompt_pushes_past_the_context(tmp_path, capsys):
    # 255 new tokens fit 256 positions, but no prompt of 'a+b=' (>= 4 character tokens) leaves room for them
    line = one_line_error(capsys, [*TEXT, "policy.max_new_tokens=255", f"run_dir={tmp_path / 'run'}"])
    assert "policy.max_new_tokens=255" in line and "prompt" in line


# ------------------------------------------------------------------ cross-section checks at start-up
def test_kl_coefficient_without_a_reference_is_refused_at_start_up(tmp_path, capsys):
    line = one_line_error(capsys, [*TEXT, "algo.beta=0.1", f"run_dir={tmp_path / 'run'}"])
    assert "algo.beta=0.1 needs a KL reference" in line and "policy.reference" in line
    assert not (tmp_path / "run").exists()  # refused before the model loads or anything is written
    line = one_line_error(capsys, [*DIFFUSION, "algo.beta=0.01", f"run_dir={tmp_path / 'run'}"])
    assert "algo.beta=0.01 needs a KL reference" in line and not (tmp_path / "run").exists()


def test_overlong_buffer_beyond_the_generation_limit_is_refused_at_start_up(tmp_path, capsys):
    line = one_line_error(capsys, [*TEXT, "env.overlong_buffer=16", f"run_dir={tmp_path / 'run'}"])
    assert "env.overlong_buffer=16 exceeds policy.max_new_tokens=8" in line
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("rewards, message", [
    ("[{name: math_accuracy, tolerance: 0.1}]", "env.rewards[0]: unknown option 'tolerance' for reward 'math_accuracy'"),
    ("[{name: math_accuracy}, {name: countdown, format_score: abc}]", "bad value for 'env.rewards[1].format_score'"),
    ("[{name: regex_match}]", "env.rewards[0]: reward 'regex_match' needs option(s): pattern"),
    ("[{name: math_acc}]", "env.rewards[0]: unknown reward 'math_acc'; valid choices: "),
])
def test_reward_options_are_checked_at_start_up(tmp_path, capsys, rewards, message):
    line = one_line_error(capsys, [*TEXT, f"env.rewards={rewards}", f"run_dir={tmp_path / 'run'}"])
    assert message in line
    assert not (tmp_path / "run").exists()
