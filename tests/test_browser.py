"""Real browser: JupyterLab on localhost runs the widget tutorial notebook in headless Chromium (Playwright), a control is
changed and the rendered widget must change; two `mmpo docs` pages must show their math rendered (no `$...$` left).

Needs Debian's `chromium` (`apt-get install chromium`; `.ci/run` installs it) and the `playwright` Python package;
Playwright's own browser download is not used. Screenshots are kept in `$MMPO_ARTIFACTS` (default: the test's tmp folder)."""
import json, os, re, shutil, socket, subprocess, sys, time, urllib.request
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which('chromium') or '/usr/bin/chromium'
ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
        '--disable-component-update', '--disable-sync']
pytestmark = [pytest.mark.browser, pytest.mark.slow,
              pytest.mark.skipif(not Path(CHROMIUM).exists(), reason='chromium is not installed (apt-get install chromium)')]
playwright = pytest.importorskip('playwright.sync_api')


@pytest.fixture(scope='module')
def artifacts(tmp_path_factory):
    d = Path(os.environ.get('MMPO_ARTIFACTS') or tmp_path_factory.mktemp('browser-artifacts'))
    d.mkdir(parents=True, exist_ok=True)
    print(f"browser screenshots in {d}")
    return d


@pytest.fixture(scope='module')
def chromium(tmp_path_factory):
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield b
        b.close()


def _free_port():
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


