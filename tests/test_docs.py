"""Docs site: `mmpo docs` builds a page per notebook with its headings.

README.md matching index.ipynb, and its two set-up commands, are checked by `.ci/run` itself (`mmpo docs --check-readme`
and the step that reads the test command), so they are not repeated here."""
import html, re, subprocess, sys
from pathlib import Path
import pytest
from fastcore.nbio import read_nb
from mmpo_nb.docsite import nb_headings, page_name, course_from_index

ROOT = Path(__file__).resolve().parents[1]
NBS = sorted(p for p in (ROOT/'nbs').glob('*.ipynb') if not p.name.startswith('_'))

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
    # the contents page and every sidebar list the pages in the course's order (index.ipynb's `## The course`), not by file name
    order = [page_name(l.nb) for l in course_from_index(ROOT/'nbs'/'index.ipynb')]
    for name in ('contents.html', 'toyworld.html', 'core.html'):
        html_ = (out/name).read_text()
        side = html_[html_.index('mm-sidebar'):html_.index('</aside>')]
        pos = [side.index(f'href="{p}"') for p in order]
        assert pos == sorted(pos), f"{name}: the sidebar is not in the course's order"
    main = contents[contents.index('mm-main'):]
    pos = [main.index(f'href="{p}"') for p in order]
    assert pos == sorted(pos), "contents.html does not list the pages in the course's order"
