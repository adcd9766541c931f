"""Wall time and memory of `mmpo demo`, stage by stage: the demo's time (<= 15 min on 2 cores) and memory (< 2 GB) targets.

    python benchmarks/bench_demo.py --quick            # every stage at toy sizes, in a fresh temporary folder
    python benchmarks/bench_demo.py --out runs/demo    # the full demo (resumes a folder that has finished stages)
    python benchmarks/bench_demo.py --report runs/demo # only print the numbers of a finished run

Prints, for each stage, its wall time, its CPU time (one thread: CPU < wall means the stage waited for a core) and
its process's peak RSS; then the whole run's wall time and the peak proportional set size (PSS) of the demo's process
tree, sampled every second. Stages run in forked processes that share the parent's imports, so PSS (a page shared by
n processes counts 1/n in each) is the memory the run really holds; the sum of the stages' RSS would count the shared
imports once per process. A resumed run only times the stages it ran.
"""
import argparse, json, tempfile, time
from pathlib import Path

def report(summary:dict, wall:float|None=None)->str:
    "The per-stage table and the run's totals, from a demo's `summary.json`."
    lines = [f"{'stage':<14}{'wall s':>9}{'CPU s':>9}{'peak RSS MB':>13}"]
    for name, m in summary.items():
        if name == 'demo': continue
        cpu = m.get(f'{name}/cpu_seconds')
        lines.append(f"{name:<14}{m.get(f'{name}/seconds', 0):>9.1f}{'' if cpu is None else f'{cpu:.1f}':>9}{m.get(f'{name}/peak_rss_mb', 0):>13.0f}")
    d = summary['demo']; wall = d['demo/seconds'] if wall is None else wall
    cpu = [m[f'{n}/cpu_seconds'] for n, m in summary.items() if f'{n}/cpu_seconds' in m]
    lines += [f"stage CPU total: {sum(cpu):.0f} s in {d['demo/jobs']} jobs" if cpu else "stage CPU: not recorded by this run",
              f"whole demo: {wall:.0f} s wall (target <= 900 s on 2 cores)",
              f"peak PSS of the process tree: {d['demo/peak_pss_mb']:.0f} MB (target < 2048 MB); "
              f"largest stage peak RSS {d['demo/max_stage_peak_rss_mb']:.0f} MB"]
    return '\n'.join(lines)

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--quick', action='store_true', help='toy sizes (DemoConfig.quick)')
    ap.add_argument('--out', default=None, help='run folder (default: a new temporary folder)')
    ap.add_argument('--jobs', type=int, default=2)
    ap.add_argument('--report', default=None, help="print the numbers of the finished run in this folder; run nothing")
    a = ap.parse_args()
    if a.report:
        print(report(json.loads((Path(a.report)/'summary.json').read_text()))); return
    from mmpo_nb.demo import DemoConfig, run_demo
    out = a.out or tempfile.mkdtemp(prefix='bench-demo-')
    cfg = DemoConfig.quick(out) if a.quick else DemoConfig(out=out)
    t0 = time.time()
    s = run_demo(cfg, jobs=a.jobs, log=lambda m: None)
    print(report(s, time.time() - t0))
    print(f"summary: {Path(out)/'summary.json'}")

if __name__ == '__main__': main()
