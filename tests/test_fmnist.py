"""Split Fashion-MNIST: the real Debian copy, torchvision's layout, missing or corrupt files, the CLI."""

from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from avalanche_sparcl import benchmarks
from avalanche_sparcl.benchmarks import (
    FMNIST_DEFAULT_ROOT,
    FMNIST_FILES,
    DatasetFormatError,
    DatasetNotFoundError,
    check_fmnist_files,
    fmnist_files,
    load_fmnist,
    split_fmnist,
)
from avalanche_sparcl.experiments.cli import main
from avalanche_sparcl.experiments.config import BENCHMARK_SHAPES, ConfigError, load_config
from avalanche_sparcl.experiments.runner import SMOKE_EXPERIENCES, build_model

HOW_TO_GET = (
    "Get it with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu: the files go to "
    "/usr/share/datasets/fashion-mnist, read when benchmark.dataset_root is unset) or in Python with "
    "`torchvision.datasets.FashionMNIST(root, download=True)`, then set `dataset_root: root`."
)
ALL_FILES = ", ".join(FMNIST_FILES.values())
N_TRAIN, N_TEST = 20, 10  # 2 and 1 per class: every experience of 2 classes has data


# --- the real data (Debian's dataset-fashion-mnist) ---------------------------------------------


@pytest.fixture(scope="module")
def real_tensors():
    try:
        fmnist_files()
    except DatasetNotFoundError:
        pytest.skip(f"no Fashion-MNIST in {FMNIST_DEFAULT_ROOT}: apt-get install dataset-fashion-mnist")
    return load_fmnist()


@pytest.fixture(scope="module")
def real_benchmark(real_tensors):
    return split_fmnist()


def test_real_data_is_the_full_fashion_mnist(real_tensors):
    (train_x, train_y), (test_x, test_y) = real_tensors
    assert train_x.shape == (60000, 1, 28, 28) and test_x.shape == (10000, 1, 28, 28)
    assert train_x.dtype == test_x.dtype == torch.float32
    assert train_y.dtype == test_y.dtype == torch.int64
    for images in (train_x, test_x):
        assert images.min().item() == 0.0 and images.max().item() == 1.0
    assert torch.bincount(train_y).tolist() == [6000] * 10
    assert torch.bincount(test_y).tolist() == [1000] * 10


def test_real_benchmark_has_5_experiences_of_2_classes_in_natural_order(real_benchmark):
    train, test = real_benchmark.train_stream, real_benchmark.test_stream
    assert len(train) == len(test) == 5
    assert [len(e.dataset) for e in train] == [12000] * 5
    assert [len(e.dataset) for e in test] == [2000] * 5
    for index, (train_exp, test_exp) in enumerate(zip(train, test, strict=True)):
        expected = [2 * index, 2 * index + 1]
        assert sorted(train_exp.classes_in_this_experience) == expected
        assert sorted(test_exp.classes_in_this_experience) == expected
    x, y, _ = train[0].dataset[0]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and y in (0, 1)


# --- synthetic idx files --------------------------------------------------------------------------


def idx_bytes(magic: int, array: np.ndarray) -> bytes:
    """An idx file: big-endian magic, one big-endian size per dimension, then the bytes."""
    return struct.pack(f">I{array.ndim}I", magic, *array.shape) + array.astype(np.uint8).tobytes()


def synthetic_fmnist() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    pixels = {
        split: rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        for split, n in (("train", N_TRAIN), ("test", N_TEST))
    }
    pixels["train"][0, 0, 0], pixels["train"][1, 0, 0] = 255, 0  # both ends of the range
    return {
        "train_images": pixels["train"],
        "train_labels": np.arange(N_TRAIN, dtype=np.uint8) % 10,
        "test_images": pixels["test"],
        "test_labels": np.arange(N_TEST, dtype=np.uint8)[::-1].copy(),
    }


def write_fmnist(folder: Path, arrays: dict[str, np.ndarray], compressed: bool) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for key, array in arrays.items():
        data = idx_bytes(0x803 if key.endswith("images") else 0x801, array)
        name = FMNIST_FILES[key]
        if compressed:
            (folder / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / name).write_bytes(data)


def expected_tensors(arrays: dict[str, np.ndarray], split: str) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.tensor(arrays[f"{split}_images"], dtype=torch.float32).unsqueeze(1) / 255
    return images, torch.tensor(arrays[f"{split}_labels"], dtype=torch.long)


