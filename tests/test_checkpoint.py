import json

import numpy as np
import pytest
import torch
from safetensors import safe_open

from workbench import checkpoint


def nested_state():
    return {
        "policy": {"w": torch.randn(3, 4), "b": torch.arange(4, dtype=torch.int64)},
        "optimizer": {"state": {0: {"step": torch.tensor(5.0), "exp_avg": torch.ones(2)}}, "param_groups": [{"lr": 1e-3, "params": [0]}]},
        "env": {"obs": np.random.randn(2, 3), "count": np.array(3.5), "rng": np.random.default_rng(3).bit_generator.state, "flags": (True, None, "x")},
        "counters": {"iteration": 7, "step": 14336},
        "rng": checkpoint.rng_state(),
    }


def test_roundtrip_preserves_everything(tmp_path):
    state = nested_state()
    path = checkpoint.save(tmp_path / "ckpt_00000007.safetensors", state)
    back = checkpoint.load(path)
    torch.testing.assert_close(back["policy"]["w"], state["policy"]["w"])
    assert back["policy"]["b"].dtype == torch.int64
    assert back["optimizer"]["state"][0]["step"].item() == 5.0  # int dict keys survive
    assert back["optimizer"]["param_groups"] == [{"lr": 1e-3, "params": [0]}]
    np.testing.assert_array_equal(back["env"]["obs"], state["env"]["obs"])
    assert back["env"]["count"].shape == () and float(back["env"]["count"]) == 3.5
    assert back["env"]["rng"] == state["env"]["rng"]  # 128-bit PCG64 ints survive JSON
    assert back["env"]["flags"] == (True, None, "x")
    assert back["counters"] == {"iteration": 7, "step": 14336}


def test_rng_state_restores_streams(tmp_path):
    checkpoint.save(tmp_path / "c.safetensors", {"rng": checkpoint.rng_state()})
    a = (torch.rand(3), np.random.rand(3))
    checkpoint.set_rng_state(checkpoint.load(tmp_path / "c.safetensors")["rng"])
    b = (torch.rand(3), np.random.rand(3))
    torch.testing.assert_close(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_python_random_state_as_plain_lists_and_back(tmp_path):
    """One form for every Python RNG a checkpoint holds (the global one, an env's own Random)."""
    import random

    rng = random.Random(7)
    rng.random()
    plain = checkpoint.python_rng_to_plain(rng.getstate())
    assert isinstance(plain, list) and isinstance(plain[1], list) and len(plain[1]) == 625
    path = checkpoint.save(tmp_path / "c.safetensors", {"env": {"rng": plain}, "rng": checkpoint.rng_state()})
    expected, global_expected = [rng.random() for _ in range(3)], [random.random() for _ in range(3)]
    back = checkpoint.load(path)
    other = random.Random(0)
    other.setstate(checkpoint.python_rng_from_plain(back["env"]["rng"]))
    checkpoint.set_rng_state(back["rng"])
    assert [other.random() for _ in range(3)] == expected
    assert [random.random() for _ in range(3)] == global_expected


def test_file_is_plain_safetensors_without_pickle(tmp_path):
    path = checkpoint.save(tmp_path / "c.safetensors", nested_state())
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    assert meta["format"] == checkpoint.FORMAT
    json.loads(meta["state"])  # the skeleton is JSON, nothing to unpickle


def test_failed_write_keeps_old_checkpoint_and_leaves_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "ckpt_00000001.safetensors"
    checkpoint.save(path, {"x": torch.ones(2)})

    def crash(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint, "save_file", crash)
    with pytest.raises(OSError, match="disk full"):
        checkpoint.save(path, {"x": torch.zeros(2)})
    assert checkpoint.load(path)["x"].tolist() == [1.0, 1.0]
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_unsupported_value_is_refused(tmp_path):
    with pytest.raises(TypeError, match="cannot checkpoint"):
        checkpoint.save(tmp_path / "c.safetensors", {"fn": print})


def test_not_a_checkpoint(tmp_path):
    from safetensors.torch import save_file

    save_file({"a": torch.ones(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not a workbench checkpoint"):
        checkpoint.load(tmp_path / "other.safetensors")


def test_latest_and_prune(tmp_path):
    for i in (1, 2, 10):
        checkpoint.save(checkpoint.checkpoint_path(tmp_path, i), {"i": i})
    assert checkpoint.latest(tmp_path).name == "ckpt_00000010.safetensors"
    checkpoint.prune(tmp_path, keep=2)
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path)] == ["ckpt_00000002.safetensors", "ckpt_00000010.safetensors"]
