"""The collector of denoising samplers: conditions in, images and their denoising chains out.

A trajectory is one image's chain: N = images, T = the sampler's steps. ``mask`` marks the
trained steps (the policy's step selector chose them when sampling), ``dones`` the last step.
Rewards are left at 0: the env scores the images and puts each image's reward on its last
trained step (:func:`terminal_rewards`), so ``sum(rewards * mask)`` over a row is the image's
reward whichever steps are trained. This is the seam where a worker boundary (Ray sampler
actors) attaches; conditions are whatever the sampler's conditioner reads (class ids, text,
later actions + context frames for world models).
"""
from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple

import torch

from workbench.batch import Batch


def collect_chains(policy, conditions: Sequence[Any], group: torch.Tensor, prompt_id: torch.Tensor,
                   generator: Optional[torch.Generator] = None, iteration: int = 0,
                   trunks: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, Batch]:
    """One image per condition -> (images [N, C, H, W] in [0, 1], the Batch of their chains).

    ``group`` [N]: the rows a group baseline compares; ``prompt_id`` [N]: each row's prompt,
    stable over the run; ``trunks`` [N] (branch sampling): rows with the same id share their
    chain before the first trained step."""
    images, traj = policy.sample(list(conditions), generator=generator, iteration=iteration, trunks=trunks)
    N, T = traj.logp.shape
    device = traj.logp.device
    dones = torch.zeros(N, T, device=device)
    dones[:, -1] = 1.0
    return images, Batch(
        logp_old=traj.logp,
        mask=traj.train_mask.float(),
        rewards=torch.zeros(N, T, device=device),
        dones=dones,
        group=group.to(device),
        prompt_id=prompt_id.to(device),
        policy_inputs={"x_t": traj.x_t, "x_prev": traj.x_prev, "step": traj.step},
        row_inputs=traj.cond,
    )


def terminal_rewards(batch: Batch, scores: torch.Tensor) -> Batch:
    """The batch with each row's score on its last trained step (rows hold >= 1 trained step)."""
    T = batch.num_steps
    last = (torch.arange(T, device=batch.mask.device) * batch.mask).argmax(1)
    rewards = torch.zeros_like(batch.rewards)
    rewards[torch.arange(batch.num_rows, device=rewards.device), last] = scores.to(dtype=rewards.dtype, device=rewards.device)
    return batch.with_(rewards=rewards)
