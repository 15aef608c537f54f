"""The model, handed over as data: its graph (JSON) and its weights (safetensors).

The evaluator runs that graph; it never runs a line of this process's code. torch.export traces
forward(idx) once, for the one input shape the evaluator scores (its batch of rows, the sequence
length), into ATen operators (a fixed shape: tracing a free batch size costs twice as long); this module
writes that graph in the document format that evaluator/program.py reads and checks:

    {"format": FORMAT,
     "tensors": [{"name": "wte.weight", "dtype": "bfloat16", "shape": [8192, 512]}, ...],
     "graph": {"nodes": [...], "output": ARG},
     "subgraphs": {"name": {"nodes": [...], "output": ARG}}}   # FlexAttention's score and mask functions

A node is {"op": "input"} (the token ids in the main graph, the i-th argument in a subgraph),
{"op": "tensor", "index": i} (tensors[i]) or {"op": "call", "target": "aten.mm.default", "args": [ARG],
"kwargs": {name: ARG}}; an ARG is a JSON number, string, bool or null, or one of {"node": i},
{"graph": name}, {"list": [ARG]}, {"tuple": [ARG]}, {"dict": {key: ARG}}, {"float": "inf"|"-inf"|"nan"},
{"dtype": name}, {"device": name}, {"layout": name}, {"memory_format": name}.
"""

from __future__ import annotations

import json
import math
import operator

import torch
import torch.nn.functional as F

from autoresearch import device as devices

FORMAT = "autoresearch-graph/1"

HINT = (
    "the model's forward(idx) must be traceable by torch.export: tensor operations only, no Python branches "
    "or loops on tensor values (use torch.where), no .item()/.tolist()/print, no in-place updates of "
    "parameters or buffers, no reads or writes of files; it returns the logits (batch, seq, vocab)"
)
_TENSOR_KINDS = ("PARAMETER", "BUFFER", "CONSTANT_TENSOR")
_ENUMS = {torch.dtype: "dtype", torch.layout: "layout", torch.memory_format: "memory_format"}


class HandOverError(Exception):
    """The model cannot be handed over; the message says which construct to avoid."""


class Exported:
    """A model's graph, traced once, and what is needed to send its weights at the end of training."""

    def __init__(self, model: torch.nn.Module, batch_rows: int, seq_len: int, vocab_size: int, device: torch.device):
        idx = torch.randint(0, vocab_size, (batch_rows, seq_len), device=device)
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad(), devices.autocast(device):  # the evaluator runs the graph under the same autocast
                program = torch.export.export(model, (idx,), strict=False)
                if _mutates(program.graph_module):  # in-place ops: make them functional (state changes show)
                    program = program.run_decompositions({})
        except Exception as exc:  # torch raises many kinds; each means the same to the user
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            if broken := _eager_failure(model, idx, device):  # not export's doing: the forward itself fails
                shape = tuple(idx.shape)
                raise HandOverError(f"the model's forward fails on a batch of shape {shape} ({broken})") from exc
            raise HandOverError(f"the model cannot be exported ({type(exc).__name__}: {first[:400]}); {HINT}") from exc
        finally:
            model.train(was_training)
        self.model = model
        self.names: list[str] = []
        self.nbytes = 0  # of the weights handed over at the end
        self.constants = dict(program.constants)
        self.document = json.dumps(self._document(program)).encode()

    def weights(self) -> bytes:
        """The current values of the tensors the graph reads, as safetensors bytes (no pickle)."""
        from safetensors.torch import save

        own = dict(self.model.named_parameters(remove_duplicate=False))
        own |= dict(self.model.named_buffers(remove_duplicate=False))
        # A copy of each: tied weights would share memory, which safetensors refuses.
        return save({name: _copy(own.get(name, self.constants.get(name))) for name in self.names})

    # -- the document -------------------------------------------------------------------------------

    def _document(self, program) -> dict:
        signature = program.graph_signature
        for spec in signature.output_specs:
            if spec.kind.name != "USER_OUTPUT":
                raise HandOverError(
                    f"the model's forward changes state ({spec.kind.name.lower()}: {spec.target}); {HINT}"
                )
        placeholders = {}
        tensors = []
        for spec in signature.input_specs:
            kind = spec.kind.name
            if kind == "USER_INPUT":
                placeholders[spec.arg.name] = {"op": "input"}
            elif kind in _TENSOR_KINDS:
                value = program.state_dict.get(spec.target, self.constants.get(spec.target))
                if not isinstance(value, torch.Tensor):
                    raise HandOverError(f"the model holds a {type(value).__name__} the evaluator cannot take; {HINT}")
                placeholders[spec.arg.name] = {"op": "tensor", "index": len(tensors)}
                tensors.append({"name": spec.target, "dtype": _enum_name(value.dtype), "shape": list(value.shape)})
                self.names.append(spec.target)
                self.nbytes += value.numel() * value.element_size()
            else:
                raise HandOverError(f"the model's graph takes a {kind.lower()} input the evaluator cannot take; {HINT}")
        subgraphs: dict[str, dict] = {}
        graph = _encode_graph(program.graph_module, program.graph_module.graph, placeholders, subgraphs)
        return {"format": FORMAT, "tensors": tensors, "graph": graph, "subgraphs": subgraphs}


