"""scripts/heldout_probes.py: WordNet read from its database files, and the query expansion built on it."""
import importlib.util

import pytest

from conftest import REPO

spec = importlib.util.spec_from_file_location("heldout_probes", REPO / "scripts" / "heldout_probes.py")
hp = importlib.util.module_from_spec(spec)
spec.loader.exec_module(hp)

# two synsets in WordNet 3.0's layout: offset, lex file, pos, word count (hex), words with lex ids, pointer count,
# pointers (symbol, offset, pos, source/target), then " | " and the gloss with its examples
DATA_NOUN = (
    "  1 This software and database is being provided ...\n"
    "00000100 06 n 02 bicycle 0 bike 0 001 @ 00000200 n 0000 | a wheeled vehicle that has two wheels; \"he rode his bike\"\n"
    "00000200 06 n 01 wheeled_vehicle 0 000 | a vehicle that moves on wheels\n"
    "00000300 05 n 01 goose 0 001 @i 00000200 n 0000 | web-footed bird\n"
)
INDEX_NOUN = (
    "  1 This software and database is being provided ...\n"
    "bicycle n 1 1 @ 1 0 00000100\n"
    "bike n 1 1 @ 1 0 00000100\n"
    "goose n 1 1 @ 1 0 00000300\n"
    "wheeled_vehicle n 1 0 1 0 00000200\n"
)


@pytest.fixture
def wordnet(tmp_path):
    for pos in hp.POS:
        (tmp_path / f"index.{pos}").write_text(INDEX_NOUN if pos == "noun" else "")
        (tmp_path / f"data.{pos}").write_text(DATA_NOUN if pos == "noun" else "")
        (tmp_path / f"{pos}.exc").write_text("geese goose\n" if pos == "noun" else "")
    return hp.load_wordnet(tmp_path)


def test_synsets_glosses_and_hypernyms_are_read_from_the_database_files(wordnet):
    senses, synsets, exceptions = wordnet
    assert senses["bike"] == [("noun", "00000100")]
    words, gloss, hyper = synsets[("noun", "00000100")]
    assert words == ["bicycle", "bike"]
    assert gloss == "a wheeled vehicle that has two wheels"  # the first gloss, without its example
    assert hyper == [("noun", "00000200")]
    assert synsets[("noun", "00000300")][2] == [("noun", "00000200")]  # instance hypernyms count too
    assert exceptions == {"geese": "goose"}


def test_inflected_words_find_their_lemma(wordnet):
    senses, _, exceptions = wordnet
    assert hp.lemma_of("bicycles", senses, exceptions) == "bicycle"  # detachment rule -s
    assert hp.lemma_of("geese", senses, exceptions) == "goose"  # exception list
    assert hp.lemma_of("bike", senses, exceptions) == "bike"
    assert hp.lemma_of("unicycle", senses, exceptions) is None


def test_only_words_the_training_text_lacks_are_expanded(wordnet):
    known = {"man", "bike"}
    assert hp.expand("man on bicycles", known, wordnet, "gloss") == "man on bicycles, a wheeled vehicle that has two wheels"
    assert hp.expand("man on bicycles", known, wordnet, "hypernym") == "man on bicycles, wheeled vehicle"
    assert hp.expand("man on bike", known, wordnet, "gloss") == "man on bike"  # every word known: unchanged
    assert hp.expand("man on unicycles", known, wordnet, "gloss") == "man on unicycles"  # not in WordNet


def test_missing_wordnet_names_the_package(tmp_path):
    with pytest.raises(SystemExit, match="apt-get install wordnet-base"):
        hp.load_wordnet(tmp_path)
