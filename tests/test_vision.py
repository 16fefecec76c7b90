"""workbench.vision: timm backbones, local weights read safely, normalisation, tiny CNNs, one error path."""
import pytest
import torch
from safetensors.torch import save_file

from workbench import vision
from workbench.policies.gaussian_mlp import GaussianActorCritic, GaussianMLPPolicy
from workbench.policies.visuomotor import GaussianCNNPolicy
from workbench.registry import ConfigError


def resnet_state(seed=0, num_classes=0):
    import timm

    torch.manual_seed(seed)
    return timm.create_model("test_resnet", pretrained=False, num_classes=num_classes).state_dict()


def save(path, state):
    if str(path).endswith(".safetensors"):
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    return str(path)


# -- local weights ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["w.safetensors", "w.pt"])
def test_read_state_dict_reads_both_formats_and_unwraps(tmp_path, name):
    state = {"a.weight": torch.arange(6.0).view(2, 3), "a.bias": torch.ones(2)}
    got = vision.read_state_dict(save(tmp_path / name, state), "opt")
    assert got.keys() == state.keys() and all(torch.equal(got[k], state[k]) for k in state)
    wrapped = {"model": {f"module.{k}": v for k, v in state.items()}}  # a trainer checkpoint of a DataParallel model
    got = vision.read_state_dict(save(tmp_path / "wrapped.pt", wrapped), "opt")
    assert got.keys() == state.keys()


def test_read_state_dict_errors_name_the_option_and_the_file(tmp_path):
    with pytest.raises(ConfigError, match=r"^head_weights: no file at .*absent\.pt$"):
        vision.read_state_dict(str(tmp_path / "absent.pt"), "head_weights")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(ConfigError, match=r"^encoder_weights: could not load .*junk\.pt \(safetensors or a weights-only"):
        vision.read_state_dict(str(tmp_path / "junk.pt"), "encoder_weights")
    with pytest.raises(ConfigError, match=r"^policy\.weights: .*list\.pt does not hold a state dict of tensors$"):
        vision.read_state_dict(save(tmp_path / "list.pt", [torch.ones(1)]), "policy.weights")


def test_weights_drop_the_classifier_and_adapt_the_first_conv_to_stacked_frames(tmp_path):
    from timm.models import adapt_input_conv

    full = resnet_state(seed=3, num_classes=10)  # saved with its classifier ("fc")
    assert "fc.weight" in full
    path = save(tmp_path / "full.safetensors", full)
    model = vision.timm_backbone("test_resnet", "policy.encoder", in_channels=6, weights=path, weights_option="policy.weights")
    loaded = model.state_dict()
    assert torch.equal(loaded["conv1.0.weight"], adapt_input_conv(6, full["conv1.0.weight"]))
    assert all(torch.equal(loaded[k], v) for k, v in full.items() if not k.startswith(("fc.", "conv1.0.weight")))
    assert model(torch.zeros(2, 6, 32, 32)).shape == (2, model.num_features)


def test_weights_for_another_model_fail_with_one_line(tmp_path):
    state = resnet_state()
    lacking = save(tmp_path / "lacking.pt", {k: v for k, v in state.items() if not k.startswith("layer4.")})
    with pytest.raises(ConfigError, match=r"^weights: .*lacking\.pt does not fit timm:test_resnet: it lacks \d+ weights, "
                                          r"e\.g\. layer4\."):
        vision.timm_backbone("test_resnet", "backbone", weights=lacking)
    extra = save(tmp_path / "extra.pt", {**state, "layer9.weight": torch.ones(1)})
    with pytest.raises(ConfigError, match=r"extra\.pt does not fit timm:test_resnet: 1 weights the model does not have, "
                                          r"e\.g\. layer9"):
        vision.timm_backbone("test_resnet", "backbone", weights=extra)
    shape = save(tmp_path / "shape.pt", {**state, "bn1.weight": torch.ones(3)})
    with pytest.raises(ConfigError, match=r"shape\.pt does not fit timm:test_resnet: .*bn1\.weight") as err:
        vision.timm_backbone("test_resnet", "backbone", weights=shape)
    assert "\n" not in str(err.value)


