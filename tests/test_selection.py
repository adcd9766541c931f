"Tests for mmpo_nb.selection: factorised scoring vs the materialised reference, Algorithm 1 vs brute force, bad input."
import math
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

from mmpo_nb.sae import SAE, SAEConfig, vec_outer, difference_factors
from mmpo_nb.selection import (score_candidates, score_candidates_naive, greedy_select,
                               select_negatives, Proposal, proposal_chi2, fit_proposal, sample_proposal,
                               latent_auroc, attribute_latents, error_types_covered, planted_pools)


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


@settings(max_examples=150, deadline=None)
@given(M=st.integers(1, 8), dz=st.integers(1, 5), seed=st.integers(0, 10_000), beta=st.floats(0, 3), data=st.data())
def test_greedy_matches_brute_force(M, dz, seed, beta, data):
    g = torch.Generator().manual_seed(seed)
    scores = torch.rand(M, generator=g) * 2
    codes = torch.rand(M, dz, generator=g) * (torch.rand(M, dz, generator=g) < 0.6)
    k = data.draw(st.integers(1, M))
    assert greedy_select(scores, codes, k, beta).tolist() == _greedy_brute(scores, codes, k, beta)


def test_greedy_zero_diversity_is_topk():
    g = torch.Generator().manual_seed(0)
    s, z = torch.rand(20, generator=g), torch.rand(20, 7, generator=g)
    assert greedy_select(s, z, k=5, diversity=0.0).tolist() == s.topk(5).indices.tolist()


@pytest.mark.parametrize('d_v,d_t,d_sae,M', [(6, 4, 16, 9), (16, 8, 32, 33), (32, 32, 64, 5)])
def test_factorised_scores_match_materialised(d_v, d_t, d_sae, M):
    torch.manual_seed(d_v)
    sae = SAE(SAEConfig(d_v=d_v, d_t=d_t, d_sae=d_sae))
    hp, hn, ht = (F.normalize(torch.randn(*s), dim=-1) for s in ((d_v,), (M, d_v), (d_t,)))
    a, b = difference_factors(hp, hn, ht)
    fast, ref = score_candidates(sae, a, b), score_candidates_naive(sae, a, b)
    torch.testing.assert_close(fast.codes, ref.codes, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fast.scores, ref.scores, rtol=1e-4, atol=1e-4)
    assert greedy_select(fast.scores, fast.codes, 3 if M >= 3 else M).tolist() == greedy_select(ref.scores, ref.codes, 3 if M >= 3 else M).tolist()


