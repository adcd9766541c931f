"Property and edge-case tests for `mmpo_nb.objectives` (the notebook nbs/04_objectives.ipynb holds the worked examples)."
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from mmpo_nb.objectives import (dpo_loss, mdpo_loss, pl_image_loss, is_pl_image_loss, pl_text_loss, misp_loss,
                                aspo_weights, aspo_loss, loss_metrics)

FAST = settings(max_examples=25, deadline=None, database=None)
lp32 = st.floats(-200, 0, width=32)
betas = st.floats(0.01, 5)


def _t(data, shape, lo=-60., hi=0., dtype=torch.float64):
    "Draw a tensor of `shape` with values in [lo, hi] from hypothesis `data`."
    n = math.prod(shape)
    return torch.tensor(data.draw(st.lists(st.floats(lo, hi), min_size=n, max_size=n)), dtype=dtype).view(shape)


def _mask(data, B, N):
    "A (B, N) bool mask with at least one True per row."
    m = torch.tensor(data.draw(st.lists(st.booleans(), min_size=B * N, max_size=B * N))).view(B, N)
    m[torch.arange(B), torch.tensor(data.draw(st.lists(st.integers(0, N - 1), min_size=B, max_size=B)))] = True
    return m


# ---- reductions to DPO ------------------------------------------------------------------------------------------------

@FAST
@given(st.lists(st.tuples(lp32, lp32, lp32, lp32), min_size=1, max_size=8), betas)
def test_pl_image_one_negative_is_dpo(rows, beta):
    pp, rp, pn, rn = torch.tensor(rows).T
    pl, dpo = pl_image_loss(pp, rp, pn[:, None], rn[:, None], beta=beta), dpo_loss(pp, pn, rp, rn, beta=beta)
    assert torch.equal(pl.losses, dpo.losses) and torch.equal(pl.margins, dpo.margins)
    assert torch.equal(pl.chosen_rewards, dpo.chosen_rewards) and torch.equal(pl.rejected_rewards[:, 0], dpo.rejected_rewards)


@FAST
@given(st.lists(st.tuples(lp32, lp32, lp32, lp32), min_size=1, max_size=8), betas)
def test_pl_text_one_rejected_is_dpo(rows, beta):
    pc, rc, pr, rr = torch.tensor(rows).T
    pl, dpo = pl_text_loss(pc, rc, pr[:, None], rr[:, None], beta=beta), dpo_loss(pc, pr, rc, rr, beta=beta)
    assert torch.equal(pl.losses, dpo.losses) and torch.equal(pl.margins, dpo.margins)


