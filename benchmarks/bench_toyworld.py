"""Toy-world generation speed: sampling + rendering 10,000 scenes must take < 30 s (issue 5).

Run: python benchmarks/bench_toyworld.py [--n 10000] [--size 64]
Prints the time for sampling alone, sampling + rendering, + descriptions/hallucinations, + splitting the joined
descriptions with the text layer (pySBD, cold cache) and labelling them, + PNG encoding, and each as a fraction of
the 30 s budget, all measured in one run.
"""
import argparse, io, time
from mmpo_nb.toyworld import ToyWorld, WorldConfig, describe, caption, sentence_labels
from mmpo_nb import text

def main(n:int=10_000, size:int=64):
    w = ToyWorld(WorldConfig(image_size=size))
    w.render(w.scene(0))  # warm the sprite cache (one-off, ~0.1 s)
    t0 = time.perf_counter(); scenes = [w.scene(i) for i in range(n)]; t_sample = time.perf_counter() - t0
    t0 = time.perf_counter(); ims = [w.render(w.scene(i)) for i in range(n)]; t_gen = time.perf_counter() - t0
    t0 = time.perf_counter()
    for s in scenes:
        describe(s); caption(s); k = w.possible_kinds(s); w.hallucinate(s, k[0])
    t_text = time.perf_counter() - t0
    docs = [' '.join(describe(s)) for s in scenes]; text._spans.cache_clear()
    t0 = time.perf_counter()
    for s, d in zip(scenes, docs): sentence_labels(s, d)
    t_split = time.perf_counter() - t0
    t0 = time.perf_counter()
    for im in ims: im.save(io.BytesIO(), format='PNG')
    t_png = time.perf_counter() - t0
    budget = 30.0
    print(f"toy world, {n} scenes at {size}px")
    for name, t in [('sample only', t_sample), ('sample + render', t_gen), ('describe + caption + hallucinate', t_text),
                    ('split (text layer) + label', t_split), ('PNG encode', t_png)]:
        print(f"  {name:34s} {t:7.2f} s   {1e6*t/n:7.1f} us/scene   {t/budget:6.3f} of the 30 s budget")
    print(f"  generation (sample + render) is {budget/t_gen:.1f}x under budget")
    return t_gen

if __name__ == '__main__':
    p = argparse.ArgumentParser(); p.add_argument('--n', type=int, default=10_000); p.add_argument('--size', type=int, default=64)
    a = p.parse_args(); main(a.n, a.size)
