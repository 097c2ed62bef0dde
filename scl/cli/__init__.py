"""The ``scl`` command line: thin commands that parse options, build a config and call a pipeline."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from scl.pipelines.config import ClassificationConfig

app = typer.Typer(
    name="scl",
    help=(
        "Stochastic conditional layers: learn class-conditional noise that hides your data while "
        "a network still classifies it.\n\nStart with `scl demo --quick` (about 30 s)."
    ),
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="markdown",
)

QuickOpt = Annotated[bool, typer.Option("--quick", help="Few epochs: a smoke test of the whole pipeline.")]
OutOpt = Annotated[Path | None, typer.Option("--out", help="Run folder to create (default: runs/COMMAND-DATE-TIME).")]
DataOpt = Annotated[
    str | None,
    typer.Option(
        "--data",
        help="A folder with one sub-folder per class, or an .npz with x and y (default: embedded digits).",
    ),
]
ConfigOpt = Annotated[Path | None, typer.Option("--config", help="A JSON file of config overrides.")]
SetOpt = Annotated[
    list[str] | None, typer.Option("--set", help="Override one config key, e.g. --set stage1.lam=0.3 (repeatable).")
]
NetworkOpt = Annotated[
    Path | None, typer.Option("--network", help="A task network checkpoint to use instead of training one.")
]
NoProgressOpt = Annotated[bool, typer.Option("--no-progress", help="No progress bars (for logs and CI).")]
BudgetOpt = Annotated[
    float | None,
    typer.Option(
        "--max-accuracy-loss",
        help="The most test accuracy a release may lose against clean images, in points (default 1.0); every "
        "stage makes its release as private as it can within it. Same as --set utility.max_accuracy_loss=P.",
    ),
]


def _console():  # noqa: ANN202
    from rich.console import Console

    return Console(stderr=True)


def _fail(message: str) -> None:
    from rich.markup import escape

    # escape: messages quote user values and names such as scl[federated] literally
    _console().print(f"[bold red]error:[/bold red] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


@contextlib.contextmanager
def _user_errors() -> Iterator[None]:
    """Turn scl's errors (bad input, bad data, bad config) into one line and exit code 2."""
    from scl.errors import SCLError

    try:
        yield
    except SCLError as exc:
        _fail(str(exc))


def _default_out(command: str) -> Path:
    import datetime

    return Path("runs") / f"{command}-{datetime.datetime.now().strftime('%Y%m%d-%H%M%S')}"


def _config(
    quick: bool, config: Path | None, sets: list[str] | None, data: str | None, network: Path | None,
    max_accuracy_loss: float | None = None,
) -> ClassificationConfig:
    from scl.pipelines import classification

    overrides: dict = {}
    if max_accuracy_loss is not None:
        overrides["utility"] = {"max_accuracy_loss": max_accuracy_loss}
    if data is not None:
        overrides["data"] = data
    if network is not None:
        overrides["network"] = {"checkpoint": str(network)}
    return classification.build_config(quick=quick, config_file=config, assignments=sets or (), overrides=overrides)


def _summary(metrics: dict, out: Path) -> None:
    """The run's summary, from the pipeline that wrote it (:class:`scl.pipelines.Pipeline`), and
    where its folder is."""
    from rich.markup import escape
    from rich.text import Text

    from scl import pipelines
    from scl.report import pipeline_of

    console = _console()
    for item in pipelines.get(pipeline_of(metrics)).summary(metrics):
        console.print(item, highlight=False, soft_wrap=isinstance(item, Text))  # lines as they are, tables fitted
    console.print(f"\nrun folder: [bold]{escape(str(out))}[/bold]  (open {escape(str(out / 'report.html'))})")


@app.command()
def demo(
    quick: QuickOpt = False,
    sweep: Annotated[bool, typer.Option("--sweep", help="Also sweep λ and plot accuracy against privacy.")] = False,
    out: OutOpt = None,
    data: DataOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    network: NetworkOpt = None,
    max_accuracy_loss: BudgetOpt = None,
    no_progress: NoProgressOpt = False,
) -> None:
    """Run the whole classification experiment: train, evaluate, attack, report.

    Example: `scl demo --quick --out runs/first`
    """
    from scl.pipelines import classification

    with _user_errors():
        cfg = _config(quick, config, set_, data, network, max_accuracy_loss)
        out = out or _default_out("demo")
        folder, metrics = classification.demo(
            cfg, out, sweep_lams=sweep, console=_console(), show_progress=not no_progress
        )
    _summary(metrics, folder)


