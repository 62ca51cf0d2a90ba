"""Caption generality: the heuristic generality score and offline (WordNet) caption generalization.

Replication grows when a caption pins down one training image. The generality score (0–10)
measures how general a caption is, as the mean of four terms:

* **specificity**: ``(1 − (named entities + numerals) / content words) · 10``;
* **broadness**: the nouns' WordNet hyponym counts, ``10 · log(1 + h) / log(1 + h_entity)``;
* **tense**: share of verbs in the present indicative (base or third-person form) · 10; a
  caption with no verb is tied to no moment and gets 10;
* **abstraction**: the nouns' WordNet depth, ``10 · (1 − depth / deepest noun)`` (shortest
  path to ``entity``, over the largest such depth).

No tagger model can be downloaded here, so parts of speech come from WordNet itself: a named
entity is a word whose first noun sense is an *instance* (``brazil`` → South American country)
or a capitalised word WordNet lacks; a verb form is a word whose only senses are verbs, or an
``-ing``/``-ed`` form of a verb with no adjective sense or right after a noun. First senses stand for the meaning, so
both the score and the generalization inherit WordNet's sense order (``leopard`` is first a pelt).
"""

from __future__ import annotations

import functools
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from trustlab.data.store import data_root
from trustlab.data.wordnet import wordnet
from trustlab.errors import ConfigError, DataError
from trustlab.files import existing_file
from trustlab.replication.llm import llm_generalize
from trustlab.runs import atomic_write_bytes, atomic_write_json

MAX_WORDS = 5
_TOKEN = re.compile(r"[A-Za-z]+(?:['’-][A-Za-z]+)*|\d+(?:[.,:]\d+)*")
_STOP = frozenset("""a an the and or but nor of on in at to for from by with without into onto over under
above below near beside between among through about as is are was were be been being am this that these
those it its his her their our your my its' s no not very some any each every all both either neither""".split())
_NUMBER_WORDS = frozenset("""zero one two three four five six seven eight nine ten eleven twelve thirteen
fourteen fifteen sixteen seventeen eighteen nineteen twenty thirty forty fifty sixty seventy eighty ninety
hundred thousand million billion first second third fourth fifth sixth seventh eighth ninth tenth
half dozen""".split())
_MIN_DEPTH_AFTER_CLIMB = 4  # hypernyms shallower than this ("object", "whole", "abstraction") say nothing


@dataclass(frozen=True)
class Generality:
    """The generality score of one caption and its four terms (each 0–10)."""

    score: float
    specificity: float
    broadness: float
    tense: float
    abstraction: float


class Lexicon:
    """WordNet-backed word classes and the hierarchy statistics the score normalises by."""

    def __init__(self):
        self.wn = wordnet()
        stats = self._hierarchy_stats()
        self.entity_hyponyms, self.deepest_noun = stats["entity_hyponyms"], stats["deepest_noun"]

    def _hierarchy_stats(self) -> dict:
        """Hyponyms of ``entity`` and the depth of the deepest noun: fixed by the WordNet release.

        Walking all 82,000 noun synsets takes about 20 s, so the two numbers are computed once per
        WordNet version and kept in the data folder's cache (a damaged cache is recomputed).
        """

        path = data_root() / "cache" / f"wordnet-{self.wn.get_version()}-hierarchy.json"
        try:
            stats = json.loads(path.read_text())
            if isinstance(stats.get("entity_hyponyms"), int) and isinstance(stats.get("deepest_noun"), int):
                return stats
        except (OSError, ValueError, AttributeError):
            pass
        depth = {self.wn.synset("entity.n.01"): 0}  # breadth first: shortest depth of every noun
        frontier = list(depth)
        while frontier:
            nxt = []
            for s in frontier:
                for h in s.hyponyms() + s.instance_hyponyms():
                    if h not in depth:
                        depth[h] = depth[s] + 1
                        nxt.append(h)
            frontier = nxt
        stats = {"entity_hyponyms": len(depth) - 1, "deepest_noun": max(depth.values())}
        atomic_write_json(path, stats)
        return stats

    @staticmethod
    def _hyponym_count(synset) -> int:
        return sum(1 for _ in synset.closure(lambda s: s.hyponyms() + s.instance_hyponyms()))

    @functools.lru_cache(maxsize=None)
    def noun(self, word: str):
        """The first noun sense of ``word`` (any inflection), or None."""
        senses = self.wn.synsets(word, "n")
        return senses[0] if senses else None

    @functools.lru_cache(maxsize=None)
    def hyponyms(self, synset) -> int:
        return self._hyponym_count(synset)

    def is_named_entity(self, token: str, first: bool) -> bool:
        sense = self.noun(token.lower())
        if sense is not None:
            return bool(sense.instance_hypernyms())
        return token[:1].isupper() and not first and not self.wn.synsets(token.lower())

    def verb_lemma(self, word: str, after_noun: bool = False) -> str | None:
        """The verb lemma when ``word`` is used as a verb form, else None.

        ``after_noun``: an ``-ing``/``-ed`` form right after a noun is a participle ("dog running").
        """
        lemma = self.wn._morphy(word, "v")
        if not lemma:
            return None
        if not self.wn.synsets(word, "n") and not self.wn.synsets(word, "a"):
            return lemma[0]
        if word.endswith(("ing", "ed")) and lemma[0] != word and (after_noun or not self.wn.synsets(word, "a")):
            return lemma[0]
        return None


