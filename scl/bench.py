"""Speed benchmarks: ratios measured side by side in one run (``make bench`` / ``scl bench``).

Absolute times drift on shared machines; ratios of cases timed in interleaved repetitions do not
drift much, so every target is a ratio against a plain layer timed in the same loop.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from scl.layers import StochasticConditionalConv2d
from scl.random import randn, stream
from scl.selection import ClassIndex, SoftSelection

TORCH_RANDN_ROW = "torch.randn of the output alone"
SCL_RANDN_ROW = "scl.random.randn, torch.Generator (threaded) of the output alone"
SECURE_RANDN_ROW = "secure Gaussian draw (scl.random.randn, AES-256-CTR stream) of the output alone"
SOFTPLUS_ROW = "softplus of the output's scale map alone"
STOCHASTIC_INFER_ROW = "plain conv + gaussian sampling inference (torch's generator)"
STOCHASTIC_SECURE_ROW = "plain conv + gaussian sampling inference (cipher stream)"


@dataclass
class Case:
    name: str
    run: Callable[[], object]
    baseline: str
    must: float | None = None
    goal: float | None = None
    stochastic_baseline: str = ""


def _fwd_bwd(fn: Callable[[], torch.Tensor]) -> Callable[[], None]:
    def run() -> None:
        fn().sum().backward()

    return run


def layer_cases(batch: int = 64, size: int = 32) -> list[Case]:
    """The layer benchmarks of the core issue: conv 3->16 (gaussian: 32 maps), k=3."""
    torch.manual_seed(0)
    x = torch.rand(batch, 3, size, size)
    plain = nn.Conv2d(3, 32, 3, padding=1)
    cases = [
        Case("plain nn.Conv2d 3->32 fwd+bwd", _fwd_bwd(lambda: plain(x)), ""),
    ]
    with torch.no_grad():
        cases.append(Case("plain nn.Conv2d 3->32 inference", lambda: plain(x), ""))
    base_train, base_infer = cases[0].name, cases[1].name
    # An unconditional stochastic layer: the same conv and the same Gaussian sampling, no classes.
    # Its ratio is the price of the noise alone; the layers' ratios above it are the price of
    # conditioning on the class.
    from scl.distributions import get

    gaussian = get("gaussian")

    def stochastic_plain() -> torch.Tensor:
        return gaussian.sample_joint(plain(x), 1, training=torch.is_grad_enabled())[0]

    cases.append(Case("plain conv + gaussian sampling fwd+bwd", _fwd_bwd(stochastic_plain), base_train))

    def stochastic_plain_infer() -> torch.Tensor:
        with torch.no_grad():
            return stochastic_plain()

    cases.append(Case(STOCHASTIC_INFER_ROW, stochastic_plain_infer, base_infer))
    stoch_train, stoch_infer = cases[2].name, cases[3].name

    def stochastic_secure_infer() -> torch.Tensor:
        with torch.no_grad():
            return gaussian.sample_joint(plain(x), 1, training=False, generator=stream())[0]

    cases.append(Case(STOCHASTIC_SECURE_ROW, stochastic_secure_infer, base_infer))
    # The per-element work every Gaussian layer of this output size must do besides its conv,
    # timed alone: it bounds from below what any implementation can reach against the plain conv.
    out_shape = (batch, 16, size, size)
    raw = torch.randn(out_shape)
    cases.append(Case(TORCH_RANDN_ROW, lambda: torch.randn(out_shape), base_infer))
    cases.append(Case(SCL_RANDN_ROW, lambda: randn(out_shape, generator=torch.default_generator), base_infer))
    cases.append(Case(SECURE_RANDN_ROW, lambda: randn(out_shape, generator=stream()), base_infer))
    cases.append(Case(SOFTPLUS_ROW, lambda: F.softplus(raw), base_infer))
    for classes in (10, 100):
        layer = StochasticConditionalConv2d(3, 16, 3, classes, padding=1)
        labels = torch.randint(0, classes, (batch,))
        hard = ClassIndex(labels, classes)
        onehot = F.one_hot(labels, classes).float()

        def naive(layer: StochasticConditionalConv2d = layer, onehot: torch.Tensor = onehot) -> torch.Tensor:
            out: torch.Tensor | int = 0
            for c in range(layer.num_classes):  # the loop scl avoids
                pi = onehot[:, c, None, None, None]
                out = out + F.conv2d(x * pi, layer.weight[c], padding=1) + layer.bias[c, :, None, None] * pi
            return cast(torch.Tensor, out)  # num_classes >= 1

        cases.append(
            Case(
                f"C={classes} hard selection fwd+bwd",
                _fwd_bwd(cast("Callable[[], torch.Tensor]", lambda lay=layer, h=hard: lay(x, h))),
                base_train,
                2.0,
                1.3,
                stoch_train,
            )
        )
        cases.append(
            Case(
                f"C={classes} hard selection, parameter maps only fwd+bwd",
                _fwd_bwd(cast("Callable[[], torch.Tensor]", lambda lay=layer, h=hard: torch.cat(lay.params(x, h), 1))),
                base_train,
            )
        )
        cases.append(Case(f"C={classes} naive per-class loop fwd+bwd", _fwd_bwd(naive), base_train))
        soft = SoftSelection(classes, (3, 1, 1))
        layer_eval = StochasticConditionalConv2d(3, 16, 3, classes, padding=1).eval()

        def soft_infer(lay: StochasticConditionalConv2d = layer_eval, s: SoftSelection = soft) -> torch.Tensor:
            with torch.no_grad():
                return lay(x, s())

        cases.append(
            Case(soft_row(classes), soft_infer, base_infer, 1.5, None, stoch_infer)
        )
        old_source = torch.Generator()  # MT19937: the eval-mode source before the cipher stream

        def soft_infer_old(
            lay: StochasticConditionalConv2d = layer_eval, s: SoftSelection = soft, g: torch.Generator = old_source
        ) -> torch.Tensor:
            with torch.no_grad():
                return lay(x, s(), generator=g)

        cases.append(Case(soft_old_row(classes), soft_infer_old, base_infer, None, None, stoch_infer))

        def soft_params(lay: StochasticConditionalConv2d = layer_eval, s: SoftSelection = soft) -> torch.Tensor:
            with torch.no_grad():
                return torch.cat(lay.params(x, s()), 1)

        cases.append(Case(f"C={classes} soft inference, parameter maps only", soft_params, base_infer))
        if classes == 10:
            gate = torch.softmax(torch.randn(batch, classes), -1)
            cases.append(
                Case(
                    f"C={classes} gated per-sample fwd+bwd",
                    _fwd_bwd(cast("Callable[[], torch.Tensor]", lambda lay=layer, g=gate: lay(x, g))),
                    base_train,
                    3.0,
                    None,
                    stoch_train,
                )
            )
    return cases


def soft_row(classes: int) -> str:
    return f"C={classes} soft inference (cached kernels)"


def soft_old_row(classes: int) -> str:
    return f"C={classes} soft inference, torch.Generator noise (the eval path before the cipher stream)"


def noise_comparisons() -> list[tuple[str, str, str, float | None, float | None]]:
    """``(label, case, baseline, must, goal)``: the noise source's targets (issue 12), each a ratio
    of two rows of :func:`layer_cases` timed in the same repetitions."""
    rows: list[tuple[str, str, str, float | None, float | None]] = [
        ("secure Gaussian draw of the output (1M float32) / torch.randn", SECURE_RANDN_ROW, TORCH_RANDN_ROW,
         1.0, 0.7),
        ("unconditional stochastic conv: cipher stream / torch's generator", STOCHASTIC_SECURE_ROW,
         STOCHASTIC_INFER_ROW, None, None),
    ]
    for classes in (10, 100):
        rows += [
            (f"C={classes} soft inference (cipher stream) / unconditional stochastic conv (torch's generator)",
             soft_row(classes), STOCHASTIC_INFER_ROW, None, None),
            (f"C={classes} soft inference, before (torch.Generator) / the same column",
             soft_old_row(classes), STOCHASTIC_INFER_ROW, None, None),
            (f"C={classes} soft inference: cipher stream / before (torch.Generator)",
             soft_row(classes), soft_old_row(classes), 1.0, None),
        ]
    return rows


def noise_table(times: dict[str, list[float]]) -> str:
    """The noise source's ratios (:func:`noise_comparisons`) as a markdown table."""
    lines = ["| comparison | ratio | must | goal | met |", "|---|---:|---:|---:|:---:|"]
    for label, case, baseline, must, goal in noise_comparisons():
        ratio = _ratio(times, case, baseline)
        if ratio is None:
            continue
        met = "" if must is None else ("yes" if ratio <= must else "NO")
        if goal is not None and must is not None:
            met += " (goal: " + ("yes" if ratio <= goal else "NO") + ")"
        lines.append(
            f"| {label} | {ratio:.2f}x | {'' if must is None else f'<= {must}x'} | "
            f"{'' if goal is None else f'<= {goal}x'} | {met} |"
        )
    return "\n".join(lines)


