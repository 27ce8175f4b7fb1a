"""Where a jitted function's time goes: a jax.profiler trace, its ops grouped by kind.

The trace names each executed op by its instruction in the compiled HLO; the HLO says what
the op is (a fusion's kind is what it fuses) and where it came from (`op_name` metadata:
the JAX function and Flax module path). Used by bench_mend.py --profile.
"""
import collections
import glob
import gzip
import json
import re
import tempfile
from typing import Callable, Dict, List, NamedTuple

import jax

# Checked in order: a fusion holding a dot is a matmul whatever else it fuses.
KINDS = (
    ("matmul", ("dot", "convolution")),
    ("reduction", ("reduce", "reduce-window", "sort", "argmax")),
    ("gather/scatter", ("gather", "scatter", "dynamic-slice", "dynamic-update-slice")),
    ("copy/transpose", ("copy", "transpose", "concatenate", "pad", "slice", "reverse")),
)
MOVEMENT = {"parameter", "constant", "broadcast", "bitcast", "reshape", "get-tuple-element", "tuple", "iota"}
INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(\S+(?:\s\S+)*?)\s([a-z\-]+)\((.*)$")
COMPUTATION = re.compile(r"^%?([\w.\-]+)\s.*\{\s*$")
CALLS = re.compile(r"calls=%?([\w.\-]+)")
OP_NAME = re.compile(r'op_name="([^"]*)"')


class Op(NamedTuple):
    kind: str
    shape: str
    source: str  # the op_name metadata: jit(...)/module path/primitive


def hlo_ops(hlo_text: str) -> Dict[str, Op]:
    """{instruction name: Op} for every instruction of every computation of `hlo_text`."""
    computations: Dict[str, List[tuple]] = collections.defaultdict(list)
    current = None
    for line in hlo_text.splitlines():
        if current is None or line.startswith(("%", "ENTRY")):
            head = COMPUTATION.match(line.replace("ENTRY ", ""))
            if head and "=" not in line.split("(")[0]:
                current = head.group(1)
                continue
        match = INSTRUCTION.match(line)
        if match and current is not None:
            name, shape, opcode, rest = match.groups()
            callee = CALLS.search(rest)
            source = OP_NAME.search(rest)
            computations[current].append((name, shape, opcode, callee.group(1) if callee else None,
                                          source.group(1) if source else ""))

    def opcodes(computation: str, seen=()) -> set:
        found = set()
        for _, _, opcode, callee, _ in computations.get(computation, ()):
            found.add(opcode)
            if callee and callee not in seen:
                found |= opcodes(callee, seen + (callee,))
        return found

    ops = {}
    for instructions in computations.values():
        for name, shape, opcode, callee, source in instructions:
            inner = opcodes(callee) if callee else {opcode}
            ops[name] = Op(classify(inner), shape, source)
    return ops


def classify(opcodes: set) -> str:
    for kind, members in KINDS:
        if opcodes & set(members):
            return kind
    if opcodes <= MOVEMENT:
        return "copy/transpose"
    return "elementwise"


def trace_events(fn: Callable[[], object], repeats: int) -> List[dict]:
    """The complete ("X") events of a trace of `repeats` calls of `fn` (compiled beforehand)."""
    jax.block_until_ready(fn())
    with tempfile.TemporaryDirectory() as logdir:
        jax.profiler.start_trace(logdir)
        for _ in range(repeats):
            jax.block_until_ready(fn())
        jax.profiler.stop_trace()
        (path,) = glob.glob(f"{logdir}/**/*.trace.json.gz", recursive=True)
        with gzip.open(path) as f:
            return [e for e in json.load(f)["traceEvents"] if e.get("ph") == "X"]


def profile(fn: Callable[[], object], hlo_text: str, repeats: int = 3):
    """({kind: seconds per call}, [(seconds per call, name, Op)] slowest first) of the ops of one
    compiled function `fn` (instruction names are unique within one HLO module only)."""
    ops = hlo_ops(hlo_text)
    by_kind: Dict[str, float] = collections.defaultdict(float)
    by_op: Dict[str, float] = collections.defaultdict(float)
    for event in trace_events(fn, repeats):
        op = ops.get(event["name"])
        if op is not None:
            seconds = event.get("dur", 0) * 1e-6 / repeats
            by_kind[op.kind] += seconds
            by_op[event["name"]] += seconds
    slowest = sorted(((t, name, ops[name]) for name, t in by_op.items()), reverse=True)
    return dict(by_kind), slowest
