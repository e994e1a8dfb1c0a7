"""Demo photos for `detcrop demo`: two watch styles composed onto public-domain photos.

Nothing is downloaded and nothing is shipped: backgrounds are the CC0 / public-domain photos
that scikit-image installs (`skimage.data`: brick, grass, gravel, coffee, chelsea,
astronaut, rocket, camera, horse; each one's licence is in its docstring), and the watches
are drawn here. The two classes differ the way brands do, in details of the dial:

- `classic`: cream dial, thin black batons, a black rim, brown leather strap;
- `diver`: blue dial, luminous dots, a black graduated bezel, a steel bracelet.

Every photo puts one watch of random size, position, rotation and time on a random crop of
a background, so the detector has to find it and the classifier has to tell the dials
apart. The same seed always gives the same photos.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from detcrop.data.atomic import atomic_open
from detcrop.data.errors import MissingDependencyError

DEMO_CLASSES = ("classic", "diver")
_BACKGROUNDS = ("brick", "grass", "gravel", "coffee", "chelsea", "astronaut", "rocket", "camera", "horse")


def _background_photos() -> list[np.ndarray]:
    try:
        import skimage.data
    except ImportError as error:  # pragma: no cover - scikit-image is a dependency
        raise MissingDependencyError("the demo photos need scikit-image (pip install scikit-image)") from error
    photos = []
    for name in _BACKGROUNDS:
        image = np.asarray(getattr(skimage.data, name)())
        if image.dtype == bool:
            image = image.astype(np.uint8) * 255
        if image.ndim == 2:
            image = np.stack([image] * 3, axis=-1)
        photos.append(np.ascontiguousarray(image[..., :3]).astype(np.uint8))
    return photos


def draw_watch(style: str, size: int, hours: float, rng: np.random.Generator) -> Image.Image:
    """An RGBA wristwatch (dial, hands, strap) about `size` pixels across the dial."""
    if style not in DEMO_CLASSES:
        raise ValueError(f"style must be one of {DEMO_CLASSES}, got {style!r}")
    scale = 2  # draw big, then downsample: anti-aliased edges look photographic enough
    dial = size * scale
    width, height = int(dial * 1.2), int(dial * 2.2)
    image = Image.new("RGBA", (width, height), (0, 0, 0, 0))
    draw = ImageDraw.Draw(image)
    cx, cy = width / 2, height / 2
    if style == "classic":
        strap = tuple(int(v) for v in rng.integers([90, 50, 20], [140, 80, 45]))
        draw.rounded_rectangle([cx - dial * 0.28, 0, cx + dial * 0.28, height], radius=dial * 0.08, fill=strap + (255,))
        rim, face, ink, lume = (25, 25, 25), tuple(int(v) for v in rng.integers([235, 225, 200], [250, 240, 220])), (15, 15, 15), None
    else:
        for y in range(0, height, max(2, dial // 14)):  # bracelet links
            shade = int(rng.integers(150, 200))
            draw.rectangle([cx - dial * 0.3, y, cx + dial * 0.3, y + dial // 16], fill=(shade, shade, shade + 8, 255))
        rim, face, ink, lume = (30, 30, 35), (40, 70, 150), (245, 245, 240), (245, 250, 225)
    radius = dial / 2
    draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=rim + (255,))
    inner = radius * (0.80 if style == "diver" else 0.90)
    if style == "diver":
        for minute in range(0, 60, 5):
            angle = minute / 60 * 2 * math.pi
            r0, r1 = inner * 1.03, radius * 0.95
            draw.line([cx + r0 * math.sin(angle), cy - r0 * math.cos(angle),
                       cx + r1 * math.sin(angle), cy - r1 * math.cos(angle)], fill=(240, 240, 240, 255), width=scale * 2)
    draw.ellipse([cx - inner, cy - inner, cx + inner, cy + inner], fill=face + (255,))
    for hour in range(12):
        angle = hour / 12 * 2 * math.pi
        if style == "classic":
            r0, r1 = inner * 0.78, inner * 0.93
            draw.line([cx + r0 * math.sin(angle), cy - r0 * math.cos(angle),
                       cx + r1 * math.sin(angle), cy - r1 * math.cos(angle)], fill=ink + (255,),
                      width=scale * (4 if hour % 3 == 0 else 2))
        else:
            r = inner * 0.82
            dot = inner * (0.09 if hour % 3 == 0 else 0.06)
            x, y = cx + r * math.sin(angle), cy - r * math.cos(angle)
            draw.ellipse([x - dot, y - dot, x + dot, y + dot], fill=lume + (255,))
    for length, width_px, turns in ((0.5, 6, hours / 12), (0.75, 4, hours % 1.0)):
        angle = turns * 2 * math.pi
        draw.line([cx, cy, cx + inner * length * math.sin(angle), cy - inner * length * math.cos(angle)],
                  fill=(lume or ink) + (255,), width=scale * width_px)
    draw.ellipse([cx - scale * 4, cy - scale * 4, cx + scale * 4, cy + scale * 4], fill=(lume or ink) + (255,))
    return image.resize((width // scale, height // scale), Image.Resampling.LANCZOS)


def compose_photo(style: str, rng: np.random.Generator, backgrounds: list[np.ndarray],
                  size: tuple[int, int] = (480, 360)) -> Image.Image:
    """One demo photo: a random background crop with one watch of `style` on it."""
    background = backgrounds[int(rng.integers(len(backgrounds)))]
    height, width = background.shape[:2]
    crop_w = int(rng.integers(min(width, 200), width + 1))
    crop_h = min(height, int(crop_w * size[1] / size[0]))
    x0, y0 = int(rng.integers(0, width - crop_w + 1)), int(rng.integers(0, height - crop_h + 1))
    photo = Image.fromarray(background[y0:y0 + crop_h, x0:x0 + crop_w]).resize(size, Image.Resampling.BILINEAR)
    dial = int(rng.uniform(0.30, 0.46) * min(size))
    watch = draw_watch(style, dial, hours=float(rng.uniform(0, 12)), rng=rng)
    watch = watch.rotate(float(rng.uniform(-35, 35)), resample=Image.Resampling.BICUBIC, expand=True)
    shadow = Image.new("RGBA", watch.size, (0, 0, 0, 0))
    shadow.putalpha(watch.getchannel("A").point(lambda alpha: alpha // 2))
    shadow = shadow.filter(ImageFilter.GaussianBlur(6))
    x = int(rng.integers(-watch.width // 6, size[0] - watch.width * 5 // 6))
    y = int(rng.integers(-watch.height // 6, size[1] - watch.height * 5 // 6))
    photo = photo.convert("RGBA")
    photo.alpha_composite(shadow, (max(0, x + 6), max(0, y + 6))) if x + 6 >= 0 and y + 6 >= 0 else None
    photo.paste(watch, (x, y), watch)
    return photo.convert("RGB")


def write_demo_photos(root: str | Path, per_class: int, seed: int = 0, by_class: bool = True) -> list[Path]:
    """Write `per_class` photos of each style under `root` (`root/<class>/` when `by_class`).

    Existing files with the same names are rewritten identically, so reruns are cheap to
    reason about. Returns the written paths.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    backgrounds = _background_photos()
    written = []
    for index in range(per_class):
        for style in DEMO_CLASSES:
            photo = compose_photo(style, rng, backgrounds)
            folder = root / style if by_class else root
            path = folder / f"{style}_{seed}_{index:03d}.jpg"
            with atomic_open(path, "wb") as handle:
                photo.save(handle, format="JPEG", quality=90)
            written.append(path)
    return written
