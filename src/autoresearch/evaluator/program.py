"""The handed-over model, loaded without trusting it: a graph document checked against an allow-list and
rebuilt as a torch.fx graph, with weights from safetensors bound to it.

The document (its format is written down in harness/handover.py) comes from the experiment, so nothing
in it is run, evaluated or imported as it stands: every operator is looked up in an allow-list (the
ATen operators of evaluator/operators.py, FlexAttention and the autocast and grad-mode wrappers, and
integer arithmetic on shapes); every argument must be an int64, a float, an option word, a dtype, a
device, a layout or a reference to an earlier node; nodes get names of our own. The
weights are safetensors (a header and raw bytes: no pickle) and must match the tensors the document
declares, by name, dtype and shape. What comes out is a pure function idx -> logits: the same input
gives the same output (up to kernel noise and the reseeded generators), whatever called it, which is
what lets the causality probe trust what it sees.
"""

from __future__ import annotations

import json
import math
import operator
import re

import torch

from autoresearch.evaluator import memory
from autoresearch.evaluator.operators import ALLOWED

FORMAT = "autoresearch-graph/1"
MAX_DOCUMENT_BYTES = 256 * 2**20
MAX_NODES = 200_000
MAX_STRING = 256
HIGHER_ORDER = ("flex_attention", "wrap_with_autocast", "wrap_with_set_grad_enabled")
OPERATOR_FUNCTIONS = (
    "getitem", "add", "sub", "mul", "floordiv", "truediv", "mod", "neg", "pos",
    "eq", "ne", "lt", "le", "gt", "ge", "and_", "or_",
)  # fmt: skip
TORCH_FUNCTIONS = ("sym_max", "sym_min", "sym_int", "sym_float", "sym_not", "sym_ite", "sym_sqrt")
MATH_FUNCTIONS = ("trunc", "ceil", "floor")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
_WORD = re.compile(r"^[A-Za-z0-9_.\-]{0,64}$")
_WEIGHT = re.compile(r"^w\d+$")  # the graph's tensors, as _Builder names them
_DEVICE = re.compile(r"^(cpu|cuda|mps)(:\d{1,2})?$")


class ProgramRejected(Exception):
    """The handed-over model cannot be loaded; the message says why."""


def load_program(document: bytes, weights: bytes, device: torch.device) -> Program:
    """The model the experiment handed over, on `device`: `.module(token ids)` gives its logits."""
    try:
        program = Program(document, device)
    except RecursionError:
        raise ProgramRejected("the model's graph nests its arguments deeper than the evaluator takes") from None
    program.bind(weights)
    return program


class Program:
    """A checked graph, built with zeros for weights; `bind` copies the handed-over weights into those same
    tensors (in place, so that code compiled from the graph reads them too)."""

    def __init__(self, document: bytes, device: torch.device):
        doc = _parse(document)
        self.declared = doc["tensors"]
        shapes = [(_shape(spec), _dtype(spec)) for spec in self.declared]
        size = sum(math.prod(shape) * dtype.itemsize for shape, dtype in shapes)
        if size > (most := memory.most_weights()):
            raise ProgramRejected(
                f"the model's graph declares {memory.amount(size)} of weights, more than {memory.amount(most)} "
                f"(a quarter of the run's memory, {memory.MEMORY_ENV})"
            )
        zeros = [torch.zeros(shape, dtype=dtype, device=device) for shape, dtype in shapes]
        self.module = _Builder(doc, zeros, device).build()
        self.tensors, self.device = zeros, device

    def bind(self, weights: bytes) -> None:
        """Check the weights against the declared tensors and copy them in (in place: compiled code keeps
        reading these same tensors)."""
        with torch.no_grad():
            for tensor, value in zip(self.tensors, _load(self.declared, weights), strict=True):
                tensor.copy_(value)
        self._bound = [tensor.clone() for tensor in self.tensors]

    def changed(self) -> bool:
        """Whether running the graph changed its own weights (state kept from call to call: a graph that
        could count its calls could tell the evaluation from the probe)."""
        return any(not torch.equal(now, then) for now, then in zip(self.tensors, self._bound, strict=True))


