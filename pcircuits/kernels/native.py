"""An optional compiled CPU kernel for max-plus products, the dense sums of a max-product pass.

A max-product (MPE) layer does the same number of additions as a
sum-product layer, but a sum-product layer hands them to a BLAS matrix
product while torch has no max-plus kernel: the broadcast add-and-max runs
at about a fifth of BLAS speed on one CPU thread. This module holds a small
C kernel, ``out[b, g, j] = max_k a[b, g, k] + w[g, k, j]``, bit-identical to
the broadcast form (the same float additions, then the same maxima). Where
the compiler targets AVX-512 or AVX2 with FMA, it works on tiles of rows and
vector registers of columns whose accumulators stay in registers, and each
sum ``a + w`` is computed as ``fma(a, 1, w)``: the same rounded value, on the
multiply-add units, so the additions and the maxima run on different units.
That makes it about as fast as the BLAS product of a sum-product layer.
Elsewhere, portable loops run (about a quarter of that speed).

The kernel is compiled once per machine with the system C compiler
(``$CC``, else ``cc``, ``gcc`` or ``clang``; ``-O3 -march=native``) on first
use, into a private cache directory (``$PCIRCUITS_CACHE_DIR``, else
``$XDG_CACHE_HOME/pcircuits`` or ``~/.cache/pcircuits``; created with mode
0700). The file name carries a hash of the source, the compiler, the flags
and the CPU's feature flags, so a cache shared between different machines
never loads a library built for another CPU. The library is written
atomically, loaded only from a directory owned by the user and writable by
no one else, and checked against the broadcast form on a small input before
first use. Inputs holding NaN or ``+inf`` are left to torch (whose maxima
propagate NaN). Without a compiler, or with ``PCIRCUITS_NATIVE=0``, the
torch implementation is used silently (same results, slower); any other
failure also falls back to torch, with a ``RuntimeWarning``.
[`status`][pcircuits.kernels.native.status] says which path runs, and why.
The environment is read once per process, on first use.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import hashlib
import os
import platform
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import warnings
from pathlib import Path

import torch

__all__ = ["available", "status", "max_plus", "argmax_plus"]

#: Environment variable: ``0`` (or ``false``/``no``/``off``) turns the compiled kernel off.
ENV_SWITCH = "PCIRCUITS_NATIVE"
#: Environment variable: the directory of compiled kernels.
ENV_CACHE_DIR = "PCIRCUITS_CACHE_DIR"

_HEADER = r"""
#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
#include <immintrin.h>
#endif
"""
_GENERIC = r"""
static void pc_generic_{name}(const {T} *a, long a_b, long a_g, const {T} *wg, {T} *out,
                              long b_lo, long b_hi, long G, long g, long K, long N, long j_lo, long j_hi) {{
  /* out[b, g, j] for rows b_lo..b_hi-1 and columns j_lo..j_hi-1, in tiles of up to 8 rows and 64 columns */
  for (long j0 = j_lo; j0 < j_hi; j0 += 64) {{
    const long jn = j_hi - j0 < 64 ? j_hi - j0 : 64;
    for (long b = b_lo; b < b_hi; b += 8) {{
      const int rn = b_hi - b < 8 ? (int)(b_hi - b) : 8;
      {T} acc[8][64];
      for (int r = 0; r < 8; r++)
        for (int j = 0; j < 64; j++) acc[r][j] = -__builtin_inf();
      for (long k = 0; k < K; k++) {{
        const {T} *wr = wg + k * N + j0;
        for (int r = 0; r < rn; r++) {{
          const {T} x = a[(b + r) * a_b + g * a_g + k];
          for (long j = 0; j < jn; j++) {{ const {T} t = x + wr[j]; acc[r][j] = acc[r][j] > t ? acc[r][j] : t; }}
        }}
      }}
      for (int r = 0; r < rn; r++)
        for (long j = 0; j < jn; j++) out[((b + r) * G + g) * N + j0 + j] = acc[r][j];
    }}
  }}
}}
"""
_TILE = r"""
static long pc_tile_{name}_{RB}x{NV}(const {T} *a, long a_b, long a_g, const {T} *wg, {T} *out,
                                      long B, long G, long g, long K, long N, long j_lo, long j_hi) {{
  /* columns j_lo.. in tiles of {RB} rows x {NV} vectors of {L} lanes, accumulators in registers; the sum x + w
     is computed as fma(x, 1, w), the same rounded value, so it runs on the multiply-add units beside the maxima.
     Returns the first column not covered; rows from B / {RB} * {RB} on are left to the caller. */
  const long j_end = j_lo + (j_hi - j_lo) / ({NV} * {L}) * ({NV} * {L});
  const {V} one = {P}_set1_{S}(1.0);
  for (long j0 = j_lo; j0 < j_end; j0 += {NV} * {L}) {{
    for (long b = 0; b + {RB} <= B; b += {RB}) {{
      {V} acc[{RB}][{NV}];
      for (int r = 0; r < {RB}; r++)
        for (int v = 0; v < {NV}; v++) acc[r][v] = {P}_set1_{S}(-__builtin_inf());
      const {T} *ar = a + b * a_b + g * a_g;
      for (long k = 0; k < K; k++) {{
        const {T} *wr = wg + k * N + j0;
        {V} w[{NV}];
        for (int v = 0; v < {NV}; v++) w[v] = {P}_loadu_{S}(wr + v * {L});
        for (int r = 0; r < {RB}; r++) {{
          const {V} x = {P}_set1_{S}(ar[r * a_b + k]);
          for (int v = 0; v < {NV}; v++) acc[r][v] = {P}_max_{S}(acc[r][v], {P}_fmadd_{S}(x, one, w[v]));
        }}
      }}
      for (int r = 0; r < {RB}; r++)
        for (int v = 0; v < {NV}; v++) {P}_storeu_{S}(out + ((b + r) * G + g) * N + j0 + v * {L}, acc[r][v]);
    }}
  }}
  return j_end;
}}
"""
_MAIN = r"""
int pc_max_plus_{name}(const {T} *a, long a_b, long a_g, const {T} *w, {T} *out,
                       long B, long G, long K, long N) {{
  /* out[b, g, j] = max_k a[b * a_b + g * a_g + k] + w[(g * K + k) * N + j]; out is [B, G, N] contiguous.
     Returns 1, computing nothing, if an input is NaN or +inf (torch's maximum propagates NaN; the caller
     leaves such inputs to torch), else 0. */
  int bad = 0;
  for (long b = 0; b < B; b++)
    for (long g = 0; g < G; g++)
      for (long k = 0; k < K; k++) {{
        const {T} x = a[b * a_b + g * a_g + k];
        bad |= (x != x) | (x == __builtin_inf());
      }}
  for (long i = 0; i < G * K * N; i++) {{ const {T} x = w[i]; bad |= (x != x) | (x == __builtin_inf()); }}
  if (bad) return 1;
  for (long g = 0; g < G; g++) {{
    const {T} *wg = w + g * K * N;
    long j = 0;
{CALLS}
    pc_generic_{name}(a, a_b, a_g, wg, out, 0, B, G, g, K, N, j, N);  /* columns no tile covers */
  }}
  return 0;
}}
"""
_CALL = r"""    {{
      const long j_lo = j;
      j = pc_tile_{name}_{RB}x{NV}(a, a_b, a_g, wg, out, B, G, g, K, N, j_lo, N);
      pc_generic_{name}(a, a_b, a_g, wg, out, B / {RB} * {RB}, B, G, g, K, N, j_lo, j);  /* rows left over */
    }}