@app.command()
def train(
    quick: QuickOpt = False,
    out: OutOpt = None,
    data: DataOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    network: NetworkOpt = None,
    max_accuracy_loss: BudgetOpt = None,
    no_progress: NoProgressOpt = False,
) -> None:
    """Train N, the stochastic layer (stage 1) and the selections (stage 2); measure accuracy.

    Example: `scl train --data my_images/ --out runs/mine`
    """
    from scl.pipelines import classification

    with _user_errors():
        cfg = _config(quick, config, set_, data, network, max_accuracy_loss)
        out = out or _default_out("train")
        folder, metrics = classification.train_command(cfg, out, console=_console(), show_progress=not no_progress)
    _summary(metrics, folder)


@app.command()
def evaluate(
    run: Annotated[Path, typer.Argument(help="A run folder written by `scl train` or `scl demo`.")],
    no_progress: NoProgressOpt = False,
) -> None:
    """Measure the accuracy of a run again (clean, hard, soft, gated) and update its report.

    Example: `scl evaluate runs/mine`
    """
    _update(run, "evaluate", no_progress)


@app.command()
def attack(
    run: Annotated[Path, typer.Argument(help="A run folder written by `scl train` or `scl demo`.")],
    no_progress: NoProgressOpt = False,
) -> None:
    """Run the privacy attacks on a run (decoder, white-box, attribute, dCor) and update its report.

    Example: `scl attack runs/mine`
    """
    _update(run, "attack", no_progress)


def _update(run: Path, action: str, no_progress: bool) -> None:
    from scl.pipelines import classification

    with _user_errors():
        metrics = classification.update_run(run, action, console=_console(), show_progress=not no_progress)
    _summary(metrics, run)


@app.command()
def obfuscate(
    run: Annotated[Path, typer.Option("--run", help="A run folder with trained checkpoints.")],
    input_: Annotated[Path, typer.Option("--input", help="An image, a folder of images, or an .npz with x.")],
    out: Annotated[Path, typer.Option("--out", help="A folder for PNGs, or a file ending in .npz.")],
    selection: Annotated[
        str | None,
        typer.Option("--selection", help="Label-free selection: gated (default when the run has it) or soft."),
    ] = None,
) -> None:
    """Obfuscate images without labels (gated or soft selection), with fresh cipher-stream noise.

    Example: `scl obfuscate --run runs/mine --input photos/ --out obfuscated/`
    """
    from rich.markup import escape

    from scl.pipelines import obfuscate as job
    from scl.random import summary

    with _user_errors():
        count = job.obfuscate_files(run, input_, out, selection=selection)
    _console().print(f"obfuscated {count} images into [bold]{out}[/bold]")
    _console().print(escape(summary()))  # where the noise came from (scl.random.describe())


@app.command()
def export(
    source: Annotated[
        Path,
        typer.Argument(help="A run folder of `scl train`/`scl demo`, or an obfuscator checkpoint (.safetensors)."),
    ],
    out: Annotated[Path, typer.Option("--out", help="The ONNX file to write, e.g. obfuscator.onnx.")],
    input_shape: Annotated[
        str | None,
        typer.Option("--input-shape", help="One input's shape C,H,W without the batch (default: from the run)."),
    ] = None,
    selection: Annotated[
        str | None,
        typer.Option("--selection", help="Label-free selection: gated (default when the run has it) or soft."),
    ] = None,
    opset: Annotated[int | None, typer.Option("--opset", help="ONNX opset, 13 to 20 (default: 20).")] = None,
    noise: Annotated[
        str,
        typer.Option(
            "--noise",
            help=(
                "input (default): the model takes the noise as a second input, `noise`, that you fill on "
                "every run from a cryptographic source (scl.cipher / scl.export.draw_noise: AES-256-CTR keyed "
                "from os.urandom; or os.urandom bytes), so nobody can regenerate it. internal: the model "
                "draws it with ONNX random ops, which onnxruntime "
                "seeds from one 32-bit seed an attacker could search; not for private data."
            ),
        ),
    ] = "input",
) -> None:
    """Export a trained obfuscator to ONNX: label-free obfuscation with onnxruntime, no torch, fresh noise per run.

    Example: `scl export runs/mine --out obfuscator.onnx` (or `scl export obfuscator.safetensors --out
    obfuscator.onnx --input-shape 3,16,16`); then feed `x` and fresh `noise` (scl.export.draw_noise, README).
    """
    from rich.markup import escape

    from scl import export as job

    with _user_errors():
        obfuscator, recorded = job.load_for_export(source, selection=selection)
        shape = job.parse_shape(input_shape) if input_shape is not None else recorded
        path = job.export_onnx(obfuscator, out, input_shape=shape, opset=opset, noise=noise)
        summary = job.describe(path)
    _console().print(
        f"wrote [bold]{escape(str(path))}[/bold] (noise mode: {escape(noise)}): {escape(summary)}",
        highlight=False,
        soft_wrap=True,
    )


bench_app = typer.Typer(rich_markup_mode="markdown")  # its help: the callback's docstring
app.add_typer(bench_app, name="bench")


