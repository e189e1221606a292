"""A run folder from elsewhere runs no code, and a resume continues only the run that was interrupted.

``checkpoint.pkl`` is a pickle: resuming it runs whatever it names. So ``sparcl-bench`` resumes only
checkpoints signed with this user's key for this run and seed, and ``export`` reads the weights-only
``model.pt``, never the pickle. Each refusal is exit code 2 and one line.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import stat
import struct
from pathlib import Path

import dill
import numpy as np
import pytest
import torch

from avalanche_sparcl.checkpointing import (
    HEADER_FORMAT,
    KEY_ENVIRONMENT,
    SIGNATURE_FORMAT,
    CheckpointError,
    checkpoint_key,
    maybe_resume,
    save_checkpoint,
)
from avalanche_sparcl.experiments.cli import main
from avalanche_sparcl.experiments.config import load_config
from avalanche_sparcl.experiments.fingerprint import checkpoint_run_id, run_identity
from avalanche_sparcl.experiments.runner import RunOptions, run_experiment

CONFIG_DIR = Path(__file__).resolve().parents[1] / "experiments" / "configs"
UNSIGNED = (
    "not signed with this user's checkpoint key (a run folder from another account or machine, or from an "
    "older version), and loading it could run any code it holds; start the run over with --restart"
)


class SimulatedKillError(Exception):
    pass


class RunsCode:
    """Unpickled, it creates ``marker``: what a crafted checkpoint could do instead."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def crafted_pickle(marker: Path) -> bytes:
    """A torch/dill pickle shaped like Avalanche's checkpoint whose strategy runs a shell command."""
    stream = io.BytesIO()
    torch.save({"strategy": RunsCode(marker), "exp_counter": 1}, stream, pickle_module=dill)
    return stream.getvalue()


def with_valid_header(payload: bytes) -> bytes:
    """``payload`` behind a header with its true SHA-256 and length, as anyone can write."""
    return HEADER_FORMAT % (hashlib.sha256(payload).hexdigest().encode(), len(payload)) + payload


def signed_with_another_key(payload: bytes, run_id: str) -> bytes:
    """``payload`` with a well-formed signature trailer made with a key that is not this user's."""
    import hmac

    mac = hmac.new(
        b"k" * 32, b"avalanche-sparcl checkpoint signature v1\0" + run_id.encode() + b"\0", "sha256"
    )
    mac.update(payload)
    return with_valid_header(payload + SIGNATURE_FORMAT % (run_id.encode(), mac.hexdigest().encode()))


def smoke_config(folder: Path, name: str = "tiny", lr: str = "0.03") -> Path:
    path = folder / f"{name}.yaml"
    base = CONFIG_DIR / "split_digits" / "sparcl_der_0.75_buf200.yaml"
    path.write_text(f"extends: {base}\ntraining: {{lr: {lr}}}\n")
    return path


def smoke_arguments(config_path: Path, out: Path, *extra: str) -> list[str]:
    return ["run", str(config_path), "--out", str(out), "--smoke", "--quiet", *extra]


def interrupted_run(config_path: Path, out: Path, seed: int = 0, smoke: bool = True) -> Path:
    """The run stopped right after the checkpoint of its first experience; its run folder."""
    saved = []

    def stop(record):
        saved.append(record.index)
        raise SimulatedKillError

    with pytest.raises(SimulatedKillError):
        run_experiment(load_config(config_path), seed, RunOptions(out, quiet=True, smoke=smoke), [stop])
    (folder,) = [path for path in out.rglob(f"seed_{seed}") if path.is_dir()]
    assert saved == [0] and (folder / "checkpoint.pkl").is_file()
    return folder


def one_error_line(capsys) -> str:
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.endswith("\n"), error
    return error.rstrip("\n")


def run_id_of(config_path: Path, seed: int = 0) -> str:
    return checkpoint_run_id(run_identity(load_config(config_path), smoke=True), seed)


# resume: a checkpoint not signed by this user is never unpickled


