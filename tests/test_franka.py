"""Franka Panda: kinematics, control, the three tasks, pixels, vectorisation, gym_control."""
import os

os.environ.setdefault("MUJOCO_GL", "egl")  # before mujoco is imported (conftest sets it too)

import gymnasium as gym  # noqa: E402
import mujoco  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import envs.franka  # noqa: E402,F401  (registers the ids)
from envs.gym_control import GymControlEnv  # noqa: E402
from robots.panda import PandaController, PandaKinematics, SceneConfig, build_model, solve_ik  # noqa: E402
from robots.panda.scene import ARM_JOINTS  # noqa: E402

IDS = ("workbench/FrankaReach-v0", "workbench/FrankaPush-v0", "workbench/FrankaPickPlace-v0")


@pytest.fixture(scope="module")
def model():
    return build_model(SceneConfig(object=True, forbidden_zone=True))


def test_scene_uses_installed_assets_and_has_its_parts(model):
    assert model.nu == 9 and model.nmocap == 2  # 7 arm + 2 finger servos; goal and zone
    assert model.nq == 9 + 7  # arm, fingers, the cube's free joint
    for name in ("front", "top", "side"):
        model.camera(name)
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    assert not [f for _, _, fs in os.walk(os.path.join(here, "robots")) for f in fs if f.endswith(".stl")]
    with pytest.raises(ValueError, match="goal_shape"):
        SceneConfig(goal_shape="cube")


def test_forward_kinematics_matches_mujoco_sites(model):
    data, fk = mujoco.MjData(model), PandaKinematics(model)
    low, high = np.array([model.joint(n).range for n in ARM_JOINTS]).T
    q = np.random.default_rng(0).uniform(low, high, (25, 7))
    pos, rot = fk.forward(q)  # batched
    assert pos.shape == (25, 3) and rot.shape == (25, 3, 3)
    site = model.site("tcp").id
    for i in range(len(q)):
        data.qpos[fk.qposadr] = q[i]
        mujoco.mj_forward(model, data)
        np.testing.assert_allclose(pos[i], data.site_xpos[site], atol=1e-9, rtol=0)
        np.testing.assert_allclose(rot[i], data.site_xmat[site].reshape(3, 3), atol=1e-9, rtol=0)
        np.testing.assert_allclose(fk.forward(q[i])[0], pos[i], atol=1e-12, rtol=0)
    with pytest.raises(ValueError, match=r"\(\.\.\., 7\)"):
        fk.forward(np.zeros(6))


def test_differential_ik_moves_the_tcp_to_a_target(model):
    data = mujoco.MjData(model)
    mujoco.mj_resetDataKeyframe(model, data, 0)
    mujoco.mj_forward(model, data)
    ctl = PandaController(model, data)
    rot0, target = ctl.ee_rot, ctl.ee_pos + np.array([0.06, -0.05, -0.08])
    dists = []
    for _ in range(15):
        ctl.move_ee(target, rot0)
        for _ in range(10):
            mujoco.mj_step(model, data)
        mujoco.mj_forward(model, data)
        dists.append(np.linalg.norm(ctl.ee_pos - target))
    assert dists[0] < 0.11 and dists[-1] < 3e-3, dists
    assert np.all(np.diff(dists[:6]) < 0) and max(dists[6:]) < 0.01, dists  # no big overshoot
    assert np.abs(ctl.ee_rot - rot0).max() < 0.02  # the hand kept pointing down
    q = solve_ik(model, target, rot0)  # kinematic IK agrees with our FK
    np.testing.assert_allclose(PandaKinematics(model).forward(q)[0], target, atol=2e-5)
    with pytest.raises(ValueError, match="target_pos"):
        ctl.ik_step(np.zeros(2))


@pytest.mark.parametrize("env_id", IDS)
def test_same_seed_same_trajectory(env_id):
    envs = [gym.make(env_id) for _ in range(3)]
    actions = np.random.default_rng(1).uniform(-1, 1, (15,) + envs[0].action_space.shape)
    runs = []
    for env, seed in zip(envs, (7, 7, 8)):
        obs = [env.reset(seed=seed)[0]]
        obs += [env.step(a)[0] for a in actions]
        runs.append(np.stack(obs))
        env.close()
    np.testing.assert_array_equal(runs[0], runs[1])
    assert not np.allclose(runs[0][0], runs[2][0])  # another seed, another task
    assert runs[0].dtype == np.float32 and envs[0].observation_space.contains(runs[0][-1])


