"""Text cleaners: the normalisation applied to text before it becomes symbol ids.

* `english_cleaners` (what NVIDIA's models were trained with): transliterate to ASCII, lower-case,
  spell out numbers, expand abbreviations, collapse whitespace.
* `transliteration_cleaners`: transliterate, lower-case, collapse whitespace.
* `basic_cleaners`: lower-case and collapse whitespace only.

Transliteration uses the `unidecode` package after `TRANSLITERATION_OVERRIDES`, a table of the
characters where NVIDIA's own transliteration table (not unidecode) leads to different symbol ids.
The table covers Latin-1 (U+0080-U+00FF), General Punctuation (U+2000-U+206F) and the euro sign, the
characters ordinary English text carries; for those jtts gives NVIDIA's ids. Elsewhere jtts follows
unidecode on purpose: NVIDIA's table deletes many letters unidecode reads sensibly ('œ', 'ō', 'ĉ',
'ŋ', ...), and for Greek, Cyrillic and other scripts the two romanise differently.
"""
from __future__ import annotations

import re

from unidecode import unidecode

from jtts.text.numbers import normalize_numbers

# Every character of those ranges that NVIDIA deletes and unidecode spells out ("25°" ->
# "twenty-fivedeg", "½" -> "one/two", "—" -> "--", "…" -> "...", "©" -> "(c)", "•" -> "*"). Even
# marks that are not symbols matter: dropped after whitespace collapsing, " * " leaves two spaces.
# Deleting '£' means "£12" reads "twelve".
_DELETED = ("¡£¤¦§©ª«¬®¯°±²³µ¶·¹º»¼½¾¿÷"
            "\u200b—―‖‗„†‡•‣‥…‧‰‱″‴‶‷‸※‼‾‿⁀⁂⁅⁆⁇⁈⁉⁊⁋⁌⁍⁒⁗")
TRANSLITERATION_OVERRIDES = {
    **dict.fromkeys(_DELETED, ""),
    # German umlauts keep their "e" (unidecode drops it).
    "ä": "ae", "ö": "oe", "ü": "ue", "Ä": "Ae", "Ö": "Oe", "Ü": "Ue",
    "€": "E",  # "€5": NVIDIA "e five", unidecode "eur five"
    "‽": "?!", "⁃": "-", "⁚": ":", "‵": "'",
}
_OVERRIDE_TABLE = str.maketrans(TRANSLITERATION_OVERRIDES)

_WHITESPACE = re.compile(r"\s+")

# (abbreviation, expansion), matched case-insensitively at a word start and followed by a period.
# "st." is always "saint", also in "Main St.": that is how the training text was normalised.
_ABBREVIATIONS = [
    (re.compile(rf"\b{abbr}\.", re.IGNORECASE), full)
    for abbr, full in [
        ("mrs", "misess"), ("mr", "mister"), ("dr", "doctor"), ("st", "saint"), ("co", "company"),
        ("jr", "junior"), ("maj", "major"), ("gen", "general"), ("drs", "doctors"),
        ("rev", "reverend"), ("lt", "lieutenant"), ("hon", "honorable"), ("sgt", "sergeant"),
        ("capt", "captain"), ("esq", "esquire"), ("ltd", "limited"), ("col", "colonel"),
        ("ft", "fort"),
    ]
]


def convert_to_ascii(text: str) -> str:
    if text.isascii():
        return text
    return unidecode(text.translate(_OVERRIDE_TABLE))


def lowercase(text: str) -> str:
    return text.lower()


def collapse_whitespace(text: str) -> str:
    return _WHITESPACE.sub(" ", text)


def expand_numbers(text: str) -> str:
    return normalize_numbers(text)


def expand_abbreviations(text: str) -> str:
    for pattern, full in _ABBREVIATIONS:
        text = pattern.sub(full, text)
    return text


def basic_cleaners(text: str) -> str:
    return collapse_whitespace(lowercase(text))


def transliteration_cleaners(text: str) -> str:
    return collapse_whitespace(lowercase(convert_to_ascii(text)))


def english_cleaners(text: str) -> str:
    text = lowercase(convert_to_ascii(text))
    text = expand_abbreviations(expand_numbers(text))
    return collapse_whitespace(text)


# Every name usable in a cleaner list; the single steps too, since NVIDIA's code accepted them.
CLEANERS = {f.__name__: f for f in (
    english_cleaners, transliteration_cleaners, basic_cleaners,
    convert_to_ascii, lowercase, expand_numbers, expand_abbreviations, collapse_whitespace,
)}
