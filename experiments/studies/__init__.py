"""The studies `python -m experiments` knows, by subcommand name."""

from .base import Study
from .custom_layers import CUSTOM_LAYERS
from .depth import DEPTH
from .fc_vs_cnn import FC_VS_CNN
from .kernel_size import KERNEL_SIZE
from .residual_blocks import RESIDUAL_BLOCKS

STUDIES: dict[str, Study] = {
    study.name: study for study in (FC_VS_CNN, KERNEL_SIZE, DEPTH, CUSTOM_LAYERS, RESIDUAL_BLOCKS)
}

__all__ = ["STUDIES", "Study"]