@pytest.fixture(scope='module')
def lab(tmp_path_factory):
    "JupyterLab serving a copy of the widget tutorial notebook on localhost."
    root = tmp_path_factory.mktemp('lab')
    shutil.copy(ROOT/'nbs'/'08a_widgets.ipynb', root/'widgets.ipynb')
    port, token = _free_port(), 'mmpo-browser-test'
    settings = root/'.lab-settings'/'@jupyterlab'/'notebook-extension'
    settings.mkdir(parents=True)
    (settings/'tracker.jupyterlab-settings').write_text(json.dumps({'windowingMode': 'none'}))   # every cell in the DOM, not only the visible ones
    env = {**os.environ, 'JUPYTERLAB_SETTINGS_DIR': str(root/'.lab-settings'), 'PYTHONPATH': str(ROOT) + os.pathsep + os.environ.get('PYTHONPATH', ''), 'MMPO_DEMO_RUN': '',
           'OMP_NUM_THREADS': '1', 'MKL_NUM_THREADS': '1', 'JUPYTER_CONFIG_DIR': str(root/'.jupyter')}
    log = open(root/'lab.log', 'w')
    proc = subprocess.Popen([sys.executable, '-m', 'jupyterlab', '--no-browser', f'--port={port}', '--ip=127.0.0.1', '--allow-root',
                             f'--IdentityProvider.token={token}', f'--ServerApp.root_dir={root}', '--ServerApp.open_browser=False',
                             '--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate'],
                            cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f'http://127.0.0.1:{port}'
    for _ in range(240):
        try:
            urllib.request.urlopen(f'{url}/api/status?token={token}', timeout=2); break
        except Exception:
            if proc.poll() is not None: raise RuntimeError((root/'lab.log').read_text()) from None
            time.sleep(0.5)
    else: raise RuntimeError('JupyterLab did not start:\n' + (root/'lab.log').read_text())
    yield dict(url=url, token=token, root=root)
    proc.terminate()
    try: proc.wait(20)
    except subprocess.TimeoutExpired: proc.kill()


def _idle_after_run_all(page, shots:Path, timeout_s=900):
    "Wait until no cell shows `[*]` and the last code cell has an execution count (a progress screenshot each minute)."
    t0, prompts = time.time(), []
    while time.time() - t0 < timeout_s:
        prompts = page.locator('.jp-CodeCell .jp-InputPrompt').all_inner_texts()
        if prompts and not any('*' in p for p in prompts) and re.search(r'\[\d+\]', prompts[-1]): return
        if int(time.time() - t0) % 60 < 2: page.screenshot(path=str(shots/'jupyterlab-progress.png'))
        page.wait_for_timeout(1000)
    page.screenshot(path=str(shots/'jupyterlab-timeout.png'))
    raise TimeoutError(f'cells still running after {timeout_s} s: {prompts}')


def test_widget_tutorial_runs_and_reacts_in_jupyterlab(chromium, lab, artifacts):
    page = chromium.new_page(viewport={'width': 1400, 'height': 1000})
    page.goto(f"{lab['url']}/lab/tree/widgets.ipynb?token={lab['token']}")
    page.locator('.jp-Notebook').first.wait_for(timeout=120_000)
    page.get_by_text(re.compile(r'ipykernel\)? \| Idle')).first.wait_for(timeout=180_000)     # the kernel is up
    page.wait_for_timeout(2000)
    if page.locator('.jp-Dialog').count():                                                    # e.g. a kernel chooser
        page.locator('.jp-Dialog .jp-mod-accept').first.click()
    page.get_by_role('menuitem', name='Run', exact=True).click()
    page.get_by_role('menuitem', name='Run All Cells', exact=True).click()
    page.wait_for_timeout(3000)
    page.screenshot(path=str(artifacts/'jupyterlab-run-all.png'))
    _idle_after_run_all(page, artifacts)
    errors = page.locator('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]').all_inner_texts()
    assert not any('Traceback' in e or 'Error' in e for e in errors), errors
    header = page.locator('.widget-html-content', has_text='fires on').first
    header.scroll_into_view_if_needed(); header.wait_for(timeout=60_000)
    before, latent_before = header.inner_text(), re.search(r'latent (\d+)', header.inner_text()).group(1)
    box = page.locator('.widget-inline-hbox', has=page.locator('label', has_text=re.compile(r'^id$'))).first
    page.screenshot(path=str(artifacts/'jupyterlab-latent-browser-before.png'))
    new = '0' if latent_before != '0' else '1'
    box.locator('input').fill(new); box.locator('input').press('Enter')
    page.wait_for_function('([el, old]) => el.innerText !== old', arg=[header.element_handle(), before], timeout=30_000)
    assert f'latent {new}' in header.inner_text()
    page.screenshot(path=str(artifacts/'jupyterlab-latent-browser-after.png'))
    assert (artifacts/'jupyterlab-latent-browser-after.png').stat().st_size > 10_000
    page.close()


def test_docs_pages_render_math_without_network(chromium, artifacts, tmp_path):
    src = tmp_path/'nbs'; src.mkdir()
    for nb in ('04_objectives.ipynb', '05a_selection.ipynb'): shutil.copy(ROOT/'nbs'/nb, src/nb)
    r = subprocess.run([sys.executable, '-m', 'mmpo_nb.cli', 'docs', '--nbs', str(src), '--out', str(tmp_path/'site'), '--no-exec', '--workers', '1'],
                       cwd=ROOT, capture_output=True, text=True, env={**os.environ, 'PYTHONPATH': str(ROOT)})
    assert r.returncode == 0, r.stdout + r.stderr
    page = chromium.new_page(viewport={'width': 1400, 'height': 1000})
    page.route(re.compile(r'^https?://'), lambda route: route.abort())    # offline: any network request fails
    for name in ('objectives.html', 'selection.html'):
        page.goto((tmp_path/'site'/name).as_uri())
        n_math = page.locator('math').count()
        assert n_math > 10, f'{name}: only {n_math} <math> elements'
        text = page.evaluate('''() => { const b = document.querySelector('.mm-main').cloneNode(true);
                                        b.querySelectorAll('code, pre, script, style').forEach(e => e.remove()); return b.innerText; }''')
        left = re.findall(r'\$[^$\s][^$\n]{0,80}?\$', text)
        assert not left, f'{name}: unrendered math {left[:5]}'
        w = page.evaluate("() => Math.max(...[...document.querySelectorAll('math')].map(m => m.getBoundingClientRect().width))")
        assert w > 20, 'MathML is not laid out'
        side = page.locator('.mm-sidebar')
        assert side.is_visible() and side.locator('li.mm-current').count() == 1 and side.locator('ul.mm-toc li').count() >= 3
        page.screenshot(path=str(artifacts/f'docs-{name}.png'), full_page=False)
    page.close()
