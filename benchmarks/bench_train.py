"""The preference trainer's speed targets, each side measured in the same run and printed as a ratio.

    python benchmarks/bench_train.py [--model DIR] [--rows 48] [--batch 4] [--steps 8] [--warmup 2] [--parts misp,ref,trl]

1. misp: one K=3 MISP step (PL image loss over the positive and 3 negative images, one forward) against 3 pairwise DPO
   steps on the same pairs (positive image vs each negative image as the chosen/rejected pair); goal <= 0.70x the time.
   Three readings: the image term alone against the 3 image-pair steps (the same pairs, like for like); the full step
   (image + text term) against those 3 steps plus one text-pair step (chosen vs the text negative on the row's own image,
   so DPO sees every pair MISP sees); the full step against the 3 image-pair steps alone (MISP does more work).
2. ref:  one DPO step with precomputed reference log-probs against one with a live reference (adapter disabled); goal <= 0.70x.
   Also printed: the floor of that ratio, policy forward+backward / (policy forward+backward + reference forward),
   which no saving on data, optimizer or logging can beat.
3. trl:  `mmpo_nb.train` against TRL's `DPOTrainer` (sigmoid loss), same tiny LLaVA, rows, batch size, LoRA (r=16, alpha=32,
   the LM's linears), fp32, AdamW at lr 1e-4, one thread; each side in its own subprocess, so each peak RSS is its own
   (TRL's schedule is constant, ours cosine: the loss curves drift apart after the first step, the cost does not).
   Pairs/s come from the wall time between the ends of steps `warmup` and `warmup+steps` (data loading, collation, both
   forwards, backward, optimizer and logging included). TRL reads the rows in the order our trainer draws them, and the first batch's loss and
   log-probs are printed side by side; goal >= 1.5x the pairs/s at no more peak RSS. On a shared machine the wall clock
   is noisy, so pairs per CPU-second of the (single-threaded) process are printed too, and the sides alternate over
   `--side-rounds` rounds (the median round of each is reported). A third side runs our trainer with `--precompute-ref`.

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
    "Peak resident set size of this process in MiB: VmHWM, which starts afresh at exec (ru_maxrss keeps the forking parent's peak)."
    for line in Path('/proc/self/status').read_text().splitlines():
        if line.startswith('VmHWM:'): return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rates(ends, batch, steps, warmup):
    "Pairs/s by wall clock and by this process's CPU time, between the ends of steps `warmup` and `warmup+steps`."
    (w0, c0), (w1, c1) = ends[warmup - 1], ends[warmup + steps - 1]
    return {'pairs_per_s': batch * steps / (w1 - w0), 'pairs_per_cpu_s': batch * steps / (c1 - c0),
            'step_cpu_ms': [round(1000 * (b[1] - a[1])) for a, b in zip(ends, ends[1:])]}


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

def side_trl(model_dir, data_dir, batch, steps, warmup, order_file):
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
    ds = ds.select(json.loads(Path(order_file).read_text()))   # our trainer's row order, read in sequence
    conv = lambda role, content: [{'role': role, 'content': content}]
    ds = ds.map(lambda r: {'prompt': conv('user', [{'type': 'image'}, {'type': 'text', 'text': r['prompt']}]),
                           'chosen': conv('assistant', [{'type': 'text', 'text': r['chosen']}]),
                           'rejected': conv('assistant', [{'type': 'text', 'text': r['rejected']}])})
    model, proc = load_vlm(model_dir)

    class InOrder(DPOTrainer):   # rows in the given order, so both sides train on the same batches
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


# ---------------------------------------------------------------- our side (child process)

def side_ours(model_dir, data_dir, batch, steps, warmup, precompute=False):
    "Train with `mmpo_nb.train.train_preference` (dpo, live or precomputed reference); same measurements as `side_trl`."
    import torch
    torch.set_num_threads(1)
    import mmpo_nb.loop as L
    import mmpo_nb.train as T
    ends, write = [], L.RunLog.write
    def timed_write(self, step, metrics, epoch=None):          # one line per optimizer step: stamp its end
        if 'loss/total' in metrics: ends.append((time.perf_counter(), time.process_time()))
        return write(self, step, metrics, epoch)
    L.RunLog.write = timed_write
    pre, t_pre = T.precompute_reference, []
    def timed_pre(*a, **k):
        c0 = time.process_time(); r = pre(*a, **k); t_pre.append(time.process_time() - c0); return r
    T.precompute_reference = timed_pre
    out = Path(tempfile.mkdtemp(prefix='ours-'))
    cfg = T.PreferenceConfig(method='dpo', beta=BETA, lr=LR, steps=warmup + steps, batch_size=batch, lora_r=LORA['r'],
                             lora_alpha=LORA['alpha'], lora_dropout=0.0, mixed_precision='no', threads=1, progress=False, seed=0,
                             precompute_ref=precompute, ref_cache=str(out/'ref.safetensors'))
    T.train_preference(cfg, data_dir, model_dir, out/'run')
    log = [r for r in L.read_log(out/'run') if 'loss/total' in r]
    res = {'side': 'ours-pre' if precompute else 'ours', 'first_loss': log[0]['loss/total'], 'first_logps_chosen': log[0]['logps/chosen'],
           'first_logps_rejected': log[0]['logps/rejected'], 'losses': [r['loss/total'] for r in log],
           **rates(ends, batch, steps, warmup), 'peak_rss_mb': peak_rss_mb()}
    if precompute: res['precompute_cpu_s_per_row'] = t_pre[0] / len(T.read_dataset(data_dir))
    return res


def first_rows(n, batch, micro_batches):
    "Dataset rows in the order `train_preference` reads them (its `RowOrder`), so TRL can read the same batches in sequence."
    from mmpo_nb.train import RowOrder
    o = RowOrder(n, batch, seed=0)
    return [r for i in range(micro_batches) for r in o.rows(i)]


# ---------------------------------------------------------------- building-block steps (parent process)

def _step_parts(model_dir, data_dir, batch):
    "The trainer's pieces on one micro-batch: a LoRA scorer, its optimizer, the processor and `batch` rows."
    import torch
    from mmpo_nb.data import read_dataset
    from mmpo_nb.train import SequenceScorer
    from mmpo_nb.vlm import add_lora, load_vlm
    vlm, proc = load_vlm(model_dir)
    scorer = SequenceScorer(add_lora(vlm, r=LORA['r'], alpha=LORA['alpha']))
    opt = torch.optim.AdamW([p for p in scorer.parameters() if p.requires_grad], lr=LR)
    ds = read_dataset(data_dir)
    rows = [ds[i] for i in range(batch)]
    return scorer, opt, proc, rows


def _opt_step(scorer, opt, proc, sb, method, cfg, ref=None):
    "One optimizer step of `method` on the sequences of `sb` as `train_preference` runs it (live reference unless `ref` is given)."
    from mmpo_nb.train import encode_step, preference_loss, score_step
    enc = encode_step(proc, sb)
    pol, live = score_step(scorer, scorer, enc, sb, method, live_ref=ref is None)
    loss, _ = preference_loss(method, pol, live if ref is None else {k: v.detach() for k, v in ref.items()}, sb, cfg)
    loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
    return loss.item()


def _image_pair_batch(rows, k):
    "A DPO micro-batch of image pairs: (own image, chosen) preferred to (negative image k, chosen)."
    import torch
    from mmpo_nb.train import StepBatch, _text
    B = len(rows)
    images = [r['images'][0] for r in rows] + [r['neg_images'][k] for r in rows]
    prompts, responses = [_text(r['prompt']) for r in rows] * 2, [_text(r['chosen']) for r in rows] * 2
    return StepBatch(list(range(B)), images, [[j] for j in range(2 * B)], prompts, responses,
                     {'chosen': torch.arange(B), 'rejected': torch.arange(B, 2 * B)})


def _image_only(sb):
    "The MISP micro-batch without its text negatives: the positive and the K negative-image sequences."
    import dataclasses
    keep = sorted(set(sb.roles['chosen'].tolist()) | set(sb.roles['neg'].flatten().tolist()))
    new = {j: i for i, j in enumerate(keep)}
    remap = lambda t: t.clone().apply_(new.get)
    return dataclasses.replace(sb, seq_images=[sb.seq_images[j] for j in keep], prompts=[sb.prompts[j] for j in keep],
                               responses=[sb.responses[j] for j in keep], roles={k: remap(sb.roles[k]) for k in ('chosen', 'neg')},
                               masks={'neg': sb.masks['neg']})


def _image_step(scorer, opt, proc, sb, cfg):
    "One optimizer step of MISP's PL image loss alone (live reference)."
    from mmpo_nb.objectives import pl_image_loss
    from mmpo_nb.train import encode_step, score_step
    enc = encode_step(proc, sb)
    P, R = score_step(scorer, scorer, enc, sb, 'misp')
    loss = pl_image_loss(policy_pos_logps=P['chosen'], policy_neg_logps=P['neg'], ref_pos_logps=R['chosen'].detach(),
                         ref_neg_logps=R['neg'].detach(), beta=cfg.beta, neg_mask=sb.masks['neg']).losses.mean()
    loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
    return loss.item()


def _cpu_time(fn, rounds):
    "Median process CPU seconds of `fn()` over `rounds` calls (after one untimed call)."
    fn(); ts = []
    for _ in range(rounds):
        c0 = time.process_time(); fn(); ts.append(time.process_time() - c0)
    return statistics.median(ts)


def bench_misp(model_dir, data_dir, a, K=3):
    from mmpo_nb.train import PreferenceConfig, build_step
    scorer, opt, proc, rows = _step_parts(model_dir, data_dir, a.batch)
    mcfg, dcfg = PreferenceConfig(method='misp', max_negatives=K, misp_image='exact'), PreferenceConfig(method='dpo')
    sb = build_step(rows, list(range(len(rows))), 'misp', mcfg)
    pairs = [_image_pair_batch(rows, k) for k in range(K)]
    text = build_step(rows, list(range(len(rows))), 'dpo', dcfg)   # chosen vs the text negative, both on the row's own image
    assert sb.roles['rtext'].shape[1] == 1 and [r['rejected'] for r in rows] == [sb.responses[j] for j in sb.roles['rtext'][:, 0]]
    img = _image_only(sb)
    misp = lambda: _opt_step(scorer, opt, proc, sb, 'misp', mcfg)
    misp_img = lambda: _image_step(scorer, opt, proc, img, mcfg)
    dpo3 = lambda: [_opt_step(scorer, opt, proc, p, 'dpo', dcfg) for p in pairs]
    dpo_text = lambda: _opt_step(scorer, opt, proc, text, 'dpo', dcfg)
    tm, ti, td, tt = [], [], [], []
    for _ in range(a.rounds):                                  # alternate the sides so load changes hit both
        tm.append(_cpu_time(misp, 1)); ti.append(_cpu_time(misp_img, 1)); td.append(_cpu_time(dpo3, 1)); tt.append(_cpu_time(dpo_text, 1))
    tm, ti, td, tt = (statistics.median(x) for x in (tm, ti, td, tt))
    print(f"\n== K={K} MISP step vs pairwise DPO steps on the same pairs: batch {a.batch} rows, live reference, CPU s (median of {a.rounds})")
    print(f"   MISP: {sb.n_seqs} sequences ({img.n_seqs} for the image term), {len(sb.images)} images, 1 optimizer step; "
          f"each DPO step: {pairs[0].n_seqs} sequences, {len(pairs[0].images)} images")
    print(f"   image term alone vs {K} image-pair DPO steps (the same pairs):      {ti:.3f} vs {td:.3f}  ratio {ti / td:.2f}x  (goal <= 0.70x)")
    print(f"   full step vs {K} image-pair + 1 text-pair DPO steps (every pair): {tm:.3f} vs {td + tt:.3f}  ratio {tm / (td + tt):.2f}x")
    print(f"   full step vs the {K} image-pair DPO steps alone:                   {tm:.3f} vs {td:.3f}  ratio {tm / td:.2f}x")
    return ti / td


def bench_ref(model_dir, data_dir, a):
    from mmpo_nb.train import PreferenceConfig, build_step, encode_step, role_logps, _ref_forward
    scorer, opt, proc, rows = _step_parts(model_dir, data_dir, a.batch)
    cfg = PreferenceConfig(method='dpo')
    sb = build_step(rows, list(range(len(rows))), 'dpo', cfg)
    enc = encode_step(proc, sb)
    ref = role_logps(*_ref_forward(scorer, None, enc), enc, sb, 'dpo')        # what the cache holds for these rows
    live = lambda: _opt_step(scorer, opt, proc, sb, 'dpo', cfg)
    pre = lambda: _opt_step(scorer, opt, proc, sb, 'dpo', cfg, ref=ref)
    def fwd_bwd():                                             # the policy's forward and backward alone, on the encoded batch
        lp, m = scorer(enc); (lp * m).sum().backward(); opt.zero_grad(set_to_none=True)
    ref_fwd = lambda: _ref_forward(scorer, None, enc | {'image_feats': scorer.frozen_feats})   # as `score_step` runs it
    tl, tp, tf, tr = [], [], [], []
    for _ in range(a.rounds):
        tl.append(_cpu_time(live, 1)); tp.append(_cpu_time(pre, 1))
        tf.append(_cpu_time(fwd_bwd, 1)); fwd_bwd(); tr.append(_cpu_time(ref_fwd, 1))
    tl, tp, tf, tr = (statistics.median(x) for x in (tl, tp, tf, tr))
    print(f"\n== DPO step with precomputed reference log-probs vs live reference (adapter disabled): batch {a.batch}, CPU s (median of {a.rounds})")
    print(f"   precomputed {tp:.3f}  live {tl:.3f}  ratio {tp / tl:.2f}x  (goal <= 0.70x)")
    print(f"   floor: policy forward+backward {tf:.3f}, reference forward {tr:.3f} (image features shared): "
          f"{tf:.3f} / {tf + tr:.3f} = {tf / (tf + tr):.2f}x with no data, optimizer or logging cost at all")
    return tp / tl


# ---------------------------------------------------------------- driver

def run_side(side, model_dir, data_dir, a, order_file):
    "Run one side in a fresh interpreter (its own peak RSS) and return the JSON it prints last."
    cmd = [sys.executable, __file__, '--side', side, '--order', str(order_file), '--model', str(model_dir), '--data', str(data_dir),
           '--batch', str(a.batch), '--steps', str(a.steps), '--warmup', str(a.warmup)]
    env = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1', TOKENIZERS_PARALLELISM='false')
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode: raise RuntimeError(f"{side} side failed:\n{p.stderr[-4000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def bench_trl(model_dir, data_dir, a):
    order_file = Path(tempfile.mkdtemp())/'order.json'
    from mmpo_nb.data import read_dataset
    order_file.write_text(json.dumps(first_rows(len(read_dataset(data_dir)), a.batch, a.warmup + a.steps)))
    runs = {}
    for _ in range(a.side_rounds):                             # alternate the sides; report each one's median round
        for s in ('trl', 'ours', 'ours-pre'): runs.setdefault(s, []).append(run_side(s, model_dir, data_dir, a, order_file))
    med = lambda rs: sorted(rs, key=lambda r: r['pairs_per_cpu_s'])[len(rs) // 2]
    sides = {s: med(rs) for s, rs in runs.items()}
    t, o, q = sides['trl'], sides['ours'], sides['ours-pre']
    print('\nper round, pairs/CPU-s:', {s: [round(r['pairs_per_cpu_s'], 2) for r in rs] for s, rs in runs.items()})
    print('per round, peak RSS MiB:', {s: [round(r['peak_rss_mb']) for r in rs] for s, rs in runs.items()})
    print(f"\n== mmpo_nb.train vs TRL DPOTrainer: batch {a.batch}, {a.steps} timed steps after {a.warmup}, fp32, LoRA r={LORA['r']}, 1 thread")
    print(f"{'':24}{'TRL':>12}{'mmpo_nb':>12}{'ratio':>10}")
    print(f"{'first-batch loss':24}{t['first_loss']:12.6f}{o['first_loss']:12.6f}{o['first_loss'] - t['first_loss']:+10.1e}")
    print(f"{'first logps/chosen':24}{t['first_logps_chosen']:12.4f}{o['first_logps_chosen']:12.4f}")
    print(f"{'first logps/rejected':24}{t['first_logps_rejected']:12.4f}{o['first_logps_rejected']:12.4f}")
    print(f"{'pairs/s':24}{t['pairs_per_s']:12.2f}{o['pairs_per_s']:12.2f}{o['pairs_per_s'] / t['pairs_per_s']:9.2f}x  (goal >= 1.5x)")
    print(f"{'pairs/CPU-s':24}{t['pairs_per_cpu_s']:12.2f}{o['pairs_per_cpu_s']:12.2f}{o['pairs_per_cpu_s'] / t['pairs_per_cpu_s']:9.2f}x  (same, by CPU time)")
    print(f"{'peak RSS (MiB)':24}{t['peak_rss_mb']:12.0f}{o['peak_rss_mb']:12.0f}{o['peak_rss_mb'] / t['peak_rss_mb']:9.2f}x  (goal <= 1.0x)")
    print(f"{'pairs/s, precomputed ref':24}{'':12}{q['pairs_per_s']:12.2f}{q['pairs_per_s'] / t['pairs_per_s']:9.2f}x  "
          f"(precompute pass: {q['precompute_cpu_s_per_row'] * 1000:.0f} CPU-ms per row, once per dataset)")
    print(f"{'pairs/CPU-s, precomp.':24}{'':12}{q['pairs_per_cpu_s']:12.2f}{q['pairs_per_cpu_s'] / t['pairs_per_cpu_s']:9.2f}x")
    print(f"{'peak RSS, precomputed':24}{'':12}{q['peak_rss_mb']:12.0f}{q['peak_rss_mb'] / t['peak_rss_mb']:9.2f}x")
    for k, v in sides.items(): print(f"losses {k:9}", [round(x, 5) for x in v['losses']])
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
    ap.add_argument('--rounds', type=int, default=5, help='alternating rounds of the building-block benchmarks')
    ap.add_argument('--side-rounds', type=int, default=3, help='alternating subprocess rounds of the TRL comparison')
    ap.add_argument('--side', help=argparse.SUPPRESS)
    ap.add_argument('--order', help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.side:
        print(json.dumps(SIDES[a.side](a.model, a.data, a.batch, a.steps, a.warmup, a.order))); return
    import torch
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix='bench-train-') as tmp:
        model_dir = Path(a.model) if a.model else build_model(Path(tmp)/'model')
        data_dir = Path(a.data) if a.data else build_data(Path(tmp)/'data', max(a.rows, a.batch * (a.steps + a.warmup)))
        parts = a.parts.split(',')
        if 'misp' in parts: bench_misp(model_dir, data_dir, a)
        if 'ref' in parts: bench_ref(model_dir, data_dir, a)
        if 'trl' in parts: bench_trl(model_dir, data_dir, a)


SIDES = {'trl': side_trl, 'ours': lambda *x: side_ours(*x[:-1]), 'ours-pre': lambda *x: side_ours(*x[:-1], precompute=True)}

if __name__ == '__main__':
    main()