@functools.lru_cache(maxsize=1)
def lexicon() -> Lexicon:
    return Lexicon()


def tokens(caption: str) -> list[str]:
    return _TOKEN.findall(caption)


def _is_numeral(token: str) -> bool:
    return token[0].isdigit() or token.lower() in _NUMBER_WORDS


def _classify(caption: str, lex: Lexicon) -> dict[str, list]:
    """Split the content words of ``caption`` into numerals, named entities, verbs, nouns, others."""
    out = {"content": [], "numerals": [], "entities": [], "verbs": [], "nouns": [], "other": []}
    after_noun = False
    for i, tok in enumerate(tokens(caption)):
        low = tok.lower()
        if low in _STOP:
            after_noun = False
            continue
        out["content"].append(tok)
        if _is_numeral(tok):
            out["numerals"].append(tok)
        elif lex.is_named_entity(tok, first=i == 0):
            out["entities"].append(low)
        elif (verb := lex.verb_lemma(low, after_noun)) is not None:
            out["verbs"].append((low, verb))
        elif (sense := lex.noun(low)) is not None:
            out["nouns"].append((low, sense))
        else:
            out["other"].append(low)
        after_noun = bool(out["nouns"]) and out["nouns"][-1][0] == low
    return out


def generality(caption: str, lex: Lexicon | None = None) -> Generality:
    """The heuristic generality score of one caption."""
    lex = lex or lexicon()
    parts = _classify(caption, lex)
    n = max(1, len(parts["content"]))
    specificity = 10 * (1 - (len(parts["numerals"]) + len(parts["entities"])) / n)
    senses = [s for _, s in parts["nouns"]]
    broadness = (sum(10 * math.log1p(lex.hyponyms(s)) / math.log1p(lex.entity_hyponyms) for s in senses) / len(senses)
                 if senses else 0.0)
    abstraction = (sum(10 * (1 - s.min_depth() / lex.deepest_noun) for s in senses) / len(senses) if senses else 0.0)
    verbs = parts["verbs"]
    present = sum(w == lemma or w in (lemma + "s", lemma + "es") for w, lemma in verbs)
    tense = 10 * present / len(verbs) if verbs else 10.0
    return Generality((specificity + broadness + tense + abstraction) / 4, specificity, broadness, tense, abstraction)


def _sorted(synsets: list) -> list:
    """Synsets in name order: nltk returns related synsets in an order that changes between processes."""
    return sorted(synsets, key=lambda s: s.name())


def _lemma(synset) -> str:
    """A synset's first lemma as WordNet spells it (``south_american_country``)."""
    return synset.lemmas()[0].name().lower()


def _climb(word: str, lex: Lexicon) -> str:
    """One hypernym up, unless that lands in the top of the hierarchy or on a word that reads as a verb."""
    sense = lex.noun(word)
    if sense is None:
        return word
    for up in _sorted(sense.hypernyms() + sense.instance_hypernyms()):
        lemma = _lemma(up)
        if up.min_depth() >= _MIN_DEPTH_AFTER_CLIMB and lex.verb_lemma(lemma) is None:
            return lemma
    return word


