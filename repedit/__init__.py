"""repedit: unlearning in OLMo models by editing internal representations (RMU)."""

from repedit.data import DataError, Row, documents, load_rows, qa_pairs

__all__ = ["DataError", "Row", "documents", "load_rows", "qa_pairs"]
