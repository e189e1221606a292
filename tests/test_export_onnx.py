"""ONNX export with the masked weights as sparse initializers (edge export)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from avalanche.training import Naive
from avalanche.training.plugins import EvaluationPlugin
from torch import nn

from avalanche_sparcl import TDMPlugin
from avalanche_sparcl.export import onnx_export
from avalanche_sparcl.export.onnx_export import check_onnx_outputs, export_onnx
from avalanche_sparcl.models import ResNet18, SmallCNN
from avalanche_sparcl.sparse import DynamicSparsity, TDMSettings, kept_count

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import numpy_helper  # noqa: E402

PROFILE = Path(__file__).resolve().parents[1] / "experiments" / "profiles" / "resnet18_0.90.yaml"
TOLERANCE = 1e-5
FRAMING_BYTES = 64
"""Upper bound on the protobuf framing (tags, lengths, dims, name, data type) of one initializer."""


class Exported:
    """A model, its masks, one batch, and the model exported sparse and dense."""

    def __init__(self, model, masks, batch, directory: Path):
        self.model, self.masks, self.batch = model, masks, batch
        self.sparse_path, self.dense_path = directory / "sparse.onnx", directory / "dense.onnx"
        self.summary = export_onnx(model, masks, batch[:4], self.sparse_path)
        self.dense_summary = export_onnx(model, masks, batch[:4], self.dense_path, sparse_initializers=False)
        self.sparse_model = onnx.load(str(self.sparse_path))
        self.dense_model = onnx.load(str(self.dense_path))


@pytest.fixture(scope="module")
def small_cnn(digits_benchmark, tmp_path_factory):
    """SmallCNN trained for 2 epochs on the first Split Digits experience with TDM (sparsity 0.75)."""
    torch.manual_seed(0)
    model = SmallCNN()
    tdm = TDMPlugin(sparsity=0.75)
    strategy = Naive(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.05),
        train_mb_size=64,
        train_epochs=2,
        plugins=[tdm],
        evaluator=EvaluationPlugin(loggers=[]),
    )
    strategy.train(digits_benchmark.train_stream[0])
    dataset = digits_benchmark.test_stream[0].dataset
    batch = torch.stack([dataset[i][0] for i in range(32)])
    masks = {name: mask.clone() for name, mask in tdm.masks.items()}
    return Exported(model.eval(), masks, batch, tmp_path_factory.mktemp("small_cnn"))


@pytest.fixture(scope="module")
def resnet18(tmp_path_factory):
    """ResNet-18 (nf=16 to stay fast) with the 0.90 profile's masks and non-trivial BatchNorm statistics."""
    torch.manual_seed(0)
    model = ResNet18(10, nf=16)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            nn.init.uniform_(module.weight, 0.5, 1.5)
            nn.init.uniform_(module.bias, -0.2, 0.2)
    sparsity = DynamicSparsity.for_model(model, TDMSettings(profile=PROFILE), lambda: None)
    batch = torch.randn(16, 3, 32, 32)
    masks = {name: mask.clone() for name, mask in sparsity.masks.items()}
    return Exported(model.eval(), masks, batch, tmp_path_factory.mktemp("resnet18"))


MODELS = ["small_cnn", "resnet18"]


def field_bytes(message) -> int:
    """Bytes of a repeated-message field entry: 1-byte tag (field number < 16), length varint, message."""
    size = message.ByteSize()
    return 1 + varint_bytes(size) + size