def generalize_wordnet(caption: str, lex: Lexicon | None = None) -> str:
    """A more general caption from WordNet alone: the main subject's head noun, one hypernym up.

    The main subject is the first noun phrase of the first clause (up to a comma, colon,
    function word or verb); its head is its last noun, a named entity standing for its class.
    Numerals, modifiers and the remaining clauses are dropped. Captions with no noun keep their
    first content words, minus numerals and named entities (at most five).
    """
    lex = lex or lexicon()
    first = next((c for c in re.split(r"[,;:()]", caption) if tokens(c)), caption)
    head = None
    for i, tok in enumerate(tokens(first)):
        low = tok.lower()
        if low in _STOP or lex.verb_lemma(low) is not None or (head is not None and low.endswith("ing")):
            if head is not None:
                break
            continue
        if _is_numeral(tok):
            continue
        if lex.is_named_entity(tok, first=i == 0):
            sense = lex.noun(low)
            classes = _sorted(sense.instance_hypernyms()) if sense is not None else []
            head = _lemma(classes[0]) if classes else head
        elif lex.noun(low) is not None:
            head = low
    if head is not None:
        return _climb(head, lex).replace("_", " ")
    parts = _classify(caption, lex)
    words = [t.lower() for t in parts["content"] if not _is_numeral(t) and t.lower() not in parts["entities"]]
    return " ".join(list(dict.fromkeys(words))[:MAX_WORDS]) or "an image"


def generalize(captions: list[str], method: str = "wordnet", client=None, progress=None) -> tuple[list[str], list[str]]:
    """Generalized captions by ``method`` (``wordnet`` or ``llm`` with a ChatClient), and the LLM failures."""
    if method == "wordnet":
        lex = lexicon()
        out = []
        for c in captions:
            out.append(generalize_wordnet(c, lex))
            if progress is not None:
                progress()
        return out, []
    if method == "llm":
        if client is None:
            raise ConfigError("--method llm needs --llm-url and --model")
        return llm_generalize(captions, client, generalize_wordnet, progress)  # WordNet loads only if a caption falls back
    raise ConfigError(f"unknown generalization method '{method}': use wordnet or llm")


@dataclass
class CaptionFile:
    """Captions read from a text file (one per line) or JSON lines (``{"caption": ...}``, other keys kept)."""

    path: Path
    records: list[dict]

    @property
    def captions(self) -> list[str]:
        return [r["caption"] for r in self.records]

    @property
    def jsonl(self) -> bool:
        return self.path.suffix == ".jsonl"

    def write(self, out: Path, captions: list[str]) -> None:
        """The same file with new captions (JSON lines keep the old one as ``original_caption``)."""

        if self.jsonl:
            lines = [json.dumps({**r, "caption": c, "original_caption": r["caption"]}, ensure_ascii=False)
                     for r, c in zip(self.records, captions)]
        else:
            lines = captions
        atomic_write_bytes(out, ("\n".join(lines) + "\n").encode())


def read_captions(path: str | Path) -> CaptionFile:
    """Read and check a captions file; every problem names its line."""
    path = existing_file(path, "captions file", DataError)
    records = []
    for i, raw in enumerate(path.read_bytes().splitlines(), 1):
        try:
            line = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise DataError(f"{path}:{i} is not valid UTF-8: re-save the file as UTF-8") from None
        if not line:
            raise DataError(f"{path}:{i} is empty: remove empty lines (one caption per line)")
        if path.suffix == ".jsonl":
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{i} is not valid JSON ({e.msg})") from None
            if not isinstance(rec, dict) or not isinstance(rec.get("caption"), str) or not rec["caption"].strip():
                raise DataError(f"{path}:{i} needs a non-empty \"caption\" string")
            records.append(rec)
        else:
            records.append({"caption": line})
    if not records:
        raise DataError(f"captions file {path} holds no caption")
    return CaptionFile(path, records)


__all__ = ["CaptionFile", "Generality", "Lexicon", "generality", "generalize", "generalize_wordnet", "lexicon", "read_captions",
           "tokens"]
