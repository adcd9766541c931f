"Integration tests of mmpo_nb.sft: data layout, config errors, a micro train/resume/evaluate round trip."
import json
import pytest
import torch
from mmpo_nb.toyworld import ToyWorld
from mmpo_nb.vlm import build_toy_tokenizer, build_tiny_llava, encode_batch, load_vlm
from mmpo_nb.sft import (SFTConfig, SampleEncoder, build_sft_data, sft_collate, sft_samples, world_texts, train_sft,
                         evaluate_vlm, length_grouped_batches, class_token_ids)

MICRO = dict(vision_width=32, vision_layers=1, vision_mlp=64, text_width=32, text_layers=1, text_mlp=64)


@pytest.fixture(scope='module')
def tiny():
    w = ToyWorld()
    tok = build_toy_tokenizer(world_texts(w, 30))
    model, proc = build_tiny_llava(tok, image_size=48, patch_size=16, **MICRO)
    return w, tok, model, proc


def test_samples_match_encode_batch(tiny):
    w, tok, model, proc = tiny
    s = w.scene(3); img = w.render(s)
    enc = SampleEncoder(proc, img)
    samples = sft_samples(w, s, n_qa=3, caption_p=1.0)
    for (ids, labels), (p, r) in zip(enc(samples), samples):
        ref = encode_batch(proc, [[img]], [p], [r])
        assert ids == ref['input_ids'][0].tolist()
        assert [l != -100 for l in labels] == ref['response_mask'][0].tolist()


def test_collate_and_loss(tiny):
    w, tok, model, proc = tiny
    d = build_sft_data(w, proc, 6, progress=False, n_qa=2)
    b = sft_collate(d, list(range(5)), tok.pad_token_id)
    assert (b['labels'][b['attention_mask'] == 0] == -100).all()
    loss = model(**b).loss
    assert torch.isfinite(loss)


def test_class_tokens(tiny):
    w, tok, *_ = tiny
    assert len(set(class_token_ids(tok, w.classes))) == len(w.classes)
    with pytest.raises(ValueError, match='not single known tokens'): class_token_ids(tok, ['zebra'])


def test_batches_cover_epoch():
    bs = length_grouped_batches(list(range(100)), 8, seed=1)
    assert sorted(j for b in bs for j in b) == list(range(100))


@pytest.mark.parametrize('kw,msg', [(dict(image_size=50), 'multiple of patch_size'), (dict(batch_size=0), 'batch_size'),
                                    (dict(world=dict(n_classes=40)), 'n_classes'), (dict(lr=0), 'lr')])
def test_config_errors(kw, msg):
    with pytest.raises(ValueError, match=msg): SFTConfig(**kw)


@pytest.mark.slow
def test_train_resume_evaluate(tmp_path):
    cfg = SFTConfig(name='micro', n_scenes=48, n_qa=2, vocab_scenes=30, vision_warmup_steps=3, vision_warmup_batch=8,
                    steps=4, batch_size=8, save_every=2, threads=1, **MICRO)
    ck = train_sft(cfg, out=tmp_path/'run', progress=False, max_minutes=0)
    assert ck.name == 'checkpoint-2'
    final = train_sft(cfg, out=tmp_path/'run', progress=False)
    assert final.name == 'final' and (final/'sft_config.json').exists()
    assert len(json.loads((final/'train_log.json').read_text())['loss']) == 4
    assert train_sft(cfg, out=tmp_path/'run', progress=False) == final      # finished runs are not retrained
    m, p = load_vlm(final)
    r = evaluate_vlm(m, p, ToyWorld(), n=3, max_new_tokens=6, qa_kinds=('count',))
    for k in ('pope/random/acc', 'pope/popular/acc', 'pope/adversarial/acc', 'chair/s', 'chair/i', 'qa/count/acc'):
        assert 0 <= r[k] <= 1
