"""`accelerate launch` of the preference trainer on 2 CPU processes (gloo) against 1 process with the same global batch,
and resume after `kill -9` under FSDP2 and DeepSpeed ZeRO-2/3 on 2 CPU processes.

2 ranks x 2 accumulated micro-batches of 1 row and 1 process x 4 accumulated micro-batches of 1 row see the same rows per
step (`loop.fit` hands micro-batch (s*A + a)*P + r to rank r), so the loss curves must agree and both ranks must end with
the same weights. The 2-rank run precomputes the reference (each rank scores half the rows, the ranks gather them, rank 0
writes the cache) and the 1-process run uses the live reference (adapter disabled), so agreeing losses also check the
gathered cache row by row. Both evaluate on 2 held-out scenes at the end: every rank must run the evaluation (ZeRO-3 / FSDP
need every rank in every forward) and the logged numbers must be the 1-process ones. The driver wraps
`mmpo_nb.train.fit` to write each rank's trainable weights and evaluation next to the run.

The resume test runs the shipped fsdp.yaml (and zero2/zero3.yaml where `deepspeed` is installed) on the same 2 CPU ranks.
accelerate turns FSDP and DeepSpeed on only for GPU-type processes, so its driver shims accelerate's process state before
the real `mmpo train dpo` runs; the checkpoints it checks are the backends' own (`pytorch_model_fsdp.bin`, `pytorch_model/`).
"""
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mmpo_nb.loop import list_checkpoints

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


RESUME_DRIVER = textwrap.dedent('''
    """`mmpo train dpo` under FSDP2 or DeepSpeed on CPU ranks (gloo). accelerate turns both on only for GPU-type processes,
    so this shims the distributed state first; everything after that (prepare, save_state/load_state, the trainer) is the
    real code. argv: backend, pause ('pause': sleep after the first checkpoint, for the test to kill the ranks there), CLI args."""
    import sys, time, torch
    import mmpo_nb.loop as L
    import mmpo_nb.train as T
    backend, pause, args = sys.argv[1], sys.argv[2] == 'pause', sys.argv[3:]
    if backend == 'fsdp':
        # a gloo CPU state that says MULTI_GPU: accelerate then builds its FSDP plugin, and FSDP2 (fully_shard,
        # torch.distributed.checkpoint) runs on CPU tensors
        from accelerate.state import PartialState
        from accelerate.utils import DistributedType
        PartialState(cpu=True).distributed_type = DistributedType.MULTI_GPU
    else:
        import dataclasses, deepspeed
        deepspeed.init_distributed(dist_backend='gloo')          # DS_ACCELERATOR=cpu: DeepSpeed's CPU accelerator
        make = L.make_accelerator
        def make_accelerator(cfg):
            # DeepSpeed needs Accelerator(cpu=False), and accelerate then asks CUDA for the backend and device: pretend during
            # __init__ only (the process group is already gloo; ACCELERATE_TORCH_DEVICE=cpu keeps the device on the CPU)
            real = torch.cuda.is_available; torch.cuda.is_available = lambda: True
            try: return make(dataclasses.replace(cfg, cpu=False, mixed_precision='no'))
            finally: torch.cuda.is_available = real
        T.make_accelerator = make_accelerator

    if pause:
        save = L.save_checkpoint
        def save_then_wait(acc, run, step, **k):
            res = save(acc, run, step, **k)
            if step == 1: time.sleep(300)
            return res
        L.save_checkpoint = save_then_wait
    fit = T.fit
    def fit_and_note(*a, **k):
        res = fit(*a, **k)
        (k['out']/f"resumed_from-rank{res.accelerator.process_index}").write_text(str(res.resumed_from))
        return res
    T.fit = fit_and_note

    from mmpo_nb.cli import app
    app(['train', 'dpo', *args], standalone_mode=False)
''')


