"What the notebook cannot check: cross-format round trips, files written by others, bad input on disk, kill -9, the CLI, properties."
import json, os, signal, subprocess, sys, time
from pathlib import Path
import numpy as np, pandas as pd, pyarrow as pa, pyarrow.parquet as pq, pytest, datasets
from mmpo_nb.core import DataError
from mmpo_nb.toyworld import ToyWorld, Scene
from hypothesis import given, settings, strategies as st
from mmpo_nb.data import (toy_preference_dataset, write_toy_dataset, check_dataset, read_dataset, read_rlaif_parquet,
                          read_mdpo_json, write_rlaif_parquet, write_mdpo_json, write_trl_parquet, unwrap_prompt)
from mmpo_nb.core import IMAGE_PLACEHOLDER
from mmpo_nb.text import split_sentences

datasets.disable_progress_bars()

@pytest.fixture(scope='module')
def ds():
    "Toy rows plus every method column (`METHOD_COLUMNS`), one image each so that every format can hold them."
    d = toy_preference_dataset(6)
    return d.map(lambda r, i: dict(log_q=[-1.386] * len(r['neg_images']), rejected_texts=[r['rejected'], 'There is a kite.'], target_index=0,
                                   corrupt_seed=i, sent_weights=[0.25 * (k + 1) for k in range(len(split_sentences(r['chosen'])))]), with_indices=True)

@pytest.fixture
def toy(tmp_path): return write_toy_dataset(12, tmp_path/'toy', progress=False)

def _listing(d): return sorted(p.name for p in Path(d).iterdir())

def _err(excinfo, row, column):
    e = excinfo.value; assert isinstance(e, DataError) and e.row == row and e.column == column and e.file is not None
    assert f"column {column!r}" in str(e) and (row is None or f"row {row}" in str(e))

def test_plain_external_files(tmp_path):
    "Files written by someone else: only the four columns, absolute and relative paths, an image root."
    (tmp_path/'imgs').mkdir(); ToyWorld().render(ToyWorld().scene(0)).save(tmp_path/'imgs'/'a.png')
    recs = [{'img_path': 'a.png', 'prompt': 'Describe.', 'chosen': 'A cup.', 'rejected': 'A fork.'},
            {'img_path': str(tmp_path/'imgs'/'a.png'), 'prompt': 'Q?', 'chosen': 'Yes.', 'rejected': 'No.'}]
    (tmp_path/'m.json').write_text(json.dumps(recs))
    ds = read_mdpo_json(tmp_path/'m.json', image_root=tmp_path/'imgs'); assert len(ds) == 2 and ds[1]['images'][0].size == (64, 64)
    pq.write_table(pa.Table.from_pylist([{'image': 'imgs/a.png', 'question': 'Q?', 'chosen': 'Yes.', 'rejected': 'No.', 'ds_name': 'x'}]), tmp_path/'r.parquet')
    ds = read_rlaif_parquet(tmp_path/'r.parquet'); assert ds[0]['ds_name'] == 'x'
    assert check_dataset(tmp_path/'r.parquet').format == 'rlaif-v'

@pytest.mark.parametrize('fmt', ['rlaif', 'rlaif-embed', 'mdpo', 'trl'])
def test_read_back_writes_in_every_other_format(ds, tmp_path, fmt):
    "A dataset read back from one format writes to the others unchanged (the notebook checks each format's own round trip)."
    writers = {'rlaif': write_rlaif_parquet, 'rlaif-embed': lambda x, o: write_rlaif_parquet(x, o, embed_images=True),
               'mdpo': write_mdpo_json, 'trl': write_trl_parquet}
    back = read_dataset(writers[fmt](ds, tmp_path/fmt))
    for other, wr in writers.items():
        if other == fmt: continue
        again = read_dataset(wr(back, tmp_path/f'{fmt}-{other}'))
        for c in ('prompt', 'chosen', 'rejected', 'chosen_labels', 'rejected_labels', 'neg_diffs', 'scene_id',
                  'log_q', 'rejected_texts', 'sent_weights', 'target_index', 'corrupt_seed'): assert again[c] == ds[c], (other, c)
        assert check_dataset(tmp_path/f'{fmt}-{other}').method_columns == ['neg_images', 'log_q', 'rejected_texts', 'sent_weights', 'target_index', 'corrupt_seed']
        assert np.array_equal(np.asarray(again[2]['neg_images'][3]), np.asarray(ds[2]['neg_images'][3]))

# ---- bad input: one DataError naming file, row and column ----

def test_missing_image_file(toy):
    os.remove(toy/'images'/'s0-000005.png')
    with pytest.raises(DataError) as e: check_dataset(toy)
    _err(e, 5, 'image'); assert 's0-000005.png' in str(e.value)
    with pytest.raises(DataError): read_dataset(toy)

def test_missing_field_in_one_json_record(tmp_path):
    ToyWorld().render(ToyWorld().scene(0)).save(tmp_path/'a.png')
    (tmp_path/'x.json').write_text(json.dumps([{'img_path': 'a.png', 'prompt': 'p', 'chosen': 'c', 'rejected': 'r'}, {'img_path': 'a.png', 'prompt': 'p', 'chosen': 'c'}]))
    with pytest.raises(DataError) as e: read_mdpo_json(tmp_path/'x.json')
    _err(e, 1, 'rejected')