"""
#: (condition, vector width in bytes, intrinsic prefix, tiles as (rows, vectors)): the first whose condition holds
#: where the library is compiled is used; without one, the portable loops run.
_ISAS = [
    ("defined(__AVX512F__)", 64, "_mm512", [(6, 4), (8, 2)]),
    ("defined(__AVX2__) && defined(__FMA__)", 32, "_mm256", [(4, 2)]),
]


def _type_source(name: str, T: str) -> str:
    """The max-plus kernel for one C type: SIMD tiles where the target has them, the portable loops elsewhere."""
    suffix = "ps" if T == "float" else "pd"
    parts = [_GENERIC.format(name=name, T=T)]
    for i, (cond, width, prefix, tiles) in enumerate(_ISAS):
        lanes = width // (4 if T == "float" else 8)
        vec = {"_mm512": "__m512", "_mm256": "__m256"}[prefix] + ("" if T == "float" else "d")
        parts.append(("#if " if i == 0 else "#elif ") + cond + "\n")
        for rb, nv in tiles:
            parts.append(_TILE.format(name=name, T=T, RB=rb, NV=nv, L=lanes, V=vec, P=prefix, S=suffix))
        calls = "".join(_CALL.format(name=name, RB=rb, NV=nv) for rb, nv in tiles)
        parts.append(_MAIN.format(name=name, T=T, CALLS=calls))
    parts.append("#else\n")
    parts.append(_MAIN.format(name=name, T=T, CALLS=""))
    parts.append("#endif\n")
    return "".join(parts)


def _max_plus_source() -> str:
    """The C source of ``pc_max_plus_f32`` and ``pc_max_plus_f64``."""
    return _HEADER + _type_source("f32", "float") + _type_source("f64", "double")


_ARGMAX_TEMPLATE = r"""
int pc_argmax_plus_{name}(const {T} *c, long c_b, const long *rows, const {T} *w, long w_n,
                          const long *nodes, long A, long K, long *out) {{
  /* out[i] = the first k maximising c[r * c_b + k] + w[nodes[i] * w_n + k], r = rows ? rows[i] : i.
     Returns 1 as soon as a sum is NaN (torch's arg-max picks NaN; the caller leaves such rows to torch), else 0. */
  for (long i = 0; i < A; i++) {{
    const {T} *ci = c + (rows ? rows[i] : i) * c_b;
    const {T} *wi = w + nodes[i] * w_n;
    {T} best = -__builtin_inf();
    long arg = 0;
    int bad = 0;
    for (long k = 0; k < K; k++) {{
      const {T} t = ci[k] + wi[k];
      bad |= t != t;
      if (t > best) {{ best = t; arg = k; }}
    }}
    if (bad) return 1;
    out[i] = arg;
  }}
  return 0;
}}
"""
_SOURCE = _max_plus_source() + "".join(
    _ARGMAX_TEMPLATE.format(name=name, T=T) for name, T in (("f32", "float"), ("f64", "double"))
)
_FLAGS = ("-O3", "-march=native", "-shared", "-fPIC")
_PORTABLE_FLAGS = ("-O3", "-shared", "-fPIC")
#: Below this many additions (``B * G * n * k``) one call runs on one thread.
_PARALLEL_MIN_WORK = 1 << 21

_lock = threading.Lock()
_state: tuple[ctypes.CDLL | None, str] | None = None
_pool: tuple[int, concurrent.futures.ThreadPoolExecutor] | None = None


def _forget_pool_in_child() -> None:
    """A forked child has none of its parent's threads: it starts its own pool when it needs one."""
    global _pool
    _pool = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool_in_child)


