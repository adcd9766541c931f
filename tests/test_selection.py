"""What nbs/05a_selection cannot show: properties over random shapes (hypothesis) and a memory measurement.

The worked examples, the bad-input errors, the proposal fit, the attribution and the `mmpo train sae` -> `mmpo select` path
on a toy dataset are checked in the notebook (the test of record); nothing here repeats them.
"""
import math
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

from mmpo_nb.sae import SAE, SAEConfig, difference_factors
from mmpo_nb.selection import score_candidates, score_candidates_naive, score_pools, greedy_select, select_negatives


@pytest.fixture(autouse=True)
def _one_thread():
    "These tensors are tiny; one intra-op thread avoids spin contention on a shared 2-core CI box."
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _greedy_brute(scores, codes, k, diversity):
    "Algorithm 1 written out from its definition, in plain Python floats."
    s, Z = scores.tolist(), codes.double().tolist()
    def cos(u, v):
        nu, nv = math.sqrt(sum(x * x for x in u)), math.sqrt(sum(x * x for x in v))
        return 0.0 if nu < 1e-12 or nv < 1e-12 else sum(x * y for x, y in zip(u, v)) / (nu * nv)
    picked = []
    for _ in range(k):
        vals = {i: s[i] + (diversity * min(1 - cos(Z[i], Z[j]) for j in picked) if picked else 0.0)
                for i in range(len(s)) if i not in picked}
        best = max(vals.values()); picked.append(min(i for i, v in vals.items() if v == best))
    return picked


@settings(max_examples=100, deadline=None)
@given(B=st.integers(1, 4), M=st.integers(1, 8), dz=st.integers(1, 5), seed=st.integers(0, 10_000), beta=st.floats(0, 3), data=st.data())
def test_batched_greedy_matches_brute_force(B, M, dz, seed, beta, data):
    "All B pools picked at once == Algorithm 1 from its definition, pool by pool."
    g = torch.Generator().manual_seed(seed)
    scores = torch.rand(B, M, generator=g) * 2
    codes = torch.rand(B, M, dz, generator=g) * (torch.rand(B, M, dz, generator=g) < 0.6)
    k = data.draw(st.integers(1, M))
    assert greedy_select(scores, codes, k, beta).tolist() == [_greedy_brute(scores[b], codes[b], k, beta) for b in range(B)]


@settings(max_examples=25, deadline=None)
@given(d_v=st.integers(2, 12), d_t=st.integers(1, 8), d_sae=st.integers(2, 24), B=st.integers(1, 5), M=st.integers(1, 9),
       kind=st.sampled_from(['kl', 'topk']), chunk=st.integers(1, 40), seed=st.integers(0, 10_000))
def test_score_pools_match_per_query_and_materialised(d_v, d_t, d_sae, B, M, kind, chunk, seed):
    "B pools scored in chunks == `score_candidates` per query == the materialised reference."
    torch.manual_seed(seed)
    sae = SAE(SAEConfig(d_v=d_v, d_t=d_t, d_sae=d_sae, kind=kind, k=min(3, d_sae), seed=seed))
    img, txt, cands = F.normalize(torch.randn(B, d_v), dim=-1), F.normalize(torch.randn(B, d_t), dim=-1), F.normalize(torch.randn(B, M, d_v), dim=-1)
    scores, codes = score_pools(sae, img, txt, cands, chunk=chunk)
    for q in range(B):
        a, b = difference_factors(img[q], cands[q], txt[q])
        fast, ref = score_candidates(sae, a, b), score_candidates_naive(sae, a, b)
        torch.testing.assert_close(scores[q], fast.scores, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(codes[q], fast.codes, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(scores[q], ref.scores, rtol=1e-4, atol=1e-4)


@settings(max_examples=25, deadline=None)
@given(B=st.integers(1, 6), G=st.integers(4, 40), n_copies=st.integers(0, 5), chunk=st.integers(1, 200), seed=st.integers(0, 10_000))
def test_chunked_retrieval_is_exact(B, G, n_copies, chunk, seed):
    "Any chunk size gives the pools of one big (B, G) pass, and exact copies of a query (not near-copies) never enter its pool."
    g = torch.Generator().manual_seed(seed)
    gal = F.normalize(torch.randn(G, 6, generator=g), dim=1)
    img = gal[torch.randint(G, (B,), generator=g)].clone()               # every query has a copy in the gallery
    extra = img[torch.randint(B, (n_copies,), generator=g)]
    near = extra + 1e-3                                                   # near-copies: allowed
    gal = torch.cat([gal, extra, near])
    txt = F.normalize(torch.randn(B, 4, generator=g), dim=1)
    one = select_negatives(img, txt, gal, k=1, pool_size=5, strategy='nearest', chunk=10**9)
    many = select_negatives(img, txt, gal, k=1, pool_size=5, strategy='nearest', chunk=chunk)
    copy = (img[:, None] - gal[None]).abs().amax(-1) <= 1e-6              # the materialised reference of "exact copy"
    ref = (img @ gal.T).masked_fill(copy, -math.inf).topk(one.pool.shape[1], dim=1).values
    for sel in (one, many):                                               # (equal similarities may come in either order)
        torch.testing.assert_close(sel.pool_sim, ref)
        assert not copy.gather(1, sel.pool).any()


def test_selection_memory_does_not_grow_with_queries_x_gallery():
    "The biggest single allocation of `select_negatives` stays far below one (B, G, d) tensor (the old exact-copy check)."
    B, G, d = 400, 3000, 32
    g = torch.Generator().manual_seed(0)
    gal = F.normalize(torch.randn(G, d, generator=g), dim=1)
    img, txt = gal[:B].clone(), F.normalize(torch.randn(4, d, generator=g), dim=1).repeat(B // 4, 1)
    sae = SAE(SAEConfig(d_v=d, d_t=d, d_sae=64, kind='topk', k=4))
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        sel = select_negatives(img, txt, gal, sae, k=3, pool_size=16, exclude=torch.arange(B), chunk=2**20)
    biggest = max(e.cpu_memory_usage for e in prof.events())
    assert sel.ids.shape == (B, 3)
    assert biggest < B * G * d * 4 / 10, f"{biggest / 2**20:.0f} MiB in one allocation"   # old code: one (B, G, d) float tensor
