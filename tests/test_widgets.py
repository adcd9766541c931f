"Widgets driven headlessly as a user drives them (set `.value`, `.click()`), on small real toy data; bad input gives one message, never a traceback."
import json, subprocess, sys, textwrap, time
from dataclasses import replace
from pathlib import Path
import pytest, torch

pytestmark = pytest.mark.slow


@pytest.fixture(scope='module')
def toy(tmp_path_factory):
    "24 toy rows, the untrained tiny CLIP, a 32-latent TopK SAE trained 30 steps on their difference pairs."
    from mmpo_nb.clip import load_clip, save_clip
    from mmpo_nb.data import write_toy_dataset
    from mmpo_nb.sae import SAE, SAEConfig
    from mmpo_nb.selection import train_sae_for_dataset
    from mmpo_nb.viz import pair_store
    torch.set_num_threads(1)
    d = tmp_path_factory.mktemp('toy')
    data = write_toy_dataset(24, d/'toy', progress=False)
    save_clip(load_clip('mmpo-tiny', device='cpu').model, 'mmpo-tiny', d/'clip')
    run = train_sae_for_dataset(data, d/'clip', d/'sae', steps=30, batch_size=64, pool_size=8, progress=False, device='cpu',
                                sae_cfg=SAEConfig(d_v=64, d_t=64, d_sae=32, kind='topk', k=4))
    return dict(dir=d, sae=SAE.load(run/'sae'), store=pair_store(data, d/'clip', pool_size=8))


@pytest.fixture(scope='module')
def browser(toy):
    from mmpo_nb.widgets import LatentBrowser
    return LatentBrowser(toy['sae'], toy['store'], top=4, export_dir=toy['dir']/'export')


def test_every_latent_reachable_from_the_dropdown_shows_its_own_top_pairs(browser):
    s = browser.summ
    assert [v for _, v in browser.latent.options] == s.order            # sorted by activation frequency
    for k in s.order[:8]:
        browser.latent.value = k
        assert browser.current == k and browser.latent_id.value == k and f'latent {k}' in browser.header.value
        shown = [t.value for t in browser.pair_text]
        assert all(f"{float(s.codes[i, k]):.2f}" in t for i, t in zip(s.top[k, :4].tolist(), shown))
        assert all(im.value[:4] == b'\x89PNG' for row in browser.pair_imgs for im in row)


def test_factor_search_orders_latents_by_auroc(browser):
    for f in browser.summ.factor_names:
        if torch.isnan(browser.summ.auroc[:, browser.summ.factor_names.index(f)]).all(): continue
        browser.factor.value = f
        au = browser.summ.auroc[:, browser.summ.factor_names.index(f)].nan_to_num(-1)
        order = [v for _, v in browser.latent.options]
        assert browser.current == order[0] and float(au[order[0]]) == float(au.max())
        assert all(au[a] >= au[b] for a, b in zip(order, order[1:]))
    browser.factor.value = '(by frequency)'


def test_out_of_range_latent_is_one_message_not_a_traceback(browser, capsys):
    browser.latent.value = browser.summ.order[1]
    for bad in (-1, 32, 10_000):
        browser.latent_id.value = bad
        assert browser.current == browser.summ.order[1]                  # the view stays where it was
        assert 'out of range' in browser.status.value and 'latents 0..31' in browser.status.value
    assert 'Traceback' not in capsys.readouterr().err


def test_export_writes_the_current_latent_as_png(browser):
    from PIL import Image
    browser.latent.value = browser.summ.order[2]
    browser.export.click()
    f = browser.last_export
    assert f == browser.export_dir/f'latent_{browser.summ.order[2]}.png' and f.exists()
    assert Image.open(f).size[0] > 400 and 'exported' in browser.status.value


