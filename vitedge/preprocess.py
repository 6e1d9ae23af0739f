"""The one preprocessing implementation: image -> normalized CHW float32, driven by the card.

Calibration, evaluation, export parity checks and the camera loop all call `preprocess`, so a
preprocessing mismatch cannot masquerade as a quantization drop.

Resizing uses Pillow rather than OpenCV on purpose: timm and torchvision eval transforms
resize with Pillow (antialiased), and checkpoints' accuracy is tied to that exact resampling.
OpenCV frames (BGR uint8 arrays) are accepted and converted.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vitedge.card import (
    CropRounding,
    Interpolation,
    Layout,
    PixelType,
    Preprocessing,
    ResizeMode,
)
from vitedge.errors import InputError

if TYPE_CHECKING:
    from PIL import Image as PILImage


class UnreadableImageError(InputError):
    """A file that is not a decodable image (data sources count these and move on)."""


# Pillow's own warning threshold (~89.5 megapixels): a 20000x20000 PNG of 1 MB would decode to
# 1.2 GB of pixels. Checked from the header, before decoding, on every path (Pillow and OpenCV).
DEFAULT_MAX_IMAGE_PIXELS = 89_478_485
MAX_PIXELS_VARIABLE = "VITEDGE_MAX_IMAGE_PIXELS"


def max_image_pixels() -> int:
    """The largest image (width x height) vitedge decodes; raise it with VITEDGE_MAX_IMAGE_PIXELS."""
    text = os.environ.get(MAX_PIXELS_VARIABLE)
    if text is None:
        return DEFAULT_MAX_IMAGE_PIXELS
    if not text.strip().isdigit() or int(text) < 1:
        raise InputError(f"{MAX_PIXELS_VARIABLE}={text!r} is not a positive whole number of pixels",
                         f"e.g. {MAX_PIXELS_VARIABLE}=200000000 (200 megapixels)")
    return int(text)


def check_image_size(width: int, height: int, what: object) -> None:
    limit = max_image_pixels()
    if width * height > limit:
        raise UnreadableImageError(
            f"{what} is {width}x{height} ({width * height / 1e6:.0f} MP), above the "
            f"{limit / 1e6:.1f} MP limit", f"raise it with {MAX_PIXELS_VARIABLE} if the image is genuine")


def _open_checked(path: str | Path) -> PILImage.Image:
    """Open an image file lazily (header only) and refuse it when it is too large to decode."""
    import warnings

    from PIL import Image, UnidentifiedImageError

    Image.MAX_IMAGE_PIXELS = max(max_image_pixels(), DEFAULT_MAX_IMAGE_PIXELS)  # Pillow's own guard
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            handle = Image.open(path)
    except FileNotFoundError:
        raise UnreadableImageError(f"image {path} does not exist") from None
    except Image.DecompressionBombError as exc:  # Pillow's own guard (twice our limit) said it first
        import re

        pixels = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{int(pixels.group(1)) / 1e6:.0f} MP, " if pixels else ""
        raise UnreadableImageError(f"{path} is {size}above the {max_image_pixels() / 1e6:.1f} MP limit",
                                   f"raise it with {MAX_PIXELS_VARIABLE} if the image is genuine") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise UnreadableImageError(f"{path} is not a readable image ({exc})") from None
    try:
        check_image_size(*handle.size, path)
    except BaseException:
        handle.close()
        raise
    return handle


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) from the file's header, refused above the pixel limit."""
    with _open_checked(path) as handle:
        return handle.size


def _pil_resample(interpolation: Interpolation) -> int:
    from PIL import Image

    return {
        Interpolation.NEAREST: Image.Resampling.NEAREST,
        Interpolation.BILINEAR: Image.Resampling.BILINEAR,
        Interpolation.BICUBIC: Image.Resampling.BICUBIC,
        Interpolation.LANCZOS: Image.Resampling.LANCZOS,
    }[interpolation]


def to_rgb(image: PILImage.Image) -> PILImage.Image:
    """Any Pillow mode -> 8-bit RGB.

    Grayscale, palette, CMYK and alpha go through Pillow's own conversion (alpha dropped, as
    timm's and torchvision's loaders do). 16-bit and float images are rescaled first: Pillow
    would clip them to 255 and turn every pixel white.
    """
    from PIL import Image

    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        if image.mode == "F" and values.size and values.max() <= 1.0:
            values = values * 255.0
        elif image.mode != "F" and values.size and values.max() > 255:
            values = values / 257.0  # full 16-bit range onto 8 bits
        gray = np.clip(np.rint(values), 0, 255).astype(np.uint8)
        image = Image.fromarray(gray, mode="L")
    if image.mode != "RGB":
        image = image.convert("RGB")
    return image