class ShapeCompiled:
    """The loaded graph compiled by Inductor, once per input shape, on CUDA (as fast as train.py's compiled
    model; Dynamo cannot retrace a graph that calls FlexAttention, so the graph goes to Inductor as it is).
    Inductor gets the graph with its weights as inputs (`lifted`), so what it compiles depends on the
    model's code, not its weights, and its cache serves every run of the same train.py again.
    Call it where the graph runs (under the same autocast). If compiling fails, the graph runs eagerly:
    slower, same numbers; `eager_because` says why."""

    def __init__(self, program: Program):
        self.program = program
        self.eager_because: str | None = None
        self._compiled: dict[tuple, object] = {}

    def __call__(self, idx: torch.Tensor) -> torch.Tensor:
        idx = idx.contiguous()  # compiled code is specialised to the strides too
        compiled = self._compile(idx)
        out = self.program.module(idx) if compiled is None else compiled(*self.program.tensors, idx)
        return out[0] if isinstance(out, tuple | list) else out

    def prepare(self, rows: int, seq_len: int) -> None:
        """Compile for batches of `rows` x `seq_len` now (compiling does not run the graph); call it under the
        autocast the graph will run in."""
        self._compile(torch.zeros(rows, seq_len, dtype=torch.long, device=self.program.device))

    def _compile(self, idx: torch.Tensor):
        key = tuple(idx.shape)
        if key not in self._compiled:
            from torch._inductor import compile as inductor_compile

            try:
                self._compiled[key] = inductor_compile(lifted(self.program), [*self.program.tensors, idx])
            except Exception as exc:  # an operator Inductor cannot lower: eager computes the same function
                self.eager_because = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:200]}"
                self._compiled[key] = None
        return self._compiled[key]


def lifted(program: Program) -> torch.fx.GraphModule:
    """The program's function with its weights as its first inputs, in order, then idx."""
    module = program.module
    graph = torch.fx.Graph()
    graph.output(graph.graph_copy(module.graph, {}))  # a copy: the module's own graph stays as it is
    reads = {node.target: node for node in graph.nodes if node.op == "get_attr" and _WEIGHT.match(node.target)}
    with graph.inserting_before(next(iter(graph.nodes))):
        weights = [graph.placeholder(f"weight{i}") for i in range(len(program.tensors))]
    for i, weight in enumerate(weights):
        if (read := reads.get(f"w{i}")) is not None:
            read.replace_all_uses_with(weight)
            graph.erase_node(read)
    graph.lint()
    return torch.fx.GraphModule(module, graph)


