"""What the notebook cannot show for `mmpo_nb.objectives`: properties over random shapes and values.

The worked examples, the reductions to DPO, the fixed-shape gradchecks and the error messages are checked in
nbs/04_objectives.ipynb (the test of record); nothing here repeats them.
"""
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from mmpo_nb.objectives import (dpo_loss, mdpo_loss, pl_image_loss, sampled_pl_image_loss, pl_text_loss, misp_loss,
                                aspo_weights, aspo_loss)

FAST = settings(max_examples=25, deadline=None, database=None)
betas = st.floats(0.01, 5)


def _t(data, shape, lo=-60., hi=0., dtype=torch.float64):
    "Draw a tensor of `shape` with values in [lo, hi] from hypothesis `data`."
    n = math.prod(shape)
    return torch.tensor(data.draw(st.lists(st.floats(lo, hi), min_size=n, max_size=n)), dtype=dtype).view(shape)


def _mask(data, B, K):
    "A (B, K) bool mask with at least one True per row."
    m = torch.tensor(data.draw(st.lists(st.booleans(), min_size=B * K, max_size=B * K))).view(B, K)
    m[torch.arange(B), torch.tensor(data.draw(st.lists(st.integers(0, K - 1), min_size=B, max_size=B)))] = True
    return m


def _cases(B, K, mask, w, log_q):
    "Every loss as (fn of its log-prob tensors -> losses, shapes of those tensors in the library's argument order)."
    return {
        'dpo': (lambda *a: dpo_loss(*a, beta=0.3).losses, [(B,)] * 4),
        'mdpo': (lambda *a: mdpo_loss(*a, beta=0.3, anchor=-0.1).losses, [(B,)] * 6),
        'pl_image': (lambda *a: pl_image_loss(*a, beta=0.5, neg_mask=mask).losses, [(B,), (B, K), (B,), (B, K)]),
        'sampled_pl_image': (lambda *a: sampled_pl_image_loss(*a, log_q=log_q, beta=0.5, neg_mask=mask).losses, [(B,), (B, K), (B,), (B, K)]),
        'pl_text': (lambda *a: pl_text_loss(*a, beta=0.5, rejected_mask=mask).losses, [(B,), (B, K), (B,), (B, K)]),
        'misp': (lambda pp, pn, pr, rp, rn, rr: misp_loss(
                    image_part=pl_image_loss(policy_pos_logps=pp, policy_neg_logps=pn, ref_pos_logps=rp, ref_neg_logps=rn, neg_mask=mask),
                    text_part=pl_text_loss(policy_chosen_logps=pp, policy_rejected_logps=pr, ref_chosen_logps=rp, ref_rejected_logps=rr,
                                           rejected_mask=mask), lam=0.5).losses,
                 [(B,), (B, K), (B, K), (B,), (B, K), (B, K)]),
        'aspo': (lambda *a: aspo_loss(*a, sent_weights=w, sent_mask=mask, beta=0.2).losses, [(B, K), (B,), (B, K), (B,)]),
    }


# ---- structure of the Plackett-Luce losses ----------------------------------------------------------------------------

@FAST
@given(st.integers(1, 4), st.integers(1, 5), st.integers(0, 3), betas, st.data())
def test_pl_padding_and_permutation_invariance(B, K, pad, beta, data):
    pp, rp, pn, rn = _t(data, (B,)), _t(data, (B,)), _t(data, (B, K)), _t(data, (B, K))
    ref = pl_image_loss(pp, pn, rp, rn, beta=beta)
    perm = torch.randperm(K)
    torch.testing.assert_close(pl_image_loss(pp, pn[:, perm], rp, rn[:, perm], beta=beta).losses, ref.losses)
    junk = torch.full((B, pad), float('nan'), dtype=torch.float64)        # padding may hold anything
    mask = torch.cat([torch.ones(B, K, dtype=torch.bool), torch.zeros(B, pad, dtype=torch.bool)], 1)
    padded = pl_image_loss(pp, torch.cat([pn, junk], 1), rp, torch.cat([rn, junk], 1), beta=beta, neg_mask=mask)
    torch.testing.assert_close(padded.losses, ref.losses)
    torch.testing.assert_close(padded.pref_probs[:, :K], ref.pref_probs)
    assert (padded.pref_probs[:, K:] == 0).all()


@FAST
@given(st.integers(1, 4), st.integers(1, 5), betas, st.data())
def test_pl_more_negatives_never_lower_the_loss(B, K, beta, data):
    pp, rp, pn, rn = _t(data, (B,)), _t(data, (B,)), _t(data, (B, K + 1)), _t(data, (B, K + 1))
    fewer, more = pl_image_loss(pp, pn[:, :K], rp, rn[:, :K], beta=beta), pl_image_loss(pp, pn, rp, rn, beta=beta)
    assert (more.losses >= fewer.losses - 1e-12).all()


