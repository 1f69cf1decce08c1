"""Calibration images: a folder of PNG files plus a `preprocess.yaml` becomes one model input array.

Decoding (a small PNG reader: no imaging library is a dependency), resizing and normalising live here;
`calibration.py` decides where data comes from and checks it against the model's inputs.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from deploysparse.errors import CalibrationError


@dataclass(frozen=True)
class Preprocess:
    """How a folder of images becomes a model input (`preprocess.yaml`)."""

    input: str | None
    size: tuple[int, int] | None
    mean: tuple[float, ...]
    std: tuple[float, ...]
    scale: float
    layout: str
    dtype: np.dtype
    grayscale: bool


def _read_preprocess(folder: Path) -> Preprocess:
    spec_path = folder / "preprocess.yaml"
    if not spec_path.exists():
        raise CalibrationError(
            f"{folder}: an image folder needs a preprocess.yaml (see calibration/README.md)"
        )
    try:
        spec = yaml.safe_load(spec_path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise CalibrationError(f"{spec_path}: not valid YAML ({exc})") from exc
    if not isinstance(spec, dict):
        raise CalibrationError(f"{spec_path}: expected a mapping of options")
    known = {"input", "resize", "mean", "std", "scale", "layout", "dtype", "grayscale"}
    unknown = sorted(set(spec) - known)
    if unknown:
        raise CalibrationError(
            f"{spec_path}: unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )
    layout = str(spec.get("layout", "NCHW")).upper()
    if layout not in ("NCHW", "NHWC"):
        raise CalibrationError(f"{spec_path}: layout must be NCHW or NHWC, got {layout}")
    size = spec.get("resize")
    if size is not None:
        try:
            height, width = (
                int(v) for v in (size if isinstance(size, list) else str(size).lower().split("x"))
            )
        except (ValueError, TypeError) as exc:
            raise CalibrationError(f"{spec_path}: resize must be HxW (e.g. 32x32), got {size!r}") from exc
        if height <= 0 or width <= 0:
            raise CalibrationError(f"{spec_path}: resize must be positive sizes HxW, got {size!r}")
        size = (height, width)
    mean = _numbers(spec_path, "mean", spec.get("mean", [0.0]))
    std = _numbers(spec_path, "std", spec.get("std", [1.0]))
    if any(v == 0 for v in std):
        raise CalibrationError(f"{spec_path}: std must not be 0 (every pixel is divided by it)")
    (scale,) = _numbers(spec_path, "scale", spec.get("scale", 1 / 255))
    try:
        dtype = np.dtype(spec.get("dtype", "float32"))
    except TypeError as exc:
        raise CalibrationError(f"{spec_path}: dtype {spec.get('dtype')!r} is not a numpy dtype") from exc
    if dtype.kind != "f":
        raise CalibrationError(f"{spec_path}: dtype must be a float type (float32, float16), got {dtype}")
    name = spec.get("input")
    if name is not None and not isinstance(name, str):
        raise CalibrationError(f"{spec_path}: input must be an input name, got {name!r}")
    grayscale = spec.get("grayscale", False)
    if not isinstance(grayscale, bool):
        raise CalibrationError(f"{spec_path}: grayscale must be true or false, got {grayscale!r}")
    return Preprocess(
        input=name,
        size=size,
        mean=mean,
        std=std,
        scale=scale,
        layout=layout,
        dtype=dtype,
        grayscale=grayscale,
    )


def _numbers(spec_path: Path, key: str, value: object) -> tuple[float, ...]:
    """A number or a list of numbers, all finite."""
    values = _as_list(value)
    if not values or not all(
        isinstance(v, int | float) and not isinstance(v, bool) and np.isfinite(v) for v in values
    ):
        raise CalibrationError(f"{spec_path}: {key} must be a finite number or a list of them, got {value!r}")
    return tuple(float(v) for v in values)


def _as_list(value: object) -> list:
    return value if isinstance(value, list) else [value]


def read_image_folder(folder: Path, input_names: list[str]) -> dict[str, np.ndarray]:
    """{input name: (N, ...) array} from the folder's PNG images, preprocessed as its
    preprocess.yaml says (the model input it feeds, resize, mean/std, scale, layout, dtype)."""
    prep = _read_preprocess(folder)
    name = prep.input or input_names[0]
    if prep.input is None and len(input_names) != 1:
        raise CalibrationError(
            f"{folder}/preprocess.yaml: the model has several inputs; name one with `input:`"
        )
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".png")
    if not files:
        raise CalibrationError(f"{folder}: no .png images found")
    images = [_preprocess(_read_png(path), prep, path) for path in files]
    shapes = {img.shape for img in images}
    if len(shapes) > 1:
        raise CalibrationError(
            f"{folder}: images differ in size {sorted(shapes)}; set `resize: HxW` in preprocess.yaml"
        )
    return {name: np.stack(images).astype(prep.dtype)}


def _preprocess(image: np.ndarray, prep: Preprocess, path: Path) -> np.ndarray:
    """HxWxC uint8 -> resized, scaled, normalised float array in the requested layout."""
    if prep.grayscale and image.shape[2] >= 3:
        image = (image[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114]))[..., None]
    elif image.shape[2] in (2, 4):
        image = image[..., :-1]
    pixels = image.astype(np.float64)
    if prep.size is not None:
        pixels = _resize_bilinear(pixels, prep.size)
    channels = pixels.shape[2]
    mean, std = np.asarray(prep.mean), np.asarray(prep.std)
    if mean.size not in (1, channels) or std.size not in (1, channels):
        raise CalibrationError(f"{path}: mean/std have {mean.size}/{std.size} values for {channels} channels")
    pixels = (pixels * prep.scale - mean) / std
    return pixels.transpose(2, 0, 1) if prep.layout == "NCHW" else pixels


def _resize_bilinear(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize with half-pixel centres (what PIL and torchvision do without antialiasing)."""
    out_h, out_w = size
    in_h, in_w = image.shape[:2]
    ys = np.clip((np.arange(out_h) + 0.5) * in_h / out_h - 0.5, 0, in_h - 1)
    xs = np.clip((np.arange(out_w) + 0.5) * in_w / out_w - 0.5, 0, in_w - 1)
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    y1, x1 = np.minimum(y0 + 1, in_h - 1), np.minimum(x0 + 1, in_w - 1)
    wy, wx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
    top = image[y0][:, x0] * (1 - wx) + image[y0][:, x1] * wx
    bottom = image[y1][:, x0] * (1 - wx) + image[y1][:, x1] * wx
    return top * (1 - wy) + bottom * wy


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}


