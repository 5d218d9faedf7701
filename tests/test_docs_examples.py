"""The quoted examples of README.md and docs/*.md are what tinyvim prints (issue 26, item 14).

Every `$ tinyvim ...` line in a code block is an example; the lines after it, up to the next `$`
line or the end of the block, are its output. Each example is checked one of three ways:

- cheap ones (milliseconds to a few seconds) run in-process, and their output must have the
  quoted shape: the same lines, word for word, with numbers allowed to differ and `…` / `...`
  standing for anything (a line of its own: any number of lines);
- the expensive ones that run on a CPU (info's GMAC count, 224x224 export, validate, profile,
  quantize) run the same way in one `slow` test, in the order given here (later ones read
  earlier ones' files);
- the rest (a GPU, TensorRT, a Triton server, a checkpoint we do not have) by a cheaper proxy: the
  command line parses - the command exists and takes every option with the value shown.

And every page in docs/ is linked from README.md."""
from __future__ import annotations

import math
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import onnx
import pytest
import torch
from click.testing import CliRunner

import tinyvim
from test_runners import tiny_onnx, tiny_torch
from tinyvim.cli import COMMANDS, cli
from tinyvim.tools import noise

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


@dataclass
class Example:
    page: str
    line: int
    command: str            # as quoted, after "$ "
    output: list[str]

    @property
    def argv(self) -> list[str]:
        return shlex.split(self.command, comments=True)[1:]

    def __str__(self) -> str:
        return f"{self.page}:{self.line}: $ {self.command}"


def examples() -> list[Example]:
    found = []
    for page in PAGES:
        lines = page.read_text().split("\n")
        in_block, current = False, None
        for number, line in enumerate(lines, 1):
            if line.startswith("```"):
                in_block, current = not in_block, None
                continue
            if not in_block:
                continue
            if line.startswith("$ "):
                current = None
                if line.startswith("$ tinyvim "):
                    command = line[2:]
                    while command.endswith("\\"):          # a command continued on the next line
                        command = command[:-1] + " " + lines[number].strip()
                        number += 1
                    current = Example(str(page.relative_to(ROOT)), number, command, [])
                    found.append(current)
            elif current is not None and not lines[number - 2].endswith("\\"):
                current.output.append(line)
    return found


_NUMBER = r"(?<![A-Za-z_])[-+]?(?:\d[\d,]*(?:\.\d+)?|\.\d+)(?:e[-+]?\d+)?"


def _line_pattern(quoted: str) -> re.Pattern:
    """A quoted output line as a regex: numbers stand for any number, `…`/`...` for anything,
    runs of spaces for any whitespace (table columns widen with their numbers)."""
    parts = re.split(r"(…|\.\.\.|" + _NUMBER + r"|\s+)", quoted.strip())
    regex = ""
    for part in parts:
        if not part:
            continue
        if part in ("…", "..."):
            regex += ".*"
        elif part.isspace():
            regex += r"\s+"
        elif re.fullmatch(_NUMBER, part):
            regex += r"(?:[-+]?(?:\d[\d,]*(?:\.\d+)?|\.\d+)(?:e[-+]?\d+)?|nan|inf)"
        else:
            regex += re.escape(part)
    return re.compile(regex)


def shape_problems(quoted: list[str], actual: list[str]) -> str | None:
    """None when `actual` has the shape of `quoted`, else what differs."""
    quoted = [q for q in quoted if q.strip()]
    actual = [a for a in actual if a.strip()]

    def match(qi: int, ai: int) -> bool:
        if qi == len(quoted):
            return ai == len(actual)
        if quoted[qi].strip() in ("…", "...") or quoted[qi].strip().startswith("… "):
            return any(match(qi + 1, k) for k in range(ai, len(actual) + 1))
        return ai < len(actual) and bool(_line_pattern(quoted[qi]).fullmatch(actual[ai].strip())) \
            and match(qi + 1, ai + 1)

    if match(0, 0):
        return None
    return "quoted:\n  " + "\n  ".join(quoted) + "\nprinted:\n  " + "\n  ".join(actual)


# --------------------------------------------------------------------- what runs how
#: examples cheap enough for every run (command as quoted -> files it needs, made by _prepare)
CHEAP = {
    "tinyvim info --img-size 230": (),
    "tinyvim info --variant b --checkpoint tinyvim_s.pth": ("tinyvim_s.pth",),
    "tinyvim validate notes.onnx": ("notes.onnx",),
    "tinyvim build-engine tinyvim-s.onnx": ("tinyvim-s.onnx",),
}
#: examples that run on a CPU in tens of seconds each: the slow test runs them in page order
SLOW = [
    "tinyvim info",           # ~13 s of CPU (GMACs counted through torch's flop counter, twice)
    "tinyvim export --variant s --dynamic-batch -o tinyvim-s.onnx",
    "tinyvim export --scan plugin -o tinyvim-s-plugin.onnx",
    "tinyvim validate tinyvim-s.onnx --batch 4 --num-inputs 4 --json validate.json",
    "tinyvim profile --backend torch,torch-fused,ort --model tinyvim-s.onnx --batch 1,8 --threads 2 --warmup 3 "
    "--iters 10 --json profile.json --plot profile.png",
    "tinyvim quantize tinyvim-s.onnx --calib-random 32 --reduce-range -o tinyvim-s.int8.onnx",
    "tinyvim validate tinyvim-s.int8.onnx --backend ov --batch 4 --num-inputs 4",
]


