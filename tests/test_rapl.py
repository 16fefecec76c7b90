"""RAPL visual reward (workbench.rewards.rapl): OT matching, oracle, alignment, RLHF baseline, checkpoints.

Synthetic videos made in code: a red square (the thing the "human" cares about) and a blue
distractor square move across a 32x32 canvas of random grey level; the privileged return is
minus the red square's mean distance to the top-right corner.
"""
import math

import numpy as np
import pytest
import torch

import workbench.rewards  # noqa: F401  (registers the rewards)
from workbench.registry import REWARDS, ConfigError
from workbench.rewards import build_reward
from workbench.rewards.rapl import (
    FrameEncoder, PreferenceOracle, RAPLReward, RLHFRewardModel, Rollout, cosine_cost, load_reward,
    ot_frame_rewards, ot_similarities, ot_similarity, pair_accuracy, pairs_from_triplets, sample_triplets,
    spearman_with_oracle, train_alignment, train_rlhf, transport_plan, triplet_accuracy, video_to_tensor,
)

S, T = 32, 8
TARGET = np.array([S - 5.0, 4.0])  # (x, y): the top-right corner


def _square(frame, center, colour):
    x, y = np.round(center).astype(int)
    frame[max(y - 3, 0):y + 3, max(x - 3, 0):x + 3] = colour


def make_rollout(rng):
    """A red square from the middle to a random end point, a blue distractor anywhere."""
    start, end = rng.uniform(8, S - 8, 2), rng.uniform(3, S - 3, 2)
    bstart, bend = rng.uniform(3, S - 3, 2), rng.uniform(3, S - 3, 2)
    background = rng.uniform(0, 60)
    frames, infos = [], []
    for t in range(T):
        a = t / (T - 1)
        red, blue = (1 - a) * start + a * end, (1 - a) * bstart + a * bend
        f = np.full((S, S, 3), background, np.float32)
        _square(f, blue, (40, 60, 230))
        _square(f, red, (230, 30, 30))
        frames.append(f.astype(np.uint8))
        infos.append({"red": red, "target": TARGET})
    return Rollout(np.stack(frames), infos)


def ground_truth(infos):
    return -float(np.mean([np.linalg.norm(i["red"] - i["target"]) for i in infos]))


def moving_square(direction, colour=(230, 30, 30), y=S / 2):
    """A square crossing the canvas at height ``y`` left->right (+1) or right->left (-1),
    uint8 [T, S, S, 3]."""
    xs = np.linspace(5, S - 5, T)[::direction]
    frames = np.zeros((T, S, S, 3), np.uint8)
    for t, x in enumerate(xs):
        _square(frames[t], (x, y), colour)
    return frames


def cnn_encoder(seed=0):
    torch.manual_seed(seed)
    return FrameEncoder("cnn", embed_dim=16, head_hidden=64, image_size=32)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    pool = [make_rollout(rng) for _ in range(60)]
    held = [make_rollout(rng) for _ in range(40)]
    oracle = PreferenceOracle(ground_truth)
    train = sample_triplets(pool, oracle, budget=60, seed=1)
    val = sample_triplets(held, oracle, budget=40, seed=2)
    demos = [pool[i].video for i in oracle.rank(pool)[:3]]
    return dict(pool=pool, held=held, oracle=oracle, train=train, val=val, demos=demos)


@pytest.fixture(scope="module")
def aligned(data):
    """A tiny CNN aligned on 60 triplets; metrics before and after."""
    enc = cnn_encoder()
    before = dict(acc=triplet_accuracy(enc, data["val"]),
                  rho=spearman_with_oracle(RAPLReward(enc, data["demos"]), data["held"], data["oracle"]))
    curve = train_alignment(enc, data["train"], epochs=8, batch_size=10, lr=3e-3, seed=0)
    reward = RAPLReward(enc, data["demos"])
    after = dict(acc=triplet_accuracy(enc, data["val"]), rho=spearman_with_oracle(reward, data["held"], data["oracle"]))
    return dict(encoder=enc, reward=reward, curve=curve, before=before, after=after)


# -- inputs and encoder --------------------------------------------------------------------


