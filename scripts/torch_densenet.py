#!/usr/bin/env python3
"""The d2l DenseNet in PyTorch, timed as densenet-wgpu's `bench` times its own: one training
step (forward, cross-entropy, backward, plain SGD) on random 1x96x96 inputs, batch 256.

Modes (`--modes`, comma separated):
  fp32      fp32 with TF32 off, NCHW (the layout PyTorch uses by default)
  fp32-cl   fp32 with TF32 off, channels_last
  tf32-cl   TF32 on, channels_last
  f16-cl    autocast f16 with a gradient scaler, channels_last

For each: the median of `--steps` steps after `--warmup` (CUDA events), and the peak memory
torch.cuda.max_memory_allocated reports. cudnn.benchmark is on (what a tuned PyTorch run
uses). Prints one JSON object. Exits with status 3 and a one-line reason on stderr when
PyTorch or a CUDA device is missing, so callers can skip it and say why.
"""
import argparse
import json
import sys


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--modes", default="fp32,fp32-cl,tf32-cl,f16-cl")
    return ap.parse_args()


def build(torch):
    """The lecture's network: stem 7x7/2 + max pool, blocks [4,4,4,4] of growth 32 with
    halving transitions, BN -> ReLU -> global pool -> linear; Xavier-uniform weights."""
    nn = torch.nn

    def conv_block(cin, cout):
        return nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU(), nn.Conv2d(cin, cout, 3, padding=1))

    class DenseBlock(nn.Module):
        def __init__(self, layers, cin, growth):
            super().__init__()
            self.layers = nn.ModuleList(conv_block(cin + i * growth, growth) for i in range(layers))

        def forward(self, x):
            for layer in self.layers:
                x = torch.cat((x, layer(x)), dim=1)
            return x

    def transition(cin, cout):
        return nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU(), nn.Conv2d(cin, cout, 1), nn.AvgPool2d(2, 2))

    parts = [nn.Conv2d(1, 64, 7, 2, 3), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(3, 2, 1)]
    c = 64
    for i in range(4):
        parts.append(DenseBlock(4, c, 32))
        c += 4 * 32
        if i < 3:
            parts.append(transition(c, c // 2))
            c //= 2
    parts += [nn.BatchNorm2d(c), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 10)]
    net = nn.Sequential(*parts)
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)
    return net


def time_mode(torch, mode, args):
    F = torch.nn.functional
    tf32 = mode.startswith("tf32")
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cudnn.benchmark = True
    fmt = torch.channels_last if mode.endswith("-cl") else torch.contiguous_format
    half = mode.startswith("f16")
    dev = torch.device("cuda")
    torch.manual_seed(0)
    net = build(torch).to(dev, memory_format=fmt)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cuda", enabled=half)
    x = torch.rand(args.batch, 1, 96, 96, device=dev).to(memory_format=fmt)
    y = torch.randint(0, 10, (args.batch,), device=dev)

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.float16, enabled=half):
            loss = F.cross_entropy(net(x), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    for _ in range(args.warmup):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.steps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    del net, opt, x, y
    return {
        "step_ms": times[len(times) // 2],
        "min_ms": times[0],
        "images_per_sec": args.batch / (times[len(times) // 2] / 1e3),
        "peak_mib": torch.cuda.max_memory_allocated() / 2**20,
    }


def main():
    args = parse_args()
    try:
        import torch
    except ImportError:
        print("PyTorch is not installed", file=sys.stderr)
        sys.exit(3)
    if not torch.cuda.is_available():
        print(f"PyTorch {torch.__version__} finds no CUDA device", file=sys.stderr)
        sys.exit(3)
    out = {
        "torch": torch.__version__,
        "cudnn": torch.backends.cudnn.version(),
        "device": torch.cuda.get_device_name(0),
        "batch": args.batch,
        "modes": {},
    }
    for mode in args.modes.split(","):
        out["modes"][mode] = time_mode(torch, mode, args)
        torch.cuda.empty_cache()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
