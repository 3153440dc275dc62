#!/usr/bin/env python3
"""The one-command GPU report (run it as scripts/gpu-report).

On a Linux machine with an NVIDIA GPU and PyTorch but no Rust toolchain, with binaries built
elsewhere (`scripts/gpu-report --build` on the build machine puts them in
target/gpu-report/bin), it runs, in under 5 minutes:

  0. `densenet-wgpu selftest`: every kernel configuration of the adapter (variant x split
     setting x element type) against the CPU reference, one table (selftest.txt);
  1. the kernel and network test binaries on the real adapter (where it has cooperative
     matrices, with DENSENET_REQUIRE=coop: the coop variants must run, not be skipped);
  2. `densenet-wgpu bench` of the d2l network (batch 256) with the roofline profile, while
     nvidia-smi samples the GPU memory in use; again in f16 (`--precision f16`: on an
     adapter with cooperative matrices the convolutions run on them), and in f32 with the
     convolutions forced onto cooperative matrices (`--kernels conv2d=coop16` or coop8);
  3. `densenet-wgpu plan` of the same network in f32 and f16 (the planned bytes);
  4. the same step in PyTorch (scripts/torch_densenet.py: fp32, fp32 channels_last, TF32 and
     autocast f16 channels_last) with torch.cuda.max_memory_allocated;

and prints one comparison table last. Everything is written to --out (results.json,
report.md, and each tool's own output). `--dry-run` runs the same on any machine (llvmpipe
included) at batch 4 and skips, saying so, what needs PyTorch, CUDA or nvidia-smi.
"""
import argparse
import datetime
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
TEST_BINARIES = ("kernels", "network", "precision")


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="batch 4, 1 step; skip what is missing")
    ap.add_argument("--build", action="store_true", help="build the binaries here, then stop")
    ap.add_argument("--bin", type=pathlib.Path, default=ROOT / "target" / "gpu-report" / "bin")
    ap.add_argument("--out", type=pathlib.Path, default=None, help="default: target/gpu-report/<time>")
    ap.add_argument("--batch", type=int, default=None, help="default 256 (dry run: 4)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps, default 20 (dry run: 1)")
    return ap.parse_args()


def build(bin_dir):
    """Builds densenet-wgpu and the GPU test binaries, and copies them to bin_dir."""
    subprocess.run(["cargo", "build", "--release", "--bins"], cwd=ROOT, check=True)
    listing = subprocess.run(
        ["cargo", "test", "--release", "--no-run", "--message-format=json"],
        cwd=ROOT, check=True, capture_output=True, text=True,
    ).stdout
    (bin_dir / "tests").mkdir(parents=True, exist_ok=True)
    shutil.copy2(ROOT / "target" / "release" / "densenet-wgpu", bin_dir / "densenet-wgpu")
    for line in listing.splitlines():
        msg = json.loads(line)
        target = msg.get("target", {})
        if msg.get("executable") and target.get("name") in TEST_BINARIES and "test" in target.get("kind", []):
            shutil.copy2(msg["executable"], bin_dir / "tests" / target["name"])
    files = [p for p in bin_dir.rglob("*") if p.is_file()]
    if shutil.which("strip"):
        # Debug line tables make each binary about 60 MB; stripped they are about 8 MB.
        subprocess.run(["strip", *map(str, files)], check=True)
    size = sum(p.stat().st_size for p in files) / 2**20
    print(f"binaries in {bin_dir} ({size:.0f} MiB): {sorted(p.name for p in files)}")


def run(cmd, out_dir, name, timeout=240, env=None):
    """Runs cmd (with env added to ours), saving its output as name.log; returns (status,
    stdout, stderr)."""
    start = time.time()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                           env={**os.environ, **(env or {})})
        status, out, err = p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired as e:
        status, out, err = "timeout", (e.stdout or b"").decode(errors="replace"), ""
    (out_dir / f"{name}.log").write_text(out + err)
    print(f"  {name}: status {status}, {time.time() - start:.1f} s")
    return status, out, err


class GpuMemory:
    """Samples nvidia-smi's memory in use while a command runs: the peak above the level
    before it started (the whole GPU's, so run nothing else beside it)."""

    def __init__(self):
        self.available = shutil.which("nvidia-smi") is not None
        self.peak = 0.0
        self._stop = threading.Event()

    def _used(self):
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
            capture_output=True, text=True,
        ).stdout.split()
        return float(out[0]) if out else 0.0

    def __enter__(self):
        if self.available:
            self.base = self._used()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.2):
            self.peak = max(self.peak, self._used() - self.base)

    def __exit__(self, *_):
        self._stop.set()


