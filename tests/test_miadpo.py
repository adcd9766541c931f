"""MIA-DPO data beyond the notebook: multi-image rows through the Qwen2-VL test configuration, geometric properties of
the augmentations (hypothesis), and `mmpo data miadpo` (input checked before any work, atomic output, seeded runs)."""
import json
import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from PIL import Image
from typer.testing import CliRunner
from mmpo_nb.toyworld import ToyWorld
from mmpo_nb.data import write_toy_dataset
from mmpo_nb.vlm import build_toy_tokenizer, build_tiny_llava, save_vlm, encode_batch, image_attention, image_attention_ratio
from mmpo_nb.sft import world_texts
from mmpo_nb import miadpo as M
from mmpo_nb.cli import app
from test_vlm import _qwen   # tiny random Qwen2-VL built from a config (tests/test_vlm.py)

torch.set_num_threads(1)
WORLD = ToyWorld()
IMS = [WORLD.render(s) for s in WORLD.scenes(9)]
Q = "Is there a cup in the image?"


@pytest.fixture(scope='module')
def qwen(): return _qwen('2')


def test_qwen_sequence_row(qwen):
    "A sequence row is several images in one prompt for Qwen2-VL; the target share equals vlm's ratio."
    model, proc = qwen
    a = M.sequence_augment(IMS[0], Q, IMS[1:], n=3, position=2)
    b = encode_batch(proc, [a.images], [a.prompt], responses=["Yes."])
    assert b['image_grid_thw'].shape == (3, 3)
    counts = b['image_token_counts'][0]
    assert len(counts) == 3 and int((b['input_ids'] == model.config.image_token_id).sum()) == sum(counts)
    maps = M.image_token_attention(model, b, [1])[1][0]
    assert [m.numel() for m in maps] == counts                      # one (h, w) map per image, Qwen's merged grid
    share = M.target_share([maps], [a])
    torch.testing.assert_close(share, image_attention_ratio(image_attention(model, b, layer=1), [2]), rtol=1e-4, atol=1e-5)


def test_qwen_collage_region(qwen):
    "A non-square collage keeps its aspect in Qwen's processor; the target region's share is a proper fraction."
    model, proc = qwen
    a = M.grid_collage(IMS[0], "What color is the cup?", IMS[1:], layout='2x3', position=4, square=False)
    b = encode_batch(proc, [a.images], [a.prompt], responses=["Red."])
    (m,), = M.image_token_attention(model, b, [0])[0]
    assert m.shape[1] > m.shape[0]                                   # wider than tall, like the collage
    s = float(M.target_share([[m]], [a])[0])
    assert 0 < s < 1


@settings(max_examples=40, deadline=None)
@given(box=st.tuples(*[st.floats(0, 1)] * 4), h=st.integers(1, 8), w=st.integers(1, 8))
def test_region_weights_area(box, h, w):
    "Summed patch fractions are the box's area in patches, and each lies in [0, 1]."
    x0, x1 = sorted(box[::2]); y0, y1 = sorted(box[1::2])
    r = M.region_weights((x0, y0, x1, y1), (h, w))
    assert r.shape == (h, w) and float(r.min()) >= 0 and float(r.max()) <= 1 + 1e-6
    assert abs(float(r.sum()) - (x1 - x0) * (y1 - y0) * h * w) < 1e-4


@settings(max_examples=25, deadline=None)
@given(layout=st.sampled_from(list(M.GRID_LAYOUTS)), pos=st.integers(0, 8), square=st.booleans())
def test_grid_target_in_box(layout, pos, square):
    "The target's pixels are exactly inside `target_box`, whatever the layout, cell and padding."
    R, C = M.GRID_LAYOUTS[layout]; pos %= R * C
    a = M.grid_collage(IMS[0], Q, IMS[1:], layout=layout, position=pos, cell=40, square=square)
    im = a.images[0]; x0, y0, x1, y1 = a.target_box
    crop = np.asarray(im.crop((round(x0 * im.width), round(y0 * im.height), round(x1 * im.width), round(y1 * im.height))))
    assert crop.shape[:2] == (40, 40)
    assert np.array_equal(crop, np.asarray(IMS[0].resize((40, 40), Image.BICUBIC)))
    assert (im.width == im.height) == (square or R == C)


