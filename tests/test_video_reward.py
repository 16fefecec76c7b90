"""A learned reward on episode videos (RAPL) placed back on the steps by the gym_control adapter."""
import numpy as np
import pytest
import torch

from workbench.rewards.video import VideoReward, VideoRewardConfig
from workbench.registry import REWARDS, ConfigError


@REWARDS.register("_test_brightness_video")
def _brightness(fail_above: float = 1e9):
    """Frame reward = the frame's mean pixel value; raises when a video is brighter than fail_above."""
    def fn(videos, **_):
        return [float(fn.frame_rewards(v).sum()) for v in videos]

    def frame_rewards(video):
        r = np.asarray(video, dtype=np.float64).reshape(len(video), -1).mean(1)
        if r.mean() > fail_above:
            raise RuntimeError("too bright")
        return r

    fn.frame_rewards = frame_rewards
    return fn


def test_frame_rewards_are_spread_over_their_steps_episode_by_episode():
    vr = VideoReward(VideoRewardConfig(name="_test_brightness_video", frame_every=2, weight=2.0, env_weight=0.5))
    T, E = 6, 2  # env 0: episodes [0, 3) and [3, 6); env 1: one episode [0, 6)
    frames = [np.full((E, 2, 2, 3), v, dtype=np.uint8) for v in (10, 20, 30)]  # rendered at steps 0, 2, 4
    env_r = np.ones((T, E))
    dones = np.zeros((T, E), dtype=bool)
    dones[[2, 5], 0] = True
    dones[5, 1] = True
    out, metrics = vr(frames, env_r, dones)
    # env 0, episode 1 sees the frames of steps 0 and 2: frame 0 covers steps 0-1, frame 1 covers step 2 alone
    # episode 2 sees the frame of step 4, which covers steps 3-5 (step 3 was not rendered)
    learned0 = [10 / 2, 10 / 2, 20, 30 / 3, 30 / 3, 30 / 3]
    learned1 = [10 / 2, 10 / 2, 20 / 2, 20 / 2, 30 / 2, 30 / 2]
    np.testing.assert_allclose(out[:, 0], 2.0 * np.array(learned0) + 0.5)
    np.testing.assert_allclose(out[:, 1], 2.0 * np.array(learned1) + 0.5)
    assert metrics["reward/video_return"] == pytest.approx(np.mean([30, 30, 60]))
    assert metrics["reward/video_failures"] == 0


def test_a_failing_episode_keeps_the_env_reward_and_a_split_episode_is_refused():
    vr = VideoReward(VideoRewardConfig(name="_test_brightness_video", options={"fail_above": 100}))
    frames = [np.array([[[[0]]], [[[255]]]], dtype=np.uint8).repeat(3, -1)] * 2  # env 1 is too bright
    env_r = np.array([[1.0, 7.0], [2.0, 8.0]])
    dones = np.array([[False, False], [True, True]])
    out, metrics = vr(frames, env_r, dones)
    np.testing.assert_allclose(out[:, 1], [7.0, 8.0])  # the env's own reward, the run goes on
    np.testing.assert_allclose(out[:, 0], [0.0, 0.0])
    assert metrics["reward/video_failures"] == 1
    cropped = VideoReward(VideoRewardConfig(name="_test_brightness_video", crop=1))
    ring = np.zeros((1, 3, 3, 3), dtype=np.uint8)
    ring[0, 1, 1] = 90  # only the centre pixel survives a 1-px centre crop
    out, _ = cropped([ring, ring], np.zeros((2, 1)), np.array([[False], [True]]))
    np.testing.assert_allclose(out[:, 0], [90.0, 90.0])  # the rest of the 3x3 frame is 0
    with pytest.raises(ConfigError, match="whole episodes"):
        vr(frames, env_r, np.zeros((2, 2), dtype=bool))
    with pytest.raises(ConfigError, match="frame_rewards"):
        VideoReward(VideoRewardConfig(name="jpeg_compressibility"))


def test_franka_rollout_gets_the_rapl_reward_of_its_own_frames(tmp_path):
    from envs.gym_control import GymControlEnv
    from workbench.policies.gaussian_mlp import GaussianMLPPolicy
    from workbench.rewards.rapl import FrameEncoder, RAPLReward

    torch.manual_seed(0)
    demo = np.random.default_rng(0).integers(0, 255, (5, 32, 32, 3), dtype=np.uint8)
    RAPLReward(FrameEncoder("cnn", embed_dim=8, head_hidden=0), demos=[demo]).save(str(tmp_path / "rapl.safetensors"))
    cfg = GymControlEnv.Config(id="workbench/FrankaReach-v0", rollout_steps=50, normalize_reward=False,
                               kwargs={"width": 32, "height": 32, "camera": "top"},
                               video_reward=VideoRewardConfig(name="rapl", options={"checkpoint": str(tmp_path / "rapl.safetensors")},
                                                              frame_every=5))
    env = GymControlEnv(cfg, seed=0)
    policy = GaussianMLPPolicy(GaussianMLPPolicy.Config(), env.spec())
    batch = env.assign_rewards(env.collect(policy))
    assert len(env.frames) == 10 and env.frames[0].shape == (1, 32, 32, 3) and env.frames[0].std() > 0
    expected = REWARDS.get("rapl")(checkpoint=str(tmp_path / "rapl.safetensors")).frame_rewards(np.stack(env.frames, 1)[0])
    np.testing.assert_allclose(batch.rewards[0].numpy(), np.repeat(expected / 5, 5), rtol=1e-5)
    metrics = env.pop_metrics()
    assert metrics["reward/video_return"] == pytest.approx(expected.sum(), rel=1e-5) and metrics["episode/count"] == 1
    env.close()


def test_several_video_rewards_are_one_pipeline_weighted_per_frame():
    # two rewards through the same RewardPipeline: brightness (w 1) and brightness again under an
    # alias (w -0.25); one episode of 2 steps, frames rendered at both steps
    specs = [{"name": "_test_brightness_video", "weight": 1.0},
             {"name": "_test_brightness_video", "alias": "dim", "weight": -0.25}]
    vr = VideoReward(VideoRewardConfig(rewards=specs))
    frames = [np.full((1, 2, 2, 3), 40, dtype=np.uint8), np.full((1, 2, 2, 3), 80, dtype=np.uint8)]
    out, metrics = vr(frames, np.zeros((2, 1)), np.array([[False], [True]]))
    np.testing.assert_allclose(out[:, 0], [0.75 * 40, 0.75 * 80])
    assert metrics["reward/video_return"] == pytest.approx(2 * (40 + 80))  # unweighted, summed over the rewards


def test_video_reward_config_mistakes_are_one_line_at_start_up():
    with pytest.raises(ConfigError, match="not both"):
        VideoRewardConfig(name="_test_brightness_video", rewards=[{"name": "_test_brightness_video"}])
    with pytest.raises(ConfigError, match=r"env.video_reward\[0\]: unknown option 'brightness'"):
        VideoRewardConfig(name="_test_brightness_video", options={"brightness": 1})
    with pytest.raises(ConfigError, match="reward 'jpeg_compressibility' gives no per-frame rewards"):
        VideoReward(VideoRewardConfig(rewards=[{"name": "jpeg_compressibility"}]))
    assert not VideoRewardConfig().enabled