def test_video_layouts_agree_and_bad_shapes_fail():
    video = moving_square(1)
    a = video_to_tensor(video)
    b = video_to_tensor(torch.from_numpy(video).permute(0, 3, 1, 2))
    assert a.shape == (T, 3, S, S) and torch.equal(a, b) and float(a.max()) <= 1.0
    for bad in (video[0], video[..., :2], torch.zeros(T, S, S, 3), video.astype(np.int64).tolist(), video[:0]):
        with pytest.raises(ValueError):
            video_to_tensor(bad)


def test_cnn_encoder_shapes():
    enc = cnn_encoder()
    z = enc(moving_square(1))
    assert z.shape == (T, 16) and z.requires_grad
    many = enc.encode_many([moving_square(1), moving_square(-1)[:5]])
    assert [m.shape[0] for m in many] == [T, 5]
    assert np.allclose(enc.embed(moving_square(1)), many[0].detach().numpy(), atol=1e-5)


def test_timm_backbone_freezing_and_local_weights(tmp_path):
    from safetensors.torch import save_file

    frozen = FrameEncoder("test_resnet", embed_dim=8, trainable_stages=0, image_size=32)
    assert not any(p.requires_grad for p in frozen.backbone.parameters())
    assert all(p.requires_grad for p in frozen.head.parameters())
    frozen.train()
    assert not frozen.backbone.training and frozen.head.training
    last = FrameEncoder("test_resnet", embed_dim=8, trainable_stages=1, image_size=32)
    trained = {n for n, p in last.backbone.named_parameters() if p.requires_grad}
    assert trained and all(n.startswith("layer4.") for n in trained)

    state = {k: v.contiguous() for k, v in frozen.backbone.state_dict().items()}
    save_file(state, str(tmp_path / "bb.safetensors"))
    torch.save(state, tmp_path / "bb.pt")
    video = moving_square(1)
    ref = frozen.backbone.eval()(frozen.preprocess(video))
    for name in ("bb.safetensors", "bb.pt"):
        enc = FrameEncoder("test_resnet", embed_dim=8, weights=str(tmp_path / name), image_size=32).eval()
        assert torch.allclose(enc.backbone(enc.preprocess(video)), ref)
    with pytest.raises(ConfigError, match="weights: no file at .*nope.pt"):
        FrameEncoder("test_resnet", weights=str(tmp_path / "nope.pt"))
    with pytest.raises(ConfigError, match="backbone: unknown timm model 'no_such_net_v9'"):
        FrameEncoder("no_such_net_v9")


# -- optimal transport ---------------------------------------------------------------------


def test_ot_similarity_self_beats_different():
    right, low, blue = moving_square(1), moving_square(1, y=S - 5), moving_square(1, colour=(30, 30, 230))
    pixels = lambda v: v.reshape(T, -1).astype(np.float64)  # noqa: E731
    s_self = ot_similarity(pixels(right), pixels(right))
    assert s_self > ot_similarity(pixels(right), pixels(low)) + 0.1
    assert s_self > ot_similarity(pixels(right), pixels(blue)) + 0.1
    enc = cnn_encoder()  # also through a random encoder, on both backends
    z = {k: enc.embed(v) for k, v in dict(right=right, low=low, blue=blue).items()}
    assert ot_similarity(z["right"], z["right"]) > max(ot_similarity(z["right"], z["low"]),
                                                        ot_similarity(z["right"], z["blue"]))
    t = {k: torch.from_numpy(v) for k, v in z.items()}
    assert float(ot_similarity(t["right"], t["low"])) == pytest.approx(ot_similarity(z["right"], z["low"]), abs=1e-4)


def test_ot_similarity_ignores_frame_order():
    # uniform-marginal OT matches sets of frames: a video played backwards scores the same
    right, left = moving_square(1), moving_square(-1)
    pixels = lambda v: v.reshape(T, -1).astype(np.float64)  # noqa: E731
    assert ot_similarity(pixels(right), pixels(left)) == pytest.approx(ot_similarity(pixels(right), pixels(right)))


def test_transport_plan_marginals():
    rng = np.random.default_rng(0)
    za, zb = rng.normal(size=(7, 5)), rng.normal(size=(11, 5))
    cost = cosine_cost(za, zb)
    assert cost.shape == (7, 11) and cost.min() >= 0 and cost.max() <= 2
    for plan in (transport_plan(cost), transport_plan(torch.tensor(cost, dtype=torch.float32)).numpy()):
        assert plan.shape == (7, 11) and plan.min() >= 0
        np.testing.assert_allclose(plan.sum(1), 1 / 7, atol=1e-5)
        np.testing.assert_allclose(plan.sum(0), 1 / 11, atol=1e-5)
    batch = transport_plan(np.stack([cost, cost[::-1]]))
    assert batch.shape == (2, 7, 11) and np.allclose(batch.sum((1, 2)), 1.0)
    with pytest.raises(ValueError, match="reg"):
        transport_plan(cost, reg=0)
    with pytest.raises(ValueError, match="embedding sizes differ"):
        cosine_cost(za, zb[:, :3])


