"""GB/s of a decode step's matmuls: ``F.linear`` (MKL) against oneDNN on packed weights.

A decode step reads every weight once for a handful of rows, so its matmuls should run at
memory bandwidth. This builds the default model's linear layers at their real shapes, 30
of each kind (q, k, v, o, gate, up, down: distinct weights, so no cache holds them) plus
the 49,152-row LM head, calls each once per "step" as the forward does, and reports the
weight bytes read per second beside a plain read of the same weights (``w.sum()``), as
the Triton tutorials report a kernel against the copy. The two sides alternate within
each round; medians of ``--runs``; ratios in one run. Packing is timed apart: the first
pack of a shape in the process (``first_pack_ms``: oneDNN's first use of it, which a
process pays in its first generate call) and the median of three more (``pack_ms``: what
every later call pays).

    python benchmarks/bench_linear.py      # writes benchmarks/results/linear-cpu.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from proxdecode.bench import _machine
from proxdecode.linear import pack_linears, packed_forwards

RESULTS = Path(__file__).parent / "results"
HIDDEN, FFN, KV, LAYERS, VOCAB = 576, 1536, 192, 30, 49152  # SmolLM2-135M


def kinds():
    """(name, in_features, out_features, count): the default model's linear layers."""
    return [("q", HIDDEN, HIDDEN, LAYERS), ("k", HIDDEN, KV, LAYERS), ("v", HIDDEN, KV, LAYERS),
            ("o", HIDDEN, HIDDEN, LAYERS), ("gate", HIDDEN, FFN, LAYERS), ("up", HIDDEN, FFN, LAYERS),
            ("down", FFN, HIDDEN, LAYERS), ("lm_head", HIDDEN, VOCAB, 1)]


def _seconds(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--out", default=str(RESULTS / "linear-cpu.json"))
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    out = []
    with torch.inference_mode():
        for name, in_f, out_f, count in kinds():
            model = torch.nn.Sequential(*[torch.nn.Linear(in_f, out_f, bias=False) for _ in range(count)])
            layers = list(model)
            nbytes = sum(m.weight.numel() * m.weight.element_size() for m in layers)
            read_s = statistics.median(_seconds(lambda: [m.weight.sum() for m in layers])
                                       for _ in range(args.runs))
            for rows in args.rows:
                x = torch.randn(rows, in_f)  # [rows, in]: every layer of a kind takes the same shape
                first_pack_s = _seconds(lambda: pack_linears(model, rows))  # first of these layers (o reuses q's shape)
                pack_s = statistics.median(_seconds(lambda: pack_linears(model, rows)) for _ in range(3))
                packed = pack_linears(model, rows)  # what each generate call pays once

                def step():
                    for m in layers:
                        m(x)

                step()
                with packed_forwards(packed):
                    step()
                t = {"torch": [], "onednn": []}
                for r in range(args.runs):  # alternating, so drifts hit both
                    for impl in (("torch", "onednn") if r % 2 == 0 else ("onednn", "torch")):
                        if impl == "torch":
                            t[impl].append(_seconds(step))
                        else:
                            with packed_forwards(packed):
                                t[impl].append(_seconds(step))
                med = {k: statistics.median(v) for k, v in t.items()}
                row = {"layer": name, "in": in_f, "out": out_f, "count": count, "rows": rows,
                       "read_gb_s": nbytes / read_s / 1e9,
                       "torch_ms": med["torch"] * 1e3, "onednn_ms": med["onednn"] * 1e3, "pack_ms": pack_s * 1e3,
                       "first_pack_ms": first_pack_s * 1e3,
                       "torch_gb_s": nbytes / med["torch"] / 1e9, "onednn_gb_s": nbytes / med["onednn"] / 1e9,
                       "speedup": med["torch"] / med["onednn"]}
                out.append(row)
                print(f"{name:<8} x{count:<3} rows {rows:>3}: F.linear {row['torch_gb_s']:5.1f} GB/s, oneDNN "
                      f"packed {row['onednn_gb_s']:5.1f} GB/s ({row['speedup']:.2f}x); reading the weights: "
                      f"{row['read_gb_s']:5.1f} GB/s", flush=True)
    tot = {rows: (sum(r["torch_ms"] for r in out if r["rows"] == rows),
                  sum(r["onednn_ms"] for r in out if r["rows"] == rows)) for rows in args.rows}
    pack_ms = {rows: sum(r["pack_ms"] for r in out if r["rows"] == rows) for rows in args.rows}
    first_ms = {rows: sum(r["first_pack_ms"] for r in out if r["rows"] == rows) for rows in args.rows}
    for rows, (a, b) in tot.items():
        print(f"all 211 linear layers of a decode step, {rows} rows: F.linear {a:.1f} ms, oneDNN {b:.1f} ms "
              f"({a / b:.2f}x); packing them all once: {pack_ms[rows]:.0f} ms ({first_ms[rows]:.0f} ms the "
              "first time in the process)")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"machine": _machine(), "runs": args.runs, "rows": out,
                                          "step_ms": {str(k): {"torch": a, "onednn": b} for k, (a, b) in tot.items()},
                                          "pack_ms": {str(k): v for k, v in pack_ms.items()},
                                          "first_pack_ms": {str(k): v for k, v in first_ms.items()}},
                                         indent=2))


if __name__ == "__main__":
    main()
