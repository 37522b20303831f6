"""Reading image files as the file means them: every format PIL decodes, with the pixel limit, EXIF orientation,
16-bit and float TIFFs (through tifffile) and alpha handled, as 8-bit RGB (`load_rgb`)."""

from __future__ import annotations

import inspect
import warnings

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError


def _openable_extensions() -> frozenset[str]:
    """Every file extension PIL registers for a format it can decode (.jpg, .jfif, .png, .webp, .avif,
    .tga, .tif, .pgm...). Left out: stub formats PIL only identifies (HDF5, GRIB, BUFR, WMF) and
    MPEG, whose plugin parses the header only."""
    Image.init()
    out = set()
    for ext, fmt in Image.registered_extensions().items():
        opener = Image.OPEN.get("JPEG" if fmt == "MPO" else fmt, (None,))[0]  # MPO files open through JPEG
        stub = inspect.isclass(opener) and issubclass(opener, ImageFile.StubImageFile)
        if opener is not None and not stub and fmt != "MPEG":
            out.add(ext.lower())
    return frozenset(out)


IMAGE_EXTENSIONS = _openable_extensions()
MAX_IMAGE_PIXELS = 8192 * 8192


def load_rgb(path) -> Image.Image:
    """Open an image (a path or a binary file object) as 8-bit RGB, as the file means it
    (see `to_rgb`); raises ValueError with the reason on anything unreadable.

    TIFFs that PIL reads wrongly or not at all (several samples per pixel of more than 8 bits, as
    16-bit RGB scans and microscopy write them; float RGB) are decoded by tifffile (`tiff_to_rgb`).
    """
    try:
        try:
            with warnings.catch_warnings():  # our own pixel limit applies below (PIL still refuses over 2x its own)
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                img = Image.open(path)
        except UnidentifiedImageError:
            if _is_tiff(path):
                return tiff_to_rgb(path)
            raise
        with img:
            if img.width * img.height > MAX_IMAGE_PIXELS and img.format == "JPEG":
                _decode_jpeg_smaller(img)  # a 108-megapixel phone photo or a large scan: decoded at 1/2..1/8
            if img.width * img.height > MAX_IMAGE_PIXELS:
                raise ValueError(f"{img.width}x{img.height} pixels exceeds the {MAX_IMAGE_PIXELS} limit")
            if _pil_misreads_tiff(img):
                return tiff_to_rgb(path, fallback=None if img.tag_v2.get(284) == 2 else img)
            return to_rgb(img)
    except Exception as err:  # UnidentifiedImageError, OSError, DecompressionBombError, EOFError, struct.error...
        raise ValueError(str(err).splitlines()[0] if str(err) else type(err).__name__) from None