def _descendants(pid:int)->list[int]:
    "Every process below `pid` (torchrun starts each rank in a session of its own, so a process group kill would miss them)."
    kids = {}
    for p in Path('/proc').iterdir():
        if not p.name.isdigit(): continue
        try: ppid = int((p/'stat').read_text().rsplit(')', 1)[1].split()[1])
        except (OSError, IndexError, ValueError): continue
        kids.setdefault(ppid, []).append(int(p.name))
    out, todo = [], [pid]
    while todo:
        for c in kids.get(todo.pop(), []): out.append(c); todo.append(c)
    return out


def _sharded_dir(tiny, tmp_path_factory, backend:str, yaml:str)->Path:
    "A folder with the shim driver and a 2-step-default DPO config (`yaml` adds or overrides fields); skips DeepSpeed without it."
    if backend != 'fsdp': pytest.importorskip('deepspeed')
    d = tmp_path_factory.mktemp(backend)
    (d/'driver.py').write_text(RESUME_DRIVER)
    base = {'steps': '2', 'batch_size': '1', 'lr': '0.01', 'lora_r': '4', 'lora_alpha': '8', 'progress': 'false', 'seed': '0'}
    base |= dict(line.split(': ', 1) for line in yaml.splitlines() if line)
    (d/'dpo.yaml').write_text(''.join(f'{k}: {v}\n' for k, v in base.items()))
    return d


def _launch_sharded(tiny, tmp_path_factory, backend:str, d:Path, out:str, *args:str, pause:bool=False, launcher=()):
    "`accelerate launch` of the shim driver with the shipped `<backend>.yaml` on 2 CPU ranks, fp32, 2 accumulated micro-batches."
    env = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1', TOKENIZERS_PARALLELISM='false',
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get('PYTHONPATH', '')]))
    if backend == 'fsdp': env['ACCELERATE_USE_CPU'] = '1'
    else:
        env.pop('ACCELERATE_USE_CPU', None)       # it would force Accelerator(cpu=True), which turns DeepSpeed off
        env |= {'DS_ACCELERATOR': 'cpu', 'ACCELERATE_TORCH_DEVICE': 'cpu', 'TORCH_EXTENSIONS_DIR': str(tmp_path_factory.getbasetemp()/'torch_ext')}
    config = ROOT/'configs'/'accelerate'/f'{backend}.yaml'
    cmd = [sys.executable, '-m', 'accelerate.commands.launch', '--config_file', str(config), '--num_processes', '2',
           '--mixed_precision', 'no', *launcher, '--main_process_port', str(_free_port()), str(d/'driver.py'), backend,
           'pause' if pause else 'run', '--data', str(tiny/'data'), '--model', str(tiny/'model'), '--out', str(d/out),
           '--config', str(d/'dpo.yaml'), '--grad-accum', '2', *args]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(p):
    out = p.communicate(timeout=300)[0]
    assert p.returncode == 0, out[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize('backend', ['fsdp', 'zero2', 'zero3'])
def test_resume_after_sigkill_sharded(tiny, tmp_path_factory, backend):
    """kill -9 of both ranks (and the launcher) after the first checkpoint, then resume: the same adapter and losses as an
    uninterrupted run. FSDP2 with the shipped fsdp.yaml (FULL_STATE_DICT); ZeRO-2/3 with zero2.yaml / zero3.yaml where
    `deepspeed` is installed (it is not a dependency). 2 CPU ranks, fp32, 3 steps of 2 accumulated micro-batches. The killed
    run sleeps after checkpoint-1, so the SIGKILL of the launcher and both ranks always lands mid-run, after a complete checkpoint."""
    d = _sharded_dir(tiny, tmp_path_factory, backend, 'steps: 3\nsave_every: 1\nkeep: 2\n')
    launch = lambda out, pause=False: _launch_sharded(tiny, tmp_path_factory, backend, d, out, '--live-ref', pause=pause)

    _finish(launch('full'))
    run = d/'killed'
    p, t0 = launch('killed', pause=True), time.time()
    while not list_checkpoints(run):
        assert p.poll() is None, p.communicate()[0][-3000:]
        assert time.time() - t0 < 300, 'no checkpoint after 300 s'
        time.sleep(0.05)
    victims = _descendants(p.pid) + [p.pid]
    for pid in victims: os.kill(pid, signal.SIGKILL)
    p.communicate()
    assert p.returncode == -signal.SIGKILL
    assert not (run/'final').exists() and [c.name for c in list_checkpoints(run)] == ['checkpoint-1']
    ck = run/'checkpoint-1'
    state = json.loads((ck/'loop_state.json').read_text())
    assert state['step'] == 1 and state['format'] == ('fsdp' if backend == 'fsdp' else 'deepspeed')
    assert not (ck/'model.safetensors').exists()                       # the backend's own files, not the plain format
    assert (ck/'pytorch_model_fsdp.bin').exists() if backend == 'fsdp' else (ck/'pytorch_model').is_dir()
    assert {f.name for f in ck.glob('random_states_*.pkl')} == {'random_states_0.pkl', 'random_states_1.pkl'}

    _finish(launch('killed'))
    assert [(run/f'resumed_from-rank{r}').read_text() for r in (0, 1)] == ['1', '1']
    a, b = (load_file(d/r/'final'/'adapter_model.safetensors') for r in ('full', 'killed'))
    assert a.keys() == b.keys() and any('lora_B' in k for k in a)
    assert any(v.abs().max() > 0 for k, v in a.items() if 'lora_B' in k)             # B starts at 0: it trained
    for k in a: torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-6)
    lf, lk = ([(r['step'], r['loss/total']) for r in _lines(d/x)] for x in ('full', 'killed'))
    assert [s for s, _ in lk] == [1, 2, 3] and [s for s, _ in lf] == [1, 2, 3]
    assert max(abs(x[1] - y[1]) for x, y in zip(lk, lf)) < 1e-6, (lk, lf)


