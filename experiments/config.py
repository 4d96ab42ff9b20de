"""Configuration as data: what a study runs is its preset, then a config file, then `--set` overrides.

Keys (the same in a config file, in `--set key=value` and as keyword arguments of experiments.run):

    dataset, preset, backend, seeds, device, deterministic      the run as a whole
    batch_size, train_size, test_size, augment, channels_last   the preset's data settings
      (augment: crops + flips, or crops only where flips change labels: cnnext.data)
    epochs, lr, optimizer, schedule, weight_decay, momentum,    training of every model
      nesterov, step_size, gamma, warmup, label_smoothing,        (cnnext.train.TrainConfig)
      decay_biases_and_norms, max_grad_norm (null: no clipping)
    <model>.<training field>       one model's training, e.g. CNN.lr=0.05
    <model>.<model setting>        one model's architecture, e.g. CNN.width=32, MLP.hidden=[256,128]
    <model>.max_seeds              at most this many seeds of one model (null: all), e.g.
                                     ResNet-20.max_seeds=3

<model> is a model's label in the study (as in its report, e.g. "ResNet-8", "plain 6") or its run
folder's name (spaces as underscores, "plain_6"). A config file is YAML (.yaml/.yml), TOML (.toml)
or JSON (.json) holding a mapping of these keys; nested mappings are joined with dots
({"CNN": {"width": 32}} is CNN.width). The config.json a study records is accepted as it stands
and replays that study exactly: same models, seeds, data sizes, backend and device, hence the same
run id and folder. `--set` values are read as YAML scalars (3, 0.05, true, null, [256, 128]).

Every key and value is checked before anything is written: an unknown key, a value of the wrong
type or out of range raises ConfigError naming the key.
"""

import dataclasses
import inspect
import json
import re
import sys
import typing
from pathlib import Path

import torch

from cnnext.backends import BACKENDS
from cnnext.models.registry import model_builder
from cnnext.train import TrainConfig

from .spec import ModelSpec, Preset

__all__ = ["ConfigError", "Settings", "load_file", "parse_assignments", "resolve"]


class ConfigError(ValueError):
    """A configuration key or value that cannot be used; the message names the key."""


# Keys of a recorded config.json that describe where and when a study ran, not what it runs.
RECORD_ONLY = {
    "study",
    "command",
    "machine",
    "git_commit",
    "cnnext_version",
    "torch",
    "cnnext_build",
    "train_images",
    "test_images",
    "started",
    "resumed",
    "expected",
    "overrides",
}
RUN_KEYS = {"dataset": str, "preset": str, "backend": str, "seeds": int, "device": str, "deterministic": bool}
PRESET_KEYS = {
    "batch_size": int,
    "train_size": int | None,
    "test_size": int | None,
    "augment": bool | None,
    "channels_last": bool,
}
TRAIN_KEYS = typing.get_type_hints(TrainConfig)
MODEL_BUILD_ARGUMENTS = {"backend", "in_channels", "in_features", "num_classes"}  # set by the runner


@dataclasses.dataclass(frozen=True)
class Settings:
    """The run-level choices of a study after defaults, file and overrides."""

    dataset: str
    preset: str
    backend: str
    seeds: int | None  # None: the preset's
    device: str
    deterministic: bool


