"""bench/oracle_overlap.py: each forget document's share of n-grams the oracle trained on, against NLLs."""

import json
import statistics
import sys
from pathlib import Path

import pytest

from repedit.checkpoint import CARD_FILE
from repedit.membership import split_membership
from repedit.share_goals import known_ngrams

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
oracle_overlap = pytest.importorskip("oracle_overlap")

TRAINED = ["the quick brown fox jumps over the lazy dog", "a born in Paris b was a French poet c"]


def words():
    """A word-level encoder: each new word gets the next id."""
    vocabulary: dict[str, int] = {}
    return lambda text: [vocabulary.setdefault(word, len(vocabulary)) for word in text.split()]


def test_the_oracle_keeping_shared_text_shows_as_a_negative_correlation_a_flat_run_does_not():
    """Documents with more of their text elsewhere sit lower for the oracle; a run that raised every document to one
    level has no slope, and its low- and high-share halves read alike."""
    members = {"Task3": ["x y z w", "a b c d", "the quick brown fox", "over the lazy dog"]}
    nonmembers = {"Task3": ["the quick brown cat"]}
    encode = words()
    known = known_ngrams(map(encode, TRAINED), 2)
    oracle = {"Task3": [9.0, 8.8, 7.0, 6.5]}
    flat = {"Task3": [9.5, 9.5, 9.6, 9.4]}
    result = oracle_overlap.overlap(members, nonmembers, known, encode, 2, oracle, {"run": flat})["Task3"]
    assert result["shares"] == [0.0, 0.0, 1.0, 1.0] and result["withheld_shares"] == [2 / 3]
    assert result["oracle"]["correlation"] == pytest.approx(statistics.correlation(result["shares"], oracle["Task3"]))
    assert result["oracle"]["correlation"] < -0.9
    assert (result["oracle"]["low_share_nll"], result["oracle"]["high_share_nll"]) == pytest.approx((8.9, 6.75))
    assert result["runs"]["run"]["low_share_nll"] == pytest.approx(result["runs"]["run"]["high_share_nll"])
    fitted = oracle_overlap.overlap(members, {"Task3": ["the quick brown cat", "x y", "over the lazy"]}, known,
                                    encode, 2, oracle, {}, {"Task3": [9 - 4 / 3, 9.0, 7.0]})["Task3"]["level_fit"]
    # withheld shares 2/3, 0, 1: the line 9 - 2 x share; the members' goals 9, 9, 7, 7, inside the range [7, 9]
    assert (fitted["slope"], fitted["intercept"]) == pytest.approx((-2.0, 9.0))
    assert fitted["levels"] == pytest.approx([9.0, 9.0, 7.0, 7.0]) and fitted["ks_to_oracle"] == pytest.approx(0.25)
    with pytest.raises(ValueError, match="run: 3 Task3 forget NLLs for 4 documents"):
        oracle_overlap.overlap(members, nonmembers, known, encode, 2, oracle, {"run": {"Task3": [1.0] * 3}})


def test_other_withholding_than_the_builds_stops_naming_the_card(synth_dir, tmp_path):
    """The trained text is made again from the build's settings: with another seed the withheld documents would be
    counted as trained text, so it stops, naming the target's card."""
    built = split_membership([synth_dir], 1, seed=0)
    (tmp_path / CARD_FILE).write_text(json.dumps({"data": {"withheld": {w.name: w.summary()
                                                                        for w in built.withheld}}}))
    oracle_overlap.check_withheld(split_membership([synth_dir], 1, seed=0), tmp_path)
    other = split_membership([synth_dir], 1, seed=1)
    assert [w.summary()["ids"] for w in other.withheld] != [w.summary()["ids"] for w in built.withheld]
    with pytest.raises(SystemExit, match=f"{tmp_path / CARD_FILE}: the build withheld other documents"):
        oracle_overlap.check_withheld(other, tmp_path)
