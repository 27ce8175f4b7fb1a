"""jax.jit for a function that returns most of its input unchanged, without copying that part.

An edit returns the whole edited model, of which it changes a few matrices. Under jax.jit,
XLA writes every output to a buffer of its own, so the unchanged leaves, the bulk of the model,
were copied on every edit: distilgpt2's edit wrote 312 MiB to change 57, and an edited 7B
model took twice the model's memory. `jit_forwarding_inputs` compiles only the outputs that are
not inputs passed through and hands back the input arrays themselves for the rest, as the
function returns them when it is not jitted.
"""
from typing import Any, Callable, Dict, Tuple

import jax
from jax.extend.core import jaxpr_as_fun


def jit_forwarding_inputs(fn: Callable) -> "ForwardingJit":
    """jax.jit(fn) whose outputs that are input leaves, unchanged, are those very arrays."""
    return ForwardingJit(fn)


class ForwardingJit:
    """Which outputs are forwarded inputs is read from fn's jaxpr, once per argument structure and
    shapes; the compiled function computes the others. The outputs alias the inputs, so a caller
    must not donate one without the other."""

    def __init__(self, fn: Callable):
        self.fn = fn
        self._compiled: Dict[Any, Tuple] = {}

    def _plan(self, leaves, treedef):
        key = (treedef, tuple((getattr(x, "shape", None), getattr(x, "dtype", type(x))) for x in leaves))
        if key not in self._compiled:
            flat_fn = lambda *xs: self.fn(*jax.tree_util.tree_unflatten(treedef, xs))
            closed, out_shape = jax.make_jaxpr(flat_fn, return_shape=True)(*leaves)
            position = {id(v): i for i, v in enumerate(closed.jaxpr.invars)}
            sources = [position.get(id(v)) for v in closed.jaxpr.outvars]  # None: computed
            computed = [i for i, s in enumerate(sources) if s is None]
            replay = jaxpr_as_fun(closed)  # the trace above, compiled: fn is traced once per plan
            jitted = jax.jit(lambda *xs: pick(replay(*xs), computed))
            self._compiled[key] = (jitted, sources, jax.tree_util.tree_structure(out_shape))
        return self._compiled[key]

    def __call__(self, *args):
        leaves, treedef = jax.tree_util.tree_flatten(args)
        jitted, sources, out_tree = self._plan(leaves, treedef)
        computed = iter(jitted(*leaves))
        outputs = [next(computed) if s is None else leaves[s] for s in sources]
        return jax.tree_util.tree_unflatten(out_tree, outputs)


def pick(outputs, indices):
    # The outputs of one evaluation, picked: a comprehension that evaluated fn for each output
    # traced the whole edit once per edited matrix, and XLA's CSE did not merge the copies
    # (distilgpt2's EFK edit ran its LM head three times: 175 ms where one trace takes 94).
    return [outputs[i] for i in indices]