@FAST
@given(st.integers(1, 4), st.integers(1, 6), betas, st.data())
def test_sampled_pl_with_whole_pool_uniform_is_exact(B, K, beta, data):
    pp, rp, pn, rn = _t(data, (B,)), _t(data, (B,)), _t(data, (B, K)), _t(data, (B, K))
    log_q = torch.full((B, K), -math.log(K), dtype=torch.float64)
    torch.testing.assert_close(sampled_pl_image_loss(pp, pn, rp, rn, log_q, beta=beta).losses, pl_image_loss(pp, pn, rp, rn, beta=beta).losses)


@FAST
@given(st.integers(1, 4), st.integers(1, 5), st.floats(0.05, 2), st.data())
def test_policy_and_reference_enter_only_as_log_ratios(B, K, beta, data):
    "Shifting a policy tensor and its reference tensor by the same amount changes nothing (catches a policy/ref swap)."
    pp, rp, pn, rn, shift = _t(data, (B,)), _t(data, (B,)), _t(data, (B, K)), _t(data, (B, K)), _t(data, (B, K), -5., 5.)
    a, b = pl_image_loss(pp, pn, rp, rn, beta=beta), pl_image_loss(pp, pn + shift, rp, rn + shift, beta=beta)
    torch.testing.assert_close(a.losses, b.losses)
    c = pl_text_loss(pp, pn + 1., rp, rn, beta=beta)                        # only the policy side: every negative's reward +β
    torch.testing.assert_close(c.margins, a.margins - beta)


# ---- batches are independent rows (so gradient accumulation is exact) ------------------------------------------------

@settings(max_examples=10, deadline=None, database=None)
@given(st.integers(2, 5), st.integers(1, 4), st.data())
def test_rows_are_independent(B, K, data):
    mask, w = _mask(data, B, K), _t(data, (B, K), 0., 1.)
    log_q = torch.log_softmax(_t(data, (B, K), -3., 3.), -1)
    for name, (_, shapes) in _cases(B, K, mask, w, log_q).items():
        xs = [_t(data, s) for s in shapes]
        rows = [_cases(1, K, mask[i:i + 1], w[i:i + 1], log_q[i:i + 1])[name][0](*(x[i:i + 1] for x in xs)) for i in range(B)]
        torch.testing.assert_close(torch.cat(rows), _cases(B, K, mask, w, log_q)[name][0](*xs), msg=name)


# ---- gradients against finite differences, on random shapes and masks ---------------------------------------------------

@settings(max_examples=6, deadline=None, database=None)
@given(st.integers(1, 4), st.integers(1, 4), st.data())
def test_gradcheck_random_shapes(B, K, data):
    mask = _mask(data, B, K)
    w = aspo_weights(_t(data, (B, K), 0., 1.), 1 + _t(data, (B, K), 0., 5.), mask)
    log_q = torch.log_softmax(_t(data, (B, K), -3., 3.), -1)
    for name, (fn, shapes) in _cases(B, K, mask, w, log_q).items():
        xs = tuple(_t(data, s, -30., 0.).requires_grad_() for s in shapes)
        assert torch.autograd.gradcheck(fn, xs, eps=1e-6, atol=1e-7), name
        fn(*xs).sum().backward()
        for x in xs:
            assert torch.isfinite(x.grad).all(), name
            if x.dim() == 2: assert (x.grad[~mask] == 0).all(), name       # padding gets exactly zero gradient


# ---- bad input in ANY argument position names that argument ---------------------------------------------------------------

@pytest.mark.parametrize('name', list(_cases(1, 1, None, None, None)))
def test_every_argument_is_validated(name):
    B, K = 3, 2
    mask, w, log_q = torch.ones(B, K, dtype=torch.bool), torch.zeros(B, K, dtype=torch.float64), torch.full((B, K), -math.log(K), dtype=torch.float64)
    fn, shapes = _cases(B, K, mask, w, log_q)[name]
    base = [torch.zeros(s, dtype=torch.float64) for s in shapes]
    for i in range(len(base)):
        for bad in (float('nan'), float('inf'), -float('inf')):
            xs = list(base); xs[i] = base[i].clone(); xs[i].view(-1)[0] = bad
            with pytest.raises(ValueError, match='non-finite'): fn(*xs)
        xs = list(base); xs[i] = base[i][:-1]
        with pytest.raises(ValueError, match='shape mismatch'): fn(*xs)
