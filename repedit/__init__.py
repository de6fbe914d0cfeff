"""repedit: unlearning in OLMo models by editing internal representations (RMU).

>>> from repedit import RMUConfig, config_from_dict, preset, unlearn
>>> result = unlearn("target/", "data/", "data/", "out/", RMUConfig(layers=(5, 6, 7), adaptive=5.0))
>>> config = config_from_dict({**preset("standins"), "calibration.unseen": "unseen.jsonl",
...                            "loss.anchor_texts": "general.jsonl"})
"""

from repedit.attack import Attack, AttackConfig, attack
from repedit.baseline_configs import GradDiffConfig, NPOConfig, SUGDConfig
from repedit.calibration_config import Calibration
from repedit.data import DataError, Row, documents, load_rows, qa_pairs
from repedit.evaluate import evaluate
from repedit.methods import config_from_dict, preset
from repedit.metric import score_directory
from repedit.rmu_config import Loss, RMUConfig
from repedit.unlearn import UnlearnResult, unlearn

__all__ = [
    "Attack",
    "AttackConfig",
    "Calibration",
    "DataError",
    "GradDiffConfig",
    "Loss",
    "NPOConfig",
    "RMUConfig",
    "Row",
    "SUGDConfig",
    "UnlearnResult",
    "attack",
    "config_from_dict",
    "documents",
    "evaluate",
    "load_rows",
    "preset",
    "qa_pairs",
    "score_directory",
    "unlearn",
]
