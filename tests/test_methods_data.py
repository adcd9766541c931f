"`mmpo data mdpo|aspo|misp` through the CLI: inputs validated before any work, atomic writes, seeded (identical files)."
import hashlib, json, os, subprocess, sys
from pathlib import Path
import pytest
from typer.testing import CliRunner
from mmpo_nb.cli import app
from mmpo_nb.data import check_dataset, read_dataset

pytestmark = pytest.mark.slow
runner = CliRunner()

@pytest.fixture(scope='module')
def run(tmp_path_factory):
    "A quick demo run (toy data, tiny CLIP, tiny SFT model, SAE, MISP selection) on 8 rows: only the stages these tests read."
    import torch
    from mmpo_nb.demo import DemoConfig, run_demo
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp('demo')/'run'
    cfg = DemoConfig.quick(out=out); cfg.n_train, cfg.n_eval = 8, 4
    run_demo(cfg, stages=['sft', 'select'])      # + data, clip, sae; no pairs, method data, preference runs or report
    return out

def _cmd(method, run, out, *extra):
    base = {'mdpo': ['--model', run/'sft'/'final', '--n-samples', '2'],
            'aspo': ['--model', run/'sft'/'final'],
            'misp': ['--model', run/'sft'/'final', '--selection', run/'select'/'misp', '--n-samples', '2']}[method]
    return ['data', method, '--in', str(run/'data'/'train'), '--out', str(out), *map(str, base), *extra]

def _digest(folder:Path)->dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob('*')) if p.is_file()}

@pytest.mark.parametrize('method', ['mdpo', 'aspo', 'misp'])
def test_seeded_and_checked(run, tmp_path, method):
    "Two runs with the same seed write byte-identical folders that pass `mmpo data check`, with the method's columns."
    a, b = tmp_path/'a', tmp_path/'b'
    r = runner.invoke(app, _cmd(method, run, a))
    assert r.exit_code == 0 and 'OK' in r.output, r.output
    # the second run in a fresh interpreter with another hash seed: no dependence on set order or process state
    env = os.environ | {'PYTHONHASHSEED': '12345', 'OMP_NUM_THREADS': '1'}
    p = subprocess.run([sys.executable, '-m', 'mmpo_nb.cli', *_cmd(method, run, b)], capture_output=True, text=True, env=env)
    assert p.returncode == 0 and 'OK' in p.stdout, p.stdout + p.stderr
    assert _digest(a) == _digest(b)
    assert json.loads((a/'meta.json').read_text())['method'] == method
    ds = read_dataset(a)
    want = {'mdpo': {'corrupt_seed', 'chosen_labels', 'rejected_labels'}, 'aspo': {'sent_weights', 'sent_clip_sims', 'sent_ppls'},
            'misp': {'neg_images', 'rejected_texts', 'rejected_texts_labels'}}[method]
    assert want <= set(ds.column_names), ds.column_names
    assert check_dataset(a).rows == len(ds) > 0

def test_seed_changes_output(run, tmp_path):
    "A different seed gives different corrupt seeds (the seed is really used)."
    for s in (0, 1): assert runner.invoke(app, _cmd('mdpo', run, tmp_path/f's{s}', '--pairs', 'input', '--seed', str(s))).exit_code == 0
    assert read_dataset(tmp_path/'s0')['corrupt_seed'] != read_dataset(tmp_path/'s1')['corrupt_seed']

def _bad_copy(run, tmp_path, drop_column=None, drop_image=False)->Path:
    "A copy of the demo's training data without a column or with one image file missing."
    import shutil, pyarrow.parquet as pq
    d = tmp_path/'bad'; shutil.copytree(run/'data'/'train', d)
    if drop_column: pq.write_table(pq.read_table(d/'data.parquet').drop_columns([drop_column]), d/'data.parquet')
    if drop_image: sorted((d/'images').glob('s*-000003.png'))[0].unlink()
    return d

@pytest.mark.parametrize('method', ['mdpo', 'aspo', 'misp'])
def test_validates_before_work(run, tmp_path, method, monkeypatch):
    "A missing column or image is named, exit 2, and no model is loaded and nothing written."
    import mmpo_nb.vlm
    loaded = []
    monkeypatch.setattr(mmpo_nb.vlm, 'load_vlm', lambda *a, **k: loaded.append(a) or (_ for _ in ()).throw(AssertionError('model loaded')))
    for kw, needle in ((dict(drop_image=True), 's0-000003.png'), (dict(drop_column='chosen'), "column 'chosen'")):
        bad = _bad_copy(run, tmp_path/str(len(loaded)) / needle[:3], **kw)
        args = _cmd(method, run, tmp_path/'out'); args[args.index('--in') + 1] = str(bad)
        r = runner.invoke(app, args)
        assert r.exit_code == 2, r.output
        assert needle in r.output, r.output
        assert not (tmp_path/'out').exists()
    assert loaded == []

