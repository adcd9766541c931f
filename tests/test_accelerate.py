"""`accelerate launch` of the preference trainer on 2 CPU processes (gloo) against 1 process with the same global batch.

2 ranks x 2 accumulated micro-batches of 1 row and 1 process x 4 accumulated micro-batches of 1 row see the same rows per
step (`loop.fit` hands micro-batch (s*A + a)*P + r to rank r), so the loss curves must agree and both ranks must end with
the same weights. The 2-rank run precomputes the reference (each rank scores half the rows, the ranks gather them, rank 0
writes the cache) and the 1-process run uses the live reference (adapter disabled), so agreeing losses also check the
gathered cache row by row. Both evaluate on 2 held-out scenes at the end: every rank must run the evaluation (ZeRO-3 / FSDP
need every rank in every forward) and the logged numbers must be the 1-process ones. The driver wraps
`mmpo_nb.train.fit` to write each rank's trainable weights and evaluation next to the run.
"""
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
CPU_GLOO = ROOT/'configs'/'accelerate'/'cpu_gloo.yaml'

DRIVER = textwrap.dedent('''
    import json, sys, torch
    from pathlib import Path
    from safetensors.torch import save_file
    import mmpo_nb.train as T

    fit = T.fit
    def fit_and_dump(*a, **k):
        "Run the real fit, recording each evaluation of this rank; then write this rank's trainable weights."
        out, ev = Path(k['out']), k['eval_fn']
        def eval_fn(model, step):
            res = ev(model, step)
            (out/f'eval-rank{res_rank[0]}.json').write_text(json.dumps(res))
            return res
        res_rank = [k['accelerator'].process_index]
        res = fit(*a, **(k | {'eval_fn': eval_fn}))
        sd = {n: p.detach().contiguous() for n, p in res.model.named_parameters() if p.requires_grad}
        save_file(sd, str(out/f'rank{res_rank[0]}.safetensors'))
        return res
    T.fit = fit_and_dump

    from mmpo_nb.cli import app                                 # the real command, as `mmpo train dpo` runs it
    data, model, out, accum, config, ref = sys.argv[1:7]
    app(['train', 'dpo', '--data', data, '--model', model, '--out', out, '--config', config, '--grad-accum', accum,
         '--precompute-ref' if ref == 'pre' else '--live-ref'], standalone_mode=False)
''')


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    "A tiny LLaVA and 8 toy preference rows."
    from mmpo_nb.data import write_toy_dataset
    from mmpo_nb.sft import world_texts
    from mmpo_nb.toyworld import ToyWorld
    from mmpo_nb.vlm import build_tiny_llava, build_toy_tokenizer, save_vlm
    d = tmp_path_factory.mktemp('acc')
    tok = build_toy_tokenizer(world_texts(ToyWorld(seed=0), 20))
    model, proc = build_tiny_llava(tok, image_size=32, patch_size=16, vision_width=32, vision_layers=1, vision_mlp=64,
                                   text_width=32, text_layers=1, text_mlp=64)
    save_vlm(model, proc, d/'model')
    write_toy_dataset(8, d/'data', image_size=32, n_neg=1, progress=False)
    (d/'driver.py').write_text(DRIVER)
    (d/'dpo.yaml').write_text('steps: 2\nbatch_size: 1\nlr: 0.01\nlora_r: 4\nlora_alpha: 8\nprogress: false\nseed: 0\n'
                              f'eval_scenes: 2\neval_batch_size: 64\nref_cache: {d/"ref.safetensors"}\n')
    return d


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


def _lines(run): return [json.loads(x) for x in (run/'log.jsonl').read_text().splitlines()]


@pytest.mark.slow
def test_two_gloo_ranks_match_one_process(tiny):
    env = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1', TOKENIZERS_PARALLELISM='false', ACCELERATE_USE_CPU='1',
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get('PYTHONPATH', '')]))
    run = lambda out, accum, ref: [str(tiny/'driver.py'), str(tiny/'data'), str(tiny/'model'), str(tiny/out), accum,
                                   str(tiny/'dpo.yaml'), ref]
    two = subprocess.Popen([sys.executable, '-m', 'accelerate.commands.launch', '--config_file', str(CPU_GLOO),
                            '--main_process_port', str(_free_port()), *run('two', '2', 'pre')],
                           env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    one = subprocess.run([sys.executable, *run('one', '4', 'live')], env=env, capture_output=True, text=True)
    out2 = two.communicate()[0]
    assert one.returncode == 0, one.stderr[-3000:]
    assert two.returncode == 0, out2[-3000:]

    r0, r1, ref = (load_file(tiny/run/f'rank{r}.safetensors') for run, r in (('two', 0), ('two', 1), ('one', 0)))
    assert not (tiny/'one'/'rank1.safetensors').exists()
    assert set(r0) == set(r1) == set(ref) and any('lora' in k for k in r0)
    for k in r0:
        assert torch.equal(r0[k], r1[k]), f"ranks differ in {k}"                     # DDP keeps the replicas identical
        torch.testing.assert_close(r0[k], ref[k], rtol=0, atol=1e-5)
    assert any(v.abs().max() > 0 for k, v in r0.items() if 'lora_B' in k)          # adapters start at B = 0: they trained
    l2, l1 = ([r['loss/total'] for r in _lines(tiny/run) if 'loss/total' in r] for run in ('two', 'one'))
    assert len(l2) == len(l1) == 2
    assert max(abs(a - b) for a, b in zip(l2, l1)) < 1e-5, (l2, l1)

    cache = load_file(tiny/'ref.safetensors')                                       # written once, by rank 0, whole
    assert cache['chosen'].shape == (8,) and torch.isfinite(cache['chosen']).all() and (cache['chosen'] < 0).all()
    assert not list(tiny.glob('.ref.safetensors.*.tmp'))

    e0, e1 = (json.loads((tiny/'two'/f'eval-rank{r}.json').read_text()) for r in (0, 1))   # both ranks evaluated
    assert e0 == e1 and 'eval/pope_random_acc' in e0
    (ev2,), (ev1,) = ([r for r in _lines(tiny/run) if 'eval/chair_i' in r] for run in ('two', 'one'))
    for k, v in ev1.items():
        if k.startswith('eval/'): assert ev2[k] == pytest.approx(v, abs=1e-9), k