@pytest.fixture(scope='module')
def zero2_run(tiny, tmp_path_factory)->Path:
    "2 steps of DPO under the shipped zero2.yaml with the live reference (skips without deepspeed)."
    d = _sharded_dir(tiny, tmp_path_factory, 'zero2', '')
    _finish(_launch_sharded(tiny, tmp_path_factory, 'zero2', d, 'run', '--live-ref'))
    return d/'run'


@pytest.mark.slow
@pytest.mark.parametrize('load', ['whole', 'partitioned'])
def test_zero3_trains_like_zero2(tiny, tmp_path_factory, zero2_run, load):
    """ZeRO-3 with `--precompute-ref` ends with ZeRO-2's adapter, losses and grad norms (live reference), 2 steps of 2
    accumulated micro-batches on 2 CPU ranks. 'whole': the shipped zero3.yaml (zero3_init_flag: false) loads the model whole;
    'partitioned': `--zero3_init_flag true` lets ZeRO-3 partition it while loading, and the reference pass gathers it.
    accelerate hands transformers its DeepSpeed config whatever the flag says, so both used to load under `zero.Init`,
    whose random init drew from the torch RNG before the LoRA init: other A matrices (step-1 grad norm 0.0249 against
    0.0223), and a precomputed reference on the empty shards failed ('weight should have at least three dimensions')."""
    ref = tmp_path_factory.mktemp('z3cache')/'ref.safetensors'
    d = _sharded_dir(tiny, tmp_path_factory, 'zero3', f'ref_cache: {ref}\n')
    _finish(_launch_sharded(tiny, tmp_path_factory, 'zero3', d, 'run', '--precompute-ref',
                            launcher=('--zero3_init_flag', 'true') if load == 'partitioned' else ()))
    cache = load_file(ref)                                                         # computed by this run
    assert cache['chosen'].shape == (8,) and (cache['chosen'] < 0).all()
    a, b = (load_file(r/'final'/'adapter_model.safetensors') for r in (zero2_run, d/'run'))
    assert a.keys() == b.keys() and any(v.abs().max() > 0 for k, v in a.items() if 'lora_B' in k)
    for k in a: torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-6)
    l2, l3 = ([(r['loss/total'], r['grad_norm']) for r in _lines(r)] for r in (zero2_run, d/'run'))
    assert len(l2) == len(l3) == 2
    for (x2, g2), (x3, g3) in zip(l2, l3): assert x3 == pytest.approx(x2, abs=1e-6) and g3 == pytest.approx(g2, rel=1e-5)
