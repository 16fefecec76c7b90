"""math_accuracy on the answer forms real models write (issue 10, item 3).

Each case is one completion and one gold answer; the expected score is 1.0 or 0.0. The
must-be-0 cases keep the reward from passing by being lenient.
"""
import threading

import pytest

import workbench.rewards  # noqa: F401  (registers the rewards)
from workbench.rewards import build_reward

MINERVA = "Final Answer: The final answer is ${}$. I hope it is correct."


def score(completion, gold, **options):
    return build_reward("math_accuracy", **options)([completion], answer=[gold])[0]


@pytest.mark.parametrize(
    "completion, gold",
    [
        # Minerva / MATH few-shot form
        (MINERVA.format("14{,}916"), "14916"),
        (MINERVA.format("14{,}916"), "14,916"),
        (MINERVA.format(r"\frac{3}{4}"), "0.75"),
        ("Adding up, 7 + 8 = 15.\n" + MINERVA.format("14{,}916"), "14916"),  # not the last number
        # malformed \frac13 / \sqrt3 without a box
        (r"Thus the probability is $\frac13$.", "1/3"),
        (r"Thus the probability is $\frac13$.", r"\frac{1}{3}"),
        (r"The side length is $\sqrt3$.", r"\sqrt{3}"),
        (r"So we get $2\sqrt3$.", r"2\sqrt{3}"),
        (r"\boxed{\frac13}", "1/3"),
        # \cfrac
        (r"The answer is $\cfrac{1}{3}$.", "1/3"),
        (r"\boxed{\cfrac{2}{3}}", "2/3"),
        # relations, both ways round
        (r"The solution set is $x \geq 5$.", "x >= 5"),
        (r"The solution set is $5 \leq x$.", "x >= 5"),
        (r"The answer is $x >= 5$.", r"x \geq 5"),
        (r"\boxed{x \ge 5}", "x >= 5"),
        ("<think>solve it</think><answer>x \\geq 5</answer>", "x >= 5"),
        # intervals
        (r"The solution is $[2, 5)$.", "[2, 5)"),
        (r"Hence $x \in (-\infty, 3]$.", r"(-\infty, 3]"),
        (r"\boxed{[2, 5)}", "[2, 5)"),
        # sets
        (r"The roots are $\{1, 2\}$.", r"\{1, 2\}"),
        (r"The roots are $\{2, 1\}$.", r"\{1, 2\}"),
        (r"\boxed{\{1,2,3\}}", "{1, 2, 3}"),
        # answers followed by chat tokens
        ("The answer is 1/2<|im_end|>", "1/2"),
        ("answer: 3/4</s>", "3/4"),
        ("so x = 2/3<|im_end|><|endoftext|>", "2/3"),
        ("<answer>42</answer><|im_end|>", "42"),
        (r"The answer is $\boxed{7}$<|eot_id|>", "7"),
        (MINERVA.format(r"x \ge 5") + "<|im_end|>", "x >= 5"),
        # thousands separators
        (r"The total is $14{,}916$.", "14916"),
        (r"The total is $\boxed{14{,}916}$.", "14916"),
        ("The total is 14,916.", "14916"),
        ("The total is 14,916.", "14,916"),
        (r"The total is $14,916$.", "14916"),
        # what worked before keeps working
        ("The answer is 42", "42"),
        ("<think>maybe 7</think><answer> 42 </answer>", "42"),
        ("<answer>\\frac{1}{2}</answer>", "0.5"),
        (r"first \boxed{1}, then \boxed{2}, finally \boxed{3}", "3"),  # the last box
        (r"\boxed{3} and then a truncated \boxed{4", "3"),
        (r"<answer>\boxed{9}</answer> 10", "9"),
        ("it drops to −2", "-2"),  # unicode minus
        (r"\boxed{\frac{1}{3}}", "12/36"),
        (r"\boxed{50\%}", "50"),  # math-verify alone reads this box as the string '50\%'
        (r"\boxed{\text{(B)}}", "B"),
        ("27+38=65", "65"),
        (r"\boxed{27+38}", "65"),  # an explicit answer may be an expression (as before)
        (r"So there are $10^6$ codes.", "1000000"),
        ("Natalia sold 48 + 24 = 72 clips.", "Natalia sold 48/2 = 24 clips.\n#### 72"),
    ],
)
def test_math_accuracy_accepts(completion, gold):
    assert score(completion, gold) == 1.0


@pytest.mark.parametrize(
    "completion, gold",
    [
        (r"The answer is $\frac{1}{3}$", "1/4"),  # wrong
        (MINERVA.format("14{,}917"), "14916"),
        (r"First I get 14916. Wait, recheck: \boxed{14917}", "14916"),  # only mid-reasoning
        (r"Midway $x = 3$ looks right, but the final answer is \boxed{4}", "3"),
        (r"first \boxed{1}, then \boxed{2}, finally \boxed{3}", "1"),
        (r"\boxed{x > 5}", r"x \geq 5"),  # strict vs non-strict
        (r"The solution set is $x \leq 5$.", "x >= 5"),  # the other direction
        (r"\boxed{[2, 5]}", "[2, 5)"),  # closed vs half-open
        (r"The roots are $\{1, 3\}$.", r"\{1, 2\}"),
        ("<answer>41</answer> though 42 is tempting", "42"),  # the tag is the answer
        ("<answer>I do not know</answer> 42", "42"),
        ("The answer is 1/2<|im_end|>", "1"),  # the chat token does not cut 1/2 to 1
        ("I give up.", "7"),
        # an arithmetic prompt echoed back ("27+38=" -> "27+38") is not an answer, though
        # math-verify alone evaluates it to 65; the last number (38) is taken instead
        ("27+38", "65"),
        ("The sum is 27 + 38.", "65"),
    ],
)
def test_math_accuracy_rejects(completion, gold):
    assert score(completion, gold) == 0.0


def test_math_accuracy_without_fallback_needs_box_or_tag():
    # fallback_last_number=False: only \boxed and <answer> count, not a phrase in the prose
    assert score(MINERVA.format("14{,}916"), "14916", fallback_last_number=False) == 0.0
    assert score(r"\boxed{14{,}916}", "14916", fallback_last_number=False) == 1.0
    assert score("<answer>x \\geq 5</answer>", "x >= 5", fallback_last_number=False) == 1.0


def test_math_accuracy_off_main_thread():
    # math-verify times out with signal.alarm; off the main thread it must run without one
    out = {}
    fn = build_reward("math_accuracy")
    t = threading.Thread(target=lambda: out.setdefault("s", fn([MINERVA.format("14{,}916")], answer=["14916"])))
    t.start()
    t.join()
    assert out["s"] == [1.0]
