"""The preference trainer's speed targets, each side measured in the same run and printed as a ratio.

    python benchmarks/bench_train.py [--model DIR] [--rows 48] [--batch 4] [--steps 8] [--warmup 2] [--parts misp,ref,trl]

1. misp: one K=3 MISP step (PL image loss over the positive and 3 negative images, one forward) against 3 pairwise DPO
   steps on the same pairs (positive image vs each negative image as the chosen/rejected pair); goal <= 0.70x the time.
2. ref:  one DPO step with precomputed reference log-probs against one with a live reference (adapter disabled); goal <= 0.70x.
3. trl:  `mmpo_nb.train` against TRL's `DPOTrainer` (sigmoid loss), same tiny LLaVA, rows, batch size, LoRA (r=16, alpha=32,
   the LM's linears), fp32, AdamW, constant lr, one thread; each side in its own subprocess, so each peak RSS is its own.
   Pairs/s come from the wall time between the ends of steps `warmup` and `warmup+steps` (data loading, collation, both
   forwards, backward, optimizer and logging included). Both sides read rows in order, and the first batch's loss and
   log-probs are printed side by side; goal >= 1.5x the pairs/s at no more peak RSS. On a shared machine the wall clock
   is noisy, so pairs per CPU-second of the (single-threaded) process are printed too.

The model is the demo's SFT LLaVA when `--model` is given, else a randomly initialised one with the same shapes
(`SFTConfig` defaults). TRL is the `bench` extra: `pip install -e .[bench]`.
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LORA = dict(r=16, alpha=32)
LR, BETA = 1e-4, 0.1


def peak_rss_mb():
    "Peak resident set size of this process in MiB (Linux reports ru_maxrss in KiB)."
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rates(ends, batch, steps, warmup):
    "Pairs/s by wall clock and by this process's CPU time, between the ends of steps `warmup` and `warmup+steps`."
    (w0, c0), (w1, c1) = ends[warmup - 1], ends[warmup + steps - 1]
    return {'pairs_per_s': batch * steps / (w1 - w0), 'pairs_per_cpu_s': batch * steps / (c1 - c0)}


# ---------------------------------------------------------------- setup (parent process)

def build_model(folder):
    "A tiny LLaVA with the SFT run's shapes (random weights), saved with its processor."
    from mmpo_nb.sft import SFTConfig, world_texts
    from mmpo_nb.toyworld import ToyWorld
    from mmpo_nb.vlm import build_tiny_llava, build_toy_tokenizer, save_vlm
    cfg = SFTConfig()
    model, proc = build_tiny_llava(build_toy_tokenizer(world_texts(ToyWorld(seed=0), 100)), **cfg.model_kwargs())
    return save_vlm(model, proc, folder, overwrite=True)


def build_data(folder, rows):
    "Toy describe rows with 4 edited negative images each, in the project's dataset format."
    from mmpo_nb.data import write_toy_dataset
    return write_toy_dataset(rows, folder, seed=0, n_neg=4, overwrite=True, progress=False)


# ---------------------------------------------------------------- TRL side (child process)

def side_trl(model_dir, data_dir, batch, steps, warmup):
    "Train TRL's DPOTrainer for warmup+steps steps; first-batch loss/log-probs, pairs/s, peak RSS."
    import torch
    torch.set_num_threads(1)
    from peft import LoraConfig
    from torch.utils.data import SequentialSampler
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer
    from mmpo_nb.data import read_dataset
    from mmpo_nb.vlm import lm_lora_regex, load_vlm

    ds = read_dataset(data_dir).select_columns(['images', 'prompt', 'chosen', 'rejected'])
    conv = lambda role, content: [{'role': role, 'content': content}]
    ds = ds.map(lambda r: {'prompt': conv('user', [{'type': 'image'}, {'type': 'text', 'text': r['prompt']}]),
                           'chosen': conv('assistant', [{'type': 'text', 'text': r['chosen']}]),
                           'rejected': conv('assistant', [{'type': 'text', 'text': r['rejected']}])})
    model, proc = load_vlm(model_dir)

    class InOrder(DPOTrainer):   # rows in dataset order, like our side, so the first batches match
        def _get_train_sampler(self, *a, **k): return SequentialSampler(self.train_dataset)

    ends = []
    class StepEnds(TrainerCallback):
        def on_step_end(self, args, state, control, **kw): ends.append((time.perf_counter(), time.process_time()))

    args = DPOConfig(output_dir=tempfile.mkdtemp(prefix='trl-'), per_device_train_batch_size=batch, max_steps=warmup + steps,
                     learning_rate=LR, beta=BETA, loss_type=['sigmoid'], use_cpu=True, bf16=False, fp16=False, max_length=None,
                     lr_scheduler_type='constant', warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, optim='adamw_torch',
                     report_to='none', logging_steps=1, save_strategy='no', dataloader_num_workers=0, disable_tqdm=True,
                     seed=0, gradient_checkpointing=False)
    tr = InOrder(model=model, args=args, train_dataset=ds, processing_class=proc, callbacks=[StepEnds()],
                 peft_config=LoraConfig(r=LORA['r'], lora_alpha=LORA['alpha'], lora_dropout=0.0, target_modules=lm_lora_regex(), bias='none'))
    tr.train()
    first = tr.state.log_history[0]
    return {'side': 'trl', 'first_loss': first['loss'], 'first_logps_chosen': first['logps/chosen'],
            'first_logps_rejected': first['logps/rejected'], 'losses': [h['loss'] for h in tr.state.log_history if 'loss' in h],
            **rates(ends, batch, steps, warmup), 'peak_rss_mb': peak_rss_mb()}


# ---------------------------------------------------------------- driver

def run_side(side, model_dir, data_dir, a):
    "Run one side in a fresh interpreter (its own peak RSS) and return the JSON it prints last."
    cmd = [sys.executable, __file__, '--side', side, '--model', str(model_dir), '--data', str(data_dir),
           '--batch', str(a.batch), '--steps', str(a.steps), '--warmup', str(a.warmup)]
    env = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1', TOKENIZERS_PARALLELISM='false')
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode: raise RuntimeError(f"{side} side failed:\n{p.stderr[-4000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def bench_trl(model_dir, data_dir, a):
    sides = {s: run_side(s, model_dir, data_dir, a) for s in ('trl', 'ours')}
    t, o = sides['trl'], sides['ours']
    print(f"\n== mmpo_nb.train vs TRL DPOTrainer: batch {a.batch}, {a.steps} timed steps after {a.warmup}, fp32, LoRA r={LORA['r']}, 1 thread")
    print(f"{'':24}{'TRL':>12}{'mmpo_nb':>12}{'ratio':>10}")
    print(f"{'first-batch loss':24}{t['first_loss']:12.6f}{o['first_loss']:12.6f}{o['first_loss'] - t['first_loss']:+10.1e}")
    print(f"{'first logps/chosen':24}{t['first_logps_chosen']:12.4f}{o['first_logps_chosen']:12.4f}")
    print(f"{'first logps/rejected':24}{t['first_logps_rejected']:12.4f}{o['first_logps_rejected']:12.4f}")
    print(f"{'pairs/s':24}{t['pairs_per_s']:12.2f}{o['pairs_per_s']:12.2f}{o['pairs_per_s'] / t['pairs_per_s']:9.2f}x  (goal >= 1.5x)")
    print(f"{'pairs/CPU-s':24}{t['pairs_per_cpu_s']:12.2f}{o['pairs_per_cpu_s']:12.2f}{o['pairs_per_cpu_s'] / t['pairs_per_cpu_s']:9.2f}x  (same, by CPU time)")
    print(f"{'peak RSS (MiB)':24}{t['peak_rss_mb']:12.0f}{o['peak_rss_mb']:12.0f}{o['peak_rss_mb'] / t['peak_rss_mb']:9.2f}x  (goal <= 1.0x)")
    print('losses TRL    ', [round(x, 5) for x in t['losses']])
    print('losses mmpo_nb', [round(x, 5) for x in o['losses']])
    return sides


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--model', help='VLM folder (default: a random tiny LLaVA with the SFT shapes)')
    ap.add_argument('--data', help='toy dataset folder (default: written fresh)')
    ap.add_argument('--rows', type=int, default=48)
    ap.add_argument('--batch', type=int, default=4)
    ap.add_argument('--steps', type=int, default=8, help='timed steps')
    ap.add_argument('--warmup', type=int, default=2, help='untimed steps first')
    ap.add_argument('--parts', default='misp,ref,trl')
    ap.add_argument('--side', help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.side:
        print(json.dumps(SIDES[a.side](a.model, a.data, a.batch, a.steps, a.warmup))); return
    import torch
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix='bench-train-') as tmp:
        model_dir = Path(a.model) if a.model else build_model(Path(tmp)/'model')
        data_dir = Path(a.data) if a.data else build_data(Path(tmp)/'data', max(a.rows, a.batch * (a.steps + a.warmup)))
        parts = a.parts.split(',')
        if 'misp' in parts: bench_misp(model_dir, data_dir, a)
        if 'ref' in parts: bench_ref(model_dir, data_dir, a)
        if 'trl' in parts: bench_trl(model_dir, data_dir, a)


SIDES = {'trl': side_trl}

if __name__ == '__main__':
    main()
