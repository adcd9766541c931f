"Integration tests for mmpo_nb.clip: loading, embeddings, training round trip, bad input."
import json, subprocess, sys
import pytest
import torch
import open_clip
from mmpo_nb.clip import (load_clip, embed_images, embed_texts, train_clip, evaluate_clip, ClipTrainConfig, CHECKPOINT_NAME)
from mmpo_nb.toyworld import ToyWorld


def test_registered_configs_build():
    for name, dim in (('mmpo-tiny', 64), ('mmpo-tiny-vit', 64)):
        assert name in open_clip.list_models()
        clip = load_clip(name, device='cpu')
        w = ToyWorld()
        E = embed_images(clip, [w.render(w.scene(i)) for i in range(5)], batch_size=2)
        T = embed_texts(clip, ['a photo of a cup', 'a photo of a tree'])
        assert E.shape == (5, dim) and T.shape == (2, dim)
        assert torch.allclose(E.norm(dim=1), torch.ones(5), atol=1e-5)
        assert not E.requires_grad and E.dtype == torch.float32


@pytest.mark.parametrize('kwargs, msg', [
    (dict(name='ViT-Nope-1'), "unknown open_clip model name 'ViT-Nope-1'"),
    (dict(name='mmpo-tiny', pretrained='/no/such/ckpt.safetensors'), '/no/such/ckpt.safetensors'),
    (dict(name='hf-hub:timm/whatever'), 'never downloads'),
    (dict(name='local-dir:/no/such/folder'), '/no/such/folder'),
])
def test_load_clip_bad_input(kwargs, msg):
    with pytest.raises((ValueError, FileNotFoundError), match=msg.replace('.', r'\.')):
        load_clip(**kwargs)


def test_train_config_bad_input():
    with pytest.raises(ValueError, match='short_caption_p'): ClipTrainConfig(short_caption_p=2)
    with pytest.raises(ValueError, match="'nope'"): ClipTrainConfig(model='nope')


@pytest.mark.slow
def test_train_save_load_roundtrip(tmp_path):
    "A short run writes a folder that open_clip loads by name (after registration) and by `local-dir:` in a fresh process."
    cfg = ClipTrainConfig(n_scenes=192, batch_size=64, epochs=1)
    ckpt = train_clip(cfg, out=tmp_path/'clip', progress=False, eval_n=0)
    assert ckpt == tmp_path/'clip'/CHECKPOINT_NAME and ckpt.is_file()
    assert {'open_clip_config.json', 'train_config.json', 'metrics.json'} <= {p.name for p in ckpt.parent.iterdir()}
    clip = load_clip('mmpo-tiny', pretrained=ckpt, device='cpu')
    ref = embed_texts(clip, ['a photo of a cup']).tolist()
    code = ("import open_clip, torch, json, sys\n"
            f"m, _, pre = open_clip.create_model_and_transforms('local-dir:{ckpt.parent}')\n"
            f"tok = open_clip.get_tokenizer('local-dir:{ckpt.parent}')\n"
            "with torch.no_grad(): e = m.eval().encode_text(tok(['a photo of a cup']), normalize=True)\n"
            "print(json.dumps(e.tolist()))\n")
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True).stdout
    assert torch.allclose(torch.tensor(json.loads(out.strip().splitlines()[-1])), torch.tensor(ref), atol=1e-6)
    r = evaluate_clip(clip, n=24)
    assert set(r) == {'zeroshot/acc', 'zeroshot/acc_balanced', 'presence/auroc', 'presence/auroc_centered'}
    assert all(0 <= v <= 1 for v in r.values())
