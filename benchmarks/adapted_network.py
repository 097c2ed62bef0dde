"""Frozen N against N adapted on releases (spec §2.3 step 4: N resumes training on obfuscated data).

`python -m benchmarks.adapted_network RUN [--epochs 20] [--lr 1e-3]` loads a run folder of
`scl demo` and, for each release (soft, gated, hard), fine-tunes a copy of the task network N on
releases of the obfuscator split (fresh noise every batch, the split's labels: the server side of
§2.3, which receives releases with their labels while training), then reports the test accuracy
of the frozen N and of the adapted copy on that release, one noise draw, and on clean test images
(what adapting costs N on clean data). The layer and the selections stay as trained: this measures
what the server can recover from a fixed release, not a layer trained against an adapting N.
A benchmark, not a test: about a minute on 2 cores.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from scl.pipelines import classification as clf
from scl.pipelines import engine, stages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a run folder of `scl demo`")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--lr", type=float, default=1e-3)
    args = parser.parse_args()
    exp = clf.load_run(args.run)
    if exp.network is None:
        raise SystemExit("the run has no task network")
    found = clf.releases(exp)
    found.pop("gaussian", None)
    data, test = exp.splits["obfuscator"], exp.splits["test"]
    print(f"adapted for {args.epochs} epochs at lr {args.lr:g} on {len(data.y)} releases of the obfuscator split")
    print("| release | frozen N | adapted N | adapted N on clean images |")
    print("|---|---:|---:|---:|")
    clean = engine.accuracy(engine.predict_proba(exp.network, test.x), test.y)
    print(f"| clean | {100 * clean:.1f}% | | |")
    for name, release in found.items():
        with stages.run_noise(exp.config), torch.no_grad():
            frozen = engine.accuracy(engine.predict_proba(exp.network, release(test.x, test.y)), test.y)
        network = copy.deepcopy(exp.network)
        for p in network.parameters():
            p.requires_grad_(True)

        def loss_fn(x: Tensor, y: Tensor, network: torch.nn.Module = network, release=release):
            with torch.no_grad():
                h = release(x, y)
            logits = network(h)
            return F.cross_entropy(logits, y), {"accuracy": float((logits.argmax(-1) == y).float().mean())}

        network.train()
        with stages.run_noise(exp.config):
            engine.train(loss_fn, list(network.parameters()), (data.x, data.y), epochs=args.epochs, lr=args.lr,
                         batch_size=exp.config["batch_size"], generator=torch.Generator().manual_seed(0))
            network.eval()
            with torch.no_grad():
                adapted = engine.accuracy(engine.predict_proba(network, release(test.x, test.y)), test.y)
                on_clean = engine.accuracy(engine.predict_proba(network, test.x), test.y)
        print(f"| {name} | {100 * frozen:.1f}% | {100 * adapted:.1f}% | {100 * on_clean:.1f}% |", flush=True)


if __name__ == "__main__":
    main()