def test_frame_rewards_sum_to_score(data):
    rng = np.random.default_rng(1)
    za, zb = rng.normal(size=(6, 4)), rng.normal(size=(9, 4))
    r, s = ot_frame_rewards(za, zb)
    assert r.shape == (6,) and np.all(r <= 0) and np.all(r >= -2)
    assert r.sum() == pytest.approx(6 * s) and s == pytest.approx(ot_similarity(za, zb))
    enc = cnn_encoder()
    video = data["held"][0].video
    for demos in (data["demos"], [data["demos"][0][:5], *data["demos"][1:]]):  # one Sinkhorn batch, or one per demo
        reward = RAPLReward(enc, demos)
        fr = reward.frame_rewards(video)
        assert fr.shape == (T,) and fr.dtype == np.float64
        assert fr.sum() == pytest.approx(reward.score(video), abs=1e-12)
        sims = reward.similarities(video)
        assert reward.score(video) == pytest.approx(T * sims.max(), abs=1e-9)
        closest = enc.embed(demos[int(np.argmax(sims))])
        np.testing.assert_allclose(fr, ot_frame_rewards(enc.embed(video), closest)[0], atol=1e-6)


def test_gradients_flow_through_ot_to_encoder():
    enc = cnn_encoder()
    za, zb = enc(moving_square(1)), enc(moving_square(-1))
    ot_similarity(za, zb).backward(retain_graph=True)
    grads = [p.grad for p in enc.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0
    enc.zero_grad()
    s = ot_similarities([(za, zb), (zb, za), (za, zb[:5])])
    assert s.shape == (3,) and float(s[0].detach()) == pytest.approx(float(ot_similarity(za, zb).detach()), abs=1e-5)
    s.sum().backward()
    assert float(enc.head[0].weight.grad.abs().sum()) > 0


# -- preferences ---------------------------------------------------------------------------


def test_oracle_prefers_by_privileged_return():
    def infos(d):  # the red square at distance d from the target on every step
        return [{"red": TARGET + np.array([d, 0.0]), "target": TARGET}] * 3

    near, mid, far = Rollout("near", infos(1)), Rollout("mid", infos(5)), Rollout("far", infos(9))
    oracle = PreferenceOracle(ground_truth)
    assert oracle.returns(near) == pytest.approx(-1.0)
    t = oracle.label(far, near, mid)
    assert (t.preferred, t.neutral, t.less_preferred) == ("near", "mid", "far") and not t.equal
    assert t.returns == pytest.approx((-1, -5, -9))
    assert oracle.rank([mid, far, near]) == [2, 0, 1]
    assert PreferenceOracle(ground_truth, equal_tol=10).label(far, near, mid).equal
    pairs = pairs_from_triplets([t])
    assert [(p.first, p.second, p.label) for p in pairs] == [("near", "mid", 1.0), ("near", "far", 1.0),
                                                              ("mid", "far", 1.0)]
    with pytest.raises(ValueError, match="non-finite"):
        PreferenceOracle(lambda _: math.nan).returns(near)


def test_sample_triplets_spends_the_budget(data):
    triplets = sample_triplets(data["pool"], data["oracle"], budget=25, seed=3)
    assert len(triplets) == 25
    for t in triplets:
        assert len({id(t.preferred), id(t.neutral), id(t.less_preferred)}) == 3
        assert t.returns[0] >= t.returns[1] >= t.returns[2]
    assert len(pairs_from_triplets(triplets)) == 75  # same budget: three pairs per ranking
    with pytest.raises(ValueError, match="at least 3"):
        sample_triplets(data["pool"][:2], data["oracle"], budget=1)


# -- training ------------------------------------------------------------------------------


def test_alignment_raises_triplet_accuracy_and_spearman(aligned):
    before, after, curve = aligned["before"], aligned["after"], aligned["curve"]
    print(f"\nRAPL held-out triplet accuracy {before['acc']:.3f} -> {after['acc']:.3f}; "
          f"Spearman with oracle {before['rho']:.3f} -> {after['rho']:.3f}")
    assert len(curve) == 9 and curve[0]["epoch"] == 0
    assert curve[-1]["loss"] < curve[0]["loss"]
    assert after["acc"] > 0.65  # chance is 0.5
    assert after["rho"] > 0.5 and after["rho"] > before["rho"] + 0.1


def test_alignment_options(data):
    from workbench.rewards.rapl import Triplet, triplet_logits

    enc = cnn_encoder(3)
    few = list(data["train"][:5]) + [Triplet(*(r.video for r in data["pool"][:3]), equal=True)]
    for anchor in ("preferred", "neutral"):
        assert triplet_logits(enc, few, anchor=anchor, temperature=0.1).shape == (6,)
    curve = train_alignment(enc, few, epochs=1, batch_size=3, anchor="neutral", val_triplets=data["val"][:4])
    assert len(curve) == 2 and all(math.isfinite(row["val_loss"]) for row in curve)
    with pytest.raises(ValueError, match="anchor"):
        train_alignment(enc, few, anchor="best")
    with pytest.raises(ValueError, match="temperature"):
        triplet_logits(enc, few, temperature=0)
    frozen = cnn_encoder()
    for p in frozen.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="frozen"):
        train_alignment(frozen, few, epochs=1)


