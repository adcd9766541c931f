"""`select_for_dataset` on a toy dataset of N rows (default 10,000): rows/s, CPU seconds and peak RSS, per strategy.

    python benchmarks/bench_select.py [--rows 10000] [--strategies misp,random] [--baseline REV --baseline-rows 500] [--work DIR]
    python benchmarks/bench_select.py --demo RUN [--strategies misp,sampled]     # a finished demo run's data, CLIP and SAE

What it measures is the `select` stage as `mmpo demo` runs it: the SAE stage (`train_sae_for_dataset`) has already embedded the
gallery with CLIP and left `embeddings.safetensors` in its run folder, so selection reads the table (through `mmpo_nb.data`),
retrieves each row's pool, scores it with the SAE, picks K and writes a new dataset. CLIP embedding (a few ms per image, once per
dataset) is not part of it: here the cached embeddings are random unit vectors written under the right cache key, and the CLIP
and SAE are untrained (the cost does not depend on the weights).

The N rows reuse the images of 200 rendered toy rows under distinct scene ids (rendering 5 x 10,000 images would take minutes),
so the gallery really has 5 N distinct entries. `--baseline REV` runs `mmpo_nb/selection.py` as of git revision REV side by side
on `--baseline-rows` rows (the old code held a (B, G, d) tensor, so 10,000 rows would not fit in memory) and prints the ratio.
Each measurement runs in a fresh process, so peak RSS (VmHWM) is the stage's own.

`--demo RUN` measures on a finished `mmpo demo` run instead (its training table, trained CLIP and SAE, and the gallery embeddings
its SAE stage cached). The run is only read: its SAE folder and embedding cache are copied into `--work` first, so nothing is ever
written into RUN.
"""
import argparse, json, os, subprocess, sys, tempfile, textwrap, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def make_dataset(n:int, folder:Path, base:int=200):
    "A toy dataset of n rows whose images are those of `base` rendered rows (distinct ids, shared files)."
    import pyarrow as pa, pyarrow.parquet as pq
    from mmpo_nb.data import write_toy_dataset
    src = folder.parent/f'toy-{base}'
    if not src.exists(): write_toy_dataset(base, src, progress=False)
    if (folder/'data.parquet').exists(): return folder
    rows = pq.read_table(src/'data.parquet').to_pylist()
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder/'images').exists(): os.symlink(src/'images', folder/'images')
    out = []
    for i in range(n):
        r = dict(rows[i % base]); tag = f'#{i // base}'
        r['scene_id'] = r['scene_id'] + tag
        r['neg_image_ids'] = [x + tag for x in r['neg_image_ids']]
        out.append(r)
    pq.write_table(pa.Table.from_pylist(out), folder/'data.parquet')
    meta = json.loads((src/'meta.json').read_text()); meta['rows'] = n
    (folder/'meta.json').write_text(json.dumps(meta))
    return folder


def make_models(work:Path, data:Path):
    "A random-init tiny CLIP, a random SAE, and cached random embeddings under the key `select_for_dataset` looks for."
    import torch, torch.nn.functional as F
    from safetensors.torch import save_file
    from mmpo_nb.clip import load_clip, save_clip
    from mmpo_nb.sae import SAE, SAEConfig
    from mmpo_nb.data import read_dataset
    from mmpo_nb.selection import _gallery, _stamp
    clip_dir, run = work/'clip', work/f'sae-{data.name}'
    if not clip_dir.exists(): save_clip(load_clip('mmpo-tiny', device='cpu').model, 'mmpo-tiny', clip_dir)
    if (run/'embeddings.json').exists(): return clip_dir, run
    ds = read_dataset(data)
    rows = ds.data.select([c for c in ('images', 'prompt', 'scene_id', 'neg_images', 'neg_image_ids') if c in ds.column_names]).to_pylist()
    ids, *_ = _gallery(rows, data)
    d = load_clip('mmpo-tiny', clip_dir, device='cpu').model.visual.output_dim
    SAE(SAEConfig(d, d, d_sae=128, kind='topk', k=8)).save(run/'sae')
    g = torch.Generator().manual_seed(0)
    save_file({'gallery': F.normalize(torch.randn(len(ids), d, generator=g), dim=1), 'txt': F.normalize(torch.randn(len(rows), d, generator=g), dim=1)},
              str(run/'embeddings.safetensors'))
    key = {'data': _stamp(data), 'clip': _stamp(clip_dir), 'clip_name': 'mmpo-tiny', 'gallery': len(ids), 'rows': len(rows)}
    (run/'embeddings.json').write_text(json.dumps(key))
    return clip_dir, run


