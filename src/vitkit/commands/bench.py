"""``vitkit bench MODEL``: images/s, step latency, peak memory, params, FLOPs, % of matmul peak."""
from __future__ import annotations

from vitkit.commands.options import add_device_option, add_set_argument, device_of, model_sets

HELP = "benchmark inference/training speed, memory and FLOPs (optionally against timm, interleaved)"


def add_arguments(p) -> None:
    p.add_argument("model", help="registered model name, save_pretrained dir or run dir")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--img-size", type=int, default=None, help="image size (default: the model's)")
    p.add_argument("--dtype", choices=("fp32", "bf16", "int8", "int8-static", "int8-static-bf16"), default="fp32",
                   help="bf16: bf16 weights for inference, bf16 autocast for training; "
                        "int8: dynamic int8 quantization of the Linear layers (inference only); "
                        "int8-static: calibrated int8 Linear/Conv layers, compiled (inference only, needs torchao); "
                        "int8-static-bf16: int8-static with the ops between the int8 layers in bf16 (CPUs with bf16)")
    p.add_argument("--channels-last", action="store_true", help="channels-last memory format")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (warm-up includes compiling)")
    p.add_argument("--train", action="store_true",
                   help="time training steps (fwd + bwd + optimizer update) instead of inference")
    p.add_argument("--optimizer", choices=("sgd", "adamw"), default="sgd",
                   help="the training step's update (default: sgd with momentum); the same for --compare timm")
    p.add_argument("--optim-impl", choices=("auto", "fused", "foreach", "for-loop"), default="auto",
                   help="the optimizer's kernel (default: auto, torch's choice)")
    p.add_argument("--compile-step", action="store_true",
                   help="torch.compile the whole training step: forward, backward and update (with --train)")
    p.add_argument("--compile-backend", default="inductor", help="torch.compile backend (default: inductor)")
    p.add_argument("--compile-mode", choices=("default", "max-autotune", "max-autotune-no-cudagraphs"),
                   default="default", help="torch.compile mode; max-autotune times inductor's own GEMM kernels "
                   "against the library's for each shape (a longer warm-up)")
    p.add_argument("--grad-ckpt", action="store_true", help="gradient checkpointing (with --train)")
    p.add_argument("--compare", choices=("timm",), default=None, help="also run the equivalent timm model, interleaved")
    p.add_argument("--iters", type=int, default=10, help="timed steps per model (default: 10)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (default: 3)")
    p.add_argument("--no-memory", action="store_true", help="skip the profiled peak-memory step")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    p.add_argument("--host-memory", choices=("keep", "default"), default="keep",
                   help="CPU: keep freed memory in the process (keep, what vitkit's commands do) or leave the C "
                        "library's malloc as it is (default); applies to both models of --compare")
    p.add_argument("--peak-n", type=int, default=2048, help="side of the square matmul that measures the peak")
    add_set_argument(p, "model.depth=6 model.backbone.depth=50 (model. is optional)")
    add_device_option(p)


def _row(r, mem: bool) -> str:
    mb = f"{r.peak_mem_bytes / 2**20:9.1f}" if mem and r.peak_mem_bytes is not None else f"{'-':>9}"
    return (f"{r.label:<8} {r.imgs_per_s:9.1f} {r.step_s * 1e3:10.1f} {mb} "
            f"{r.achieved_flops / 1e9:9.2f} {r.peak_fraction:8.1%}")


def _print(cfg, results, peak) -> None:
    r0 = results[0]
    mode = f"train (fwd+bwd+{cfg.optimizer}, {cfg.optim_impl})" if cfg.train else "inference"
    compiled = "step" if cfg.compile_step else cfg.compile or cfg.dtype.startswith("int8-static")  # always compiled
    if cfg.compile_mode != "default":
        compiled = f"{compiled} ({cfg.compile_mode})"
    print(f"{cfg.model}: {mode}, batch {cfg.batch_size}, {cfg.dtype}, channels_last={cfg.channels_last}, "
          f"compile={compiled}, grad_ckpt={cfg.grad_checkpointing}")
    print(f"params {r0.params / 1e6:.2f}M, FLOPs/step {r0.flops_per_step / 1e9:.2f} G, "
          f"matmul peak ({cfg.dtype}) {peak / 1e9:.1f} GFLOP/s")
    print(f"{'model':<8} {'img/s':>9} {'step ms':>10} {'peak MiB':>9} {'GFLOP/s':>9} {'of peak':>8}")
    for r in results:
        print(_row(r, cfg.memory))
    if len(results) == 2:
        a, b = results
        line = f"ratio vitkit/timm: {a.imgs_per_s / b.imgs_per_s:.2f}x throughput"
        if a.peak_mem_bytes and b.peak_mem_bytes:
            line += f", {a.peak_mem_bytes / b.peak_mem_bytes:.2f}x peak memory"
        print(line)


def run(args) -> int:
    import dataclasses
    import json

    import torch

    from vitkit.engine.device import host_memory_kept
    from vitkit.tools.bench import BenchConfig, mode_peak, run_bench

    device = device_of(args)
    cfg = BenchConfig(args.model, args.batch_size, args.img_size, args.dtype, args.channels_last, args.compile,
                      args.train, args.grad_ckpt, args.iters, args.warmup, compare=args.compare,
                      optimizer=args.optimizer, optim_impl=args.optim_impl, compile_step=args.compile_step,
                      compile_backend=args.compile_backend, compile_mode=args.compile_mode,
                      memory=not args.no_memory, device=str(device), overrides=model_sets(args))
    cfg.validate()
    peak = mode_peak(cfg.dtype, n=args.peak_n, device=cfg.device)
    results = run_bench(cfg, peak)
    peak = max(peak, mode_peak(cfg.dtype, n=args.peak_n, device=cfg.device))  # best of before/after
    results = [r._replace(peak_fraction=r.achieved_flops / peak) for r in results]
    _print(cfg, results, peak)
    if args.json:
        gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
        payload = {"config": dataclasses.asdict(cfg), "matmul_peak_flops": peak, "gpu": gpu,
                   "torch": torch.__version__, "threads": torch.get_num_threads(),
                   "host_memory": "keep" if host_memory_kept() else "default",
                   "results": [r._asdict() for r in results]}
        with open(args.json, "w") as fh:
            json.dump(payload, fh, indent=2)
    return 0
