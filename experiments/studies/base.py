"""A study: a question, its presets (preset name -> dataset -> Preset) and optional report sections."""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cnnext import data
from cnnext.train import TrainConfig

from ..spec import Preset, RunSpec

DATASETS = (*data.DATASETS, "synthetic")  # the real image sets, and generated data


def sgd(epochs: int, lr: float = 0.1, schedule: str = "onecycle", weight_decay: float = 5e-4) -> TrainConfig:
    """The studies' default: SGD with Nesterov momentum 0.9 (TrainConfig's) and these knobs."""
    return TrainConfig(epochs=epochs, lr=lr, schedule=schedule, weight_decay=weight_decay)


@dataclass(frozen=True)
class Study:
    name: str
    help: str  # one line for `--help`
    question: str  # what the report answers, its first paragraph
    presets: dict[str, Callable[[str], Preset]]  # preset name -> (dataset -> Preset)
    # Study-specific report sections: (models, plots folder) -> markdown lines
    sections: Callable[[list, Path], list[str]] | None = None
    profile: bool = False  # record a per-op time profile of each run's training step

    def preset(self, name: str, dataset: str) -> Preset:
        if name not in self.presets:
            raise ValueError(f"{self.name}: unknown preset {name!r}; available: {', '.join(self.presets)}")
        return self.presets[name](dataset)

    def plan(
        self, preset: Preset, dataset: str, seeds: int, augment_default: bool, backend: str
    ) -> list[RunSpec]:
        """Every (model, seed) run, seeds outermost so a study interrupted early already has one
        seed of every model."""
        augment = augment_default if preset.augment is None else preset.augment
        return [
            RunSpec(
                study=self.name,
                dataset=dataset,
                model=model,
                seed=seed,
                batch_size=preset.batch_size,
                train_size=preset.train_size,
                test_size=preset.test_size,
                augment=augment,
                backend=model.backend or backend,
                channels_last=preset.channels_last,
                profile=self.profile,
            )
            for seed in range(seeds)
            for model in preset.models
            if model.max_seeds is None or seed < model.max_seeds
        ]
