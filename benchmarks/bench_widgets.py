"""Benchmarks for `mmpo_nb.widgets` / `mmpo_nb.viz` (issue 14).

1. Latent browser: `LatentBrowser(sae, store)` with 128 latents over 10,000 difference pairs. Times the precompute
   (encode all pairs, frequencies, top pairs, histograms, AUROC, thumbnails) and every update a user triggers by
   choosing a latent in the dropdown (each of the 128 once, then again) or typing its id. Target: each update under ~100 ms.
2. Negative-diversity map: 2-D embedding of 10,000 pool points (625 queries x 16 candidates, SAE codes) with t-SNE
   (openTSNE, else scikit-learn) and UMAP (umap-learn; its numba JIT warm-up is timed separately). Target: < ~30 s.

Wall and CPU seconds are both printed, with the load average: on a CPU shared with other jobs the wall time grows,
the CPU time of this process does not.

Data: with `--run DIR` (a `mmpo demo` folder that finished its clip and sae stages) the trained CLIP and SAE and the
demo's training set; without it, a toy dataset written here, the untrained tiny CLIP and a 128-latent SAE trained
for 100 steps (real pairs either way, never random tensors).

usage: python benchmarks/bench_widgets.py [--run /work/demo_run] [--pairs 10000] [--skip-browser] [--skip-map] [--methods tsne,umap]
"""
import argparse, json, os, statistics, sys, tempfile, time
from pathlib import Path
import torch


def clock(fn, *a, **k):
    w, c = time.perf_counter(), time.process_time()
    out = fn(*a, **k)
    return out, time.perf_counter() - w, time.process_time() - c


def data(args, tmp):
    "(sae, store): a demo run's trained CLIP + SAE, or toy data with the untrained CLIP and a briefly trained SAE."
    from mmpo_nb.sae import SAE, SAEConfig
    from mmpo_nb.viz import pair_store
    if args.run:
        run = Path(args.run)
        clip = json.loads((run/'clip'/'stage.json').read_text())['clip/checkpoint']
        sae = SAE.load(json.loads((run/'sae'/'stage.json').read_text())['sae/folder'])
        return sae, pair_store(json.loads((run/'data'/'stage.json').read_text())['data/train'], clip, pool_size=16, max_pairs=args.pairs)
    from mmpo_nb.clip import load_clip, save_clip
    from mmpo_nb.data import write_toy_dataset
    from mmpo_nb.selection import train_sae_for_dataset
    rows = -(-args.pairs // 20)                     # 4 listed edits + 16 CLIP-nearest per row
    toy = write_toy_dataset(rows, tmp/'toy', progress=False)
    save_clip(load_clip('mmpo-tiny', device='cpu').model, 'mmpo-tiny', tmp/'clip')
    run = train_sae_for_dataset(toy, tmp/'clip', tmp/'sae', steps=100, pool_size=16, progress=False, device='cpu',
                                sae_cfg=SAEConfig(d_v=64, d_t=64, d_sae=128, kind='topk', k=8))
    return SAE.load(run/'sae'), pair_store(toy, tmp/'clip', pool_size=16, max_pairs=args.pairs)


def bench_browser(sae, store, tmp):
    from mmpo_nb.widgets import LatentBrowser
    lb, w, c = clock(LatentBrowser, sae, store, top=6, export_dir=tmp)
    print(f"latent browser: {sae.cfg.d_sae} latents x {len(store)} pairs; precompute {w:.1f} s wall / {c:.1f} s CPU")
    ks = lb.summ.order
    cold, warm, cpu = [], [], []
    for k in ks:                                    # every latent once, through the dropdown, as a user does
        _, w, c = clock(setattr, lb.latent, 'value', k); cold.append(w); cpu.append(c)
        assert lb.current == k
    for k in ks:
        _, w, c = clock(setattr, lb.latent, 'value', k); warm.append(w); cpu.append(c)
    _, w_id, _ = clock(setattr, lb.latent_id, 'value', ks[len(ks) // 2])
    _, w_exp, _ = clock(lb.export.click)
    q = lambda xs: f"median {1e3*statistics.median(xs):.0f} ms, p90 {1e3*sorted(xs)[int(0.9*len(xs))]:.0f} ms, max {1e3*max(xs):.0f} ms"
    print(f"  update, first pass over all latents: {q(cold)}")
    print(f"  update, second pass:                 {q(warm)}")
    print(f"  update CPU time:                     {q(cpu)}")
    print(f"  update by typing an id: {1e3*w_id:.0f} ms;  Export PNG (full figure, 100 dpi): {1e3*w_exp:.0f} ms")
    return dict(cold_median_ms=1e3*statistics.median(cold), warm_median_ms=1e3*statistics.median(warm))


def bench_map(sae, store, methods, pairs):
    from mmpo_nb.viz import negative_map_data, embed_2d
    B = min(len(store.own), pairs // 16)
    nm, w, c = clock(negative_map_data, sae, store.gallery[store.own[:B]], store.txt[:B], store.gallery, exclude=store.own[:B], k=3, pool_size=16)
    print(f"negative map: {len(nm)} pool points ({B} queries x 16); MISP + random selection {w:.1f} s wall / {c:.1f} s CPU")
    X = nm.features['sae codes']
    for m in methods:
        if m == 'umap':                             # numba compiles UMAP's kernels on first use; time that apart
            _, w, c = clock(embed_2d, X[:300], 'umap', 15)
            print(f"  umap warm-up (JIT, 300 points): {w:.1f} s wall / {c:.1f} s CPU")
        _, w, c = clock(embed_2d, X, m, 30 if m == 'tsne' else 15)
        print(f"  {m}: {len(X)} points in {w:.1f} s wall / {c:.1f} s CPU")


if __name__ == '__main__':
    ap = argparse.ArgumentParser()
    ap.add_argument('--run', default=None); ap.add_argument('--pairs', type=int, default=10_000)
    ap.add_argument('--skip-browser', action='store_true'); ap.add_argument('--skip-map', action='store_true')
    ap.add_argument('--methods', default='tsne,umap')
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    tmp = Path(tempfile.mkdtemp())
    (sae, store), w, c = clock(data, args, tmp)
    print(f"data: {len(store)} pairs, d_sae={sae.cfg.d_sae}, from {'run ' + args.run if args.run else 'toy data + untrained CLIP'} ({w:.0f} s wall)")
    if not args.skip_browser: bench_browser(sae, store, tmp)
    if not args.skip_map: bench_map(sae, store, args.methods.split(','), args.pairs)
    print(f"load average {os.getloadavg()[0]:.1f}")
