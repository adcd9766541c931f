"Property and integration tests for mmpo_nb.metrics (the notebook holds the hand-computed checks)."
import random
import pytest
from hypothesis import given, settings, strategies as st

from mmpo_nb.metrics import (POPE_SPLITS, COCO_SYNONYMS, SynonymTable, build_pope, chair, evaluate_pope, object_stats,
                             parse_count, parse_yes_no, pope_scores, qa_accuracy)

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


def test_adversarial_picks_planted_partner():
    rng = random.Random(0)
    objects = []
    for _ in range(500):                       # fork -> plate 90% of the time, everything else at random
        s = set(rng.sample(VOCAB, 2))
        if 'fork' in s and rng.random() < 0.9: s.add('plate')
        objects.append(s)
    st_ = object_stats(objects)
    assert st_.partners('fork')[0] == 'plate' and st_.partners('plate')[0] == 'fork'
    for q in build_pope([{'plate'}] * 5, 'adversarial', n_per_image=1, seed=1, stats=st_, vocabulary=VOCAB):
        assert q.object == ('plate' if q.label == 'yes' else 'fork')
    qs = build_pope([{'plate', 'car'}], 'adversarial', n_per_image=2, stats=st_, vocabulary=VOCAB)
    assert 'fork' in [q.object for q in qs if q.label == 'no']


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


def test_chair_coco_table_and_mismatch():
    cs = chair(['A man rides a motorbike past two hydrants.', 'A cat on a sofa.'],
               [['person', 'motorcycle'], ['cat', 'couch']], COCO_SYNONYMS)
    assert cs.hallucinated == [['fire hydrant'], []]
    assert cs.chair_s == 0.5 and cs.chair_i == 1 / 5
    with pytest.raises(ValueError, match='2 descriptions for 1 images'):
        chair(['a', 'b'], [['cat']], COCO_SYNONYMS)


def test_evaluate_pope_biased_model_drops_on_adversarial():
    rng = random.Random(0)
    objects = []
    for _ in range(400):
        s = set(rng.sample(VOCAB, 2))
        if 'fork' in s: s.add('plate')
        if 'plate' in s and rng.random() < 0.6: s.add('fork')
        objects.append(s)
    partners = {o: object_stats(objects).partners(o)[0] for o in VOCAB}
    def biased(qs):                         # says yes to what is present and to the top partner of anything present
        return ['yes' if q.object in objects[q.image_id] or any(partners[p] == q.object for p in objects[q.image_id]) else 'no'
                for q in qs]
    rep = evaluate_pope(biased, objects, n_per_image=2, seed=0)
    assert rep['random'].accuracy > rep['adversarial'].accuracy
    assert rep['adversarial'].yes_ratio > 0.5
    assert set(rep.as_dict()) >= {f'pope/{s}/{m}' for s in POPE_SPLITS for m in ('acc', 'precision', 'recall', 'f1', 'yes_ratio')}


def test_bad_inputs_are_one_clear_error():
    with pytest.raises(ValueError, match='unknown POPE split'): build_pope([{'cup'}], 'hard')
    with pytest.raises(ValueError, match='empty vocabulary'): SynonymTable({})
    with pytest.raises(ValueError, match='1 answers for 2 questions'): pope_scores(['yes'], ['yes', 'no'])
    with pytest.raises(ValueError, match='2 predictions for 1 answers'): qa_accuracy(['a', 'b'], ['a'])


def test_toyworld_descriptions_score_clean():
    tw = pytest.importorskip('mmpo_nb.toyworld')
    if not hasattr(tw, 'describe'): pytest.skip('toyworld text not exported yet')
    w = tw.ToyWorld()
    scenes = w.scenes(200)
    caps = [' '.join(tw.describe(s)) for s in scenes]
    cs = chair(caps, [s.names for s in scenes])
    assert cs.chair_i == 0 and cs.recall == 1