CHILD = textwrap.dedent('''
    import json, resource, sys, time, importlib.util, torch
    torch.set_num_threads(1)
    rev, data, clip, sae, out, strategy = sys.argv[1:7]
    if rev == 'HEAD':
        from mmpo_nb.selection import select_for_dataset
    else:
        import mmpo_nb
        spec = importlib.util.spec_from_file_location('mmpo_nb._selection_baseline', sys.argv[7])
        m = importlib.util.module_from_spec(spec); m.__package__ = 'mmpo_nb'; sys.modules[spec.name] = m; spec.loader.exec_module(m)
        select_for_dataset = m.select_for_dataset
    import datasets, pyarrow.parquet, open_clip                    # imports are not the stage's cost
    t, r0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    select_for_dataset(data, clip, sae, k=3, pool_size=16, strategy=strategy, out=out, overwrite=True, device='cpu', progress=False)
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    hwm = next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM'))
    print(json.dumps({'wall_s': time.perf_counter() - t, 'cpu_s': r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime, 'peak_rss_gb': hwm / 2**20}))
''')


def run(rev, data, clip, sae, out, strategy, old_file=None):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS='1', MKL_NUM_THREADS='1')
    p = subprocess.run([sys.executable, '-c', CHILD, rev, str(data), str(clip), str(sae), str(out), strategy, str(old_file or '')],
                       capture_output=True, text=True, env=env)
    if p.returncode: raise SystemExit(p.stderr[-3000:])
    return json.loads(p.stdout.strip().splitlines()[-1])


def demo_inputs(run:Path, work:Path):
    "(table folder, CLIP checkpoint, SAE folder) of a finished demo run; the SAE folder and its embedding cache copied into `work`."
    import shutil
    sae_run, st = work/f'sae-{run.name}', lambda s: json.loads((run/s/'stage.json').read_text())
    if not sae_run.exists():
        shutil.copytree(Path(st('sae')['sae/folder']), sae_run/'sae')
        for f in ('embeddings.json', 'embeddings.safetensors'): shutil.copy2(run/'sae'/f, sae_run/f)
    return Path(st('data')['data/train']), Path(st('clip')['clip/checkpoint']), sae_run


def bench(label, rev, n, work, old_file=None, strategies=('misp', 'random'), inputs=None):
    if inputs is None:
        data = make_dataset(n, work/f'toy-{n}')
        clip, sae_run = make_models(work, data)
    else: data, clip, sae_run = inputs
    res = {}
    for strategy in strategies:
        r = run(rev, data, clip, sae_run/'sae', work/f'out-{label}-{n}-{strategy}', strategy, old_file)
        res[strategy] = r
        print(f"{label:9s} {n:6d} rows {strategy:7s}: {r['wall_s']:7.1f} s wall, {r['cpu_s']:7.1f} s CPU, {n / r['wall_s']:8.0f} rows/s, "
              f"peak RSS {r['peak_rss_gb']:.2f} GB", flush=True)
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--rows', type=int, default=10_000)
    ap.add_argument('--baseline', default=None, help='git revision of mmpo_nb/selection.py to compare against (e.g. 49a82e6)')
    ap.add_argument('--baseline-rows', type=int, default=500)
    ap.add_argument('--strategies', default='misp,random', help='comma-separated strategies to time (misp, random, nearest, sampled)')
    ap.add_argument('--demo', type=Path, default=None, help='a finished demo run to measure on (read only) instead of synthetic rows')
    ap.add_argument('--work', type=Path, default=Path(tempfile.gettempdir())/'mmpo-bench-select')
    a = ap.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    strategies = tuple(a.strategies.split(','))
    if a.demo is not None:
        inputs = demo_inputs(a.demo, a.work)
        n = json.loads((a.demo/'data'/'stage.json').read_text())['data/rows']
        print(f"select_for_dataset on {a.demo} ({n} rows), K=3, M=16, CPU, 1 thread (load average {os.getloadavg()[0]:.1f})")
        bench('demo', 'HEAD', n, a.work, strategies=strategies, inputs=inputs)
        return
    print(f"select_for_dataset, K=3, M=16, gallery = 5 x rows, CPU, 1 thread (load average {os.getloadavg()[0]:.1f})")
    bench('current', 'HEAD', a.rows, a.work, strategies=strategies)
    if a.baseline:
        old = a.work/f'selection_{a.baseline}.py'
        old.write_text(subprocess.run(['git', '-C', str(ROOT), 'show', f'{a.baseline}:mmpo_nb/selection.py'], capture_output=True, text=True, check=True).stdout)
        new = bench('current', 'HEAD', a.baseline_rows, a.work)
        base = bench(a.baseline, a.baseline, a.baseline_rows, a.work, old)
        for s in new:
            print(f"{s}: baseline / current at {a.baseline_rows} rows: wall x{base[s]['wall_s'] / new[s]['wall_s']:.1f}, "
                  f"CPU x{base[s]['cpu_s'] / new[s]['cpu_s']:.1f}, peak RSS x{base[s]['peak_rss_gb'] / new[s]['peak_rss_gb']:.1f}")


if __name__ == '__main__':
    main()
