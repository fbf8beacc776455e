"""Compile the Triton step for an H100/H200 (sm_90) on a machine with no GPU.

The CPU tests run the kernel in Triton's interpreter, which executes its Python with numpy
and accepts code the real compiler rejects (a type mix, a non-constexpr shape, a reduction
over a wrong axis, a register-hungry tile). This script takes the kernel through Triton's
own pipeline down to the cubin, ptxas included (Triton's wheel ships it), for the
paths, blocks and dtypes the launcher picks from (nine of their combinations, with the
launcher's divisibility hints), and prints one JSON line per configuration: registers,
spill and stack bytes from ptxas' own report, and shared memory.

``tests/test_sample_step_triton.py`` runs it in a subprocess: the interpreter must be off
when the kernel module is imported (conftest turns it on for the tests).
"""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from proxdecode.kernels import sample_step as ks

# the runtime arguments' types, as the launcher passes them (sample_step_triton); si_ptr is
# an int32 scratch on the tile path and the int64 tokens (unused) off it
ARGS = dict(logits_ptr="*fp32", stride_l="i32", V="i32", seeds_ptr="*i64", step="i32",
            temp_ptr="*fp32", temp_val="fp32", top_p_ptr="*fp32", top_p_val="fp32", log_min_p_ptr="*fp32",
            log_min_p_val="fp32", k="i32", rp="fp32", inv_rp="fp32", seen_ptr="*u8", stride_seen="i32",
            sup_ptr="*i64", S="i32", reward_ptr="*fp32", stride_r="i32", steer="fp32", sv_ptr="*fp32",
            si_ptr="*i64", tok_ptr="*i64", lp_ptr="*fp32", plp_ptr="*fp32", valid_ptr="*u8", dense_ptr="*fp32")
# what Triton's launcher specialises as divisible by 16 (its "D"): every pointer (torch's
# allocations are aligned), and the vocabulary and row strides when V is (49,152 and 128,256
# are; GPT-2's 50,257 is not); those hints let it vectorise loads, which moves registers
V_INTS = ("V", "stride_l", "stride_seen", "stride_r")
ALL_ON = dict(NT=ks.NT, MAX_ITERS=ks.MAX_ITERS, CAP=16, JB=16, TILE=False, TOPK=True, TOPP=True, MINP=True,
              T_ROW=False, P_ROW=False, MINP_ROW=False, PENALTY=True, RP_RECIP=True, SUPPRESS=True, REWARD=True,
              DO_SAMPLE=True, DENSE=False, LIBDEVICE=True)
TILE512 = dict(TILE=True, CAP=512)  # the tile path's largest: top_k = 256
# name: (logits dtype, BLOCK, num_warps, V divisible by 16, flags over ALL_ON). (2048, 8) is
# the fixed GPU config, (1024, 4) and (4096, 16) the autotuner's others; every path can run
# at each of the three
CONFIGS = {
    "fp32_general_all_on": ("*fp32", ks.GPU_BLOCK, ks.GPU_WARPS, True, {}),
    "fp32_general_all_on_odd_v": ("*fp32", ks.GPU_BLOCK, ks.GPU_WARPS, False, {}),
    "bf16_general_all_on_block4096": ("*bf16", 4096, 16, True, {}),
    "bf16_tile512_all_on_per_row_dense": ("*bf16", ks.GPU_BLOCK, ks.GPU_WARPS, True,
                                          dict(TILE512, T_ROW=True, P_ROW=True, MINP_ROW=True, DENSE=True)),
    "fp32_tile512_all_on_block1024": ("*fp32", 1024, 4, True, TILE512),
    "fp32_tile512_all_on_block4096_odd_v": ("*fp32", 4096, 16, False, TILE512),
    "fp32_tile16_greedy_steered": ("*fp32", 1024, 4, True, dict(TILE=True, TOPP=False, MINP=False, DO_SAMPLE=False)),
    "fp16_no_filters_block4096": ("*fp16", 4096, 16, True, dict(TOPK=False, TOPP=False, MINP=False, PENALTY=False,
                                                                SUPPRESS=False, REWARD=False)),
    "bf16_top_p_only_per_row_block1024": ("*bf16", 1024, 4, False, dict(TOPK=False, MINP=False, P_ROW=True)),
}


def compile_one(dtype: str, block: int, warps: int, v_div16: bool, flags: dict):
    fn = ks._sample_step_kernel
    const = dict(ALL_ON, BLOCK=block, SUB=block // ks.NT, **flags)
    sig = {n: "constexpr" if n in const else ARGS[n] for n in fn.arg_names}
    sig["logits_ptr"] = dtype
    if const["TILE"]:
        sig["si_ptr"] = "*i32"
    aligned = [n for n, t in sig.items() if t.startswith("*") or (v_div16 and n in V_INTS)]
    src = ASTSource(fn, sig, constexprs={(fn.arg_names.index(n),): v for n, v in const.items()},
                    attrs={(fn.arg_names.index(n),): [["tt.divisibility", 16]] for n in aligned})
    return triton.compile(src, target=GPUTarget("cuda", 90, 32),
                          options=dict(num_warps=warps, enable_fp_fusion=False))


def main() -> None:
    assert os.environ.get("TRITON_INTERPRET") != "1", "run with the interpreter off"
    from triton import knobs
    knobs.nvidia.dump_ptxas_log = True  # ptxas -v's report, printed by Triton
    knobs.compilation.always_compile = True  # a cached cubin would skip ptxas and its report
    for name, (dtype, block, warps, v_div16, flags) in CONFIGS.items():
        with tempfile.TemporaryFile() as log_file:  # ptxas' report goes to stdout: catch it per configuration
            saved = os.dup(1)
            os.dup2(log_file.fileno(), 1)
            try:
                kernel = compile_one(dtype, block, warps, v_div16, flags)
            finally:
                sys.stdout.flush()
                os.dup2(saved, 1)
                os.close(saved)
            log_file.seek(0)
            log = log_file.read().decode(errors="replace")
        regs = re.search(r"Used (\d+) registers", log)
        spills = [int(x) for x in re.findall(r"(\d+) bytes spill stores", log)]
        stack = [int(x) for x in re.findall(r"(\d+) bytes stack frame", log)]
        print(json.dumps(dict(name=name, cubin_bytes=len(kernel.asm["cubin"]), shared=kernel.metadata.shared,
                              registers=int(regs.group(1)) if regs else None,
                              spill_store_bytes=max(spills) if spills else None,
                              stack_frame_bytes=max(stack) if stack else None)), flush=True)


if __name__ == "__main__":
    main()
