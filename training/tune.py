"""Ray Tune over Ray Train: ASHA across trials, `TorchTrainer` workers inside each trial.

Ray 2.60 runs Ray Train V2, where `Tuner(TorchTrainer(...))` is no longer accepted. The
working shape is a Tune function per trial that builds and fits a `TorchTrainer` whose
`RunConfig` carries `TuneReportCallback`: each `ray.train.report` on the workers becomes a
Tune result, so ASHA sees every epoch and can stop a weak trial early.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray.tune import Callback

from funnel.contracts.errors import FunnelError
from training.config import (
    Choice,
    LogUniform,
    ParamValue,
    RandInt,
    ResourcesConfig,
    StageConfig,
    Uniform,
)
from training.loops import LOOPS, threads_per_worker


class TrainingFailedError(FunnelError):
    """Every trial of a stage failed; the message carries the first error."""

    exit_code = 1


@dataclass(frozen=True)
class StageResult:
    stage: str
    config: dict[str, Any]
    trial_dir: Path
    metric: str
    value: float
    trials: int
    trials_stopped_early: int


def tuning_summary(r: StageResult) -> dict[str, Any]:
    """What the manifest records of a stage's tuning."""
    return {"best_config": r.config, "metric": r.metric, "best_val": r.value,
            "trials": r.trials, "stopped_early": r.trials_stopped_early}


def load_best(result: StageResult, build: Callable[..., Any], meta: dict[str, Any]) -> Any:
    """The best trial's model: built from its config, with its best epoch's weights."""
    from safetensors.torch import load_file

    model = build(result.config, meta)
    model.load_state_dict(load_file(str(result.trial_dir / "model.safetensors")))
    return model.eval()


def gpu_wanted(resources: ResourcesConfig) -> bool:
    if resources.use_gpu == "true":
        return True
    if resources.use_gpu == "false":
        return False
    import torch

    return bool(torch.cuda.is_available())


def to_search_space(params: dict[str, ParamValue]) -> dict[str, Any]:
    """Turn validated params into Ray Tune search-space objects."""
    from ray import tune

    space: dict[str, Any] = {}
    for name, v in params.items():
        if isinstance(v, LogUniform):
            space[name] = tune.loguniform(*v.loguniform)
        elif isinstance(v, Uniform):
            space[name] = tune.uniform(*v.uniform)
        elif isinstance(v, RandInt):
            space[name] = tune.randint(*v.randint)
        elif isinstance(v, Choice):
            space[name] = tune.choice(v.choice)
        else:
            space[name] = v
    return space


