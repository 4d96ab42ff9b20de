"""A trained model back from a run folder written by the experiments
(results/<study>/<run id>/runs/<model>-seed<k>/: model.json, checkpoint.pt, result.json)."""

import json
from pathlib import Path
from typing import NamedTuple

import torch

from .models import build_model
from .train import load_checkpoint

__all__ = ["LoadedRun", "load_run"]


class LoadedRun(NamedTuple):
    model: torch.nn.Module  # in eval mode, with the weights of the last finished epoch
    config: dict  # model.json (family, backend, arguments, classes, image_shape), plus "train"
    # (the TrainConfig fields), "epochs_done" and "finished" (whether result.json was written)


def load_run(folder: str | Path, device: str | torch.device = "cpu") -> LoadedRun:
    """The model of one run folder and its configuration: `model, config = load_run(folder)`.

    The model is rebuilt from model.json on the backend it was trained on and loaded with
    checkpoint.pt's weights (checksum checked, weights_only) onto `device`. A run still in
    progress gives its last finished epoch. Raises FileNotFoundError when `folder` is not a run
    folder and cnnext.train.CheckpointError when its checkpoint is damaged.
    """
    folder = Path(folder)
    described, checkpoint = folder / "model.json", folder / "checkpoint.pt"
    for needed in (described, checkpoint):
        if not needed.is_file():
            raise FileNotFoundError(
                f"{folder} is not a finished or started run folder: {needed.name} is missing "
                "(run folders are results/<study>/<run id>/runs/<model>-seed<k>)"
            )
    config = json.loads(described.read_text())
    state = load_checkpoint(checkpoint, map_location=device)
    model = build_model(config["family"], backend=config["backend"], **config["arguments"])
    model.load_state_dict(state["model"])
    model.to(device).eval()
    config.update(
        train=state["config"], epochs_done=state["epoch"], finished=(folder / "result.json").is_file()
    )
    return LoadedRun(model, config)
