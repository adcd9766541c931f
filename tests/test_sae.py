"""What nbs/05_sae and nbs/05b_saetrain cannot show: the factored paths against the materialised reference over random shapes
(hypothesis), and a memory measurement of one factored training step. Worked examples, bad input, the float64 accumulation and the
exact resume are checked in the notebooks."""
import pytest, torch
from hypothesis import given, settings, strategies as st
from mmpo_nb.sae import SAE, SAEConfig, vec_outer, training_forward


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
