"""The command line: python -m cifar_core summary|train|evaluate|predict.

Exit status 0 on success, 2 with one ``error: ...`` line on stderr for bad usage or bad
input (never a traceback).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import TextIO

from . import bundled
from .config import (
    PRESETS,
    ConfigError,
    ModelConfig,
    TrainConfig,
    apply_overrides,
    check_owner,
    choices,
    get_preset,
    parse_overrides,
)
from .data import DataError, load_cifar10, subset
from .evaluation import evaluate
from .inference import ImageError, predict_files
from .jobs import ClusterError, connect_cluster
from .model import build_model, summary
from .pipeline import resume_run, train_run
from .record import RunError, RunMetrics
from .runs import load_run, make_run_folder, new_run_dir
from .training import BatchEvent, EpochEvent, Event

USER_ERRORS = (DataError, ConfigError, RunError, ImageError, ClusterError)
DEFAULT_PRESET = "baseline"


class UsageError(Exception):
    pass


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, like every other user error
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="python -m cifar_core", description="CIFAR-10 CNN Lab from the command line.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    def config_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--preset", choices=list(PRESETS), help=f"default: {DEFAULT_PRESET}")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="change one setting, e.g. --set batch_norm=true --set lr=3e-4")

    p = commands.add_parser("summary", help="print the layer table of a configuration")
    config_args(p)

    p = commands.add_parser("train", help="train a model and write a run folder")
    config_args(p)
    p.add_argument("--data-dir", help="folder holding cifar-10-batches-py/, that folder, or the .tar.gz")
    p.add_argument("--epochs", type=int)
    p.add_argument("--subset", type=int,
                   help="train on this many images (quick checks; default: the preset's, else all)")
    p.add_argument("--device", choices=choices("device"))
    p.add_argument("--seed", type=int)
    p.add_argument("--channel-order", choices=["correct", "as_presented"],
                   help="as_presented repeats the presentation's reshape mistake (default: correct)")
    p.add_argument("--out", type=Path, help="run folder (default: runs/<time>-<preset>)")
    p.add_argument("--name", help="who trains it, shown with the run (at most 40 letters, digits, "
                                  "spaces and . - _ ')")
    p.add_argument("--dry-run", action="store_true",
                   help="one epoch on 512 images: checks the whole path in seconds")
    p.add_argument("--resume", type=Path, metavar="RUN_DIR",
                   help="continue a stopped or interrupted run from its last complete epoch, "
                        "with its own settings (only --data-dir may be given with it)")

    p = commands.add_parser("evaluate", help="accuracy and confusion matrix of a run")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--data-dir")
    p.add_argument("--split", choices=["test", "val"], default="test")
    p.add_argument("--json", action="store_true")
    p.add_argument("--save-predictions", action="store_true",
                   help="store the test set's predictions in RUN_DIR (what bundled models ship with)")

    p = commands.add_parser("predict", help="classify image files (without RUN_DIR: the bundled model)")
    p.add_argument("paths", nargs="+", type=Path, metavar="[RUN_DIR] IMAGE")
    p.add_argument("--top", type=int, default=3)
    p.add_argument("--json", action="store_true")
    return parser


def configs_from(args: argparse.Namespace) -> tuple[ModelConfig, TrainConfig]:
    preset = get_preset(args.preset or DEFAULT_PRESET)
    overrides = parse_overrides(args.overrides)
    for key in ("epochs", "device", "seed"):
        if getattr(args, key, None) is not None:
            overrides[key] = getattr(args, key)
    return apply_overrides(preset.model, preset.train, overrides)


def cmd_summary(args: argparse.Namespace) -> None:
    model_cfg, _ = configs_from(args)
    print(summary(build_model(model_cfg)))


class EpochPrinter:
    """A progress bar per epoch on a terminal; one plain line per epoch otherwise."""

    def __init__(self, epochs: int, stream: TextIO = sys.stdout) -> None:
        self.epochs, self.stream = epochs, stream
        self.tty = stream.isatty()
        self.last_draw = 0.0

    def __call__(self, event: Event) -> None:
        if isinstance(event, BatchEvent) and self.tty:
            now = time.monotonic()
            if now - self.last_draw < 0.1 and event.batch != event.batches:
                return
            self.last_draw = now
            done = event.batch / event.batches
            bar = "#" * int(done * 30)
            self.stream.write(f"\repoch {event.epoch}/{self.epochs} [{bar:<30}] {event.batch}/"
                              f"{event.batches} loss {event.loss:.4f} {event.images_per_second:,.0f} img/s")
            self.stream.flush()
        elif isinstance(event, EpochEvent):
            r = event.record
            mark = " *" if event.improved else ""
            line = (f"epoch {r.epoch}/{self.epochs} loss {r.train_loss:.4f} acc {r.train_acc:.4f} "
                    f"val_loss {r.val_loss:.4f} val_acc {r.val_acc:.4f} {r.seconds:.1f}s{mark}")
            self.stream.write(("\r\033[K" if self.tty else "") + line + "\n")
            self.stream.flush()


def cmd_train(args: argparse.Namespace) -> None:
    if args.resume is not None:
        cmd_resume(args)
        return
    model_cfg, train_cfg = configs_from(args)
    owner = check_owner(args.name)
    preset_images = get_preset(args.preset or DEFAULT_PRESET).train_images
    n_subset = 512 if args.dry_run else args.subset if args.subset is not None else preset_images
    if n_subset is not None and n_subset < 1:
        raise UsageError("--subset must be at least 1")
    if args.dry_run:
        train_cfg = apply_overrides(model_cfg, train_cfg, {"epochs": 1})[1]
    started = time.perf_counter()
    channel_order = args.channel_order or "correct"
    data = load_cifar10(args.data_dir, channel_order=channel_order)
    cluster = connect_cluster()
    if cluster and channel_order != "correct":
        raise UsageError("--channel-order as_presented trains in this process only; unset CIFAR_RAY_ADDRESS")
    trained = subset(data, n_subset, seed=train_cfg.seed) if n_subset else data
    print(f"data: {len(trained.y_train):,} train / {len(trained.y_val):,} val / {len(trained.y_test):,} "
          f"test from {data.source} ({time.perf_counter() - started:.1f}s)")
    preset = args.preset or DEFAULT_PRESET
    out = args.out or new_run_dir(label=preset)
    printer = EpochPrinter(train_cfg.epochs)
    if cluster:
        print(f"training as a Ray task on {os.environ['CIFAR_RAY_ADDRESS']}")
        make_run_folder(out)
        # The whole data goes to the cluster once; the task takes the same subset there.
        metrics = cluster.train(out, data, model_cfg, train_cfg, preset=preset, subset=n_subset,
                                owner=owner, on_event=printer)
    else:
        metrics = train_run(model_cfg, train_cfg, trained, out, printer, preset=preset, subset=n_subset,
                            channel_order=channel_order, owner=owner)
    print_outcome(out, metrics)


# Options of a new run: with --resume the run's own settings apply.
NEW_RUN_OPTIONS = ("preset", "epochs", "subset", "device", "seed", "channel_order", "out", "name")


def cmd_resume(args: argparse.Namespace) -> None:
    given = [f"--{name.replace('_', '-')}" for name in NEW_RUN_OPTIONS if getattr(args, name) is not None]
    given += ["--set"] * bool(args.overrides) + ["--dry-run"] * args.dry_run
    if given:
        raise UsageError(f"--resume goes on with the run's own settings; leave out {', '.join(given)}")
    run = load_run(args.resume)
    blocker = run.resume_blocker()
    if blocker:
        raise RunError(blocker)
    started = time.perf_counter()
    data = load_cifar10(args.data_dir, channel_order=run.config.channel_order)
    if run.subset:
        data = subset(data, run.subset, seed=run.train_config.seed)
    epochs = run.train_config.epochs
    print(f"data: {len(data.y_train):,} train / {len(data.y_val):,} val / {len(data.y_test):,} test "
          f"from {data.source} ({time.perf_counter() - started:.1f}s)")
    print(f"resuming {run.path} ({run.preset}, {run.status}; {len(run.history)} of {epochs} epochs "
          "recorded) from its last complete epoch")
    cluster = connect_cluster() if run.config.channel_order == "correct" else None
    if cluster:
        print(f"training as a Ray task on {os.environ['CIFAR_RAY_ADDRESS']}")
        metrics = cluster.train(run.path, data, run.model_config, run.train_config, resume=True,
                                on_event=EpochPrinter(epochs))
    else:
        metrics = resume_run(run.path, data, EpochPrinter(epochs))
    print_outcome(run.path, metrics)


def print_outcome(out: Path, metrics: RunMetrics) -> None:
    if metrics.test_acc is None:
        print(f"run {out}: {metrics.status} before any epoch finished")
        return
    print(f"best epoch {metrics.best_epoch}: val_acc {metrics.val_acc:.4f} "
          f"test_acc {metrics.test_acc:.4f}; {metrics.train_seconds:.1f}s training, "
          f"{metrics.seconds_per_epoch:.1f}s/epoch, {metrics.images_per_second:,.0f} img/s")
    print(f"run folder: {out}")


def cmd_evaluate(args: argparse.Namespace) -> None:
    run = load_run(args.run_dir)
    if args.save_predictions and args.split != "test":
        raise UsageError("--save-predictions stores the test set's predictions; leave out --split")
    data = load_cifar10(args.data_dir)
    images, labels = data.split(args.split)
    result = evaluate(run.load_model(), images, labels, data.classes,
                      precision=run.train_config.precision, tta=run.train_config.tta)
    if args.save_predictions:
        saved = run.save_test_predictions(result)
        print(f"saved {len(labels):,} test predictions to {saved}", file=sys.stderr)
    if args.json:
        print(json.dumps({"run": str(run.path), "split": args.split, "accuracy": result.accuracy,
                          "confusion_matrix": result.confusion().tolist(),
                          "per_class": result.per_class().to_dict(orient="records")}, indent=2))
        return
    print(f"{run.name}: {args.split} accuracy {result.accuracy:.4f} on {len(labels):,} images\n")
    print(result.per_class().to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print("\nconfusion matrix (rows true, columns predicted):")
    short = [c[:5] for c in data.classes]
    print(" " * 7 + " ".join(f"{c:>5}" for c in short))
    for name, row in zip(short, result.confusion()):
        print(f"{name:>6} " + " ".join(f"{v:>5}" for v in row))


def cmd_predict(args: argparse.Namespace) -> None:
    paths = list(args.paths)
    if paths[0].is_dir():
        run = load_run(paths.pop(0))
    else:
        run = bundled.load_bundled()
    if not paths:
        raise UsageError("give at least one image file")
    if args.top < 1:
        raise UsageError("--top must be at least 1")
    files = []
    for path in paths:
        try:
            files.append((str(path), path.read_bytes()))
        except OSError as err:
            raise ImageError(f"{path}: {err.strerror}") from None
    results = predict_files(run.load_model(), files, run.classes, run.train_config.tta)
    failures = [r for r in results if isinstance(r, ImageError)]
    if args.json:
        print(json.dumps([{"file": r.name, "label": r.label, "top": r.top(args.top)}
                          if not isinstance(r, ImageError) else {"error": str(r)}
                          for r in results], indent=2))
    else:
        for r in results:
            if not isinstance(r, ImageError):
                top = ", ".join(f"{c} {p:.1%}" for c, p in r.top(args.top))
                print(f"{r.name}: {r.label} ({top})")
    if failures:
        raise ImageError(str(failures[0]) + (f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""))


COMMANDS = {"summary": cmd_summary, "train": cmd_train, "evaluate": cmd_evaluate, "predict": cmd_predict}


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        COMMANDS[args.command](args)
    except (UsageError, *USER_ERRORS) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
