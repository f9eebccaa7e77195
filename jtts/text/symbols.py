"""The 148 input symbols of NVIDIA's Tacotron 2, in the order its embedding table was trained on.

The id of a symbol is its index here, so the order is part of the checkpoint format: pad, hyphen,
ten punctuation marks (the space among them), upper- then lower-case letters, then CMUdict's 84
ARPAbet phonemes, each prefixed with '@' so that e.g. the phoneme B stays distinct from the letter B.
"""
from __future__ import annotations

PAD = "_"
PUNCTUATION = "!'(),.:;? "
SPECIAL = "-"
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

# CMUdict's phoneme set: 15 vowels, each bare or with lexical stress 0/1/2, and 24 consonants.
_VOWELS = ("AA", "AE", "AH", "AO", "AW", "AY", "EH", "ER", "EY", "IH", "IY", "OW", "OY", "UH", "UW")
_CONSONANTS = ("B", "CH", "D", "DH", "F", "G", "HH", "JH", "K", "L", "M", "N", "NG", "P", "R", "S",
               "SH", "T", "TH", "V", "W", "Y", "Z", "ZH")
# CMUdict lists them in plain string order, which interleaves vowels and consonants (AY2, B, CH, ...).
ARPABET = tuple(sorted([v + s for v in _VOWELS for s in ("", "0", "1", "2")] + list(_CONSONANTS)))

symbols = [PAD, SPECIAL, *PUNCTUATION, *LETTERS, *("@" + p for p in ARPABET)]

assert len(ARPABET) == 84 and len(symbols) == 148