class _Rehearsal(torch.nn.Module):
    """A few-parameter model with the operators of a GPT: exporting it loads what the real export needs."""

    def __init__(self):
        super().__init__()
        self.wte = torch.nn.Embedding(16, 8)
        self.head = torch.nn.Linear(8, 16, bias=False)
        self.register_buffer("scale", torch.ones(4, 8), persistent=False)

    def forward(self, idx):
        x = F.rms_norm(self.wte(idx), (8,))
        q = x.view(*idx.shape, 2, 4).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, q, q, is_causal=True).transpose(1, 2).reshape(x.shape)
        x = x + y * self.scale[: idx.shape[1]] + torch.sigmoid(x) * F.relu(x).square()
        return 15 * torch.tanh(self.head(x).float() / 15)


def _eager_failure(model: torch.nn.Module, idx: torch.Tensor, device: torch.device) -> str | None:
    """Why the model's forward fails when simply run, if it does."""
    try:
        with torch.no_grad(), devices.autocast(device):
            model(idx)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return f"{type(exc).__name__}: {first[:400]}"
    return None


def rehearse() -> None:
    """Export a tiny model once, on the CPU: the first export in a process costs ~1.5 s more than the
    next (measured on 2 cores), so the experiment's process pays it before its run begins."""
    Exported(_Rehearsal(), 2, 4, 16, torch.device("cpu")).weights()


def _mutates(module: torch.nn.Module) -> bool:
    """Whether any graph in `module` calls an operator that changes its inputs in place."""
    for gm in module.modules():
        if isinstance(gm, torch.fx.GraphModule):
            for node in gm.graph.nodes:
                target = node.target
                if isinstance(target, torch._ops.OpOverload) and target._schema.is_mutable:
                    return True
    return False


def _encode_graph(root: torch.nn.Module, graph: torch.fx.Graph, placeholders: dict | None, subgraphs: dict) -> dict:
    """One graph as a list of nodes; `placeholders` maps the main graph's inputs (None in a subgraph)."""
    index: dict[torch.fx.Node, int] = {}
    nodes: list[dict] = []
    output = None
    for node in graph.nodes:
        if node.op == "placeholder":
            nodes.append(placeholders[node.name] if placeholders is not None else {"op": "input"})
        elif node.op == "get_attr":
            sub = getattr(root, node.target)
            if not isinstance(sub, torch.fx.GraphModule):
                raise HandOverError(f"the graph reads {node.target}, which is not a subgraph; {HINT}")
            if node.target not in subgraphs:
                subgraphs[node.target] = {}  # reserved before encoding: a subgraph never refers to itself
                subgraphs[node.target] = _encode_graph(sub, sub.graph, None, subgraphs)
            index[node] = -1  # not a node of its own: arguments name the subgraph
            continue
        elif node.op == "call_function":
            nodes.append(
                {
                    "op": "call",
                    "target": _target_name(node.target),
                    "args": [_encode(a, index) for a in node.args],
                    "kwargs": {k: _encode(v, index) for k, v in node.kwargs.items()},
                }
            )
        elif node.op == "output":
            outputs = node.args[0]
            output = _encode(outputs[0] if isinstance(outputs, tuple | list) and len(outputs) == 1 else outputs, index)
            break
        else:
            raise HandOverError(f"the graph has a {node.op} node ({node.target}); {HINT}")
        index[node] = len(nodes) - 1
    return {"nodes": nodes, "output": output}


def _target_name(target) -> str:
    if isinstance(target, torch._ops.OpOverload | torch._ops.HigherOrderOperator):
        return str(target) if isinstance(target, torch._ops.OpOverload) else f"higher_order.{target.name()}"
    module = getattr(target, "__module__", None)
    if module in ("_operator", "operator") or target in (operator.getitem,):
        return f"operator.{target.__name__}"
    if module == "math" or getattr(torch, getattr(target, "__name__", ""), None) is target:
        return f"{'math' if module == 'math' else 'torch'}.{target.__name__}"
    raise HandOverError(f"the graph calls {target!r}, which is not an ATen operator; {HINT}")


def _encode(value, index: dict):
    if isinstance(value, torch.fx.Node):
        if index.get(value) == -1:
            return {"graph": value.target}
        return {"node": index[value]}
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"float": repr(value)}
    if isinstance(value, list | tuple):
        return {"list" if isinstance(value, list) else "tuple": [_encode(v, index) for v in value]}
    if isinstance(value, dict):
        return {"dict": {str(k): _encode(v, index) for k, v in value.items()}}
    if isinstance(value, torch.device):
        return {"device": str(value)}
    for kind, tag in _ENUMS.items():
        if isinstance(value, kind):
            return {tag: _enum_name(value)}
    raise HandOverError(f"the graph passes a {type(value).__name__} the evaluator cannot take; {HINT}")


def _enum_name(value) -> str:
    return str(value).removeprefix("torch.")


def _copy(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().to("cpu", copy=True).contiguous()
