"""Training configuration: pydantic models parsed once from a YAML file.

Search spaces are written in YAML as a fixed value or one distribution:
`{loguniform: [low, high]}`, `{uniform: [low, high]}`, `{randint: [low, high]}` (high
exclusive) or `{choice: [a, b, ...]}`. Every hyper-parameter has a name and an allowed range
per stage; an unknown name, a range outside the allowed one or an unknown key anywhere is
refused with the field and the allowed values in the message.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from funnel.contracts.errors import ConfigError, InvalidInputError

CONFIG_DIR = Path(__file__).parent / "configs"
PROFILE_NAMES = ("tiny", "demo", "large")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LogUniform(_Strict):
    loguniform: tuple[float, float]


class Uniform(_Strict):
    uniform: tuple[float, float]


class RandInt(_Strict):
    randint: tuple[int, int]


class Choice(_Strict):
    choice: Annotated[list[float | int | str], Field(min_length=1)]


Dist = LogUniform | Uniform | RandInt | Choice
ParamValue = float | int | str | Dist

# stage -> name -> (min, max) allowed for numbers, or a tuple of allowed strings
PARAM_RULES: dict[str, dict[str, tuple[float, float] | tuple[str, ...]]] = {
    "retrieval": {
        "lr": (1e-5, 1.0), "batch_size": (8, 65536), "emb_dim": (4, 512), "hidden": (8, 2048),
        "out_dim": (8, 512), "dropout": (0.0, 0.9), "temperature": (0.005, 2.0),
        "weight_decay": (0.0, 0.1),
    },
    "ranker": {
        "lr": (1e-5, 1.0), "batch_size": (8, 65536), "emb_dim": (4, 512), "hidden": (8, 2048),
        "n_layers": (1, 8), "dropout": (0.0, 0.9), "weight_decay": (0.0, 0.1),
    },
    "moderation": {
        "lr": (1e-5, 1.0), "batch_size": (8, 65536), "hidden": (8, 2048),
        "dropout": (0.0, 0.9), "loss": ("focal", "weighted_bce"), "focal_gamma": (0.0, 5.0),
        "weight_decay": (0.0, 0.1),
    },
    # fine-tuning MiniLM's top layers with the head (training/text_moderation.py)
    "moderation_finetune": {
        "lr": (1e-7, 1e-2), "batch_size": (4, 4096), "loss": ("focal", "weighted_bce"),
        "focal_gamma": (0.0, 5.0), "weight_decay": (0.0, 0.1), "dropout": (0.0, 0.5),
    },
}


def _check_value(stage: str, name: str, value: Any) -> None:
    rule = PARAM_RULES[stage][name]
    where = f"{stage}.params.{name}"
    if isinstance(rule[0], str):
        if value not in rule:
            raise ValueError(f"{where}: {value!r} is not allowed; allowed: {list(rule)}")
        return
    if isinstance(value, str) or not (rule[0] <= value <= rule[1]):
        raise ValueError(f"{where}: {value!r} is out of range; allowed: {rule[0]}..{rule[1]}")


class StageConfig(_Strict):
    """One model's tuning run."""

    stage: Literal["retrieval", "ranker", "moderation", "moderation_finetune"]
    num_samples: Annotated[int, Field(ge=1, le=1000)] = 2
    max_epochs: Annotated[int, Field(ge=1, le=1000)] = 4
    grace_period: Annotated[int, Field(ge=1, le=1000)] = 1
    params: dict[str, ParamValue]

    @model_validator(mode="after")
    def _check_params(self) -> StageConfig:
        allowed = PARAM_RULES[self.stage]
        unknown = sorted(set(self.params) - set(allowed))
        if unknown:
            raise ValueError(f"{self.stage}.params: unknown key(s) {unknown}; "
                             f"allowed: {sorted(allowed)}")
        missing = sorted(set(allowed) - set(self.params))
        if missing:
            raise ValueError(f"{self.stage}.params: missing key(s) {missing}")
        for name, v in self.params.items():
            if isinstance(v, LogUniform | Uniform | RandInt):
                lo, hi = next(iter(v.model_dump().values()))
                if not lo < hi:
                    raise ValueError(f"{self.stage}.params.{name}: low {lo} must be < high {hi}")
                _check_value(self.stage, name, lo)
                _check_value(self.stage, name, hi if not isinstance(v, RandInt) else hi - 1)
            elif isinstance(v, Choice):
                for c in v.choice:
                    _check_value(self.stage, name, c)
            else:
                _check_value(self.stage, name, v)
        if self.grace_period > self.max_epochs:
            raise ValueError(f"{self.stage}.grace_period ({self.grace_period}) must be <= "
                             f"max_epochs ({self.max_epochs})")
        return self


class SplitConfig(_Strict):
    """time: global time split (last `test_fraction` of time is test, the `val_fraction`
    before it validation). leave_last_out: per user, the last interaction is test and the
    one before it validation (MovieLens protocol)."""

    kind: Literal["time", "leave_last_out"] = "time"
    test_fraction: Annotated[float, Field(gt=0.0, lt=0.5)] = 0.2
    val_fraction: Annotated[float, Field(gt=0.0, lt=0.5)] = 0.1


class ResourcesConfig(_Strict):
    num_workers: Annotated[int, Field(ge=1, le=256)] = 1
    cpus_per_worker: Annotated[float, Field(gt=0.0, le=256)] = 1.0
    use_gpu: Literal["auto", "true", "false"] = "auto"
    max_concurrent_trials: Annotated[int, Field(ge=1, le=256)] = 2


