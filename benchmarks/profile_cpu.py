"""Where the time goes: torch.profiler's op table for one forward (or training step).

    .venv/bin/python benchmarks/profile_cpu.py [--impl mambaout|timm] [--train] [-b 16] [--precision bf16]

The GEMM rows (mkldnn::_linear_pointwise, aten::addmm/addmm_/mm) against the total are the
"GEMMs are the floor" figures in docs/performance.md.
"""
import argparse

import torch
from torch.profiler import ProfilerActivity, profile

import mambaout


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--impl", default="mambaout", choices=["mambaout", "timm"])
    p.add_argument("--model", default="mambaout_tiny")
    p.add_argument("--train", action="store_true")
    p.add_argument("-b", "--batch-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"],
                   help="bf16: bf16 weights and input (ours); timm runs under bf16 autocast")
    a = p.parse_args()
    if a.impl == "timm":
        import timm
        model = timm.create_model(a.model)
    else:
        model = mambaout.create_model(a.model)
    model.train(a.train)
    x = torch.randn(a.batch_size, 3, 224, 224)
    bf16 = a.precision == "bf16"
    if bf16 and a.impl == "mambaout" and not a.train:
        model, x = model.to(torch.bfloat16), x.to(torch.bfloat16)
    autocast = bf16 and x.dtype == torch.float32

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            if a.train:
                model(x).float().sum().backward()
            else:
                with torch.no_grad():
                    model(x)
    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(a.steps):
            step()
    print(f"{a.impl} {a.model}, batch {a.batch_size}, {'train' if a.train else 'infer'}, {a.precision}, "
          f"{a.steps} steps (divide times by {a.steps})")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


if __name__ == "__main__":
    main()
