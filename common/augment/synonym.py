"""WordNet synonym replacement: the "Synonym" augmentation baseline of hu19 Table 1 (after Wu et al.
2019, who follow Kobayashi 2018 / Wei and Zou 2019 in replacing words by WordNet synonyms).

WordNet 3.0 comes from the Debian packages `wordnet-base` (dict files in /usr/share/wordnet) and
`wordnet-sense-index` (index.sense). nltk's WordNet reader wants `<nltk_data>/corpora/wordnet/`
holding those files plus `lexnames`, which Debian does not ship; `wordnet_dir()` assembles that
folder under the project cache (`$REPRO_CACHE_DIR/nltk_data`, default ~/.cache/repro) with copies
(36 MB; nltk >= 3.10 refuses symlinks leaving its root and hard links) and writes `lexnames` from
the lexnames(5WN) manual page of WordNet 3.0. Nothing is downloaded.
"""
from __future__ import annotations

import functools
import os
import re
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np

from common.data.mirror import cache_dir
from common.errors import DataError

DEBIAN_WORDNET = Path("/usr/share/wordnet")
APT_HINT = "apt-get install wordnet-base wordnet-sense-index"
# The files nltk's WordNetCorpusReader opens (lexnames is written by us).
WORDNET_FILES = ("cntlist.rev", "index.sense", "index.adj", "index.adv", "index.noun", "index.verb",
                 "data.adj", "data.adv", "data.noun", "data.verb", "adj.exc", "adv.exc", "noun.exc", "verb.exc")
# WordNet 3.0 lexicographer files, numbered 00..44 in this order (lexnames(5WN)).
LEXNAMES = (
    "adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute noun.body "
    "noun.cognition noun.communication noun.event noun.feeling noun.food noun.group noun.location "
    "noun.motive noun.object noun.person noun.phenomenon noun.plant noun.possession noun.process "
    "noun.quantity noun.relation noun.shape noun.state noun.substance noun.time verb.body verb.change "
    "verb.cognition verb.communication verb.competition verb.consumption verb.contact verb.creation "
    "verb.emotion verb.motion verb.perception verb.possession verb.social verb.stative verb.weather adj.ppl"
).split()
_SYNTACTIC_CATEGORY = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}

# Never replaced: function words, negations, auxiliaries and contraction pieces (PTB "n't", "'s").
STOPWORDS = frozenset("""
a an the and or but nor not no yes so if then than too very just only also as at by for from in into of
off on onto out over under up down to with without about above below after before between through during
again once here there when where why how what which who whom whose this that these those all any both each
few more most other some such same own i me my mine myself we us our ours ourselves you your yours yourself
yourselves he him his himself she her hers herself it its itself they them their theirs themselves am is are
was were be been being have has had having do does did doing done will would shall should can could may
might must ought let lets n't 's 're 've 'll 'd 'm don't doesn't didn't isn't aren't wasn't weren't won't
wouldn't can't cannot couldn't shouldn't hasn't haven't hadn't it's that's there's i'm you're we're they're
""".split())
MIN_WORD_LEN = 3                      # shorter tokens ("s", "re", "go") are left alone
_WORD = re.compile(r"[A-Za-z](?:[A-Za-z'-]*[A-Za-z])?")   # letters, inner apostrophes/hyphens kept


def lexnames_text() -> str:
    """The WordNet 3.0 `lexnames` file: "NN<tab>name<tab>syntactic category" per line."""
    return "".join(f"{i:02d}\t{name}\t{_SYNTACTIC_CATEGORY[name.split('.')[0]]}\n"
                   for i, name in enumerate(LEXNAMES))


def _complete(folder: Path, source: Path) -> bool:
    if not (folder / "lexnames").is_file() or (folder / "lexnames").read_text() != lexnames_text():
        return False
    for name in WORDNET_FILES:
        if not (folder / name).is_file() or (folder / name).stat().st_nlink != 1:  # nltk refuses links
            return False
        if (source / name).is_file() and (source / name).stat().st_size != (folder / name).stat().st_size:
            return False
    return True


def wordnet_dir(source: Path | str = DEBIAN_WORDNET) -> Path:
    """`<cache>/nltk_data/corpora/wordnet`, built once from the Debian WordNet files (DataError if
    they are missing), with `lexnames` added. Its nltk_data root goes first on nltk.data.path."""
    source = Path(source)
    root = cache_dir() / "nltk_data"
    target = root / "corpora" / "wordnet"
    if not _complete(target, source):
        missing = [name for name in WORDNET_FILES if not (source / name).is_file()]
        if missing:
            raise DataError(f"{source}: WordNet 3.0 files missing ({', '.join(missing)}); install them with "
                            f"`{APT_HINT}` (Debian/Ubuntu, as root)")
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".wordnet-"))
        try:
            for name in WORDNET_FILES:
                shutil.copyfile(source / name, staging / name)
            (staging / "lexnames").write_text(lexnames_text())
            staging.chmod(0o755)
            shutil.rmtree(target, ignore_errors=True)
            try:
                os.replace(staging, target)
            except OSError:                  # another process finished first
                if not _complete(target, source):
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    import nltk
    if str(root) not in nltk.data.path:
        nltk.data.path.insert(0, str(root))
    return target


