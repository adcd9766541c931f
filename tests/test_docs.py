"Docs site and README: `mmpo docs` builds a page per notebook with its headings; README.md is generated from index.ipynb."
import html, re, subprocess, sys
from pathlib import Path
import pytest
from fastcore.nbio import read_nb
from mmpo_nb.docsite import build_docs, nb_headings, page_name, readme_from_index

ROOT = Path(__file__).resolve().parents[1]
NBS = sorted(p for p in (ROOT/'nbs').glob('*.ipynb') if not p.name.startswith('_'))

def test_readme_is_generated_from_index():
    assert (ROOT/'README.md').read_text() == readme_from_index(ROOT/'nbs'/'index.ipynb'), "run `mmpo docs --readme`"

def test_readme_has_two_setup_commands():
    blocks = re.findall(r"```bash\n(.*?)\n```", (ROOT/'README.md').read_text(), re.S)
    assert len(blocks) == 2
    assert all(b.count('\n') == 0 for b in blocks), "each set-up command is one line"
    assert 'mmpo demo' in blocks[0] and 'nbdev-test --flags slow' in blocks[1] and 'pytest tests' in blocks[1]

@pytest.mark.slow
def test_docs_site_has_every_notebook_and_its_headings(tmp_path):
    out = tmp_path/'_docs'
    # `slow` cells are skipped here to keep the suite short (nbdev-test runs them); `mmpo docs` runs them by default.
    r = subprocess.run([sys.executable, '-m', 'mmpo_nb.cli', 'docs', '--nbs', str(ROOT/'nbs'), '--out', str(out), '--skip', 'gpu long slow'],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert (out/'index.html').exists() and (out/'contents.html').exists()
    contents = (out/'contents.html').read_text()
    for nb in NBS:
        page = out/page_name(nb)
        assert page.exists(), f"no page for {nb.name}"
        text = html.unescape(page.read_text())
        body = re.sub(r'<[^>]+>', ' ', text)
        heads = re.findall(r'<h[1-6][^>]*>(.*?)</h[1-6]>', text, re.S)
        for h in nb_headings(read_nb(nb)):
            words = re.findall(r'[A-Za-z]{3,}', re.sub(r'\$[^$]*\$', ' ', h))   # markdown and code spans render differently (math as MathML); the words stay
            assert any(all(w in re.sub(r'<[^>]+>', ' ', x) for w in words) for x in heads), f"{page.name} lacks heading {h!r}"
        assert body.strip()
        if nb.name != 'index.ipynb': assert f'href="{page.name}"' in contents
