"""Runs one validated config for one seed: benchmark, model, strategy and plugins, Avalanche's loop,
loggers, and a results.json that the report reads.

Data flows one way (DESIGN.md): config -> benchmark + model + strategy + plugins -> Avalanche's
training loop -> metrics -> loggers and results.json. ``run_experiment`` takes per-experience
callbacks, the place where checkpointing will hook in.

A run folder is only reused for the run that produced it: ``run.json`` (written before training)
and results.json carry the run's identity and fingerprint (see ``fingerprint``), a checkpoint is
resumed and a finished run skipped only on an equal fingerprint, and ``run.lock`` keeps a second
process out while one runs it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import platform
import re
import shutil
import time
import warnings
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from avalanche.benchmarks.utils.data_loader import SingleDatasetDataLoader
from avalanche.core import SupervisedPlugin
from avalanche.distributed import DistributedHelper
from avalanche.evaluation.metrics import accuracy_metrics, forgetting_metrics, loss_metrics
from avalanche.logging import CSVLogger, InteractiveLogger, TensorboardLogger
from avalanche.training import DER, ER_ACE, Naive
from avalanche.training.plugins import EvaluationPlugin, ReplayPlugin
from tensorboard.summary.writer.event_file_writer import EventFileWriter, _AsyncWriter
from tensorboard.summary.writer.record_writer import RecordWriter
from torch import nn
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.writer import FileWriter

from avalanche_sparcl import benchmarks
from avalanche_sparcl.atomic_files import PARTIAL_SUFFIX
from avalanche_sparcl.checkpointing import (
    maybe_resume,
    save_checkpoint,
    write_text_atomically,
)
from avalanche_sparcl.distributed import decided_on_rank0, digests_of_all_ranks, rank, world_size
from avalanche_sparcl.experiments.config import (
    BENCHMARK_SHAPES,
    ConfigError,
    ExperimentConfig,
    build_sparse_plugin,
)
from avalanche_sparcl.experiments.fingerprint import differing_keys, fingerprint, run_identity
from avalanche_sparcl.metrics import data_metrics, flops_metrics, sparsity_metrics, task_il_accuracy_metrics
from avalanche_sparcl.metrics.masks import WEIGHT_MASKS, strategy_masks
from avalanche_sparcl.models import ResNet18, SmallCNN
from avalanche_sparcl.plugins import NonFiniteGuardPlugin, ReservoirReplayPlugin, TDMPlugin
from avalanche_sparcl.reproducibility import seed_everything
from avalanche_sparcl.sparse.layers import resolve_profile

try:
    import fcntl
except ImportError:  # not POSIX: run folders are not locked
    fcntl = None

STRATEGY_LABELS = {"naive": "Naive", "er": "ER", "der": "DER++", "er_ace": "ER-ACE"}
METHOD_PREFIXES = {"sparcl": "SparCL", "static": "Static", "set": "SET", "rigl": "RigL"}

SMOKE_WIDTH = 2
"""``--smoke``: model width (ResNet-18's nf); the layer structure and parameter names stay."""
SMOKE_EPOCHS = 3
"""``--smoke``: at most this many epochs per experience (so the epoch-based schedules still move: DDR
needs 3, a two-epoch window before its first removal)."""
SMOKE_EXPERIENCES = 2
"""``--smoke``: train on the first experiences only (each followed by an evaluation on the whole test
stream), which still crosses an experience boundary: buffer, masks and schedules carry over."""
SMOKE_BATCH_SIZE = 8
"""``--smoke``: at most this many current (and as many buffer) examples per minibatch."""
SMOKE_TRAIN_PER_EXPERIENCE = 16
"""``--smoke``: random training examples per experience (at least two per class: DDR never removes
the last example of a class, so with one per class it would have nothing to remove)."""
SMOKE_TEST_PER_EXPERIENCE = 10

CLASS_IL_EXPERIENCE = re.compile(r"^Top1_Acc_Exp/eval_phase/test_stream/Task\d+/Exp(\d+)$")
TASK_IL_EXPERIENCE = re.compile(r"^TaskIL_Top1_Acc_Exp/eval_phase/test_stream/Task\d+/Exp(\d+)$")


@dataclass(frozen=True)
class RunOptions:
    """How to run, as opposed to what to run (the config)."""

    out_dir: Path
    device: str = "cpu"
    quiet: bool = False
    smoke: bool = False
    restart: bool = False


@dataclass
class ExperienceRecord:
    """What a per-experience callback gets after each experience was trained and evaluated."""

    index: int
    strategy: Any
    class_il_accuracies: list[float]
    task_il_accuracies: list[float]


ExperienceCallback = Callable[[ExperienceRecord], None]


def method_label(config: ExperimentConfig) -> str:
    """'DER++', 'SparCL-DER++ 0.75', 'RigL-DER++ 0.90', ...: the row name in tables and plots."""
    strategy = STRATEGY_LABELS[config.training["strategy"]]
    if config.method_kind == "dense":
        return strategy
    prefix = METHOD_PREFIXES[config.method_kind]
    suffix = ""
    if config.sparcl is not None:
        parts = [
            part
            for part, on in (
                ("TDM", config.sparsity > 0),
                ("DDR", config.sparcl["removal_ratio"] > 0),
                ("DGM", config.sparcl["gradient_sparsity"] > 0),
            )
            if on
        ]
        prefix = prefix if len(parts) == 3 else "+".join(parts)
        suffix = " masked head" if config.sparcl["masked_head"] else ""
        if not parts:  # a dense run with the masked head only
            return f"{strategy}{suffix}"
    return f"{prefix}-{strategy} {config.sparsity:.2f}{suffix}"


def run_directory(config: ExperimentConfig, seed: int, out_dir: Path, smoke: bool = False) -> Path:
    """``<out>/<benchmark>/<config name>/seed_<seed>``: one folder per run; ``--smoke`` runs live
    under ``<out>/smoke/`` so they never pass for (or mix with) real ones."""
    base = Path(out_dir) / "smoke" if smoke else Path(out_dir)
    return base / config.benchmark["name"] / config.name / f"seed_{seed}"


def build_benchmark(config: ExperimentConfig, seed: int, smoke: bool):
    """The config's benchmark, or with ``smoke`` random tensors of the same shape and class split."""
    spec = config.benchmark
    if smoke:
        return random_benchmark_like(spec["name"], spec["n_experiences"], spec["task_labels"], seed)
    if spec["name"] == "split_digits":
        return benchmarks.split_digits(spec["n_experiences"], seed=seed, return_task_id=spec["task_labels"])
    builder = getattr(benchmarks, spec["name"])
    return builder(spec["dataset_root"], spec["n_experiences"], seed=seed, return_task_id=spec["task_labels"])


def random_benchmark_like(name: str, n_experiences: int, task_labels: bool, seed: int):
    """Uniform random inputs shaped like ``name``'s, every class present, classes in natural order."""
    shape = BENCHMARK_SHAPES[name]
    classes_per_experience = shape.n_classes // n_experiences
    generator = torch.Generator().manual_seed(seed)

    def tensors(per_experience: int, at_least: int) -> tuple[torch.Tensor, torch.Tensor]:
        per_class = max(at_least, per_experience // classes_per_experience)
        labels = torch.arange(shape.n_classes).repeat_interleave(per_class)
        return torch.rand((len(labels), *shape.input_shape), generator=generator), labels

    train = tensors(SMOKE_TRAIN_PER_EXPERIENCE, at_least=2)
    test = tensors(SMOKE_TEST_PER_EXPERIENCE, at_least=1)
    return benchmarks.tensor_benchmark(
        train, test, n_experiences, seed, task_labels, fixed_class_order=list(range(shape.n_classes))
    )


def build_model(config: ExperimentConfig, smoke: bool) -> nn.Module:
    shape = BENCHMARK_SHAPES[config.benchmark["name"]]
    width = SMOKE_WIDTH if smoke else config.model["width"]
    channels = shape.input_shape[0]
    if config.model["name"] == "resnet18":
        return ResNet18(shape.n_classes, nf=width, in_channels=channels)
    return SmallCNN(shape.n_classes, in_channels=channels, width=width)


def check_profile_fits(config: ExperimentConfig, smoke: bool) -> None:
    """ConfigError if the config's sparsity profile names parameters its model lacks.

    The plugin finds out only when training starts; checked here, a grid fails before any run folder
    is made.
    """
    plugin = build_sparse_plugin(config, seed=0)
    tdm = plugin if isinstance(plugin, TDMPlugin) else getattr(plugin, "tdm", None)
    if tdm is None or not tdm.settings.profile:
        return
    try:
        resolve_profile(build_model(config, smoke), tdm.settings.profile)
    except ValueError as error:
        section = "sparcl" if config.sparcl is not None else "baseline"
        raise ConfigError(
            f"{config.path}: {section}.profile does not fit model {config.model['name']!r}: {error}"
        ) from None


def build_strategy(
    config: ExperimentConfig,
    model: nn.Module,
    plugins: list,
    evaluator: EvaluationPlugin,
    options: RunOptions,
    seed: int = 0,
):
    """Naive, ER (Naive + replay), DER++ or ER-ACE with SGD (no momentum, as in the paper).

    With ``buffer: reservoir`` the replay plugin comes first, so DER++ stores raw logits before any
    masked head sees them.
    """
    training = config.training
    epochs, batch = training["epochs"], training["batch_size"]
    if options.smoke:
        epochs, batch = min(epochs, SMOKE_EPOCHS), min(batch, SMOKE_BATCH_SIZE)
    common = dict(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=training["lr"]),
        criterion=nn.CrossEntropyLoss(),
        train_mb_size=batch,
        train_epochs=epochs,
        eval_mb_size=training["eval_batch_size"],
        device=torch.device(options.device),
        evaluator=evaluator,
    )
    strategy, buffer = training["strategy"], training["buffer_size"]
    if strategy == "naive":
        return Naive(plugins=plugins, **common)
    if training["buffer"] == "reservoir":
        own_batch = batch if strategy == "er" else None  # DER and ER_ACE are given theirs below
        plugins = [ReservoirReplayPlugin(mem_size=buffer, batch_size_mem=own_batch, seed=seed), *plugins]
    elif strategy == "er":
        plugins = [*plugins, ReplayPlugin(mem_size=buffer, batch_size=batch, batch_size_mem=batch)]
    if strategy == "er":
        return Naive(plugins=plugins, **common)
    if strategy == "der":
        return DER(
            mem_size=buffer,
            batch_size_mem=batch,
            alpha=training["alpha"],
            beta=training["beta"],
            plugins=plugins,
            **common,
        )
    return ER_ACE(mem_size=buffer, batch_size_mem=batch, plugins=plugins, **common)


def build_evaluator(run_dir: Path, quiet: bool, log_files: bool = True) -> tuple[EvaluationPlugin, list]:
    """Class-IL and Task-IL accuracy and forgetting, training FLOPs, sparsity and kept data.

    ``log_files=False`` (a run about to resume, whose checkpoint holds the file loggers) writes no
    TensorBoard or CSV file, so the ones already written stay as they are.
    """
    loggers: list = []
    if log_files:
        loggers += [ResumableTensorboardLogger(run_dir / "tensorboard"), ResumableCSVLogger(run_dir / "csv")]
    if not quiet:
        loggers.append(InteractiveLogger())
    with warnings.catch_warnings():
        # no logger is what --quiet on resume asks for: the checkpoint brings the file loggers back
        warnings.filterwarnings("ignore", message="No loggers specified")
        evaluator = EvaluationPlugin(
            accuracy_metrics(epoch=True, experience=True, stream=True),
            loss_metrics(epoch=True, stream=True),
            forgetting_metrics(experience=True, stream=True),
            *task_il_accuracy_metrics(),
            *flops_metrics(),
            *sparsity_metrics(),
            *data_metrics(),
            loggers=loggers,
        )
    return evaluator, loggers


def accuracy_row(metrics: dict[str, Any], pattern: re.Pattern, n_experiences: int) -> list[float]:
    """The per-experience accuracies of one evaluation, ordered by experience."""
    row = [math.nan] * n_experiences
    for name, value in metrics.items():
        match = pattern.match(name)
        if match:
            row[int(match.group(1))] = float(value)
    return row


def stream_value(metrics: dict[str, Any], prefix: str) -> float:
    """The value of the first metric named ``prefix/eval_phase/test_stream...``."""
    for name, value in metrics.items():
        if name.startswith(f"{prefix}/eval_phase/test_stream"):
            return float(value)
    return math.nan


def curve(evaluator: EvaluationPlugin, name: str) -> dict[str, list]:
    """A training-time metric's history: iterations and values."""
    for full_name, (positions, values) in evaluator.get_all_metrics().items():
        if full_name.startswith(f"{name}/train_phase/"):
            return {"iterations": list(positions), "values": [float(v) for v in values]}
    return {"iterations": [], "values": []}


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in ("avalanche-sparcl", "avalanche-lib", "torch", "torchvision", "numpy"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


class ResumableCSVLogger(CSVLogger):
    """Avalanche's CSVLogger, whose files survive a checkpoint.

    On resume each file is cut back to its length at checkpoint time (dropping the rows of an
    interrupted experience, which is trained again) and appended to, not truncated.
    """

    FILES = {"training_file": "training_results.csv", "eval_file": "eval_results.csv"}

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["file_lengths"] = {}
        for attribute in self.FILES:
            stream = getattr(self, attribute)
            stream.flush()
            state["file_lengths"][attribute] = stream.tell()
            state[attribute] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        lengths = state.pop("file_lengths")
        self.__dict__.update(state)
        if rank() != 0:  # data-parallel: the files are rank 0's; this copy is dropped (train_and_evaluate)
            return
        for attribute, file_name in self.FILES.items():
            path = Path(self.log_folder) / file_name
            with open(path, "a") as stream:
                stream.truncate(lengths[attribute])
            setattr(self, attribute, open(path, "a"))  # noqa: SIM115


class AppendingEventFileWriter(EventFileWriter):
    """TensorBoard's event file writer, continuing an existing event file.

    Its base class always starts a new file (and writes a file-version event into it); this one
    only appends records to ``event_file``, the way the base class writes them.
    """

    def __init__(self, event_file: Path, max_queue_size: int = 10, flush_secs: int = 120) -> None:
        self._logdir = str(event_file.parent)
        self._file_name = str(event_file)
        self._general_file_writer = open(event_file, "ab")  # noqa: SIM115 (closed by close())
        self._async_writer = _AsyncWriter(RecordWriter(self._general_file_writer), max_queue_size, flush_secs)


class AppendingSummaryWriter(SummaryWriter):
    """torch's SummaryWriter, writing into one existing event file instead of a new one."""

    def __init__(self, event_file: Path, filename_suffix: str = "") -> None:
        self.event_file = Path(event_file)
        super().__init__(str(self.event_file.parent), filename_suffix=filename_suffix)

    def _get_file_writer(self) -> FileWriter:
        if self.all_writers is None or self.file_writer is None:
            file_writer = FileWriter.__new__(FileWriter)  # its __init__ would start a new event file
            file_writer.event_writer = AppendingEventFileWriter(
                self.event_file, self.max_queue, self.flush_secs
            )
            self.file_writer = file_writer
            self.all_writers = {file_writer.get_logdir(): file_writer}
        return self.file_writer


class ResumableTensorboardLogger(TensorboardLogger):
    """Avalanche's TensorboardLogger, whose event file survives a checkpoint.

    Avalanche's own opens a new event file when unpickled, next to the old one, which still holds the
    events of the interrupted experience: TensorBoard then shows that experience twice. This one cuts
    its file back to its length at checkpoint time and continues it, as ResumableCSVLogger does.
    """

    def __getstate__(self) -> dict[str, Any]:
        self.writer.flush()
        event_file = Path(self.writer._get_file_writer().event_writer._file_name)
        return {
            "event_file": str(event_file),
            "length": event_file.stat().st_size,
            "filename_suffix": self.writer.filename_suffix,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        event_file = Path(state["event_file"])
        if rank() != 0:  # data-parallel: the file is rank 0's; this copy is dropped (train_and_evaluate)
            return
        if event_file.is_file() and event_file.stat().st_size >= state["length"]:
            with open(event_file, "ab") as stream:
                stream.truncate(state["length"])
            self.writer = AppendingSummaryWriter(event_file, state["filename_suffix"])
            weakref.finalize(self, SummaryWriter.close, self.writer)
        else:  # the file was removed or cut short since: start a new one
            self.writer = self._make_writer(event_file.parent, state["filename_suffix"])


class RunProgress(SupervisedPlugin, supports_distributed=True):
    """What a run has measured so far, kept among the strategy's plugins so the checkpoint holds it."""

    def __init__(self) -> None:
        super().__init__()
        self.class_il_matrix: list[list[float]] = []
        self.task_il_matrix: list[list[float]] = []
        self.flops_after_experience: list[float] = []
        self.last_metrics: dict[str, Any] = {}
        self.wall_time_s = 0.0
        self.train_time_s = 0.0


CHECKPOINT_NAME = "checkpoint.pkl"
RESULTS_NAME = "results.json"
RUN_NAME = "run.json"
"""The identity and fingerprint of the run a folder's checkpoint belongs to, written before training."""
LOCK_NAME = "run.lock"
LOGGER_FOLDERS = ("tensorboard", "csv")
WAYS_OUT = "start it over with --restart, or use another --out"


class RunFolderError(ValueError):
    """A run folder that cannot serve the requested run (another run's, damaged, or in use); the
    command line prints it as one line (exit 2)."""


class RunLock:
    """Holds a run folder for one process, from before it reads the folder until the run ends.

    The lock is an ``flock`` on ``run.lock``, which the kernel drops however the process ends, so the
    file a killed run leaves behind (it holds the holder's pid, for the message) blocks nobody. The
    file is never deleted: deleting it would let two processes lock two different files.
    """

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK_NAME
        self.stream: Any = None

    def __enter__(self) -> RunLock:
        stream = open(self.path, "a+")  # noqa: SIM115 (kept open while the lock is held)
        try:
            if fcntl is not None:
                fcntl.flock(stream.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            stream.truncate(0)
            stream.write(f"{os.getpid()}\n")
            stream.flush()
        except BlockingIOError:
            stream.seek(0)
            holder = stream.read().strip() or "unknown"
            stream.close()
            raise RunFolderError(
                f"{self.path.parent} is being run by another process (pid {holder}); "
                "wait for it to finish, or use another --out"
            ) from None
        except BaseException:
            stream.close()
            raise
        self.stream = stream
        return self

    def __exit__(self, *exception: object) -> None:
        self.stream.close()  # releases the lock
        self.stream = None


def read_json_record(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path`` (None if there is no file); RunFolderError if it is damaged."""
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as error:
        problem = f"not valid JSON (not UTF-8 text: {error.reason})"
    except json.JSONDecodeError as error:
        problem = f"not valid JSON (line {error.lineno}, column {error.colno}: {error.msg})"
    else:
        if isinstance(record, dict):
            return record
        problem = f"not a JSON object but a {type(record).__name__}"
    raise RunFolderError(f"{path}: {problem}; start the run over with --restart")


def finished_results(run_dir: Path) -> dict[str, Any] | None:
    """The results of a run that already finished (its results.json is written last), else None."""
    return read_json_record(run_dir / RESULTS_NAME)


def check_same_run(run_dir: Path, stored: dict[str, Any], identity: dict[str, Any], what: str) -> None:
    """RunFolderError unless ``stored`` (run.json or results.json) has the requested fingerprint."""
    if "fingerprint" not in stored:
        raise RunFolderError(
            f"{run_dir} holds {what} without a fingerprint, so what produced it is unknown; {WAYS_OUT}"
        )
    if stored["fingerprint"] == fingerprint(identity):
        return
    keys = differing_keys(stored.get("identity") or {}, identity) or ["fingerprint"]
    raise RunFolderError(
        f"{run_dir} holds {what} of another configuration (differs in {', '.join(keys)}); {WAYS_OUT}"
    )


def clear_run_folder(run_dir: Path) -> None:
    """Remove what an earlier run wrote (results, checkpoint, identity, logs), before a fresh start."""
    for name in (RESULTS_NAME, CHECKPOINT_NAME, RUN_NAME):
        (run_dir / name).unlink(missing_ok=True)
    for leftover in run_dir.glob(f"*{PARTIAL_SUFFIX}"):
        leftover.unlink(missing_ok=True)
    for name in LOGGER_FOLDERS:
        if (run_dir / name).is_dir():
            shutil.rmtree(run_dir / name)


def run_experiment(
    config: ExperimentConfig,
    seed: int,
    options: RunOptions,
    on_experience_end: Sequence[ExperienceCallback] = (),
) -> dict[str, Any]:
    """Train and evaluate one config with one seed; write and return its results.json content.

    A checkpoint is saved after every experience (trained, then evaluated). A run folder holding one
    of the same run (equal fingerprint, see ``run.json``) resumes from it; one holding results.json of
    the same run is finished and not rerun; another run's checkpoint or results raise RunFolderError.
    ``options.restart`` starts over, deleting the folder's earlier results, checkpoint and logs.
    """
    identity = run_identity(config, options.smoke, world_size())
    run_dir = run_directory(config, seed, options.out_dir, options.smoke)
    check_profile_fits(config, options.smoke)
    with contextlib.ExitStack() as folder_held:
        # data-parallel: rank 0 alone holds and prepares the folder; every rank follows its decision
        done, resume = decided_on_rank0(lambda: claim_run_folder(run_dir, identity, options, folder_held))
        if done is not None:
            return done
        return train_and_evaluate(config, seed, options, run_dir, identity, resume, on_experience_end)


def claim_run_folder(
    run_dir: Path, identity: dict[str, Any], options: RunOptions, folder_held: contextlib.ExitStack
) -> tuple[dict[str, Any] | None, bool]:
    """Lock ``run_dir`` for the run (until ``folder_held`` closes) and say what to do: the finished
    run's results (nothing to train), or whether to resume from its checkpoint."""
    run_dir.mkdir(parents=True, exist_ok=True)
    folder_held.enter_context(RunLock(run_dir))
    if not options.restart and (done := finished_results(run_dir)) is not None:
        check_same_run(run_dir, done, identity, "a finished run")
        return done, False
    resume = not options.restart and (run_dir / CHECKPOINT_NAME).is_file()
    if resume:
        stored = read_json_record(run_dir / RUN_NAME)
        if stored is None:
            raise RunFolderError(
                f"{run_dir} holds a {CHECKPOINT_NAME} without {RUN_NAME}, so what produced it is "
                f"unknown; {WAYS_OUT}"
            )
        check_same_run(run_dir, stored, identity, "an interrupted run")
    else:
        clear_run_folder(run_dir)
        record = {"identity": identity, "fingerprint": fingerprint(identity)}
        write_text_atomically(run_dir / RUN_NAME, json.dumps(record, indent=2, allow_nan=True) + "\n")
    return None, resume


def run_labels(config: ExperimentConfig, seed: int, identity: dict[str, Any], device: str) -> dict[str, Any]:
    """The keys of results.json that say which run it is (the others say what it measured)."""
    return {
        "name": config.name,
        "method": method_label(config),
        "method_kind": config.method_kind,
        "benchmark": config.benchmark["name"],
        "strategy": config.training["strategy"],
        "buffer_size": config.training["buffer_size"],
        "sparsity": config.sparsity,
        "seed": seed,
        "smoke": identity["smoke"],
        "device": device,
        "config_path": str(config.path),
        "config": config.to_dict(),
        "identity": identity,
        "fingerprint": fingerprint(identity),
    }


def train_and_evaluate(
    config: ExperimentConfig,
    seed: int,
    options: RunOptions,
    run_dir: Path,
    identity: dict[str, Any],
    resume: bool,
    on_experience_end: Sequence[ExperienceCallback],
) -> dict[str, Any]:
    """The run itself, from its checkpoint if ``resume``: train, evaluate, checkpoint, results.json
    (labelled with ``identity``, the one checked against the folder's run.json)."""
    checkpoint = run_dir / CHECKPOINT_NAME
    main_process = rank() == 0  # data-parallel: logs, checkpoints and results come from rank 0 only
    seed_everything(seed)
    benchmark = build_benchmark(config, seed, options.smoke)
    device = training_device(options.device)
    model = DistributedHelper.wrap_model(build_model(config, options.smoke).to(device))
    sparse_plugin = build_sparse_plugin(config, seed, smoke=options.smoke)
    evaluator, _ = build_evaluator(run_dir, options.quiet or not main_process, not resume and main_process)
    plugins = [RunProgress(), NonFiniteGuardPlugin()] + ([] if sparse_plugin is None else [sparse_plugin])
    if world_size() > 1:
        plugins.append(WholeEvaluationStream())
    strategy = build_strategy(
        config, model, plugins, evaluator, dataclasses.replace(options, device=str(device)), seed
    )
    strategy, next_experience = maybe_resume(strategy, checkpoint, map_location=device)
    if not main_process:
        strategy.evaluator.loggers = []  # the checkpoint's loggers are rank 0's
    progress = next(p for p in strategy.plugins if isinstance(p, RunProgress))
    flops_metric = next(m for m in strategy.evaluator.metrics if str(m) == "TrainFLOPs")

    n_experiences = len(benchmark.train_stream)
    last_experience = SMOKE_EXPERIENCES if options.smoke else n_experiences
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="No loggers specified")
            warnings.simplefilter("ignore", DeprecationWarning)  # Avalanche 0.6 internals, not actionable
            for index in range(next_experience, last_experience):
                started = time.perf_counter()
                strategy.train(benchmark.train_stream[index])
                progress.train_time_s += time.perf_counter() - started
                progress.flops_after_experience.append(flops_metric.result())
                progress.last_metrics = strategy.eval(benchmark.test_stream)
                metrics = progress.last_metrics
                progress.class_il_matrix.append(accuracy_row(metrics, CLASS_IL_EXPERIENCE, n_experiences))
                progress.task_il_matrix.append(accuracy_row(metrics, TASK_IL_EXPERIENCE, n_experiences))
                progress.wall_time_s += time.perf_counter() - started
                save_checkpoint(strategy, checkpoint)
                record = ExperienceRecord(
                    index, strategy, progress.class_il_matrix[-1], progress.task_il_matrix[-1]
                )
                for callback in on_experience_end:
                    callback(record)
    finally:
        for logger in strategy.evaluator.loggers:
            if hasattr(logger, "close"):
                logger.close()

    evaluator, metrics = strategy.evaluator, progress.last_metrics
    kept_data = curve(evaluator, "KeptData_Epoch")
    results = {
        **run_labels(config, seed, identity, options.device),
        "versions": package_versions(),
        "class_il_accuracy": stream_value(metrics, "Top1_Acc_Stream"),
        "task_il_accuracy": stream_value(metrics, "TaskIL_Top1_Acc_Stream"),
        "class_il_forgetting": stream_value(metrics, "StreamForgetting"),
        "task_il_forgetting": stream_value(metrics, "TaskIL_StreamForgetting"),
        "accuracy_matrix": {"class_il": progress.class_il_matrix, "task_il": progress.task_il_matrix},
        "world_size": world_size(),
        "mask_digests": digests_of_all_ranks(strategy_masks(strategy, WEIGHT_MASKS)),
        "train_flops": flops_metric.result(),
        "train_flops_after_experience": progress.flops_after_experience,
        "train_iterations": strategy.clock.train_iterations,
        "wall_time_s": progress.wall_time_s,
        "train_time_s": progress.train_time_s,
        "weight_sparsity": curve(evaluator, "WeightSparsity")["values"][-1],
        "kept_data": float(np.mean(kept_data["values"])) if kept_data["values"] else 1.0,
        "curves": {
            "weight_sparsity": curve(evaluator, "WeightSparsity"),
            "kept_data": kept_data,
        },
    }
    if main_process:
        write_text_atomically(run_dir / RESULTS_NAME, json.dumps(results, indent=2, allow_nan=True) + "\n")
    return results


def training_device(device: str) -> torch.device:
    """``device`` as a torch device; on CUDA in data-parallel training, this rank's GPU (the one
    ``DistributedHelper.init_distributed`` selected)."""
    if device == "cuda" and world_size() > 1:
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device(device)


class WholeEvaluationStream(SupervisedPlugin, supports_distributed=True):
    """Every rank evaluates every test example: Avalanche 0.6 shards the evaluation data between
    ranks and its accuracy metrics do not combine the shards, so rank 0 would report on its shard."""

    def before_eval_exp(self, strategy: Any, **kwargs: Any) -> None:
        """Replace the sharded evaluation loader by one over the whole experience."""
        loader = strategy.dataloader
        strategy.dataloader = SingleDatasetDataLoader(
            strategy.adapted_dataset,
            batch_size=strategy.eval_mb_size,
            distributed_sampling=False,
            **{key: value for key, value in loader.loader_kwargs.items() if key != "batch_size"},
        )

