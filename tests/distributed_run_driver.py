"""sparcl-bench's runner in a process group of torch's launcher: resume of a data-parallel run.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/distributed_run_driver.py OUT

In every process: the smoke run of the Split Digits SparCL-DER++ config uninterrupted (into OUT/a), then
the same run stopped after its first experience and run again (into OUT/b), which resumes from the
checkpoint rank 0 wrote. Each process writes ``OUT/rank{r}.json`` with both results.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from avalanche.distributed import DistributedHelper

from avalanche_sparcl.distributed import rank
from avalanche_sparcl.experiments.config import load_config
from avalanche_sparcl.experiments.runner import RunOptions, run_experiment

CONFIG = Path(__file__).parents[1] / "experiments/configs/split_digits/sparcl_der_0.75_buf200.yaml"


class SimulatedKillError(Exception):
    pass


def stop_after_first_experience(record) -> None:
    if record.index == 0:
        raise SimulatedKillError


def main() -> None:
    out = Path(sys.argv[1])
    DistributedHelper.init_distributed(0, backend="gloo", use_cuda=False)
    config = load_config(CONFIG)
    uninterrupted = run_experiment(config, 0, RunOptions(out / "a", quiet=True, smoke=True))
    options = RunOptions(out / "b", quiet=True, smoke=True)
    try:
        run_experiment(config, 0, options, on_experience_end=[stop_after_first_experience])
    except SimulatedKillError:
        pass
    trained_again: list[int] = []
    resumed = run_experiment(config, 0, options, on_experience_end=[lambda r: trained_again.append(r.index)])
    record = {"uninterrupted": uninterrupted, "resumed": resumed, "trained_again": trained_again}
    (out / f"rank{rank()}.json").write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
