"""Where a jitted function's time goes: a jax.profiler trace, its ops grouped by kind.

The trace names each executed op by its instruction in the compiled HLO; the HLO says what
the op is (a fusion's kind is what it fuses) and where it came from (`op_name` metadata:
the JAX function and Flax module path). A matmul also carries its FLOPs and the layout of
its operands ("NT": the right operand contracted on its last axis, as a backward pass's
dy @ Wᵀ is), so a profile can say which products run below the GEMM's rate. Used by
bench_mend.py --profile.
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
DIMS = re.compile(r"^\w+\[([\d,]*)\]")
OPERAND = re.compile(r"%([\w.\-]+)")
CONTRACTING = re.compile(r"(lhs|rhs)_contracting_dims=\{([\d,]*)\}")


class Op(NamedTuple):
    kind: str
    shape: str
    source: str  # the op_name metadata: jit(...)/module path/primitive
    flops: float = 0.0  # a matmul's 2·M·N·K, over every dot it holds
    form: str = ""  # a matmul's operand layout: NN, NT, TN, TT, or "batched"


class Instruction(NamedTuple):
    name: str
    shape: str
    opcode: str
    callee: str
    source: str
    rest: str  # the operands and attributes


def dims(shape: str) -> List[int]:
    match = DIMS.match(shape)
    return [int(d) for d in match.group(1).split(",") if d] if match else []


def dot_flops_and_form(dot: Instruction, shapes: Dict[str, str]):
    """(2 · output size · contracted size, layout) of one dot; "N" for an operand contracted on
    the axis a row-major x @ W contracts (x's last, W's first), "T" otherwise."""
    lhs, rhs = OPERAND.findall(dot.rest.split(")")[0])[:2]
    contracting = dict(CONTRACTING.findall(dot.rest))
    lhs_dims, rhs_dims = dims(shapes.get(lhs, "")), dims(shapes.get(rhs, ""))
    contracted = 1
    for d in contracting.get("lhs", "").split(","):
        contracted *= lhs_dims[int(d)] if d and lhs_dims else 1
    flops = 2.0 * contracted
    for d in dims(dot.shape):
        flops *= d
    if "lhs_batch_dims" in dot.rest or len(lhs_dims) != 2 or len(rhs_dims) != 2:
        return flops, "batched"
    return flops, ("N" if contracting.get("lhs") == "1" else "T") + ("N" if contracting.get("rhs") == "0" else "T")


def hlo_ops(hlo_text: str) -> Dict[str, Op]:
    """{instruction name: Op} for every instruction of every computation of `hlo_text`."""
    computations: Dict[str, List[Instruction]] = collections.defaultdict(list)
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
            computations[current].append(Instruction(name, shape, opcode, callee.group(1) if callee else None,
                                                     source.group(1) if source else "", rest))

    def contents(computation: str, seen=()):
        """(opcodes, [(flops, form)] of the dots) of a computation and those it calls."""
        instructions = computations.get(computation, ())
        shapes = {i.name: i.shape for i in instructions}
        found, products = set(), []
        for i in instructions:
            found.add(i.opcode)
            if i.opcode == "dot":
                products.append(dot_flops_and_form(i, shapes))
            if i.callee and i.callee not in seen:
                inner, inner_products = contents(i.callee, seen + (i.callee,))
                found |= inner
                products += inner_products
        return found, products

    ops = {}
    for instructions in computations.values():
        shapes = {i.name: i.shape for i in instructions}
        for i in instructions:
            if i.callee:
                inner, products = contents(i.callee)
            else:
                inner, products = {i.opcode}, [dot_flops_and_form(i, shapes)] if i.opcode == "dot" else []
            forms = {form for _, form in products}
            ops[i.name] = Op(classify(inner), i.shape, i.source, sum(f for f, _ in products),
                             forms.pop() if len(forms) == 1 else "mixed" if forms else "")
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