@pytest.mark.parametrize(
    ("layout", "compressed"),
    [("FashionMNIST/raw", False), ("FashionMNIST/raw", True), (".", False), (".", True)],
    ids=["torchvision-plain", "torchvision-gz", "root-plain", "root-gz"],
)
def test_idx_files_read_back_exactly(tmp_path, layout, compressed):
    arrays = synthetic_fmnist()
    write_fmnist(tmp_path / layout, arrays, compressed)
    (train_x, train_y), (test_x, test_y) = load_fmnist(tmp_path)
    for (x, y), split in (((train_x, train_y), "train"), ((test_x, test_y), "test")):
        images, labels = expected_tensors(arrays, split)
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert torch.equal(x, images) and torch.equal(y, labels)
    assert train_x.shape == (20, 1, 28, 28) and test_x.shape == (10, 1, 28, 28)
    assert (train_x[0, 0, 0, 0].item(), train_x[1, 0, 0, 0].item()) == (1.0, 0.0)
    assert test_y.tolist() == [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]


def test_benchmark_from_torchvision_layout_splits_classes_in_natural_order(tmp_path):
    arrays = synthetic_fmnist()
    write_fmnist(tmp_path / "FashionMNIST" / "raw", arrays, compressed=True)
    benchmark = split_fmnist(tmp_path)
    train_images, _ = expected_tensors(arrays, "train")
    for index, experience in enumerate(benchmark.train_stream):
        assert sorted(experience.classes_in_this_experience) == [2 * index, 2 * index + 1]
        assert len(experience.dataset) == 4 and len(benchmark.test_stream[index].dataset) == 2
        for x, y, _ in experience.dataset:
            # train label of image i is i % 10: images i and i + 10 are class i
            assert any(torch.equal(x, train_images[i]) for i in (y, y + 10))
    task_benchmark = split_fmnist(tmp_path, n_experiences=2, return_task_id=True)
    assert [e.task_label for e in task_benchmark.train_stream] == [0, 1]
    assert [sorted(e.classes_in_this_experience) for e in task_benchmark.train_stream] == [
        [0, 1, 2, 3, 4],
        [5, 6, 7, 8, 9],
    ]


def test_plain_files_win_over_gz_and_the_root_expands_vars(tmp_path, monkeypatch):
    """torchvision leaves both the .gz and the extracted files in raw/: the plain ones are read."""
    arrays = synthetic_fmnist()
    raw = tmp_path / "FashionMNIST" / "raw"
    write_fmnist(raw, arrays, compressed=False)
    write_fmnist(raw, {k: 255 - v if k.endswith("images") else v for k, v in arrays.items()}, compressed=True)
    monkeypatch.setenv("FMNIST_TEST_ROOT", str(tmp_path))
    assert fmnist_files("$FMNIST_TEST_ROOT") == {key: raw / name for key, name in FMNIST_FILES.items()}
    (train_x, _), _ = load_fmnist("$FMNIST_TEST_ROOT")
    assert torch.equal(train_x, expected_tensors(arrays, "train")[0])


# --- missing and corrupt files --------------------------------------------------------------------


def test_missing_data_under_a_root_names_both_folders_and_both_ways_to_get_it(tmp_path):
    root = tmp_path / "empty"
    with pytest.raises(DatasetNotFoundError) as raised:
        split_fmnist(root)
    message = str(raised.value)
    assert "apt-get install dataset-fashion-mnist" in message
    assert "torchvision.datasets.FashionMNIST" in message
    assert message == (
        f"split_fmnist: data not found under dataset_root {str(root)!r} (searched {root}/FashionMNIST/raw "
        f"and {root}); missing 4 of the 4 idx files (plain or .gz): {ALL_FILES}. {HOW_TO_GET}"
    )


def test_missing_default_data_names_the_debian_folder(tmp_path, monkeypatch):
    assert FMNIST_DEFAULT_ROOT == Path("/usr/share/datasets/fashion-mnist")
    monkeypatch.setattr(benchmarks, "FMNIST_DEFAULT_ROOT", tmp_path / "absent")
    with pytest.raises(DatasetNotFoundError) as raised:
        split_fmnist()
    assert str(raised.value) == (
        f"split_fmnist: data not found in {tmp_path / 'absent'} (the default when benchmark.dataset_root "
        f"is unset); missing 4 of the 4 idx files (plain or .gz): {ALL_FILES}. {HOW_TO_GET}"
    )


def test_a_partial_copy_lists_only_its_missing_files(tmp_path):
    arrays = synthetic_fmnist()
    del arrays["test_labels"]
    write_fmnist(tmp_path / "FashionMNIST" / "raw", arrays, compressed=True)
    with pytest.raises(DatasetNotFoundError) as raised:
        split_fmnist(tmp_path)
    assert str(raised.value) == (
        f"split_fmnist: data not found under dataset_root {str(tmp_path)!r} (searched "
        f"{tmp_path}/FashionMNIST/raw and {tmp_path}); missing 1 of the 4 idx files (plain or .gz) in "
        f"{tmp_path}/FashionMNIST/raw: t10k-labels-idx1-ubyte. {HOW_TO_GET}"
    )


