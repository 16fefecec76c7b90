"""The simulated human of the RAPL benchmarks on Franka Push with a forbidden zone.

The person wants the cube pushed onto the goal disc *without the cube ever crossing the red
forbidden zone* that ``workbench/FrankaPush-v0`` puts between the cube and the goal. RAPL's
experiments simulate the person by a privileged return read from the simulator's info dicts:
:func:`oracle_score` is that return for this task, :func:`make_oracle` wraps it in the
engine's task-free :class:`~workbench.rewards.rapl.PreferenceOracle`.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

__all__ = ["ZONE_LAMBDA", "oracle_score", "make_oracle"]

ZONE_LAMBDA = 1.0  # oracle cost of one step with the cube in the zone, in metre-steps (see oracle_score)



def oracle_score(infos: Sequence[Mapping[str, Any]], zone_lambda: float = ZONE_LAMBDA) -> float:
    """The simulated human's return of one episode (higher is better):

        score = - sum_t dist_object_goal_t  -  zone_lambda * #{t : in_forbidden_zone_t}

    over the per-step info dicts of ``workbench/FrankaPush-v0`` (the reset info included).
    ``dist_object_goal`` is in metres, so the first term is in metre-steps (leaving the cube
    0.16 m from the goal for the 101 infos of an episode costs about 16) and ``zone_lambda`` is
    metre-steps per step in the zone: with the default 1.0 one step inside costs as much as
    the cube sitting 1 m from the goal for a step. Why 1.0: the scripted straight push reaches
    the goal at a distance cost of about 5 but drags the cube through the zone for 4-10 steps;
    the detour avoids the zone but, taking about twice as long, pays about 10. At 1.0 the two
    costs balance so the zone decides: a detour beats the straight push in about 3 of 4 task
    layouts (a quick push that only clips the zone's edge wins the rest), both beat leaving the
    cube where it is (about -16), and a push abandoned inside the zone is the worst of all
    (down to -90). At 0.5 the straight push would win 9 times in 10 (the zone barely
    matters); from 1.5 up it would rank with doing nothing.
    """
    if not infos:
        raise ValueError("oracle_score needs at least one info dict")
    if not zone_lambda >= 0:
        raise ValueError(f"zone_lambda must be >= 0, got {zone_lambda}")
    try:
        dist = sum(float(i["dist_object_goal"]) for i in infos)
        inside = sum(bool(i["in_forbidden_zone"]) for i in infos)
    except KeyError as e:
        raise ValueError(f"oracle_score needs FrankaPush info dicts with {e.args[0]!r} (forbidden zone on)") from None
    return -dist - zone_lambda * inside


def make_oracle(zone_lambda: float = ZONE_LAMBDA, equal_tol: float = 0.0):
    """RAPL's :class:`PreferenceOracle` ranking rollouts by :func:`oracle_score`."""
    from workbench.rewards.rapl import PreferenceOracle

    return PreferenceOracle(lambda infos: oracle_score(infos, zone_lambda), equal_tol=equal_tol)

