"""Sparse model files for the edge: bit-identical round trips, sizes, and every damaged file refused."""

import hashlib
import importlib.metadata
import io
import math
from pathlib import Path

import pytest
import torch
from avalanche.training import Naive
from avalanche.training.plugins import EvaluationPlugin
from torch import nn

from avalanche_sparcl import TDMPlugin
from avalanche_sparcl.export import (
    LayerSize,
    SparseFileError,
    SparseFileSummary,
    load_sparse,
    read_summary,
    save_sparse,
)
from avalanche_sparcl.export.sparse_file import pack_bits, unpack_bits, write_container
from avalanche_sparcl.models import ResNet18, SmallCNN
from avalanche_sparcl.sparse.dynamic import DynamicSparsity, TDMSettings

PROFILES = Path(__file__).resolve().parents[1] / "experiments" / "profiles"
HEADER_BYTES = 126  # "avalanche-sparcl-sparse v1 sha256=<64> bytes=<20>\n"


INT_OF_SIZE = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def assert_same_bits(expected, actual, name=""):
    """Equal in value and, for floating point, bit for bit: the sign of every zero included."""
    assert actual.dtype == expected.dtype, name
    assert torch.equal(actual, expected), name
    if expected.is_floating_point():
        assert torch.equal(torch.signbit(actual), torch.signbit(expected)), name
        bits = INT_OF_SIZE[expected.element_size()]
        assert torch.equal(actual.view(bits), expected.view(bits)), name


def assert_same_state(expected, actual):
    expected, actual = expected.state_dict(), actual.state_dict()
    assert list(actual) == list(expected)
    for name, tensor in expected.items():
        assert_same_bits(tensor, actual[name], name)


def pruned_negative_zeros(weight, mask):
    """How many pruned entries of ``weight`` hold -0.0."""
    pruned = weight.detach()[~mask]
    return int(((pruned == 0) & torch.signbit(pruned)).sum())


def sign_bytes(weight, mask):
    """What the sign bitmask of a layer's pruned entries costs: 1 bit each, none without a -0.0."""
    return (int((~mask).sum()) + 7) // 8 if pruned_negative_zeros(weight, mask) else 0


def dense_save_bytes(model):
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return len(buffer.getvalue())


def payload_of(path):
    data = path.read_bytes()
    return torch.load(io.BytesIO(data[data.index(b"\n") + 1 :]), weights_only=True)


@pytest.fixture(scope="module")
def trained_small_cnn(digits_benchmark):
    """SmallCNN trained 1 epoch on Split Digits' first two experiences by Naive with TDM at 0.9."""
    torch.manual_seed(0)
    model = SmallCNN()
    tdm = TDMPlugin(sparsity=0.9)
    strategy = Naive(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9),
        train_mb_size=64,
        train_epochs=1,
        plugins=[tdm],
        evaluator=EvaluationPlugin(loggers=[]),
    )
    for experience in digits_benchmark.train_stream[:2]:
        strategy.train(experience)
    return model.cpu().eval(), {name: mask.cpu() for name, mask in tdm.masks.items()}


def resnet_with_profile_masks(sparsity):
    """Random ResNet-18 (nf 64) masked by the reference profile, with non-trivial BatchNorm statistics."""
    torch.manual_seed(0)
    model = ResNet18(num_classes=10, nf=64, in_channels=3)
    settings = TDMSettings(profile=PROFILES / f"resnet18_{sparsity}.yaml")
    engine = DynamicSparsity.for_model(model, settings, run_forward=lambda: None)
    for name, buffer in model.named_buffers():
        if name.endswith("running_mean") or name.endswith("running_var"):
            buffer.copy_(torch.rand_like(buffer) + 0.5)
        elif name.endswith("num_batches_tracked"):
            buffer.fill_(7)
    return model, engine.masks


def linear_with_mask(weight, mask):
    model = nn.Sequential(nn.Linear(weight.shape[1], weight.shape[0]))
    with torch.no_grad():
        model[0].weight.copy_(weight)
    return model, {"0.weight": mask}


# round trips


