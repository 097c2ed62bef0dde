"""`make bench`: layer speed ratios side by side, and the demo's wall time; written to results.md."""

from __future__ import annotations

import argparse
import datetime
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from scl.bench import layer_cases, machine, measure, noise_floor, noise_table, ratios, table
from scl.io import atomic_write

# (command, target seconds on 2 cores)
PIPELINES = [
    (["demo", "--quick"], 30.0),
    (["demo"], 180.0),
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
    times = measure(cases, repeats=args.repeats)
    rows = ratios(cases, times)
    text = table(rows)
    print(text, flush=True)
    noise = noise_table(times)
    print("\n" + noise, flush=True)
    pipelines = "" if args.skip_pipelines else "\n\n## Pipelines\n\n" + time_pipelines()
    floor = noise_floor(rows)
    floor_text = (
        ""
        if floor is None
        else f"Their sum plus the convolution itself, {floor:.2f}x the plain conv, is a floor under "
        "the soft-inference ratio of any layer that draws Gaussian noise with these samplers on this "
        "machine"
        + (", above its 'must' of 1.5x: no implementation can meet that target here." if floor > 1.5 else ".")
    )
    print(f"\nfloor for Gaussian soft inference on this machine: {floor:.2f}x" if floor else "", flush=True)
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
            "Reading the table: every Gaussian layer of this output size must, besides its "
            "convolution, draw 1M normal samples and take the softplus of 1M raw scales; the rows "
            "'... of the output alone' time exactly that work, with nothing else, against the "
            "plain conv's forward. " + floor_text + " From a `torch.Generator`, scl draws large tensors "
            "on several threads (`scl.random.randn`; the result does not depend on the thread count), which "
            "helps in proportion to the free cores. The rows 'plain conv + gaussian sampling' (an "
            "unconditional stochastic layer with the same fused sampling) and 'parameter maps "
            "only' (the class-conditional kernels and selection without sampling) separate the "
            "price of the noise from the price of conditioning on the class: the last column is "
            "the price of the classes.\n\n"
            "## Noise source\n\n"
            "Eval-mode noise comes from an AES-256-CTR keystream (`scl.random`, `scl.cipher`: "
            "`cryptography`/OpenSSL, a key from `os.urandom` per process) turned into floats by "
            "numpy in place, in the tensor's memory (uniforms from 24 bits of each word, normals by "
            "Box-Muller; one thread per 8 MiB of keystream); before, "
            "from an MT19937 `torch.Generator` seeded from OS entropy, whose state a receiver who knows "
            "one input can recover from a release. Each ratio below is the median of per-repetition "
            "ratios of two rows of the table above; 'before' is the same soft layer timed in the same "
            "repetitions with a `torch.Generator` passed as `generator=`, which is the old eval path "
            "(threaded torch sampling).\n\n" + noise + pipelines + "\n"
        )
    print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
