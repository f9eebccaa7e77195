"""Long text -> sentence-sized pieces Tacotron 2 can speak, and a check that there is something to speak.

Tacotron 2 was trained on single sentences (LJSpeech: up to ~190 characters) and stops at max_decoder_steps
(2000 frames, ~23 s), so a paragraph is split at sentence ends and an overlong sentence at clause marks,
then at spaces. A full stop is not a sentence end after an abbreviation ("Mr.", "e.g."), an initial ("J.")
or when a lowercase word follows; decimals ("3.50") have no space after the point and never split.
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field

from jtts.errors import NothingToSpeak
from jtts.text import DLE_TEXT, TextFrontend

MAX_CHARS = 200

# Lowercased, without the final dot. English titles and common Latin abbreviations; "No." only counts
# before a number (see _is_abbreviation).
ABBREVIATIONS = frozenset("""
    mr mrs ms messrs dr drs prof rev hon st jr sr sgt capt col lt maj gen cmdr adm gov sen rep pres
    co corp inc ltd bros esq dept univ assn ave blvd rd mt ft
    jan feb mar apr jun jul aug sep sept oct nov dec
    vs etc al e.g i.e cf approx est fig figs vol vols pp ch no nos op
""".split())

_END = re.compile(r"([.!?\u2026]+)([\"'\u201d\u2019)\]]*)(\s+|$)")
_CLAUSE = re.compile(r"(?<=[,;:])\s+|\s+(?=[\u2014\u2013]|-\s)")
_PARAGRAPH = re.compile(r"\n\s*\n")
_CJK_PREFIXES = ("CJK", "HIRAGANA", "KATAKANA", "HANGUL", "BOPOMOFO", "IDEOGRAPHIC")


@dataclass
class Prepared:
    """One utterance ready for the models: its sentences and their symbol ids."""
    text: str
    sentences: list[str] = field(default_factory=list)
    ids: list[list[int]] = field(default_factory=list)
    dropped: str = ""  # characters removed before speaking (control/format characters, CJK script)


def sanitize(text: str) -> tuple[str, str]:
    """-> (text with control characters as spaces and format/CJK characters removed, the removed characters).

    The text front end would transliterate CJK into syllable strings the English model can only garble, and
    would pass control characters through as unknown symbols; neither is speech."""
    out, dropped = [], []
    for ch in text:
        cat = unicodedata.category(ch)
        if ch in "\n\t\r" or cat == "Zs":
            out.append("\n" if ch == "\n" else " ")
        elif cat == "Cc":
            out.append(" ")
            dropped.append(ch)
        elif cat in ("Cf", "Cs", "Co", "Cn") or unicodedata.name(ch, "").startswith(_CJK_PREFIXES):
            dropped.append(ch)
        else:
            out.append(ch)
    return "".join(out), "".join(dropped)


def _is_abbreviation(word: str, following: str) -> bool:
    w = word.lower().lstrip("(\"'\u201c\u2018[")
    if w == "no" or w == "nos":
        return following[:1].isdigit()
    if w in ABBREVIATIONS:
        return True
    return len(w) == 1 and w.isalpha()  # an initial: "J. R. R. Tolkien"


def split_sentences(text: str) -> list[str]:
    """Sentences of `text` (whitespace collapsed); blank lines always end a sentence."""
    sentences = []
    for para in _PARAGRAPH.split(text):
        para = " ".join(para.split())
        start = 0
        for m in _END.finditer(para):
            end = m.end(2)
            following = para[m.end():]
            if not following:
                break
            word = para[start:m.start()].rsplit(" ", 1)[-1]
            if following[0].islower():
                continue
            if m.group(1) == "." and _is_abbreviation(word, following):
                continue
            sentences.append(para[start:end].strip())
            start = m.end()
        if para[start:].strip():
            sentences.append(para[start:].strip())
    return sentences


def _pack(pieces: list[str], limit: int, sep: str = " ") -> list[str]:
    """Greedily join consecutive pieces while the result stays within `limit` characters."""
    out: list[str] = []
    for p in pieces:
        if out and len(out[-1]) + len(sep) + len(p) <= limit:
            out[-1] = out[-1] + sep + p
        else:
            out.append(p)
    return out


def split_long(sentence: str, limit: int = MAX_CHARS) -> list[str]:
    """Pieces of at most `limit` characters: at clause marks first, then between words, then anywhere."""
    if len(sentence) <= limit:
        return [sentence]
    pieces = []
    for clause in _pack(_CLAUSE.split(sentence), limit):
        if len(clause) <= limit:
            pieces.append(clause)
            continue
        for words in _pack(clause.split(" "), limit):
            pieces.extend(words[i:i + limit] for i in range(0, len(words), limit))
    return pieces


def prepare(text: str, max_chars: int = MAX_CHARS, text_frontend: TextFrontend = DLE_TEXT) -> Prepared:
    """Split `text` into speakable pieces with their symbol ids (the model's `text_frontend`: its config's); pieces
    with nothing to say (a stray "..." between sentences) are left out. Raises NothingToSpeak if no piece
    remains."""
    clean, dropped = sanitize(text)
    out = Prepared(text=text, dropped=dropped)
    for sentence in split_sentences(clean):
        for piece in split_long(sentence, max_chars):
            ids = text_frontend.ids(piece)
            if text_frontend.speakable(ids):
                out.sentences.append(piece)
                out.ids.append(ids)
    if not out.sentences:
        shown = text if len(text) <= 40 else text[:37] + "..."
        if not text.strip():
            raise NothingToSpeak("the text is empty" if not text else "the text is only whitespace")
        why = ("CJK script is not supported by this English model" if any(
            unicodedata.name(c, "").startswith(_CJK_PREFIXES) for c in dropped)
            else "no letters, digits or {ARPAbet} phonemes")
        raise NothingToSpeak(f"nothing to speak in {shown!r} ({why})")
    return out
