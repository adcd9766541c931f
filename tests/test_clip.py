"What the 03_clip notebook cannot show: a saved CLIP loads in a fresh process, and `mmpo eval clip` on bad checkpoints."
import json, subprocess, sys
import torch
from mmpo_nb.clip import load_clip, embed_texts, save_clip, CHECKPOINT_NAME


def test_saved_clip_loads_in_a_fresh_process(tmp_path):
    "open_clip reads the folder by `local-dir:` in a process where mmpo_nb never registered its configs."
    ckpt = save_clip(load_clip('mmpo-tiny', device='cpu').model, 'mmpo-tiny', tmp_path/'clip')
    assert ckpt == tmp_path/'clip'/CHECKPOINT_NAME
    ref = embed_texts(load_clip('mmpo-tiny', pretrained=ckpt, device='cpu'), ['a photo of a cup']).tolist()
    code = ("import open_clip, torch, json\n"
            "assert 'mmpo-tiny' not in open_clip.list_models()\n"
            f"m, _, pre = open_clip.create_model_and_transforms('local-dir:{ckpt.parent}')\n"
            f"tok = open_clip.get_tokenizer('local-dir:{ckpt.parent}')\n"
            "with torch.no_grad(): e = m.eval().encode_text(tok(['a photo of a cup']), normalize=True)\n"
            "print(json.dumps(e.tolist()))\n")
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True).stdout
    assert torch.allclose(torch.tensor(json.loads(out.strip().splitlines()[-1])), torch.tensor(ref), atol=1e-6)


def test_eval_clip_bad_checkpoints(tmp_path):
    "A corrupt file, a missing file and a wrong model each give one `error:` line naming the file, and exit 2."
    bad = tmp_path/'clip'/CHECKPOINT_NAME; bad.parent.mkdir(); bad.write_bytes(b'\x00garbage' * 32)
    for arg in (bad, bad.parent, tmp_path/'missing.safetensors'):
        r = subprocess.run(['mmpo', 'eval', 'clip', str(arg), '--n', '4'], capture_output=True, text=True)
        assert r.returncode == 2, r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith('error:') and str(arg.name) in lines[0], r.stderr