def measure(cases: list[Case], repeats: int = 30, warmup: int = 3) -> dict[str, list[float]]:
    """Interleaved timings: each repetition runs every case once, in the same order."""
    times: dict[str, list[float]] = {c.name: [] for c in cases}
    for rep in range(warmup + repeats):
        for case in cases:
            start = time.perf_counter()
            case.run()
            elapsed = time.perf_counter() - start
            if rep >= warmup:
                times[case.name].append(elapsed)
    return times


def _ratio(times: dict[str, list[float]], case: str, baseline: str) -> float | None:
    if not baseline:
        return None
    return statistics.median(a / b for a, b in zip(times[case], times[baseline], strict=False))


def ratios(cases: list[Case], times: dict[str, list[float]]) -> list[dict[str, object]]:
    """Median of the per-repetition ratios against each case's baselines."""
    rows = []
    for case in cases:
        ratio = _ratio(times, case.name, case.baseline)
        met = None if ratio is None or case.must is None else ratio <= case.must
        rows.append(
            {
                "case": case.name,
                "ms": statistics.median(times[case.name]) * 1e3,
                "ratio": ratio,
                "stochastic": _ratio(times, case.name, case.stochastic_baseline),
                "must": case.must,
                "goal": case.goal,
                "met": met,
            }
        )
    return rows


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{cpu}; {os.cpu_count()} cores, torch {torch.__version__} with {torch.get_num_threads()} "
        f"threads; Python {platform.python_version()}; {platform.system()} {platform.release()}"
    )