@FAST
@given(st.integers(1, 4), st.integers(1, 6), betas, st.data())
def test_aspo_zero_weights_or_one_sentence_is_dpo(B, S, beta, data):
    pcs, rcs, pr, rr = _t(data, (B, S)), _t(data, (B, S)), _t(data, (B,)), _t(data, (B,))
    w, mask = _t(data, (B, S), 0., 3.), _mask(data, B, S)
    summed = lambda x: x.masked_fill(~mask, 0).sum(-1)
    dpo = dpo_loss(summed(pcs), pr, summed(rcs), rr, beta=beta)
    zero = aspo_loss(pcs, rcs, torch.zeros(B, S, dtype=torch.float64), mask, pr, rr, beta=beta)
    torch.testing.assert_close(zero.losses, dpo.losses, rtol=1e-9, atol=1e-9)
    one = torch.zeros_like(mask); one[:, 0] = True
    single = aspo_loss(pcs, rcs, w, one, pr, rr, beta=beta)               # one sentence: any weight cancels
    torch.testing.assert_close(single.losses, dpo_loss(pcs[:, 0], pr, rcs[:, 0], rr, beta=beta).losses, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(aspo_loss(pcs, rcs, w, mask, pr, rr, beta=beta).sent_scales.sum(-1), mask.sum(-1).double())


# ---- structure of the Plackett-Luce losses ----------------------------------------------------------------------------

@FAST
@given(st.integers(1, 4), st.integers(1, 5), st.integers(0, 3), betas, st.data())
def test_pl_padding_and_permutation_invariance(B, N, pad, beta, data):
    pp, rp, pn, rn = _t(data, (B,)), _t(data, (B,)), _t(data, (B, N)), _t(data, (B, N))
    ref = pl_image_loss(pp, rp, pn, rn, beta=beta)
    perm = torch.randperm(N)
    torch.testing.assert_close(pl_image_loss(pp, rp, pn[:, perm], rn[:, perm], beta=beta).losses, ref.losses)
    junk = torch.full((B, pad), float('nan'), dtype=torch.float64)        # padding may hold anything
    mask = torch.cat([torch.ones(B, N, dtype=torch.bool), torch.zeros(B, pad, dtype=torch.bool)], 1)
    padded = pl_image_loss(pp, rp, torch.cat([pn, junk], 1), torch.cat([rn, junk], 1), beta=beta, neg_mask=mask)
    torch.testing.assert_close(padded.losses, ref.losses)
    torch.testing.assert_close(padded.pref_probs[:, :N], ref.pref_probs)
    assert (padded.pref_probs[:, N:] == 0).all()


@FAST
@given(st.integers(1, 4), st.integers(1, 5), betas, st.data())
def test_pl_more_negatives_never_lower_the_loss(B, N, beta, data):
    pp, rp, pn, rn = _t(data, (B,)), _t(data, (B,)), _t(data, (B, N + 1)), _t(data, (B, N + 1))
    fewer, more = pl_image_loss(pp, rp, pn[:, :N], rn[:, :N], beta=beta), pl_image_loss(pp, rp, pn, rn, beta=beta)
    assert (more.losses >= fewer.losses - 1e-12).all()


@FAST
@given(st.integers(1, 4), st.integers(1, 6), betas, st.data())
def test_is_pl_with_whole_pool_uniform_is_exact(B, N, beta, data):
    pp, rp, pn, rn = _t(data, (B,)), _t(data, (B,)), _t(data, (B, N)), _t(data, (B, N))
    log_q = torch.full((B, N), -math.log(N), dtype=torch.float64)
    torch.testing.assert_close(is_pl_image_loss(pp, rp, pn, rn, log_q, beta=beta).losses, pl_image_loss(pp, rp, pn, rn, beta=beta).losses)


def test_is_pl_partition_estimate_unbiased():
    "Mean of exp(-margins) over many sampled pools matches the full-pool partition sum."
    g = torch.Generator().manual_seed(0)
    M, K, R = 32, 3, 20000
    pol, ref = -20 + 2 * torch.randn(M, generator=g, dtype=torch.float64), -20 + 2 * torch.randn(M, generator=g, dtype=torch.float64)
    pos = torch.tensor([-19.], dtype=torch.float64)
    Z = torch.exp(-pl_image_loss(pos, pos, pol[None], ref[None]).margins).item()
    q = torch.softmax(torch.randn(M, generator=g, dtype=torch.float64), 0) * 0.7 + 0.3 / M
    idx = torch.multinomial(q, R * K, replacement=True, generator=g).view(R, K)
    Zhat = torch.exp(-is_pl_image_loss(pos.expand(R), pos.expand(R), pol[idx], ref[idx], q.log()[idx]).margins)
    assert abs(Zhat.mean().item() - Z) < 4 * Zhat.std().item() / R ** 0.5


# ---- batches are independent rows (so gradient accumulation is exact) ------------------------------------------------

@settings(max_examples=10, deadline=None, database=None)
@given(st.integers(2, 5), st.integers(1, 4), st.data())
def test_rows_are_independent(B, N, data):
    x = [_t(data, (B,)) for _ in range(6)]
    X = [_t(data, (B, N)) for _ in range(2)]
    mask, w = _mask(data, B, N), _t(data, (B, N), 0., 1.)
    log_q = torch.log_softmax(_t(data, (B, N), -3., 3.), -1)
    fns = [lambda s: dpo_loss(*(v[s] for v in x[:4])), lambda s: mdpo_loss(*(v[s] for v in x)),
           lambda s: pl_image_loss(x[0][s], x[1][s], X[0][s], X[1][s], neg_mask=mask[s]),
           lambda s: is_pl_image_loss(x[0][s], x[1][s], X[0][s], X[1][s], log_q[s], neg_mask=mask[s]),
           lambda s: pl_text_loss(x[0][s], x[1][s], X[0][s], X[1][s], rejected_mask=mask[s]),
           lambda s: aspo_loss(X[0][s], X[1][s], w[s], mask[s], x[2][s], x[3][s])]
    for fn in fns:
        whole = fn(slice(None)).losses
        torch.testing.assert_close(torch.cat([fn(slice(i, i + 1)).losses for i in range(B)]), whole)


# ---- gradients against finite differences ------------------------------------------------------------------------------

def _cases():
    g = torch.Generator().manual_seed(3)
    r = lambda *s: (-30 * torch.rand(*s, generator=g, dtype=torch.float64)).requires_grad_()
    B, N = 4, 3
    mask = torch.tensor([[True, False, False], [True, True, True], [False, True, True], [True, False, True]])
    w = aspo_weights(torch.rand(B, N, generator=g, dtype=torch.float64), 1 + torch.rand(B, N, generator=g, dtype=torch.float64), mask)
    log_q = torch.log_softmax(torch.randn(B, N, generator=g, dtype=torch.float64), -1)
    return mask, {
        'dpo': (lambda *a: dpo_loss(*a, beta=0.3).losses, [r(B) for _ in range(4)]),
        'mdpo': (lambda *a: mdpo_loss(*a, beta=0.3, anchor=-0.1).losses, [r(B) for _ in range(6)]),
        'pl_image': (lambda *a: pl_image_loss(*a, beta=0.5, neg_mask=mask).losses, [r(B), r(B), r(B, N), r(B, N)]),
        'is_pl_image': (lambda *a: is_pl_image_loss(*a, log_q, beta=0.5, neg_mask=mask).losses, [r(B), r(B), r(B, N), r(B, N)]),
        'pl_text': (lambda *a: pl_text_loss(*a, beta=0.5, rejected_mask=mask).losses, [r(B), r(B), r(B, N), r(B, N)]),
        'misp': (lambda a, b, c, d, e, f: misp_loss(pl_image_loss(a, b, c, d, neg_mask=mask), pl_text_loss(a, b, e, f, rejected_mask=mask), lam=0.5).losses,
                 [r(B), r(B), r(B, N), r(B, N), r(B, N), r(B, N)]),
        'aspo': (lambda a, b, c, d: aspo_loss(a, b, w, mask, c, d, beta=0.2).losses, [r(B, N), r(B, N), r(B), r(B)]),
    }


@pytest.mark.parametrize('name', list(_cases()[1]))
def test_gradcheck(name):
    mask, cases = _cases()
    fn, inputs = cases[name]
    assert torch.autograd.gradcheck(fn, tuple(inputs), eps=1e-6, atol=1e-7)
    fn(*inputs).sum().backward()
    for x in inputs:
        assert torch.isfinite(x.grad).all()
        if x.dim() == 2: assert (x.grad[~mask] == 0).all()


def test_aspo_weights_have_no_gradient_and_degenerate_to_zero():
    sims = torch.tensor([[0.3, 0.1, 0.2], [0.5, 0.0, 0.0], [0.2, 0.2, 0.2]], requires_grad=True)
    ppls = torch.tensor([[2., 4., 3.], [3., 1., 1.], [5., 5., 5.]], requires_grad=True)
    mask = torch.tensor([[True, True, True], [True, False, False], [True, True, True]])
    w = aspo_weights(sims, ppls, mask)
    assert not w.requires_grad and w.grad_fn is None
    torch.testing.assert_close(w[0], torch.tensor([1., 0., 0.5]))
    assert (w[1:] == 0).all()


# ---- bad input -> one ValueError naming the argument --------------------------------------------------------------------

@pytest.mark.parametrize('name', list(_cases()[1]))
def test_bad_inputs_raise(name):
    _, cases = _cases()
    fn, inputs = cases[name]
    base = [x.detach() for x in inputs]
    for i in range(len(base)):
        for bad in (float('nan'), float('inf'), -float('inf')):
            xs = list(base); xs[i] = base[i].clone(); xs[i].view(-1)[0] = bad
            with pytest.raises(ValueError, match='non-finite'): fn(*xs)
        xs = list(base); xs[i] = base[i][:-1]
        with pytest.raises(ValueError, match='shape mismatch'): fn(*xs)


@pytest.mark.parametrize('beta', [0, -1, float('nan'), float('inf')])
def test_bad_beta(beta):
    z, zz, m = torch.zeros(2), torch.zeros(2, 3), torch.ones(2, 3, dtype=torch.bool)
    for call in (lambda: dpo_loss(z, z, z, z, beta=beta), lambda: mdpo_loss(z, z, z, z, z, z, beta=beta),
                 lambda: pl_image_loss(z, z, zz, zz, beta=beta), lambda: is_pl_image_loss(z, z, zz, zz, zz - 1, beta=beta),
                 lambda: pl_text_loss(z, z, zz, zz, beta=beta), lambda: aspo_loss(zz, zz, zz, m, z, z, beta=beta)):
        with pytest.raises(ValueError, match='beta must be'): call()


def test_all_masked_row():
    z, zz = torch.zeros(2), torch.zeros(2, 3)
    m = torch.tensor([[True, False, False], [False, False, False]])
    for call, name in ((lambda: pl_image_loss(z, z, zz, zz, neg_mask=m), 'neg_mask'), (lambda: is_pl_image_loss(z, z, zz, zz, zz - 1, neg_mask=m), 'neg_mask'),
                       (lambda: pl_text_loss(z, z, zz, zz, rejected_mask=m), 'rejected_mask'), (lambda: aspo_loss(zz, zz, zz, m, z, z), 'sent_mask'),
                       (lambda: aspo_weights(zz, zz + 1, m), 'sent_mask')):
        with pytest.raises(ValueError, match=f'{name} row 1 is all False'): call()


def test_metrics_names():
    out = mdpo_loss(*(torch.zeros(3) for _ in range(6)))
    d = loss_metrics(out, prefix='eval/')
    assert d['eval/loss/total'] == pytest.approx(3 * math.log(2))
    assert {'eval/loss/dpo', 'eval/loss/conditional', 'eval/loss/anchor', 'eval/rewards/chosen', 'eval/rewards/rejected',
            'eval/rewards/corrupt', 'eval/rewards/margins', 'eval/rewards/accuracies'} <= set(d)
    a = aspo_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(2, 3, dtype=torch.bool), torch.zeros(2), torch.zeros(2))
    assert set(loss_metrics(a)) == {'loss/total', 'rewards/chosen', 'rewards/rejected', 'rewards/margins', 'rewards/accuracies'}