def load_file(path: str | Path) -> dict:
    """A config file's mapping, nested keys joined with dots (see the module docstring)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise ConfigError(f"--config {path}: cannot be read ({error.strerror})") from None
    suffix = path.suffix.lower()
    try:
        if suffix in (".yaml", ".yml"):
            import yaml

            value = yaml.safe_load(text)
        elif suffix == ".toml":
            if sys.version_info >= (3, 11):
                import tomllib
            else:  # pragma: no cover - Python 3.10
                import tomli as tomllib
            value = tomllib.loads(text)
        elif suffix == ".json":
            value = json.loads(text)
        else:
            raise ConfigError(f"--config {path}: expected a .yaml, .yml, .toml or .json file")
    except ConfigError:
        raise
    except Exception as error:  # the parsers' own error types differ; all mean "does not parse"
        raise ConfigError(f"--config {path} does not parse: {error}") from None
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(
            f"--config {path}: expected a mapping of keys to values, got {type(value).__name__}"
        )
    if "runs" in value:  # a recorded config.json: kept whole, resolve() rebuilds its preset
        return value
    return _flatten(value)


def _flatten(mapping: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def parse_assignments(assignments: list[str]) -> dict:
    """`--set key=value` strings as a mapping; values read as YAML scalars."""
    import yaml

    parsed = {}
    for text in assignments:
        key, sep, value = text.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {text!r}: expected key=value, e.g. --set lr=0.05")
        if _NUMBER.fullmatch(value.strip()):  # YAML 1.1 reads 5e-2 (no dot) as a string
            parsed[key.strip()] = float(value) if any(c in value for c in ".eE") else int(value)
            continue
        try:
            parsed[key.strip()] = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError:
            parsed[key.strip()] = value  # not YAML: the string itself, checked against the key's type
    return parsed


_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def _type_name(kind) -> str:
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
    args = typing.get_args(kind)
    if type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return f"{_type_name(rest[0])} or null"
    if typing.get_origin(kind) is tuple:
        return f"a list of {_type_name(args[0]).replace('an ', '').replace('a ', '')}s"
    return names.get(kind, getattr(kind, "__name__", str(kind)))


def coerce(key: str, value, kind):
    """`value` as type `kind` (int, float, bool, str, X | None, tuple[X, ...]) or ConfigError."""
    args = typing.get_args(kind)
    if type(None) in args:
        if value is None:
            return None
        kind = next(a for a in args if a is not type(None))
        args = typing.get_args(kind)
    ok = True
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif kind is str:
        ok = isinstance(value, str)
    elif typing.get_origin(kind) is tuple:
        ok = isinstance(value, (list, tuple))
        if ok:
            return tuple(coerce(f"{key}[{i}]", v, args[0]) for i, v in enumerate(value))
    if not ok:
        raise ConfigError(f"{key}: expected {_type_name(kind)}, got {value!r} ({type(value).__name__})")
    return value


def model_settings(family: str) -> dict:
    """The architecture keys of a model family, with their types (from its builder's signature)."""
    builder = model_builder(family)
    hints = typing.get_type_hints(builder.__init__ if inspect.isclass(builder) else builder)
    return {k: v for k, v in hints.items() if k not in MODEL_BUILD_ARGUMENTS and k != "return"}


def _positive(key: str, value, allow_none: bool = False):
    if value is None and allow_none:
        return value
    if value < 1:
        raise ConfigError(f"{key}: must be >= 1, got {value}")
    return value


def _model_lookup(models: tuple[ModelSpec, ...]) -> dict[str, ModelSpec]:
    names = {}
    for m in models:
        names[m.label] = m
        names[m.label.replace(" ", "_").replace("/", "_")] = m
    return names


def _replace_train(model: ModelSpec, key: str, field: str, value) -> ModelSpec:
    value = coerce(key, value, TRAIN_KEYS[field])
    try:
        train = dataclasses.replace(model.train, **{field: value})
    except ValueError as error:  # TrainConfig's own range checks
        raise ConfigError(f"{key}: {error}") from None
    return dataclasses.replace(model, train=train)


def apply_overrides(preset: Preset, overrides: dict) -> Preset:
    """`preset` with preset, training and per-model keys of `overrides` applied (run-level keys
    are resolve()'s). Raises ConfigError for a key that names nothing of this study."""
    models = list(preset.models)
    changes = {}
    lookup = _model_lookup(preset.models)
    for key, value in overrides.items():
        if key in PRESET_KEYS:
            value = coerce(key, value, PRESET_KEYS[key])
            changes[key] = (
                value
                if key in ("augment", "channels_last")
                else _positive(key, value, allow_none=key != "batch_size")
            )
        elif key in TRAIN_KEYS:
            models = [_replace_train(m, key, key, value) for m in models]
        elif "." in key:
            label, field = key.rsplit(".", 1)
            if label not in lookup:
                raise ConfigError(
                    f"{key}: no model {label!r} in this study; its models: "
                    + ", ".join(m.label for m in preset.models)
                )
            index = models.index(next(m for m in models if m.label == lookup[label].label))
            model = models[index]
            if field in TRAIN_KEYS:
                models[index] = _replace_train(model, key, field, value)
            elif field == "max_seeds":
                max_seeds = _positive(key, coerce(key, value, int | None), allow_none=True)
                models[index] = dataclasses.replace(model, max_seeds=max_seeds)
            else:
                known = model_settings(model.family)
                if field not in known:
                    raise ConfigError(
                        f"{key}: {model.family!r} models have no setting {field!r}; theirs: "
                        f"{', '.join(sorted(known))}; training fields: {', '.join(TRAIN_KEYS)}"
                    )
                config = {**model.config, field: coerce(key, value, known[field])}
                models[index] = dataclasses.replace(model, config=config)
        else:
            raise ConfigError(
                f"unknown key {key!r}; keys: {', '.join([*RUN_KEYS, *PRESET_KEYS, *TRAIN_KEYS])}, and "
                "<model>.<setting> for one model (e.g. " + f"{preset.models[0].label}.lr)"
            )
    return dataclasses.replace(preset, models=tuple(models), **changes)


def preset_from_record(record: dict) -> Preset:
    """The Preset a recorded config.json ran: its models (first seed's runs) and data settings."""
    try:
        runs = record["runs"]
        first = [r for r in runs if r["seed"] == 0] or runs
        models = []
        for r in first:
            m = r["model"]
            family_types = model_settings(m["family"])
            config = {
                k: coerce(f"{m['label']}.{k}", v, family_types.get(k, typing.Any))
                for k, v in m["config"].items()
            }
            models.append(
                ModelSpec(
                    m["label"],
                    m["family"],
                    config,
                    TrainConfig(**m["train"]),
                    m.get("backend"),
                    m.get("max_seeds"),
                )
            )
        spec = first[0]
        return Preset(
            record.get("preset", "recorded"),
            tuple(models),
            batch_size=spec["batch_size"],
            train_size=spec["train_size"],
            test_size=spec["test_size"],
            augment=spec["augment"],
            channels_last=spec.get("channels_last", False),  # recorded before it existed: NCHW
            seeds=record.get("seeds", 1),
            expected=record.get("expected", ""),
        )
    except (KeyError, TypeError, IndexError, ValueError) as error:
        raise ConfigError(f"the recorded configuration is incomplete or damaged: {error!r}") from None


def available_devices() -> list[str]:
    found = ["cpu"]
    if torch.cuda.is_available():
        found += [f"cuda:{i} ({torch.cuda.get_device_name(i)})" for i in range(torch.cuda.device_count())]
    return found


def check_device(text: str) -> torch.device:
    """`text` as a torch.device cnnext can train on here, or ConfigError listing what is available."""
    here = "available here: " + ", ".join(available_devices())
    try:
        device = torch.device(text)
    except (RuntimeError, TypeError):
        raise ConfigError(f"device: {text!r} is not a device name; {here}") from None
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise ConfigError(f"device: cnnext's kernels run on cpu and cuda, not {device.type!r}; {here}")
    if not torch.cuda.is_available():
        raise ConfigError(f"device: {text!r}, but torch sees no CUDA device; {here}")
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"device: {text!r}, but there are {torch.cuda.device_count()} CUDA devices; {here}")
    return device