# -- building ---------------------------------------------------------------------------------


def test_unknown_model_and_bad_arguments_name_the_option():
    with pytest.raises(ConfigError, match=r"^encoder: unknown timm model 'test_resnett'; similar: .*test_resnet"):
        vision.timm_backbone("test_resnett", "encoder")
    with pytest.raises(ConfigError, match=r"^policy\.encoder: timm could not build 'test_resnet': .*no_such_kwarg"):
        vision.timm_backbone("test_resnet", "policy.encoder", create_kwargs={"no_such_kwarg": 1})


def test_seeded_build_is_reproducible_and_leaves_the_callers_random_stream_alone():
    torch.manual_seed(5)
    expected_draw = torch.rand(3)
    torch.manual_seed(5)
    a = vision.timm_backbone("test_resnet", "encoder", seed=0)
    assert torch.equal(torch.rand(3), expected_draw)  # the build drew from a forked stream
    b = vision.timm_backbone("test_resnet", "encoder", seed=0)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    torch.manual_seed(0)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), resnet_state(seed=0).values()))


def test_data_config_and_channel_stats():
    import timm

    model = vision.timm_backbone("test_resnet", "encoder")
    data = vision.data_config(model)
    cfg = timm.data.resolve_model_data_config(model)
    assert data == (tuple(cfg["mean"]), tuple(cfg["std"]), cfg["input_size"][-1], cfg["interpolation"])
    stats = vision.channel_stats((0.1, 0.2, 0.3), 7)  # two stacked RGB frames and one more channel
    assert stats.dtype == torch.float32 and stats.shape == (1, 7, 1, 1)
    assert stats.flatten().tolist() == pytest.approx([0.1, 0.2, 0.3, 0.1, 0.2, 0.3, 0.1])
    assert vision.channel_stats((0.5,), 3).flatten().tolist() == [0.5, 0.5, 0.5]


# -- tiny CNNs --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind, size, features", [("nature", 64, 64 * 4 * 4), ("drq", 32, 32 * 9 * 9)])
def test_conv_stacks_keep_their_layers_and_init_order(kind, size, features):
    torch.manual_seed(0)
    net = vision.conv_stack(kind, 6, ortho=True)
    torch.manual_seed(0)  # the same layers built by hand, initialised in the same order
    in_c, expected = 6, []
    for out, kernel, stride in vision.CONV_STACKS[kind]:
        conv = torch.nn.Conv2d(in_c, out, kernel, stride)
        torch.nn.init.orthogonal_(conv.weight, 2 ** 0.5)
        torch.nn.init.zeros_(conv.bias)
        expected.append(conv)
        in_c = out
    convs = [m for m in net if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == len(expected) and all(torch.equal(a.weight, b.weight) for a, b in zip(convs, expected))
    assert net(torch.zeros(2, 6, size, size)).shape == (2, features)


def test_tiny_cnn_keeps_a_4x4_grid_and_counts_its_stages():
    net = vision.TinyCNN((8, 16))
    assert net(torch.zeros(3, 3, 40, 40)).shape == (3, 16 * 16) and net.num_features == 256
    assert vision.stage_groups(net) == [["stages.0.0.weight", "stages.0.0.bias", "stages.0.1.weight", "stages.0.1.bias"],
                                        ["stages.1.0.weight", "stages.1.0.bias", "stages.1.1.weight", "stages.1.1.bias"]]
    groups = vision.stage_groups(vision.timm_backbone("test_resnet", "backbone"))
    assert groups[-1] and all(n.startswith("layer4.") for n in groups[-1])


# -- the shared Gaussian actor-critic base ----------------------------------------------------


def test_both_gaussian_policies_inherit_the_gaussian_maths_instead_of_borrowing_it():
    shared = ("device", "_gaussian_logp", "entropy_per_step", "prepare_obs", "get_extra_state", "set_extra_state")
    for cls in (GaussianMLPPolicy, GaussianCNNPolicy):
        assert issubclass(cls, GaussianActorCritic)
        assert not any(name in vars(cls) for name in shared)
