"""Every model source loads into a module + card with the right structure and preprocessing."""

import json

import pytest
import torch
from conftest import TINY, tiny_timm

from vitedge.errors import InputError, ModelLoadError
from vitedge.models.load import load


def _same_output(module_a, module_b, size=32, batch=2):
    x = torch.randn(batch, 3, size, size)
    with torch.no_grad():
        return torch.allclose(module_a(x), module_b(x), atol=1e-5)


@pytest.mark.parametrize("wrap", ["raw", "model", "state_dict", "model_ema", "ddp"])
def test_timm_checkpoint_layouts(tmp_path, wrap):
    reference = tiny_timm()
    state = reference.state_dict()
    if wrap == "ddp":
        payload = {f"module.{k}": v for k, v in state.items()}
    elif wrap == "raw":
        payload = state
    else:
        payload = {wrap: state, "epoch": 3}
    path = tmp_path / "ckpt.pth"
    torch.save(payload, path)
    loaded = load("timm:vit_tiny_patch16_224", weights=path, model_kwargs=TINY)
    assert _same_output(loaded.module, reference)
    card = loaded.card
    s = card.structure
    assert (s.is_vit, s.patch_size, s.embed_dim, s.depth, s.num_heads, s.mlp_hidden) == \
        (True, 8, 32, 2, 2, 128)
    assert card.num_classes == 10 and card.preprocessing.input_size == (32, 32)
    assert card.params == sum(p.numel() for p in reference.parameters())
    # 17 tokens x (qkv 3*32*32 + proj 32*32 + fc1 32*128 + fc2 128*32) per block, plus patch
    # embedding and head; attention score/value products add a little on top.
    linear = 2 * 17 * (3 * 1024 + 1024 + 4096 + 4096) + 16 * 32 * 192 + 32 * 10
    assert linear < card.macs < linear * 1.1


def test_safetensors_and_imagenet_labels(tiny_ckpt):
    loaded = load("timm:vit_tiny_patch16_224", weights=tiny_ckpt, model_kwargs=TINY)
    assert loaded.card.source["kind"] == "timm"
    full = load("timm:deit_tiny_patch16_224", model_kwargs={"depth": 1}, compute_macs=False)
    assert full.card.num_classes == 1000 and full.card.labels[0] == "tench"
    cfg = full.module.pretrained_cfg
    assert full.card.preprocessing.interpolation == cfg["interpolation"] == "bicubic"
    assert full.card.preprocessing.crop_pct == cfg["crop_pct"]
    assert full.card.preprocessing.mean == tuple(cfg["mean"])


@pytest.mark.parametrize("name,kwargs,expect", [
    ("deit_tiny_distilled_patch16_224", {}, {"distillation_token": True, "num_prefix_tokens": 2}),
    ("vit_tiny_patch16_224", {"class_token": False, "global_pool": "avg"},
     {"class_token": False, "global_pool": "avg", "num_prefix_tokens": 0}),
    ("vit_base_patch16_224.mae", {}, {"class_token": True}),
    ("vit_tiny_r_s16_p8_224", {"img_size": 64, "patch_size": 1}, {"hybrid_stem": True}),
])
def test_vit_variants(name, kwargs, expect):
    overrides = dict(TINY)
    overrides.update(kwargs)
    if name.endswith(".mae"):
        overrides["num_classes"] = 0
    loaded = load(f"timm:{name}", model_kwargs=overrides)
    s = loaded.card.structure
    assert s.is_vit
    for key, value in expect.items():
        assert getattr(s, key) == value, key
    if s.hybrid_stem:  # effective patch = CNN stride x projection patch
        assert s.patch_size * loaded.module.patch_embed.grid_size[0] == 64
        assert s.patch_size > 1
    if name.endswith(".mae"):
        assert loaded.card.num_classes is None
        assert any("features" in w for w in loaded.card.warnings)


def test_non_vit_is_accepted_with_warning():
    loaded = load("timm:resnet10t", model_kwargs={"num_classes": 10}, compute_macs=False)
    assert not loaded.card.structure.is_vit and loaded.card.structure.token_layout == "none"
    assert any("has no attention layers (not a transformer)" in w for w in loaded.card.warnings)