def table(rows: list[dict[str, object]]) -> str:
    lines = [
        "| case | median ms | vs plain conv | must | goal | met | vs plain stochastic conv |",
        "|---|---:|---:|---:|---:|:---:|---:|",
    ]
    for r in rows:
        ratio = "" if r["ratio"] is None else f"{r['ratio']:.2f}x"
        must = "" if r["must"] is None else f"<= {r['must']}x"
        goal = "" if r["goal"] is None else f"<= {r['goal']}x"
        met = "" if r["met"] is None else ("yes" if r["met"] else "NO")
        stochastic = "" if r["stochastic"] is None else f"{r['stochastic']:.2f}x"
        lines.append(f"| {r['case']} | {r['ms']:.2f} | {ratio} | {must} | {goal} | {met} | {stochastic} |")
    return "\n".join(lines)


def noise_floor(rows: list[dict[str, object]]) -> float | None:
    """A floor under the soft-inference ratio of any Gaussian layer of the benchmarked size:
    1 (the convolution) + the cheapest noise draw alone + the softplus alone, each against the plain
    conv's forward, from the rows of :func:`layer_cases`."""
    by_name = {str(r["case"]): r["ratio"] for r in rows}
    found = (by_name.get(row) for row in (TORCH_RANDN_ROW, SCL_RANDN_ROW, SECURE_RANDN_ROW))
    draws = [d for d in found if isinstance(d, float)]
    softplus = by_name.get(SOFTPLUS_ROW)
    if not draws or not isinstance(softplus, float):
        return None
    return 1.0 + min(draws) + softplus
