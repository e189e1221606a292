"""Runs one validated config for one seed: Avalanche's training loop, a checkpoint after every
experience, and the results.json that the report reads.

Data flows one way: config -> benchmark, model, strategy and plugins (``build``) -> Avalanche's loop
-> metrics -> loggers (``loggers``) and results.json (``metric_values``). The run folder and who may
use it are ``run_folder``'s; ``run_experiment`` takes per-experience callbacks, which is where a
caller hooks in (the resume tests interrupt a run through them).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from avalanche.core import SupervisedPlugin
from avalanche.distributed import DistributedHelper

from avalanche_sparcl.checkpointing import (
    CheckpointKeyError,
    checkpoint_key,
    maybe_resume,
    save_checkpoint,
    write_text_atomically,
)
from avalanche_sparcl.distributed import decided_on_rank0, digests_of_all_ranks, rank, world_size
from avalanche_sparcl.experiments.build import (
    build_benchmark,
    build_evaluator,
    build_model,
    build_strategy,
    check_profile_fits,
    random_benchmark_like,
)
from avalanche_sparcl.experiments.config import ExperimentConfig, build_sparse_plugin
from avalanche_sparcl.experiments.data_parallel import WholeEvaluationStream, training_device
from avalanche_sparcl.experiments.fingerprint import checkpoint_run_id, run_identity
from avalanche_sparcl.experiments.loggers import (
    ResumableCSVLogger,
    ResumableTensorboardLogger,
    write_run_views,
)
from avalanche_sparcl.experiments.metric_values import (
    CLASS_IL_EXPERIENCE,
    TASK_IL_EXPERIENCE,
    accuracy_row,
    curve,
    machine_description,
    package_versions,
    stream_value,
)
from avalanche_sparcl.experiments.options import SMOKE_EXPERIENCES, RunOptions
from avalanche_sparcl.experiments.results import results_record
from avalanche_sparcl.experiments.run_folder import (
    CHECKPOINT_NAME,
    MODEL_NAME,
    RESULTS_NAME,
    RunFolderError,
    RunLock,
    claim_run_folder,
    method_label,
    read_json_record,
    run_directory,
    run_labels,
)
from avalanche_sparcl.experiments.trained_model import write_trained_model
from avalanche_sparcl.metrics.masks import WEIGHT_MASKS, strategy_masks
from avalanche_sparcl.plugins import NonFiniteGuardPlugin
from avalanche_sparcl.reproducibility import seed_everything

__all__ = [  # importable from here as before the split (tests, cli, and checkpoints pickled then)
    "CHECKPOINT_NAME",
    "RESULTS_NAME",
    "SMOKE_EXPERIENCES",
    "ExperienceCallback",
    "ExperienceRecord",
    "ResumableCSVLogger",
    "ResumableTensorboardLogger",
    "RunFolderError",
    "RunLock",
    "RunOptions",
    "RunProgress",
    "WholeEvaluationStream",
    "build_benchmark",
    "build_evaluator",
    "build_model",
    "build_strategy",
    "check_profile_fits",
    "method_label",
    "random_benchmark_like",
    "read_json_record",
    "run_directory",
    "run_experiment",
    "run_labels",
    "train_and_evaluate",
]


@dataclass
class ExperienceRecord:
    """What a per-experience callback gets after each experience was trained and evaluated."""

    index: int
    strategy: Any
    class_il_accuracies: list[float]
    task_il_accuracies: list[float]


ExperienceCallback = Callable[[ExperienceRecord], None]


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
    try:
        checkpoint_key()  # made or checked before the run folder is touched
    except CheckpointKeyError as error:
        raise RunFolderError(str(error)) from None
    with contextlib.ExitStack() as folder_held:
        # data-parallel: rank 0 alone holds and prepares the folder; every rank follows its decision
        done, resume = decided_on_rank0(lambda: claim_run_folder(run_dir, identity, options, folder_held))
        if done is not None:
            return done
        return train_and_evaluate(config, seed, options, run_dir, identity, resume, on_experience_end)


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
    run_id = checkpoint_run_id(identity, seed)  # checkpoints are signed for this run and seed only
    strategy, next_experience = maybe_resume(strategy, checkpoint, map_location=device, run_id=run_id)
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
                save_checkpoint(strategy, checkpoint, run_id=run_id)
                record = ExperienceRecord(
                    index, strategy, progress.class_il_matrix[-1], progress.task_il_matrix[-1]
                )
                for callback in on_experience_end:
                    callback(record)
            write_run_views(  # TensorBoard: HParams, series over experiences, accuracy vs FLOPs figure
                strategy.evaluator.loggers,
                {
                    **{key: value for key, value in config.to_dict().items() if key != "description"},
                    "method": method_label(config),
                    "method_kind": config.method_kind,
                    "seed": seed,
                    "smoke": options.smoke,
                },
                {
                    "class_il_accuracy": stream_value(progress.last_metrics, "Top1_Acc_Stream"),
                    "task_il_accuracy": stream_value(progress.last_metrics, "TaskIL_Top1_Acc_Stream"),
                    "train_flops": flops_metric.result(),
                },
                progress.class_il_matrix,
                progress.task_il_matrix,
                progress.flops_after_experience,
                f"{config.benchmark['name']} / {method_label(config)} (seed {seed})",
            )
    finally:
        for logger in strategy.evaluator.loggers:
            if hasattr(logger, "close"):
                logger.close()

    evaluator, metrics = strategy.evaluator, progress.last_metrics
    kept_data = curve(evaluator, "KeptData_Epoch")
    results = results_record(
        {
            **run_labels(config, seed, identity, options.device),
            "versions": package_versions(),
            "machine": machine_description(options.device),
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
    )
    if main_process:
        write_trained_model(strategy, run_dir / MODEL_NAME, results["fingerprint"], seed)
        write_text_atomically(run_dir / RESULTS_NAME, json.dumps(results, indent=2, allow_nan=True) + "\n")
    return results
