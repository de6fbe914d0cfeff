"""repedit: unlearning in OLMo models by editing internal representations (RMU).

>>> from repedit import RMUConfig, unlearn
>>> result = unlearn("target/", "data/", "data/", "out/", RMUConfig(layers=(5, 6, 7), adaptive=5.0))
"""

from repedit.data import DataError, Row, documents, load_rows, qa_pairs
from repedit.rmu import RMUConfig
from repedit.unlearn import UnlearnResult, unlearn

__all__ = ["DataError", "RMUConfig", "Row", "UnlearnResult", "documents", "load_rows", "qa_pairs", "unlearn"]
