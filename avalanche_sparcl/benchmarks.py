"""Benchmark builders. Split Digits is embedded: scikit-learn ships its 1,797 real 8x8 images."""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from avalanche.benchmarks import nc_benchmark
from avalanche.benchmarks.utils import _make_taskaware_tensor_classification_dataset
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

DIGITS_TEST_FRACTION = 0.25


def split_digits(
    n_experiences: int = 5,
    seed: int = 0,
    return_task_id: bool = False,
    fixed_class_order: list[int] | None = None,
):
    """Split Digits: the 10 digit classes split into ``n_experiences`` experiences.

    Images are 1x8x8 floats in [0, 1]; a stratified 75/25 train/test split that does not depend on
    ``seed`` (the seed only orders the classes, as in Avalanche's Split MNIST). With
    ``return_task_id`` each experience gets its own task label (Task-IL).
    """
    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(digits.target, dtype=torch.long)
    train_x, test_x, train_y, test_y = train_test_split(
        images, labels, test_size=DIGITS_TEST_FRACTION, stratify=labels, random_state=0
    )
    return tensor_benchmark(
        (train_x, train_y), (test_x, test_y), n_experiences, seed, return_task_id, fixed_class_order
    )


def tensor_benchmark(
    train: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor],
    n_experiences: int,
    seed: int = 0,
    return_task_id: bool = False,
    fixed_class_order: list[int] | None = None,
):
    """A class-incremental benchmark from (inputs, labels) tensors, through Avalanche's nc_benchmark."""
    return nc_benchmark(
        _make_taskaware_tensor_classification_dataset(*train),
        _make_taskaware_tensor_classification_dataset(*test),
        n_experiences,
        task_labels=return_task_id,
        seed=seed,
        fixed_class_order=fixed_class_order,
        class_ids_from_zero_in_each_exp=False,
    )


class DatasetNotFoundError(FileNotFoundError):
    """The data of a benchmark is not under its ``dataset_root``.

    Raised before Avalanche is called: offline, Avalanche's classic benchmarks would try to download
    and fail with an unhelpful ``URLError``.
    """


DATASET_FILES: dict[str, tuple[str, ...]] = {
    "split_cifar10": tuple(
        f"cifar-10-batches-py/{name}"
        for name in ("batches.meta", *(f"data_batch_{i}" for i in range(1, 6)), "test_batch")
    ),
    "split_cifar100": ("cifar-100-python/meta", "cifar-100-python/train", "cifar-100-python/test"),
    "split_tinyimagenet": (
        "tiny-imagenet-200/wnids.txt",
        "tiny-imagenet-200/train/",
        "tiny-imagenet-200/val/images/",
        "tiny-imagenet-200/val/val_annotations.txt",
    ),
}
"""Benchmark -> paths expected under ``dataset_root`` (a trailing '/' marks a folder), as the
torchvision / Avalanche loaders read them after their own download step."""


def is_present(path: Path, folder: bool) -> bool:
    return path.is_dir() if folder else path.is_file()


def expand_root(dataset_root: str | Path) -> Path:
    """``dataset_root`` with ``~`` and ``$VARS`` expanded, as a config may write it."""
    return Path(os.path.expandvars(str(dataset_root))).expanduser()


def check_dataset_files(benchmark: str, dataset_root: str | Path) -> Path:
    """Return ``dataset_root`` as a Path if every expected file of ``benchmark`` is there and sound.

    Raises DatasetNotFoundError naming the root and the missing files, or DatasetFormatError naming
    a CIFAR file whose MD5 is not the original's or a Tiny-ImageNet class without images.
    """
    root = expand_root(dataset_root)
    expected = DATASET_FILES[benchmark]
    missing = [name for name in expected if not is_present(root / name, folder=name.endswith("/"))]
    if missing:
        raise DatasetNotFoundError(
            f"{benchmark}: data not found under dataset_root {str(root)!r} ({root.resolve()}); "
            f"missing {len(missing)} of the expected paths: {', '.join(missing)}. "
            "Put the extracted dataset there (see experiments/README.md) or change benchmark.dataset_root."
        )
    if benchmark == "split_tinyimagenet":
        check_tinyimagenet_classes(root)
    else:
        check_cifar_checksums(benchmark, root)
    return root


