"Integration tests for mmpo_nb.sae: factored paths vs the materialised reference, precision on a trained SAE, checkpoints, bad input."
import json
import pytest, torch
from hypothesis import given, settings, strategies as st
from mmpo_nb.sae import (SAE, SAEConfig, vec_outer, training_forward, train_sae, rank_one_batches, planted_rank_one,
                         evaluate_sae, geometric_median, total_variance, feature_density)


def _sae(d_v, d_t, d_sae, kind, seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    sae = SAE(SAEConfig(d_v, d_t, d_sae=d_sae, kind=kind, k=min(3, d_sae), seed=seed)).to(dtype)
    with torch.no_grad(): sae.b_dec.normal_(std=0.5); sae.b_enc.normal_(std=0.5); sae.W_enc.mul_(2)
    return sae


@settings(max_examples=25, deadline=None)
@given(d_v=st.integers(1, 7), d_t=st.integers(1, 6), d_sae=st.integers(1, 9), n=st.integers(1, 9), n_prompts=st.integers(0, 4),
       kind=st.sampled_from(['kl', 'topk']), seed=st.integers(0, 10**6))
def test_factored_matches_naive(d_v, d_t, d_sae, n, n_prompts, kind, seed):
    "Codes, per-row errors, losses and every parameter gradient agree with the materialised reference (0 prompts = one shared b)."
    sae = _sae(d_v, d_t, d_sae, kind, seed)
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, d_v, generator=g, dtype=torch.float64)
    b = (torch.randn(d_t, generator=g, dtype=torch.float64) if n_prompts == 0 else
         torch.randn(n_prompts, d_t, generator=g, dtype=torch.float64)[torch.randint(n_prompts, (n,), generator=g)])
    x = vec_outer(a, b)
    z = sae.encode(x)
    torch.testing.assert_close(sae.encode_factors(a, b), z, rtol=1e-9, atol=1e-9)
    ref = ((x - sae.decode(z))**2).sum(1)
    torch.testing.assert_close(sae.recon_error_factors(a, b, z), ref, rtol=1e-8, atol=1e-9)
    with torch.no_grad():                                   # scoring path (cached float64 augmented decoder)
        torch.testing.assert_close(sae.encode_factors(a, b), z, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(sae.recon_error_factors(a, b, z.detach()), ref.detach(), rtol=1e-8, atol=1e-9)
    dead = torch.rand(d_sae, generator=g) < 0.5
    grads = {}
    for name, batch in (('f', (a, b)), ('n', x)):
        sae.zero_grad(); o = training_forward(sae, batch, dead); o.loss.backward()
        grads[name] = (float(o.loss.detach()), [p.grad.clone() for p in sae.parameters()])
    assert grads['f'][0] == pytest.approx(grads['n'][0], rel=1e-9, abs=1e-12)
    for gf, gn in zip(grads['f'][1], grads['n'][1]): torch.testing.assert_close(gf, gn, rtol=1e-7, atol=1e-9)


def test_total_variance_and_median_on_factors():
    a, b = torch.randn(40, 5, dtype=torch.float64), torch.randn(40, 3, dtype=torch.float64)
    torch.testing.assert_close(total_variance((a, b)), total_variance(vec_outer(a, b)))
    torch.testing.assert_close(geometric_median((a, b)), geometric_median(vec_outer(a, b)), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_trained_sae_float64_accumulation():
    "On a trained SAE the Gram form cancels: float64 accumulation matches the float64 reference, float32 does not."
    torch.set_num_threads(1)
    d = planted_rank_one(3072, n_factors=12, active=2, seed=4)
    sae = SAE(SAEConfig(16, 8, d_sae=64, kind='topk', k=4))
    train_sae(sae, rank_one_batches(d['a'][:2048], d['b'][:2048], 256), steps=300, lr=3e-3, progress=False)
    a, b = d['a'][2048:], d['b'][2048:]
    with torch.no_grad():
        z = sae.encode_factors(a, b)
        ref = ((vec_outer(a.double(), b.double()) - (z.double() @ sae.W_dec.double() + sae.b_dec.double()))**2).sum(1)
        e64, e32 = sae.recon_error_factors(a, b, z), sae.recon_error_factors(a, b, z, dtype=torch.float32)
    assert float((ref/((a*a).sum(1)*(b*b).sum(1))).median()) < 0.05          # it really reconstructs well
    rel64, rel32 = float(((e64 - ref).abs()/ref).max()), float(((e32.double() - ref).abs()/ref).max())
    assert rel64 < 1e-9 and rel32 > 1000*rel64
    m = evaluate_sae(sae, (a, b))
    assert m['sae/fvu'] < 0.1 and 0 < m['sae/l0'] <= 4 and set(m) >= {'sae/fvu', 'sae/l0', 'sae/dead_pct', 'sae/dense_pct', 'density'}
    torch.testing.assert_close(m['density'], feature_density(sae, vec_outer(a, b)))


@pytest.mark.parametrize('kind', ['kl', 'topk'])
def test_resume_equals_uninterrupted(tmp_path, kind):
    "2N steps in one run == N steps, then resume for N more (optimizer, step and dead counters restored)."
    cfg = SAEConfig(6, 4, d_sae=16, kind=kind, k=3, dead_steps=3, auxk_coef=0.25)
    d = planted_rank_one(512, d_v=6, d_t=4, n_factors=6, seed=2)
    one = SAE(cfg); train_sae(one, rank_one_batches(d['a'], d['b'], 32, seed=5), steps=24, out=tmp_path/'one', progress=False)
    two = SAE(cfg); train_sae(two, rank_one_batches(d['a'], d['b'], 32, seed=5), steps=12, out=tmp_path/'two', ckpt_every=4, progress=False)
    two = SAE(cfg); train_sae(two, rank_one_batches(d['a'], d['b'], 32, seed=5), steps=24, out=tmp_path/'two', progress=False)
    for k, v in one.state_dict().items(): torch.testing.assert_close(two.state_dict()[k], v, rtol=1e-6, atol=1e-7)
    loaded = SAE.load(tmp_path/'two')
    torch.testing.assert_close(loaded.encode_factors(d['a'][:5], d['b'][:5]), one.encode_factors(d['a'][:5], d['b'][:5]))
    assert json.loads((tmp_path/'two'/'sae'/'cfg.json').read_text())['kind'] == kind
    assert len((tmp_path/'two'/'history.jsonl').read_text().splitlines()) >= 1


def test_factored_step_never_builds_d_in_rows():
    "No single allocation of a factored training step is anywhere near a (B, d_in) tensor."
    torch.manual_seed(0)
    B, d = 2048, 96                                       # a materialised batch would be 2048*9216*4 B = 72 MiB
    sae = SAE(SAEConfig(d, d, d_sae=32, kind='topk', k=4))
    a, b = torch.randn(B, d), torch.randn(8, d).repeat_interleave(B//8, 0)
    dead = torch.zeros(32, dtype=torch.bool); dead[::2] = True
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        o = training_forward(sae, (a, b), dead); o.loss.backward()
    biggest = max(e.cpu_memory_usage for e in prof.events())   # inclusive per op, so backward nodes count their temporaries
    params = d*d*32*4                                     # a gradient of W_enc / W_dec is one allocation of this size (1.1 MiB)
    assert biggest < 1.5*params and biggest < B*d*d*4/40


def test_bad_input():
    sae = SAE(SAEConfig(6, 5, d_sae=8))
    with pytest.raises(ValueError, match=r'a must be \(N, d_v=6\)'): sae.encode_factors(torch.randn(3, 5), torch.randn(5))
    with pytest.raises(ValueError, match=r'b must be \(d_t=5,\)'): sae.encode_factors(torch.randn(3, 6), torch.randn(6))
    with pytest.raises(ValueError, match='rows but b has'): sae.encode_factors(torch.randn(3, 6), torch.randn(4, 5))
    with pytest.raises(ValueError, match='d_in=30'): sae.encode(torch.randn(2, 31))
    with pytest.raises(ValueError, match='NaN'): sae.encode(torch.full((2, 30), float('nan')))
    with pytest.raises(ValueError, match='detached'): sae.encode_factors(torch.randn(3, 6, requires_grad=True), torch.randn(5))
    with pytest.raises(ValueError, match='a batch must be'): training_forward(sae, [torch.randn(3, 6)])
    with pytest.raises(ValueError, match="'kl' or 'topk'"): SAEConfig(2, 2, kind='jumprelu')
    with pytest.raises(ValueError, match='k_aux'): SAEConfig(2, 2, d_sae=4, k_aux=9)
    with pytest.raises(FileNotFoundError): SAE.load('/nonexistent/folder')
