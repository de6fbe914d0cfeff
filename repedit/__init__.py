"""repedit: unlearning in OLMo models by editing internal representations (RMU).

>>> from repedit import RMUConfig, unlearn
>>> result = unlearn("target/", "data/", "data/", "out/", RMUConfig(layers=(5, 6, 7), adaptive=5.0))
"""

from repedit.attack import Attack, AttackConfig, attack
from repedit.baselines import GradDiffConfig, NPOConfig, SUGDConfig
from repedit.data import DataError, Row, documents, load_rows, qa_pairs
from repedit.evaluate import evaluate
from repedit.metric import score_directory
from repedit.rmu import RMUConfig
from repedit.unlearn import UnlearnResult, unlearn

__all__ = [
    "Attack",
    "AttackConfig",
    "DataError",
    "GradDiffConfig",
    "NPOConfig",
    "RMUConfig",
    "Row",
    "SUGDConfig",
    "UnlearnResult",
    "attack",
    "documents",
    "evaluate",
    "load_rows",
    "qa_pairs",
    "score_directory",
    "unlearn",
]