@pytest.mark.parametrize("compressed", [False, True], ids=["plain", "gz"])
def test_a_file_with_a_foreign_magic_number_is_named(tmp_path, compressed):
    arrays = synthetic_fmnist()
    write_fmnist(tmp_path, arrays, compressed)
    name = FMNIST_FILES["train_images"] + (".gz" if compressed else "")
    data = idx_bytes(0x801, arrays["train_images"])  # a labels header on the images file
    (tmp_path / name).write_bytes(gzip.compress(data) if compressed else data)
    message = (
        f"{tmp_path / name}: not an idx file of the expected kind (magic number 0x00000803 expected, "
        "got 0x00000801); the file is corrupt or from another dataset"
    )
    for read in (load_fmnist, check_fmnist_files):
        with pytest.raises(DatasetFormatError) as raised:
            read(tmp_path)
        assert str(raised.value) == message


def test_count_mismatch_truncation_and_broken_gzip_are_named(tmp_path):
    arrays = synthetic_fmnist()
    write_fmnist(tmp_path, arrays, compressed=False)
    images, labels = (tmp_path / FMNIST_FILES[key] for key in ("train_images", "train_labels"))
    labels.write_bytes(idx_bytes(0x801, arrays["train_labels"][:-1]))
    with pytest.raises(DatasetFormatError) as raised:
        check_fmnist_files(tmp_path)
    assert str(raised.value) == f"{images} holds 20 images but {labels} 19 labels"

    labels.write_bytes(idx_bytes(0x801, arrays["train_labels"]))
    images.write_bytes(idx_bytes(0x803, arrays["train_images"])[:-100])
    with pytest.raises(DatasetFormatError) as raised:
        load_fmnist(tmp_path)
    assert str(raised.value) == (
        f"{images}: idx header promises 15680 bytes of data for sizes (20, 28, 28), the file holds 15580; "
        "the file is truncated or corrupt"
    )

    images.unlink()
    gz = images.with_name(images.name + ".gz")
    gz.write_bytes(b"not gzip at all")
    with pytest.raises(DatasetFormatError) as raised:
        load_fmnist(tmp_path)
    assert str(raised.value) == f"{gz}: cannot read this idx file (Not a gzipped file (b'no'))"


@pytest.mark.parametrize("split", ["train", "test"])
def test_a_class_missing_from_the_labels_is_named_before_loading(tmp_path, split):
    arrays = synthetic_fmnist()
    labels = arrays[f"{split}_labels"]
    labels[labels == 3] = 4  # no example of class 3 left
    if split == "train":
        labels[labels == 8] = 9
    write_fmnist(tmp_path, arrays, compressed=True)
    path = tmp_path / f"{FMNIST_FILES[f'{split}_labels']}.gz"
    missing = "classes 3, 8" if split == "train" else "class 3"
    message = (
        f"{path}: no example of {missing} among its {len(labels)} labels; Split Fashion-MNIST needs every "
        "one of its 10 classes in train and test"
    )
    for read in (load_fmnist, check_fmnist_files):
        with pytest.raises(DatasetFormatError) as raised:
            read(tmp_path)
        assert str(raised.value) == message


def test_files_without_images_are_named_before_loading(tmp_path):
    arrays = synthetic_fmnist()
    arrays["test_images"] = arrays["test_images"][:0]
    arrays["test_labels"] = arrays["test_labels"][:0]
    write_fmnist(tmp_path, arrays, compressed=False)
    images = tmp_path / FMNIST_FILES["test_images"]
    for read in (load_fmnist, check_fmnist_files):
        with pytest.raises(DatasetFormatError) as raised:
            read(tmp_path)
        assert str(raised.value) == (
            f"{images}: holds no images; Split Fashion-MNIST needs every class in train and test"
        )


def test_a_truncated_plain_images_file_is_found_by_the_cheap_check(tmp_path):
    arrays = synthetic_fmnist()
    write_fmnist(tmp_path, arrays, compressed=False)
    images = tmp_path / FMNIST_FILES["test_images"]
    images.write_bytes(images.read_bytes()[:-1])
    with pytest.raises(DatasetFormatError) as raised:
        check_fmnist_files(tmp_path)
    assert str(raised.value) == (
        f"{images}: idx header promises 7840 bytes of data for sizes (10, 28, 28), the file holds 7839; "
        "the file is truncated or corrupt"
    )


# --- configs and the command line -----------------------------------------------------------------

FMNIST_ER = """
benchmark: {name: split_fmnist%s}
model: {name: small_cnn}
training: {strategy: er, buffer_size: 50, epochs: 1}
"""


