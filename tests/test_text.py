"Properties of the one sentence splitter (`mmpo_nb.text`): spans cover the text without overlap, and the toy world's sentences come back."
from hypothesis import given, settings, strategies as st, HealthCheck
from mmpo_nb.text import _plain_spans, _pysbd_spans, _ABBREVIATIONS, sentence_spans, split_sentences, number_word, word_to_number, plural, plural_forms, IRREGULAR_PLURALS
from mmpo_nb.toyworld import ToyWorld, WorldConfig, describe, caption, FACT_KINDS, HALLUCINATION_KINDS

# texts built from the pieces that trip naive splitters, plus arbitrary unicode
PIECES = ['The cup is red.', ' ', '  ', '\n', '\n\n', '\t', 'e.g.', ' i.e. ', 'Dr.', 'p.m.', '2.5', '3.', '...', '!', '?', '. ',
          '\n1. ', '\n2) ', '\n- ', '\n* ', '• ', '"', "'", '(', ')', 'U.S.', 'a', 'B', 'yes', 'Mr. Smith', '…', ':', ';']
texts = st.one_of(st.text(max_size=120), st.lists(st.sampled_from(PIECES), max_size=40).map(''.join))

@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(texts)
def test_spans_cover_the_text_and_never_overlap(text):
    spans = sentence_spans(text)
    covered = [0] * len(text); prev = 0
    for s, e in spans:
        assert prev <= s < e <= len(text)                                  # in order, non-empty, non-overlapping
        assert not text[s].isspace() and not text[e - 1].isspace()         # trimmed
        for k in range(s, e): covered[k] += 1
        prev = e
    assert all(c == 1 for ch, c in zip(text, covered) if not ch.isspace())  # every non-space character in exactly one span
    assert split_sentences(text) == [text[s:e] for s, e in spans]

WORDS = st.one_of(st.sampled_from(sorted(_ABBREVIATIONS)), st.from_regex(r'[a-z]{1,6}', fullmatch=True))
plain_sentences = st.builds(lambda first, rest, stop, comma: first.capitalize() + ''.join((', ' if comma and k == 0 else ' ') + w for k, w in enumerate(rest)) + stop,
                            WORDS, st.lists(WORDS, max_size=6), st.sampled_from('.!?'), st.booleans())

@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(plain_sentences, min_size=1, max_size=6).map(' '.join))
def test_plain_shortcut_agrees_with_pysbd(text):
    "The fast path for plain texts (no abbreviation or initial before a stop) gives exactly pySBD's spans, or steps aside."
    fast = _plain_spans(text)
    assert fast is None or fast == _pysbd_spans(text), (text, fast, _pysbd_spans(text))

cfgs = st.builds(WorldConfig, seed=st.integers(0, 10**6), n_classes=st.integers(4, 16), n_colors=st.integers(2, 8), max_objects=st.integers(1, 5))

@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cfg=cfgs, i=st.integers(0, 10**7), v=st.integers(0, 5), sep=st.sampled_from([' ', '  ', '\n', ' \n']))
def test_splitter_returns_the_toy_worlds_sentences(cfg, i, v, sep):
    w = ToyWorld(cfg); s = w.scene(i)
    docs = [describe(s, FACT_KINDS, variant=v)] + [w.hallucinate(s, k, FACT_KINDS, variant=v).sentences for k in w.possible_kinds(s, FACT_KINDS)]
    for sents in docs: assert split_sentences(sep.join(sents)) == list(sents)
    assert _plain_spans(' '.join(docs[0])) is not None                      # the toy world's descriptions take the fast path
    assert split_sentences(caption(s)) == [caption(s)]

@given(st.integers(0, 10**6))
def test_number_words_round_trip(n):
    assert word_to_number(number_word(n)) == n

@given(st.from_regex(r'[a-z]{2,12}', fullmatch=True).filter(lambda w: w not in IRREGULAR_PLURALS), st.integers(0, 5))
def test_plural_is_the_first_accepted_form(noun, n):
    assert plural(noun, n) == (noun if n == 1 else plural_forms(noun)[0])
    assert all(f.startswith(noun[:-2]) for f in plural_forms(noun))         # regular inflection keeps all but the last two letters
