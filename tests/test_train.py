"""Integration tests for `mmpo_nb.train` that a notebook cannot hold: resume after a real SIGKILL, the `mmpo train` CLI,
HF model families (LLaVA-1.5 and Qwen2-VL configs, multi-image rows), full fine-tuning with gradient checkpointing,
and a non-finite loss.

Every model is a tiny random one built from configs and saved to a temporary folder; nothing is downloaded.
"""
import os, signal, subprocess, sys, time, textwrap
from pathlib import Path
import pytest
import torch
import datasets
from PIL import Image
from safetensors.torch import load_file
from typer.testing import CliRunner
from mmpo_nb.cli import app
from mmpo_nb.data import write_toy_dataset
from mmpo_nb.loop import read_log, list_checkpoints
from mmpo_nb.toyworld import ToyWorld
from mmpo_nb.sft import world_texts
from mmpo_nb.vlm import build_toy_tokenizer, build_tiny_llava, save_vlm
from mmpo_nb.train import PreferenceConfig, train_preference

ROOT = Path(__file__).resolve().parents[1]
torch.set_num_threads(1)


@pytest.fixture(scope='module')
def toy(tmp_path_factory):
    "A tiny random LLaVA that knows the toy world's words, and 6 toy rows with 2 negative images each."
    d = tmp_path_factory.mktemp('toy')
    tok = build_toy_tokenizer(world_texts(ToyWorld(), 40))
    m, p = build_tiny_llava(tok, image_size=32, patch_size=8, vision_width=32, vision_layers=1, vision_heads=2, vision_mlp=64,
                            text_width=48, text_layers=2, text_heads=2, text_mlp=96)
    model = save_vlm(m, p, d/'model')
    data = write_toy_dataset(6, d/'data', n_neg=2, image_size=48, progress=False)
    return model, data


RUN = textwrap.dedent('''
    import sys, torch
    from mmpo_nb.train import PreferenceConfig, train_preference
    cfg = PreferenceConfig(method='mdpo', steps=10, batch_size=2, lr=5e-3, lora_r=4, lora_alpha=8, lora_dropout=0.2,
                           save_every=2, keep=2, threads=1, progress=False, prefetch=True)
    train_preference(cfg, sys.argv[1], sys.argv[2], sys.argv[3])
''')