def _switched_off() -> bool:
    return os.environ.get(ENV_SWITCH, "1").strip().lower() in ("0", "false", "no", "off")


def _compiler() -> list[str] | None:
    """The compiler command: ``$CC`` split like a shell would (``ccache gcc`` works), else ``cc``, ``gcc`` or
    ``clang`` found on the ``PATH``; None where there is none (or ``$CC``'s program is not found)."""
    cc = os.environ.get("CC", "").strip()
    if cc:
        try:
            words = shlex.split(cc)
        except ValueError:
            return None
        exe = shutil.which(words[0]) if words else None
        return [exe, *words[1:]] if exe else None
    for name in ("cc", "gcc", "clang"):
        path = shutil.which(name)
        if path:
            return [path]
    return None


def _cpu_signature() -> str:
    """The CPU's model and feature flags (a library built with ``-march=native`` runs only where they match)."""
    parts = [platform.system(), platform.machine(), platform.processor()]
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key = line.split(":", 1)[0].strip()
                if key in ("flags", "Features", "model name", "CPU part", "vendor_id"):
                    parts.append(line.strip())
                if line.strip() == "":  # the first processor is enough
                    break
    except OSError:
        pass
    return "\n".join(parts)


def _cache_dir() -> Path:
    explicit = os.environ.get(ENV_CACHE_DIR)
    if explicit:
        return Path(os.path.expanduser(explicit))
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "pcircuits"