def tune_stage(stage: StageConfig, *, data_dir: Path, work_dir: Path,
               resources: ResourcesConfig, seed: int,
               on_result: Callable[[str, dict[str, Any]], None] | None = None,
               seeded_search: bool = False) -> StageResult:
    """Tune one stage; return the best trial (by its best epoch) and where its weights are.
    `seeded_search`: sample the trials' configs from `seed` (the same trials every run)."""
    from ray import tune
    from ray.train import FailureConfig, ScalingConfig
    from ray.train import RunConfig as TrainRunConfig
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    loop, metric = LOOPS[stage.stage]
    use_gpu = gpu_wanted(resources)
    storage = (work_dir / "ray").resolve()
    trials_root = (work_dir / "trials" / stage.stage).resolve()

    def trial(config: dict[str, Any]) -> None:
        trial_id = tune.get_context().get_trial_id()
        cfg = {**config, "trial_dir": str(trials_root / trial_id)}
        trainer = TorchTrainer(
            loop,
            train_loop_config=cfg,
            scaling_config=ScalingConfig(
                num_workers=resources.num_workers, use_gpu=use_gpu,
                resources_per_worker={"CPU": resources.cpus_per_worker,
                                      **({"GPU": 1} if use_gpu else {})}),
            run_config=TrainRunConfig(name=f"{stage.stage}-{trial_id}",
                                      storage_path=str(storage),
                                      failure_config=FailureConfig(max_failures=0),
                                      callbacks=[TuneReportCallback()]),  # type: ignore[list-item]
        )
        trainer.fit()

    space = {
        **to_search_space(stage.params),
        "data_dir": str(data_dir.resolve()), "max_epochs": stage.max_epochs, "seed": seed,
        "threads": threads_per_worker(resources.cpus_per_worker),
    }
    callbacks = [_ProgressCallback(stage.stage, metric, on_result)] if on_result else []
    tuner = tune.Tuner(
        # The trial function itself only waits on its TorchTrainer: give it a sliver of CPU
        # so that the workers' whole CPUs still fit (size cpus_per_worker accordingly).
        tune.with_resources(trial, {"CPU": 0.01}),
        param_space=space,
        tune_config=tune.TuneConfig(
            metric=metric, mode="max", num_samples=stage.num_samples,
            max_concurrent_trials=resources.max_concurrent_trials,
            search_alg=(BasicVariantGenerator(random_state=seed) if seeded_search else None),
            scheduler=ASHAScheduler(max_t=stage.max_epochs, grace_period=stage.grace_period,
                                    reduction_factor=2, time_attr="training_iteration"),
        ),
        run_config=tune.RunConfig(name=f"tune-{stage.stage}", storage_path=str(storage),
                                  verbose=0, callbacks=callbacks),  # type: ignore[arg-type]
    )
    grid = tuner.fit()
    _wait_for_released_resources()
    results = [grid[i] for i in range(len(grid))]
    ok = [r for r in results if r.error is None and r.metrics and metric in r.metrics]
    if not ok:
        first = next((r.error for r in results if r.error is not None), "no trial reported")
        raise TrainingFailedError(f"{stage.stage}: every trial failed; first error: {first}")
    best = grid.get_best_result(metric=metric, mode="max", scope="all")
    if best.metrics is None or best.config is None:
        raise TrainingFailedError(f"{stage.stage}: the best trial reported no metrics")
    trial_dir = Path(best.metrics["trial_dir"])
    best_value = json.loads((trial_dir / "best.json").read_text())[metric]
    stopped = sum(1 for r in ok if int((r.metrics or {}).get("epoch", 0)) < stage.max_epochs)
    config = {k: v for k, v in best.config.items()
              if k not in ("data_dir", "trial_dir", "threads")}
    return StageResult(stage=stage.stage, config=config, trial_dir=trial_dir, metric=metric,
                       value=float(best_value), trials=len(grid), trials_stopped_early=stopped)


def _wait_for_released_resources(timeout_s: float = 60.0) -> None:
    """Train V2 releases a finished run's placement group from a cleaner actor, a moment
    after the run ends; wait for that so the next stage does not queue behind it."""
    import time

    from ray.util import placement_group_table

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        live = [pg for pg in placement_group_table().values() if pg["state"] == "CREATED"]
        if not live:
            return
        time.sleep(0.5)


# Tune pickles its callbacks with the experiment state; a progress function that closes over
# a terminal display cannot be pickled, so callbacks carry only a key into this table, and
# the class lives at module level so that it is pickled by reference.
_PROGRESS_FNS: dict[str, Callable[[str, dict[str, Any]], None]] = {}


class _ProgressCallback(Callback):
    """A Tune callback that forwards each trial result to a registered progress function."""

    def __init__(self, stage: str, metric: str,
                 on_result: Callable[[str, dict[str, Any]], None] | None) -> None:
        self._stage, self._metric = stage, metric
        self._key = f"{stage}-{id(on_result)}"
        if on_result is not None:
            _PROGRESS_FNS[self._key] = on_result

    def on_trial_result(self, iteration: int, trials: list[Any], trial: Any,
                        result: dict[str, Any], **info: Any) -> None:
        fn = _PROGRESS_FNS.get(self._key)
        if fn is not None:
            fn(self._stage, {"trial": trial.trial_id, "epoch": result.get("epoch"),
                             self._metric: result.get(self._metric)})