def cifar_dataset_class(benchmark: str) -> type:
    """torchvision's dataset class of a CIFAR benchmark, which knows each file's MD5."""
    from torchvision.datasets import CIFAR10, CIFAR100

    return CIFAR10 if benchmark == "split_cifar10" else CIFAR100


def check_cifar_checksums(benchmark: str, root: Path) -> None:
    """DatasetFormatError naming the first CIFAR file whose MD5 is not torchvision's.

    Checked here because torchvision's own check, on a mismatch, downloads the archive again (with
    ``download=True``, as Avalanche calls it) or says only "not found or corrupted".
    """
    from torchvision.datasets.utils import check_integrity

    dataset = cifar_dataset_class(benchmark)
    for name, md5 in [
        *dataset.train_list,
        *dataset.test_list,
        (dataset.meta["filename"], dataset.meta["md5"]),
    ]:
        path = root / dataset.base_folder / name
        if not check_integrity(str(path), md5):
            raise DatasetFormatError(
                f"{path}: not the original {dataset.__name__} file (its MD5 is not {md5}): corrupt, "
                "truncated or from another version; extract it again from the original archive"
            )


TINYIMAGENET_CLASSES = 200


def check_tinyimagenet_classes(root: Path) -> None:
    """DatasetFormatError unless wnids.txt names 200 classes and each has train and validation images:
    Avalanche's loader assumes all 200 and fails inside the benchmark otherwise."""
    folder = root / "tiny-imagenet-200"
    wnids_path = folder / "wnids.txt"
    try:
        wnids = list(
            dict.fromkeys(line.strip() for line in wnids_path.read_text().splitlines() if line.strip())
        )
        annotations_path = folder / "val" / "val_annotations.txt"
        validated = {
            fields[1]
            for fields in (line.split("\t") for line in annotations_path.read_text().splitlines())
            if len(fields) > 1
        }
    except (OSError, UnicodeDecodeError) as error:
        raise DatasetFormatError(f"{wnids_path.parent}: cannot read its class lists ({error})") from None
    if len(wnids) != TINYIMAGENET_CLASSES:
        raise DatasetFormatError(
            f"{wnids_path}: names {len(wnids)} classes, Tiny-ImageNet has {TINYIMAGENET_CLASSES}"
        )
    for wnid in wnids:
        images = folder / "train" / wnid / "images"
        if not has_a_file(images):
            raise DatasetFormatError(f"{images}: no training image of class {wnid} (missing or empty folder)")
        if wnid not in validated:
            raise DatasetFormatError(f"{annotations_path}: no validation image of class {wnid}")


def has_a_file(folder: Path) -> bool:
    """Whether ``folder`` is a folder holding at least one file (stops at the first)."""
    try:
        with os.scandir(folder) as entries:
            return any(entry.is_file() for entry in entries)
    except OSError:
        return False


class DatasetFormatError(ValueError):
    """A data file is there but is not what it should be (corrupt, truncated or another dataset's)."""


FMNIST_DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")
"""Where Debian's ``dataset-fashion-mnist`` package puts the four ``.gz`` files: the default root."""
FMNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
"""The original idx files, each read plain or gzipped (``.gz``)."""
FMNIST_IMAGE_SIZE = 28
FMNIST_CLASSES = 10
IDX_IMAGES_MAGIC = 0x00000803
"""idx magic: two zero bytes, type 0x08 (unsigned byte), 3 dimensions (count, rows, columns)."""
IDX_LABELS_MAGIC = 0x00000801
"""idx magic: unsigned bytes, 1 dimension (count)."""
FMNIST_HOW_TO_GET = (
    "Get it with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu: the files go to "
    f"{FMNIST_DEFAULT_ROOT}, read when benchmark.dataset_root is unset) or in Python with "
    "`torchvision.datasets.FashionMNIST(root, download=True)`, then set `dataset_root: root`."
)


def fmnist_folders(dataset_root: str | Path | None) -> list[Path]:
    """The folders searched, in order: Debian's, or torchvision's layout under the root, then the root."""
    if dataset_root is None:
        return [FMNIST_DEFAULT_ROOT]
    root = expand_root(dataset_root)
    return [root / "FashionMNIST" / "raw", root]


