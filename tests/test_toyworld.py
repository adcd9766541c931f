"Property tests of the toy world: determinism, JSON round trips, exact hallucination labels, edits, speed sanity."
import subprocess, sys
import numpy as np
from hypothesis import given, settings, strategies as st, HealthCheck
from mmpo_nb.toyworld import (ToyWorld, WorldConfig, Scene, describe, caption, questions, sentence_labels, scene_diff,
                              FACT_KINDS, HALLUCINATION_KINDS, EDIT_FACTORS, CLASSES, COLORS)

W = ToyWorld()
EXPECT = {'object': {'object_added', 'object_removed'}, 'color': {'color'}, 'context': {'context'}, 'position': {'position'}, 'size': {'size'}}
cfgs = st.builds(WorldConfig, seed=st.integers(0, 10**6), n_classes=st.integers(4, 16), n_colors=st.integers(2, 8),
                 min_objects=st.just(1), max_objects=st.integers(1, 5), image_size=st.sampled_from([32, 48, 64, 96]))

@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cfg=cfgs, i=st.integers(0, 10**7))
def test_scene_is_valid_and_deterministic(cfg, i):
    w = ToyWorld(cfg); s = w.scene(i)
    assert s == ToyWorld(cfg).scene(i) and Scene.from_json(s.to_json()) == s
    assert cfg.min_objects <= len(s.objects) <= cfg.max_objects
    assert len({(o.row, o.col) for o in s.objects}) == len(s.objects)           # one object per cell
    assert all(o.name in w.classes and o.color in w.colors for o in s.objects)
    im = w.render(s); assert im.size == (cfg.image_size,) * 2 and im.mode == 'RGB'
    assert np.array_equal(np.asarray(im), np.asarray(ToyWorld(cfg).render(s)))
    assert set(sentence_labels(s, describe(s, FACT_KINDS))) <= {'ok'}
    assert caption(s).endswith('.')

@settings(max_examples=60, deadline=None)
@given(i=st.integers(0, 10**7), v=st.integers(0, 5))
def test_hallucinations_carry_exact_labels(i, v):
    s = W.scene(i)
    for k in W.possible_kinds(s, FACT_KINDS):
        h = W.hallucinate(s, k, FACT_KINDS, variant=v)
        assert sentence_labels(s, h.sentences) == h.labels
        assert [l for l in h.labels if l != 'ok'] == [k]

@settings(max_examples=60, deadline=None)
@given(i=st.integers(0, 10**7), f=st.sampled_from(EDIT_FACTORS))
def test_edits_differ_by_one_known_factor(i, f):
    "Scenes of at most 3 objects always leave a free cell and an absent class, so every edit must succeed."
    s = W.scene(i); e = W.edit_scene(s, f)
    d = scene_diff(s, e); assert len(d) == 1 and d[0] in EXPECT[f], (f, d)
    assert e.scene_id == f"{s.scene_id}~{f}0" and (e.context, e.objects) != (s.context, s.objects)

def test_questions_answers_are_consistent():
    for s in W.scenes(200):
        for q in questions(s, classes=W.classes):
            if q.kind == 'existence': assert (q.answer == 'yes') == (s.count(q.subject) > 0)

def test_same_scenes_in_a_fresh_process():
    "Determinism does not depend on process state (hash seeds, caches)."
    code = "from mmpo_nb.toyworld import ToyWorld; import numpy as np; w=ToyWorld(); print(w.scene(123).to_json()); print(int(np.asarray(w.render(w.scene(123))).sum()))"
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True).stdout.split('\n')
    assert out[0] == W.scene(123).to_json() and int(out[1]) == int(np.asarray(W.render(W.scene(123))).sum())

@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cfg=cfgs, i=st.integers(0, 10**7))
def test_hallucinations_in_any_world(cfg, i):
    w = ToyWorld(cfg); s = w.scene(i)
    for k in w.possible_kinds(s, FACT_KINDS):
        h = w.hallucinate(s, k, FACT_KINDS)
        assert sentence_labels(s, h.sentences) == h.labels and [l for l in h.labels if l != 'ok'] == [k]
    for f in EDIT_FACTORS:             # at most 5 objects: a free cell and an absent class always exist
        e = w.edit_scene(s, f)
        assert len(scene_diff(s, e)) == 1 and all(o.color in w.colors and o.name in w.classes for o in e.objects)
