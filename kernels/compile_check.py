"""Compile every Triton kernel for a CUDA target without a GPU: `python -m repro.kernels.compile_check`.

The interpreter (TRITON_INTERPRET=1) runs kernels as numpy and skips the compiler, so it cannot catch
what only compilation checks (globals that are not constexpr, loop-carried type changes, shared
memory over the limit). Triton ships ptxas, so AST -> TTIR -> TTGIR -> LLVM -> PTX -> cubin runs on a
CPU-only machine. Must run without TRITON_INTERPRET (this module refuses otherwise). Prints one line
per kernel with its shared memory; exits non-zero on the first failure. `--quick`: bf16 and D=64 only.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

SMEM_LIMIT = {90: 227 * 1024, 80: 163 * 1024}  # bytes of shared memory per block (H100, A100)


def _compile(fn, sig: dict, const: dict, opts: dict, target) -> int:
    import triton
    from triton.compiler import ASTSource

    signature = {n: ("constexpr" if n in const else sig[n]) for n in fn.arg_names}
    return triton.compile(ASTSource(fn=fn, signature=signature, constexprs=const), target=target, options=opts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90, help="compute capability, e.g. 90 (H100) or 80 (A100)")
    parser.add_argument("--quick", action="store_true", help="bf16 and D=64 only")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("unset TRITON_INTERPRET: the interpreter replaces the compiler", file=sys.stderr)
        return 2
    import triton
    from triton.backends.compiler import GPUTarget

    from repro.kernels.leaky_scan import triton as scan
    from repro.kernels.memory_retrieval import triton as retrieval

    target = GPUTarget("cuda", args.arch, 32)
    limit = SMEM_LIMIT.get(args.arch, 99 * 1024)
    jobs = []
    for dt in ("bf16",) if args.quick else ("bf16", "fp16", "fp32"):
        ptr = "*" + dt
        sig = {n: ptr for n in ("Q", "K", "V", "OUT", "DO", "DK", "DV_", "DQ")}
        sig.update({"LSE": "*fp32", "DELTA": "*fp32", "TQ": "i32", "TK": "i32", "D": "i32", "DV": "i32"})
        sig["WINDOW"] = "i32"
        sig["SKIP"] = "i32"
        for D in (64,) if args.quick else (64, 65):
            bd = triton.next_power_of_2(D)
            big = bd > 64 or dt == "fp32"
            fwd_tiles = (64, 64, 4, 2) if big else (128, 64, 8, 3)  # as in retrieval._config
            for has_window in (True, False):
                base = {"HAS_WINDOW": has_window, "BLOCK_D": bd, "BLOCK_DV": bd, "UPCAST": False}
                base["PRECISION"] = "ieee" if dt == "fp32" else "tf32"
                bm, bn, nw, ns = fwd_tiles
                fwd = {**base, "BLOCK_M": bm, "BLOCK_N": bn}
                jobs.append((retrieval._fwd_kernel, sig, fwd, {"num_warps": nw, "num_stages": ns}))
                bwd = {**base, "BLOCK_M": 64, "BLOCK_N": 64}
                for fn in (retrieval._bwd_dkdv_kernel, retrieval._bwd_dq_kernel):
                    jobs.append((fn, sig, bwd, {"num_warps": 4, "num_stages": 2}))
        scan_sig = {"X": ptr, "DX": ptr, "T": "i32", "D": "i32", "BH": "i32"}
        scan_sig.update({n: "*fp32" for n in ("G", "L", "S0", "Y", "SF", "DY", "DSF", "DG", "DL", "DS0")})
        for fn in (scan._fwd_kernel, scan._bwd_kernel):
            jobs.append((fn, scan_sig, {"C": 64, "BLOCK_D": 32}, {"num_warps": 4}))
    for fn, sig, const, opts in jobs:
        t0 = time.perf_counter()
        kernel = _compile(fn, sig, const, opts, target)
        shared = kernel.metadata.shared
        shown = {k: v for k, v in const.items() if k in ("HAS_WINDOW", "BLOCK_M", "BLOCK_D", "PRECISION", "C")}
        print(f"sm_{args.arch} {fn.__name__} {sig.get('X', sig.get('Q'))} {shown}: shared {shared} B, "
              f"{time.perf_counter() - t0:.1f}s", flush=True)  # fmt: skip
        if shared > limit:
            print(f"{fn.__name__}: {shared} B of shared memory exceeds sm_{args.arch}'s {limit}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
