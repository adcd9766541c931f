"""Benchmarks for `mmpo_nb.sae` (issue 8), ratios measured side by side in one run.

1. Scoring N=4096 MISP candidates of one query with d_v=d_t=512 (d_in=262,144), d_sae=128:
   naive (materialise vec(a b^T) in chunks, encode, decode) vs factored (encode on factors, Gram-form error in float64).
   Checks identical top-K picks and scores equal to 1e-4 relative.
2. Peak memory of one SAE training step (forward + backward + Adam) on a batch of rank-one inputs, factored vs materialised (CPU).
   Each mode runs in a fresh subprocess; after a warm-up step the kernel's peak-RSS counter is reset (/proc/self/clear_refs)
   and the extra peak of the measured step over the resident set before it (params + Adam state) is reported.

usage: python benchmarks/bench_sae.py [--n 4096] [--d 512] [--batch 256] [--prompts 16] [--skip-score] [--skip-mem]
"""
import argparse, json, os, subprocess, sys, time
import torch
from mmpo_nb.sae import SAE, SAEConfig, vec_outer, training_forward, group_by_prompt


def misp_score(err, z):
    "s_i = recon_err_i / max_j recon_err_j + ||z_i||_1 / max_j ||z_j||_1 (issue 8 / MISP-DPO); local helper, selection owns the real one."
    err, l1 = err.double(), z.double().abs().sum(1)
    return err/err.max() + l1/l1.max()


def make_sae(d, d_sae, seed=0):
    torch.manual_seed(seed)
    sae = SAE(SAEConfig(d, d, d_sae=d_sae, kind='kl', seed=seed))
    with torch.no_grad():                      # a non-trivial, not-yet-trained SAE: scaled encoder, non-zero biases
        sae.W_enc.mul_(20.0); sae.b_enc.normal_(std=0.5); sae.b_dec.normal_(std=1/d)
    return sae


def query(n, d, seed=1):
    g = torch.Generator().manual_seed(seed)
    nrm = lambda t: t/t.norm(dim=-1, keepdim=True)
    h_pos, h_neg, h_txt = nrm(torch.randn(d, generator=g)), nrm(torch.randn(n, d, generator=g)), nrm(torch.randn(d, generator=g))
    return h_pos - h_neg, h_txt


@torch.no_grad()
def naive_scores(sae, a, b, chunk=128):
    errs, zs = [], []
    for i in range(0, len(a), chunk):
        x = vec_outer(a[i:i+chunk], b)                                  # (chunk, d_in) materialised
        z = sae.encode(x); errs.append(((x - sae.decode(z))**2).sum(1)); zs.append(z)
    return torch.cat(errs), torch.cat(zs)


@torch.no_grad()
def factored_scores(sae, a, b):
    z = sae.encode_factors(a, b)
    return sae.recon_error_factors(a, b, z), z


def bench_score(n, d, d_sae, top=16):
    sae = make_sae(d, d_sae); a, b = query(n, d)
    t0 = time.perf_counter(); e_n, z_n = naive_scores(sae, a, b); t_naive = time.perf_counter() - t0
    t0 = time.perf_counter(); sae.scoring_cache(); t_gram = time.perf_counter() - t0          # once per trained SAE (float64 W_dec + Gram), cached
    ts = []
    for _ in range(3):
        t0 = time.perf_counter(); e_f, z_f = factored_scores(sae, a, b); ts.append(time.perf_counter() - t0)
    t_fact = min(ts)
    s_n, s_f = misp_score(e_n, z_n), misp_score(e_f, z_f)
    rel = float(((s_f - s_n).abs()/s_n.abs()).max())
    same_top = torch.equal(s_n.topk(top).indices, s_f.topk(top).indices)
    print(f"[score] N={n} d_v=d_t={d} d_in={d*d} d_sae={d_sae}")
    print(f"  naive materialised : {t_naive:8.3f} s")
    print(f"  factored per query : {t_fact:8.4f} s   (scoring cache: float64 W_dec + Gram, once per SAE: {t_gram:.3f} s)")
    print(f"  speed-up           : {t_naive/t_fact:8.1f}x per query;  {t_naive/(t_fact + t_gram):.1f}x counting the one-off cache")
    print(f"  top-{top} picks identical: {same_top};  max relative score diff {rel:.2e};  "
          f"max rel code diff {float(((z_f - z_n).abs().max()/z_n.abs().max())):.1e};  recon err range [{float(e_n.min()):.3g}, {float(e_n.max()):.3g}]")
    return dict(t_naive=t_naive, t_fact=t_fact, t_gram=t_gram, speedup=t_naive/t_fact, speedup_with_gram=t_naive/(t_fact+t_gram),
                same_top=same_top, max_rel=rel)


