"""Algorithm stages: the small pure functions that make one method differ from another, grouped
by where the loop calls them, each registered under a name and chosen in config.

| registry (stages today)                    | runs                    | signature                                            |
| ------------------------------------------ | ----------------------- | ---------------------------------------------------- |
| BATCH_FILTERS (dynamic_sampling)           | in a collector's rounds | (scores [N], group [N], cfg) -> passing groups       |
| REWARD_SHAPERS (overlong)                  | after the env's rewards | (batch, cfg) -> [N] reward term added to each row    |
| ADVANTAGE_MODIFIERS (clip)                 | after the estimator     | (advantages [N, T], batch, cfg) -> advantages        |
| STEP_SELECTORS (window, timestep_fraction) | in a policy's sampling  | (mask [n, T], iteration, generator, cfg) -> mask     |
| LOSS_MODIFIERS (tis, top_entropy)          | inside the objective    | (pg [M, T], out, mb, cfg) -> (pg, metrics)           |

``algo.reward_shapers``, ``algo.advantage_modifiers`` and ``algo.loss_modifiers`` list the stages
a run uses, in order: ``algo.loss_modifiers=[{name: tis, cap: 2.0}]``. Flat TRL/verl names stay
as aliases (:mod:`workbench.stages.algo`). Step selectors run inside a denoising policy's sampling
(``policy.train_window``, ``policy.timestep_fraction``); the dynamic-sampling filter inside the
token collector's rounds (``env.batch_filter``, alias ``env.dynamic_sampling``). ``workbench list`` shows every stage.

Adding a stage = one function + its config dataclass + one test, nothing else. A loss modifier
that drops the loss of tokens whose advantage is small, say::

    @dataclass
    class MinAdvantageConfig:
        threshold: float = 0.1  # |A| below this trains nothing (the paper's value)

        def __post_init__(self) -> None:
            if self.threshold < 0:
                raise ConfigError(f"threshold must be >= 0, got {self.threshold}")

    @LOSS_MODIFIERS.register("min_advantage", config=MinAdvantageConfig)
    def min_advantage(pg, out, mb, cfg):
        \"\"\"Why, and the paper it comes from.\"\"\"
        return pg * (mb.advantages.abs() >= cfg.threshold), {}

and ``algo.loss_modifiers=[{name: min_advantage, threshold: 0.2}]`` turns it on. Unknown names
and options, and bad values, fail at start-up with one line naming the config key.
"""
from workbench.stages.base import (  # noqa: F401
    ADVANTAGE_MODIFIERS,
    BATCH_FILTERS,
    LOSS_MODIFIERS,
    REWARD_SHAPERS,
    STEP_SELECTORS,
    Stage,
    StageRegistry,
)
from workbench.stages import advantage_modifiers, batch_filters, loss_modifiers, reward_shapers, step_selectors  # noqa: F401,E402
from workbench.stages.algo import ConfiguredStages, configured_stages  # noqa: F401,E402
