"""StyleGAN2 1024 synthesis time (W+ in, image out) of ``methods.nets.stylegan2`` against a straightforward
pure-PyTorch implementation written here (the common way: grouped modulated convolution, upfirdn2d-style
reshape/pad zero-insertion and a separate blur convolution, separate noise / bias / activation ops).

Both run the same filled weights (the parity fill recipe, namespace ``stylegan2_ffhq``) with noise from the
stored buffers. For each: median of ``--runs`` timed runs after ``--warmup`` runs (the two implementations
alternate run by run), then one profiled run whose time is split by op category: the modulated convolutions
themselves (3x3, transposed 3x3/6x6, 1x1 to-RGB) vs depthwise blur / up-sampling convolutions vs everything
else (noise, bias, activation, modulation, padding, copies, Python). The other processes on the machine share
its cores: the load average is printed, trust quiet runs.

Process-level note: glibc returns every freed tensor above 32 MiB to the kernel, so each 1024-stage activation
(128 MiB) is page-faulted in again on every call (~30 ms per 128 MiB here). Starting the process with
``MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=4294967296`` (or ``THP_MEM_ALLOC_ENABLE=1``) removes
most of that; the script prints whether such a setting is active.

    .venv/bin/python benchmarks/stylegan2_synthesis.py [--runs 5] [--batch 1] [--threads 2]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from collections import defaultdict

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from harness.environment import keep_freed_memory
from harness.weights import filled_state_dict
from methods.nets import stylegan2 as sg

CONV_OPS = ("aten::conv2d", "aten::conv_transpose2d")


# ---------------------------------------------------------------- the reference implementation

def ref_upfirdn2d(x, kernel, up=1, pad=(0, 0)):
    """upfirdn2d the usual pure-PyTorch way: zero-insert by reshape + pad, pad, correlate with the flipped
    kernel over a [B*C, 1, H, W] view."""
    b, c, h, w = x.shape
    out = x.reshape(b * c, 1, h, 1, w, 1)
    out = F.pad(out, [0, up - 1, 0, 0, 0, up - 1]).reshape(b * c, 1, h * up, w * up)
    out = F.pad(out, [pad[0], pad[1], pad[0], pad[1]])
    out = F.conv2d(out, kernel.flip(0, 1)[None, None])
    return out.reshape(b, c, out.shape[-2], out.shape[-1])


def ref_modulated_conv(conv, x, w):
    """Grouped (one group per sample) modulated convolution with the official weight math."""
    b, cin, h, wd = x.shape
    mod = conv.modulation
    s = F.linear(w, mod.weight * mod.scale, mod.bias * mod.lr_mul).view(b, 1, cin, 1, 1)
    weight = conv.scale * conv.weight * s
    if conv.demodulate:
        weight = weight * torch.rsqrt(weight.pow(2).sum([2, 3, 4]) + 1e-8).view(b, conv.out_channel, 1, 1, 1)
    k = conv.kernel_size
    if conv.upsample:
        weight = weight.transpose(1, 2).reshape(b * cin, conv.out_channel, k, k)
        out = F.conv_transpose2d(x.reshape(1, b * cin, h, wd), weight, stride=2, groups=b)
        out = out.view(b, conv.out_channel, out.shape[-2], out.shape[-1])
        return ref_upfirdn2d(out, conv.blur.kernel, pad=conv.blur.pad)
    weight = weight.view(b * conv.out_channel, cin, k, k)
    out = F.conv2d(x.reshape(1, b * cin, h, wd), weight, padding=k // 2, groups=b)
    return out.view(b, conv.out_channel, h, wd)


def ref_styled_conv(layer, x, w, noise):
    out = ref_modulated_conv(layer.conv, x, w)
    out = out + layer.noise.weight * noise
    return F.leaky_relu(out + layer.activate.bias.view(1, -1, 1, 1), 0.2) * math.sqrt(2)


def ref_to_rgb(layer, x, w, skip):
    out = ref_modulated_conv(layer.conv, x, w) + layer.bias
    if skip is not None:
        kernel = layer.upsample.kernel
        p = kernel.shape[0] - 2
        out = out + ref_upfirdn2d(skip, kernel, up=2, pad=((p + 1) // 2 + 1, p // 2))
    return out


def ref_synthesis(g: sg.Generator, wplus):
    noise = [getattr(g.noises, f"noise_{i}") for i in range(g.num_noise_layers)]
    x = g.input.input.repeat(wplus.shape[0], 1, 1, 1)
    x = ref_styled_conv(g.conv1, x, wplus[:, 0], noise[0])
    skip = ref_to_rgb(g.to_rgb1, x, wplus[:, 1], None)
    for k in range(1, g.n_stages):
        x = ref_styled_conv(g.convs[2 * k - 2], x, wplus[:, 2 * k - 1], noise[2 * k - 1])
        x = ref_styled_conv(g.convs[2 * k - 1], x, wplus[:, 2 * k], noise[2 * k])
        skip = ref_to_rgb(g.to_rgbs[k - 1], x, wplus[:, 2 * k + 1], skip)
    return skip


# ---------------------------------------------------------------- measuring

def interleaved_times(impls: dict, runs: int, warmup: int) -> dict[str, list[float]]:
    """Wall times per implementation, the implementations alternating run by run (so that load from other
    processes hits both alike)."""
    for fn in impls.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in impls}
    for _ in range(runs):
        for name, fn in impls.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def profile_split(fn) -> dict[str, float]:
    """Seconds per category of one profiled run (wall time; conv ops counted with their children)."""
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        t0 = time.perf_counter()
        fn()
        wall = time.perf_counter() - t0
    split: dict[str, float] = defaultdict(float)
    others: dict[str, float] = defaultdict(float)
    for ev in prof.events():
        if ev.name in CONV_OPS and len(ev.input_shapes) > 1 and len(ev.input_shapes[1]) == 4:
            depthwise = ev.input_shapes[1][1] == 1
            split["blur/upsample (depthwise)" if depthwise else "modulated conv"] += ev.cpu_time_total / 1e6
    conv_ids = {id(ev) for ev in prof.events() if ev.name in CONV_OPS}
    for ev in prof.events():  # self time of ops not under a convolution
        parent, inside = ev.cpu_parent, False
        while parent is not None:
            if id(parent) in conv_ids:
                inside = True
                break
            parent = parent.cpu_parent
        if not inside and ev.name not in CONV_OPS:
            others[ev.name] += ev.self_cpu_time_total / 1e6
    split["wall"] = wall
    split["other"] = wall - split["modulated conv"] - split["blur/upsample (depthwise)"]
    split["top_other"] = sorted(others.items(), key=lambda kv: -kv[1])[:6]
    return split


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--no-reference", action="store_true")
    ap.add_argument("--keep-freed-memory", action="store_true",
                    help="apply harness.environment.keep_freed_memory() first, as `harness run` does")
    args = ap.parse_args(argv)
    kept = keep_freed_memory() if args.keep_freed_memory else False

    torch.set_num_threads(args.threads)
    g = sg.Generator(args.size)
    g.load_state_dict(filled_state_dict(g, "stylegan2_ffhq", sg.fill_recipe))
    g = g.eval().requires_grad_(False)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        wplus = g.mapping(torch.randn(args.batch * g.n_latent, g.style_dim, generator=gen))
    wplus = wplus.view(args.batch, g.n_latent, g.style_dim)

    impls = {"ours (methods.nets.stylegan2)": lambda: g(wplus)}
    if not args.no_reference:
        impls["reference (pure PyTorch, upfirdn2d-style)"] = lambda: ref_synthesis(g, wplus)

    print(f"StyleGAN2 {args.size} synthesis, batch {args.batch}, torch {torch.__version__}, "
          f"{args.threads} threads, load average before: {os.getloadavg()[0]:.2f}")
    tuned = [k for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "THP_MEM_ALLOC_ENABLE") if k in os.environ]
    settings = [f"{k}={os.environ[k]}" for k in tuned]
    if kept:
        settings.append("keep_freed_memory() (1 GiB mmap/trim thresholds)")
    print(f"allocator settings: {', '.join(settings) if settings else 'defaults'}")
    results = {}
    with torch.no_grad():
        images = {name: fn() for name, fn in impls.items()}
        all_times = interleaved_times(impls, args.runs, args.warmup)
        for name, fn in impls.items():
            times = all_times[name]
            med = statistics.median(times)
            split = profile_split(fn)
            results[name] = (med, split)
            print(f"\n{name}\n  median {med:.3f} s, min {min(times):.3f} s over {args.runs} runs "
                  f"(runs: {', '.join(f'{t:.3f}' for t in times)})")
            wall = split["wall"]
            for cat in ("modulated conv", "blur/upsample (depthwise)", "other"):
                print(f"  {cat:28s} {split[cat]:7.3f} s  {100 * split[cat] / wall:5.1f}%")
            print(f"  non-conv share (blur, up-sampling, noise, activation, modulation, copies): "
                  f"{100 * (1 - split['modulated conv'] / wall):.1f}%  (profiled run {wall:.3f} s)")
            print("  largest 'other' ops (self time): "
                  + ", ".join(f"{n} {t * 1e3:.0f} ms" for n, t in split["top_other"]))
    if len(results) == 2:
        (ours, (t_ours, _)), (ref, (t_ref, _)) = results.items()
        a, b = images[ours].float(), images[ref].float()
        err = ((a - b).norm() / b.norm()).item()
        print(f"\nspeed-up: {t_ref / t_ours:.2f}x  ({t_ref:.3f} s -> {t_ours:.3f} s); "
              f"relative L2 difference of the images: {err:.2e}")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