class AnnConfig(_Strict):
    m: Annotated[int, Field(ge=4, le=128)] = 32
    ef_construction: Annotated[int, Field(ge=8, le=2048)] = 200
    ef_search: Annotated[int, Field(ge=8, le=4096)] = 256


class TrainConfig(_Strict):
    seed: int = 0
    split: SplitConfig = SplitConfig()
    resources: ResourcesConfig = ResourcesConfig()
    eval_k: tuple[int, ...] = (10, 50, 100)
    ann: AnnConfig = AnnConfig()
    retrieval: StageConfig
    ranker: StageConfig
    moderation: StageConfig
    reference_sample_rows: Annotated[int, Field(ge=100, le=1_000_000)] = 5000
    # The ranker's dense inputs, a subset of funnel.contracts.model_io.RANKER_DENSE in the order the
    # model takes them (default: all). The bundle records them; serving builds what each
    # bundle lists, so rankers with different features can be canaried against each other.
    ranker_dense_features: list[str] | None = None

    @model_validator(mode="after")
    def _check_dense(self) -> TrainConfig:
        if self.ranker_dense_features is not None:
            from training.features import check_dense_features

            check_dense_features(self.ranker_dense_features, where="ranker_dense_features")
        return self


class TextSplitConfig(_Strict):
    """The seeded split of a labelled-text file that gives none (stratified on labels)."""

    val_fraction: Annotated[float, Field(gt=0.0, lt=0.5)] = 0.1
    test_fraction: Annotated[float, Field(gt=0.0, lt=0.5)] = 0.2


class TextModerationConfig(_Strict):
    """`funnel train moderation --texts`: the frozen-encoder head (the baseline) and the
    fine-tuned encoder, trained in the same run on the same split.

    finetune_layers: how many of MiniLM's 6 layers train (the top ones); 6 is the whole
    encoder (its token embeddings stay frozen). The layers below are run once and cached.
    quantize: also export the fine-tuned model with dynamic int8 Linear layers, measured on
    the test split beside the float one; `serve_quantized` picks which one serves."""

    seed: int = 0
    max_length: Annotated[int, Field(ge=8, le=512)] = 64
    split: TextSplitConfig = TextSplitConfig()
    resources: ResourcesConfig = ResourcesConfig()
    finetune_layers: Annotated[int, Field(ge=1, le=6)] = 2
    quantize: bool = True
    serve_quantized: bool = False
    reference_sample_rows: Annotated[int, Field(ge=100, le=1_000_000)] = 5000
    frozen: StageConfig
    finetune: StageConfig

    @model_validator(mode="after")
    def _check(self) -> TextModerationConfig:
        if self.frozen.stage != "moderation":
            raise ValueError("frozen.stage must be moderation")
        if self.finetune.stage != "moderation_finetune":
            raise ValueError("finetune.stage must be moderation_finetune")
        if self.serve_quantized and not self.quantize:
            raise ValueError("serve_quantized needs quantize: true")
        return self


TEXT_MODERATION_CONFIG = CONFIG_DIR / "moderation-text.yaml"


def load_text_moderation_config(path: str | Path | None = None) -> TextModerationConfig:
    """Parse the moderation-from-texts config (default: configs/moderation-text.yaml);
    ConfigError (exit 2) naming the file and field."""
    path = Path(path or TEXT_MODERATION_CONFIG)
    data = read_yaml(path, what="moderation training config")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    for stage, name in (("frozen", "moderation"), ("finetune", "moderation_finetune")):
        if isinstance(data.get(stage), dict):
            data[stage] = {"stage": name, **data[stage]}
    try:
        return TextModerationConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_error(e, str(path))) from e


def _format_error(e: ValidationError, source: str) -> str:
    lines = []
    for err in e.errors():
        loc = ".".join(str(p) for p in err["loc"] if not isinstance(p, int) or True)
        msg = err["msg"].removeprefix("Value error, ")
        given = err.get("input")
        if err["type"] == "extra_forbidden":
            lines.append(f"{loc}: unknown key")
        elif isinstance(given, dict | list):
            lines.append(f"{loc}: {msg}")
        else:
            lines.append(f"{loc}: {msg} (given: {given!r})")
    return f"{source}: invalid training config:\n  " + "\n  ".join(lines)


def parse_config(data: dict[str, Any], *, source: str = "config") -> TrainConfig:
    for stage in ("retrieval", "ranker", "moderation"):
        if isinstance(data.get(stage), dict):
            data[stage] = {"stage": stage, **data[stage]}
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_error(e, source)) from e


def read_yaml(path: str | Path, *, what: str,
              error: type[InvalidInputError] = ConfigError) -> Any:
    """A YAML file's contents; `error` (exit 2) names the file when it cannot be read or
    parsed. `what` says what the file is, for the message."""
    path = Path(path)
    try:
        return yaml.safe_load(path.read_text())
    except OSError as e:
        raise error(f"{path}: cannot read the {what}: {e.strerror}") from e
    except yaml.YAMLError as e:
        raise error(f"{path}: not valid YAML: {e}") from e


def load_config(path: str | Path) -> TrainConfig:
    """Parse a YAML training config, raising ConfigError with the file and field named."""
    path = Path(path)
    data = read_yaml(path, what="training config")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got "
                          f"{type(data).__name__}")
    return parse_config(data, source=str(path))


def profile_config(profile: str) -> TrainConfig:
    if profile not in PROFILE_NAMES:
        raise ConfigError(f"profile: {profile!r} is not allowed; allowed: {list(PROFILE_NAMES)}")
    return load_config(CONFIG_DIR / f"{profile}.yaml")