@functools.lru_cache(maxsize=4)
def _reader(folder: str):
    from nltk.corpus.reader.wordnet import WordNetCorpusReader
    with warnings.catch_warnings():   # "multilingual functions are not available": not needed here
        warnings.simplefilter("ignore")
        return WordNetCorpusReader(folder, None)


def load_wordnet(source: Path | str = DEBIAN_WORDNET):
    """A WordNetCorpusReader on `wordnet_dir(source)`: nltk.corpus.wordnet itself when nltk loaded it
    from that folder (it does, first on the path, unless it was loaded before from elsewhere), else a
    reader of our own. Loading takes a few seconds, once per process."""
    folder = wordnet_dir(source)
    import nltk.corpus
    try:
        if Path(str(nltk.corpus.wordnet.root)).resolve() == folder.resolve():
            return nltk.corpus.wordnet
    except LookupError:
        pass
    return _reader(str(folder))


def _match_case(template: str, word: str) -> str:
    if len(template) > 1 and template.isupper():
        return word.upper()
    if template[0].isupper():
        return word[0].upper() + word[1:]
    return word


class SynonymAugmenter:
    """Replace up to k content words of a text by a random WordNet synonym; the label is kept.

    k = min(max_replacements, max(1, round(p_replace * number of words)), number of candidates).
    Candidates are words of >= MIN_WORD_LEN letters, not in STOPWORDS, that have at least one synonym:
    a single-word lemma (no "_") of any of their synsets (all parts of speech, inflections resolved by
    WordNet's morphy) other than the word itself or its base form. Candidates and synonyms are drawn
    uniformly. A capitalised word gets a capitalised synonym (an all-caps word an all-caps one);
    everything else in the text (spacing, punctuation, other words) is kept verbatim. Deterministic
    given the generator: `augment(text, np.random.default_rng(0))` always gives the same text.
    """

    def __init__(self, p_replace: float = 0.1, max_replacements: int = 3, seed: int | None = None,
                 wordnet=None):
        if not 0.0 <= p_replace <= 1.0 or max_replacements < 0:
            raise ValueError(f"p_replace must lie in [0, 1] and max_replacements >= 0, got "
                             f"{p_replace}, {max_replacements}")
        self.p_replace = p_replace
        self.max_replacements = max_replacements
        self.rng = np.random.default_rng(seed)     # used when augment() gets no generator
        self.wordnet = wordnet if wordnet is not None else load_wordnet()
        self._cache: dict[str, tuple[str, ...]] = {}

    def synonyms(self, word: str) -> tuple[str, ...]:
        """Sorted lower-case single-word WordNet synonyms of `word` (empty for stopwords/short words)."""
        key = word.lower()
        if key not in self._cache:
            found: set[str] = set()
            if len(key) >= MIN_WORD_LEN and key not in STOPWORDS:
                wn = self.wordnet
                bases = {key} | {wn.morphy(key, pos) for pos in (wn.NOUN, wn.VERB, wn.ADJ, wn.ADV)}
                for synset in wn.synsets(key):
                    for lemma in synset.lemma_names():
                        name = lemma.lower()
                        if "_" not in name and _WORD.fullmatch(name) and name not in bases:
                            found.add(name)
            self._cache[key] = tuple(sorted(found))
        return self._cache[key]

    def augment(self, text: str, rng: np.random.Generator | None = None) -> str:
        """`text` with up to k words replaced by synonyms (unchanged if no word has one)."""
        rng = self.rng if rng is None else rng
        words = list(_WORD.finditer(text))
        candidates = [m for m in words if self.synonyms(m.group())]
        k = min(self.max_replacements, max(1, round(self.p_replace * len(words))), len(candidates))
        if k == 0:
            return text
        chosen = sorted((candidates[i] for i in rng.choice(len(candidates), size=k, replace=False)),
                        key=lambda m: m.start())
        pieces, last = [], 0
        for match in chosen:
            options = self.synonyms(match.group())
            pieces += [text[last:match.start()], _match_case(match.group(), options[rng.integers(len(options))])]
            last = match.end()
        return "".join(pieces) + text[last:]

    def augment_pair(self, text: str, label, rng: np.random.Generator | None = None) -> tuple[str, object]:
        """(augmented text, the same label)."""
        return self.augment(text, rng), label

    def augment_pairs(self, pairs, rng: np.random.Generator | None = None) -> list[tuple[str, object]]:
        """[(augmented text, label)] for (text, label) pairs, in order, labels unchanged."""
        return [self.augment_pair(text, label, rng) for text, label in pairs]