def tests(bin_dir, out_dir, results):
    found = sorted((bin_dir / "tests").glob("*")) if (bin_dir / "tests").is_dir() else []
    if not found:
        results["tests"] = f"skipped: no test binaries in {bin_dir / 'tests'} (build them with --build)"
        return
    results["tests"] = {}
    # Where the adapter has cooperative matrices, the tests must run the coop variants (a
    # variant of a shape the adapter lacks is still skipped, with its reason).
    env = {"DENSENET_REQUIRE": "coop"} if results["coop_shapes"] else {}
    for exe in found:
        status, text, _ = run([str(exe), "--test-threads=1"], out_dir, f"test-{exe.name}",
                              timeout=180, env=env)
        # A case that needs a feature the adapter lacks counts as ignored (with the reason in
        # the log), never as passed.
        counts = re.findall(r"test result: \w+\. (\d+) passed; (\d+) failed; (\d+) ignored", text)
        passed, failed, ignored = (sum(int(c[i]) for c in counts) for i in (0, 1, 2))
        results["tests"][exe.name] = {"status": status, "passed": passed, "failed": failed,
                                      "ignored": ignored}


def adapter(bin_dir, out_dir, results):
    """The adapter `info` chooses, and the cooperative-matrix shapes it enabled (e.g. 16x16x16)."""
    status, text, _ = run([str(bin_dir / "densenet-wgpu"), "info"], out_dir, "info", timeout=60)
    chosen = [l for l in text.splitlines() if l.startswith("chosen:")]
    results["adapter"] = chosen[0][8:] if chosen else f"no adapter (status {status})"
    coop = re.search(r"cooperative matrix: yes \(enabled; f16 x f16 -> f32 ([0-9x, ]+)\)", text)
    results["coop_shapes"] = [s.strip() for s in coop.group(1).split(",")] if coop else []


def selftest(bin_dir, out_dir, results):
    """Every kernel configuration of the adapter against the CPU reference; the verdicts go
    into the report's own cache, which the bench runs then find."""
    status, text, _ = run([str(bin_dir / "densenet-wgpu"), "selftest", "--tune-cache",
                           str(out_dir / "tuning.json")], out_dir, "selftest", timeout=120)
    summary = [l for l in text.splitlines() if l.startswith("selftest on ")]
    failed = [l for l in text.splitlines() if l.startswith("FAILED ")]
    results["selftest"] = {"status": status, "summary": summary[0] if summary else text[-300:],
                           "failed": failed}


def densenet(bin_dir, out_dir, args, results):
    exe = str(bin_dir / "densenet-wgpu")
    shape = ["--preset", "d2l", "--dataset", "fashion-mnist", "--batch-size", str(args.batch)]
    # The step with the adapter's policy in f32 and in f16 (where the adapter has cooperative
    # matrices, f16 convolutions run on them), then f32 storage with the convolutions forced
    # onto cooperative matrices (f16 operands, f32 accumulators) for each shape it has.
    # Each also tuned (every convolution launch timed in each configuration, the fastest
    # kept; the tuning time is in the JSON), next to the policy's choice.
    # Every run keeps its caches (the tuner's and the self-check's) in the report's folder.
    cache = ["--tune-cache", str(out_dir / "tuning.json")]
    budget = ["--tune-budget", "5"] if args.dry_run else []
    runs = [("bench", ["--tune", "off", *cache]),
            ("bench-f16", ["--precision", "f16", "--tune", "off", *cache])]
    runs += [("bench-tuned", ["--tune", "full", *cache, *budget]),
             ("bench-f16-tuned", ["--precision", "f16", "--tune", "full", *cache, *budget])]
    runs += [(f"bench-coop{s.split('x')[0]}",
              ["--kernels", f"conv2d=coop{s.split('x')[0]}", "--tune", "off", *cache])
             for s in results["coop_shapes"] if s in ("8x8x8", "16x16x16")]
    for name, extra in runs:
        bench_json = out_dir / f"{name}.json"
        with GpuMemory() as mem:
            status, _, _ = run(
                [exe, "bench", *shape, *extra, "--steps", str(args.steps), "--profile",
                 "--json", str(bench_json)],
                out_dir, name,
            )
        results[name] = json.loads(bench_json.read_text()) if bench_json.exists() else f"failed: {status}"
        results[f"{name}_gpu_memory_mib"] = mem.peak if mem.available else "skipped: no nvidia-smi"
    for name, precision in [("plan", "f32"), ("plan-f16", "f16")]:
        status, text, _ = run([exe, "plan", *shape, "--precision", precision, "--json"], out_dir,
                              name, timeout=60)
        results[name] = json.loads(text) if status == 0 else f"failed: {status}"


def pytorch(out_dir, args, results):
    cmd = [sys.executable, str(ROOT / "scripts" / "torch_densenet.py"), "--batch", str(args.batch)]
    if args.dry_run:
        cmd += ["--steps", "2", "--warmup", "1"]
    status, text, err = run(cmd, out_dir, "pytorch", timeout=240)
    if status == 0:
        results["pytorch"] = json.loads(text)
    else:
        reason = err.strip().splitlines()[-1] if err.strip() else f"status {status}"
        results["pytorch"] = f"skipped: {reason}"