def load_image(path: str | Path) -> PILImage.Image:
    """Decode an image file into upright RGB (EXIF orientation applied), or raise
    UnreadableImageError saying why (too large too)."""
    from PIL import Image, ImageOps

    try:
        with _open_checked(path) as handle:
            handle.load()
            # a phone stores a portrait photo sideways with an EXIF orientation; OpenCV's imread
            # applies it too, so every decoder in the pipeline sees the photo upright
            return to_rgb(ImageOps.exif_transpose(handle))
    except Image.DecompressionBombError:
        raise UnreadableImageError(f"{path} is larger than the pixel limit",
                                   f"raise it with {MAX_PIXELS_VARIABLE}") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise UnreadableImageError(f"{path} is not a readable image ({exc})") from None


def load_frame(path: str | Path) -> np.ndarray:
    """An image file as an OpenCV-style BGR uint8 frame, decoded like every other image."""
    return np.ascontiguousarray(np.asarray(load_image(path))[:, :, ::-1])


def _as_pil(image: Any, channel_order: str) -> PILImage.Image:
    from PIL import Image

    if isinstance(image, (str, Path)):
        return load_image(image)
    if isinstance(image, Image.Image):
        return to_rgb(image)
    array = np.asarray(image)
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise InputError(f"frame of shape {array.shape} is not HxW, HxWx1, HxWx3 or HxWx4",
                         "pass an image path, a Pillow image, or an OpenCV/NumPy frame")
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    array = array[:, :, :3]
    if array.dtype == np.uint16:
        array = (array / 257.0).round()
    if array.dtype != np.uint8:
        array = np.clip(array, 0, 255).astype(np.uint8)
    if channel_order == "BGR":
        import cv2  # 5x faster than a NumPy flip + copy on camera-sized frames; same pixels

        array = cv2.cvtColor(np.ascontiguousarray(array), cv2.COLOR_BGR2RGB)
    return Image.fromarray(np.ascontiguousarray(array), mode="RGB")


def geometry(source_size: tuple[int, int], pre: Preprocessing) -> tuple[int, int, int, int]:
    """(resized width, resized height, crop left, crop top) for an image of `source_size`
    (width, height): the one computation of the card's geometry, used by `resize_and_crop` and
    by graphs that resize inside (vitedge.compile.ingraph)."""
    height, width = pre.input_size
    if pre.resize_mode is ResizeMode.SQUASH:
        return width, height, 0, 0
    if pre.resize_mode is ResizeMode.SQUASH_CROP:
        new_h, new_w = pre.resize_size or (math.floor(height / pre.crop_pct), math.floor(width / pre.crop_pct))
    elif height == width or pre.resize_size is not None:
        # timm: scale_size = floor(size / crop_pct); torchvision Resize(int) and Hugging Face
        # `shortest_edge` scale the shorter side to it and the longer to int(scale * long / short).
        scale = pre.resize_size[0] if pre.resize_size else math.floor(height / pre.crop_pct)
        src_w, src_h = source_size
        if src_w <= src_h:
            new_w, new_h = scale, int(scale * src_h / src_w)
        else:
            new_w, new_h = int(scale * src_w / src_h), scale
    else:
        new_h, new_w = math.floor(height / pre.crop_pct), math.floor(width / pre.crop_pct)
    if pre.crop_rounding is CropRounding.FLOOR:
        left, top = (new_w - width) // 2, (new_h - height) // 2
    else:
        left, top = int(round((new_w - width) / 2.0)), int(round((new_h - height) / 2.0))
    return new_w, new_h, left, top


def resize_and_crop(image: PILImage.Image, pre: Preprocessing) -> PILImage.Image:
    """Geometry only, exactly as timm/torchvision eval transforms (or the Hugging Face image
    processor the card was read from) do it."""
    height, width = pre.input_size
    new_w, new_h, left, top = geometry(image.size, pre)
    if (new_w, new_h) != image.size:
        image = image.resize((new_w, new_h), resample=_pil_resample(pre.interpolation))
    return image.crop((left, top, left + width, top + height))


def preprocess(image: Any, pre: Preprocessing, *, frame_channel_order: str = "RGB") -> np.ndarray:
    """One image -> float32 array (3, H, W) ready for the model.

    `image` is a path, a Pillow image, or an HxW[xC] array; `frame_channel_order` says how an
    array's channels are ordered (OpenCV frames are "BGR").
    """
    pil = resize_and_crop(_as_pil(image, frame_channel_order), pre)
    pixels = np.asarray(pil, dtype=np.float32) * np.float32(pre.scale)
    if pre.channel_order == "BGR":
        pixels = pixels[:, :, ::-1]  # mean/std are given in the model's channel order
    mean = np.asarray(pre.mean, dtype=np.float32)
    std = np.asarray(pre.std, dtype=np.float32)
    pixels = (pixels - mean) / std
    return np.ascontiguousarray(pixels.transpose(2, 0, 1))