@pytest.mark.parametrize("signature", ["unsigned", "another-key"])
def test_a_crafted_checkpoint_with_a_valid_header_is_not_run_on_resume(tmp_path, capsys, signature):
    config_path = smoke_config(tmp_path)
    checkpoint = interrupted_run(config_path, tmp_path / "runs") / "checkpoint.pkl"
    marker = tmp_path / "payload_ran"
    payload = crafted_pickle(marker)
    if signature == "unsigned":
        checkpoint.write_bytes(with_valid_header(payload))
    else:
        checkpoint.write_bytes(signed_with_another_key(payload, run_id_of(config_path)))
    exit_code = main(smoke_arguments(config_path, tmp_path / "runs"))
    assert not marker.exists()  # the payload did not run
    assert exit_code == 2
    assert one_error_line(capsys) == f"sparcl-bench: error: {checkpoint}: {UNSIGNED}"
    assert main(smoke_arguments(config_path, tmp_path / "runs", "--restart")) == 0
    assert not marker.exists()


def test_a_checksummed_foreign_payload_is_one_line(tmp_path, capsys):
    config_path = smoke_config(tmp_path)
    checkpoint = interrupted_run(config_path, tmp_path / "runs") / "checkpoint.pkl"
    stream = io.BytesIO()
    torch.save({"weights": torch.zeros(3)}, stream)
    checkpoint.write_bytes(with_valid_header(stream.getvalue()))
    assert main(smoke_arguments(config_path, tmp_path / "runs")) == 2
    assert one_error_line(capsys) == f"sparcl-bench: error: {checkpoint}: {UNSIGNED}"


# resume: only the run (config and seed) the checkpoint was signed for


@pytest.mark.parametrize("source", ["another-config", "another-seed"])
def test_a_checkpoint_copied_from_another_run_is_refused(tmp_path, capsys, source):
    config_path = smoke_config(tmp_path)
    folder = interrupted_run(config_path, tmp_path / "runs")
    if source == "another-config":
        other = interrupted_run(smoke_config(tmp_path, "other", lr="0.05"), tmp_path / "other")
        other_run_id = run_id_of(tmp_path / "other.yaml")
    else:
        other = interrupted_run(config_path, tmp_path / "other", seed=1)
        other_run_id = run_id_of(config_path, seed=1)
    shutil.copyfile(other / "checkpoint.pkl", folder / "checkpoint.pkl")  # run.json still matches
    assert main(smoke_arguments(config_path, tmp_path / "runs")) == 2
    assert one_error_line(capsys) == (
        f"sparcl-bench: error: {folder / 'checkpoint.pkl'}: a checkpoint of another run (signed for run "
        f"{other_run_id[:16]}, this is run {run_id_of(config_path)[:16]}), copied or left here; start the "
        "run over with --restart"
    )
    assert not (folder / "results.json").exists()


def idx_bytes(magic: int, array: np.ndarray) -> bytes:
    return struct.pack(f">I{array.ndim}I", magic, *array.shape) + array.astype(np.uint8).tobytes()


