"""Text front end: text -> symbol ids for Tacotron 2, and back.

`text_to_sequence("Dr. Smith paid $5.")` gives the ids of "doctor smith paid five dollars.".

Text inside curly braces is ARPAbet, one phoneme per space-separated token, and bypasses the
cleaners: "Turn left on {HH AW1 S T AH0 N} Street." Phonemes outside CMUdict's set, and any
character that is not a symbol, are dropped silently.

A model's text front end (`TextFrontend`: its cleaners, and DLE's 148 symbols extended by `extra_symbols`, single
characters with ids 148, 149, ... in that order, e.g. the letters of another alphabet) lives in its config, as the
audio front end does; whatever feeds the model text (training data, synthesis, the server) uses the model's.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache

from jtts.text.cleaners import (CLEANERS, basic_cleaners, english_cleaners,
                                transliteration_cleaners)
from jtts.text.symbols import PAD, symbols

__all__ = ["TextFrontend", "DLE_TEXT", "text_to_sequence", "sequence_to_text", "clean_text", "symbols",
           "symbol_table", "check_extra_symbols",
           "english_cleaners", "basic_cleaners", "transliteration_cleaners"]

_PAD_ID = symbols.index(PAD)
# Characters the front end itself gives a meaning to: braces delimit ARPAbet, '@' prefixes its phonemes.
_RESERVED = "{}@"


def check_extra_symbols(extra: str) -> str:
    """`extra` if it can extend the table (distinct single characters, none already a symbol or reserved), else
    ValueError naming the first that cannot."""
    if not isinstance(extra, str):
        raise ValueError(f"extra_symbols must be a string of characters, got {type(extra).__name__}")
    seen = set()
    for ch in extra:
        if ch in symbols or ch in _RESERVED or ch.isspace():
            raise ValueError(f"extra_symbols: {ch!r} is already a symbol or has a meaning in the text front end")
        if ch in seen:
            raise ValueError(f"extra_symbols: {ch!r} appears twice")
        seen.add(ch)
    return extra


@lru_cache(maxsize=16)
def _ids_of(extra: str) -> dict[str, int]:
    return {s: i for i, s in enumerate(symbol_table(extra))}


def symbol_table(extra_symbols: str = "") -> list[str]:
    """The symbols by id: DLE's 148, then `extra_symbols` one character each."""
    return [*symbols, *check_extra_symbols(extra_symbols)]

# The first brace pair with at least one character inside. DOTALL on purpose: NVIDIA's loop matched
# without it, so a newline anywhere before a brace made the braces plain text, and anything after
# the first newline following a brace group was silently dropped. One-line input is unaffected.
_ARPABET = re.compile(r"\{(.+?)\}", re.DOTALL)


def _cleaner_list(cleaners: str | Iterable[str]) -> list:
    names = [cleaners] if isinstance(cleaners, str) else list(cleaners)
    unknown = [n for n in names if n not in CLEANERS]
    if unknown:
        raise ValueError(f"unknown text cleaner {unknown[0]!r}; known: {', '.join(sorted(CLEANERS))}")
    return [CLEANERS[n] for n in names]


def _apply(fns: list, text: str) -> str:
    for fn in fns:
        text = fn(text)
    return text


def clean_text(text: str, cleaners: str | Iterable[str] = ("english_cleaners",)) -> str:
    return _apply(_cleaner_list(cleaners), text)


def _ids(chars: Iterable[str], table: dict[str, int]) -> list[int]:
    # '_' in text is dropped, never the pad id. NVIDIA's code meant the same but tested identity
    # (`is not '_'`), which holds on Python 3.8 and fails on 3.11+, where it emits id 0.
    return [i for i in (table.get(c) for c in chars) if i is not None and i != _PAD_ID]


def text_to_sequence(text: str, cleaners: str | Iterable[str] = ("english_cleaners",),
                     extra_symbols: str = "") -> list[int]:
    """Symbol ids for `text`, cleaned with `cleaners` (names from `jtts.text.cleaners.CLEANERS`), in the table
    `symbol_table(extra_symbols)`. english_cleaners transliterate to ASCII first, so extra symbols outside ASCII
    need other cleaners (basic_cleaners keeps every character).

    Each stretch of text between brace groups is cleaned on its own, so spaces next to a brace group
    are kept as they are (collapsed, not stripped).
    """
    fns = _cleaner_list(cleaners)
    table = _ids_of(extra_symbols)
    ids: list[int] = []
    while text:
        m = _ARPABET.search(text)
        if m is None:
            ids += _ids(_apply(fns, text), table)
            break
        ids += _ids(_apply(fns, text[:m.start()]), table)
        ids += _ids(("@" + p for p in m.group(1).split()), table)
        text = text[m.end():]
    return ids


def sequence_to_text(sequence: Sequence[int], extra_symbols: str = "") -> str:
    """Inverse of `text_to_sequence` on cleaned text: phonemes come back in braces, consecutive ones
    in one group ("{HH AH0}"); ids outside the symbol table are skipped."""
    table = symbol_table(extra_symbols)
    out = []
    for i in sequence:
        i = int(i)
        if not 0 <= i < len(table):
            continue
        s = table[i]
        out.append("{" + s[1:] + "}" if s.startswith("@") else s)
    return "".join(out).replace("}{", " ")


# Ids that carry speech: letters and phonemes (punctuation and spaces alone say nothing).
_SPEAKABLE = frozenset(i for i, s in enumerate(symbols) if s.isalpha() or s.startswith("@"))


@dataclass(frozen=True)
class TextFrontend:
    """Text -> a model's symbol ids: `cleaners` (names of `jtts.text.cleaners.CLEANERS`, applied in order) and the
    symbol table DLE's 148 + `extra_symbols`. english_cleaners transliterate to ASCII first, so extra symbols
    outside ASCII need other cleaners (basic_cleaners: lowercase and whitespace only)."""
    cleaners: tuple[str, ...] = ("english_cleaners",)
    extra_symbols: str = ""

    def __post_init__(self):
        cleaners = (self.cleaners,) if isinstance(self.cleaners, str) else tuple(self.cleaners)
        if not cleaners:
            raise ValueError("text_cleaners must name at least one cleaner")
        _cleaner_list(cleaners)
        check_extra_symbols(self.extra_symbols)
        object.__setattr__(self, "cleaners", cleaners)

    @property
    def n_symbols(self) -> int:
        return len(symbols) + len(self.extra_symbols)

    def ids(self, text: str) -> list[int]:
        return text_to_sequence(text, self.cleaners, self.extra_symbols)

    def text(self, ids: Sequence[int]) -> str:
        return sequence_to_text(ids, self.extra_symbols)

    def speakable(self, ids: Iterable[int]) -> bool:
        """Whether the ids hold a letter or phoneme (an extra symbol counts if it is a letter)."""
        n, extra = len(symbols), self.extra_symbols
        return any(i in _SPEAKABLE or (0 <= i - n < len(extra) and extra[i - n].isalpha()) for i in ids)


DLE_TEXT = TextFrontend()  # NVIDIA's models': english_cleaners and the 148 symbols
