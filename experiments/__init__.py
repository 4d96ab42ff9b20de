"""cnnext's experiments: studies that train the same models on native and cnnext kernels and
write reports. From Python:

    import experiments
    result = experiments.run("fc-vs-cnn", dataset="mnist", preset="quick")

from the shell: `cnnext-experiments fc-vs-cnn --dataset mnist` (or `python -m experiments`).
"""

from .api import (
    CombinedResult,
    ConfigError,
    RunResult,
    StudyFailed,
    StudyResult,
    plan,
    run,
    run_every_study,
)
from .studies import STUDIES

__all__ = [
    "STUDIES",
    "CombinedResult",
    "ConfigError",
    "RunResult",
    "StudyFailed",
    "StudyResult",
    "plan",
    "run",
    "run_every_study",
]
