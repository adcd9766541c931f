"What the 03b_sft notebook cannot show: a property of the batch order over many inputs, and the CLI's bad input."
import subprocess
from hypothesis import given, settings, strategies as st
from mmpo_nb.sft import length_grouped_batches


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 200), min_size=1, max_size=300), st.integers(1, 17), st.integers(0, 5), st.integers(0, 3),
       st.integers(1, 8))
def test_length_grouped_batches_cover_each_sample_once(lengths, batch_size, seed, epoch, mega):
    bs = length_grouped_batches(lengths, batch_size, seed=seed, epoch=epoch, mega=mega)
    assert sorted(j for b in bs for j in b) == list(range(len(lengths)))
    assert all(1 <= len(b) <= batch_size for b in bs)
    assert bs == length_grouped_batches(lengths, batch_size, seed=seed, epoch=epoch, mega=mega)   # a resumed run sees the same order


def test_train_sft_bad_option_exits_2(tmp_path):
    r = subprocess.run(['mmpo', 'train', 'sft', '--out', str(tmp_path/'run'), '--batch-size', '0'], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [r.stderr.strip()] and 'batch_size' in r.stderr, r.stderr