def test_torchvision_vit(tmp_path):
    kwargs = {"image_size": 32, "patch_size": 8, "num_layers": 2, "num_heads": 2,
              "hidden_dim": 32, "mlp_dim": 64, "num_classes": 10}
    first = load("torchvision:vit_b_16", model_kwargs=kwargs)
    path = tmp_path / "tv.pth"
    torch.save(first.module.state_dict(), path)
    loaded = load("torchvision:vit_b_16", weights=path, model_kwargs=kwargs)
    assert _same_output(first.module, loaded.module)
    s = loaded.card.structure
    assert (s.patch_size, s.embed_dim, s.depth, s.num_heads, s.mlp_hidden) == (8, 32, 2, 2, 64)
    pre = loaded.card.preprocessing
    assert pre.interpolation == "bilinear" and pre.input_size == (32, 32)


def _save_hf(tmp_path, kind):
    import transformers

    torch.manual_seed(0)
    common = dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                  num_attention_heads=2, intermediate_size=64)
    if kind == "vit":
        model = transformers.ViTForImageClassification(
            transformers.ViTConfig(**common, num_labels=3, id2label={0: "a", 1: "b", 2: "c"},
                                   label2id={"a": 0, "b": 1, "c": 2}))
    elif kind == "deit":
        model = transformers.DeiTForImageClassificationWithTeacher(
            transformers.DeiTConfig(**common, num_labels=3))
    else:
        model = transformers.ViTMAEModel(transformers.ViTMAEConfig(**common))
    model.save_pretrained(tmp_path)
    if kind == "vit":
        transformers.ViTImageProcessor(size={"height": 32, "width": 32}, resample=3,
                                       image_mean=[0.5] * 3, image_std=[0.5] * 3
                                       ).save_pretrained(tmp_path)
    return model.eval()


@pytest.mark.parametrize("kind", ["vit", "deit", "mae"])
def test_huggingface_folders(tmp_path, kind):
    original = _save_hf(tmp_path, kind)
    loaded = load(tmp_path)
    card = loaded.card
    assert card.structure.is_vit and card.structure.depth == 2 and card.structure.num_heads == 2
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = loaded.module(x)
    if kind == "vit":
        assert card.labels == ["a", "b", "c"]
        assert card.preprocessing.resize_mode == "squash"
        assert card.preprocessing.interpolation == "bicubic"
        with torch.no_grad():
            assert torch.allclose(out, original(pixel_values=x).logits, atol=1e-5)
    elif kind == "deit":
        assert card.structure.distillation_token and out.shape == (2, 3)
    else:
        assert card.num_classes is None and out.shape == (2, 32)
        with torch.no_grad():  # deterministic despite MAE's random masking
            assert torch.equal(out, loaded.module(x))


def test_torch_export_program(tmp_path):
    model = tiny_timm()
    path = tmp_path / "m.pt2"
    torch.export.save(torch.export.export(model, (torch.randn(1, 3, 32, 32),)), path)
    with pytest.raises(ModelLoadError, match="torch.export archive, which PyTorch loads with pickle"):
        load(path)  # torch.export.load unpickles: a crafted .pt2 would run code
    loaded = load(path, trust_pickle=True)
    assert loaded.card.preprocessing.input_size == (32, 32)
    assert loaded.card.structure.is_vit and loaded.card.structure.depth == 2
    assert loaded.card.num_classes == 10 and loaded.card.macs > 0
    assert any("records no preprocessing" in w for w in loaded.card.warnings)
    assert _same_output(loaded.module, model, batch=1)  # the program was saved for batch 1


def test_torchscript(tmp_path):
    model = tiny_timm()
    path = tmp_path / "m.pt"
    torch.jit.save(torch.jit.trace(model, torch.randn(1, 3, 32, 32)), path)
    with pytest.raises(ModelLoadError, match="TorchScript archive, which PyTorch loads with pickle"):
        load(path)
    loaded = load(path, preprocessing={"input_size": [32, 32]}, trust_pickle=True)
    assert loaded.card.structure.is_vit and loaded.card.structure.embed_dim == 32
    assert _same_output(loaded.module, model)


def test_pickled_module_needs_trust(tmp_path):
    model = tiny_timm()
    path = tmp_path / "whole.pt"
    torch.save(model, path)
    with pytest.raises(ModelLoadError, match="--trust-pickle"):
        load(path)
    loaded = load(path, trust_pickle=True)
    assert loaded.card.structure.num_heads == 2 and loaded.card.preprocessing.input_size == (32, 32)
    assert _same_output(loaded.module, model)