def _status(key):
    for line in open('/proc/self/status'):
        if line.startswith(key): return int(line.split()[1])*1024
    return 0


def mem_child(mode, d, d_sae, batch, prompts):
    "Runs in a subprocess: one warm-up step, reset the peak counter, one measured step; prints JSON."
    torch.set_num_threads(2)
    sae = make_sae(d, d_sae)
    opt = torch.optim.Adam(sae.parameters(), lr=1e-4, fused=True)  # as train_sae
    g = torch.Generator().manual_seed(0)
    a = torch.randn(batch, d, generator=g)/d**0.5
    b = torch.randn(prompts, d, generator=g).repeat_interleave(batch//prompts, 0)
    dead = torch.zeros(d_sae, dtype=torch.bool); dead[::2] = True          # AuxK active on half the latents
    def step():
        inp = (a, b) if mode == 'factored' else vec_outer(a, b)              # the materialised step pays for x too
        o = training_forward(sae, inp, dead)
        opt.zero_grad(set_to_none=True); o.loss.backward()
        sae.remove_gradient_parallel_to_decoder_directions(); opt.step(); sae.set_decoder_norm_to_unit_norm()
        return float(o.loss)
    step()
    rss0 = _status('VmRSS:')
    with open('/proc/self/clear_refs', 'w') as f: f.write('5')               # reset VmHWM to the current RSS
    t0 = time.perf_counter(); loss = step(); dt = time.perf_counter() - t0
    print(json.dumps(dict(mode=mode, rss_before=rss0, peak=_status('VmHWM:'), extra=_status('VmHWM:') - rss0, seconds=dt, loss=loss)))


def bench_mem(d, d_sae, batch, prompts):
    res = {}
    for mode in ('factored', 'materialised'):
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_='65536', MALLOC_TRIM_THRESHOLD_='0')  # freed blocks go back to the OS
        r = subprocess.run([sys.executable, __file__, '--child', mode, '--d', str(d), '--d-sae', str(d_sae), '--batch', str(batch),
                            '--prompts', str(prompts)], capture_output=True, text=True, env=env)
        if r.returncode: raise RuntimeError(r.stderr)
        res[mode] = json.loads(r.stdout.strip().splitlines()[-1])
    f, m = res['factored'], res['materialised']
    MB = 2**20
    print(f"[train step] B={batch} ({prompts} prompts x {batch//prompts} candidates) d_in={d*d} d_sae={d_sae}, Adam, AuxK on")
    print(f"  resident before the measured step (params + Adam state + gradients of the warm-up step): factored {f['rss_before']/MB:.0f} MiB, materialised {m['rss_before']/MB:.0f} MiB")
    print(f"  extra peak of the step : factored {f['extra']/MB:8.1f} MiB ({f['seconds']:.2f} s)   materialised {m['extra']/MB:8.1f} MiB ({m['seconds']:.2f} s)")
    print(f"  ratio factored/materialised: extra peak {f['extra']/m['extra']:.3f}x;  total peak {f['peak']/m['peak']:.3f}x;  "
          f"(the materialised batch alone is {batch*d*d*4/MB:.0f} MiB; gradients of W_enc+W_dec are {2*d*d*d_sae*4/MB:.0f} MiB in both)")
    print(f"  losses agree: {f['loss']:.6f} vs {m['loss']:.6f}")
    return dict(extra_ratio=f['extra']/m['extra'], peak_ratio=f['peak']/m['peak'], factored=f, materialised=m)


if __name__ == '__main__':
    p = argparse.ArgumentParser()
    p.add_argument('--n', type=int, default=4096); p.add_argument('--d', type=int, default=512); p.add_argument('--d-sae', type=int, default=128)
    p.add_argument('--batch', type=int, default=256); p.add_argument('--prompts', type=int, default=16)
    p.add_argument('--skip-score', action='store_true'); p.add_argument('--skip-mem', action='store_true')
    p.add_argument('--child', default=None)
    args = p.parse_args()
    if args.child: mem_child(args.child, args.d, args.d_sae, args.batch, args.prompts); sys.exit()
    torch.set_num_threads(2)
    if not args.skip_score: bench_score(args.n, args.d, args.d_sae)
    if not args.skip_mem: bench_mem(args.d, args.d_sae, args.batch, args.prompts)