def _private_dir(path: Path) -> str | None:
    """Creates ``path`` (mode 0700) if needed; the reason it may not hold a loadable library, or None."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = path.stat()
    except OSError as e:
        return f"cache directory {path} is not usable ({e})"
    if os.name == "posix":
        if st.st_uid != os.getuid():
            return f"cache directory {path} is not owned by the current user"
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            return f"cache directory {path} is writable by other users"
    return None


def _compile(cc: list[str], path: Path) -> str | None:
    """Compiles the kernel into ``path`` atomically; an error message, or None."""
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "max_plus.c")
        with open(src, "w", encoding="utf-8") as f:
            f.write(_SOURCE)
        partial = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        errors = []
        for flags in (_FLAGS, _PORTABLE_FLAGS):
            try:
                proc = subprocess.run(
                    [*cc, *flags, src, "-o", str(partial)], capture_output=True, text=True, timeout=120
                )
            except (OSError, subprocess.SubprocessError) as e:
                errors.append(str(e))
                continue
            if proc.returncode == 0 and partial.is_file():
                try:
                    os.replace(partial, path)
                except OSError as e:
                    errors.append(f"could not move the library into place ({e})")
                    continue
                return None
            if proc.returncode == 0:
                errors.append("the compiler exited 0 but wrote no library")
            else:
                lines = proc.stderr.strip().splitlines()
                errors.append(lines[-1] if lines else f"exit {proc.returncode}")
        partial.unlink(missing_ok=True)
        return "; ".join(errors)


def _bind(lib: ctypes.CDLL) -> None:
    ptr, long_ = ctypes.c_void_p, ctypes.c_long
    signatures = {
        "pc_max_plus": [ptr, long_, long_, ptr, ptr] + [long_] * 4,
        "pc_argmax_plus": [ptr, long_, ptr, ptr, long_, ptr, long_, long_, ptr],
    }
    for base, args in signatures.items():
        for suffix in ("f32", "f64"):
            fn = getattr(lib, f"{base}_{suffix}")
            fn.argtypes = args
            fn.restype = ctypes.c_int


def _self_test(lib: ctypes.CDLL) -> str | None:
    """Checks the library against the broadcast form (tails of rows and columns, strides, ``-inf``)."""
    gen = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.float64):
        a = torch.randn(11, 3, 70, generator=gen, dtype=dtype)[:, 1:]  # [11, 2, 70], not contiguous
        a[0, 0, :] = -float("inf")
        a[3, 1, 5] = -float("inf")
        w = torch.randn(2, 70, 67, generator=gen, dtype=dtype)
        w[1, :, 2] = -float("inf")
        out = _call(lib, a, w, threads=1)
        ref = (a.unsqueeze(-1) + w.unsqueeze(0)).amax(2)
        with_nan = a.clone()
        with_nan[2, 0, 3] = float("nan")
        c = torch.randint(-3, 1, (9, 12), generator=gen).to(dtype)[:, 2:]  # ties; rows not contiguous
        c[4] = -float("inf")
        lw = torch.randint(-2, 1, (5, 10), generator=gen).to(dtype)
        rows = torch.randint(0, 9, (30,), generator=gen)
        nodes = torch.randint(0, 5, (30,), generator=gen)
        arg = _call_argmax(lib, c, rows, lw, nodes)
        agree = (
            out is not None
            and arg is not None
            and torch.equal(out, ref)
            and torch.equal(arg, (c[rows] + lw[nodes]).argmax(-1))
            and _call(lib, with_nan, w, threads=1) is None  # NaN is left to torch
        )
        if not agree:
            return f"the compiled kernel disagrees with torch in {dtype} (compiler or flags not supported)"
    return None


def _load() -> tuple[ctypes.CDLL | None, str]:
    """The checked library, or None and the reason; unexpected failures also warn (a missing compiler does not)."""
    if _switched_off():
        return None, f"turned off by {ENV_SWITCH}={os.environ.get(ENV_SWITCH)}"
    cc = _compiler()
    if cc is None:
        if os.environ.get("CC", "").strip():
            return None, f"CC={os.environ['CC']!r} is not an executable C compiler"
        return None, "no C compiler found (set CC, or install cc/gcc/clang)"
    try:
        lib, problem = _build_and_check(cc)
    except Exception as e:  # never let the optional kernel break a query
        lib, problem = None, f"unexpected error ({type(e).__name__}: {e})"
    if lib is None:
        warnings.warn(f"pcircuits: {problem}; MPE uses the torch implementation", RuntimeWarning, stacklevel=4)
        return None, problem
    return lib, problem


def _library_path(directory: Path, cc: list[str]) -> Path:
    """Where the library built by ``cc`` for this CPU lives: the name hashes source, compiler, flags and CPU."""
    key = hashlib.sha256("\0".join([_SOURCE, *cc, " ".join(_FLAGS), _cpu_signature()]).encode()).hexdigest()[:24]
    return directory / f"max_plus-{key}{'.dll' if sys.platform == 'win32' else '.so'}"


def _build_and_check(cc: list[str]) -> tuple[ctypes.CDLL | None, str]:
    """Finds or compiles the library for ``cc`` in the cache directory, loads and checks it."""
    directory = _cache_dir()
    problem = _private_dir(directory)
    if problem is not None:
        return None, problem
    path = _library_path(directory, cc)
    command = " ".join(cc)
    for attempt in range(2):  # a cached file that does not load (truncated, corrupted) is rebuilt once
        if not path.exists():
            problem = _compile(cc, path)
            if problem is not None:
                return None, f"compiling with {command} failed: {problem}"
        try:
            lib = ctypes.CDLL(str(path))
            _bind(lib)
            break
        except (OSError, AttributeError) as e:
            if attempt == 1:
                return None, f"loading {path} failed ({e})"
            path.unlink(missing_ok=True)
    problem = _self_test(lib)
    if problem is not None:
        path.unlink(missing_ok=True)  # the next process compiles afresh
        return None, problem
    return lib, f"compiled with {command} ({path})"


def _library() -> ctypes.CDLL | None:
    global _state
    if _state is None:
        with _lock:
            if _state is None:
                _state = _load()
    return _state[0]


def available() -> bool:
    """Whether the compiled kernel is in use (compiles and loads it on the first call)."""
    return _library() is not None


def status() -> str:
    """One line: where the compiled kernel was loaded from, or why the torch implementation is used."""
    _library()
    assert _state is not None
    return ("in use: " if _state[0] is not None else "not in use: ") + _state[1]


def _reset() -> None:
    """Forgets the loaded library (the next call loads it again under the current environment); for tests."""
    global _state
    with _lock:
        _state = None


def _call(lib: ctypes.CDLL, a: torch.Tensor, w: torch.Tensor, threads: int) -> torch.Tensor | None:
    """Runs the kernel: ``a [B, G, K]`` (unit stride along ``K``), ``w [G, K, N]`` contiguous -> ``[B, G, N]``.

    None where an input is NaN or ``+inf`` (the kernel computes nothing then; torch's maximum propagates NaN).
    """
    B, G, K = a.shape
    N = w.shape[2]
    out = torch.empty(B, G, N, dtype=a.dtype)
    fn = lib.pc_max_plus_f32 if a.dtype == torch.float32 else lib.pc_max_plus_f64
    if threads <= 1 or B < 16 or B * G * N * K < _PARALLEL_MIN_WORK:
        bad = fn(a.data_ptr(), a.stride(0), a.stride(1), w.data_ptr(), out.data_ptr(), B, G, K, N)
        return None if bad else out
    rows = -(-B // threads)
    rows = -(-rows // 8) * 8  # whole blocks of 8 rows per thread
    size = a.element_size()

    def part(b0: int) -> int:  # ctypes releases the GIL for the call
        nb = min(rows, B - b0)
        return fn(a.data_ptr() + b0 * a.stride(0) * size, a.stride(0), a.stride(1), w.data_ptr(),
                  out.data_ptr() + b0 * G * N * size, nb, G, K, N)

    bad = any(list(_thread_pool(threads).map(part, range(0, B, rows))))
    return None if bad else out


def _call_argmax(
    lib: ctypes.CDLL, c: torch.Tensor, rows: torch.Tensor | None, w: torch.Tensor, nodes: torch.Tensor
) -> torch.Tensor | None:
    """Runs the arg-max kernel: ``c [B, K]``, ``w [n, K]`` (unit stride along ``K``), ``rows``/``nodes [A]`` long.

    None where a sum is NaN (torch's arg-max picks NaN; the caller computes such a pass with torch).
    """
    A, K = nodes.numel(), c.shape[1]
    out = torch.empty(A, dtype=torch.long)
    fn = lib.pc_argmax_plus_f32 if c.dtype == torch.float32 else lib.pc_argmax_plus_f64
    bad = fn(c.data_ptr(), c.stride(0), None if rows is None else rows.data_ptr(), w.data_ptr(), w.stride(0),
             nodes.data_ptr(), A, K, out.data_ptr())
    return None if bad else out


def _thread_pool(threads: int) -> concurrent.futures.ThreadPoolExecutor:
    global _pool
    with _lock:
        if _pool is None or _pool[0] < threads:
            _pool = (threads, concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="pcircuits-max-plus"))
        return _pool[1]


def max_plus(children: torch.Tensor, weights_t: torch.Tensor) -> torch.Tensor | None:
    """``max_k children[b, g, k] + weights_t[g, k, j]`` by the compiled kernel, or None where it does not apply.

    It applies to CPU tensors of float32 or float64 (both the same dtype)
    that need no gradient and hold no NaN or ``+inf``, once the kernel is
    available. Rows are split over `torch.get_num_threads()` threads for
    large layers.

    Args:
        children: ``[B, G, k]`` log-values (any strides; copied if ``k`` is not contiguous).
        weights_t: ``[G, k, n]`` log-weights (copied if not contiguous).

    Returns:
        ``[B, G, n]``, bit-identical to ``(children.unsqueeze(-1) + weights_t.unsqueeze(0)).amax(2)``, or None.
    """
    if (
        children.device.type != "cpu"
        or weights_t.device.type != "cpu"
        or children.dtype not in (torch.float32, torch.float64)
        or weights_t.dtype != children.dtype
        or (torch.is_grad_enabled() and (children.requires_grad or weights_t.requires_grad))
        or children.numel() == 0
        or weights_t.numel() == 0
    ):
        return None
    lib = _library()
    if lib is None:
        return None
    if children.stride(-1) != 1:
        children = children.contiguous()
    if not weights_t.is_contiguous():
        weights_t = weights_t.contiguous()
    return _call(lib, children, weights_t, torch.get_num_threads())


def argmax_plus(
    children: torch.Tensor, rows: torch.Tensor | None, log_weights: torch.Tensor, nodes: torch.Tensor
) -> torch.Tensor | None:
    """``argmax_k children[rows[i], k] + log_weights[nodes[i], k]`` by the compiled kernel, or None.

    The backtracking step of MPE for one dense group: each active node
    ``nodes[i]`` in pass row ``rows[i]`` follows its maximising child. Ties
    go to the first maximiser, like `torch.argmax`. It applies where
    [`max_plus`][pcircuits.kernels.native.max_plus] does (CPU, float32 or float64, no gradient), and
    not where a sum is NaN (torch's arg-max picks the NaN).

    Args:
        children: ``[B, k]`` child log-values (copied if ``k`` is not contiguous).
        rows: ``[A]`` long row of each active node, or None for rows ``0..A-1`` (then ``A == B``).
        log_weights: ``[n, k]`` log-weights (copied if ``k`` is not contiguous).
        nodes: ``[A]`` long node of each active node.

    Returns:
        ``[A]`` long, equal to ``(children[rows] + log_weights[nodes]).argmax(-1)``, or None.
    """
    if (
        children.device.type != "cpu"
        or children.dtype not in (torch.float32, torch.float64)
        or log_weights.dtype != children.dtype
        or log_weights.device.type != "cpu"
        or nodes.numel() == 0
        or children.shape[1] == 0
        or (rows is None and nodes.numel() != children.shape[0])
    ):
        return None
    lib = _library()
    if lib is None:
        return None
    if children.stride(1) != 1:
        children = children.contiguous()
    if log_weights.stride(1) != 1:
        log_weights = log_weights.contiguous()
    if rows is not None and (rows.dtype != torch.long or not rows.is_contiguous()):
        rows = rows.to(torch.long).contiguous()
    if nodes.dtype != torch.long or not nodes.is_contiguous():
        nodes = nodes.to(torch.long).contiguous()
    return _call_argmax(lib, children, rows, log_weights, nodes)