def test_small_cnn_trained_with_tdm_round_trips_bit_for_bit(trained_small_cnn, tmp_path, digits_benchmark):
    model, masks = trained_small_cnn
    assert sorted(masks) == ["conv2.weight", "conv3.weight"]
    for name, mask in masks.items():  # TDM zeroes by multiplying: -0.0 wherever a pruned weight was negative
        assert pruned_negative_zeros(model.state_dict()[name], mask) > 0, name
    path = tmp_path / "small_cnn.sparse"
    save_sparse(model, masks, path)
    restored = SmallCNN()
    load_sparse(path, restored)
    assert_same_state(model, restored)
    inputs = torch.stack([digits_benchmark.test_stream[0].dataset[i][0] for i in range(16)])
    assert torch.equal(restored.eval()(inputs), model(inputs))


def test_small_cnn_summary_equals_independent_counts(trained_small_cnn, tmp_path):
    model, masks = trained_small_cnn
    path = tmp_path / "small_cnn.sparse"
    summary = save_sparse(model, masks, path)
    weights = model.state_dict()
    for layer in summary.layers:
        assert layer.kept == int(masks[layer.name].sum())
        assert int((weights[layer.name] != 0).sum()) <= layer.kept
    # values + bitmask + sign bits of the pruned entries (16589 -> 2074 bytes, 33178 -> 4148 bytes)
    assert summary.layers == (
        LayerSize("conv2.weight", 18432, 1843, 16589 / 18432, "bitmask", 73728, 1843 * 4 + 2304 + 2074),
        LayerSize("conv3.weight", 36864, 3686, 33178 / 36864, "bitmask", 147456, 3686 * 4 + 4608 + 4148),
    )
    assert summary.masked_dense_bytes == 221184
    assert summary.masked_sparse_bytes == 11750 + 23500
    assert summary.masked_ratio == 35250 / 221184
    assert summary.file_bytes == path.stat().st_size
    assert summary.dense_file_bytes == dense_save_bytes(model)
    assert summary.file_ratio == summary.file_bytes / summary.dense_file_bytes
    assert read_summary(path) == summary


@pytest.mark.parametrize(
    ("sparsity", "kept", "file_ratio_below"),
    [("0.75", 2746368, 0.32), ("0.90", 1098547, 0.18), ("0.95", 549273, 0.13)],
)
def test_resnet18_with_reference_profile_round_trips_bit_for_bit(sparsity, kept, file_ratio_below, tmp_path):
    model, masks = resnet_with_profile_masks(sparsity)
    for name, mask in masks.items():  # masked by multiplying: -0.0 wherever a pruned weight was negative
        assert pruned_negative_zeros(model.state_dict()[name], mask) > 0, name
    path = tmp_path / "resnet18.sparse"
    summary = save_sparse(model, masks, path)
    restored = ResNet18(num_classes=10, nf=64, in_channels=3)
    load_sparse(path, restored)
    assert_same_state(model, restored)

    assert [layer.name for layer in summary.layers] == list(masks)
    assert len(summary.layers) == 16
    for layer in summary.layers:
        mask = masks[layer.name]
        assert (layer.numel, layer.kept) == (mask.numel(), int(mask.sum()))
        assert layer.kept == int((model.state_dict()[layer.name] != 0).sum())
        assert layer.sparsity == 1 - layer.kept / layer.numel
        assert layer.encoding == "bitmask"
        assert layer.dense_bytes == 4 * layer.numel
        # values, 1 bit per entry for the mask, 1 bit per pruned entry for the signs of the zeros
        assert layer.sparse_bytes == 4 * layer.kept + layer.numel // 8 + (layer.numel - layer.kept + 7) // 8
    assert sum(layer.numel for layer in summary.layers) == 10985472
    assert sum(layer.kept for layer in summary.layers) == kept
    assert summary.masked_dense_bytes == 4 * 10985472
    assert summary.masked_sparse_bytes == 4 * kept + 10985472 // 8 + sum(
        (layer.numel - layer.kept + 7) // 8 for layer in summary.layers
    )
    assert summary.masked_ratio <= {"0.75": 0.32, "0.90": 0.20, "0.95": 0.20}[sparsity]
    assert summary.file_bytes == path.stat().st_size
    assert summary.dense_file_bytes == dense_save_bytes(model)
    assert summary.file_ratio < file_ratio_below