def varint_bytes(value: int) -> int:
    return max(1, (value.bit_length() + 6) // 7)


def densified(sparse) -> np.ndarray:
    values = numpy_helper.to_array(sparse.values)
    dense = np.zeros(int(np.prod(sparse.dims)), dtype=values.dtype)
    dense[numpy_helper.to_array(sparse.indices)] = values
    return dense.reshape(tuple(sparse.dims))


def test_small_cnn_masks_are_the_tdm_default_layers(small_cnn):
    assert sorted(small_cnn.masks) == ["conv2.weight", "conv3.weight"]
    assert small_cnn.summary.sparse_layers == ("conv2.weight", "conv3.weight")
    assert small_cnn.summary.dense_layers == ()
    assert small_cnn.summary.onnxruntime_checked
    for layer in small_cnn.summary.layers:
        assert layer.op_types == ("Conv",)
        assert layer.kept == kept_count(layer.numel, 0.75)  # TDM shrank back to the target at the end


def test_resnet18_profile_layers_all_go_sparse(resnet18):
    profile = TDMSettings(profile=PROFILE).profile
    assert resnet18.summary.sparse_layers == tuple(profile)
    assert len(resnet18.summary.sparse_layers) == 16
    for layer in resnet18.summary.layers:
        assert layer.kept == kept_count(layer.numel, 0.90)
        assert layer.initializer == layer.name and layer.op_types == ("Conv",)


@pytest.mark.parametrize("model_name", MODELS)
def test_onnxruntime_matches_pytorch(request, model_name):
    exported = request.getfixturevalue(model_name)
    # exported on 4 inputs, checked on 1, 4 and all: the batch dimension is dynamic
    batches = [exported.batch[:1], exported.batch[:4], exported.batch]
    assert check_onnx_outputs(exported.sparse_path, exported.model, batches) <= TOLERANCE
    assert check_onnx_outputs(exported.dense_path, exported.model, exported.batch) <= TOLERANCE


@pytest.mark.parametrize("model_name", MODELS)
def test_sparse_initializers_are_exactly_the_masked_weights(request, model_name):
    exported = request.getfixturevalue(model_name)
    graph = exported.sparse_model.graph
    params = dict(exported.model.named_parameters())
    sparse = {tensor.values.name: tensor for tensor in graph.sparse_initializer}
    assert len(graph.sparse_initializer) == len(exported.masks)
    assert set(sparse) == set(exported.masks)
    assert not set(sparse) & {init.name for init in graph.initializer}
    for name, mask in exported.masks.items():
        tensor = sparse[name]
        kept = int(mask.sum())
        assert list(tensor.dims) == list(mask.shape)
        assert list(tensor.values.dims) == [kept]
        assert tensor.values.data_type == onnx.TensorProto.FLOAT
        assert tensor.indices.data_type == onnx.TensorProto.INT64
        assert list(tensor.indices.dims) == [kept]
        indices = numpy_helper.to_array(tensor.indices)
        np.testing.assert_array_equal(indices, np.flatnonzero(mask.numpy().reshape(-1)))
        np.testing.assert_array_equal(densified(tensor), params[name].detach().numpy())
    # everything else stays a dense initializer, values unchanged
    dense_names = {init.name for init in graph.initializer}
    assert {name for name in params if name not in exported.masks} <= dense_names


@pytest.mark.parametrize("model_name", MODELS)
def test_sparse_file_is_the_dense_file_with_the_masked_weights_swapped(request, model_name):
    """The exact size relation: the files differ only in the swapped initializers."""
    exported = request.getfixturevalue(model_name)
    summary, dense_summary = exported.summary, exported.dense_summary
    assert summary.file_bytes == exported.sparse_path.stat().st_size
    assert dense_summary.file_bytes == exported.dense_path.stat().st_size == summary.dense_file_bytes
    assert dense_summary.sparse_layers == () and not exported.dense_model.graph.sparse_initializer

    sparse_graph, dense_graph = exported.sparse_model.graph, exported.dense_model.graph
    swapped = {init.name: init for init in dense_graph.initializer if init.name in exported.masks}
    sparse = {tensor.values.name: tensor for tensor in sparse_graph.sparse_initializer}
    assert set(swapped) == set(sparse) == set(summary.sparse_layers)

    # 1. apart from the swapped initializers, the two models are identical, byte for byte
    stripped = []
    for model in (exported.sparse_model, exported.dense_model):
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        remaining = [init for init in copy.graph.initializer if init.name not in swapped]
        del copy.graph.initializer[:]
        copy.graph.initializer.extend(remaining)
        del copy.graph.sparse_initializer[:]
        stripped.append(copy.SerializeToString())
    assert stripped[0] == stripped[1]

    # 2. so the file sizes differ by exactly the swapped fields and the graph's length prefix
    difference = sum(field_bytes(swapped[n]) - field_bytes(sparse[n]) for n in swapped)
    difference += varint_bytes(dense_graph.ByteSize()) - varint_bytes(sparse_graph.ByteSize())
    assert dense_summary.file_bytes - summary.file_bytes == difference == summary.saved_bytes

    # 3. each field is its payload (float32 values, int64 indices) plus a few bytes of framing
    payload_saved = 0
    for layer in summary.layers:
        dense_init, tensor = swapped[layer.name], sparse[layer.name]
        assert len(dense_init.raw_data) == 4 * layer.numel
        assert len(tensor.values.raw_data) == 4 * layer.kept
        assert len(tensor.indices.raw_data) == 8 * layer.kept
        assert (layer.dense_bytes, layer.sparse_bytes) == (dense_init.ByteSize(), tensor.ByteSize())
        assert 0 < field_bytes(dense_init) - 4 * layer.numel < FRAMING_BYTES
        assert 0 < field_bytes(tensor) - 12 * layer.kept < FRAMING_BYTES
        payload_saved += 4 * (layer.numel - layer.kept) - 8 * layer.kept
    saved = summary.saved_bytes
    assert 0 < payload_saved - FRAMING_BYTES * len(summary.layers) < saved < payload_saved
    assert summary.file_bytes < dense_summary.file_bytes


def test_export_keeps_train_mode_and_buffers(small_cnn, tmp_path):
    model = small_cnn.model
    model.train()
    state = {name: value.clone() for name, value in model.state_dict().items()}
    try:
        export_onnx(model, small_cnn.masks, small_cnn.batch[:2], tmp_path / "model.onnx")
        assert all(module.training for module in model.modules())
        for name, value in model.state_dict().items():
            assert torch.equal(value, state[name]), name
    finally:
        model.eval()


def test_linear_on_3d_input_stores_its_transposed_weight_sparse(tmp_path):
    """A Linear applied to a 3-D input is exported as MatMul with the weight transposed by constant
    folding under a generated name: the export finds it by value and stores it sparse."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    masks = {"0.weight": torch.rand(32, 16) < 0.2}
    with torch.no_grad():
        model[0].weight.mul_(masks["0.weight"])
    inputs = torch.randn(3, 5, 16)
    summary = export_onnx(model, masks, inputs, tmp_path / "mlp.onnx")
    (layer,) = summary.layers
    assert layer.sparse and layer.op_types == ("MatMul",) and layer.initializer != "0.weight"
    (tensor,) = onnx.load(str(tmp_path / "mlp.onnx")).graph.sparse_initializer
    np.testing.assert_array_equal(densified(tensor), model[0].weight.detach().numpy().T)
    assert check_onnx_outputs(tmp_path / "mlp.onnx", model, inputs) <= TOLERANCE


def test_layer_whose_sparse_form_is_larger_stays_dense(tmp_path):
    """Float32 values plus int64 indices cost 12 bytes per kept entry: above density 1/3 dense wins."""
    torch.manual_seed(0)
    model = SmallCNN()
    masks = {
        "conv2.weight": torch.rand(model.conv2.weight.shape) < 0.5,
        "conv3.weight": torch.rand(model.conv3.weight.shape) < 0.1,
    }
    with torch.no_grad():
        for name, mask in masks.items():
            dict(model.named_parameters())[name].mul_(mask)
    summary = export_onnx(model, masks, torch.rand(2, 1, 8, 8), tmp_path / "model.onnx")
    assert summary.sparse_layers == ("conv3.weight",)
    (dense,) = summary.layers[:1]
    assert dense.reason == "the sparse form would be larger" and dense.sparse_bytes >= dense.dense_bytes
    assert check_onnx_outputs(tmp_path / "model.onnx", model.eval(), torch.rand(8, 1, 8, 8)) <= TOLERANCE


def test_weights_refused_by_onnxruntime_stay_dense(small_cnn, tmp_path, monkeypatch):
    """If ONNX Runtime refused sparse Conv weights, those would stay dense and the Gemm one sparse."""
    model = small_cnn.model
    masks = dict(small_cnn.masks)
    fc1 = model.fc1.weight
    masks["fc1.weight"] = torch.zeros_like(fc1, dtype=torch.bool)
    masks["fc1.weight"].view(-1)[: fc1.numel() // 10] = True
    original = fc1.detach().clone()
    real_run = onnx_export.run_onnxruntime

    def refuse_sparse_conv(onnxruntime, model_bytes, feeds):
        graph = onnx.load_from_string(model_bytes).graph
        if any(tensor.values.name.startswith("conv") for tensor in graph.sparse_initializer):
            return "NotImplemented: sparse Conv weight"
        return real_run(onnxruntime, model_bytes, feeds)

    monkeypatch.setattr(onnx_export, "run_onnxruntime", refuse_sparse_conv)
    try:
        with torch.no_grad():
            fc1.mul_(masks["fc1.weight"])
        summary = export_onnx(model, masks, small_cnn.batch[:4], tmp_path / "model.onnx")
        assert summary.sparse_layers == ("fc1.weight",)
        assert summary.dense_layers == ("conv2.weight", "conv3.weight")
        for layer in summary.layers[:2]:
            assert layer.reason == "ONNX Runtime refused it sparse (NotImplemented: sparse Conv weight)"
        assert check_onnx_outputs(tmp_path / "model.onnx", model, small_cnn.batch) <= TOLERANCE
    finally:
        with torch.no_grad():
            fc1.copy_(original)


def test_export_refuses_masks_that_do_not_fit(small_cnn, tmp_path):
    model, batch, path = small_cnn.model, small_cnn.batch[:2], tmp_path / "model.onnx"
    with pytest.raises(ValueError, match="does not have: nope.weight"):
        export_onnx(model, {"nope.weight": torch.ones(3, dtype=torch.bool)}, batch, path)
    with pytest.raises(ValueError, match="has shape"):
        export_onnx(model, {"conv2.weight": torch.ones(3, dtype=torch.bool)}, batch, path)
    with pytest.raises(ValueError, match="expected torch.bool"):
        export_onnx(model, {"conv2.weight": small_cnn.masks["conv2.weight"].float()}, batch, path)
    unmasked = {"fc1.weight": torch.zeros_like(model.fc1.weight, dtype=torch.bool)}
    with pytest.raises(ValueError, match=r"pruned entries of 'fc1.weight' are not zero"):
        export_onnx(model, unmasked, batch, path)
    assert not path.exists()


def test_missing_extra_names_the_install_command(small_cnn, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ImportError, match=r"pip install \".\[export\]\" in a clone"):
        export_onnx(small_cnn.model, small_cnn.masks, small_cnn.batch[:2], tmp_path / "model.onnx")
    with pytest.raises(ImportError, match=r"pip install \".\[export\]\" in a clone"):
        check_onnx_outputs(small_cnn.sparse_path, small_cnn.model, small_cnn.batch)


def test_importing_the_package_does_not_import_onnx():
    code = (
        "import sys, avalanche_sparcl, avalanche_sparcl.export, avalanche_sparcl.export.onnx_export; "
        "assert 'onnx' not in sys.modules and 'onnxruntime' not in sys.modules, 'onnx imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
