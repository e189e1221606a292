"""Throughput of data-parallel training: one config run with 1 and with N processes on this machine.

    python benchmarks/distributed_throughput.py [--nproc 1 2] [--device cpu] [--rounds 2]

Each round runs ``sparcl-bench run CONFIG --seeds 0 --nproc N --restart`` for every N (alternating,
so background load hits both alike) and reads results.json: training time (``strategy.train`` only),
training examples per second (each experience's examples times the share DDR kept in each epoch),
and whether every rank ended with the same masks. The medians are written as the
``distributed_throughput`` section of docs/benchmarks.md (kept by ``make bench``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from avalanche_sparcl.experiments.report import replace_section  # noqa: E402

CONFIG = REPO / "experiments" / "configs" / "split_digits" / "sparcl_der_0.75_buf200.yaml"
DISTRIBUTED_SECTION = "distributed_throughput"
"""Its section of docs/benchmarks.md, which `make bench` keeps."""


def one_run(nproc: int, device: str, out: Path) -> dict:
    command = [sys.executable, "-m", "avalanche_sparcl.experiments.cli", "run", str(CONFIG), "--seeds", "0"]
    command += ["--nproc", str(nproc), "--device", device, "--quiet", "--restart", "--out", str(out)]
    # one torch thread per process, as torch's launcher sets for its processes: without it the
    # one-process run would use every core and the comparison would measure thread counts
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    subprocess.run(command, check=True, env=env)
    results = json.loads(next(out.rglob("results.json")).read_text())
    return {
        "nproc": nproc,
        "train_time_s": results["train_time_s"],
        "examples_per_s": trained_examples(results) / results["train_time_s"],
        "masks_equal": len(set(results["mask_digests"])) == 1,
        "class_il": results["class_il_accuracy"],
    }


def trained_examples(results: dict) -> float:
    """Examples the run trained on: each experience's size times the fraction DDR kept in each epoch."""
    from avalanche_sparcl.experiments.config import load_config
    from avalanche_sparcl.experiments.runner import build_benchmark

    benchmark = build_benchmark(load_config(CONFIG), results["seed"], smoke=False)
    sizes = [len(experience.dataset) for experience in benchmark.train_stream]
    kept = results["curves"]["kept_data"]["values"]  # one value per epoch, experience after experience
    epochs = len(kept) // len(sizes)
    return sum(size * sum(kept[i * epochs : (i + 1) * epochs]) for i, size in enumerate(sizes))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nproc", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--docs", type=Path, default=REPO / "docs" / "benchmarks.md")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    runs: dict[int, list[dict]] = {nproc: [] for nproc in args.nproc}
    with tempfile.TemporaryDirectory() as scratch:
        for _ in range(args.rounds):
            for nproc in args.nproc:
                runs[nproc].append(one_run(nproc, args.device, Path(scratch) / f"n{nproc}"))
    load_after = os.getloadavg()[0]
    base = statistics.median(run["train_time_s"] for run in runs[args.nproc[0]])
    lines = [
        "## Data-parallel training (`--nproc`)",
        "",
        f"`{CONFIG.relative_to(REPO)}` (Split Digits, SparCL-DER++ 0.75), seed 0, {args.device}, "
        f"measured by `python benchmarks/distributed_throughput.py` ({args.rounds} alternating rounds, "
        f"medians). Machine: {os.cpu_count()} CPU cores (1-minute load average "
        f"{load_before:.1f} before, {load_after:.1f} after); every process runs one torch thread "
        "(`OMP_NUM_THREADS=1`, as torch's launcher sets). No GPU was lent for this measurement.",
        "",
        "| processes | training time (s) | training examples / s | speed-up | masks equal on all ranks | "
        "Class-IL (%) |",
        "|---|---|---|---|---|---|",
    ]
    for nproc, measured in runs.items():
        time_s = statistics.median(run["train_time_s"] for run in measured)
        rate = statistics.median(run["examples_per_s"] for run in measured)
        equal = "yes" if all(run["masks_equal"] for run in measured) else "**no**"
        accuracy = statistics.median(100 * run["class_il"] for run in measured)
        speedup = base / time_s
        lines.append(f"| {nproc} | {time_s:.1f} | {rate:.0f} | {speedup:.2f}x | {equal} | {accuracy:.1f} |")
    lines += [
        "",
        "With N processes each optimizer step averages the gradients of N minibatches (the global batch is "
        "N times the config's), so a run takes 1/N of the steps; DER's buffer batch is drawn on every "
        "rank. Class-IL differs from the one-process run for that reason. A speed-up needs an idle core "
        "(or a GPU) for every process; the load average above says how busy this machine was. On a "
        "model this small (SmallCNN, about 90k parameters, 32-image minibatches) each step's gradient "
        "all-reduce between processes costs about as much as the half of the work it saves, so two "
        "processes on a CPU are not faster; the point of `--nproc` is models and streams that outgrow "
        "one device.",
    ]
    replace_section(args.docs, DISTRIBUTED_SECTION, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