def find_idx_file(folder: Path, name: str) -> Path | None:
    """``folder/name``, else ``folder/name.gz``; the plain file wins as it reads faster."""
    for path in (folder / name, folder / f"{name}.gz"):
        if path.is_file():
            return path
    return None


def fmnist_files(dataset_root: str | Path | None = None) -> dict[str, Path]:
    """The four Fashion-MNIST idx files, all from the first searched folder that holds every one.

    Raises DatasetNotFoundError naming the folders searched, the missing files and how to get them.
    """
    folders = fmnist_folders(dataset_root)
    found = [{key: find_idx_file(folder, name) for key, name in FMNIST_FILES.items()} for folder in folders]
    for files in found:
        if all(files.values()):
            return {key: path for key, path in files.items() if path is not None}
    best = min(range(len(folders)), key=lambda i: sum(path is None for path in found[i].values()))
    missing = [FMNIST_FILES[key] for key, path in found[best].items() if path is None]
    if dataset_root is None:
        where = f"in {FMNIST_DEFAULT_ROOT} (the default when benchmark.dataset_root is unset)"
    else:
        where = f"under dataset_root {str(dataset_root)!r} (searched {' and '.join(map(str, folders))})"
    # name the folder only when it holds some of the files: the copy that is incomplete
    partial = f" in {folders[best]}" if len(folders) > 1 and len(missing) < len(FMNIST_FILES) else ""
    raise DatasetNotFoundError(
        f"split_fmnist: data not found {where}; missing {len(missing)} of the {len(FMNIST_FILES)} idx files "
        f"(plain or .gz){partial}: {', '.join(missing)}. {FMNIST_HOW_TO_GET}"
    )


def read_idx(path: Path, magic: int, header_only: bool = False) -> tuple[tuple[int, ...], np.ndarray | None]:
    """The dimensions and unsigned-byte contents of an idx file (plain or gzipped).

    The header is a big-endian magic number (type and number of dimensions) then one big-endian
    32-bit size per dimension. Raises DatasetFormatError naming the file for a wrong magic number
    or a short / corrupt file; ``header_only`` reads the header alone (a cheap check).
    """
    n_dims = magic & 0xFF
    header_size = 4 * (1 + n_dims)
    try:
        with gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb") as stream:
            data = stream.read(header_size) if header_only else stream.read()
    except (OSError, EOFError, zlib.error) as error:
        raise DatasetFormatError(f"{path}: cannot read this idx file ({error})") from None
    found = int.from_bytes(data[:4], "big") if len(data) >= 4 else None
    if found != magic:
        got = "a file shorter than 4 bytes" if found is None else f"{found:#010x}"
        raise DatasetFormatError(
            f"{path}: not an idx file of the expected kind (magic number {magic:#010x} expected, got {got}); "
            "the file is corrupt or from another dataset"
        )
    if len(data) < header_size:
        raise DatasetFormatError(f"{path}: idx header cut short ({len(data)} of {header_size} bytes)")
    dims = tuple(int(size) for size in np.frombuffer(data, dtype=">u4", count=n_dims, offset=4))
    if header_only:
        return dims, None
    expected = int(np.prod(dims))
    if len(data) - header_size != expected:
        raise DatasetFormatError(
            f"{path}: idx header promises {expected} bytes of data for sizes {dims}, the file holds "
            f"{len(data) - header_size}; the file is truncated or corrupt"
        )
    return dims, np.frombuffer(data, dtype=np.uint8, offset=header_size).reshape(dims)


def check_fmnist_split(images: Path, labels: Path, image_dims: tuple[int, ...], n_labels: int) -> None:
    """Images must be 28x28 and as many as the labels."""
    if image_dims[1:] != (FMNIST_IMAGE_SIZE, FMNIST_IMAGE_SIZE):
        raise DatasetFormatError(
            f"{images}: images are {image_dims[1]}x{image_dims[2]}, Fashion-MNIST's are "
            f"{FMNIST_IMAGE_SIZE}x{FMNIST_IMAGE_SIZE}"
        )
    if image_dims[0] != n_labels:
        raise DatasetFormatError(f"{images} holds {image_dims[0]} images but {labels} {n_labels} labels")