@pytest.fixture(scope='module')
def toy(tmp_path_factory):
    "A 6-row toy QA dataset and a tiny random LLaVA saved as a model folder."
    d = tmp_path_factory.mktemp('miadpo')
    write_toy_dataset(6, d/'data', task='qa', n_neg=0, progress=False)
    model, proc = build_tiny_llava(build_toy_tokenizer(world_texts(WORLD, 20)), image_size=48, patch_size=16, vision_width=32,
                                   vision_layers=1, vision_mlp=64, text_width=32, text_layers=2, text_mlp=64)
    save_vlm(model, proc, d/'model')
    return d


def _run(*args):
    return CliRunner().invoke(app, ['data', 'miadpo', *map(str, args)])


def _files(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob('*')) if p.is_file()}


def test_cli_seeded_and_checkable(toy, tmp_path):
    "Two runs give identical files; the rows hold several images, a target index and the model's answers."
    args = ['--in', toy/'data', '--model', toy/'model', '--thresholds', '{"2": 1.01, "9": 1.01}', '--ppl-quantile', '1']
    r1, r2 = _run(*args, '--out', tmp_path/'a'), _run(*args, '--out', tmp_path/'b')
    assert r1.exit_code == 0 and r2.exit_code == 0, r1.output
    assert 'miadpo score' in r1.output                               # the progress bar
    assert _files(tmp_path/'a') == _files(tmp_path/'b')
    from mmpo_nb.data import read_dataset, check_dataset
    rows = read_dataset(tmp_path/'a')
    rep = json.loads((tmp_path/'a'/'report.json').read_text())
    assert rep['samples'] == 6 and rep['pairs'] == len(rows) > 0      # threshold above 1: every answer not equal to the truth
    assert check_dataset(tmp_path/'a').format == 'trl'
    for r in rows:
        seq = r['augmentation'] == 'sequence'
        assert len(r['images']) == (r['n_images'] if seq else 1) and 0 <= r['target_index'] < len(r['images'])
        assert r['rejected'] != r['chosen'] and r['prompt'].count('<image>') == (len(r['images']) if seq else 0)
        assert (r['target_cell'] is not None) == (r['augmentation'] == 'grid')


def test_cli_checks_input_first(toy, tmp_path, monkeypatch):
    "A missing column or image is named before the model is loaded."
    import shutil, pyarrow.parquet as pq
    import mmpo_nb.vlm
    monkeypatch.setattr(mmpo_nb.vlm, 'load_vlm', lambda *a, **k: pytest.fail("model loaded before the input was checked"))
    bad = tmp_path/'bad'; shutil.copytree(toy/'data', bad)
    (bad/'images'/f"{WORLD.scene_id(2)}.png").unlink()
    r = _run('--in', bad, '--model', toy/'model', '--out', tmp_path/'o')
    assert r.exit_code == 2 and 'image file not found' in r.output and 'row 2' in r.output, r.output
    t = pq.read_table(toy/'data'/'data.parquet').drop(['chosen'])
    nocol = tmp_path/'nocol'; shutil.copytree(toy/'data', nocol); pq.write_table(t, nocol/'data.parquet')
    r = _run('--in', nocol, '--model', toy/'model', '--out', tmp_path/'o')
    assert r.exit_code == 2 and "column 'chosen'" in r.output, r.output
    assert not (tmp_path/'o').exists()


def test_cli_atomic(toy, tmp_path, monkeypatch):
    "An interrupted run leaves no output folder behind; an existing folder is refused."
    def boom(*a, **k): raise KeyboardInterrupt
    monkeypatch.setattr(M, 'pair_rows', boom)
    r = _run('--in', toy/'data', '--model', toy/'model', '--out', tmp_path/'o')
    assert r.exit_code != 0 and not (tmp_path/'o').exists()
    assert not list(tmp_path.glob('.o.*'))                           # nor its temporary folder
    (tmp_path/'o').mkdir()
    r = _run('--in', toy/'data', '--model', toy/'model', '--out', tmp_path/'o')
    assert r.exit_code == 2 and 'already exists' in r.output
