"""common.augment.synonym: the nltk WordNet folder built from Debian's files, and the augmenter."""
import numpy as np
import pytest

from common.augment.synonym import (
    _WORD,
    APT_HINT,
    DEBIAN_WORDNET,
    STOPWORDS,
    WORDNET_FILES,
    SynonymAugmenter,
    load_wordnet,
    wordnet_dir,
)
from common.errors import DataError

SENTENCES = [
    "The movie was a striking, beautiful film about grey skies.",
    "A clever and funny story, but the ending feels rushed and cheap.",
    "Brilliant acting; the director shows great talent!",
]


@pytest.fixture(scope="module")
def wordnet(tmp_path_factory):
    if not all((DEBIAN_WORDNET / name).is_file() for name in WORDNET_FILES):
        pytest.skip(f"WordNet 3.0 Debian files missing in {DEBIAN_WORDNET} ({APT_HINT})")
    with pytest.MonkeyPatch.context() as mp:   # the session's isolated cache (conftest), at module scope
        mp.setenv("REPRO_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "repro_cache"))
        folder = wordnet_dir()
        return folder, load_wordnet()


@pytest.fixture(scope="module")
def augmenter(wordnet):
    return SynonymAugmenter(p_replace=0.3, max_replacements=3, seed=0, wordnet=wordnet[1])


def lemma_names(wn, word):
    return {name.lower() for synset in wn.synsets(word.lower()) for name in synset.lemma_names()}


def test_nltk_wordnet_dir_has_lexnames_and_loads(wordnet):
    folder, wn = wordnet
    assert folder.parts[-2:] == ("corpora", "wordnet")
    lines = (folder / "lexnames").read_text().splitlines()
    assert len(lines) == 45 and lines[0] == "00\tadj.all\t3" and lines[44] == "44\tadj.ppl\t3"
    assert lines[3] == "03\tnoun.Tops\t1" and lines[29] == "29\tverb.body\t2"
    assert wn.get_version() == "3.0"
    assert [wn.synset(s).lexname() for s in ("dog.n.01", "run.v.01", "good.a.01", "quickly.r.01")] == \
        ["noun.animal", "verb.motion", "adj.all", "adv.all"]
    import nltk
    assert str(folder.parents[1]) in nltk.data.path
    assert nltk.corpus.wordnet.synsets("good")   # nltk's own loader finds the folder
    assert wordnet_dir() == folder                # already built: reused


def test_missing_debian_files_raise_with_apt_hint(tmp_path, monkeypatch):
    monkeypatch.setenv("REPRO_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(DataError, match="apt-get install wordnet-base wordnet-sense-index"):
        wordnet_dir(source=tmp_path / "no_wordnet")


def test_replacements_are_wordnet_synonyms_and_labels_are_kept(augmenter, wordnet):
    wn = wordnet[1]
    replaced = 0
    for seed in range(10):
        rng = np.random.default_rng(seed)
        out = augmenter.augment_pairs([(text, label) for label, text in enumerate(SENTENCES)], rng)
        assert [label for _, label in out] == [0, 1, 2]
        for text, (new, _) in zip(SENTENCES, out):
            assert _WORD.split(new) == _WORD.split(text)          # punctuation and spacing untouched
            pairs = [(a, b) for a, b in zip(_WORD.findall(text), _WORD.findall(new)) if a != b]
            assert 1 <= len(pairs) <= 3
            for old, repl in pairs:
                assert old.lower() not in STOPWORDS
                assert repl.lower() in lemma_names(wn, old) and repl.lower() != old.lower()
                assert repl[0].isupper() == old[0].isupper()   # "The"/"Brilliant" keep their capital
            replaced += len(pairs)
    assert replaced >= 30


def test_deterministic_given_the_seed(augmenter, wordnet):
    run = lambda seed: [augmenter.augment(t, np.random.default_rng(seed)) for t in SENTENCES]  # noqa: E731
    assert run(3) == run(3)
    assert len({tuple(run(seed)) for seed in range(5)}) > 1
    seeded = lambda: SynonymAugmenter(0.3, 3, seed=7, wordnet=wordnet[1]).augment(SENTENCES[1])  # noqa: E731
    assert seeded() == seeded()


def test_words_without_synonyms_and_stopwords_are_left_alone(wordnet):
    augmenter = SynonymAugmenter(p_replace=1.0, max_replacements=10, wordnet=wordnet[1])
    rng = np.random.default_rng(0)
    for text in ("It is what it is, and that is not all.", "Xyzzy plugh, frobnicate!", "I am not."):
        assert augmenter.augment(text, rng) == text
    assert augmenter.synonyms("xyzzy") == () and augmenter.synonyms("not") == ()
    out = augmenter.augment("not good", rng)
    assert out.startswith("not ") and out != "not good"
