import numpy as np
import pytest
from PIL import Image

from vitedge.card import Interpolation, Preprocessing, ResizeMode
from vitedge.data import BatchStats, iter_batches, open_images
from vitedge.errors import InputError
from vitedge.preprocess import UnreadableImageError, load_image, preprocess

IMAGENET = Preprocessing(input_size=(224, 224))


def _photo(width=320, height=240, seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    base = np.linspace(0, 255, width)[None, :, None] * np.ones((height, 1, 3))
    noise = rng.normal(0, 30, (height, width, 3))
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))


@pytest.mark.parametrize("interp", ["bicubic", "bilinear"])
@pytest.mark.parametrize("crop_pct", [0.875, 0.9, 1.0])
def test_matches_timm_eval_transform(interp, crop_pct):
    from timm.data import create_transform

    pre = Preprocessing(input_size=(224, 224), interpolation=Interpolation(interp), crop_pct=crop_pct)
    transform = create_transform(input_size=(3, 224, 224), interpolation=interp, crop_pct=crop_pct,
                                 mean=pre.mean, std=pre.std, is_training=False)
    image = _photo()
    ours = preprocess(image, pre)
    theirs = transform(image).numpy()
    assert ours.shape == theirs.shape == (3, 224, 224)
    assert np.abs(ours - theirs).max() < 1e-5


def test_squash_mode_ignores_aspect():
    pre = Preprocessing(input_size=(32, 48), resize_mode=ResizeMode.SQUASH, crop_pct=1.0)
    out = preprocess(_photo(100, 30), pre)
    assert out.shape == (3, 32, 48)


def test_bgr_frame_equals_rgb_image():
    image = _photo()
    rgb = np.asarray(image)
    from_frame = preprocess(rgb[:, :, ::-1].copy(), IMAGENET, frame_channel_order="BGR")
    assert np.array_equal(from_frame, preprocess(image, IMAGENET))


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "I;16", "1"])
def test_odd_image_modes_are_converted(tmp_path, mode):
    gray = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (64, 1))
    if mode == "I;16":
        image = Image.fromarray(gray.astype(np.uint16) * 257)
        assert image.mode == "I;16"
        suffix = ".png"
    else:
        image = Image.fromarray(gray, mode="L").convert(mode)
        suffix = ".tif" if mode == "CMYK" else ".png"
    path = tmp_path / f"img{suffix}"
    image.save(path)
    loaded = load_image(path)
    assert loaded.mode == "RGB"
    pixels = np.asarray(loaded)
    if mode in ("L", "LA", "I;16", "RGBA"):
        # 16-bit is rescaled, not clipped to white: the gradient survives
        assert abs(int(pixels[0, 10, 0]) - int(gray[0, 10])) <= 1
        assert pixels[0, 0, 0] < 5 and pixels[0, -1, 0] > 240


def test_unreadable_files_are_skipped_and_counted(tmp_path):
    _photo(40, 40).save(tmp_path / "good.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    data = open_images(tmp_path)
    assert len(data.records) == 2
    stats = BatchStats()
    batches = list(iter_batches(data, Preprocessing(input_size=(32, 32)), 4, stats))
    assert stats.read == 1 and len(stats.skipped) == 1 and "broken.png" in stats.skipped[0]
    assert batches[0][0].shape == (1, 3, 32, 32)
    with pytest.raises(UnreadableImageError):
        load_image(tmp_path / "broken.png")


def test_imagefolder_glob_and_sampling(tmp_path):
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(3):
            _photo(20, 20, seed=i).save(tmp_path / cls / f"{i}.jpg")
    data = open_images(tmp_path)
    assert data.class_names == ["cat", "dog"]
    assert [r.label for r in data.records] == [0, 0, 0, 1, 1, 1]
    first, again = data.sample(4, seed=1), data.sample(4, seed=1)
    assert [r.path for r in first.records] == [r.path for r in again.records]
    assert len(open_images(str(tmp_path / "*" / "*.jpg")).records) == 6
    with pytest.raises(InputError, match="no image files"):
        open_images(str(tmp_path / "*.nothing"))
    with pytest.raises(InputError, match="does not exist"):
        open_images(tmp_path / "missing")


def _photos():
    """Real photos that scikit-learn ships, cut to different aspect ratios (landscape, portrait, odd sizes)."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    china, flower = (Image.fromarray(a) for a in load_sample_images().images)  # 640x427 JPEGs
    return [china, flower.crop((0, 0, 300, 427)), china.crop((100, 50, 600, 425)),
            flower.resize((333, 500)).crop((0, 0, 333, 499))]


@pytest.mark.parametrize("model_type", ["vit", "deit", "dinov2", "vit_mae", "vit_msn"])
def test_hugging_face_processors_are_read_exactly(tmp_path, model_type):
    import transformers

    from vitedge.models.hf import _preprocessing

    # each model type's own processor with the settings its hub checkpoints use
    processor = {
        "vit": transformers.ViTImageProcessor(size={"height": 224, "width": 224}),
        "deit": transformers.DeiTImageProcessor(),  # 256x256 (aspect ignored), then crop 224
        "dinov2": transformers.BitImageProcessor(size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224},
                                                 resample=3, image_mean=[0.485, 0.456, 0.406],
                                                 image_std=[0.229, 0.224, 0.225]),
        "vit_mae": transformers.ViTImageProcessor(image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225]),
        "vit_msn": transformers.ViTImageProcessor(resample=3),
    }[model_type]
    processor.save_pretrained(tmp_path)
    pre, _ = _preprocessing(tmp_path, transformers.ViTConfig())
    pil = transformers.AutoImageProcessor.from_pretrained(tmp_path, backend="pil")
    default = transformers.AutoImageProcessor.from_pretrained(tmp_path)  # torchvision backend in v5
    for photo in _photos():
        ours = preprocess(photo, pre)
        assert np.abs(ours - pil(images=photo, return_tensors="np")["pixel_values"][0]).max() < 1e-5
        # the torchvision backend resamples a little differently from Pillow itself (both HF's)
        theirs = default(images=photo, return_tensors="np")["pixel_values"][0]
        assert np.abs(ours - theirs).max() < 0.035 and np.abs(ours - theirs).mean() < 0.002