def check_fmnist_labels(images_path: Path, labels_path: Path, labels: np.ndarray) -> None:
    """At least one image, labels 0 to 9, and every class among them: each experience of the
    benchmark needs its classes in both train and test (Avalanche fails deep inside otherwise)."""
    if len(labels) == 0:
        raise DatasetFormatError(
            f"{images_path}: holds no images; Split Fashion-MNIST needs every class in train and test"
        )
    if int(labels.max()) >= FMNIST_CLASSES:
        raise DatasetFormatError(
            f"{labels_path}: label {int(labels.max())} found, Fashion-MNIST's are 0 to {FMNIST_CLASSES - 1}"
        )
    counts = np.bincount(labels, minlength=FMNIST_CLASSES)
    missing = [str(label) for label in range(FMNIST_CLASSES) if counts[label] == 0]
    if missing:
        raise DatasetFormatError(
            f"{labels_path}: no example of class{'es' * (len(missing) > 1)} {', '.join(missing)} among its "
            f"{len(labels)} labels; Split Fashion-MNIST needs every one of its {FMNIST_CLASSES} classes "
            "in train and test"
        )


def check_image_file_size(path: Path, dims: tuple[int, ...]) -> None:
    """A plain (not gzipped) idx file's size against its header, from the file system alone."""
    if path.suffix == ".gz":
        return
    expected = int(np.prod(dims))
    held = path.stat().st_size - 4 * (1 + len(dims))
    if held != expected:
        raise DatasetFormatError(
            f"{path}: idx header promises {expected} bytes of data for sizes {dims}, the file holds "
            f"{held}; the file is truncated or corrupt"
        )


def check_fmnist_files(dataset_root: str | Path | None = None) -> dict[str, Path]:
    """:func:`fmnist_files` plus the checks of :func:`load_fmnist` that are cheap enough to run
    before the run folder is made: each header, the image files' sizes, and the labels in full
    (every class present in train and test)."""
    files = fmnist_files(dataset_root)
    for split in ("train", "test"):
        images, labels_path = files[f"{split}_images"], files[f"{split}_labels"]
        image_dims, _ = read_idx(images, IDX_IMAGES_MAGIC, header_only=True)
        (n_labels,), labels = read_idx(labels_path, IDX_LABELS_MAGIC)
        check_fmnist_split(images, labels_path, image_dims, n_labels)
        check_image_file_size(images, image_dims)
        check_fmnist_labels(images, labels_path, labels)
    return files


def load_fmnist_split(images_path: Path, labels_path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """One split as float32 images Nx1x28x28 in [0, 1] and long labels."""
    image_dims, pixels = read_idx(images_path, IDX_IMAGES_MAGIC)
    (n_labels,), labels = read_idx(labels_path, IDX_LABELS_MAGIC)
    check_fmnist_split(images_path, labels_path, image_dims, n_labels)
    check_fmnist_labels(images_path, labels_path, labels)
    images = pixels.astype(np.float32)[:, None]  # a writable copy, which torch.from_numpy wants
    images /= 255
    return torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64))


def load_fmnist(
    dataset_root: str | Path | None = None,
) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """Fashion-MNIST's (train, test) (images, labels) tensors from the idx files; nothing is cached."""
    files = fmnist_files(dataset_root)
    return (
        load_fmnist_split(files["train_images"], files["train_labels"]),
        load_fmnist_split(files["test_images"], files["test_labels"]),
    )


def split_fmnist(
    dataset_root: str | Path | None = None,
    n_experiences: int = 5,
    seed: int = 0,
    return_task_id: bool = False,
):
    """Split Fashion-MNIST: 60,000 / 10,000 real 1x28x28 images, classes in natural order (0-1, 2-3, ...).

    Read offline from the original idx files: by default Debian's ``dataset-fashion-mnist`` copy in
    :data:`FMNIST_DEFAULT_ROOT`; with ``dataset_root``, torchvision's ``<root>/FashionMNIST/raw/``
    or the files directly in ``<root>``. No augmentation, like Split Digits.
    """
    train, test = load_fmnist(dataset_root)
    return tensor_benchmark(
        train, test, n_experiences, seed, return_task_id, fixed_class_order=list(range(FMNIST_CLASSES))
    )


