"""Does training the attackers under bfloat16 autocast weaken them?

`python -m benchmarks.attacker_precision RUN [--budget standard] [--seeds 0,1]` loads a run folder
of `scl demo` and runs the budget's decoder and re-identification attacks on its releases (clean,
hard, gated, soft), once with every learned attacker in float32 and once under bfloat16 autocast
(`Attacker.bfloat16`), for each seed. It prints decoder SSIM, re-identification top-1 and the
seconds each took, side by side; the seeds show the run-to-run spread that a difference between
the two precisions has to exceed to mean anything. A benchmark, not a test: minutes on 2 cores.
On a device without native bfloat16 both columns run in float32.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

from scl.attacks.budget import AttackBudget, get_budget
from scl.attacks.decoder import decoder_attack
from scl.attacks.reidentification import reidentification_attack
from scl.pipelines import classification as clf
from scl.pipelines import stages


def with_precision(budget: AttackBudget, bfloat16: bool) -> AttackBudget:
    """``budget`` with every decoder and embedding attacker trained in the given precision."""
    return replace(budget, decoders=tuple(replace(a, bfloat16=bfloat16) for a in budget.decoders),
                   embeddings=tuple(replace(a, bfloat16=bfloat16) for a in budget.embeddings))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a run folder of `scl demo`")
    parser.add_argument("--budget", default="standard")
    parser.add_argument("--seeds", default="0,1", help="comma-separated attack seeds")
    parser.add_argument("--releases", default="clean,hard,gated,soft")
    args = parser.parse_args()
    exp = clf.load_run(args.run)
    found = clf.releases(exp)
    found["clean"] = lambda x, y: x
    attacker, test = exp.splits["attacker"], exp.splits["test"]
    base = get_budget(args.budget)
    print("| release | seed | float32 SSIM | bfloat16 SSIM | float32 re-id | bfloat16 re-id "
          "| float32 s | bfloat16 s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name in args.releases.split(","):
        release = found[name]
        for seed in (int(s) for s in args.seeds.split(",")):
            row = []
            for bfloat16 in (False, True):
                budget = with_precision(base, bfloat16)
                start = time.perf_counter()
                with stages.run_noise(exp.config):
                    common = dict(num_classes=exp.dataset.num_classes, budget=budget, seed=seed)
                    decoded = decoder_attack(release, attacker, test, **common)
                    reid = reidentification_attack(release, attacker, test,
                                                   reconstructions=decoded.test_reconstructions, **common)
                row.append((decoded.metrics["decoder_ssim"], reid.metrics["reid_top1"],
                            time.perf_counter() - start))
            (s32, r32, t32), (s16, r16, t16) = row
            print(f"| {name} | {seed} | {s32:.3f} | {s16:.3f} | {100 * r32:.1f}% | {100 * r16:.1f}% "
                  f"| {t32:.0f} | {t16:.0f} |", flush=True)


if __name__ == "__main__":
    main()