def test_very_sparse_layers_store_indices_and_round_trip(tmp_path):
    torch.manual_seed(0)
    model = SmallCNN()
    masks = {}
    for name, kept in (("conv2.weight", 184), ("conv3.weight", 1000)):
        weight = model.state_dict()[name]
        mask = torch.zeros(weight.numel(), dtype=torch.bool)
        mask[torch.randperm(weight.numel())[:kept]] = True
        masks[name] = mask.view_as(weight)
        weight.mul_(masks[name])
    path = tmp_path / "small_cnn.sparse"
    summary = save_sparse(model, masks, path)
    # conv2 (18432 entries): 184 int16 indices, 368 bytes < 2304 bitmask bytes;
    # conv3 (36864 entries, past int16): 1000 int32 indices, 4000 bytes < 4608 bitmask bytes;
    # both plus the sign bits of their pruned entries (18248 -> 2281 bytes, 35864 -> 4483 bytes)
    assert [(layer.encoding, layer.sparse_bytes) for layer in summary.layers] == [
        ("indices", 184 * 4 + 184 * 2 + 2281),
        ("indices", 1000 * 4 + 1000 * 4 + 4483),
    ]
    restored = SmallCNN()
    load_sparse(path, restored)
    assert_same_state(model, restored)
    layers = payload_of(path)["layers"]
    assert (layers["conv2.weight"]["positions"].dtype, layers["conv3.weight"]["positions"].dtype) == (
        torch.int16,
        torch.int32,
    )


def test_the_smaller_of_bitmask_and_indices_is_chosen_per_layer(tmp_path):
    model = nn.Sequential(nn.Linear(100, 100))  # 10000 entries: bitmask 1250 bytes, int16 indices 2 each
    weight = model[0].weight.detach()
    for kept, encoding in ((624, "indices"), (625, "bitmask"), (626, "bitmask")):
        mask = torch.zeros(10000, dtype=torch.bool)
        mask[:kept] = True
        weight.mul_(mask.view(100, 100))
        summary = save_sparse(model, {"0.weight": mask.view(100, 100)}, tmp_path / "m.sparse")
        assert summary.layers[0].encoding == encoding  # the sign bits cost the same either way
        assert summary.layers[0].sparse_bytes == (
            4 * kept + (2 * kept if encoding == "indices" else 1250) + (10000 - kept + 7) // 8
        )


def test_large_layers_index_with_int32(tmp_path):
    model = nn.Sequential(nn.Linear(200, 200))  # 40000 entries: int16 cannot index them
    mask = torch.zeros(40000, dtype=torch.bool)
    mask[[0, 39999]] = True
    model[0].weight.detach().mul_(mask.view(200, 200))
    summary = save_sparse(model, {"0.weight": mask.view(200, 200)}, tmp_path / "m.sparse")
    assert summary.layers[0].sparse_bytes == 2 * 4 + 2 * 4 + (39998 + 7) // 8  # and the signs of 39998 zeros
    assert payload_of(tmp_path / "m.sparse")["layers"]["0.weight"]["positions"].tolist() == [0, 39999]
    restored = nn.Sequential(nn.Linear(200, 200))
    load_sparse(tmp_path / "m.sparse", restored)
    assert_same_state(model, restored)


@pytest.mark.parametrize(
    ("dtype", "value_bytes"), [(torch.float64, 8), (torch.float16, 2), (torch.bfloat16, 2)]
)
def test_values_keep_the_weight_dtype(dtype, value_bytes, tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 8)).to(dtype)
    mask = torch.rand(8, 16) < 0.5
    model[0].weight.detach().mul_(mask)
    summary = save_sparse(model, {"0.weight": mask}, tmp_path / "m.sparse")
    kept = int(mask.sum())
    assert pruned_negative_zeros(model[0].weight, mask) > 0
    assert summary.layers[0].dense_bytes == 128 * value_bytes
    assert summary.layers[0].sparse_bytes == kept * value_bytes + 16 + (128 - kept + 7) // 8
    restored = nn.Sequential(nn.Linear(16, 8)).to(dtype)
    load_sparse(tmp_path / "m.sparse", restored)
    assert_same_state(model, restored)


def test_a_model_without_masks_is_stored_dense_and_round_trips(tmp_path):
    torch.manual_seed(0)
    model = SmallCNN()
    summary = save_sparse(model, {}, tmp_path / "m.sparse")
    assert summary.layers == ()
    assert math.isnan(summary.masked_ratio)
    restored = SmallCNN()
    load_sparse(tmp_path / "m.sparse", restored)
    assert_same_state(model, restored)