def table(results):
    rows = ["| run | ms per step | images/s | peak MiB |", "|---|---|---|---|"]
    def planned(key):
        plan = results.get(key)
        return plan["training"]["total_bytes"] / 2**20 if isinstance(plan, dict) else 0
    for name in [k for k in results if k.startswith("bench") and not k.endswith("_mib")]:
        r = results[name]
        if not isinstance(r, dict):
            rows.append(f"| densenet-wgpu {name} | {r} | | |")
            continue
        mem = results.get(f"{name}_gpu_memory_mib")
        seen = f"{mem:.0f} seen by nvidia-smi, " if isinstance(mem, float) else ""
        what = {"bench": "f32", "bench-f16": "f16", "bench-tuned": "f32 tuned",
                "bench-f16-tuned": "f16 tuned"}.get(name, "f32 storage, convs f16 x f16 -> f32")
        plan_mib = planned("plan-f16" if "f16" in name else "plan")
        tuning = r.get("tuning") or {}
        how = (f"tuned in {tuning['seconds']:.1f} s" if name.endswith("tuned") and "seconds" in tuning
               else r["kernel_policy"])
        rows.append(
            f"| densenet-wgpu {what} ({how}) | {r['step_ms']:.2f} | "
            f"{r['images_per_sec']:.0f} | {seen}{plan_mib:.0f} planned |"
        )
    b = results.get("bench")
    p = results.get("pytorch")
    if isinstance(p, dict):
        for mode, r in p["modes"].items():
            rows.append(f"| PyTorch {p['torch']} {mode} | {r['step_ms']:.2f} | {r['images_per_sec']:.0f} | {r['peak_mib']:.0f} |")
    else:
        rows.append(f"| PyTorch | {p} | | |")
    lines = [f"adapter: {results.get('adapter')}", f"batch {results['batch']}, {results['date']}", ""]
    lines += rows
    if isinstance(b, dict) and b.get("ceilings"):
        c = b["ceilings"]
        lines += ["", f"ceilings: {c['flops_per_s'] / 1e9:.1f} GFLOP/s, {c['bytes_per_s'] / 1e9:.1f} GB/s; "
                      f"{b['dispatches']} dispatches per step; slowest kernels:"]
        for k in b["kernels"][:5]:
            floor = max(k["flops"] / c["flops_per_s"], k["bytes"] / c["bytes_per_s"])
            lines.append(f"  {k['name']}: {k['seconds'] * 1e3:.3f} ms in {k['calls']} calls, "
                         f"{100 * floor / k['seconds']:.1f}% of the roofline")
    st = results.get("selftest")
    if isinstance(st, dict):
        lines += ["", f"selftest (status {st['status']}): {st['summary']}"] + st["failed"]
    t = results.get("tests")
    if isinstance(t, dict):
        lines += ["", "tests: " + ", ".join(f"{n} {r['passed']} passed, {r['failed']} failed, "
                                            f"{r['ignored']} ignored" for n, r in t.items())]
    else:
        lines += ["", f"tests: {t}"]
    return "\n".join(lines)


def main():
    args = parse_args()
    if args.build:
        build(args.bin)
        return
    args.batch = args.batch or (4 if args.dry_run else 256)
    args.steps = args.steps or (1 if args.dry_run else 20)
    stamp = datetime.datetime.now().strftime("%Y-%m-%d-%H%M%S")
    out = args.out or ROOT / "target" / "gpu-report" / stamp
    out.mkdir(parents=True, exist_ok=True)
    if not (args.bin / "densenet-wgpu").exists():
        sys.exit(f"error: no densenet-wgpu in {args.bin}; build it with scripts/gpu-report --build")
    results = {"date": stamp, "batch": args.batch, "dry_run": args.dry_run}
    start = time.time()
    print(f"gpu-report: binaries from {args.bin}, results in {out}")
    adapter(args.bin, out, results)
    selftest(args.bin, out, results)
    tests(args.bin, out, results)
    densenet(args.bin, out, args, results)
    pytorch(out, args, results)
    results["seconds"] = time.time() - start
    (out / "results.json").write_text(json.dumps(results, indent=2))
    report = table(results)
    (out / "report.md").write_text(report + "\n")
    print(f"\n{report}\n\n(done in {results['seconds']:.0f} s; everything in {out})")
    failed = isinstance(results.get("tests"), dict) and any(
        r["failed"] or r["status"] != 0 for r in results["tests"].values())
    failed = failed or results["selftest"]["status"] != 0
    sys.exit(1 if failed or not isinstance(results.get("bench"), dict) else 0)


if __name__ == "__main__":
    main()