def preprocess_batch(images: Sequence[Any], pre: Preprocessing, *,
                     frame_channel_order: str = "RGB") -> np.ndarray:
    return np.stack([preprocess(img, pre, frame_channel_order=frame_channel_order)
                     for img in images])


# ------------------------------------------------------------ graphs with the preprocessing inside
def parse_size(text: str, option: str, example: str) -> tuple[int, int]:
    """'480x640' (or '480,640') -> (height, width), or the one-line error naming `option`."""
    parts = text.lower().replace(",", "x").split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise InputError(f"{option} {text!r} is not HEIGHTxWIDTH", f"e.g. {option} {example}")
    return int(parts[0]), int(parts[1])


@dataclass(frozen=True)
class PixelInput:
    """What a bundle compiled with `--preprocess-in-graph` takes: raw pixel values 0..255.

    `size` is (height, width) of the frames the graph takes. Without `resize` it is the model's
    input size and the client resizes and crops (the graph does scale, mean/std and channel
    order); with `resize` the graph also resizes and crops from `size` (a fixed capture size) as
    the card's geometry says.
    """

    size: tuple[int, int]
    layout: Layout = Layout.NHWC
    channel_order: str = "RGB"  # of the frames the graph takes
    dtype: PixelType = PixelType.UINT8
    resize: bool = False

    def shape(self) -> tuple[int, int, int]:
        height, width = self.size
        return (height, width, 3) if self.layout is Layout.NHWC else (3, height, width)

    def to_dict(self) -> dict[str, Any]:
        return {"size": list(self.size), "layout": str(self.layout), "channel_order": self.channel_order,
                "dtype": str(self.dtype), "resize": self.resize}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PixelInput:
        return cls(size=(int(data["size"][0]), int(data["size"][1])), layout=Layout(data["layout"]),
                   channel_order=data["channel_order"], dtype=PixelType(data["dtype"]),
                   resize=bool(data["resize"]))

    def describe(self) -> str:
        height, width = self.size
        return (f"{self.dtype} {self.layout} {self.channel_order} {height}x{width} pixels"
                + (" (resized and cropped in the graph)" if self.resize else ""))

    def _arrange(self, rgb: np.ndarray) -> np.ndarray:
        """HxWx3 RGB uint8 -> this contract's channel order, layout and dtype."""
        if self.channel_order == "BGR":
            rgb = rgb[:, :, ::-1]
        if self.layout is Layout.NCHW:
            rgb = rgb.transpose(2, 0, 1)
        return np.ascontiguousarray(rgb, dtype=np.dtype(str(self.dtype)))

    def from_image(self, image: Any, pre: Preprocessing, *, frame_channel_order: str = "RGB") -> np.ndarray:
        """One image (path, Pillow image or frame) as this graph takes it. Without `resize` the
        geometry is vitedge's own (Pillow); with it, a frame of the capture size goes in as it is
        and any other size is first resized to it (aspect not kept: compile for the camera's size)."""
        height, width = self.size
        array = np.asarray(image) if isinstance(image, np.ndarray) else None
        if self.resize and array is not None and array.dtype == np.uint8 and \
                array.shape == (height, width, 3):  # a camera frame at the capture size: as is
            if frame_channel_order != self.channel_order:
                array = array[:, :, ::-1]
            if self.layout is Layout.NCHW:
                array = array.transpose(2, 0, 1)
            return np.ascontiguousarray(array, dtype=np.dtype(str(self.dtype)))
        pil = _as_pil(image, frame_channel_order)
        if not self.resize:
            pil = resize_and_crop(pil, pre)
        elif pil.size != (width, height):
            pil = pil.resize((width, height), resample=_pil_resample(pre.interpolation))
        return self._arrange(np.asarray(pil))

    def from_normalized(self, batch: np.ndarray, pre: Preprocessing) -> np.ndarray:
        """A normalized NCHW float32 batch (what `preprocess` returns) back to the pixels it was
        made from: exact, since those were whole 0..255 values and float32 keeps them to ~1e-4.
        Graphs that resize inside take frames at their capture size, which a normalized batch no
        longer holds."""
        if self.resize:
            height, width = self.size
            raise InputError(f"this bundle resizes inside its graph and takes raw {height}x{width} "
                             "frames, not images already preprocessed to the model's size",
                             "use vitedge predict or run (they send raw frames), or compile a "
                             "bundle without --frame-size to compare it on preprocessed images")
        mean = np.asarray(pre.mean, dtype=np.float32)[:, None, None]
        std = np.asarray(pre.std, dtype=np.float32)[:, None, None]
        pixels = np.clip(np.rint((batch * std + mean) / np.float32(pre.scale)), 0, 255).astype(np.uint8)
        if pre.channel_order == "BGR":
            pixels = pixels[:, ::-1]  # the model's order -> RGB
        return np.stack([self._arrange(image.transpose(1, 2, 0)) for image in pixels])