def test_pruned_negative_zeros_are_restored_bit_for_bit_and_dense_tensors_keep_them(tmp_path):
    weight = torch.tensor([[-1.5, -2.0, 0.5], [3.0, -0.25, 4.0], [-1.0, 2.0, -3.0]])
    mask = torch.tensor([[True, False, False], [True, False, True], [False, False, True]])
    model, masks = linear_with_mask(weight * mask, mask)  # masking by multiplication: -0.0 where negative
    with torch.no_grad():
        model[0].bias.copy_(torch.tensor([-0.0, 0.0, -0.0]))
    # pruned entries in flat order: [0,1] -0.0, [0,2] +0.0, [1,1] -0.0, [2,0] -0.0, [2,1] +0.0
    assert torch.signbit(model[0].weight[~mask]).tolist() == [True, False, True, True, False]
    summary = save_sparse(model, masks, tmp_path / "m.sparse")
    assert summary.layers[0].sparse_bytes == 4 * 4 + 2 + 1  # values, 9-bit mask, 5 sign bits
    layer = payload_of(tmp_path / "m.sparse")["layers"]["0.weight"]
    assert layer["negative_zeros"].tolist() == [0b10110000]
    restored, _ = linear_with_mask(torch.ones(3, 3), mask)
    load_sparse(tmp_path / "m.sparse", restored)
    assert_same_state(model, restored)  # bit for bit
    assert torch.equal(restored[0].weight.view(torch.int32), model[0].weight.view(torch.int32))
    assert torch.signbit(restored[0].weight).tolist() == [
        [True, True, False],
        [False, True, False],
        [True, False, True],
    ]
    assert torch.signbit(restored[0].bias).tolist() == [True, False, True]


def test_pruned_negative_zeros_are_restored_with_indices_and_half_precision(tmp_path):
    model = nn.Sequential(nn.Linear(100, 100)).to(torch.float16)  # 10000 entries, 3 kept: indices
    mask = torch.zeros(10000, dtype=torch.bool)
    mask[[5, 500, 9999]] = True
    with torch.no_grad():
        model[0].weight.copy_(-torch.ones(100, 100))
        model[0].weight.view(-1)[:5000] = 1.0
        model[0].weight.mul_(mask.view(100, 100))  # -0.0 at the pruned positions from 5000 on
    summary = save_sparse(model, {"0.weight": mask.view(100, 100)}, tmp_path / "m.sparse")
    assert summary.layers[0].encoding == "indices"
    assert summary.layers[0].sparse_bytes == 3 * 2 + 3 * 2 + (9997 + 7) // 8  # signs of 9997 zeros
    restored = nn.Sequential(nn.Linear(100, 100)).to(torch.float16)
    load_sparse(tmp_path / "m.sparse", restored)
    assert_same_state(model, restored)
    assert int(torch.signbit(restored[0].weight).sum()) == 5000  # 4999 pruned -0.0 and the kept -1.0


def test_layers_without_negative_zeros_store_no_sign_bits(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 8))
    mask = torch.rand(8, 16) < 0.5
    with torch.no_grad():
        model[0].weight.masked_fill_(~mask, 0.0)  # +0.0 everywhere pruned
    summary = save_sparse(model, {"0.weight": mask}, tmp_path / "m.sparse")
    assert summary.layers[0].sparse_bytes == 4 * int(mask.sum()) + 16
    assert payload_of(tmp_path / "m.sparse")["layers"]["0.weight"]["negative_zeros"] is None
    restored = nn.Sequential(nn.Linear(16, 8))
    load_sparse(tmp_path / "m.sparse", restored)
    assert_same_state(model, restored)
    assert not bool(torch.signbit(restored[0].weight[~mask]).any())


def test_pack_bits_matches_numpy_packbits():
    numpy = pytest.importorskip("numpy")
    generator = torch.Generator().manual_seed(0)
    for numel in (0, 1, 7, 8, 9, 1001):
        flags = torch.rand(numel, generator=generator) < 0.3
        packed = pack_bits(flags)
        assert packed.tolist() == numpy.packbits(flags.numpy()).tolist()
        assert torch.equal(unpack_bits(packed, numel), flags)


# what the file says about itself


