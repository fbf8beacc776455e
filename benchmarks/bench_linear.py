"""GB/s of a decode step's matmuls: ``F.linear`` (MKL) against oneDNN on packed weights.

A decode step reads every weight once for a handful of rows, so its matmuls should run at
memory bandwidth. This times both at the default model's layer shapes (all 30 layers'
q/k/v/o/gate/up/down projections stacked into one matrix per kind, plus the 49,152-row LM
head) for a few row counts, and reports the weight bytes read per second beside a
measured read of a same-sized tensor (``x.sum()``), as the Triton tutorials report a
kernel against the copy. Alternating, median of ``--runs``; ratios in one run.

    python benchmarks/bench_linear.py      # writes benchmarks/results/linear-cpu.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from proxdecode.bench_rewards import _machine
from proxdecode.linear import pack_linears, packed_forwards

RESULTS = Path(__file__).parent / "results"
HIDDEN, FFN, KV, LAYERS, VOCAB = 576, 1536, 192, 30, 49152  # SmolLM2-135M


def shapes():
    """(name, in_features, out_features): one matrix per kind of layer, the 30 layers stacked."""
    return [("q+o", HIDDEN, 2 * HIDDEN * LAYERS), ("k+v", HIDDEN, 2 * KV * LAYERS),
            ("gate+up", HIDDEN, 2 * FFN * LAYERS), ("down", FFN, HIDDEN * LAYERS), ("lm_head", HIDDEN, VOCAB)]


def _median_s(fn, runs: int) -> float:
    fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--out", default=str(RESULTS / "linear-cpu.json"))
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    out = []
    with torch.inference_mode():
        for name, in_f, out_f in shapes():
            layer = torch.nn.Linear(in_f, out_f, bias=False)
            nbytes = layer.weight.numel() * layer.weight.element_size()
            read = nbytes / _median_s(lambda: layer.weight.sum(), args.runs) / 1e9  # the bandwidth bound
            for rows in args.rows:
                x = torch.randn(rows, in_f)  # [rows, in]
                packed = pack_linears(layer, rows)
                t = {"torch": [], "onednn": []}
                for r in range(args.runs):  # alternating, so drifts hit both
                    for impl in (("torch", "onednn") if r % 2 == 0 else ("onednn", "torch")):
                        if impl == "torch":
                            t[impl].append(_median_s(lambda: layer(x), 1))
                        else:
                            with packed_forwards(packed):
                                t[impl].append(_median_s(lambda: layer(x), 1))
                med = {k: statistics.median(v) for k, v in t.items()}
                row = {"layer": name, "in": in_f, "out": out_f, "rows": rows, "read_gb_s": read,
                       "torch_ms": med["torch"] * 1e3, "onednn_ms": med["onednn"] * 1e3,
                       "torch_gb_s": nbytes / med["torch"] / 1e9, "onednn_gb_s": nbytes / med["onednn"] / 1e9,
                       "speedup": med["torch"] / med["onednn"]}
                out.append(row)
                print(f"{name:<8} rows {rows:>3}: F.linear {row['torch_gb_s']:5.1f} GB/s, oneDNN packed "
                      f"{row['onednn_gb_s']:5.1f} GB/s ({row['speedup']:.2f}x); reading the weight: "
                      f"{read:5.1f} GB/s", flush=True)
    tot = {rows: (sum(r["torch_ms"] for r in out if r["rows"] == rows),
                  sum(r["onednn_ms"] for r in out if r["rows"] == rows)) for rows in args.rows}
    for rows, (a, b) in tot.items():
        print(f"all of a decode step's matmuls, {rows} rows: F.linear {a:.1f} ms, oneDNN {b:.1f} ms ({a / b:.2f}x)")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"machine": _machine(), "runs": args.runs, "rows": out,
                                          "step_ms": {str(k): {"torch": a, "onednn": b} for k, (a, b) in tot.items()}},
                                         indent=2))


if __name__ == "__main__":
    main()