def _decode_jpeg_smaller(img: Image.Image) -> None:
    """Have the JPEG decoder scale by the smallest of 1/2, 1/4, 1/8 that brings `img` within
    `MAX_IMAGE_PIXELS` (libjpeg's DCT scaling: no full-size image in memory); a no-op if none does."""
    for scale in (2, 4, 8):
        if (img.width // scale) * (img.height // scale) <= MAX_IMAGE_PIXELS:
            img.draft(img.mode if img.mode in ("RGB", "L") else None, (-(-img.width // scale), -(-img.height // scale)))
            return


def _is_tiff(source) -> bool:
    if hasattr(source, "read"):
        source.seek(0)
        head = source.read(4)
        source.seek(0)
    else:
        with open(source, "rb") as f:
            head = f.read(4)
    return head in (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+")  # classic and BigTIFF, both byte orders


def _pil_misreads_tiff(img: Image.Image) -> bool:
    """TIFF samples wider than 8 bits that PIL reads wrongly: several per pixel (16-bit RGB: PIL keeps the
    high byte, and garbles samples stored plane by plane), or min-is-white grey (PIL does not invert it)."""
    if img.format != "TIFF":
        return False
    bits = img.tag_v2.get(258, (8,))  # BitsPerSample
    bits = bits if isinstance(bits, tuple) else (bits,)
    several = int(img.tag_v2.get(277, 1)) > 1  # SamplesPerPixel
    return max(bits) > 8 and (several or img.tag_v2.get(262) == 0)  # PhotometricInterpretation 0: min-is-white


def tiff_to_rgb(source, fallback: Image.Image | None = None) -> Image.Image:
    """The first page of a TIFF as 8-bit RGB, decoded by tifffile (the microscopy community's reader):
    samples scaled as `to_rgb` scales grey ones (16-bit: round(v * 255 / 65535); floats: [0, 1], else
    the image's own range, all channels together), extra alpha composited on white, TIFF orientation
    applied. Photometric RGB, min-is-black (first sample) and min-is-white. When tifffile cannot decode
    the file (a compression that needs the optional imagecodecs package, e.g. LZW), `fallback` (PIL's
    reading, 8 bits kept) is used if given; otherwise the error is raised (source: TIFF 6.0)."""
    import tifffile

    if hasattr(source, "seek"):
        source.seek(0)
    try:
        with tifffile.TiffFile(source) as tif:
            page = tif.pages[0]
            if page.imagewidth * page.imagelength > MAX_IMAGE_PIXELS:
                raise ValueError(f"{page.imagewidth}x{page.imagelength} pixels exceeds the {MAX_IMAGE_PIXELS} limit")
            array, axes, photometric = page.asarray(), page.axes, int(page.photometric)
            extra = tuple(page.extrasamples or ())
            orientation = int(page.tags[274].value) if 274 in page.tags else 1
    except Exception:
        if fallback is not None:
            return to_rgb(fallback)
        raise
    if "S" in axes:  # samples last, whether stored per pixel (YXS) or per plane (SYX)
        array = np.moveaxis(array, axes.index("S"), -1)
    array = array.reshape(array.shape[-3:] if "S" in axes else array.shape[-2:])
    if photometric == 2 and array.ndim == 3 and array.shape[-1] >= 3:  # RGB (+ extra samples)
        alpha = array.shape[-1] > 3 and extra[:1] in ((1,), (2,))  # associated / unassociated alpha
        pixels = np.ascontiguousarray(_high_depth_to_8bit(array)[..., :4 if alpha else 3])
        mode = ("RGBa" if extra[:1] == (1,) else "RGBA") if alpha else "RGB"
        img = Image.frombytes(mode, (pixels.shape[1], pixels.shape[0]), pixels.tobytes())
    elif photometric in (0, 1):  # min-is-white / min-is-black: the first sample is the grey level
        grey = np.ascontiguousarray(_high_depth_to_8bit(array[..., 0] if array.ndim == 3 else array))
        img = Image.frombytes("L", (grey.shape[1], grey.shape[0]), (255 - grey if photometric == 0 else grey).tobytes())
    else:
        raise ValueError(f"TIFF with photometric interpretation {photometric} and {page.bitspersample}-bit samples "
                         f"is not supported")
    img.getexif()[0x0112] = orientation  # applied by to_rgb, as PIL's own TIFF reading does
    return to_rgb(img)


def to_rgb(img: Image.Image) -> Image.Image:
    """8-bit RGB of any PIL mode, scaled rather than clipped.

    - 16-bit greyscale (I;16, I;16B, I;16L, and I with values in 0..65535): v -> round(v * 255 / 65535);
      other I images and F images: [0, 1] floats x 255, else the image's own min..max stretched to 0..255.
    - Transparency (RGBA, LA, La, PA, RGBa, P or L/RGB with a transparent colour): composited on
      white, as a viewer shows it (the demo data do the same), not the hidden colour under it.
    - EXIF orientation applied (a phone photo stored sideways is read upright).
    - Everything else (1, L, P, CMYK, YCbCr, LAB, HSV, RGBX): PIL's own conversion.
    """
    img = ImageOps.exif_transpose(img)
    if img.mode.startswith("I") or img.mode.startswith("F"):
        return Image.fromarray(_high_depth_to_8bit(np.asarray(img)), mode="L").convert("RGB")
    if "transparency" in img.info and img.mode in ("P", "L", "RGB"):
        img = img.convert("RGBA")
    elif img.mode == "La":
        img = img.convert("LA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def _high_depth_to_8bit(a: np.ndarray) -> np.ndarray:
    """Samples of any depth as uint8, all channels scaled together: uint8 as they are; integers within
    0..65535 as 16-bit (exact rounding of v * 255 / 65535); floats within [0, 1] x 255; else the
    array's own finite min..max stretched to 0..255."""
    if a.dtype == np.uint8:
        return a
    if a.dtype.kind in "ui" and a.size and a.min() >= 0 and a.max() <= 65535:
        return ((a.astype(np.uint64) * 255 + 32767) // 65535).astype(np.uint8)  # round(v / 257), exact
    a = a.astype(np.float64)
    finite = a[np.isfinite(a)]
    if not finite.size:
        return np.zeros(a.shape, np.uint8)
    low, high = float(finite.min()), float(finite.max())
    if a.dtype.kind == "f" and low >= 0.0 and high <= 1.0:
        low, high = 0.0, 1.0
    scaled = (np.nan_to_num(a, nan=low, posinf=high, neginf=low) - low) / max(high - low, 1e-12) * 255.0
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