def _run(script, *args, **kw):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS='1', MKL_NUM_THREADS='1')
    return subprocess.Popen([sys.executable, str(script), *map(str, args)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kw)


@pytest.mark.slow
def test_resume_after_sigkill(toy, tmp_path):
    """kill -9 in the middle of an mDPO run (LoRA dropout, a fresh crop every step, each batch built ahead in a background
    thread), resume: the same adapter as an uninterrupted run. (While the crop was drawn under torch's global RNG, inside
    `fork_rng`, the thread could swap that RNG under the main thread's dropout: CI saw this test fail once.)"""
    model, data = toy
    script = tmp_path/'run.py'; script.write_text(RUN)
    full = _run(script, data, model, tmp_path/'full')
    out, _ = full.communicate(timeout=600)
    assert full.returncode == 0, out.decode()[-3000:]

    run = tmp_path/'killed'
    p = _run(script, data, model, run)
    t0 = time.time()
    while not list_checkpoints(run):
        assert p.poll() is None, p.stdout.read().decode()[-3000:]
        assert time.time() - t0 < 600
        time.sleep(0.01)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert p.returncode == -signal.SIGKILL
    assert not (run/'final').exists(), "the run finished before it was killed: the test would prove nothing"
    killed_at = int(list_checkpoints(run)[-1].name.split('-')[1])
    assert killed_at < 10

    again = _run(script, data, model, run)
    out, _ = again.communicate(timeout=600)
    assert again.returncode == 0, out.decode()[-3000:]
    a, b = load_file(tmp_path/'full'/'final'/'adapter_model.safetensors'), load_file(run/'final'/'adapter_model.safetensors')
    assert a.keys() == b.keys() and len(a) > 0
    for k in a: assert torch.equal(a[k], b[k]), k
    assert [r['step'] for r in read_log(run) if 'loss/total' in r] == list(range(1, 11))
    assert [r['loss/total'] for r in read_log(run)] == [r['loss/total'] for r in read_log(tmp_path/'full')]


@pytest.mark.slow
def test_cli_train_dpo(toy, tmp_path):
    "mmpo train dpo --data --model --out --config: trains, logs, writes the adapter; a missing column exits 2 naming it."
    model, data = toy
    cfg = tmp_path/'dpo.yaml'
    cfg.write_text('steps: 3\nbatch_size: 2\nlr: 0.005\nlora_r: 4\nlora_alpha: 8\nprogress: false\n')
    r = CliRunner().invoke(app, ['train', 'dpo', '--data', str(data), '--model', str(model), '--out', str(tmp_path/'run'),
                                 '--config', str(cfg), '--precompute-ref'])
    assert r.exit_code == 0, r.output
    assert '"step": 3' in r.output and '"rewards/margins"' in r.output
    assert (tmp_path/'run'/'final'/'adapter_model.safetensors').exists() and (tmp_path/'run'/'config.json').exists()
    assert (Path(data)/'ref_logps-dpo.safetensors').exists()           # the cache sits beside the dataset
    assert len(read_log(tmp_path/'run')) == 3
    r = CliRunner().invoke(app, ['train', 'aspo', '--data', str(data), '--model', str(model), '--out', str(tmp_path/'aspo')])
    assert r.exit_code == 2 and 'sent_weights' in r.output, r.output


def _img(color, w=56, h=56): return Image.new('RGB', (w, h), color)


def _rows():
    "Single- and multi-image rows with K = 2 and K = 1 negatives of other sizes (Qwen: other token counts)."
    red, blue, green = _img((255, 0, 0)), _img((0, 0, 255), 84, 56), _img((0, 255, 0), 56, 84)
    return datasets.Dataset.from_dict({
        'images': [[red], [blue], [red, blue], [green, red]],
        'prompt': ["Is there a red circle?", "Is there a blue square?", "Image1: <image> Image2: <image> Is there a blue square?",
                   "Is there a red square?"],
        'chosen': ["Yes. Image1 is red.", "Yes.", "Image2 is a blue square.", "No. Image2 is red."],
        'rejected': ["No.", "No. Image1 is red.", "Image1 is a blue square.", "Yes."],
        'neg_images': [[blue, green], [red], [green], [blue, red]],
    })


@pytest.mark.slow
@pytest.mark.parametrize('family', ['llava15', 'qwen2', 'qwen25'])
def test_hf_families(family, tmp_path):
    "LLaVA-1.5, Qwen2-VL and Qwen2.5-VL test configs: dpo and miadpo (multi-image rows) and misp (K differs by row) train a few steps."
    sys.path.insert(0, str(ROOT/'tests'))
    from test_vlm import _llava15, _qwen
    m, p = _llava15() if family == 'llava15' else _qwen('2' if family == 'qwen2' else '2.5')
    model = save_vlm(m, p, tmp_path/'model')
    ds = _rows()
    for method, rows in (('miadpo', ds), ('misp', ds.select([0, 1, 1, 0]))):
        cfg = PreferenceConfig(method=method, steps=3, batch_size=2, lr=1e-2, lora_r=4, lora_alpha=8, threads=1, progress=False)
        res = train_preference(cfg, rows, model, tmp_path/method)
        lines = read_log(tmp_path/method)
        assert len(lines) == 3 and all(torch.isfinite(torch.tensor(r['loss/total'])) for r in lines), (family, method, lines)
        w = load_file(tmp_path/method/'final'/'adapter_model.safetensors')
        assert any(k.endswith('lora_B.weight') and w[k].abs().sum() > 0 for k in w), "LoRA B never moved"
        assert res['step'] == 3


@pytest.mark.slow
@pytest.mark.parametrize('precompute', [True, False])
def test_full_ft_gradient_checkpointing(toy, tmp_path, precompute):
    "Full fine-tuning with gradient checkpointing, reference cached or a frozen copy: the LM changes, the vision tower does not."
    model, data = toy
    cfg = PreferenceConfig(method='dpo', steps=2, batch_size=2, lr=1e-3, full_ft=True, gradient_checkpointing=True, precompute_ref=precompute,
                           ref_cache=str(tmp_path/'ref.safetensors'), threads=1, progress=False)
    train_preference(cfg, data, model, tmp_path/'run')
    before, after = load_file(Path(model)/'model.safetensors'), load_file(tmp_path/'run'/'final'/'model.safetensors')
    lm = [k for k in before if 'language_model' in k and k.endswith('q_proj.weight')]
    vt = [k for k in before if 'vision_tower' in k]
    assert lm and any(not torch.equal(before[k], after[k]) for k in lm)
    assert all(torch.equal(before[k], after[k]) for k in vt)


def test_nonfinite_loss_names_step_and_rows(toy, tmp_path):
    "A model whose LM head holds a NaN stops at step 1, naming the dataset rows of the batch."
    model, data = toy
    w = load_file(Path(model)/'model.safetensors')
    bad = tmp_path/'bad'
    import shutil
    shutil.copytree(model, bad)
    k = next(k for k in w if k.endswith('embed_tokens.weight'))
    w[k][:, 0] = float('nan')
    from safetensors.torch import save_file
    save_file(w, str(bad/'model.safetensors'), metadata={'format': 'pt'})
    cfg = PreferenceConfig(method='dpo', steps=2, batch_size=2, threads=1, progress=False)
    with pytest.raises(FloatingPointError, match=r'step 1, dataset rows \[\d, \d\]'):
        train_preference(cfg, data, bad, tmp_path/'run')
