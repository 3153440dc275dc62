"""Checks an exported ONNX model in onnxruntime against logits densenet-wgpu computed.

    scripts/onnx-python tests/onnx_parity.py MODEL WANT.csv (--idx IMAGES | --raw IMAGES.f32)

WANT.csv is `eval --logits` output (header, then label,logit_0,... per example). The images
are either an IDX image file (uint8, scaled to [0, 1] as the loader does) or raw little-endian
float32 in [batch, C, H, W] order. The model must pass onnx's checker with shape inference,
declare a dynamic batch, and give the same logits within --tol at the full batch and in
batches of 1 and 3. Prints the largest difference; exits 1 on any failure.
"""

import argparse
import sys

import numpy as np
import onnx
import onnxruntime as ort


def read_idx_images(path):
    data = open(path, "rb").read()
    if data[:2] == b"\x1f\x8b":
        import gzip

        data = gzip.decompress(data)
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims)]
    pixels = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims)
    n, h, w = shape
    return (pixels.reshape(n, 1, h, w).astype(np.float32) / np.float32(255.0)).astype(np.float32)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("want")
    ap.add_argument("--idx")
    ap.add_argument("--raw")
    ap.add_argument("--tol", type=float, default=1e-4)
    args = ap.parse_args()

    model = onnx.load(args.model)
    onnx.checker.check_model(model, full_check=True)
    inputs, outputs = model.graph.input, model.graph.output
    assert [i.name for i in inputs] == ["images"], inputs
    assert [o.name for o in outputs] == ["logits"], outputs
    batch = inputs[0].type.tensor_type.shape.dim[0]
    assert batch.dim_param and not batch.HasField("dim_value"), "the batch must be dynamic"

    want = np.loadtxt(args.want, delimiter=",", skiprows=1, ndmin=2, dtype=np.float64)[:, 1:]
    session = ort.InferenceSession(args.model, providers=["CPUExecutionProvider"])
    shape = [d.dim_value for d in inputs[0].type.tensor_type.shape.dim[1:]]
    if args.idx:
        images = read_idx_images(args.idx)[: len(want)]
    else:
        images = np.fromfile(args.raw, dtype="<f4").reshape([-1] + shape)
    assert images.shape[0] == len(want), (images.shape, want.shape)

    worst = 0.0
    for chunk in (len(images), 1, 3):
        got = np.concatenate(
            [
                session.run(["logits"], {"images": images[i : i + chunk]})[0]
                for i in range(0, len(images), chunk)
            ]
        )
        assert got.shape == want.shape, (got.shape, want.shape)
        worst = max(worst, float(np.max(np.abs(got.astype(np.float64) - want))))
    print(f"{len(images)} images, logits scale {np.max(np.abs(want)):.3g}: max |onnxruntime - densenet-wgpu| = {worst:.3g} (tolerance {args.tol:g})")
    if not worst <= args.tol:
        sys.exit(1)


if __name__ == "__main__":
    main()
