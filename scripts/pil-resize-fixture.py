#!/usr/bin/env python3
"""Writes tests/fixtures/pil_bilinear.json: Pillow's bilinear resize of a few 8-bit planes.

torchvision's `Resize` (InterpolationMode.BILINEAR) on a PIL image is
`img.resize((w, h), Image.BILINEAR)`; `resize_plane` in src/data/loader.rs must give
Pillow's bytes exactly, and the test `resize_matches_pillow_bilinear` in tests/data.rs
checks it against this file.

Each case is a seeded random mode "L" image of an awkward size (enlarging, shrinking by a
non-integer factor, one dimension unchanged, up in one axis and down in the other, a 1x1
source or target, and images whose height shrinks by more than twice as many pixels as
their width, which Pillow 13 resizes vertically first: the 8-bit intermediate makes the
order show). The file keeps
the Pillow version, the seed and, per case, the sizes and the input and output bytes
(row-major, hex).

Usage (any Python 3 with Pillow; no other package):
    python3 -m venv /tmp/pilvenv && /tmp/pilvenv/bin/pip install pillow
    /tmp/pilvenv/bin/python scripts/pil-resize-fixture.py [--seed N] [--out PATH]
"""

import argparse
import json
import random

import PIL
from PIL import Image

# (in_h, in_w, out_h, out_w)
CASES = [
    (28, 28, 96, 96),  # the d2l preset: Fashion-MNIST enlarged
    (23, 37, 16, 16),  # shrinking by non-integer factors (antialiased footprint)
    (32, 32, 24, 24),  # shrinking by 4/3
    (9, 50, 50, 9),  # enlarging one axis, shrinking the other
    (28, 28, 28, 32),  # height unchanged: horizontal pass only
    (28, 28, 20, 28),  # width unchanged: vertical pass only
    (64, 64, 7, 7),  # a wide footprint (about 9 source pixels a side)
    (5, 7, 1, 1),  # everything averaged into one pixel
    (1, 1, 5, 7),  # one pixel spread out
    (48, 40, 16, 36),  # height loses 32 rows > 2 x 4 columns: vertical pass first
    (250, 2, 40, 3),  # very tall, width grows: vertical pass first
]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=20240607)
    ap.add_argument("--out", default="tests/fixtures/pil_bilinear.json")
    args = ap.parse_args()

    rng = random.Random(args.seed)
    cases = []
    for h, w, oh, ow in CASES:
        data = bytes(rng.randrange(256) for _ in range(h * w))
        img = Image.frombytes("L", (w, h), data)
        out = img.resize((ow, oh), Image.BILINEAR)
        assert out.size == (ow, oh) and out.mode == "L"
        cases.append(
            {
                "h": h,
                "w": w,
                "out_h": oh,
                "out_w": ow,
                "input": data.hex(),
                "output": out.tobytes().hex(),
            }
        )

    fixture = {
        "generator": "scripts/pil-resize-fixture.py",
        "pillow": PIL.__version__,
        "seed": args.seed,
        "call": "Image.frombytes('L', (w, h), input).resize((out_w, out_h), Image.BILINEAR)",
        "cases": cases,
    }
    with open(args.out, "w") as f:
        json.dump(fixture, f, indent=1)
        f.write("\n")
    print(f"wrote {args.out}: {len(cases)} cases, Pillow {PIL.__version__}")


if __name__ == "__main__":
    main()