def test_the_file_describes_itself_and_needs_only_torch_to_read(trained_small_cnn, tmp_path):
    model, masks = trained_small_cnn
    path = tmp_path / "small_cnn.sparse"
    save_sparse(model, masks, path)
    data = path.read_bytes()
    header, payload = data[:HEADER_BYTES], data[HEADER_BYTES:]
    assert header == (
        b"avalanche-sparcl-sparse v1 sha256=%s bytes=%020d\n"
        % (hashlib.sha256(payload).hexdigest().encode(), len(payload))
    )
    contents = torch.load(io.BytesIO(payload), weights_only=True)
    assert sorted(contents) == [
        "dense",
        "dense_state_dict_bytes",
        "format",
        "layers",
        "order",
        "package_version",
        "version",
    ]
    assert (contents["format"], contents["version"]) == ("avalanche-sparcl-sparse", 1)
    assert contents["package_version"] == importlib.metadata.version("avalanche-sparcl")
    assert contents["order"] == list(model.state_dict())
    assert sorted(contents["dense"]) == sorted(set(model.state_dict()) - set(masks))
    layer = contents["layers"]["conv3.weight"]
    assert {key: layer[key] for key in ("shape", "dtype", "numel", "kept", "sparsity", "encoding")} == {
        "shape": [64, 64, 3, 3],
        "dtype": "float32",
        "numel": 36864,
        "kept": 3686,
        "sparsity": 33178 / 36864,
        "encoding": "bitmask",
    }
    assert layer["values"].shape == (3686,) and layer["positions"].shape == (4608,)
    assert layer["negative_zeros"].dtype == torch.uint8 and layer["negative_zeros"].shape == (4148,)
    assert sorted(layer) == [
        "dtype",
        "encoding",
        "kept",
        "negative_zeros",
        "numel",
        "positions",
        "shape",
        "sparsity",
        "values",
    ]


def test_summary_markdown_lists_each_layer_and_the_totals():
    summary = SparseFileSummary(
        path=Path("m.sparse"),
        layers=(LayerSize("a.weight", 1000, 100, 0.9, "bitmask", 4000, 525),),
        file_bytes=700,
        dense_file_bytes=5000,
    )
    assert summary.markdown().splitlines() == [
        "| layer | entries | kept | sparsity | encoding | dense bytes | sparse bytes | ratio |",
        "|---|---|---|---|---|---|---|---|",
        "| a.weight | 1000 | 100 | 0.9000 | bitmask | 4000 | 525 | 0.131 |",
        "| masked layers | 1000 | 100 | | | 4000 | 525 | 0.131 |",
        "| whole file | | | | | 5000 | 700 | 0.140 |",
    ]


# what save_sparse refuses


def test_a_non_zero_weight_at_a_pruned_position_is_refused(tmp_path):
    mask = torch.tensor([[True, False, False], [True, True, False]])
    model, masks = linear_with_mask(torch.tensor([[1.0, 0.0, 0.5], [2.0, 3.0, -4.0]]), mask)
    with pytest.raises(ValueError) as error:
        save_sparse(model, masks, tmp_path / "m.sparse")
    assert str(error.value) == (
        "cannot save '0.weight': 2 of its 3 pruned entries (mask False) are not zero, the first 0.5 at "
        "(0, 2); the mask does not describe this weight (zero the pruned entries, or pass the mask it was "
        "pruned with)"
    )
    assert not (tmp_path / "m.sparse").exists()
    assert list(tmp_path.iterdir()) == []


def test_a_nan_at_a_pruned_position_is_refused(tmp_path):
    model, masks = linear_with_mask(torch.tensor([[1.0, float("nan")]]), torch.tensor([[True, False]]))
    with pytest.raises(
        ValueError, match=r"1 of its 1 pruned entries \(mask False\) are not zero, the first nan"
    ):
        save_sparse(model, masks, tmp_path / "m.sparse")


def test_a_refused_save_leaves_the_previous_file_alone(tmp_path):
    path = tmp_path / "m.sparse"
    model, masks = linear_with_mask(torch.tensor([[1.0, 0.0]]), torch.tensor([[True, False]]))
    save_sparse(model, masks, path)
    before = path.read_bytes()
    with torch.no_grad():
        model[0].weight[0, 1] = 2.0
    with pytest.raises(ValueError, match="not zero"):
        save_sparse(model, masks, path)
    assert path.read_bytes() == before
    assert list(tmp_path.iterdir()) == [path]


