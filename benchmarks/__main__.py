"""`make bench`: layer speed ratios side by side, written to benchmarks/results.md."""

from __future__ import annotations

import argparse
import datetime
from pathlib import Path

from scl.bench import layer_cases, machine, measure, ratios, table
from scl.io import atomic_write


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("results.md"))
    args = parser.parse_args()
    cases = layer_cases()
    rows = ratios(cases, measure(cases, repeats=args.repeats))
    text = table(rows)
    print(text)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    with atomic_write(args.out) as handle:
        handle.write(
            "# Benchmark results\n\n"
            f"Measured {stamp} by `make bench` on: {machine()}.\n\n"
            "Each ratio is the median over interleaved repetitions of (case time / baseline time), "
            "the baseline being the plain `nn.Conv2d` 3->32 timed in the same repetition "
            "(fwd+bwd for training cases, no-grad forward for inference cases). "
            "Layer: `StochasticConditionalConv2d(3, 16, 3, C, padding=1)`, gaussian (32 maps), "
            "batch 64, 32x32.\n\n" + text + "\n\n"
            "Reading the table: drawing the noise is a large share of every stochastic case. On "
            "this CPU `torch.randn` for the 1M-element output alone takes longer than the plain "
            "convolution's forward pass (torch's CPU normal sampler runs on one thread), and the "
            "softplus scale, the reparameterised sample and their backward are several more "
            "passes over that tensor. The rows 'plain conv + gaussian sampling' (an "
            "unconditional stochastic layer) and 'parameter maps only' (the class-conditional "
            "kernels and selection without sampling) separate the price of the noise from the "
            "price of conditioning on the class.\n"
        )
    print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