def test_onnx_source(tiny_onnx_artifact):
    loaded = load(tiny_onnx_artifact / "model.onnx")
    card = loaded.card
    assert loaded.module is None and card.format == "onnx"
    assert card.structure.is_vit and card.structure.patch_size == 8 and card.structure.depth == 2
    assert card.num_classes == 10 and card.preprocessing.input_size == (32, 32)
    torch_card = load("timm:vit_tiny_patch16_224", model_kwargs=TINY).card
    # onnxslim shares identical initializers (e.g. untrained LayerNorm weights), so the ONNX
    # count can be a little lower than PyTorch's
    assert 0.95 < card.params / torch_card.params <= 1.0
    assert abs(card.macs - torch_card.macs) / torch_card.macs < 0.05
    with pytest.raises(ModelLoadError, match="needs a PyTorch model"):
        loaded.torch_module("export")


def test_artifact_round_trip_and_tamper(tiny_onnx_artifact, tmp_path):
    import shutil

    loaded = load(tiny_onnx_artifact)
    assert loaded.card.lineage[-1]["step"] == "export"
    copy = tmp_path / "copy"
    shutil.copytree(tiny_onnx_artifact, copy)
    with open(copy / "model.onnx", "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(InputError, match="does not match the hash"):
        load(copy)


def test_builtin_model_card():
    loaded = load("builtin:digits-vit")
    card = loaded.card
    assert card.labels == [str(d) for d in range(10)]
    assert card.preprocessing.input_size == (32, 32)
    assert card.metrics["heldout_top1"] >= 0.97
    assert json.loads(card.to_json())["structure"]["patch_size"] == 4


def test_builtin_model_accuracy_on_heldout():
    from conftest import HELDOUT

    from vitedge.data import iter_batches, open_images

    loaded = load("builtin:digits-vit")
    images = open_images(HELDOUT)
    correct = total = 0
    for batch, records in iter_batches(images, loaded.card.preprocessing, 128):
        with torch.no_grad():
            pred = loaded.module(torch.from_numpy(batch)).argmax(1).numpy()
        correct += sum(int(p) == r.label for p, r in zip(pred, records))
        total += len(records)
    assert total == 540
    assert correct / total >= 0.97


def test_mac_counting_never_takes_a_load_down(monkeypatch):
    import torch.utils.flop_counter as flop_counter

    class Broken(flop_counter.FlopCounterMode):
        def __enter__(self):
            raise AssertionError("Expected gradient function to be set")

    monkeypatch.setattr(flop_counter, "FlopCounterMode", Broken)
    loaded = load("timm:vit_tiny_patch16_224", model_kwargs=TINY)
    assert loaded.card.macs is None and any("MACs could not be counted" in w for w in loaded.card.warnings)


def test_siglip_attention_pool_counts_its_macs():
    loaded = load("timm:vit_base_patch16_siglip_224", model_kwargs={**TINY, "patch_size": 8})
    assert loaded.card.macs and loaded.card.macs > 0 and loaded.card.structure.global_pool == "map"


@pytest.mark.parametrize("name, kwargs, expect", [
    ("eva02_tiny_patch14_224", {"img_size": 28, "patch_size": 14},
     {"family": "eva", "patch_size": 14, "mlp_hidden": 85, "num_prefix_tokens": 1, "global_pool": "avg"}),
    ("beit_base_patch16_224", {"patch_size": 8}, {"family": "beit", "patch_size": 8, "mlp_hidden": 128}),
    ("vit_small_patch14_reg4_dinov2", {"img_size": 28, "patch_size": 14, "num_classes": 0},
     {"register_tokens": 4, "num_prefix_tokens": 5, "class_token": True}),
    ("swin_tiny_patch4_window7_224", {"patch_size": 4, "window_size": 4, "depths": [1, 1],
                                      "num_heads": [1, 2], "depth": None},
     {"family": "swin", "hierarchical": True, "depth": 2, "num_heads": 1, "embed_dim": 32}),
])
def test_every_family_is_recognized(name, kwargs, expect):
    overrides = {**TINY, **kwargs}
    overrides = {k: v for k, v in overrides.items() if v is not None}
    loaded = load(f"timm:{name}", model_kwargs=overrides)
    s = loaded.card.structure
    assert s.is_vit and s.depth and s.embed_dim == 32
    for key, value in expect.items():
        assert getattr(s, key) == value, key
    assert not any("not a transformer" in w for w in loaded.card.warnings)


def test_hugging_face_dinov2_structure(tmp_path):
    import transformers

    transformers.Dinov2Model(transformers.Dinov2Config(image_size=28, patch_size=14, hidden_size=32,
                                                       num_hidden_layers=2, num_attention_heads=2)
                             ).save_pretrained(tmp_path)
    s = load(tmp_path).card.structure
    assert (s.patch_size, s.embed_dim, s.depth, s.num_heads, s.mlp_hidden) == (14, 32, 2, 2, 128)


@pytest.mark.parametrize("name, kwargs, expect", [
    # conv-attention hybrids: read from their attention modules and timm's feature_info stages
    ("mobilevit_xxs", {"img_size": 64},
     {"family": "mobilevit", "token_layout": "pyramid", "stage_attention": [0, 0, 2, 4, 0], "num_heads": 4,
      "hybrid_stem": True, "input_size": (64, 64)}),
    ("efficientformerv2_s0", {"img_size": 64, "depths": [1, 1, 2, 2], "embed_dims": [16, 24, 32, 48], "num_vit": 1},
     {"family": "efficientformer_v2", "token_layout": "pyramid", "stage_widths": [16, 24, 32, 48],
      "stage_depths": [1, 1, 2, 2], "patch_size": 4}),
    ("pvt_v2_b0", {"depths": [1, 1, 1, 1], "embed_dims": [16, 24, 32, 48], "num_heads": [1, 1, 2, 2]},
     {"family": "pvt_v2", "stage_attention": [1, 1, 1, 1], "stage_heads": [1, 1, 2, 2], "hybrid_stem": False}),
    ("twins_pcpvt_small", {"img_size": 64, "depths": [1, 1, 1, 1], "embed_dims": [16, 24, 32, 48],
                           "num_heads": [1, 1, 2, 2]},  # timm lists its stages as "block.N"
     {"family": "twins", "token_layout": "pyramid", "stage_widths": [16, 24, 32, 48]}),
    ("xcit_nano_12_p16_224", {"img_size": 32, "embed_dim": 32, "depth": 2, "num_heads": 2, "cls_attn_layers": 1},
     {"family": "xcit", "token_layout": "class-attention", "depth": 3, "embed_dim": 32, "stage_widths": None}),
    ("cait_xxs24_224", {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2,
                        "depth_token_only": 1},
     {"family": "cait", "token_layout": "class-attention", "depth": 3}),
    ("crossvit_tiny_240", {"img_size": [32, 32], "patch_size": [8, 16], "embed_dim": [16, 32], "depth": [[1, 1, 0]],
                           "num_heads": [2, 2], "mlp_ratio": [2, 2, 2], "crop_scale": False},
     {"family": "crossvit", "token_layout": "cross-scale"}),
    ("efficientvit_m0", {"img_size": 64, "embed_dim": [16, 32, 48], "depth": [1, 1, 1], "num_heads": [2, 2, 2],
                         "window_size": [2, 2, 2]},  # LocalWindowAttention wraps the attention: counted once
     {"family": "efficientvit_msra", "stage_attention": [1, 1, 1], "depth": 3}),
    ("edgenext_xx_small", {"depths": [1, 1, 1, 1], "dims": [16, 24, 32, 48], "heads": [2, 2, 2, 2]},
     {"family": "edgenext", "stage_attention": [0, 1, 1, 1]}),
])
def test_hybrid_transformers_are_transformers(name, kwargs, expect):
    loaded = load(f"timm:{name}", model_kwargs={"num_classes": 10, **kwargs}, compute_macs=False)
    s = loaded.card.structure
    assert s.is_vit and s.attention_layers == s.depth and s.depth > 0
    for key, value in expect.items():
        actual = loaded.card.preprocessing.input_size if key == "input_size" else getattr(s, key)
        assert actual == value, (key, actual)
    assert not any("not a transformer" in w or "not a Vision Transformer" in w for w in loaded.card.warnings)
    assert loaded.card.to_dict()["structure"]["token_layout"] == s.token_layout  # on the card as written


@pytest.mark.parametrize("name, kwargs", [
    ("repvit_m0_9", {"embed_dim": [16, 24, 32, 48], "depth": [1, 1, 1, 1]}),  # ViT design choices, no attention
    ("mobilenetv3_small_050", {}),
    ("resnet10t", {}),  # timm's CNN attention (squeeze-excite) is not a transformer's
    ("seresnext26t_32x4d", {}),
])
def test_models_without_attention_are_not_transformers(name, kwargs):
    s = load(f"timm:{name}", model_kwargs={"num_classes": 10, **kwargs}, compute_macs=False).card.structure
    assert not s.is_vit and s.token_layout == "none" and s.attention_layers is None


def test_hugging_face_mobilevit_and_swin_folders_load(tmp_path):
    import numpy as np
    import torch
    import transformers

    from vitedge.preprocess import preprocess

    mobilevit = tmp_path / "mobilevit"
    transformers.MobileViTForImageClassification(transformers.MobileViTConfig(
        num_labels=10, image_size=64, hidden_sizes=[32, 40, 48], neck_hidden_sizes=[8, 8, 16, 16, 24, 32, 64])
    ).save_pretrained(mobilevit)
    processor = transformers.MobileViTImageProcessor(size={"shortest_edge": 72}, crop_size={"height": 64, "width": 64})
    processor.save_pretrained(mobilevit)
    loaded = load(mobilevit)
    s, pre = loaded.card.structure, loaded.card.preprocessing
    assert s.is_vit and s.family == "mobilevit" and s.token_layout == "pyramid" and s.stage_attention == [0, 0, 2, 4, 3]
    # MobileViT's checkpoints take BGR, rescaled to 0..1 and not normalized: as its processor does
    assert pre.channel_order == "BGR" and pre.mean == (0.0, 0.0, 0.0) and pre.std == (1.0, 1.0, 1.0)
    image = (np.random.default_rng(0).random((90, 120, 3)) * 255).astype(np.uint8)
    ours = preprocess(image, pre)
    theirs = processor(images=image, return_tensors="np")["pixel_values"]
    assert ours.shape[-2:] == theirs.shape[-2:] and np.abs(ours - theirs).max() < 0.05
    with torch.no_grad():
        assert loaded.module(torch.from_numpy(ours[None] if ours.ndim == 3 else ours)).shape == (1, 10)

    swin = tmp_path / "swin"
    transformers.SwinModel(transformers.SwinConfig(image_size=32, patch_size=4, embed_dim=16, depths=[1, 1],
                                                   num_heads=[1, 2], window_size=4)).save_pretrained(swin)
    loaded = load(swin)  # an encoder: its features are the pooled output
    s = loaded.card.structure
    assert (s.family, s.hierarchical, s.stage_widths, s.stage_heads) == ("swin", True, [16, 32], [1, 2])
    assert loaded.card.num_classes is None and any("pooled features" in w for w in loaded.card.warnings)
    with torch.no_grad():
        assert loaded.module(torch.zeros(2, 3, 32, 32)).shape == (2, 32)


def test_an_onnx_hybrid_is_recognized_by_its_attention_matmuls(tmp_path):
    """An ONNX file carries no modules: a graph that multiplies two activations (attention) is a
    transformer even without a patch convolution (MobileViT's stem is a 3x3 stride-2 conv); a
    convolution-only graph is not, and says it has no attention layers."""
    import torch

    class Attending(torch.nn.Module):
        def __init__(self, attend: bool):
            super().__init__()
            self.attend = attend
            self.stem = torch.nn.Conv2d(3, 8, 3, stride=2, padding=1)
            self.qkv, self.head = torch.nn.Linear(8, 24), torch.nn.Linear(8, 10)

        def forward(self, x):
            tokens = self.stem(x).flatten(2).transpose(1, 2)
            if self.attend:
                q, k, v = self.qkv(tokens).chunk(3, dim=-1)
                tokens = tokens + torch.softmax(q @ k.transpose(1, 2), dim=-1) @ v
            return self.head(tokens.mean(1))

    for attend in (True, False):
        path = tmp_path / f"{attend}.onnx"
        torch.onnx.export(Attending(attend).eval(), (torch.randn(1, 3, 16, 16),), str(path), dynamo=False,
                          opset_version=18, input_names=["input"], output_names=["logits"])
        card = load(path, compute_macs=False).card
        assert card.structure.is_vit is attend
        assert any("has no attention layers" in w for w in card.warnings) is (not attend)


@pytest.mark.parametrize("source, kwargs, fragment", [
    ("timm:mobilevit_xxs", ["img_size=0"], "timm:mobilevit_xxs cannot be built with these model kwargs (ValueError"),
    ("timm:pvt_v2_b0", ["depths=[1,1]"], "timm:pvt_v2_b0 cannot be built with these model kwargs (AssertionError"),
    ("timm:deit_tiny_patch16_224", ["no_such_argument=1"], "does not accept these model kwargs"),
])
def test_model_kwargs_a_constructor_refuses_are_one_line(source, kwargs, fragment):
    from conftest import assert_user_error
    from typer.testing import CliRunner

    from vitedge.cli.app import app

    args = ["inspect", source]
    for kwarg in kwargs:
        args += ["-k", kwarg]
    assert_user_error(CliRunner().invoke(app, args), fragment)