def test_rlhf_baseline_trains_and_scores(data):
    model = RLHFRewardModel(cnn_encoder(1))
    pairs, val = pairs_from_triplets(data["train"]), pairs_from_triplets(data["val"])
    acc0 = pair_accuracy(model, val)
    curve = train_rlhf(model, pairs, epochs=4, lr=3e-3, val_pairs=val)
    acc1 = pair_accuracy(model, val)
    rho = spearman_with_oracle(model, data["held"], data["oracle"])
    print(f"\nRLHF held-out pair accuracy {acc0:.3f} -> {acc1:.3f}; Spearman {rho:.3f}")
    assert len(curve) == 5 and "val_loss" in curve[-1]
    assert acc1 > 0.65 and rho > 0.3
    video = data["held"][0].video
    fr = model.frame_rewards(video)
    assert fr.shape == (T,) and np.isfinite(fr).all() and fr.sum() == pytest.approx(model.score(video))


# -- checkpoints and registry --------------------------------------------------------------


def test_save_load_round_trip_and_registry(aligned, data, tmp_path):
    video = data["held"][3].video
    path = str(tmp_path / "rapl.safetensors")
    aligned["reward"].save(path)
    loaded = RAPLReward.load(path)
    assert np.array_equal(loaded.frame_rewards(video), aligned["reward"].frame_rewards(video))
    assert isinstance(load_reward(path), RAPLReward)
    fn = build_reward("rapl", checkpoint=path)
    videos = [r.video for r in data["held"][:4]]
    assert fn(videos) == [aligned["reward"].score(v) for v in videos]
    assert np.array_equal(fn.frame_rewards(video), loaded.frame_rewards(video))
    with pytest.raises(ValueError, match="embeddings only"):
        loaded.refresh()
    vpath = str(tmp_path / "rapl_videos.safetensors")
    aligned["reward"].save(vpath, with_videos=True)
    again = RAPLReward.load(vpath)
    again.refresh()  # re-embedding the stored videos gives the same reward
    assert np.array_equal(again.frame_rewards(video), aligned["reward"].frame_rewards(video))

    model = RLHFRewardModel(cnn_encoder(2))
    rpath = str(tmp_path / "rlhf.safetensors")
    model.save(rpath)
    assert np.array_equal(RLHFRewardModel.load(rpath).frame_rewards(video), model.frame_rewards(video))
    assert build_reward("rlhf_video", checkpoint=rpath)(["ignored"], videos=[video]) == [model.score(video)]
    with pytest.raises(ConfigError, match="not 'rapl'"):
        build_reward("rapl", checkpoint=rpath)


def test_missing_checkpoint_is_a_config_error(tmp_path):
    assert "rapl" in REWARDS and "rlhf_video" in REWARDS
    missing = str(tmp_path / "no" / "such.safetensors")
    for name in ("rapl", "rlhf_video"):
        with pytest.raises(ConfigError, match="no/such.safetensors"):
            build_reward(name, checkpoint=missing)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="junk.safetensors"):
        build_reward("rapl", checkpoint=str(junk))
