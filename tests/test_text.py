"""jtts.text: cleaners, number reading, symbol ids. Expected strings are written out by hand and were
checked against NVIDIA's own text front end (DeepLearningExamples' tacotron2.text)."""
import pytest

from jtts.text import (basic_cleaners, clean_text, english_cleaners, sequence_to_text, symbols,
                       text_to_sequence, transliteration_cleaners)
from jtts.text.cleaners import convert_to_ascii
from jtts.text.numbers import normalize_numbers

# (input, english_cleaners output)
ENGLISH = [
    # money
    ("$1", "one dollar"),
    ("$1.01", "one dollar, one cent"),
    ("It costs $12.50.", "it costs twelve dollars, fifty cents."),
    ("$0.99", "ninety-nine cents"),
    ("$.05", "five cents"),
    ("$1.5", "one dollar, five cents"),  # the digits after the point are cents as written
    ("$0", "zero dollars"),
    ("$1,000,000", "one million dollars"),
    ("$1.2.3", "one point two.three dollars"),
    ("£12", "twelve"),  # the pound sign is deleted before numbers are read
    ("I owe you £5.50", "i owe you five point fifty"),
    # ordinals
    # ordinals keep inflect's "and", cardinals do not
    ("1st 2nd 3rd 4th 11th 21st 101st", "first second third fourth eleventh twenty-first one hundred and first"),
    # years: 1000 < n < 3000
    ("1999", "nineteen ninety-nine"),
    ("2000", "two thousand"),
    ("2007", "two thousand seven"),
    ("2010", "twenty ten"),
    ("1900", "nineteen hundred"),
    ("1905", "nineteen oh five"),
    ("1000 3000 1001", "one thousand three thousand ten oh one"),
    ("2,500 people", "twenty-five hundred people"),
    # decimals, commas, plain numbers
    ("3.14", "three point fourteen"),
    ("0.5", "zero point five"),
    ("1,234,567", "one million, two hundred thirty-four thousand, five hundred sixty-seven"),
    ("100 and 101", "one hundred and one hundred one"),
    ("007", "seven"),
    ("He was born on 4th July 1776.", "he was born on fourth july seventeen seventy-six."),
    # abbreviations
    ("Mr. Smith met Mrs. Jones and Dr. Who on St. James St.",
     "mister smith met misess jones and doctor who on saint james saint"),
    ("MR. X, Drs. Y, Capt. Z, Ltd. Co. Ft. Jr.", "mister x, doctors y, captain z, limited company fort junior"),
    ("Mr Smith", "mr smith"),  # no period, no expansion
    # punctuation and whitespace
    ("Hello,   World!\n\tHow's it (really) going? Fine: yes; no.",
     "hello, world! how's it (really) going? fine: yes; no."),
    ("  leading and trailing  ", " leading and trailing "),
    # non-ASCII
    ("Café, naïve résumé", "cafe, naive resume"),
    ("Über grün Öl Äpfel", "ueber gruen oel aepfel"),
    ("word—word", "wordword"),
    ("“Quoted” ‘single’ it’s", '"quoted" \'single\' it\'s'),
    ("wait… what", "wait what"),
    ("en–dash", "en-dash"),
    ("25° and ½ cup", "twenty-five and cup"),
    ("Zürich 1999", "zuerich nineteen ninety-nine"),
]


@pytest.mark.parametrize("text,expected", ENGLISH)
def test_english_cleaners(text, expected):
    assert english_cleaners(text) == expected
    assert clean_text(text) == expected


def test_other_cleaners():
    assert basic_cleaners("Dr.  12\n Ärger") == "dr. 12 ärger"
    assert transliteration_cleaners("Dr.  12\n Ärger") == "dr. 12 aerger"
    assert convert_to_ascii("ÄÖÜ äöü ß") == "AeOeUe aeoeue ss"  # capitals keep their capital
    assert convert_to_ascii("€5 £3") == "E5 3"
    assert normalize_numbers("£1,000") == "one thousand pounds"  # only reachable without transliteration


def test_unknown_cleaner():
    with pytest.raises(ValueError, match="english_cleaner'"):
        text_to_sequence("hi", ["english_cleaner"])
    with pytest.raises(ValueError, match="nope"):
        clean_text("hi", ("basic_cleaners", "nope"))
    assert text_to_sequence("Hi", "basic_cleaners") == text_to_sequence("Hi", ["basic_cleaners"])


def test_symbol_table():
    assert len(symbols) == len(set(symbols)) == 148
    assert symbols[:12] == ["_", "-", "!", "'", "(", ")", ",", ".", ":", ";", "?", " "]
    assert symbols.index("A") == 12 and symbols.index("a") == 38 and symbols.index("z") == 63
    assert symbols[64] == "@AA" and symbols[147] == "@ZH"
    assert symbols[68:72] == ["@AE", "@AE0", "@AE1", "@AE2"]
    assert symbols.index("@AY2") + 1 == symbols.index("@B")  # CMUdict's plain string order


def test_ids():
    assert text_to_sequence("a") == [38]
    assert text_to_sequence("Hi!") == [45, 46, 2]
    assert text_to_sequence("a_b~c") == [38, 39, 40]  # '_' is the pad and never comes from text
    assert text_to_sequence("") == []


def test_arpabet():
    assert text_to_sequence("{AA ZH}") == [64, 147]
    assert text_to_sequence("{AA XX hh}") == [64]  # unknown and lower-case phonemes are dropped
    ids = text_to_sequence("Dr. {D AA1 K T ER0} Who")
    assert sequence_to_text(ids) == "doctor {D AA1 K T ER0} who"
    assert ids[:7] == text_to_sequence("doctor ") and ids[7] == symbols.index("@D")
    # the text between brace groups is cleaned on its own: "1" stays a number word
    assert sequence_to_text(text_to_sequence("{HH AH0}1{L OW1}")) == "{HH AH0}one{L OW1}"
    assert sequence_to_text(text_to_sequence("{HH AH0}{L OW1}")) == "{HH AH0 L OW1}"
    # a newline does not stop brace parsing (NVIDIA's loop dropped text after it)
    assert sequence_to_text(text_to_sequence("x\n{AH0} y\nz")) == "x {AH0} y z"


@pytest.mark.parametrize("cleaned", [
    "doctor smith paid twelve dollars, fifty cents.",
    "it's (really) odd: yes; no? yes!",
    "turn left on {HH AW1 S T AH0 N} street.",
    "the-end",
])
def test_round_trip(cleaned):
    assert sequence_to_text(text_to_sequence(cleaned)) == cleaned


def test_sequence_to_text_skips_unknown_ids():
    assert sequence_to_text([38, 999, -1, 39]) == "ab"
