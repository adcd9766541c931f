"The console script: installed, lists its subcommands, each answers --help."
import re, subprocess
from typer.testing import CliRunner
import mmpo_nb
from mmpo_nb.cli import app

COMMANDS = {'data', 'train', 'eval', 'select', 'demo', 'study', 'docs'}
GROUPS = {'data': {'toy', 'check', 'mdpo', 'aspo', 'misp', 'miadpo'},
          'train': {'clip', 'sft', 'sae', 'dpo', 'mdpo', 'misp', 'aspo', 'miadpo'},
          'eval': {'clip', 'vlm'}}

def _subcommands(help_text):
    box = help_text.split('Commands')[1]
    return {m.group(1) for m in re.finditer(r'^│ (\w[\w-]*)\s', box, re.M)}

def test_installed_script_lists_its_subcommands_and_version():
    r = subprocess.run(['mmpo', '--help'], capture_output=True, text=True)
    assert r.returncode == 0 and _subcommands(r.stdout) == COMMANDS, r.stdout + r.stderr
    r = subprocess.run(['mmpo', '--version'], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.split()[-1] == mmpo_nb.__version__, r.stdout + r.stderr

def test_every_command_answers_help():
    # in-process: one import of the CLI instead of one interpreter per command
    runner = CliRunner()
    for c in COMMANDS:
        h = runner.invoke(app, [c, '--help'], terminal_width=100)
        assert h.exit_code == 0 and 'Usage' in h.output, (c, h.output)
    for group, subs in GROUPS.items():
        r = runner.invoke(app, [group, '--help'], terminal_width=100)
        assert r.exit_code == 0 and _subcommands(r.output) == subs, (group, r.output)
        for c in subs:
            h = runner.invoke(app, [group, c, '--help'], terminal_width=100)
            assert h.exit_code == 0 and 'Usage' in h.output, (group, c, h.output)

def test_unknown_subcommand_fails():
    r = CliRunner().invoke(app, ['no-such-command'])
    assert r.exit_code != 0 and 'no-such-command' in r.output