def resolve(study, defaults: dict, file: dict | None, explicit: dict, overrides: dict):
    """(settings, preset) of `study` from, in increasing precedence, `defaults` (run keys), the
    config `file`'s mapping, `explicit` run keys (command-line flags given) and `overrides`."""
    from .studies.base import DATASETS

    file = dict(file or {})
    recorded = "runs" in file
    file_study = file.pop("study", study.name)
    if file_study != study.name:
        raise ConfigError(f"study: the configuration is of study {file_study!r}, not {study.name!r}")
    layers = [defaults, {k: v for k, v in file.items() if k in RUN_KEYS}, explicit, overrides]
    run = {}
    for layer in layers:
        run.update({k: v for k, v in layer.items() if k in RUN_KEYS and v is not None})
    run = {k: coerce(k, v, RUN_KEYS[k]) for k, v in run.items()}
    if run["dataset"] not in DATASETS:
        raise ConfigError(f"dataset: unknown {run['dataset']!r}; choose from {', '.join(DATASETS)}")
    if run["backend"] not in BACKENDS:
        raise ConfigError(f"backend: unknown {run['backend']!r}; choose from {', '.join(BACKENDS)}")
    if run.get("seeds") is not None:
        _positive("seeds", run["seeds"])
    check_device(run["device"])
    if recorded:
        preset = preset_from_record(file)
        if "preset" in explicit or "preset" in overrides:
            raise ConfigError("preset: a recorded configuration brings its own models; leave --preset out")
        if run["dataset"] != file.get("dataset"):
            raise ConfigError(
                f"dataset: the recorded configuration was planned for {file.get('dataset')!r}; "
                f"its models and sizes do not carry over to {run['dataset']!r}"
            )
    else:
        if run["preset"] not in study.presets:
            raise ConfigError(
                f"preset: {study.name} has no preset {run['preset']!r}; "
                f"choose from {', '.join(study.presets)}"
            )
        unknown = set(file) & RECORD_ONLY
        if unknown:
            raise ConfigError(
                f"{sorted(unknown)[0]}: only a recorded config.json (with its runs) may hold it"
            )
        preset = study.preset(run["preset"], run["dataset"])
        preset = apply_overrides(preset, {k: v for k, v in file.items() if k not in RUN_KEYS})
    preset = apply_overrides(preset, {k: v for k, v in overrides.items() if k not in RUN_KEYS})
    settings = Settings(
        dataset=run["dataset"],
        preset=run["preset"],
        backend=run["backend"],
        seeds=run.get("seeds"),
        device=run["device"],
        deterministic=run.get("deterministic", False),
    )
    return settings, preset