CLASSIC_BENCHMARKS = {"split_cifar10": 10, "split_cifar100": 100, "split_tinyimagenet": TINYIMAGENET_CLASSES}
"""Benchmark -> number of classes, taken in their natural order."""


def classic_benchmark(
    name: str, dataset_root: str | Path, n_experiences: int, seed: int = 0, return_task_id: bool = False
):
    """One of Avalanche's classic benchmarks from a local copy, its data checked first.

    Classes come in their natural order (0-1, 2-3, ...), as in the DER / SparCL protocol; training
    uses Avalanche's default augmentation (random crop, flip).
    """
    root = check_dataset_files(name, dataset_root)
    n_classes = CLASSIC_BENCHMARKS[name]
    train, test = classic_datasets(name, root)
    train_transform, eval_transform = classic_transforms(name)
    # what Avalanche's SplitCIFAR10 / SplitCIFAR100 / SplitTinyImageNet do, with their datasets
    # built here never to download
    return nc_benchmark(
        train_dataset=train,
        test_dataset=test,
        n_experiences=n_experiences,
        task_labels=return_task_id,
        seed=seed,
        fixed_class_order=list(range(n_classes)),
        shuffle=True,
        class_ids_from_zero_in_each_exp=False,
        class_ids_from_zero_from_first_exp=False,
        train_transform=train_transform,
        eval_transform=eval_transform,
    )


def classic_datasets(name: str, root: Path) -> tuple[Any, Any]:
    """The train and test datasets of a classic benchmark from ``root``, with ``download=False``:
    offline data that fails a check is an error naming it, never a download."""
    if name == "split_tinyimagenet":
        from avalanche.benchmarks.datasets import TinyImagenet

        def make(train: bool) -> Any:
            return TinyImagenet(root=root, train=train, download=False)
    else:
        dataset_class = cifar_dataset_class(name)

        def make(train: bool) -> Any:
            return dataset_class(str(root), train=train, download=False)

    try:
        return make(True), make(False)
    except (RuntimeError, OSError, KeyError, ValueError) as error:
        raise DatasetFormatError(
            f"{name}: the data under dataset_root {str(root)!r} cannot be read ({error})"
        ) from None


def classic_transforms(name: str) -> tuple[Any, Any]:
    """Avalanche's default train (augmenting) and eval transforms of a classic benchmark."""
    if name == "split_cifar10":
        from avalanche.benchmarks.classic import ccifar10 as module

        return module._default_cifar10_train_transform, module._default_cifar10_eval_transform
    if name == "split_cifar100":
        from avalanche.benchmarks.classic import ccifar100 as module

        return module._default_cifar100_train_transform, module._default_cifar100_eval_transform
    from avalanche.benchmarks.classic import ctiny_imagenet as module

    return module._default_train_transform, module._default_eval_transform


def split_cifar10(
    dataset_root: str | Path, n_experiences: int = 5, seed: int = 0, return_task_id: bool = False
):
    """Split CIFAR-10 (32x32, 10 classes) from a local copy; see :func:`classic_benchmark`."""
    return classic_benchmark("split_cifar10", dataset_root, n_experiences, seed, return_task_id)


def split_cifar100(
    dataset_root: str | Path, n_experiences: int = 10, seed: int = 0, return_task_id: bool = False
):
    """Split CIFAR-100 (32x32, 100 classes) from a local copy; see :func:`classic_benchmark`."""
    return classic_benchmark("split_cifar100", dataset_root, n_experiences, seed, return_task_id)


def split_tinyimagenet(
    dataset_root: str | Path, n_experiences: int = 10, seed: int = 0, return_task_id: bool = False
):
    """Split Tiny-ImageNet (64x64, 200 classes) from a local copy; see :func:`classic_benchmark`."""
    return classic_benchmark("split_tinyimagenet", dataset_root, n_experiences, seed, return_task_id)