def _parse(document: bytes) -> dict:
    if len(document) > MAX_DOCUMENT_BYTES:
        raise ProgramRejected(
            f"the model's graph is {len(document) / 2**20:.0f} MiB (at most {MAX_DOCUMENT_BYTES >> 20})"
        )
    try:
        doc = json.loads(document)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ProgramRejected(f"the model's graph is not a JSON document: {str(exc)[:200]}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ProgramRejected(f"the model's graph is not in the {FORMAT} format")
    if not isinstance(doc.get("tensors"), list) or not isinstance(doc.get("subgraphs"), dict):
        raise ProgramRejected("the model's graph lacks its tensor list or subgraphs")
    return doc


def _shape(spec) -> list[int]:
    shape = spec.get("shape") if isinstance(spec, dict) else None
    if not (isinstance(shape, list) and all(isinstance(n, int) and 0 <= n < 2**40 for n in shape)):
        raise ProgramRejected("the model's graph declares a tensor without a valid shape")
    return shape


def _dtype(spec) -> torch.dtype:
    if not isinstance(spec.get("name"), str):
        raise ProgramRejected("the model's graph declares a tensor without a name")
    name = spec.get("dtype")
    found = getattr(torch, name, None) if isinstance(name, str) and _IDENTIFIER.match(name) else None
    if not isinstance(found, torch.dtype):
        raise ProgramRejected(f"the model's graph declares a tensor of dtype {str(name)[:30]!r}")
    return found


def _load(declared: list, weights: bytes) -> list[torch.Tensor]:
    """The weights, checked against the tensors the graph declares, in its order."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        loaded = load(weights)
    except (SafetensorError, ValueError, OSError) as exc:
        raise ProgramRejected(f"the weights handed over are not a safetensors file: {str(exc)[:200]}") from None
    tensors = []
    for spec in declared:
        name = spec["name"]
        tensor = loaded.pop(name, None)
        if tensor is None:
            raise ProgramRejected(f"the weights handed over lack {name!r}, which the graph reads")
        if _enum_name(tensor.dtype) != spec.get("dtype") or list(tensor.shape) != spec.get("shape"):
            raise ProgramRejected(
                f"{name!r} was declared {spec.get('dtype')} {spec.get('shape')} but handed over as "
                f"{_enum_name(tensor.dtype)} {list(tensor.shape)}"
            )
        tensors.append(tensor)
    if loaded:
        raise ProgramRejected(f"the weights handed over hold tensors the graph does not read: {sorted(loaded)[:5]}")
    return tensors


class _Builder:
    """Rebuilds the document's graphs as torch.fx graphs, checking every node on the way."""

    def __init__(self, doc: dict, tensors: list[torch.Tensor], device: torch.device):
        self.doc, self.tensors, self.device = doc, tensors, device
        self.count = 0
        self.building: set[str] = set()
        self.built: dict[str, torch.fx.GraphModule] = {}

    def build(self) -> torch.fx.GraphModule:
        root = torch.nn.Module()
        for i, tensor in enumerate(self.tensors):
            root.register_buffer(f"w{i}", tensor)
        return torch.fx.GraphModule(root, self._graph(self.doc.get("graph"), root, main=True))

    def _graph(self, spec, owner: torch.nn.Module, main: bool) -> torch.fx.Graph:
        if not isinstance(spec, dict) or not isinstance(spec.get("nodes"), list):
            raise ProgramRejected("the model's graph has a malformed graph")
        graph = torch.fx.Graph()
        values: list = []
        inputs = 0
        for node in spec["nodes"]:
            self.count += 1
            if self.count > MAX_NODES:
                raise ProgramRejected(f"the model's graph has more than {MAX_NODES} nodes")
            op = node.get("op") if isinstance(node, dict) else None
            if op == "input":
                if main and inputs:
                    raise ProgramRejected("the model's graph takes more than one input; forward(idx) takes one")
                values.append(graph.placeholder("idx" if main else f"a{inputs}"))
                inputs += 1
            elif op == "tensor" and main:
                i = node.get("index")
                if not isinstance(i, int) or not 0 <= i < len(self.tensors):
                    raise ProgramRejected(f"the model's graph reads tensor {i!r}, which it does not declare")
                values.append(graph.get_attr(f"w{i}"))
            elif op == "call":
                target = _target(node.get("target"))
                args = self._arg({"list": node.get("args")}, values, graph, owner)
                kwargs = self._arg({"dict": node.get("kwargs")}, values, graph, owner)
                values.append(graph.call_function(target, tuple(args), kwargs))
            else:
                raise ProgramRejected(f"the model's graph has a node {op!r} the evaluator does not take")
        if main and inputs != 1:
            raise ProgramRejected("the model's graph takes no input; forward(idx) takes the token ids")
        out = spec.get("output")
        if not (isinstance(out, dict) and isinstance(out.get("node"), int)):
            raise ProgramRejected("the model's graph must return one tensor (the logits)")
        graph.output(self._arg(out, values, graph, owner))
        graph.lint()
        return graph

    def _arg(self, value, values: list, graph: torch.fx.Graph, owner: torch.nn.Module):
        if value is None or isinstance(value, bool | float):
            return value
        if isinstance(value, int):
            if not -(2**63) <= value < 2**63:  # int64 (slices end at 2**63 - 1); a bigger one only feeds a hang
                raise ProgramRejected("the model's graph passes an integer larger than the evaluator takes")
            return value
        if isinstance(value, str):
            if not _WORD.match(value):  # option names ("tanh", "floor", "AUTO"): nothing a compiler could splice
                raise ProgramRejected(
                    f"the model's graph passes a string argument the evaluator does not take: {value[:50]!r}"
                )
            return value
        if not (isinstance(value, dict) and len(value) == 1):
            raise ProgramRejected(f"the model's graph has an argument the evaluator does not take: {str(value)[:100]}")
        ((tag, inner),) = value.items()
        if tag == "node" and isinstance(inner, int) and 0 <= inner < len(values):
            return values[inner]
        if tag in ("list", "tuple") and isinstance(inner, list):
            items = [self._arg(v, values, graph, owner) for v in inner]
            return items if tag == "list" else tuple(items)
        if tag == "dict" and isinstance(inner, dict):
            return {k: self._arg(v, values, graph, owner) for k, v in inner.items() if self._key(k)}
        if tag == "float" and inner in ("inf", "-inf", "nan"):
            return float(inner)
        if tag == "graph" and isinstance(inner, str):
            return graph.get_attr(self._subgraph(inner, owner))
        if tag == "device" and isinstance(inner, str) and _DEVICE.match(inner):
            named = torch.device(inner)
            if named.type not in ("cpu", self.device.type):  # the experiment ran where the evaluator runs
                raise ProgramRejected(
                    f"the model's graph was exported for {inner}; the evaluator runs on {self.device}"
                )
            return named
        if tag in ("dtype", "layout", "memory_format") and isinstance(inner, str) and _IDENTIFIER.match(inner):
            found = getattr(torch, inner, None)
            if isinstance(
                found, {"dtype": torch.dtype, "layout": torch.layout, "memory_format": torch.memory_format}[tag]
            ):
                return found
        raise ProgramRejected(f"the model's graph has an argument the evaluator does not take: {str(value)[:100]}")

    @staticmethod
    def _key(key: str) -> bool:
        if not _IDENTIFIER.match(key):
            raise ProgramRejected(f"the model's graph passes a keyword argument named {key[:50]!r}")
        return True

    def _subgraph(self, name: str, owner: torch.nn.Module) -> str:
        """The attribute of `owner` that holds subgraph `name`, built (once) on first use."""
        spec = self.doc["subgraphs"].get(name)
        if spec is None or name in self.building:
            raise ProgramRejected(f"the model's graph refers to subgraph {name[:50]!r}, which is missing or recursive")
        if name not in self.built:
            self.building.add(name)
            holder = torch.nn.Module()
            self.built[name] = torch.fx.GraphModule(holder, self._graph(spec, holder, main=False))
            self.building.discard(name)
        attribute = f"g{list(self.built).index(name)}"
        if not hasattr(owner, attribute):
            owner.add_module(attribute, self.built[name])
        return attribute


def _target(name) -> object:
    """The callable a node names, if the allow-list has it."""
    if not isinstance(name, str) or len(name) > MAX_STRING:
        raise ProgramRejected("the model's graph has a node without an operator")
    namespace, _, rest = name.partition(".")
    if namespace == "aten":
        return _aten(name, rest)
    if namespace == "higher_order" and rest in HIGHER_ORDER:
        return getattr(torch.ops.higher_order, rest)
    if namespace == "operator" and rest in OPERATOR_FUNCTIONS:
        return getattr(operator, rest)
    if namespace == "torch" and rest in TORCH_FUNCTIONS:
        return getattr(torch, rest)
    if namespace == "math" and rest in MATH_FUNCTIONS:
        return getattr(math, rest)
    raise ProgramRejected(
        f"the model's graph calls {name[:100]}, which the evaluator does not run (only ATen operators)"
    )


def _aten(name: str, rest: str) -> torch._ops.OpOverload:
    op_name, _, overload = rest.partition(".")
    if not (_IDENTIFIER.match(op_name) and _IDENTIFIER.match(overload)):
        raise ProgramRejected(f"the model's graph calls {name[:100]}, which is not an ATen operator")
    if op_name not in ALLOWED:
        hint = ": use torch.zeros" if "empty" in op_name else " (evaluator/operators.py lists what it runs)"
        raise ProgramRejected(f"the model's graph calls {name}, which the evaluator does not run{hint}")
    try:
        op = getattr(getattr(torch.ops.aten, op_name), overload)
    except (AttributeError, RuntimeError):
        raise ProgramRejected(f"the model's graph calls {name}, which this PyTorch does not have") from None
    if not isinstance(op, torch._ops.OpOverload) or op.namespace != "aten":
        raise ProgramRejected(f"the model's graph calls {name}, which is not an ATen operator")
    if op._schema.is_mutable:
        raise ProgramRejected(f"the model's graph calls {name}, which changes its inputs in place")
    if op_name in _SHAPES_TRUSTED:
        if overload != "default":  # the others (FP8 attention's descaling tensors) are unchecked too
            raise ProgramRejected(f"the model's graph calls {name}, which the evaluator does not run")
        return _checked(op, _SHAPES_TRUSTED[op_name])
    return op


# Fused kernels that take the shapes of their arguments on trust: called with a tensor smaller than the others
# say (statistics of 1 channel for 4,096; keys of batch 1 for queries of 64), they read past its end, into the
# evaluator's memory (the validation rows, the probe's rows before they were cut), and hand that back as
# numbers. torch.export emits them (batch norm; attention, once in-place operations are made functional), so a
# call goes through a check of those shapes first. The public operators check for themselves.


def _batch_norm_shapes(args: dict) -> str | None:
    shape = args["input"].shape
    channels = shape[1] if len(shape) > 1 else None
    for name in ("weight", "bias", "running_mean", "running_var"):
        tensor = args.get(name)
        if tensor is not None and (channels is None or tuple(tensor.shape) != (channels,)):
            return f"{name} of shape {list(tensor.shape)} for an input of shape {list(shape)}"
    return None


def _attention_shapes(args: dict) -> str | None:
    q, k, v = args["query"], args["key"], args["value"]
    mask = args.get("attn_mask", args.get("attn_bias"))
    shapes = f"query {list(q.shape)}, key {list(k.shape)}, value {list(v.shape)}"
    if not q.dim() == k.dim() == v.dim() == 4:
        return shapes
    (batch, heads, length, width), (kv_batch, kv_heads, kv_length, kv_width) = q.shape, k.shape
    if not (
        kv_batch == v.shape[0] == batch
        and kv_heads == v.shape[1] > 0
        and heads % kv_heads == 0
        and kv_length == v.shape[2]
        and kv_width == width
    ):
        return shapes
    if mask is not None:
        full = (batch, heads, length, kv_length)
        if mask.dim() > 4 or any(m not in (1, f) for m, f in zip(mask.shape[::-1], full[::-1], strict=False)):
            return f"{shapes}, mask {list(mask.shape)}"
    return None


_SHAPES_TRUSTED = {
    "_native_batch_norm_legit_no_training": _batch_norm_shapes,
    "_scaled_dot_product_flash_attention_for_cpu": _attention_shapes,
    "_scaled_dot_product_flash_attention": _attention_shapes,
    "_scaled_dot_product_efficient_attention": _attention_shapes,
    "_scaled_dot_product_cudnn_attention": _attention_shapes,
}


def _checked(op: torch._ops.OpOverload, mismatch) -> object:
    """`op`, called only once `mismatch` finds nothing wrong with its arguments' shapes (ProgramRejected if it
    does). Shapes are fixed by the graph, not by the rows it reads: the message carries nothing it read."""
    names = [argument.name for argument in op._schema.arguments]

    def call(*args, **kwargs):
        if why := mismatch({**dict(zip(names, args, strict=False)), **kwargs}):
            raise ProgramRejected(f"the model's graph calls {op} with {why}: it would read outside those tensors")
        return op(*args, **kwargs)

    call.__name__ = call.__qualname__ = f"checked_{op._opname}"
    return call


def _enum_name(value) -> str:
    return str(value).removeprefix("torch.")