@pytest.mark.parametrize('column,value', [('chosen', ''), ('rejected', '   '), ('rejected', None), ('question', '')])
def test_empty_answer(toy, column, value):
    df = pq.read_table(toy/'data.parquet').to_pandas(); df[column] = df[column].astype(object); df.at[3, column] = value
    pq.write_table(pa.Table.from_pandas(df), toy/'data.parquet')
    with pytest.raises(DataError) as e: check_dataset(toy)
    _err(e, 3, column)

def test_labels_must_match_sentences(toy):
    df = pq.read_table(toy/'data.parquet').to_pandas(); df['chosen_labels'] = df['chosen_labels'].astype(object); df.at[1, 'chosen_labels'] = ['ok']
    pq.write_table(pa.Table.from_pandas(df), toy/'data.parquet')
    with pytest.raises(DataError) as e: check_dataset(toy)
    _err(e, 1, 'chosen_labels')

def test_not_a_dataset(tmp_path):
    with pytest.raises(DataError, match='dataset not found'): check_dataset(tmp_path/'nope')
    (tmp_path/'e').mkdir()
    with pytest.raises(DataError, match='expected data.parquet'): check_dataset(tmp_path/'e')
    (tmp_path/'bad.json').write_text('{not json')
    with pytest.raises(DataError, match='not valid JSON'): check_dataset(tmp_path/'bad.json')

# ---- writers leave nothing behind on failure ----

def test_existing_folder_is_not_overwritten(toy):
    before = _listing(toy/'images')
    with pytest.raises(FileExistsError): write_toy_dataset(3, toy, progress=False)
    assert _listing(toy/'images') == before and check_dataset(toy).rows == 12
    write_toy_dataset(3, toy, overwrite=True, progress=False); assert check_dataset(toy).rows == 3

def test_many_negatives(tmp_path):
    p = write_toy_dataset(5, tmp_path/'t', n_neg=8, progress=False)
    s = check_dataset(p); assert s.neg_images == 40
    back = read_dataset(p)
    for r in back:
        assert len(set(r['neg_image_ids'])) == 8 and all(len(d) == 1 for d in r['neg_diffs'])
        assert r['neg_factors'] == ['object', 'color', 'context', 'position', 'size', 'object', 'color', 'context']
    with pytest.raises(ValueError, match='n_neg'): write_toy_dataset(2, tmp_path/'u', n_neg=17, progress=False)
    assert not (tmp_path/'u').exists()

# ---- a writer killed with SIGKILL, and the command line ----

def _mmpo(*args, **kw):
    return subprocess.Popen([sys.executable, '-c', 'from mmpo_nb.cli import app; app()', *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)

@pytest.mark.slow
def test_kill_9_leaves_a_temp_folder_that_the_next_run_removes(tmp_path):
    out = tmp_path/'toy'
    p = _mmpo('data', 'toy', '--n', '100000', '--out', str(out))
    try:
        deadline = time.time() + 120
        while time.time() < deadline:           # wait until the writer is half-way: its temp folder holds images
            tmps = list(tmp_path.glob('.toy.*'))
            if tmps and (tmps[0]/'images').is_dir() and len(os.listdir(tmps[0]/'images')) > 20: break
            assert p.poll() is None, p.communicate()
            time.sleep(0.2)
        else: pytest.fail('the writer never started')
        os.kill(p.pid, signal.SIGKILL); p.wait()
    finally:
        if p.poll() is None: p.kill(); p.wait()
    assert p.returncode == -signal.SIGKILL
    stale = list(tmp_path.glob('.toy.*')); assert len(stale) == 1 and not out.exists()   # kill -9 runs no cleanup
    r = _mmpo('data', 'toy', '--n', '3', '--out', str(out)); _, err = r.communicate(timeout=300)
    assert r.returncode == 0, err
    assert _listing(tmp_path) == ['toy'] and check_dataset(out).rows == 3          # the stale temp folder is gone

def test_cli_existing_folder_names_the_flag(toy):
    r = _mmpo('data', 'toy', '--n', '2', '--out', str(toy)); _, err = r.communicate(timeout=300)
    assert r.returncode == 2 and err.count('\n') == 1 and err.startswith('error: ') and '--overwrite' in err, err

# ---- properties ----

SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, detailed, "
          "and polite answers to the user's questions. ")
questions = st.text(st.characters(blacklist_categories=('Cs',)), min_size=1, max_size=60).filter(
    lambda q: q.strip() and 'USER:' not in q and 'ASSISTANT:' not in q)

@settings(max_examples=200, deadline=None)
@given(q=questions, system=st.sampled_from(['', SYSTEM]), n_img=st.integers(0, 3))
def test_unwrap_recovers_the_question(q, system, n_img):
    places = '\n'.join([IMAGE_PLACEHOLDER] * n_img)
    plain = (places + '\n' + q if n_img else q).strip()
    assert unwrap_prompt(f"{system}USER: {plain} ASSISTANT:") == (plain, 'llava-v1')
    assert unwrap_prompt(plain) == (plain, None)                                 # a plain prompt is never touched
