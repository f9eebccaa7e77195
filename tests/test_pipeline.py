"""Repair (jtts.repair) and the pipeline around it: failed sentences are decoded again with keys derived from
their sentence key, then split; what is kept and reported; determinism whatever the batch; the decode-ahead
worker's ordering, errors and shutdown."""
from __future__ import annotations

import threading

import jax
import numpy as np
import pytest

from jtts.health import Health
from jtts.pipeline import _ahead, sentence_key, synthesize
from jtts.repair import Cancelled, Decoded, closed, decode_rows, repair, split_in_two
from jtts.text import text_to_sequence
from robust_helpers import tiny

STEPS = 12


@pytest.fixture(scope="module")
def models():
    taco = tiny("tacotron2", seed=1, max_decoder_steps=STEPS)  # gate bias -10: every decode babbles
    return taco, tiny("waveglow", seed=2).inference()


# -- splitting ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, halves", [
    ("When the sun rose over the hills, the birds began to sing their songs.",
     ("When the sun rose over the hills,", "the birds began to sing their songs.")),
    ("one two three four five six", ("one two three", "four five six")),
    # the only comma lies outside the middle half: split between words instead
    ("Yes, this sentence goes on without any other clause mark at all",
     ("Yes, this sentence goes on without", "any other clause mark at all")),
    ("Antidisestablishmentarianism.", None),
    ("... hello", None),  # the left half would have nothing to speak
])
def test_split_in_two(text, halves):
    assert split_in_two(text) == halves


@pytest.mark.parametrize("text, want", [
    ("It ends here.", "It ends here."), ("Does it?", "Does it?"), ("and then he ran", "and then he ran."),
    ("the first half,", "the first half."), ("a list:", "a list."), ("wait -", "wait."),
    ('she said "go', 'she said "go.'), ("quoted.\u201d", "quoted.\u201d"),
    ('"Stop!"', '"Stop!"'), ("(an aside)", "(an aside.)"),
])
def test_closed(text, want):
    assert closed(text) == want


# -- the repair loop, with a decoder whose verdicts are set by the test ------------------------------------------

def _health(ok: bool) -> Health:
    return Health(10, "gate" if ok else "max_steps", 5, 0.9, 0, 0, 0, 3, () if ok else ("max_steps",))


class ScriptedDecoder:
    """Passes a decode iff (text, try number) is in `passes`; the try number is recovered from the key, so the
    test also checks which key each try uses. Records every batch."""

    def __init__(self, sentences, passes):
        self.passes, self.batches = passes, []
        self.keys = {}  # key data -> (text, try)
        texts = {}
        for text, _, key in sentences:
            texts[text] = key
        self.texts = set(texts)
        for text, key in texts.items():
            self._learn(text, key)
            halves = split_in_two(text)
            for i, half in enumerate(halves or ()):
                self._learn(half, jax.random.fold_in(jax.random.fold_in(key, 3), i))

    def _learn(self, text, key):
        self.keys[self._data(jax.random.fold_in(key, 0))] = (text, 1)
        for n in range(1, 5):
            self.keys[self._data(jax.random.fold_in(jax.random.fold_in(key, 2), n))] = (text, n + 1)

    @staticmethod
    def _data(key) -> tuple:
        return tuple(np.asarray(jax.random.key_data(key)).ravel().tolist())

    def __call__(self, seqs, keys):
        tried = [self.keys[self._data(k)] for k in keys]
        self.batches.append(tried)
        for (text, n), seq in zip(tried, seqs):
            # only a sentence's first try reads it as given; later tries and split pieces end with a full stop
            whole = text in self.texts
            assert seq == text_to_sequence(text if n == 1 and whole else closed(text)), (text, n)
        return [Decoded(np.full((80, 10), n, np.float32), np.eye(10, dtype=np.float32), _health((t, n) in self.passes))
                for t, n in tried]


def test_retry_then_split_then_report():
    root = jax.random.key(7)
    texts = ["Fine at once.", "Fine on the third try.", "Never whole, but fine, in two halves.", "Hopeless."]
    sentences = [(t, text_to_sequence(t), sentence_key(root, 0, j)) for j, t in enumerate(texts)]
    passes = {(texts[0], 1), (texts[1], 3), ("Never whole, but fine,", 2), ("in two halves.", 1)}
    decode = ScriptedDecoder(sentences, passes)
    out = repair(decode, sentences, tries=3, max_depth=1, batch_size=2)
    assert [o.status for o in out] == ["ok", "retried", "split", "failed"]
    assert [o.tries for o in out] == [1, 3, 3 + 2 + 1, 3]
    assert [[p.text for p in o.pieces] for o in out] == [[texts[0]], [texts[1]], ["Never whole, but fine,",
                                                                                     "in two halves."], [texts[3]]]
    # what is kept: the passing try (its mel holds the try number), or the first decode of a hopeless sentence
    assert [[int(p.decoded.mel[0, 0]) for p in o.pieces] for o in out] == [[1], [3], [2, 1], [1]]
    assert not out[3].ok and out[3].health.problems == ("max_steps",) and out[2].ok
    # failures go again together, in batches of at most 2, round after round
    rounds = [[(t, n) for t, n in b] for b in decode.batches]
    assert rounds == [[(texts[0], 1), (texts[1], 1)], [(texts[2], 1), (texts[3], 1)],
                      [(texts[1], 2), (texts[2], 2)], [(texts[3], 2)],
                      [(texts[1], 3), (texts[2], 3)], [(texts[3], 3)],
                      [("Never whole, but fine,", 1), ("in two halves.", 1)], [("Never whole, but fine,", 2)]]
    # the split pieces' keys derive from the sentence key: the vocoder gets fold_in(piece key, 1)
    halves = out[2].pieces
    assert ScriptedDecoder._data(halves[1].key) == ScriptedDecoder._data(
        jax.random.fold_in(jax.random.fold_in(sentences[2][2], 3), 1))


