"Property and integration tests for mmpo_nb.metrics (the notebook holds the hand-computed checks)."
from hypothesis import given, settings, strategies as st

from mmpo_nb.metrics import POPE_SPLITS, COCO_SYNONYMS, COCO_RULES, SynonymTable, build_pope, chair, parse_count, parse_yes_no

VOCAB = ['cup', 'plate', 'fork', 'tree', 'ball', 'kite', 'car', 'house']
images = st.lists(st.sets(st.sampled_from(VOCAB), min_size=1, max_size=5), min_size=1, max_size=30)


@settings(max_examples=60, deadline=None)
@given(images, st.sampled_from(POPE_SPLITS), st.integers(1, 4), st.integers(0, 10_000))
def test_pope_balanced_and_truthful(objects, split, n, seed):
    qs = build_pope(objects, split, n_per_image=n, seed=seed, vocabulary=VOCAB)
    assert sum(q.label == 'yes' for q in qs) == sum(q.label == 'no' for q in qs)
    for q in qs:
        assert (q.object in objects[q.image_id]) == (q.label == 'yes')
        assert q.split == split and q.object in q.question
    per_image = {}
    for q in qs: per_image.setdefault(q.image_id, []).append(q.object)
    for objs in per_image.values(): assert len(objs) == len(set(objs))          # never the same object twice
    assert qs == build_pope(objects, split, n_per_image=n, seed=seed, vocabulary=VOCAB)   # seeded


@settings(max_examples=30, deadline=None)
@given(images, st.integers(0, 1000))
def test_pope_splits_share_positives(objects, seed):
    pos = {s: [(q.image_id, q.object) for q in build_pope(objects, s, seed=seed, vocabulary=VOCAB) if q.label == 'yes']
           for s in POPE_SPLITS}
    assert pos['random'] == pos['popular'] == pos['adversarial']


@given(st.text(max_size=80))
def test_parsers_never_raise(text):
    assert parse_yes_no(text) in ('yes', 'no', None)
    c = parse_count(text)
    assert c is None or c >= 0


@settings(max_examples=40, deadline=None)
@given(images)
def test_chair_zero_for_truthful_descriptions(objects):
    caps = ['There is a ' + ' and a '.join(sorted(o)) + '.' for o in objects]
    cs = chair(caps, objects, {c: [] for c in VOCAB})
    assert cs.chair_s == 0 and cs.chair_i == 0 and cs.recall == 1


ANIMALS = ['bird', 'cat', 'dog', 'horse', 'sheep', 'cow', 'elephant', 'bear', 'zebra', 'giraffe']
FILLER = ['a', 'the', 'on', 'near', 'sits', 'two', 'and', 'with', 'small']

@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.sampled_from(FILLER), st.tuples(st.sampled_from(['baby', 'adult']), st.sampled_from(ANIMALS)).map(' '.join),
                          st.sampled_from(['passenger jet', 'passenger train', 'toilet seat', 'bow tie'])), min_size=1, max_size=12))
def test_coco_qualifiers_never_fire_a_person(words):
    "The official CHAIR rules: a qualifier before an animal or vehicle names that animal or vehicle, never a person."
    caption = ' '.join(words) + '.'
    found = [c for _, c in SynonymTable(COCO_SYNONYMS).find(caption)]
    assert 'person' not in found
    rules = [w for w in words if w in COCO_RULES or ' ' in w]
    assert len(found) == len(rules)                              # each rule phrase is exactly one object