def write_config(folder: Path, dataset_root: Path | None = None, text: str = FMNIST_ER) -> Path:
    path = folder / "fmnist_er.yaml"
    path.write_text(text % ("" if dataset_root is None else f", dataset_root: {dataset_root}"))
    return path


def test_config_without_dataset_root_validates_with_the_default(tmp_path):
    assert BENCHMARK_SHAPES["split_fmnist"].input_shape == (1, 28, 28)
    assert {name: shape.dataset_root for name, shape in BENCHMARK_SHAPES.items()} == {
        "split_digits": "refused",
        "split_fmnist": "optional",
        "split_cifar10": "required",
        "split_cifar100": "required",
        "split_tinyimagenet": "required",
    }
    config = load_config(write_config(tmp_path))
    assert config.benchmark == {
        "name": "split_fmnist",
        "n_experiences": 5,
        "task_labels": False,
        "dataset_root": None,
        "train_per_class": None,
    }
    assert load_config(write_config(tmp_path, tmp_path / "data")).benchmark["dataset_root"] == str(
        tmp_path / "data"
    )
    for model in ("small_cnn", "resnet18"):
        config = load_config(write_config(tmp_path, text=FMNIST_ER.replace("small_cnn", model)))
        net = build_model(config, smoke=True)
        assert net.conv1.in_channels == 1
        assert net(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_split_digits_still_refuses_a_dataset_root(tmp_path):
    path = write_config(tmp_path, tmp_path, FMNIST_ER.replace("split_fmnist", "split_digits"))
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    assert str(raised.value) == (
        f"{path}: benchmark.dataset_root is not accepted for split_digits (its data is embedded)"
    )


def test_cli_without_data_exits_2_with_one_line_and_no_run_folder(tmp_path, capsys):
    root = tmp_path / "empty"
    root.mkdir()
    path = write_config(tmp_path, root)
    assert main(["run", str(path), "--quiet", "--out", str(tmp_path / "runs")]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        f"sparcl-bench: error: {path}: split_fmnist: data not found under dataset_root {str(root)!r} "
        f"(searched {root}/FashionMNIST/raw and {root}); missing 4 of the 4 idx files (plain or .gz): "
        f"{ALL_FILES}. {HOW_TO_GET}\n"
    )
    assert not (tmp_path / "runs").exists()


def test_cli_on_a_corrupt_file_exits_2_and_names_it(tmp_path, capsys):
    arrays = synthetic_fmnist()
    write_fmnist(tmp_path / "data", arrays, compressed=False)
    labels = tmp_path / "data" / FMNIST_FILES["test_labels"]
    labels.write_bytes(b"\x00\x00\x08\x03" + labels.read_bytes()[4:])
    path = write_config(tmp_path, tmp_path / "data")
    assert main(["run", str(path), "--quiet", "--out", str(tmp_path / "runs")]) == 2
    assert capsys.readouterr().err == (
        f"sparcl-bench: error: {path}: {labels}: not an idx file of the expected kind (magic number "
        "0x00000801 expected, got 0x00000803); the file is corrupt or from another dataset\n"
    )
    assert not (tmp_path / "runs").exists()


def test_cli_on_a_missing_class_exits_2_before_making_the_run_folder(tmp_path, capsys):
    arrays = synthetic_fmnist()
    arrays["test_labels"][arrays["test_labels"] == 0] = 1
    write_fmnist(tmp_path / "data", arrays, compressed=False)
    labels = tmp_path / "data" / FMNIST_FILES["test_labels"]
    path = write_config(tmp_path, tmp_path / "data")
    assert main(["run", str(path), "--quiet", "--out", str(tmp_path / "runs")]) == 2
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == (
        "",
        f"sparcl-bench: error: {path}: {labels}: no example of class 0 among its 10 labels; Split "
        "Fashion-MNIST needs every one of its 10 classes in train and test\n",
    )
    assert not (tmp_path / "runs").exists()


def test_smoke_run_of_a_split_fmnist_config(tmp_path, capsys):
    path = write_config(tmp_path, tmp_path / "no-data-needed")
    out = tmp_path / "runs"
    assert main(["run", str(path), "--smoke", "--quiet", "--out", str(out)]) == 0
    run_dir = out / "smoke" / "split_fmnist" / "fmnist_er" / "seed_0"
    results = json.loads((run_dir / "results.json").read_text())
    assert (results["benchmark"], results["method"], results["smoke"]) == ("split_fmnist", "ER", True)
    for kind in ("class_il", "task_il"):
        matrix = results["accuracy_matrix"][kind]
        assert len(matrix) == SMOKE_EXPERIENCES and all(len(row) == 5 for row in matrix)
    assert capsys.readouterr().out.startswith("split_fmnist fmnist_er seed 0: Class-IL ")