def test_reach_success_when_the_tcp_is_at_the_goal():
    env = gym.make("workbench/FrankaReach-v0")
    _, info = env.reset(seed=0)
    base = env.unwrapped
    assert not info["is_success"] and info["dist_ee_goal"] > 0.05
    base.data.mocap_pos[base.goal_mocap] = base.ctl.ee_pos  # put the goal at the hand
    _, reward, term, trunc, info = env.step(np.zeros(3))
    assert info["is_success"] and reward > 0.9 and not term and not trunc  # -distance + bonus 1
    env.close()


def test_push_success_and_forbidden_zone_flags():
    env = gym.make("workbench/FrankaPush-v0", zone_penalty=2.0)
    _, info = env.reset(seed=3)
    base = env.unwrapped
    assert {"ee_pos", "object_pos", "goal_pos", "in_forbidden_zone", "is_success"} <= set(info)
    assert not info["in_forbidden_zone"] and not info["is_success"]
    centre = base.zone_center
    assert centre.shape == (2,) and base.zone_radius == 0.04
    # the zone lies between the cube and the goal
    assert np.linalg.norm(centre - (info["object_pos"][:2] + info["goal_pos"][:2]) / 2) <= base.zone_offset + 1e-9
    base._place_object(centre)
    mujoco.mj_forward(base.model, base.data)
    _, reward, _, _, info = env.step(np.zeros(3))
    assert info["in_forbidden_zone"] and not info["is_success"] and reward < -2.0
    base._place_object(info["goal_pos"][:2])
    mujoco.mj_forward(base.model, base.data)
    _, reward, _, _, info = env.step(np.zeros(3))
    assert info["is_success"] and not info["in_forbidden_zone"]
    env.close()
    with pytest.raises(ValueError, match="zone_radius"):
        gym.make("workbench/FrankaPush-v0", zone_radius=0.1)


def test_pickplace_success_and_terminate_on_success():
    env = gym.make("workbench/FrankaPickPlace-v0", terminate_on_success=True)
    env.reset(seed=0)
    base = env.unwrapped
    assert env.action_space.shape == (4,)
    base.data.mocap_pos[base.goal_mocap] = base.object_pos  # goal where the cube rests
    _, _, term, _, info = env.step(np.array([0, 0, 0, -1.0]))
    assert info["is_success"] and term
    env.close()


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="obs_mode"):
        gym.make("workbench/FrankaReach-v0", obs_mode="rgb")
    with pytest.raises(ValueError, match="camera"):
        gym.make("workbench/FrankaReach-v0", camera="nope")
    env = gym.make("workbench/FrankaReach-v0")
    env.reset(seed=0)
    with pytest.raises(ValueError, match="shape"):
        env.unwrapped.step(np.zeros(4))
    env.close()


def test_pixel_observations_and_render():
    env = gym.make("workbench/FrankaPush-v0", obs_mode="pixels+state", image_width=48, image_height=40,
                   render_mode="rgb_array", width=80, height=60)
    obs, _ = env.reset(seed=0)
    assert set(obs) == {"pixels", "state"} and env.observation_space.contains(obs)
    first = obs["pixels"]
    assert first.shape == (40, 48, 3) and first.dtype == np.uint8 and first.std() > 5
    for _ in range(8):
        obs, *_ = env.step(np.array([1.0, 1.0, -1.0]))
    assert np.abs(obs["pixels"].astype(int) - first).mean() > 1.0  # the arm moved in the picture
    frame = env.render()
    assert frame.shape == (60, 80, 3) and frame.dtype == np.uint8
    env.close()
    fast, detailed = (gym.make("workbench/FrankaReach-v0", obs_mode="pixels", camera="top", fast_pixels=f) for f in (True, False))
    a, b = fast.reset(seed=0)[0], detailed.reset(seed=0)[0]
    assert set(a) == {"pixels"} and a["pixels"].shape == (64, 64, 3)
    diff = np.abs(a["pixels"].astype(int) - b["pixels"])
    assert 0 < diff.mean() < 10  # low-poly arm: nearly the same picture
    fast.close(), detailed.close()