def test_scene_column_required_for_own_pairs(run, tmp_path):
    bad = _bad_copy(run, tmp_path, drop_column='scene')
    r = runner.invoke(app, ['data', 'mdpo', '--in', str(bad), '--model', str(run/'sft'/'final'), '--out', str(tmp_path/'o')])
    assert r.exit_code == 2 and "column 'scene'" in r.output, r.output

def test_misp_selection_validated(run, tmp_path):
    "The selection output is read first: a plain dataset (no selected negatives) is refused by name."
    args = _cmd('misp', run, tmp_path/'o'); args[args.index('--selection') + 1] = str(run/'data'/'train')
    r = runner.invoke(app, args)
    assert r.exit_code == 2 and 'selected_neg_ids' in r.output, r.output

def test_atomic_write(run, tmp_path, monkeypatch):
    "A run that fails while writing leaves neither the output folder nor a temporary folder behind; an existing folder is kept."
    import mmpo_nb.data
    def boom(*a, **k): raise ValueError('disk full (simulated)')
    monkeypatch.setattr(mmpo_nb.data, 'write_rlaif_parquet', boom)
    r = runner.invoke(app, _cmd('aspo', run, tmp_path/'o'))
    assert r.exit_code == 2 and 'disk full' in r.output, r.output
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    (tmp_path/'o').mkdir(); (tmp_path/'o'/'keep.txt').write_text('x')
    r = runner.invoke(app, _cmd('mdpo', run, tmp_path/'o', '--pairs', 'input'))
    assert r.exit_code == 2 and 'already exists' in r.output
    assert (tmp_path/'o'/'keep.txt').read_text() == 'x'

def test_sampled_selection_trains_misp_importance_sampled(run, tmp_path, monkeypatch):
    """`mmpo select --strategy sampled` -> `mmpo data misp` -> `mmpo train misp`: the log q_phi that selection writes reaches the
    trainer, which (misp_image='auto') then uses the importance-sampled image loss at every step, with finite losses.
    nbs/05a checks the draws themselves (log q at the drawn positions, seeded rows, unbiasedness); this checks the chain of commands."""
    import math, pyarrow.parquet as pq
    import mmpo_nb.train
    from mmpo_nb.loop import read_log
    clip = json.loads((run/'clip'/'stage.json').read_text())['clip/checkpoint']
    sel, misp, out = tmp_path/'sampled', tmp_path/'misp', tmp_path/'run'
    r = runner.invoke(app, ['select', '--data', str(run/'data'/'train'), '--clip', clip, '--sae', str(run/'sae'/'sae'),
                            '--strategy', 'sampled', '--k', '3', '--pool-size', '8', '--seed', '3', '--out', str(sel)])
    assert r.exit_code == 0, r.output
    drawn = pq.read_table(sel/'data.parquet', columns=['scene_id', 'selected_neg_log_q']).to_pydict()
    lq = dict(zip(drawn['scene_id'], drawn['selected_neg_log_q']))
    r = runner.invoke(app, ['data', 'misp', '--in', str(run/'data'/'train'), '--selection', str(sel), '--out', str(misp)])
    assert r.exit_code == 0 and 'OK' in r.output, r.output
    assert json.loads((misp/'meta.json').read_text())['has_log_q'] is True
    rows = read_dataset(misp)
    assert [lq[s] for s in rows['scene_id']] == rows['log_q']                  # the draws' log q, row by row
    calls = {'sampled': 0, 'exact': 0}
    def spy(name, f):
        def g(*a, **k): calls[name] += 1; return f(*a, **k)
        return g
    monkeypatch.setattr(mmpo_nb.train, 'sampled_pl_image_loss', spy('sampled', mmpo_nb.train.sampled_pl_image_loss))
    monkeypatch.setattr(mmpo_nb.train, 'pl_image_loss', spy('exact', mmpo_nb.train.pl_image_loss))
    r = runner.invoke(app, ['train', 'misp', '--data', str(misp), '--model', str(run/'sft'/'final'), '--out', str(out), '--steps', '3',
                            '--batch-size', '2', '--eval-scenes', '0', '--save-every', '0'])
    assert r.exit_code == 0, r.output
    assert calls['sampled'] >= 3 and calls['exact'] == 0, calls
    log = [h for h in read_log(out) if 'loss/total' in h]
    assert len(log) == 3 and all(math.isfinite(h['loss/total']) and math.isfinite(h['loss/image']) for h in log), log
