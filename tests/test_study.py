"`mmpo study` as a user runs it: killed mid-way with SIGKILL, rerun, finished tasks skipped; results saved with provenance."
import json, os, signal, subprocess, sys, time
from pathlib import Path
import pytest

MMPO = [sys.executable, '-m', 'mmpo_nb.cli']
ENV = {**os.environ, 'OMP_NUM_THREADS': '1', 'MKL_NUM_THREADS': '1', 'TQDM_MININTERVAL': '1'}
# sft/val, sft/test, one tuning run per arm, two test seeds per arm (seed 0 reuses its tuning run)
N_TASKS = 2 + 2 * (1 + 2)


@pytest.fixture(scope='module')
def quick_demo(tmp_path_factory):
    "A `mmpo demo --quick` run with the stages the study's DPO arms need (data, SFT, own-output pairs)."
    d = tmp_path_factory.mktemp('demo')/'run'
    r = subprocess.run([*MMPO, 'demo', '--quick', '--out', str(d), '--stages', 'pairs', '--jobs', '1'],
                       capture_output=True, text=True, env=ENV, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return d


def _finished(out:Path)->dict:
    return {f: f.stat().st_mtime_ns for f in out.glob('**/stage.json')}


@pytest.mark.slow
def test_resume_after_sigkill(quick_demo, tmp_path):
    out, saved = tmp_path/'study', tmp_path/'saved'
    cmd = [*MMPO, 'study', '--demo', str(quick_demo), '--out', str(out), '--quick', '--arms', 'dpo,dpo_nll', '--no-sweep', '--jobs', '1']
    with open(tmp_path/'first.log', 'w') as log:
        p = subprocess.Popen(cmd, start_new_session=True, stdout=log, stderr=subprocess.STDOUT, env=ENV)
        deadline = time.time() + 600
        while not _finished(out):                             # kill the whole process group once the first task is done
            if p.poll() is not None: pytest.fail(f"study ended (rc {p.returncode}) before it could be killed:\n{(tmp_path/'first.log').read_text()[-3000:]}")
            if time.time() > deadline: os.killpg(p.pid, signal.SIGKILL); pytest.fail("no task finished in 600 s")
            time.sleep(0.1)
        os.killpg(p.pid, signal.SIGKILL); p.wait()
    assert p.returncode == -signal.SIGKILL
    before = _finished(out)
    assert 1 <= len(before) < N_TASKS and not (out/'results.json').exists()

    r = subprocess.run([*cmd, '--save-to', str(saved)], capture_output=True, text=True, env=ENV, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert f"{len(before)} of {N_TASKS} tasks done earlier, skipping them" in r.stdout, r.stdout[-3000:]
    after = _finished(out)
    assert len(after) == N_TASKS
    assert all(after[f] == t for f, t in before.items())      # finished tasks were not rerun
    res = json.loads((out/'results.json').read_text())
    assert set(res['table']) == {'sft', 'dpo', 'dpo_nll'} and res['table']['dpo']['seeds'] == 2
    assert [c['status'] for c in res['claims']][1:] == ['not tested'] * 4   # only claim 1 has its arms here
    prov = json.loads((saved/'results.json').read_text())['provenance']
    assert prov['command'].startswith('mmpo study --demo') and '--quick' in prov['command']
    assert (saved/'results.md').read_text().count('| dpo') == 2 and (saved/'curves.png').exists()


def test_cli_errors(tmp_path):
    r = subprocess.run([*MMPO, 'study', '--demo', str(tmp_path)], capture_output=True, text=True, env=ENV, timeout=300)
    assert r.returncode == 2 and 'not a demo run folder' in r.stderr, r.stderr
    (tmp_path/'config.json').write_text('{}')
    r = subprocess.run([*MMPO, 'study', '--demo', str(tmp_path), '--val-n', '0'], capture_output=True, text=True, env=ENV, timeout=300)
    assert r.returncode == 2 and 'val_n and test_n must be >= 1' in r.stderr, r.stderr