@pytest.mark.parametrize(
    ("masks", "message"),
    [
        (
            {"0.weight": torch.ones(2, 2, dtype=torch.bool), "1.weight": torch.ones(2, dtype=torch.bool)},
            "masks name tensors the model's state_dict does not have: 1.weight",
        ),
        (
            {"0.weight": torch.ones(4, dtype=torch.bool)},
            "mask of '0.weight' has shape (4,) but the weight has shape (2, 2)",
        ),
        (
            {"0.weight": torch.ones(2, 2)},
            "mask of '0.weight' is a torch.float32 tensor; masks are bool tensors (True = kept)",
        ),
        (
            {"0.weight": [[True, True], [True, True]]},
            "mask of '0.weight' is list; masks are bool tensors (True = kept)",
        ),
    ],
)
def test_masks_that_do_not_fit_the_model_are_refused(masks, message, tmp_path):
    model, _ = linear_with_mask(torch.ones(2, 2), None)
    with pytest.raises(ValueError) as error:
        save_sparse(model, masks, tmp_path / "m.sparse")
    assert str(error.value) == message


# what load_sparse refuses


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    model = SmallCNN(width=8)
    mask = torch.rand(16, 8, 3, 3) < 0.25
    model.conv2.weight.detach().mul_(mask)
    path = tmp_path / "m.sparse"
    save_sparse(model, {"conv2.weight": mask}, path)
    return path, model


def refusal(path, model=None):
    model = model or SmallCNN(width=8)
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    with pytest.raises(SparseFileError) as error:
        load_sparse(path, model)
    assert all(torch.equal(tensor, before[name]) for name, tensor in model.state_dict().items())
    return str(error.value)


def test_a_corrupted_byte_is_refused(saved):
    path, _ = saved
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    assert refusal(path) == (
        f"{path}: corrupted sparse model file: its SHA-256 differs from the one in its header"
    )


def test_a_damaged_header_is_refused(saved):
    path, _ = saved
    data = bytearray(path.read_bytes())
    data[40] = ord("z")  # inside the SHA-256 digits
    path.write_bytes(bytes(data))
    assert refusal(path) == f"{path}: corrupted sparse model file: its header line is damaged"


def test_bytes_appended_are_refused(saved):
    path, _ = saved
    path.write_bytes(path.read_bytes() + b"\0")
    assert refusal(path) == (
        f"{path}: corrupted sparse model file: its SHA-256 differs from the one in its header"
    )


def test_a_truncated_file_is_refused(saved):
    path, _ = saved
    data = path.read_bytes()
    path.write_bytes(data[:-1])
    assert refusal(path) == f"{path}: truncated sparse model file: {len(data) - 1} of {len(data)} bytes"
    path.write_bytes(data[:HEADER_BYTES])
    assert refusal(path) == f"{path}: truncated sparse model file: {HEADER_BYTES} of {len(data)} bytes"


@pytest.mark.parametrize("length", [1, 20, 60, HEADER_BYTES - 1])
def test_a_file_cut_inside_its_header_is_refused(saved, length):
    path, _ = saved
    path.write_bytes(path.read_bytes()[:length])
    assert refusal(path) == f"{path}: truncated sparse model file: {length} bytes, not even its header"


def test_an_empty_file_is_refused(tmp_path):
    path = tmp_path / "empty.sparse"
    path.write_bytes(b"")
    assert refusal(path) == f"{path}: empty file, not a sparse model file"


def test_a_plain_torch_save_of_a_state_dict_is_refused(tmp_path):
    path = tmp_path / "state_dict.pt"
    torch.save(SmallCNN(width=8).state_dict(), path)
    assert refusal(path) == (
        f"{path}: not a sparse model file (written by avalanche_sparcl.export.save_sparse)"
    )