def _read_png(path: Path) -> np.ndarray:
    """Decode an 8-bit, non-interlaced PNG into HxWxC uint8 (Pillow is not a dependency); a
    truncated or corrupt file is a CalibrationError naming it."""
    try:
        return _decode_png(path)
    except (struct.error, zlib.error, ValueError, IndexError) as exc:
        raise CalibrationError(f"{path}: truncated or corrupt PNG ({exc})") from exc


def _decode_png(path: Path) -> np.ndarray:
    data = path.read_bytes()
    if not data.startswith(_PNG_SIGNATURE):
        raise CalibrationError(f"{path}: not a PNG file")
    pos, idat, palette, header = 8, [], None, None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"PLTE":
            palette = np.frombuffer(body, dtype=np.uint8).reshape(-1, 3)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
    if header is None:
        raise CalibrationError(f"{path}: PNG without IHDR header")
    width, height, depth, color, _, _, interlace = header
    if depth != 8 or interlace != 0 or color not in _PNG_CHANNELS:
        raise CalibrationError(
            f"{path}: only 8-bit non-interlaced PNGs are supported (bit depth {depth}, interlace {interlace})"
        )
    channels = _PNG_CHANNELS[color]
    raw = np.frombuffer(zlib.decompress(b"".join(idat)), dtype=np.uint8)
    pixels = _unfilter(raw, height, width * channels, channels)
    image = pixels.reshape(height, width, channels)
    if color == 3:
        if palette is None:
            raise CalibrationError(f"{path}: palette PNG without PLTE chunk")
        image = palette[image[..., 0]]
    return image


def _unfilter(raw: np.ndarray, height: int, stride: int, bpp: int) -> np.ndarray:
    """Undo PNG's per-row filters (None, Sub, Up, Average, Paeth)."""
    rows = raw.reshape(height, stride + 1)
    out = np.zeros((height, stride), dtype=np.int32)
    previous = np.zeros(stride, dtype=np.int32)
    for y in range(height):
        kind, line = rows[y, 0], rows[y, 1:].astype(np.int32)
        if kind == 0:
            current = line
        elif kind == 2:
            current = (line + previous) & 0xFF
        else:
            current = np.zeros(stride, dtype=np.int32)
            for x in range(stride):
                left = current[x - bpp] if x >= bpp else 0
                up = previous[x]
                up_left = previous[x - bpp] if x >= bpp else 0
                if kind == 1:
                    predictor = left
                elif kind == 3:
                    predictor = (left + up) // 2
                else:
                    p = left + up - up_left
                    pa, pb, pc = abs(p - left), abs(p - up), abs(p - up_left)
                    predictor = left if pa <= pb and pa <= pc else (up if pb <= pc else up_left)
                current[x] = (line[x] + predictor) & 0xFF
        out[y] = current
        previous = current
    return out.astype(np.uint8)
