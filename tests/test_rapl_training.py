"""RAPL's training pipeline as a library (workbench.rewards.rapl.train): from ranked triplets to a
reward, the same for RAPL and the RLHF baseline, with the budget split and update count the
benchmarks use. Random tiny videos; the simulated human ranks them by a number in their infos."""
import numpy as np
import pytest
import torch

from workbench.rewards.rapl import (PAIRS_PER_TRIPLET, FrameEncoder, PreferenceOracle, RLHFRewardModel, Rollout,
                                    epochs_for_updates, pairs_from_triplets, sample_triplets, split_triplets,
                                    train_alignment, train_rapl_reward, train_rlhf, train_rlhf_reward)


def encoder(seed=0):
    torch.manual_seed(seed)
    return FrameEncoder("cnn", embed_dim=8, head_hidden=0, image_size=32)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    pool = [Rollout(rng.integers(0, 255, (4, 32, 32, 3), dtype=np.uint8), [{"q": float(rng.normal())}])
            for _ in range(12)]
    oracle = PreferenceOracle(lambda infos: infos[0]["q"])
    train, val = split_triplets(sample_triplets(pool, oracle, 10, seed=1), 0.2)
    return dict(pool=pool, train=train, val=val, demos=[pool[i].video for i in oracle.rank(pool)[:2]])


def test_split_keeps_the_last_share_for_validation():
    triplets = list(range(10))
    assert split_triplets(triplets, 0.2) == ([0, 1, 2, 3, 4, 5, 6, 7], [8, 9])
    assert split_triplets(triplets[:4], 0.5) == ([0, 1, 2, 3], None)  # under 5: nothing to spare
    assert split_triplets(triplets, 0.0) == (triplets, None)
    with pytest.raises(ValueError, match="val_frac"):
        split_triplets(triplets, 1.0)


def test_epochs_grow_until_the_minimum_updates():
    assert epochs_for_updates(4, 10, epochs=2, min_updates=0) == 2
    assert epochs_for_updates(4, 3, epochs=1, min_updates=6) == 3  # 2 steps an epoch
    assert epochs_for_updates(40, 10, epochs=15, min_updates=60) == 15
    with pytest.raises(ValueError, match="train_triplets"):
        epochs_for_updates(0, 10, epochs=1, min_updates=1)


def test_rapl_reward_is_alignment_then_ot_matching_bit_for_bit(data):
    fit = dict(val_triplets=data["val"], epochs=2, batch_size=3, lr=1e-3, seed=4)
    reward, curve = train_rapl_reward(encoder(), data["train"], data["demos"], reg=0.2, temperature=0.5, **fit)
    by_hand = encoder()
    hand_curve = train_alignment(by_hand, data["train"], reg=0.2, temperature=0.5, **fit)
    assert curve == hand_curve and reward.reg == 0.2
    state = by_hand.state_dict()
    assert all(torch.equal(v, state[k]) for k, v in reward.encoder.state_dict().items())
    video = data["pool"][0].video
    assert np.isfinite(reward.score(video)) and len(reward.demos) == 2


def test_rlhf_reward_trains_on_the_pairs_of_the_same_triplets(data):
    fit = dict(val_triplets=data["val"], epochs=2, batch_size=3, lr=1e-3, seed=4)
    model, curve = train_rlhf_reward(encoder(), data["train"], **fit)
    by_hand = RLHFRewardModel(encoder())
    hand_curve = train_rlhf(by_hand, pairs_from_triplets(data["train"]), epochs=2, lr=1e-3, seed=4,
                            val_pairs=pairs_from_triplets(data["val"]), batch_size=PAIRS_PER_TRIPLET * 3)
    assert curve == hand_curve and isinstance(model, RLHFRewardModel)
    state = by_hand.state_dict()
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert PAIRS_PER_TRIPLET == 3
