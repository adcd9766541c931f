"""Integration tests for `mmpo_nb.vlm` on tiny random configs of the real HF classes (toy LLaVA, LLaVA-1.5, Qwen2-VL, Qwen2.5-VL).

Every model is built from a config and saved to a temporary folder, then loaded back through `load_vlm`; nothing is downloaded.
"""
import json
import pytest
import torch
from PIL import Image
from transformers import (CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor,
                          Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor, Qwen2VLImageProcessor,
                          Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor)
from mmpo_nb.core import DataError
from mmpo_nb.vlm import (build_toy_tokenizer, build_tiny_llava, save_vlm, load_vlm, encode_batch, model_inputs, response_logps,
                         sum_logps, mean_logps, sentence_logps, add_lora, reference_logps, save_adapter, load_adapter, merge_adapter,
                         generate, image_attention, image_attention_ratio)

TEXTS = ["user assistant system", "Is there a red circle? Yes. No. Image1: Image2: a blue square is red"]
QWEN_SPECIALS = ['<|im_start|>', '<|im_end|>', '<|vision_start|>', '<|vision_end|>', '<|image_pad|>', '<|video_pad|>']
QWEN_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for c in message['content'] %}{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def _img(color, w=56, h=56): return Image.new('RGB', (w, h), color)
RED, BLUE, GREEN = _img((255, 0, 0)), _img((0, 0, 255), 84, 56), _img((0, 255, 0), 56, 84)
IMAGES = [[RED], [RED, BLUE], [], [GREEN, RED, BLUE]]
PROMPTS = ["Is there a red circle?", "Image1: <image> Image2: <image> Is there a blue square?", "Is there?", "Is there a red square?"]
RESPONSES = ["Yes.", "Image2 is a blue square. Image1 is red.", "No", "No. Image2 is red."]


def _qwen(version):
    "Tiny random Qwen2-VL / Qwen2.5-VL with a word-level tokenizer carrying Qwen's special tokens and chat template."
    tok = build_toy_tokenizer(TEXTS, extra_tokens=QWEN_SPECIALS, chat_template=QWEN_TEMPLATE, image_token='<|image_pad|>')
    tok.eos_token = '<|im_end|>'
    ids = {s: tok.convert_tokens_to_ids(s) for s in QWEN_SPECIALS}
    text = dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                rope_parameters={'rope_type': 'default', 'mrope_section': [2, 3, 3], 'rope_theta': 10000.0},
                pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=None)
    common = dict(text_config=text, image_token_id=ids['<|image_pad|>'], video_token_id=ids['<|video_pad|>'],
                  vision_start_token_id=ids['<|vision_start|>'], vision_end_token_id=ids['<|vision_end|>'])
    if version == '2':
        cfg = Qwen2VLConfig(vision_config=dict(depth=2, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2, patch_size=14,
                                               spatial_merge_size=2, temporal_patch_size=2), **common)
        M, P = Qwen2VLForConditionalGeneration, Qwen2VLProcessor
    else:
        cfg = Qwen2_5_VLConfig(vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, out_hidden_size=64, num_heads=2, patch_size=14,
                                                  spatial_merge_size=2, temporal_patch_size=2, window_size=56, fullatt_block_indexes=[1]), **common)
        M, P = Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor
    torch.manual_seed(0)
    ip = Qwen2VLImageProcessor(size={'shortest_edge': 56 * 56, 'longest_edge': 56 * 56 * 4})
    from transformers import Qwen2VLVideoProcessor
    return M(cfg).eval(), P(image_processor=ip, tokenizer=tok, video_processor=Qwen2VLVideoProcessor(), chat_template=QWEN_TEMPLATE)


def _llava15():
    "Tiny random LLaVA-1.5 layout: penultimate CLIP layer, CLS dropped, resize + centre crop in the image processor."
    tok = build_toy_tokenizer(TEXTS)
    vc = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2, image_size=32, patch_size=8,
                          hidden_act='quick_gelu')
    tc = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                     pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    cfg = LlavaConfig(vision_config=vc, text_config=tc, image_token_id=tok.convert_tokens_to_ids('<image>'), vision_feature_layer=-2,
                      vision_feature_select_strategy='default', image_seq_length=16)
    torch.manual_seed(0)
    ip = CLIPImageProcessor(size={'shortest_edge': 40}, crop_size={'height': 32, 'width': 32})
    return LlavaForConditionalGeneration(cfg).eval(), LlavaProcessor(image_processor=ip, tokenizer=tok, patch_size=8,
                                                                   vision_feature_select_strategy='default', num_additional_image_tokens=1,
                                                                   chat_template=tok.chat_template)


