"""Text front end: text -> symbol ids for Tacotron 2, and back.

`text_to_sequence("Dr. Smith paid $5.")` gives the ids of "doctor smith paid five dollars.".

Text inside curly braces is ARPAbet, one phoneme per space-separated token, and bypasses the
cleaners: "Turn left on {HH AW1 S T AH0 N} Street." Phonemes outside CMUdict's set, and any
character that is not a symbol, are dropped silently.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from jtts.text.cleaners import (CLEANERS, basic_cleaners, english_cleaners,
                                transliteration_cleaners)
from jtts.text.symbols import PAD, symbols

__all__ = ["text_to_sequence", "sequence_to_text", "clean_text", "symbols",
           "english_cleaners", "basic_cleaners", "transliteration_cleaners"]

_ID = {s: i for i, s in enumerate(symbols)}
_PAD_ID = _ID[PAD]

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


def _ids(chars: Iterable[str]) -> list[int]:
    # '_' in text is dropped, never the pad id. NVIDIA's code meant the same but tested identity
    # (`is not '_'`), which holds on Python 3.8 and fails on 3.11+, where it emits id 0.
    return [i for i in (_ID.get(c) for c in chars) if i is not None and i != _PAD_ID]


def text_to_sequence(text: str, cleaners: str | Iterable[str] = ("english_cleaners",)) -> list[int]:
    """Symbol ids for `text`, cleaned with `cleaners` (names from `jtts.text.cleaners.CLEANERS`).

    Each stretch of text between brace groups is cleaned on its own, so spaces next to a brace group
    are kept as they are (collapsed, not stripped).
    """
    fns = _cleaner_list(cleaners)
    ids: list[int] = []
    while text:
        m = _ARPABET.search(text)
        if m is None:
            ids += _ids(_apply(fns, text))
            break
        ids += _ids(_apply(fns, text[:m.start()]))
        ids += _ids("@" + p for p in m.group(1).split())
        text = text[m.end():]
    return ids


def sequence_to_text(sequence: Sequence[int]) -> str:
    """Inverse of `text_to_sequence` on cleaned text: phonemes come back in braces, consecutive ones
    in one group ("{HH AH0}"); ids outside the symbol table are skipped."""
    out = []
    for i in sequence:
        i = int(i)
        if not 0 <= i < len(symbols):
            continue
        s = symbols[i]
        out.append("{" + s[1:] + "}" if s.startswith("@") else s)
    return "".join(out).replace("}{", " ")
