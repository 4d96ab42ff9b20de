"""What a study runs, written down as typed values: a study is a list of RunSpecs, each one model
trained with one seed under one TrainConfig on one dataset. Presets build these lists in one place
per study (studies/*.py), so what `quick` and `full` mean is read in the code, not guessed."""

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields

from cnnext.train import TrainConfig

__all__ = ["ModelSpec", "Preset", "RunSpec", "fingerprint"]


@dataclass(frozen=True)
class ModelSpec:
    """One model of a study: `family` and `config` go to cnnext.models.build_model (the dataset
    adds in_channels / in_features and num_classes), `train` is how it is trained."""

    label: str  # name in tables and plots, also the run folder's prefix
    family: str
    config: dict = field(default_factory=dict)
    train: TrainConfig = field(default_factory=TrainConfig)
    backend: str | None = None  # None: the command's --backend; a study comparing backends sets it
    # At most this many seeds of this model (the first ones), whatever the run's seed count: a model
    # too slow for the preset's seeds says so here. None: every seed. Config key <model>.max_seeds.
    max_seeds: int | None = None

    def __hash__(self):
        return hash(self.label)


@dataclass(frozen=True)
class Preset:
    """The budget of one study on one dataset."""

    name: str
    models: tuple[ModelSpec, ...]
    batch_size: int = 128
    train_size: int | None = None  # None: the whole training set; else a stratified subset
    test_size: int | None = None
    augment: bool | None = None  # None: the dataset's default (crop + flip for CIFAR-10)
    seeds: int = 1  # seeds per model when --seeds is not given (2+ where the study claims stability)
    channels_last: bool = False  # train in channels_last (models and batches): faster convolutions
    expected: str = ""  # literature / measured figures this preset should reach, for the docs


@dataclass(frozen=True)
class RunSpec:
    study: str
    dataset: str
    model: ModelSpec
    seed: int
    batch_size: int
    train_size: int | None
    test_size: int | None
    augment: bool
    backend: str  # "cnnext" or "native": whose convolution / pooling / attention the model runs on
    channels_last: bool = False  # models and image batches in channels_last memory format
    profile: bool = False  # also record where a training step's time goes (torch.profiler)

    @property
    def name(self) -> str:
        return f"{self.model.label}-seed{self.seed}".replace(" ", "_").replace("/", "_")

    def to_dict(self) -> dict:
        return asdict(self)


def _identity_fields(value) -> dict | str:
    """A dataclass as the mapping its fingerprint hashes: its fields, less those marked
    "run_id_omits_default" while they hold their default, so a knob added after studies were
    recorded leaves their run ids (and hence their resumption) as they were."""
    if not hasattr(value, "__dataclass_fields__"):
        return str(value)
    return {
        f.name: getattr(value, f.name)
        for f in fields(value)
        if not (f.metadata.get("run_id_omits_default") and getattr(value, f.name) == f.default)
    }


def fingerprint(value) -> str:
    """A short stable hash of plain data (dataclasses included)."""
    text = json.dumps(value, sort_keys=True, default=_identity_fields)
    return hashlib.sha1(text.encode()).hexdigest()[:6]
