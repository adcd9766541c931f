"""K-negative Plackett-Luce loss + backward vs one DPO loss at batch size B*K, timed side by side in one run.

    python benchmarks/bench_objectives.py [--device cpu|cuda] [--min-run-time 0.3] [--rounds 3]

Part 1 times the loss functions alone (forward + backward on log-prob tensors), through the public API (which validates
its inputs) and through the bare math (no validation), and prints PL / DPO. Part 2 adds a stand-in sequence scorer
(embedding -> linear head -> log-softmax over T tokens) to show what a training step pays for the log-probs themselves:
PL scores B*(K+1) sequences (one positive, K negatives), DPO at batch B*K scores 2*B*K.
Timings use torch.utils.benchmark (warm-up, blocked autorange); the two sides alternate over several rounds and the
median of each is reported.
"""
import argparse
import statistics

import torch
import torch.nn.functional as F
from torch.utils import benchmark

from mmpo_nb.objectives import dpo_loss, pl_image_loss


def _time(stmt, globs, min_run_time):
    "Median seconds per call of `stmt` (blocked autorange after its own warm-up)."
    t = benchmark.Timer(stmt=stmt, globals=globs)
    t.timeit(3)                                                    # warm-up
    return t.blocked_autorange(min_run_time=min_run_time).median


def _side_by_side(a, b, globs, min_run_time, rounds):
    "Alternate timing of statements a and b for `rounds` rounds; return their median times."
    ta, tb = [], []
    for _ in range(rounds):
        ta.append(_time(a, globs, min_run_time)); tb.append(_time(b, globs, min_run_time))
    return statistics.median(ta), statistics.median(tb)


def pl_bare(pp, rp, pn, rn, beta):
    "Plackett-Luce math without input validation (reference for the validation overhead)."
    a = beta * (pn - rn) - beta * (pp - rp)[:, None]
    return -F.logsigmoid(-torch.logsumexp(a, -1))


def dpo_bare(pc, pr, rc, rr, beta):
    "DPO math without input validation."
    return -F.logsigmoid(beta * (pc - rc) - beta * (pr - rr))


def bench_losses(B, K, device, min_run_time, rounds):
    g = torch.Generator(device='cpu').manual_seed(0)
    r = lambda *s: (-30 * torch.rand(*s, generator=g)).to(device)
    pp, rp, pn, rn = r(B).requires_grad_(), r(B), r(B, K).requires_grad_(), r(B, K)
    pc, pr, rc, rr = r(B * K).requires_grad_(), r(B * K).requires_grad_(), r(B * K), r(B * K)
    sync = 'torch.cuda.synchronize()' if device == 'cuda' else 'pass'
    globs = dict(pl_image_loss=pl_image_loss, dpo_loss=dpo_loss, pl_bare=pl_bare, dpo_bare=dpo_bare,
                 pp=pp, rp=rp, pn=pn, rn=rn, pc=pc, pr=pr, rc=rc, rr=rr, torch=torch)
    api = _side_by_side(f'pl_image_loss(pp, pn, rp, rn, beta=0.5).losses.mean().backward(); {sync}',
                        f'dpo_loss(pc, pr, rc, rr, beta=0.5).losses.mean().backward(); {sync}', globs, min_run_time, rounds)
    bare = _side_by_side(f'pl_bare(pp, rp, pn, rn, 0.5).mean().backward(); {sync}',
                         f'dpo_bare(pc, pr, rc, rr, 0.5).mean().backward(); {sync}', globs, min_run_time, rounds)
    return api, bare


def bench_with_scorer(B, K, T, V, D, device, min_run_time, rounds):
    "Loss + backward including a stand-in scorer that turns token ids into summed log-probs."
    g = torch.Generator(device='cpu').manual_seed(1)
    emb = torch.nn.Embedding(V, D).to(device); head = torch.nn.Linear(D, V).to(device)

    def logps(ids):                                                # (n, T) -> (n,) summed token log-probs
        lp = torch.log_softmax(head(emb(ids)), -1)
        return lp.gather(-1, ids[..., None]).squeeze(-1).sum(-1)

    ids = lambda n: torch.randint(0, V, (n, T), generator=g).to(device)
    pos_ids, neg_ids, ch_ids, rj_ids = ids(B), ids(B * K), ids(B * K), ids(B * K)
    ref_pos, ref_neg, ref_ch, ref_rj = -30 * torch.rand(B), -30 * torch.rand(B, K), -30 * torch.rand(B * K), -30 * torch.rand(B * K)
    ref_pos, ref_neg, ref_ch, ref_rj = (x.to(device) for x in (ref_pos, ref_neg, ref_ch, ref_rj))

    def pl_step():
        lp = logps(torch.cat([pos_ids, neg_ids]))                 # one forward over B*(K+1) sequences
        pl_image_loss(policy_pos_logps=lp[:B], policy_neg_logps=lp[B:].view(B, K), ref_pos_logps=ref_pos, ref_neg_logps=ref_neg).losses.mean().backward()

    def dpo_step():
        lp = logps(torch.cat([ch_ids, rj_ids]))                   # trl layout [chosen; rejected]: 2*B*K sequences
        dpo_loss(policy_chosen_logps=lp[:B * K], policy_rejected_logps=lp[B * K:], ref_chosen_logps=ref_ch, ref_rejected_logps=ref_rj, beta=0.5).losses.mean().backward()

    sync = 'torch.cuda.synchronize()' if device == 'cuda' else 'pass'
    globs = dict(pl_step=pl_step, dpo_step=dpo_step, torch=torch)
    return _side_by_side(f'pl_step(); {sync}', f'dpo_step(); {sync}', globs, min_run_time, rounds)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    ap.add_argument('--min-run-time', type=float, default=0.3)
    ap.add_argument('--rounds', type=int, default=3)
    args = ap.parse_args()
    torch.manual_seed(0)
    print(f'torch {torch.__version__}, device {args.device}, threads {torch.get_num_threads()}')
    print('\n1) loss + backward on log-prob tensors: K-negative PL at batch B vs DPO at batch B*K')
    print(f'{"B":>5} {"K":>3} | {"PL api":>10} {"DPO api":>10} {"ratio":>6} | {"PL bare":>10} {"DPO bare":>10} {"ratio":>6}')
    for B, K in ((8, 3), (32, 3), (32, 8), (256, 3), (1024, 8)):
        (pa, da), (pb, db) = bench_losses(B, K, args.device, args.min_run_time, args.rounds)
        print(f'{B:>5} {K:>3} | {pa*1e6:>8.1f}us {da*1e6:>8.1f}us {pa/da:>6.2f} | {pb*1e6:>8.1f}us {db*1e6:>8.1f}us {pb/db:>6.2f}')
    print('\n2) with a stand-in scorer (T=32 tokens, vocab 512, width 64): PL scores B*(K+1) sequences, DPO 2*B*K')
    print(f'{"B":>5} {"K":>3} | {"PL step":>10} {"DPO step":>10} {"ratio":>6} | {"(K+1)/2K":>8}')
    for B, K in ((8, 3), (16, 8)):
        p, d = bench_with_scorer(B, K, 32, 512, 64, args.device, args.min_run_time, args.rounds)
        print(f'{B:>5} {K:>3} | {p*1e3:>8.2f}ms {d*1e3:>8.2f}ms {p/d:>6.2f} | {(K+1)/(2*K):>8.2f}')


if __name__ == '__main__':
    main()
