"""`make bench`: layer speed ratios side by side, and the demo's wall time; written to results.md."""

from __future__ import annotations

import argparse
import datetime
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from scl.bench import layer_cases, machine, measure, ratios, table
from scl.io import atomic_write

# (command, target seconds on 2 cores)
PIPELINES = [
    (["demo", "--quick"], 30.0),
    (["demo"], 120.0),
]


def time_pipelines() -> str:
    """Wall time of each pipeline command, run as a user runs it (a fresh process)."""
    lines = ["| command | wall time | target | met |", "|---|---:|---:|:---:|"]
    for args, target in PIPELINES:
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            subprocess.run(
                [sys.executable, "-m", "scl.cli", *args, "--out", str(Path(tmp) / "run"), "--no-progress"],
                check=True,
                capture_output=True,
            )
            seconds = time.perf_counter() - start
        met = "yes" if seconds <= target else "NO"
        lines.append(f"| `scl {' '.join(args)}` | {seconds:.1f} s | <= {target:.0f} s | {met} |")
        print(lines[-1], flush=True)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--skip-pipelines", action="store_true", help="only the layer ratios")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("results.md"))
    args = parser.parse_args()
    cases = layer_cases()
    rows = ratios(cases, measure(cases, repeats=args.repeats))
    text = table(rows)
    print(text, flush=True)
    pipelines = "" if args.skip_pipelines else "\n\n## Pipelines\n\n" + time_pipelines()
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    with atomic_write(args.out) as handle:
        handle.write(
            "# Benchmark results\n\n"
            f"Measured {stamp} by `make bench` on: {machine()}.\n\n"
            "## Layers\n\n"
            "Each ratio is the median over interleaved repetitions of (case time / baseline time), "
            "the baseline being timed in the same repetition: the plain `nn.Conv2d` 3->32 (fwd+bwd "
            "for training cases, no-grad forward for inference cases), and, in the last column, "
            "the same conv followed by the same Gaussian sampling (an unconditional stochastic "
            "layer). Layer: `StochasticConditionalConv2d(3, 16, 3, C, padding=1)`, gaussian "
            "(32 maps), batch 64, 32x32.\n\n" + text + "\n\n"
            "Reading the table: drawing the noise is a large share of every stochastic case. On "
            "this CPU `torch.randn` for the 1M-element output alone takes longer than the plain "
            "convolution's forward pass (torch's CPU normal sampler runs on one thread), and the "
            "softplus scale, the reparameterised sample and their backward are several more "
            "passes over that tensor. The rows 'plain conv + gaussian sampling' (an "
            "unconditional stochastic layer) and 'parameter maps only' (the class-conditional "
            "kernels and selection without sampling) separate the price of the noise from the "
            "price of conditioning on the class." + pipelines + "\n"
        )
    print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