def test_no_retry_decodes_once():
    sentences = [(t, text_to_sequence(t), jax.random.key(j)) for j, t in enumerate(["Two words.", "One more."])]
    decode = ScriptedDecoder(sentences, set())
    out = repair(decode, sentences, tries=1, max_depth=0)
    assert [(o.status, o.tries) for o in out] == [("failed", 1), ("failed", 1)] and len(decode.batches) == 1


# -- a real model rigged to babble ------------------------------------------------------------------------------

def test_babbling_model_is_retried_reported_and_deterministic(models):
    taco, vocoder = models
    texts = ["A first sentence to speak. Then a second one.", "Single."]
    kw = dict(sigma=0.5, denoise=0.0, seed=3, pause=0.1)
    fixed = synthesize(texts, taco, vocoder, batch_size=3, **kw)
    once = synthesize(texts, taco, vocoder, batch_size=1, retry=False, **kw)
    # 3 tries, then each half 3: all babble (the gate never fires); a single word cannot be split
    assert [[(o.status, o.tries) for o in u.outcomes] for u in fixed] == [[("failed", 9), ("failed", 9)],
                                                                          [("failed", 3)]]
    assert [u.failed for u in fixed] == [[0, 1], [0]] and [u.cut for u in fixed] == [[0, 1], [0]]
    assert all(h.stop == "max_steps" and h.frames == STEPS and "max_steps" in h.problems
               for u in fixed for h in u.health)
    # nothing better was found: the first decode is kept, so the audio is --no-retry's (other batches: rounding)
    for a, b in zip(fixed, once):
        assert a.audio.shape == b.audio.shape and np.abs(a.audio - b.audio).max() <= 1e-5 * np.abs(b.audio).max()
        assert [o.status for o in b.outcomes] == ["failed"] * len(b.outcomes)
        assert all(o.tries == 1 for o in b.outcomes)
    spans = fixed[0].spans
    assert spans[0][0] == 0 and spans[1][0] == pytest.approx(spans[0][1] + 0.1, abs=1 / 22050)
    assert spans[1][1] == pytest.approx(STEPS * 256 / 22050)


def test_a_sentence_sounds_the_same_whatever_else_is_spoken(models):
    taco, vocoder = models
    kw = dict(sigma=0.5, denoise=0.0, seed=11, tries=2, retry=True)
    alone = synthesize(["Here it is. Again here."], taco, vocoder, batch_size=1, **kw)[0]
    crowd = synthesize(["Here it is. Again here.", "Something else entirely, spoken too."], taco, vocoder,
                       batch_size=4, **kw)[0]
    assert np.abs(alone.audio - crowd.audio).max() <= 1e-5 * np.abs(alone.audio).max()
    assert [o.tries for o in alone.outcomes] == [o.tries for o in crowd.outcomes] == [6, 6]


# -- the decode-ahead worker -------------------------------------------------------------------------------------

def test_decode_rows_prenet_dropout_rate_reaches_the_decoder(models):
    """DLE's 0.5 by default: the key decides the frames; at rate 0 (a diagnostic of learn_speech.py) it does not."""
    taco = models[0]
    ids = [text_to_sequence("Hello there.")]
    mels = {(rate, k): decode_rows(taco, ids, [jax.random.key(k)], prenet_dropout=rate)[0].mel
            for rate in (0.5, 0.0) for k in (0, 1)}
    scale = float(np.abs(mels[0.5, 0]).mean())
    assert np.abs(mels[0.5, 0] - mels[0.5, 1]).mean() > 1e-3 * scale
    np.testing.assert_array_equal(mels[0.0, 0], mels[0.0, 1])
    np.testing.assert_array_equal(decode_rows(taco, ids, [jax.random.key(0)])[0].mel, mels[0.5, 0])


def test_ahead_keeps_order_raises_in_order_and_stops_its_worker():
    def square(x, stop):
        if x == 4:
            raise OSError(28, "No space left on device")
        return x * x

    got = []
    with pytest.raises(OSError, match="No space left"):
        for item, value in _ahead(square, [1, 2, 3, 4, 5]):
            got.append((item, value))
    assert got == [(1, 1), (2, 4), (3, 9)]

    calls = []
    gen = _ahead(lambda x, stop: calls.append(x) or x, list(range(100)))
    assert next(gen) == (0, 0)
    gen.close()
    assert len(calls) <= 2  # the one handed over, and at most the next
    assert not [t for t in threading.enumerate() if t.name == "jtts-decode"]

    # closing while the worker is busy sets its stop event; repair raises Cancelled at its next batch
    entered, seen = threading.Event(), []

    def slow(x, stop):
        if x == 1:
            entered.set()
            seen.append(stop.wait(60))
            raise Cancelled
        return x

    gen = _ahead(slow, [0, 1, 2])
    assert next(gen) == (0, 0)
    assert entered.wait(60)
    gen.close()
    assert seen == [True] and not [t for t in threading.enumerate() if t.name == "jtts-decode"]
    stop = threading.Event()
    stop.set()
    with pytest.raises(Cancelled):
        repair(ScriptedDecoder([], set()), [("Any.", [1], jax.random.key(0))], stop=stop)