def test_a_text_file_is_refused(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("avalanche is a continual learning library\n")
    assert refusal(path) == (
        f"{path}: not a sparse model file (written by avalanche_sparcl.export.save_sparse)"
    )


def test_a_newer_format_version_is_refused(saved):
    path, _ = saved
    data = path.read_bytes()
    path.write_bytes(data.replace(b"sparse v1 ", b"sparse v2 ", 1))
    version = importlib.metadata.version("avalanche-sparcl")
    assert refusal(path) == (
        f"{path}: sparse model file of format version 2; this avalanche-sparcl ({version}) reads version 1"
    )


def test_a_checksummed_payload_that_is_not_a_sparse_model_is_refused(tmp_path):
    path = tmp_path / "m.sparse"
    write_container(path, {"format": "something-else", "version": 1})
    assert refusal(path) == (
        f"{path}: malformed sparse model file: its payload says format 'something-else' version 1"
    )


def test_a_masked_layer_whose_bitmask_disagrees_with_its_values_is_refused(saved):
    path, _ = saved
    contents = payload_of(path)
    contents["layers"]["conv2.weight"]["values"] = contents["layers"]["conv2.weight"]["values"][:-1]
    contents["layers"]["conv2.weight"]["kept"] -= 1
    write_container(path, contents)
    assert refusal(path) == (
        f"{path}: malformed sparse model file: masked layer 'conv2.weight': its bitmask does not mark one "
        "entry per value"
    )


@pytest.mark.parametrize(
    ("negative_zeros", "message"),
    [
        (torch.zeros(3, dtype=torch.uint8), "its sign bitmask does not have one bit per pruned entry"),
        (torch.zeros(10000, dtype=torch.bool), "its sign bitmask does not have one bit per pruned entry"),
        ([0], "its sign bitmask does not have one bit per pruned entry"),
        (KeyError, "it does not say which pruned entries are -0.0"),
    ],
)
def test_a_masked_layer_whose_sign_bitmask_is_malformed_is_refused(saved, negative_zeros, message):
    path, _ = saved
    contents = payload_of(path)
    if negative_zeros is KeyError:
        del contents["layers"]["conv2.weight"]["negative_zeros"]
    else:
        contents["layers"]["conv2.weight"]["negative_zeros"] = negative_zeros
    write_container(path, contents)
    assert refusal(path) == f"{path}: malformed sparse model file: masked layer 'conv2.weight': {message}"


def test_another_width_names_the_layers_that_differ(saved):
    path, _ = saved
    message = refusal(path, SmallCNN(width=16))
    assert message == (
        f"{path}: the model does not have the architecture saved in the file: 'conv1.weight' is float32 "
        "(8, 1, 3, 3) in the file but float32 (16, 1, 3, 3) in the model; 'conv1.bias' is float32 (8,) in "
        "the file but float32 (16,) in the model; 'bn1.weight' is float32 (8,) in the file but float32 "
        "(16,) in the model; and 16 more"
    )


def test_missing_and_extra_layers_are_named(tmp_path):
    path = tmp_path / "m.sparse"
    save_sparse(nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)), {}, path)
    assert refusal(path, nn.Sequential(nn.Linear(4, 3))) == (
        f"{path}: the model does not have the architecture saved in the file: '2.weight' (float32 (2, 3)) "
        "is in the file but not in the model; '2.bias' (float32 (2,)) is in the file but not in the model"
    )
    save_sparse(nn.Sequential(nn.Linear(4, 3)), {}, path)
    assert refusal(path, nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))) == (
        f"{path}: the model does not have the architecture saved in the file: '1.weight' (float32 (3,)) is "
        "in the model but not in the file; '1.bias' (float32 (3,)) is in the model but not in the file; "
        "'1.running_mean' (float32 (3,)) is in the model but not in the file; and 2 more"
    )


def test_another_dtype_is_refused(saved):
    path, _ = saved
    message = refusal(path, SmallCNN(width=8).double())
    assert message.startswith(
        f"{path}: the model does not have the architecture saved in the file: 'conv1.weight' is float32 "
        "(8, 1, 3, 3) in the file but float64 (8, 1, 3, 3) in the model;"
    )


def test_save_creates_missing_folders_and_leaves_no_partial_file(tmp_path):
    model, masks = linear_with_mask(torch.tensor([[1.0, 0.0]]), torch.tensor([[True, False]]))
    path = tmp_path / "edge" / "models" / "m.sparse"
    save_sparse(model, masks, path)
    assert list(path.parent.iterdir()) == [path]
    save_sparse(model, masks, path)  # overwrites
    assert list(path.parent.iterdir()) == [path]


def test_save_into_a_folder_that_is_a_file_names_the_path(tmp_path):
    (tmp_path / "taken").write_text("")
    path = tmp_path / "taken" / "m.sparse"
    model, masks = linear_with_mask(torch.tensor([[1.0, 0.0]]), torch.tensor([[True, False]]))
    with pytest.raises(OSError) as error:
        save_sparse(model, masks, path)
    assert error.value.filename in (str(path), str(path.parent))
    assert list(tmp_path.iterdir()) == [tmp_path / "taken"]
