"""The checkpoint and data the analysis notebooks run on: from the environment, or built once.

``REPEDIT_TARGET`` names a checkpoint directory and ``REPEDIT_DATA_DIR`` a set directory (forget and
retain files, ``mia_data/``); the tests set both. Whatever is unset is built under
``$REPEDIT_CACHE/demo`` the first time: a synthetic set (``repedit.synth.synthesize``) and the
``tiny`` target trained to memorize it (``repedit.target.build_target``, a few CPU minutes), so a
notebook also runs when opened cold.
"""

from __future__ import annotations

import os
from pathlib import Path

from repedit.assets import cache_dir


def demo_inputs() -> tuple[Path, Path]:
    """``(target checkpoint, data directory)`` for the notebooks."""
    root = cache_dir() / "demo"
    data = Path(os.environ.get("REPEDIT_DATA_DIR", root / "data"))
    if not (data / "forget.jsonl").is_file() and "REPEDIT_DATA_DIR" not in os.environ:
        from repedit.synth import synthesize

        synthesize(data, seed=0, docs=4)
    target = Path(os.environ.get("REPEDIT_TARGET", root / "tiny"))
    if not (target / "config.json").is_file() and "REPEDIT_TARGET" not in os.environ:
        from repedit.target import build_target

        build_target("tiny", [data], target, seed=0, progress=False)
    return target, data
