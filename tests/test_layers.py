"""Which weights are sparse: the default layer set and profiles."""

from pathlib import Path

import pytest
import torch
from avalanche.models import SimpleMLP
from torch import nn

from avalanche_sparcl.models import ResNet18, SmallCNN
from avalanche_sparcl.sparse.layers import default_sparse_weights, load_profile, resolve_profile

PROFILES = Path(__file__).resolve().parents[1] / "experiments" / "profiles"


def forward_of(model, shape):
    return lambda: model(torch.zeros(1, *shape))


def test_small_cnn_default_set_is_the_convolutions_after_the_stem():
    model = SmallCNN()
    assert default_sparse_weights(model, forward_of(model, (1, 8, 8))) == ["conv2.weight", "conv3.weight"]


RESNET18_DEFAULT = [
    "layer1.0.conv1.weight",
    "layer1.0.conv2.weight",
    "layer1.1.conv1.weight",
    "layer1.1.conv2.weight",
    "layer2.0.conv1.weight",
    "layer2.0.conv2.weight",
    "layer2.0.shortcut.0.weight",
    "layer2.1.conv1.weight",
    "layer2.1.conv2.weight",
    "layer3.0.conv1.weight",
    "layer3.0.conv2.weight",
    "layer3.0.shortcut.0.weight",
    "layer3.1.conv1.weight",
    "layer3.1.conv2.weight",
    "layer4.0.conv1.weight",
    "layer4.0.conv2.weight",
    "layer4.0.shortcut.0.weight",
    "layer4.1.conv1.weight",
    "layer4.1.conv2.weight",
]


def test_resnet18_default_set_is_the_16_block_and_3_shortcut_convolutions():
    model = ResNet18(nf=4)
    assert default_sparse_weights(model, forward_of(model, (3, 32, 32))) == RESNET18_DEFAULT


class DeclaredOutOfOrder(nn.Module):
    """Registers its classifier first and its stem last: only the forward pass tells the order."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(16, 3)
        self.hidden = nn.Linear(16, 16)
        self.stem = nn.Linear(4, 16)

    def forward(self, x):
        return self.head(torch.relu(self.hidden(torch.relu(self.stem(x)))))


def test_default_set_follows_execution_order_not_registration_order():
    model = DeclaredOutOfOrder()
    assert default_sparse_weights(model, forward_of(model, (4,))) == ["stem.weight", "hidden.weight"]


def test_an_mlp_masks_every_linear_layer_but_the_classifier():
    model = nn.Sequential(
        nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 10)
    )
    assert default_sparse_weights(model, forward_of(model, (1, 8, 8))) == ["1.weight", "3.weight"]


def test_avalanche_simple_mlp_masks_its_input_layer():
    """Avalanche's hello-world model: input Linear (28*28 x 512, 99% of its weights) + classifier."""
    model = SimpleMLP(num_classes=10, input_size=28 * 28)
    assert default_sparse_weights(model, forward_of(model, (28 * 28,))) == ["features.0.weight"]


def test_frozen_layers_are_never_chosen():
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))
    model[0].weight.requires_grad_(False)
    assert default_sparse_weights(model, forward_of(model, (8,))) == ["2.weight"]
    model[2].weight.requires_grad_(False)  # only the classifier trains: nothing to mask, no error
    assert default_sparse_weights(model, forward_of(model, (8,))) == []


def test_a_model_whose_only_convolution_is_the_stem_masks_its_hidden_linear_layers():
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(144, 32), nn.ReLU(), nn.Linear(32, 32), nn.Linear(32, 10)
    )
    assert default_sparse_weights(model, forward_of(model, (1, 8, 8))) == ["2.weight", "4.weight"]


def test_a_later_convolution_keeps_every_linear_layer_dense():
    layers = [nn.Linear(8, 8), nn.Unflatten(1, (2, 2, 2)), nn.Conv2d(2, 4, 1), nn.Flatten()]
    model = nn.Sequential(*layers, nn.Linear(16, 16), nn.Linear(16, 3))
    assert default_sparse_weights(model, forward_of(model, (8,))) == ["2.weight"]