def _toy():
    return build_tiny_llava(build_toy_tokenizer(TEXTS), image_size=32, vision_width=32, vision_layers=2, vision_mlp=64,
                            text_width=64, text_layers=2, text_mlp=128)


BUILDERS = {'toy': _toy, 'llava15': _llava15, 'qwen2': lambda: _qwen('2'), 'qwen25': lambda: _qwen('2.5')}


@pytest.fixture(scope='module', params=[k for k in BUILDERS if k != 'toy'])   # the toy LLaVA: checked in nbs/03a_vlm.ipynb
def loaded(request, tmp_path_factory):
    "Build, save with `save_vlm`, and load back with `load_vlm`."
    m, p = BUILDERS[request.param]()
    folder = save_vlm(m, p, tmp_path_factory.mktemp(request.param) / 'vlm')
    m2, p2 = load_vlm(folder)
    return request.param, m, m2, p2, folder


def _naive(model, processor, images, prompts, responses):
    "Plain loop over samples: unpadded, full log_softmax."
    out = []
    for ims, p, r in zip(images, prompts, responses):
        one = encode_batch(processor, [ims], [p], [r])
        with torch.no_grad(): lp = model(**model_inputs(one)).logits[0, :-1].log_softmax(-1)
        out.append(lp.gather(-1, one['input_ids'][0, 1:, None])[:, 0][one['response_mask'][0, 1:]])
    return out


@pytest.mark.slow
def test_roundtrip_same_logits(loaded):
    name, m, m2, p2, folder = loaded
    assert type(m2) is type(m)
    b = encode_batch(p2, IMAGES, PROMPTS, RESPONSES)
    with torch.no_grad(): torch.testing.assert_close(m2(**model_inputs(b)).logits, m(**model_inputs(b)).logits)
    if name.startswith('qwen'):
        assert 'image_grid_thw' in b and 'mm_token_type_ids' in b
        assert b['image_token_counts'][1] == [4, 6] and b['image_token_counts'][3] == [6, 4, 6]   # 56x56, 84x56, 56x84 images
    else:
        assert b['pixel_values'].shape[0] == 6