def test_store_without_images(toy):
    from mmpo_nb.widgets import LatentBrowser
    lb = LatentBrowser(toy['sae'], replace(toy['store'], refs=None), top=3, export_dir=toy['dir']/'export-noimg')
    assert 'no images' in lb.no_images.value and lb.error is None
    lb.latent.value = lb.summ.order[1]
    assert lb.current == lb.summ.order[1] and '<svg' in lb.stats.value
    lb.export.click()                                                   # the export still works, with 'no image' panels
    assert lb.last_export.exists()


def test_sae_that_does_not_fit_the_store(toy):
    from mmpo_nb.sae import SAE, SAEConfig
    from mmpo_nb.widgets import LatentBrowser
    from mmpo_nb.core import DataError
    with pytest.raises(DataError, match='d_v=32'):
        LatentBrowser(SAE(SAEConfig(d_v=32, d_t=64, d_sae=8, kind='topk', k=2)), toy['store'])


def test_negative_map_highlights_k_picks_per_query(toy):
    from mmpo_nb.viz import negative_map_data
    from mmpo_nb.widgets import NegativeMap
    st = toy['store']
    nm = NegativeMap(negative_map_data(toy['sae'], st.gallery[st.own], st.txt, st.gallery, exclude=st.own, k=2, pool_size=6), param=5)
    assert nm.n_highlighted == 24*2
    for q in (0, 7, 23):
        nm.query.value = q
        assert nm.n_highlighted == 2
    before = nm.image.value
    nm.param.value = 10                                                 # new perplexity: a new embedding and a new picture
    assert len(nm.cache.mem) == 2 and nm.image.value != before
    nm.param.value = 5                                                  # back: from the cache
    assert len(nm.cache.mem) == 2
    nm.method.value = 'umap'
    assert nm.param.description == 'neighbours' and len(nm.cache.mem) == 3 and nm.error is None


def test_dashboard_follows_a_trainer_in_another_process(tmp_path):
    "The trainer writes log.jsonl through loop.RunLog from a separate process; the live dashboard picks up every line."
    from mmpo_nb.widgets import TrainingDashboard
    run = tmp_path/'run'
    dash = TrainingDashboard(run, interval=0.2)
    assert 'does not exist' in dash.status.value and dash.error
    run.mkdir()
    dash.refresh_btn.click(); assert 'no log.jsonl' in dash.status.value
    (run/'log.jsonl').write_text('')
    dash.refresh_btn.click(); assert 'no complete line' in dash.status.value
    writer = textwrap.dedent(f"""
        import time
        from mmpo_nb.loop import RunLog
        log = RunLog({str(run)!r}, total=6, progress=False, tensorboard=False)
        for s in range(1, 7):
            log.write(s, {{'loss/total': 1/s, 'loss/image': 0.8/s, 'rewards/chosen': 0.1*s, 'rewards/rejected': -0.1*s,
                          'rewards/margins': 0.2*s, 'rewards/accuracies': min(1, s/4)}})
            if s % 3 == 0: log.write(s, {{'eval/pope_random_acc': 0.5 + 0.05*s}})
            time.sleep(0.3)
        log.close()
    """)
    dash.live.value = True                                              # the toggle starts the background thread
    p = subprocess.run([sys.executable, '-c', writer], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    for _ in range(400):
        if dash.n_lines == 8: break
        time.sleep(0.1)
    dash.live.value = False
    assert dash._thread is None and dash.n_lines == 8 and 'last step 6' in dash.status.value and dash.redraws >= 1
    from mmpo_nb.viz import read_run_log, panel_columns
    assert set(panel_columns(read_run_log(run))) == {'loss', 'rewards', 'margins', 'accuracy', 'eval'}


def test_views_show_as_static_html_outside_jupyter(browser):
    b = browser._repr_mimebundle_()
    assert 'application/vnd.jupyter.widget-view+json' in b and b['text/html'].count('<img src="data:image/png;base64,') == 8
    assert b['text/html'].count('<svg') == 2 and f'latent {browser.current}' in b['text/html']