def _queries(B=4, G=30, d_v=6, d_t=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    gal = F.normalize(torch.randn(G, d_v, generator=g), dim=1)
    return gal[:B].clone(), F.normalize(torch.randn(B, d_t, generator=g), dim=1), gal


def test_select_negatives_excludes_self_and_shares_pool():
    img, txt, gal = _queries()
    sae = SAE(SAEConfig(d_v=6, d_t=4, d_sae=16))
    sel = select_negatives(img, txt, gal, sae, k=3, pool_size=10)  # no `exclude`: exact duplicates are dropped anyway
    rnd = select_negatives(img, txt, gal, sae, k=3, pool_size=10, strategy='random', generator=torch.Generator().manual_seed(1))
    assert torch.equal(sel.pool, rnd.pool)
    for q in range(4):
        assert q not in sel.pool[q].tolist()
        assert set(sel.ids[q].tolist()) <= set(sel.pool[q].tolist()) and len(set(sel.ids[q].tolist())) == 3
        assert set(rnd.ids[q].tolist()) <= set(sel.pool[q].tolist()) and len(set(rnd.ids[q].tolist())) == 3
    assert torch.isfinite(rnd.scores).all()  # SAE given: scores shown for the random picks too


def test_bad_input_k_larger_than_pool():
    img, txt, gal = _queries()
    sae = SAE(SAEConfig(d_v=6, d_t=4, d_sae=16))
    with pytest.raises(ValueError, match='larger than the candidate pool'):
        select_negatives(img, txt, gal, sae, k=5, pool_size=4)
    with pytest.raises(ValueError, match='larger than the candidate pool'):
        select_negatives(img, txt, gal[:3], sae, k=3, pool_size=16)  # only 2 images besides the query's own
    with pytest.raises(ValueError, match='larger than the candidate pool'):
        greedy_select(torch.rand(2), torch.rand(2, 3), k=3)


def test_bad_input_mismatched_embedding_sizes():
    img, txt, gal = _queries()
    sae = SAE(SAEConfig(d_v=6, d_t=4, d_sae=16))
    with pytest.raises(ValueError, match='embedding sizes differ'):
        select_negatives(img, txt, gal[:, :5], sae)
    with pytest.raises(ValueError, match='do not match the SAE'):
        select_negatives(img, txt[:, :3], gal, sae)
    with pytest.raises(ValueError, match='do not match the SAE'):
        score_candidates(sae, torch.randn(3, 6), torch.randn(5))


def test_bad_input_empty_gallery():
    img, txt, gal = _queries()
    with pytest.raises(ValueError, match='gallery is empty'):
        select_negatives(img, txt, gal[:0], SAE(SAEConfig(d_v=6, d_t=4, d_sae=16)))
    with pytest.raises(ValueError, match='gallery is empty'):
        select_negatives(img, txt, torch.empty(0, 6), strategy='random')


def test_proposal_fit_lowers_variance_on_heldout():
    "q_phi fitted on half the planted queries has lower chi^2 (IS variance) than uniform on the other half."
    pp = planted_pools(n_queries=128, pool=16, seed=3)
    torch.manual_seed(0)
    d_sae = 8
    # codes: the factor indicators themselves plus noise (a perfect dictionary), so this tests q_phi, not the SAE
    codes = torch.cat([pp.factors.float(), torch.rand(128, 16, d_sae - 4)], -1)
    scores = codes.abs().sum(-1) / codes.abs().sum(-1).amax(-1, keepdim=True)
    delta = -3.0 * pp.factors[..., [0, 2, 3]].float().sum(-1) + 0.2 * torch.randn(128, 16)  # policy blind to "colour"
    log_p = (0.5 * delta).log_softmax(-1)
    q = Proposal(d_sae, mix=0.1)
    fit_proposal(q, scores[:64], codes[:64], log_p[:64], steps=200)
    with torch.no_grad():
        chi_q = proposal_chi2(log_p[64:], q(scores[64:], codes[64:])).mean()
    chi_u = proposal_chi2(log_p[64:], torch.full_like(log_p[64:], -math.log(16))).mean()
    assert chi_q < 0.5 * chi_u


def test_attribution_recovers_planted_detectors():
    g = torch.Generator().manual_seed(0)
    fac = torch.rand(500, 3, generator=g) < 0.4
    codes = torch.cat([fac.float() + 0.1 * torch.rand(500, 3, generator=g), torch.rand(500, 5, generator=g)], 1)
    att = attribute_latents(codes, fac, ['object', 'colour', 'context'])
    assert att.best_latent.tolist() == [0, 1, 2] and att.coverage == 1.0
    with pytest.raises(ValueError, match='AUROC is undefined'):
        latent_auroc(codes, torch.zeros(500, 1, dtype=torch.bool))
    assert error_types_covered(fac[:10].view(2, 5, 3)).tolist() == fac[:10].view(2, 5, 3).any(1).sum(-1).tolist()


def test_select_for_dataset_writes_columns(tmp_path):
    "`mmpo select` path end to end on a tiny toy dataset, with a random-init tiny CLIP and SAE (mechanics only)."
    import json
    import pyarrow.parquet as pq
    from mmpo_nb.clip import load_clip, save_clip
    from mmpo_nb.data import write_toy_dataset, read_dataset
    from mmpo_nb.selection import select_for_dataset
    from mmpo_nb.selection import train_sae_for_dataset
    write_toy_dataset(6, tmp_path/'ds', progress=False)
    clip = load_clip('mmpo-tiny', device='cpu'); save_clip(clip.model, 'mmpo-tiny', tmp_path/'clip')
    run = train_sae_for_dataset(tmp_path/'ds', tmp_path/'clip', tmp_path/'sae', steps=3, batch_size=16, pool_size=4,
                                progress=False, device='cpu')
    assert SAE.load(run).cfg.d_sae == 128                         # the `mmpo train sae` path wrote a loadable SAE
    d = SAE.load(run).cfg.d_v
    SAE(SAEConfig(d_v=d, d_t=d, d_sae=16)).save(tmp_path/'sae')
    with pytest.raises(ValueError, match='CLIP embeds to'):
        train_sae_for_dataset(tmp_path/'ds', tmp_path/'clip', tmp_path/'sae2', sae_cfg=SAEConfig(d_v=8, d_t=8),
                              steps=1, progress=False, device='cpu')
    f = select_for_dataset(tmp_path/'ds', tmp_path/'clip', tmp_path/'sae', k=3, pool_size=6, out=tmp_path/'out',
                           progress=False, device='cpu')
    rows = pq.read_table(f).to_pylist()
    assert len(rows) == 6
    for r in rows:
        assert len(r['selected_neg_ids']) == 3 and r['scene_id'] not in r['selected_neg_ids']
        assert all((tmp_path/'out'/p).is_file() for p in r['selected_neg_paths'])
        assert all(math.isfinite(s) for s in r['selected_neg_scores'])
    assert json.loads((tmp_path/'out'/'meta.json').read_text())['selection']['k'] == 3
    assert 'selected_neg_ids' in read_dataset(tmp_path/'out').column_names
    assert 'selected_neg_ids' not in pq.read_table(tmp_path/'ds'/'data.parquet').column_names  # source untouched
    with pytest.raises(ValueError, match='larger than the candidate pool'):
        select_for_dataset(tmp_path/'ds', tmp_path/'clip', tmp_path/'sae', k=40, pool_size=64, progress=False, device='cpu')
