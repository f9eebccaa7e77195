"""Spelling out numbers the way NVIDIA's Tacotron 2 training text was normalised.

The rules run in a fixed order on lower-cased ASCII text, each pass rewriting what the previous one
left; later passes see the digits earlier ones produced ("$3" -> "3 dollars" -> "three dollars").
Several readings are odd but are what the model heard in training, so they are kept:

* "$1.5" is "one dollar, five cents" (the digits after the point are cents as written);
* "3.14" is "three point fourteen" (the fraction is read as a whole number);
* cardinals drop "and" ("101" -> "one hundred one") but ordinals keep it ("101st" -> "one hundred
  and first");
* numbers strictly between 1000 and 3000 are read as years ("1999" -> "nineteen ninety-nine"),
  including "2,500 people" -> "twenty-five hundred people".
"""
from __future__ import annotations

import functools
import re


@functools.cache
def _inflect():
    # Deferred: importing inflect takes ~1.4 s (typeguard instruments it), a fifth of a short `jtts synthesize`,
    # and most sentences hold no digit.
    import inflect

    return inflect.engine()

# ASCII digits only: the cleaners transliterate first, and '\d' would also match other scripts.
_COMMA_NUMBER = re.compile(r"[0-9][0-9,]+[0-9]")
_DECIMAL = re.compile(r"[0-9]+\.[0-9]+")
_POUNDS = re.compile(r"£([0-9,]*[0-9]+)")
_DOLLARS = re.compile(r"\$([0-9.,]*[0-9]+)")
_ORDINAL = re.compile(r"[0-9]+(?:st|nd|rd|th)")
_INTEGER = re.compile(r"[0-9]+")


def _unit(n: int, singular: str) -> str:
    return f"{n} {singular}" if n == 1 else f"{n} {singular}s"


def _dollars(m: re.Match) -> str:
    amount = m.group(1)
    parts = amount.split(".")
    if len(parts) > 2:  # "1.2.3": not an amount, leave the digits for the integer pass
        return amount + " dollars"
    # Stray commas can survive the comma pass ("$,5"); they carry no value.
    whole = int(parts[0].replace(",", "") or 0)
    cents = int(parts[1].replace(",", "") or 0) if len(parts) == 2 else 0
    if whole and cents:
        return f"{_unit(whole, 'dollar')}, {_unit(cents, 'cent')}"
    if whole:
        return _unit(whole, "dollar")
    if cents:
        return _unit(cents, "cent")
    return "zero dollars"


def _ordinal(m: re.Match) -> str:
    # inflect reads a numeral with an ordinal suffix as the ordinal word ("21st" -> "twenty-first").
    return _inflect().number_to_words(m.group(0))


def _integer(m: re.Match) -> str:
    n = int(m.group(0))
    if not 1000 < n < 3000:
        return _inflect().number_to_words(n, andword="")
    # Year-style readings.
    if n == 2000:
        return "two thousand"
    if 2000 < n < 2010:
        return "two thousand " + _inflect().number_to_words(n % 100)
    if n % 100 == 0:
        return _inflect().number_to_words(n // 100) + " hundred"
    # group=2 reads digit pairs ("19 99"), zero="oh" gives "nineteen oh five" for 1905.
    return _inflect().number_to_words(n, andword="", zero="oh", group=2).replace(", ", " ")


def normalize_numbers(text: str) -> str:
    """Replace digits in `text` by words (currency, decimals, ordinals, years, plain integers)."""
    if not _INTEGER.search(text):
        return text  # every rule below needs a digit
    text = _COMMA_NUMBER.sub(lambda m: m.group(0).replace(",", ""), text)
    # Dead in english_cleaners, whose transliteration deletes '£' first; kept for direct callers.
    text = _POUNDS.sub(r"\1 pounds", text)
    text = _DOLLARS.sub(_dollars, text)
    text = _DECIMAL.sub(lambda m: m.group(0).replace(".", " point "), text)
    text = _ORDINAL.sub(_ordinal, text)
    return _INTEGER.sub(_integer, text)
