"""Wall time and memory of `mmpo demo`, stage by stage: the demo's time (<= 15 min on 2 cores) and memory (< 2 GB) targets.

    python benchmarks/bench_demo.py --quick            # every stage at toy sizes, in a fresh temporary folder
    python benchmarks/bench_demo.py --out runs/demo    # the full demo (resumes a folder that has finished stages)

Prints each stage's wall time and its process's peak RSS, the whole run's wall time, and the peak proportional set size
(PSS) of the demo's process tree sampled every second: with two stages in forked processes sharing their imports, PSS
counts shared pages once and is the memory the run really holds.
"""
import argparse, json, tempfile, time
from mmpo_nb.demo import DemoConfig, run_demo

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--quick', action='store_true', help='toy sizes (DemoConfig.quick)')
    ap.add_argument('--out', default=None, help='run folder (default: a new temporary folder)')
    ap.add_argument('--jobs', type=int, default=2)
    a = ap.parse_args()
    out = a.out or tempfile.mkdtemp(prefix='bench-demo-')
    cfg = DemoConfig.quick(out) if a.quick else DemoConfig(out=out)
    t0 = time.time()
    s = run_demo(cfg, jobs=a.jobs, log=lambda m: None)
    print(f"{'stage':<14}{'seconds':>9}{'peak RSS MB':>13}")
    for name, m in s.items():
        if name != 'demo': print(f"{name:<14}{m.get(f'{name}/seconds', 0):>9.1f}{m.get(f'{name}/peak_rss_mb', 0):>13.0f}")
    d = s['demo']
    print(json.dumps(d))
    print(f"whole demo: {time.time() - t0:.0f} s wall (target <= 900 s on 2 cores); peak PSS of the process tree "
          f"{d['demo/peak_pss_mb']:.0f} MB (target < 2048 MB): {d['demo/peak_pss_mb'] / 2048:.2f}x the memory target")

if __name__ == '__main__': main()
