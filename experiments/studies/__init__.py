"""The studies `python -m experiments` knows, by subcommand name."""

from .base import Study
from .fc_vs_cnn import FC_VS_CNN

STUDIES: dict[str, Study] = {study.name: study for study in (FC_VS_CNN,)}

__all__ = ["STUDIES", "Study"]