def write_fmnist(folder: Path, seed: int) -> None:
    """Tiny Fashion-MNIST idx files (4 training and 2 test images per class), pixels drawn from ``seed``."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, count in (("train", 40), ("t10k", 20)):
        images = rng.integers(0, 256, (count, 28, 28), dtype=np.uint8)
        (folder / f"{prefix}-images-idx3-ubyte").write_bytes(idx_bytes(0x803, images))
        labels = np.arange(count, dtype=np.uint8) % 10
        (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(idx_bytes(0x801, labels))


def test_data_files_replaced_between_a_kill_and_the_resume_are_refused(tmp_path, capsys):
    data = tmp_path / "data"
    write_fmnist(data, seed=0)
    config_path = tmp_path / "fmnist.yaml"
    config_path.write_text(
        f"benchmark: {{name: split_fmnist, dataset_root: {data}}}\n"
        "model: {name: small_cnn, width: 4}\n"
        "training: {strategy: er, buffer_size: 20, epochs: 1, batch_size: 8}\n"
    )
    folder = interrupted_run(config_path, tmp_path / "runs", smoke=False)
    checkpoint = (folder / "checkpoint.pkl").read_bytes()
    images = data / "train-images-idx3-ubyte"
    size = images.stat().st_size
    other_pixels = np.random.default_rng(1).integers(0, 256, (40, 28, 28), dtype=np.uint8)
    images.write_bytes(idx_bytes(0x803, other_pixels))  # the same size and header, other images
    assert images.stat().st_size == size
    arguments = ["run", str(config_path), "--out", str(tmp_path / "runs"), "--quiet"]
    assert main(arguments) == 2
    assert one_error_line(capsys) == (
        f"sparcl-bench: error: {folder} holds an interrupted run of another configuration (differs in "
        "data.train-images-idx3-ubyte.sha256); start it over with --restart, or use another --out"
    )
    assert (folder / "checkpoint.pkl").read_bytes() == checkpoint


def test_the_identity_of_a_run_names_its_data_files_by_content(tmp_path):
    data = tmp_path / "data"
    write_fmnist(data, seed=0)
    config_path = tmp_path / "fmnist.yaml"
    config_path.write_text(
        f"benchmark: {{name: split_fmnist, dataset_root: {data}}}\nmodel: {{name: small_cnn}}\n"
        "training: {strategy: er, buffer_size: 20}\n"
    )
    config = load_config(config_path)
    identity = run_identity(config, smoke=False)
    assert identity["data"] == {
        path.name: {"bytes": path.stat().st_size, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
        for path in sorted(data.iterdir())
    }
    assert "data" not in run_identity(config, smoke=True)  # smoke runs read random tensors


# export: reads model.pt (weights only), never checkpoint.pkl


@pytest.fixture(scope="module")
def finished_smoke_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("finished")
    assert main(smoke_arguments(smoke_config(folder), folder / "runs")) == 0
    (run_dir,) = [path for path in (folder / "runs").rglob("seed_0") if path.is_dir()]
    assert (run_dir / "model.pt").is_file()
    return run_dir


def test_export_never_unpickles_the_checkpoint(finished_smoke_run, tmp_path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(finished_smoke_run, run_dir)
    marker = tmp_path / "payload_ran"
    (run_dir / "checkpoint.pkl").write_bytes(with_valid_header(crafted_pickle(marker)))
    exit_code = main(["export", str(run_dir), "--out", str(tmp_path / "export")])
    assert not marker.exists()  # the payload did not run
    assert exit_code == 0
    assert (tmp_path / "export" / "model.sparse").is_file()


def test_export_of_a_crafted_model_file_runs_no_code_and_is_one_line(finished_smoke_run, tmp_path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(finished_smoke_run, run_dir)
    marker = tmp_path / "payload_ran"
    (run_dir / "model.pt").write_bytes(crafted_pickle(marker))
    assert main(["export", str(run_dir), "--out", str(tmp_path / "export")]) == 2
    assert one_error_line(capsys) == (
        f"sparcl-bench: error: {run_dir / 'model.pt'}: not a trained model written by sparcl-bench (it does "
        "not load as tensors and plain values only: UnpicklingError); start the run over with --restart"
    )
    assert not marker.exists()


def test_export_refuses_the_model_file_of_another_run(finished_smoke_run, tmp_path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(finished_smoke_run, run_dir)
    record = torch.load(run_dir / "model.pt", weights_only=True)
    torch.save({**record, "seed": 1}, run_dir / "model.pt")
    assert main(["export", str(run_dir), "--out", str(tmp_path / "export")]) == 2
    assert one_error_line(capsys) == (
        f"sparcl-bench: error: {run_dir / 'model.pt'}: the trained model of another run (its fingerprint or "
        "seed differs from results.json's), copied or left here; start the run over with --restart"
    )


def test_export_of_a_run_without_a_model_file_is_one_line(finished_smoke_run, tmp_path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(finished_smoke_run, run_dir)
    (run_dir / "model.pt").unlink()
    assert main(["export", str(run_dir), "--out", str(tmp_path / "export")]) == 2
    assert one_error_line(capsys) == (
        f"sparcl-bench: error: {run_dir}: no model.pt, so the trained model is not there (runs finished by "
        "version 0.3.0 or earlier have none); start the run over with --restart"
    )


# the key, and signed checkpoints in scripts


def tiny_strategy():
    from avalanche.training import Naive
    from avalanche.training.plugins import EvaluationPlugin

    model = torch.nn.Linear(3, 2)
    return Naive(
        model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), evaluator=EvaluationPlugin()
    )


def test_the_key_is_made_on_first_use_private_under_the_config_home(tmp_path, monkeypatch):
    monkeypatch.delenv(KEY_ENVIRONMENT)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    key = checkpoint_key()
    path = tmp_path / "config" / "avalanche-sparcl" / "checkpoint.key"
    assert path.read_text() == key.hex() + "\n" and len(key) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert checkpoint_key() == key


def test_a_key_others_can_read_is_refused_before_the_run_folder(tmp_path, capsys, monkeypatch):
    key_path = tmp_path / "shared.key"
    key_path.write_text("ab" * 32 + "\n")
    key_path.chmod(0o644)
    monkeypatch.setenv(KEY_ENVIRONMENT, str(key_path))
    assert main(smoke_arguments(smoke_config(tmp_path), tmp_path / "runs")) == 2
    assert one_error_line(capsys) == (
        f"sparcl-bench: error: {key_path}: the checkpoint key must belong to you and be private (anyone who "
        "can read or change it can make checkpoints that run code when resumed); chmod 600 "
        f"{key_path}"
    )
    assert not (tmp_path / "runs").exists()


def test_a_key_that_cannot_be_made_names_the_way_out(tmp_path, capsys, monkeypatch):
    (tmp_path / "a_file").write_text("")
    key_path = tmp_path / "a_file" / "checkpoint.key"
    monkeypatch.setenv(KEY_ENVIRONMENT, str(key_path))
    assert main(smoke_arguments(smoke_config(tmp_path), tmp_path / "runs")) == 2
    assert one_error_line(capsys) == (
        f"sparcl-bench: error: {key_path}: cannot create the checkpoint key ({tmp_path / 'a_file'}: File "
        f"exists); set {KEY_ENVIRONMENT} to a file you can write"
    )


def test_a_signed_checkpoint_resumes_only_for_its_run_and_key(tmp_path):
    run_id, other_run = "a" * 64, "b" * 64
    checkpoint = save_checkpoint(tiny_strategy(), tmp_path / "checkpoint.pkl", run_id=run_id)
    assert maybe_resume(tiny_strategy(), checkpoint, run_id=run_id)[1] == 0
    assert maybe_resume(tiny_strategy(), checkpoint)[1] == 0  # checked with this user's key
    with pytest.raises(CheckpointError) as raised:
        maybe_resume(tiny_strategy(), checkpoint, run_id=other_run)
    assert str(raised.value) == (
        f"{checkpoint}: a checkpoint of another run (signed for run {'a' * 16}, this is run {'b' * 16}), "
        "copied or left here"
    )
    for key, run in ((b"x" * 32, run_id), (b"x" * 32, None)):
        with pytest.raises(CheckpointError) as raised:
            maybe_resume(tiny_strategy(), checkpoint, run_id=run, key=key)
        assert str(raised.value) == f"{checkpoint}: {UNSIGNED.rsplit('; ', 1)[0]}"


def test_a_checksummed_foreign_payload_raises_checkpoint_error_in_scripts(tmp_path):
    stream = io.BytesIO()
    torch.save({"weights": torch.zeros(3)}, stream)
    checkpoint = tmp_path / "checkpoint.pkl"
    checkpoint.write_bytes(with_valid_header(stream.getvalue()))
    with pytest.raises(CheckpointError) as raised:
        maybe_resume(tiny_strategy(), checkpoint)
    assert str(raised.value) == f"{checkpoint}: not a strategy checkpoint (KeyError: 'strategy')"