def test_probe_forward_leaves_batchnorm_statistics_and_train_mode_alone():
    model = SmallCNN().train()
    before = model.bn1.running_mean.clone()
    default_sparse_weights(model, forward_of(model, (1, 8, 8)))
    assert torch.equal(model.bn1.running_mean, before)
    assert model.training and model.bn1.training


def test_a_model_with_no_selectable_layer_is_a_clear_error():
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    with pytest.raises(ValueError) as error:
        default_sparse_weights(model, forward_of(model, (1, 8, 8)))
    assert str(error.value) == (
        "the model has no layer SparCL can make sparse: it masks the convolution weights that train, "
        "other than the input layer, or, in a model without such a convolution, the Linear weights that "
        "train, other than the classifier (the last one), and the model's forward pass went through "
        "these only: 1. Pass a profile to choose layers explicitly."
    )


@pytest.mark.parametrize("sparsity", ["0.75", "0.90", "0.95"])
def test_reference_profiles_select_the_16_block_convolutions(sparsity):
    ratios = load_profile(PROFILES / f"resnet18_{sparsity}.yaml")
    params = resolve_profile(ResNet18(nf=8), ratios)
    assert len(params) == 16
    assert set(ratios.values()) == {float(sparsity)}
    assert all(".conv" in name and name.startswith("layer") for name in params)
    assert not any("shortcut" in name or "bn" in name for name in params)


def test_profile_accepts_plain_and_wrapped_mappings():
    assert load_profile({"a.weight": 0.5}) == {"a.weight": 0.5}
    assert load_profile({"prune_ratios": {"a.weight": 0.9}}) == {"a.weight": 0.9}


def test_unknown_profile_names_are_listed_with_close_matches():
    ratios = {"layer1.0.conv1.weight": 0.75, "layer1.0.conv3.weight": 0.75, "nonsense": 0.5}
    with pytest.raises(ValueError) as error:
        resolve_profile(ResNet18(nf=8), ratios)
    assert str(error.value) == (
        "profile names parameters the model does not have: 'layer1.0.conv3.weight' (did you mean "
        "'layer1.0.conv2.weight' or 'layer1.0.conv1.weight' or 'layer4.0.conv2.weight'?); 'nonsense'"
    )


@pytest.mark.parametrize(
    ("profile", "message"),
    [
        ({"a.weight": 1.0}, "profile sparsity of 'a.weight' must be in [0, 1), got 1.0"),
        ({"a.weight": float("nan")}, "profile sparsity of 'a.weight' must be in [0, 1), got nan"),
        ({}, "profile names no parameter"),
        (3, "profile must be a mapping {parameter_name: sparsity} or the path of a YAML file, got int"),
        ("/no/such/profile.yaml", "profile file '/no/such/profile.yaml' does not exist"),
    ],
)
def test_bad_profiles_are_rejected(profile, message):
    with pytest.raises(ValueError) as error:
        load_profile(profile)
    assert str(error.value) == message


def test_profile_file_without_prune_ratios_is_rejected(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("ratios: {a: 0.5}\n")
    with pytest.raises(ValueError, match="must hold a mapping 'prune_ratios"):
        load_profile(path)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (
            "prune_ratios:\n  conv2.weight: 0.5\n  conv3.weight: [0.5\n",
            "(line 4, column 1): expected ',' or ']', but got '<stream end>'",
        ),
        (
            "prune_ratios: {conv2.weight: 0.5\n",
            "(line 2, column 1): expected ',' or '}', but got '<stream end>'",
        ),
        (
            "prune_ratios:\n  conv2.weight: 0.5\n  conv2.weight: 0.9\n",
            "(line 3, column 3): duplicate key 'conv2.weight' (first given on line 2)",
        ),
    ],
)
def test_profile_file_that_is_not_valid_yaml_names_the_file_and_line(tmp_path, text, problem):
    path = tmp_path / "p.yaml"
    path.write_text(text)
    with pytest.raises(ValueError) as error:
        load_profile(path)
    assert str(error.value) == f"profile file {str(path)!r} is not valid YAML {problem}"
