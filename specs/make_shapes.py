"""Write a small synthetic image folder for specs/folder_cnn.yaml: no download needed.

    python specs/make_shapes.py                  # -> specs/data/shapes/{circle,square,triangle}/*.png
    python specs/make_shapes.py OUT --per-class 100 --size 32

Each class is one shape in its own colour on a noisy background, at a random place and size, so a
small CNN separates them easily; the files are the same for the same --seed.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

CLASSES = {"circle": (220, 60, 60), "square": (60, 200, 60), "triangle": (70, 90, 230)}


def write_shapes(out: Path, per_class: int = 100, size: int = 32, seed: int = 0) -> Path:
    """Write `per_class` PNGs per class under `out/<class>/`; returns `out`."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    for name, colour in CLASSES.items():
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            background = rng.integers(0, 90, size=(size, size, 3), dtype=np.uint8)
            image = Image.fromarray(background, "RGB")
            radius = int(rng.integers(size // 6, size // 3))
            x, y = (int(v) for v in rng.integers(radius, size - radius, size=2))
            draw = ImageDraw.Draw(image)
            box = (x - radius, y - radius, x + radius, y + radius)
            if name == "circle":
                draw.ellipse(box, fill=colour)
            elif name == "square":
                draw.rectangle(box, fill=colour)
            else:
                draw.polygon([(x, y - radius), (x - radius, y + radius), (x + radius, y + radius)], fill=colour)
            image.save(folder / f"{index:04d}.png")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default=str(Path(__file__).parent / "data" / "shapes"))
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    options = parser.parse_args()
    out = write_shapes(Path(options.out), options.per_class, options.size, options.seed)
    print(f"wrote {options.per_class * len(CLASSES)} images in {len(CLASSES)} classes to {out}")


if __name__ == "__main__":
    main()