def test_sync_vector_env_state_and_pixels():
    vec = gym.vector.SyncVectorEnv([lambda: gym.make("workbench/FrankaPush-v0") for _ in range(2)])
    obs, _ = vec.reset(seed=0)
    assert obs.shape == (2, 24) and not np.allclose(obs[0], obs[1])
    obs, reward, term, trunc, info = vec.step(np.zeros((2, 3)))
    assert reward.shape == (2,) and info["in_forbidden_zone"].shape == (2,) and info["object_pos"].shape == (2, 3)
    vec.close()
    vec = gym.vector.SyncVectorEnv([lambda: gym.make("workbench/FrankaReach-v0", obs_mode="pixels+state") for _ in range(2)])
    obs, _ = vec.reset(seed=0)
    assert obs["pixels"].shape == (2, 64, 64, 3) and obs["state"].shape == (2, 13)
    vec.close()


def test_async_vector_env():
    vec = gym.vector.AsyncVectorEnv([lambda: gym.make("workbench/FrankaReach-v0") for _ in range(2)])
    obs, _ = vec.reset(seed=0)
    obs2, reward, *_ = vec.step(np.ones((2, 3), dtype=np.float32))
    assert obs.shape == obs2.shape == (2, 13) and np.isfinite(reward).all() and not np.allclose(obs, obs2)
    vec.close()


def test_simulator_state_roundtrip_restores_the_task():
    env = gym.make("workbench/FrankaPush-v0")
    env.reset(seed=5)
    from envs.gym_control import SimState

    sim = SimState(env, 0)
    state = sim.get_state()
    actions = np.random.default_rng(0).uniform(-1, 1, (6, 3))
    expected = [env.step(a)[0] for a in actions]
    env.reset(seed=99)  # another goal, cube and zone
    sim.set_state([state])
    got = [env.step(a)[0] for a in actions]
    np.testing.assert_array_equal(np.stack(got), np.stack(expected))
    env.close()


def test_gym_control_collects_on_reach_and_logs_success():
    from workbench.policies.gaussian_mlp import GaussianMLPPolicy

    cfg = GymControlEnv.Config(id="workbench/FrankaReach-v0", num_envs=2, rollout_steps=60)
    env = GymControlEnv(cfg, seed=0)
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(GaussianMLPPolicy.Config(), env.spec())
    batch = env.collect(policy)
    assert batch.policy_inputs["obs"].shape == (2, 60, 13)
    assert batch.truncated[:, 49].tolist() == [1.0, 1.0]  # 50-step time limit, bootstrapped
    metrics = env.pop_metrics()
    assert metrics["episode/count"] == 2 and metrics["episode/length"] == 50
    assert 0.0 <= metrics["episode/success"] <= 1.0
    assert "eval/success" in env.evaluate(policy, episodes=1)
    env.close()


def test_success_logging_is_only_added_for_envs_that_report_it():
    from workbench.rollout.control import episode_success

    final_info = {"is_success": np.array([True, False, False]), "_is_success": np.array([True, True, False])}
    assert episode_success(final_info, 0) == 1.0 and episode_success(final_info, 1) == 0.0
    assert np.isnan(episode_success(final_info, 2)) and np.isnan(episode_success({}, 0))
    cfg = GymControlEnv.Config(id="InvertedPendulum-v5", rollout_steps=64, kwargs={"max_episode_steps": 20})
    env = GymControlEnv(cfg, seed=0)
    from workbench.policies.gaussian_mlp import GaussianMLPPolicy

    env.collect(GaussianMLPPolicy(GaussianMLPPolicy.Config(), env.spec()))
    metrics = env.pop_metrics()
    assert metrics["episode/count"] >= 3 and "episode/success" not in metrics
    env.close()
