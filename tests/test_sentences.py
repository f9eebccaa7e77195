"""jtts.sentences: long text -> sentence-sized pieces the model can speak, and the check that something is left."""
import pytest

from jtts.errors import JttsError, NothingToSpeak
from jtts.sentences import MAX_CHARS, prepare, sanitize, split_long, split_sentences
from jtts.text import DLE_TEXT, text_to_sequence

# (text, sentences)
SPLITS = [
    ("Mr. Smith went to Washington. He arrived at 3.30 p.m. on Monday.",
     ["Mr. Smith went to Washington.", "He arrived at 3.30 p.m. on Monday."]),  # title, decimal, lowercase after
    ("J. R. R. Tolkien wrote it. It sold well.", ["J. R. R. Tolkien wrote it.", "It sold well."]),  # initials
    ("It costs $3.50. That is cheap!", ["It costs $3.50.", "That is cheap!"]),
    ("Is it? Yes! No... maybe.", ["Is it?", "Yes!", "No... maybe."]),
    ("See e.g. the report. It was long.", ["See e.g. the report.", "It was long."]),
    ("Dr. Who? Yes.", ["Dr. Who?", "Yes."]),  # '?' ends a sentence even after a title
    ("No. 5 is here. No. I said no.", ["No. 5 is here.", "No.", "I said no."]),  # "No." before a number only
    ('He said "Stop." Then he left.', ['He said "Stop."', "Then he left."]),  # closing quote stays
    ("He said (quietly.) Then left.", ["He said (quietly.)", "Then left."]),
    ("the U.S. is big. it is.", ["the U.S. is big. it is."]),  # a lowercase word continues the sentence
    ("Wait... what?", ["Wait... what?"]),
    ("A first paragraph without a stop\n\nA second one.", ["A first paragraph without a stop", "A second one."]),
    ("Broken\nacross   lines.\tStill one.", ["Broken across lines.", "Still one."]),  # whitespace collapses
    ("", []),
    ("  \n\n ", []),
]


@pytest.mark.parametrize("text,sentences", SPLITS)
def test_split_sentences(text, sentences):
    assert split_sentences(text) == sentences


def test_split_long_clauses_then_words_then_characters():
    assert split_long("Short enough.", 20) == ["Short enough."]
    # clause marks first, packed greedily while a piece stays within the limit
    assert split_long("one, two, three; four: five six seven eight nine ten eleven twelve", 20) == [
        "one, two, three;", "four:", "five six seven eight", "nine ten eleven", "twelve"]
    assert split_long("alpha beta gamma delta epsilon zeta eta theta", 12) == [
        "alpha beta", "gamma delta", "epsilon zeta", "eta theta"]
    assert split_long("word \u2014 dash - here, clause", 12) == ["word \u2014 dash", "- here,", "clause"]
    assert split_long("a" * 30, 12) == ["a" * 12, "a" * 12, "a" * 6]  # one word longer than the limit


def test_default_limit_splits_a_long_sentence_between_words():
    words = [f"word{i}" for i in range(80)]  # 549 characters, no clause mark
    sentence = " ".join(words) + "."
    pieces = prepare(sentence).sentences
    assert MAX_CHARS == 200 and len(pieces) == 3
    assert all(len(p) <= MAX_CHARS for p in pieces)
    assert " ".join(pieces).split() == sentence.split()  # nothing lost, nothing cut inside a word
    clauses = prepare(", ".join(words[:40]) + ".").sentences  # 359 characters with commas: split after one
    assert len(clauses) == 2 and all(len(p) <= MAX_CHARS and p.endswith((",", ".")) for p in clauses)


def test_prepare_ids_and_unspeakable_pieces():
    p = prepare("Hello there. ... And you?")
    assert p.sentences == ["Hello there.", "And you?"]  # the stray "..." has nothing to say and is left out
    assert p.ids == [text_to_sequence("Hello there."), text_to_sequence("And you?")] and p.dropped == ""
    assert prepare("12").sentences == ["12"] and prepare("12").ids == [text_to_sequence("twelve")]
    assert prepare("{HH AH0 L OW1}").sentences == ["{HH AH0 L OW1}"]  # ARPAbet alone is speakable
    assert DLE_TEXT.speakable(text_to_sequence("Hi")) and not DLE_TEXT.speakable(text_to_sequence("!?., "))


def test_sanitize_control_format_and_cjk():
    clean, dropped = sanitize("a\x00b\u200bc\u4e2d\u6587d\te\n")
    assert clean == "a bcd e\n"  # control -> space, zero-width space and CJK removed, tab -> space
    assert dropped == "\x00\u200b\u4e2d\u6587"
    p = prepare("Hello \u4e16\u754c world.")
    assert p.sentences == ["Hello world."] and p.dropped == "\u4e16\u754c"


@pytest.mark.parametrize("text,message", [
    ("", "the text is empty"),
    ("  \n\t", "the text is only whitespace"),
    ("...", "nothing to speak in '...' (no letters, digits or {ARPAbet} phonemes)"),
    ("!!! ???", "no letters, digits or {ARPAbet} phonemes"),
    ("\x00\x01", "no letters, digits or {ARPAbet} phonemes"),
    ("\u4e2d\u6587", "CJK script is not supported by this English model"),
    ("?" * 60, "nothing to speak in '" + "?" * 37 + "...'"),  # long inputs are shortened in the message
])
def test_nothing_to_speak(text, message):
    with pytest.raises(NothingToSpeak) as e:
        prepare(text)
    assert message in str(e.value) and "\n" not in str(e.value)
    assert isinstance(e.value, JttsError) and e.value.exit_code == 1
