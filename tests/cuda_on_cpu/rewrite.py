"""The one edit the CPU build makes, generated into the build folder: each
`kernel<<<grid, block, smem, stream>>>(args)` of the launcher becomes a call of the runtime's
launch(), and the kernel's `extern __shared__` array gets its (per OS thread) definition. The
kernel header is included unmodified."""
from __future__ import annotations

import re
from pathlib import Path

from tinyvim.plugins.errors import PluginError

_LAUNCH = "tinyvim_cuda_on_cpu::launch"
_CONFIG = "tinyvim_cuda_on_cpu::LaunchConfig"


def _strip_comments(text: str) -> str:
    """`text` with comments blanked (same length, newlines kept), for the scanners below."""
    def blank(m):
        return re.sub(r"[^\n]", " ", m.group(0))
    return re.sub(r"//[^\n]*|/\*.*?\*/", blank, text, flags=re.S)


def _matching(code: str, at: int, open_ch: str, close_ch: str, step: int) -> int:
    """Index of the bracket that balances the one at code[at]: forward from an `open_ch`
    (step 1) or back from a `close_ch` (step -1)."""
    depth = 0
    into, out_of = (open_ch, close_ch) if step == 1 else (close_ch, open_ch)
    i = at
    while 0 <= i < len(code):
        if code[i] == into:
            depth += 1
        elif code[i] == out_of:
            depth -= 1
            if depth == 0:
                return i
        i += step
    raise PluginError(f"unbalanced {open_ch}{close_ch} {'after' if step == 1 else 'before'} offset {at}")


def rewrite_launches(text: str) -> tuple[str, int]:
    """Each `KERNEL<<<CONFIG>>>(ARGS)` -> `launch(KERNEL, LaunchConfig(CONFIG), ARGS)`; returns the
    text and the number of launches rewritten. Line breaks are kept, so compiler messages point
    at the original lines (the generated file starts with a #line directive)."""
    out, count = text, 0
    while True:
        code = _strip_comments(out)
        start = code.find("<<<")
        if start < 0:
            return out, count
        stop = code.find(">>>", start)
        if stop < 0:
            raise PluginError(f"`<<<` without `>>>` at offset {start}")
        # the kernel expression: an identifier path with template arguments, e.g. ns::k<NT, T>
        k = start
        while k > 0 and code[k - 1].isspace():
            k -= 1
        if code[k - 1] == ">":
            k = _matching(code, k - 1, "<", ">", -1)
        while k > 0 and (code[k - 1].isalnum() or code[k - 1] in "_:"):
            k -= 1
        kernel = out[k:start].strip()
        if not re.match(r"[A-Za-z_:]", kernel):
            raise PluginError(f"cannot find the kernel name before `<<<` at offset {start}")
        open_paren = stop + 3
        while code[open_paren].isspace():
            open_paren += 1
        if code[open_paren] != "(":
            raise PluginError(f"`>>>` not followed by the kernel's arguments at offset {stop}")
        close_paren = _matching(code, open_paren, "(", ")", 1)
        config = out[start + 3:stop]
        args = out[open_paren + 1:close_paren]
        call = f"::{_LAUNCH}({kernel}, ::{_CONFIG}({config})" + (f",{args})" if args.strip() else ")")
        out = out[:k] + call + out[close_paren + 1:]
        count += 1


def extern_shared_arrays(text: str) -> list[tuple[list[str], str, str]]:
    """(namespaces, element type, name) of each `extern __shared__ T name[];`: the namespaces
    enclosing the declaration, which is where a block-scope extern declaration points."""
    code = _strip_comments(text)
    found = []
    decl = re.compile(r"extern\s+__shared__\s+(?:alignas\(\w+\)\s+)?([\w:]+(?:\s*\*)?)\s+(\w+)\s*\[\s*\]\s*;")
    for m in decl.finditer(code):
        stack: list[str | None] = []
        for tok in re.finditer(r"namespace\s+(\w+)\s*\{|namespace\s*\{|\{|\}", code[:m.start()]):
            if tok.group(0) == "}":
                stack.pop()
            elif tok.group(0).startswith("namespace"):
                stack.append(tok.group(1) or "")     # "" = an anonymous namespace
            else:
                stack.append(None)
        namespaces = [s for s in stack if s is not None]
        if "" in namespaces:
            raise PluginError(f"extern __shared__ {m.group(2)} is inside an anonymous namespace: "
                              "its definition could not be provided from another place")
        found.append((namespaces, m.group(1), m.group(2)))
    return found


def generate_translation_unit(src_dir: Path, out_dir: Path) -> Path:
    """Writes out_dir/cross_scan_kernel_on_cpu.cpp: the runtime header, the definition of the
    kernel's dynamic shared memory, then the launcher with its launches rewritten (it includes the
    kernel header from src_dir, unmodified)."""
    launcher = (src_dir / "cross_scan_kernel.cu").read_text()
    rewritten, n = rewrite_launches(launcher)
    if n == 0:
        raise PluginError("no kernel launch (<<<...>>>) found in cross_scan_kernel.cu")
    arrays = {(tuple(ns), t, name) for f in ("cross_scan_kernel.cuh", "cross_scan_kernel.cu")
              for ns, t, name in extern_shared_arrays((src_dir / f).read_text())}
    if len(arrays) != 1:
        # On a GPU every extern __shared__ array aliases the same dynamic allocation; separate
        # thread_locals would not, so more than one name is refused rather than mis-modelled.
        raise PluginError(f"expected one extern __shared__ array in the kernel, found {sorted(arrays)}")
    (namespaces, elem, name), = arrays
    open_ns = "".join(f"namespace {ns} {{ " for ns in namespaces)
    close_ns = "}" * len(namespaces)
    qualified = "::" + "::".join([*namespaces, name])
    text = f"""// GENERATED by tests/cuda_on_cpu/rewrite.py from {src_dir / 'cross_scan_kernel.cu'}; do not edit.
#include "cuda_on_cpu.h"

// The kernel's dynamic shared memory: one per OS thread; the runtime swaps the bytes of the
// blocks that share an OS thread (cuda_on_cpu_runtime.cpp).
{open_ns}alignas(16) thread_local {elem} {name}[tinyvim_cuda_on_cpu::kSmemCapacity / sizeof({elem})];{close_ns}
unsigned char* tinyvim_cuda_on_cpu::dynamic_smem() noexcept {{
    return reinterpret_cast<unsigned char*>({qualified});
}}

#line 1 "{src_dir / 'cross_scan_kernel.cu'}"
{rewritten}"""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "cross_scan_kernel_on_cpu.cpp"
    path.write_text(text)
    return path
