"`benchmarks/bench_demo.py --quick`: the quick demo records the peak memory of its whole process tree and each stage's time."
import json, os, re, subprocess, sys
from pathlib import Path
import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]

def test_bench_quick_records_tree_memory(tmp_path):
    "The benchmark runs the quick demo in two forked jobs and prints every stage and the tree's peak PSS, which summary.json keeps."
    env = os.environ | {'OMP_NUM_THREADS': '1', 'MKL_NUM_THREADS': '1'}
    p = subprocess.run([sys.executable, str(ROOT/'benchmarks'/'bench_demo.py'), '--quick', '--out', str(tmp_path/'run')],
                       capture_output=True, text=True, env=env, cwd=ROOT)
    assert p.returncode == 0, p.stderr[-3000:]
    s = json.loads((tmp_path/'run'/'summary.json').read_text())
    stages = [n for n in s if n != 'demo']
    assert all(f'{n}/cpu_seconds' in s[n] and f'{n}/peak_rss_mb' in s[n] for n in stages)
    d = s['demo']
    assert d['demo/jobs'] == 2
    # the tree holds at least the parent's imports (torch alone is > 200 MB), and the quick demo stays far below the 2 GB target
    assert 200 < d['demo/peak_pss_mb'] < 2048, d
    for n in stages: assert re.search(rf'^{n}\s+\d', p.stdout, re.M), f'no line for stage {n}:\n{p.stdout}'
    m = re.search(r'peak PSS of the process tree: (\d+) MB', p.stdout)
    assert m and int(m[1]) == round(d['demo/peak_pss_mb']), p.stdout
    again = subprocess.run([sys.executable, str(ROOT/'benchmarks'/'bench_demo.py'), '--report', str(tmp_path/'run')],
                           capture_output=True, text=True, env=env, cwd=ROOT)
    assert again.returncode == 0 and m[0] in again.stdout, again.stderr
