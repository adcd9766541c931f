"Write/read/check round trips of the three dataset formats, and every bad-input error."
import json, os
from pathlib import Path
import numpy as np, pandas as pd, pyarrow as pa, pyarrow.parquet as pq, pytest, datasets
from mmpo_nb.core import DataError
from mmpo_nb.toyworld import ToyWorld, Scene
from mmpo_nb.data import (toy_preference_dataset, write_toy_dataset, check_dataset, read_dataset, read_rlaif_parquet,
                          read_mdpo_json, write_rlaif_parquet, write_mdpo_json, TRL_COLUMNS)

datasets.disable_progress_bars()

@pytest.fixture(scope='module')
def ds(): return toy_preference_dataset(6)

@pytest.fixture
def toy(tmp_path): return write_toy_dataset(12, tmp_path/'toy', progress=False)

def _listing(d): return sorted(p.name for p in Path(d).iterdir())

def _err(excinfo, row, column):
    e = excinfo.value; assert isinstance(e, DataError) and e.row == row and e.column == column and e.file is not None
    assert f"column {column!r}" in str(e) and (row is None or f"row {row}" in str(e))

def test_toy_round_trip(toy):
    s = check_dataset(toy, deep=True)
    assert (s.format, s.rows, s.images, s.neg_images) == ('mmpo-toy', 12, 12, 48) and 'OK' in str(s)
    back = read_dataset(toy); w = ToyWorld()
    assert back.column_names[:4] == list(TRL_COLUMNS)
    for i in (0, 7):
        assert Scene.from_json(back[i]['scene']) == w.scene(i)
        assert np.array_equal(np.asarray(back[i]['images'][0]), np.asarray(w.render(w.scene(i))))
        assert [Scene.from_json(x) for x in back[i]['neg_scenes']][1] == w.edit_scene(w.scene(i), 'color')

@pytest.mark.parametrize('fmt', ['rlaif', 'rlaif-embed', 'mdpo'])
def test_format_round_trip(ds, tmp_path, fmt):
    out = tmp_path/fmt
    if fmt == 'mdpo': write_mdpo_json(ds, out); back = read_mdpo_json(out); assert json.loads((out/'data.json').read_text())[0]['img_path']
    else: write_rlaif_parquet(ds, out, embed_images=fmt.endswith('embed')); back = read_rlaif_parquet(out)
    assert check_dataset(out).rows == len(ds)
    for c in ('prompt', 'chosen', 'rejected', 'chosen_labels', 'rejected_labels', 'neg_diffs', 'scene_id'): assert back[c] == ds[c]
    assert np.array_equal(np.asarray(back[2]['images'][0]), np.asarray(ds[2]['images'][0]))
    assert np.array_equal(np.asarray(back[2]['neg_images'][3]), np.asarray(ds[2]['neg_images'][3]))
    # a dataset read back can be written again in the other format
    other = tmp_path/(fmt + '-again'); (write_rlaif_parquet if fmt == 'mdpo' else write_mdpo_json)(back, other)
    assert check_dataset(other).rows == len(ds)

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

# ---- bad input: one DataError naming file, row and column ----

def test_missing_image_file(toy):
    os.remove(toy/'images'/'s0-000005.png')
    with pytest.raises(DataError) as e: check_dataset(toy)
    _err(e, 5, 'image'); assert 's0-000005.png' in str(e.value)
    with pytest.raises(DataError): read_dataset(toy)

def test_missing_negative_image_file(toy):
    os.remove(toy/'images'/'s0-000002~context0.png')
    with pytest.raises(DataError) as e: check_dataset(toy)
    _err(e, 2, 'neg_image_paths')

def test_missing_column(toy, tmp_path):
    t = pq.read_table(toy/'data.parquet'); pq.write_table(t.drop(['chosen']), toy/'data.parquet')
    with pytest.raises(DataError) as e: check_dataset(toy)
    _err(e, None, 'chosen')
    (tmp_path/'x.json').write_text(json.dumps([{'img_path': 'a.png', 'prompt': 'p', 'chosen': 'c', 'rejected': 'r'}, {'img_path': 'a.png', 'prompt': 'p', 'chosen': 'c'}]))
    with pytest.raises(DataError) as e: read_mdpo_json(tmp_path/'x.json')
    assert e.value.column in ('rejected', 'img_path')

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

def test_failed_toy_write_leaves_nothing(tmp_path):
    class Broken(ToyWorld):
        def render(self, scene):
            if scene.index == 4: raise RuntimeError('renderer crashed')
            return super().render(scene)
    with pytest.raises(RuntimeError, match='renderer crashed'): write_toy_dataset(8, tmp_path/'out', world=Broken(), progress=False)
    assert _listing(tmp_path) == []

@pytest.mark.parametrize('writer', [write_rlaif_parquet, write_mdpo_json])
def test_failed_format_write_leaves_nothing(ds, tmp_path, writer):
    bad = ds.map(lambda r, i: {'chosen': '' if i == 4 else r['chosen']}, with_indices=True)
    with pytest.raises(DataError) as e: writer(bad, tmp_path/'out')
    _err(e, 4, 'chosen'); assert _listing(tmp_path) == []
    with pytest.raises(DataError) as e: writer(ds.remove_columns(['rejected']), tmp_path/'out')
    _err(e, None, 'rejected'); assert _listing(tmp_path) == []

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
