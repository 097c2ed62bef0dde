"""Is the standard attack budget at least as strong as an independent attacker?

`python -m benchmarks.attacker_strength RUN [--budget standard]` loads a run folder of `scl demo`
and attacks its releases (soft, gated, hard, clean) twice, on the same splits:

- the budget's decoder attack (nested decoders, early-stopped on a validation part of the
  attacker split, the best on the test split reported), as `scl demo` runs it;
- the independent reference attacker of the project's issue: an encoder-decoder over two scales
  with a skip connection, 64 channels, trained on the whole attacker split for 60 epochs (MSE,
  linear output clamped to [0, 1]), no early stopping.

It prints decoder SSIM and PSNR of both, side by side. A benchmark, not a test: minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from scl.attacks.budget import AttackBudget, Attacker, get_budget
from scl.attacks.decoder import decoder_attack
from scl.pipelines import classification as clf
from scl.pipelines import stages

#: The independent attacker; a validation fraction of 0 trains on the whole attacker split.
INDEPENDENT = AttackBudget("independent", (Attacker("unet", 64, 60, 60),), (Attacker("plain", 32, 1, 1),),
                           attribute_epochs=1, validation_fraction=0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a run folder of `scl demo`")
    parser.add_argument("--budget", default="standard")
    args = parser.parse_args()
    exp = clf.load_run(args.run)
    found = clf.releases(exp)
    found.pop("gaussian", None)
    found["clean"] = lambda x, y: x
    attacker, test = exp.splits["attacker"], exp.splits["test"]
    print(f"| release | budget {args.budget} SSIM | independent SSIM | budget PSNR | independent PSNR | seconds |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, release in found.items():
        start = time.perf_counter()
        scores = []
        for budget in (get_budget(args.budget), INDEPENDENT):
            with stages.run_noise(exp.config):
                result = decoder_attack(release, attacker, test, num_classes=exp.dataset.num_classes,
                                        budget=budget, seed=exp.config["seed"])
            scores.append(result.metrics)
        ours, independent = scores
        print(f"| {name} | {ours['decoder_ssim']:.3f} | {independent['decoder_ssim']:.3f} | "
              f"{ours['decoder_psnr']:.1f} | {independent['decoder_psnr']:.1f} | "
              f"{time.perf_counter() - start:.0f} |", flush=True)


if __name__ == "__main__":
    main()