@bench_app.callback(invoke_without_command=True)
def bench(
    ctx: typer.Context,
    repeats: Annotated[int, typer.Option(help="Interleaved repetitions per case.")] = 30,
) -> None:
    """Benchmarks: layer speed as ratios against a plain convolution, side by side; `scl bench privacy`: the
    privacy-utility frontier against published baselines.

    Example: `scl bench --repeats 10`; `scl bench privacy --quick`
    """
    if ctx.invoked_subcommand is not None:
        return
    from scl.bench import layer_cases, measure, noise_floor, ratios, table

    cases = layer_cases()
    rows = ratios(cases, measure(cases, repeats=repeats))
    typer.echo(table(rows))
    floor = noise_floor(rows)
    if floor is not None:
        typer.echo(
            f"floor for any Gaussian layer's soft inference on this machine (conv + noise draw + softplus): "
            f"{floor:.2f}x the plain conv"
        )


@bench_app.command("privacy")
def bench_privacy(
    quick: QuickOpt = False,
    budgets: Annotated[
        str | None,
        typer.Option("--budgets", help="Accuracy budgets in points, comma-separated (default 0.5,1,2,5; "
                     "with --quick 1,2)."),
    ] = None,
    out: OutOpt = None,
    data: DataOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    no_progress: NoProgressOpt = False,
) -> None:
    """The privacy-utility frontier: scl against plain noise, Shredder, Cloak (scl without classes) and NoPeek.

    Every method is trained (or calibrated) at each accuracy budget and attacked by the same attackers on
    the same splits; writes metrics.json, table.md, figures/frontier_*.png and report.html.

    Example: `scl bench privacy --quick --budgets 1,2 --out runs/frontier`
    """
    from scl.pipelines import bench_privacy as job

    with _user_errors():
        chosen = job.parse_budgets(budgets, quick=quick)
        cfg = job.build_config(quick=quick, config_file=config, assignments=set_ or (),
                               overrides=None if data is None else {"data": data})
        out = out or _default_out("bench-privacy")
        folder, metrics = job.run(cfg, out, budgets=chosen, console=_console(), show_progress=not no_progress)
    _summary(metrics, folder)


@app.command()
def federated(
    quick: QuickOpt = False,
    clients: Annotated[int | None, typer.Option("--clients", help="Number of clients K (default 3).")] = None,
    engine: Annotated[
        str | None, typer.Option("--engine", help="flower (Flower simulation, default) or local (one process).")
    ] = None,
    partition: Annotated[
        str | None, typer.Option("--partition", help="How the clients' data is split: iid or dirichlet.")
    ] = None,
    out: OutOpt = None,
    data: DataOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    no_progress: NoProgressOpt = False,
) -> None:
    """Federated learning (spec §2.3): grow the clean share p; clients train on obfuscated, screened data.

    Example: `scl federated --quick --engine local --clients 3 --out runs/fed`
    """
    from scl.pipelines import federated as job

    overrides: dict = {"federated": {}}
    for key, value in (("clients", clients), ("engine", engine), ("partition", partition)):
        if value is not None:
            overrides["federated"][key] = value
    if data is not None:
        overrides["data"] = data
    with _user_errors():
        cfg = job.build_config(quick=quick, config_file=config, assignments=set_ or (), overrides=overrides)
        out = out or _default_out("federated")
        folder, metrics = job.run(cfg, out, console=_console(), show_progress=not no_progress)
    _summary(metrics, folder)


@app.command()
def detect(
    quick: QuickOpt = False,
    out: OutOpt = None,
    data: Annotated[
        str | None,
        typer.Option(
            "--data",
            help="An .npz (images, boxes, box_labels, box_image) or a COCO .json (default: embedded scenes).",
        ),
    ] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    max_map_loss: Annotated[
        float | None,
        typer.Option(
            "--max-map-loss",
            help="The most test mAP@.5 a release may lose against clean scenes, in points (default 3.0); "
            "stage 1 and the soft maps make their release as private as they can within it. Same as --set "
            "utility.max_map_loss=P.",
        ),
    ] = None,
    no_progress: NoProgressOpt = False,
) -> None:
    """Run the detection experiment: detector, box-selected noise layer, soft maps, mAP, attack, report.

    Example: `scl detect --quick --out runs/boxes`
    """
    from scl.pipelines import detection

    overrides: dict = {}
    if data is not None:
        overrides["data"] = data
    if max_map_loss is not None:
        overrides["utility"] = {"max_map_loss": max_map_loss}
    with _user_errors():
        cfg = detection.build_config(quick=quick, config_file=config, assignments=set_ or (),
                                     overrides=overrides or None)
        out = out or _default_out("detect")
        folder, metrics = detection.run(cfg, out, console=_console(), show_progress=not no_progress)
    _summary(metrics, folder)


def main() -> None:
    """Entry point of the ``scl`` script."""
    app(prog_name="scl")


if __name__ == "__main__":
    main()