def _prepare(folder: Path, names) -> None:
    for name in names:
        if name == "tinyvim_s.pth":
            torch.save(tinyvim.create_model("s").state_dict(), folder / name)
        elif name == "notes.onnx":
            (folder / name).write_text("meeting notes, not a model\n")
        elif name == "tinyvim-s.onnx":     # build-engine stops at the missing TensorRT before reading it
            onnx.save(tiny_onnx(tiny_torch(), size=224), folder / name)


def _run(example: Example, folder: Path, monkeypatch) -> list[str]:
    monkeypatch.chdir(folder)
    r = CliRunner().invoke(cli, example.argv, prog_name="tinyvim")
    assert r.exception is None or isinstance(r.exception, SystemExit), (str(example), r.output)
    return r.output.splitlines()


def _by_command(command: str) -> list[Example]:
    return [e for e in examples() if e.command.split("#")[0].strip() == command]


def test_the_pages_hold_examples_of_every_kind():
    """The split into cheap / slow / parsed is what this file says it is: every CHEAP and SLOW
    command is quoted somewhere (a renamed example is noticed, not silently dropped)."""
    quoted = {e.command.split("#")[0].strip() for e in examples()}
    assert set(CHEAP) <= quoted and set(SLOW) <= quoted, (set(CHEAP) | set(SLOW)) - quoted
    assert len(examples()) >= 20


@pytest.mark.parametrize("command", list(CHEAP))
def test_cheap_examples_print_what_the_docs_show(command, tmp_path, monkeypatch):
    _prepare(tmp_path, CHEAP[command])
    for example in _by_command(command):
        problem = shape_problems(example.output, _run(example, tmp_path, monkeypatch))
        assert problem is None, f"{example}\n{problem}"


@pytest.mark.slow
def test_expensive_cpu_examples_print_what_the_docs_show(tmp_path, monkeypatch):
    pytest.importorskip("openvino", reason="the int8 example validates on OpenVINO")
    # the pages quote a quiet machine's timing verdict; this checks the examples' shape, not how busy
    # the machine running the suite is (tinyvim.tools.noise has its own tests)
    for limit in ("MAX_SPREAD", "MAX_OTHER_LOAD_PER_CORE", "MAX_STEAL"):
        monkeypatch.setattr(noise, limit, math.inf)
    # the profile example's 13 rounds of three backends at batches 1 and 8 were ~40 s of CPU; its
    # output has the same shape after 2 + 3 rounds (the counts are numbers, "rounds" stays plural)
    from tinyvim.tools import profile as prof
    real_profile = prof.run_profile
    monkeypatch.setattr(prof, "run_profile", lambda *a, timing, **k: real_profile(
        *a, timing=prof.Timing(min(timing.warmup, 2), min(timing.iters, 3), timing.duration), **k))
    for command in SLOW:
        for example in _by_command(command):
            problem = shape_problems(example.output, _run(example, tmp_path, monkeypatch))
            assert problem is None, f"{example}\n{problem}"


def test_every_other_example_parses():
    """Proxy for the examples that need a GPU, TensorRT, a server or files we do not have: the
    command exists and click accepts every option and value as quoted (a renamed or removed
    option, a choice no longer offered, fails here)."""
    problems = []
    for example in examples():
        argv = example.argv
        if example.command.split("#")[0].strip() in CHEAP:
            continue            # run in full above (and some are refused on purpose)
        if not argv or argv[0] not in COMMANDS:
            problems.append(f"{example}: no command {argv[:1]}")
            continue
        command = cli.get_command(None, argv[0])
        try:
            command.make_context(argv[0], argv[1:], parent=cli.make_context("tinyvim", [argv[0]]))
        except Exception as exc:  # noqa: BLE001 - any refusal is the finding
            problems.append(f"{example}: {exc}")
    assert not problems, "\n".join(problems)


def test_every_docs_page_is_linked_from_the_readme():
    readme = (ROOT / "README.md").read_text()
    unlinked = [p.name for p in (ROOT / "docs").glob("*.md") if f"(docs/{p.name})" not in readme]
    assert unlinked == [], f"docs pages the README does not link: {unlinked}"


@pytest.mark.parametrize("quoted,printed,ok", [
    (["logits   16x1000   4.77e-07  PASS"], ["logits   16x1000             1.2e-06  PASS"], True),
    (["logits   16x1000   4.77e-07  PASS"], ["logits   16x1000   4.77e-07  FAIL"], False),
    (["a", "…", "z"], ["a", "b", "c", "z"], True),
    (["a", "…", "z"], ["a", "b"], False),
    (["exported x.onnx (21.7 MiB, 695 nodes, 9.3 s)"], ["exported x.onnx (21.7 MiB, 962 nodes, 12 s)"], True),
    (["fp16 weights"], ["fp32 weights"], False),                 # digits glued to a word are the word
    (["quantized x (6.2 MiB, … nodes)"], ["quantized x (6.2 MiB, 962 nodes)"], True),
    (["line one"], ["line one", "an extra line"], False),
])
def test_shape_comparison(quoted, printed, ok):
    assert (shape_problems(quoted, printed) is None) == ok
