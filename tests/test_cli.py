"The console script: installed, lists its subcommands, each answers --help."
import re, subprocess, sys
import pytest
import mmpo_nb

def _run(*args):
    return subprocess.run(['mmpo', *args], capture_output=True, text=True)

def test_version_flag_prints_the_package_version():
    r = _run('--version')
    assert r.returncode == 0 and r.stdout.split()[-1] == mmpo_nb.__version__, r.stdout + r.stderr

def test_help_lists_subcommands():
    r = _run('--help')
    assert r.returncode == 0, r.stderr
    cmds = _subcommands(r.stdout)
    assert cmds == {'data', 'train', 'eval', 'select', 'demo', 'docs'}, cmds
    for c in cmds:
        h = _run(c, '--help')
        assert h.returncode == 0 and 'Usage' in h.stdout, (c, h.stderr)

def _subcommands(help_text):
    box = help_text.split('Commands')[1]
    return {m.group(1) for m in re.finditer(r'^│ (\w[\w-]*)\s', box, re.M)}

def test_group_subcommands():
    for group, subs in {'data': {'toy', 'check'}, 'train': {'clip', 'sft', 'sae'}, 'eval': {'clip', 'vlm'}}.items():
        r = _run(group, '--help')
        assert r.returncode == 0 and _subcommands(r.stdout) == subs, (group, r.stdout)
        for c in subs:
            h = _run(group, c, '--help')
            assert h.returncode == 0 and 'Usage' in h.stdout, (group, c, h.stderr)

def test_unknown_subcommand_fails():
    r = _run('no-such-command')
    assert r.returncode != 0