@pytest.mark.slow
@pytest.mark.parametrize('side', ['right', 'left'])
def test_logps_match_loop(loaded, side):
    name, _, m, p, _ = loaded
    ref = _naive(m, p, IMAGES, PROMPTS, RESPONSES)
    b = encode_batch(p, IMAGES, PROMPTS, RESPONSES, padding_side=side)
    with torch.no_grad(): lp, mask = response_logps(m, b)
    for i, r in enumerate(ref): torch.testing.assert_close(lp[i][mask[i]], r, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(sum_logps(lp, mask), torch.stack([r.sum() for r in ref]), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(mean_logps(lp, mask), torch.stack([r.mean() for r in ref]), atol=1e-4, rtol=1e-4)
    sl, sm = sentence_logps(lp, b)
    assert sm.sum(1).tolist() == [1, 2, 1, 2]
    torch.testing.assert_close(sl.sum(-1), sum_logps(lp, mask), atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_generate_batched_equals_single(loaded):
    _, _, m, p, _ = loaded
    ims, prs = IMAGES[:2] + IMAGES[3:], PROMPTS[:2] + PROMPTS[3:]
    batched = generate(m, p, ims, prs, max_new_tokens=5)
    assert batched == [generate(m, p, [i], [q], max_new_tokens=5)[0] for i, q in zip(ims, prs)]


@pytest.mark.slow
def test_image_attention(loaded):
    _, _, m, p, _ = loaded
    b = encode_batch(p, IMAGES, PROMPTS, RESPONSES, padding_side='left')
    before = m.config._attn_implementation
    mass = image_attention(m, b, layer=-1)
    assert m.config._attn_implementation == before                   # switched back after the eager pass
    assert mass.shape == (4, 3)
    assert (mass[2] == 0).all() and (mass[0, 1:] == 0).all() and (mass[3] > 0).all()
    assert (mass.sum(-1) <= 1 + 1e-5).all()
    r = image_attention_ratio(mass[[0, 1, 3]], [0, 1, 2])
    assert torch.allclose(r[0], torch.tensor(1.)) and ((r > 0) & (r <= 1)).all()


@pytest.mark.slow
def test_lora_lm_only_reference_save_load_merge(loaded, tmp_path):
    name, _, _, _, folder = loaded
    m, p = load_vlm(folder)
    pm = add_lora(m, r=4, alpha=8)
    trainable = [n for n, q in pm.named_parameters() if q.requires_grad]
    assert trainable and all('lora_' in n and 'language_model' in n for n in trainable)
    assert not any('lora' in n for n, _ in pm.named_parameters() if 'vision' in n or 'visual' in n or 'projector' in n)
    b = encode_batch(p, IMAGES, PROMPTS, RESPONSES)
    with torch.no_grad():
        base = response_logps(pm, b)[0]
        for n, q in pm.named_parameters():
            if 'lora_B' in n: q.normal_(0, 0.05)
        pol = response_logps(pm, b)[0]
    assert (pol - base).abs().max() > 1e-3
    torch.testing.assert_close(reference_logps(pm, b)[0], base)        # adapter off == the model before LoRA
    save_adapter(pm, tmp_path / 'lora')
    pm2 = load_adapter(load_vlm(folder)[0], tmp_path / 'lora')
    with torch.no_grad(): torch.testing.assert_close(response_logps(pm2, b)[0], pol, atol=1e-5, rtol=1e-5)
    merged = merge_adapter(pm2)
    assert not any('lora' in n for n, _ in merged.named_parameters())
    with torch.no_grad(): torch.testing.assert_close(response_logps(merged, b)[0], pol, atol=1e-4, rtol=1e-4)


def test_lora_gradients_only_reach_adapters():
    m, p = _toy()
    pm = add_lora(m, r=2, alpha=4)
    b = encode_batch(p, [[_img((255, 0, 0), 32, 32)]], ["Is there a red circle?"], ["Yes."])
    lp, mask = response_logps(pm, b)
    (-sum_logps(lp, mask)).sum().backward()
    grads = {n: q.grad for n, q in pm.named_parameters() if q.grad is not None}
    assert grads and all('lora_' in n for n in grads)
    assert any(g.abs().sum() > 0 for n, g in grads.items() if 'lora_A' in n or 'lora_B' in n)


@pytest.mark.parametrize('drop, says', [('processor_config.json', 'image processor'),   # tokenizer.json: the notebook
                                        ('chat_template.jinja', 'chat template'), ('config.json', 'config.json'),
                                        ('model.safetensors', 'model weights')])
def test_missing_files_say_which(tmp_path, drop, says):
    m, p = _toy()
    folder = save_vlm(m, p, tmp_path / 'vlm')
    (folder / drop).unlink()
    with pytest.raises(DataError, match=f'missing: {says}'): load_vlm(folder)


def test_missing_folder():
    with pytest.raises(FileNotFoundError, match='not a folder'): load_vlm('/nonexistent/vlm')


@pytest.mark.slow
def test_qwen_raw_image_token_in_prompt_counts():
    m, p = _qwen('2')
    with pytest.raises(ValueError, match="sample 0: the rendered prompt has 2 image tokens '<\\|image_pad\\|>' but 1 images"):
        encode_batch(p, [[RED]], ["<|image_pad|> Is there?"], ["Yes"])


@pytest.mark.slow
def test_tower_from_registered_toy_clip():
    "The toy CLIP's ViT (mmpo_nb.clip's registered 'mmpo-tiny-vit') transfers exactly into a tiny LLaVA tower."
    pytest.importorskip('mmpo_nb.clip')  # registers 'mmpo-tiny-vit' with open_clip
    import open_clip
    from mmpo_nb.vlm import llava_kwargs_from_open_clip, init_vision_from_open_clip
    oc = open_clip.create_model('mmpo-tiny-vit').eval()
    kw = llava_kwargs_from_open_clip(oc.visual)
    m, p = build_tiny_llava(build_toy_tokenizer(TEXTS), **kw, text_width=64, text_layers=1, text_mlp=128)
    init_vision_from_open_clip(m, oc.visual)
    x = torch.randn(2, 3, kw['image_size'], kw['image_size'])
    with torch.no_grad():
        torch.testing.assert_close(m.model.vision_tower(pixel_values=x).pooler_output @ oc.visual.proj, oc.visual(x), atol=1e-5, rtol=1e-4)
    assert tuple(p.image_processor.image_mean) == tuple(kw['image_mean'])
