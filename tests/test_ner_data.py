"""NER data handling: CoNLL reading, IOB1 -> IOB2, sub-word label alignment, entity F1."""

from __future__ import annotations

import pytest

from peftkit.data.conll import read_conll
from peftkit.errors import DataError
from peftkit.metrics import entity_scores
from peftkit.tasks.token_classification import (IGNORE, align_labels, entities_from_tags,
                                                iob1_to_iob2, is_iob1)


def test_iob1_to_iob2():
    iob1 = ["I-PER", "I-PER", "O", "I-LOC", "B-LOC", "I-ORG", "I-MISC"]
    assert is_iob1([iob1])
    assert iob1_to_iob2(iob1) == ["B-PER", "I-PER", "O", "B-LOC", "B-LOC", "B-ORG", "B-MISC"]
    iob2 = ["B-PER", "I-PER", "O"]
    assert not is_iob1([iob2]) and iob1_to_iob2(iob2) == iob2


def test_read_conll_skips_docstart_and_converts_iob1(tmp_path):
    path = tmp_path / "train.txt"
    path.write_text("-DOCSTART- -X- -X- O\n\nEU NNP B-NP I-ORG\nrejects VBZ B-VP O\n"
                    "German JJ B-NP I-MISC\n\nPeter NNP B-NP I-PER\nBlackburn NNP I-NP I-PER\n")
    data = read_conll(path)
    assert data["tokens"] == [["EU", "rejects", "German"], ["Peter", "Blackburn"]]
    assert data["tags"] == [["B-ORG", "O", "B-MISC"], ["B-PER", "I-PER"]]


def test_read_conll_errors_name_file_and_line(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_text("EU NNP B-NP B-ORG\nrejects VBZ O\n")
    with pytest.raises(DataError, match=r"bad.txt, line 2: 3 columns where the file uses 4"):
        read_conll(path)
    path.write_text("EU NNP B-NP ORG\n")
    with pytest.raises(DataError, match=r"line 1: tag 'ORG' is not IOB"):
        read_conll(path)


def test_real_conll_files_read(tmp_path):
    from conftest import SHARED_DATA

    if not (SHARED_DATA / "conll2003").is_dir():
        pytest.skip("shared data not present")
    data = read_conll(SHARED_DATA / "conll2003" / "valid.txt")
    assert len(data["tokens"]) == 3250
    assert not is_iob1(data["tags"])


def test_alignment_labels_first_subtoken_only():
    # [CLS] Wash ##ing ##ton visited Paris [SEP]
    word_ids = [None, 0, 0, 0, 1, 2, None]
    assert align_labels(word_ids, [3, 0, 5]) == [IGNORE, 3, IGNORE, IGNORE, 0, 5, IGNORE]


def test_alignment_with_a_real_tokenizer(tiny_bert_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_bert_dir)
    words = ["Zyxwvut", "visited", "Paris"]
    enc = tok(words, is_split_into_words=True)
    labels = align_labels(enc.word_ids(), [1, 0, 2])
    kept = [lab for lab in labels if lab != IGNORE]
    assert kept == [1, 0, 2]  # one label per word, whatever the number of sub-tokens
    assert len(enc["input_ids"]) > 5  # the made-up word really was split


def test_entity_f1_against_hand_computed_case():
    true = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O", "B-MISC", "I-MISC"]]
    pred = [["B-PER", "I-PER", "O", "B-ORG"], ["B-ORG", "O", "B-MISC", "O"]]
    # true entities: PER, LOC, ORG, MISC (4); predicted: PER ok, ORG wrong, ORG ok, MISC wrong span (4)
    scores = entity_scores(true, pred)
    assert scores["precision"] == pytest.approx(2 / 4)
    assert scores["recall"] == pytest.approx(2 / 4)
    assert scores["f1"] == pytest.approx(0.5)
    assert scores["f1_PER"] == pytest.approx(1.0)
    assert scores["f1_LOC"] == pytest.approx(0.0)
    assert scores["f1_ORG"] == pytest.approx(2 * 0.5 * 1.0 / 1.5)  # p = 1/2, r = 1/1
    assert scores["token_accuracy"] == pytest.approx(6 / 8)


def test_strict_iob2_does_not_count_a_dangling_inside_tag():
    # strict mode: an entity starting with I- is not an entity (lenient conlleval would count it)
    scores = entity_scores([["B-PER", "I-PER"]], [["I-PER", "I-PER"]])
    assert scores["f1"] == 0.0


def test_entities_from_tags_gives_char_offsets():
    text = "Angela Merkel visited New York ."
    spans = [("Angela", 0, 6), ("Merkel", 7, 13), ("visited", 14, 21), ("New", 22, 25),
             ("York", 26, 30), (".", 31, 32)]
    tags = ["B-PER", "I-PER", "O", "B-LOC", "I-LOC", "O"]
    assert entities_from_tags(text, spans, tags) == [
        {"type": "PER", "start": 0, "end": 13, "text": "Angela Merkel"},
        {"type": "LOC", "start": 22, "end": 30, "text": "New York"}]
