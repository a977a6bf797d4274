"""Walks over an exported ONNX graph, written once: which node produces and which read each tensor, which
nodes are activations, the Add nodes sorted by what they sum, the head that INT8 keeps float, and each
convolution with the activation after it, and the module of the model a node comes from. Nodes of an exported
graph are topologically sorted."""

from __future__ import annotations

from collections import Counter

import onnx

# ONNX ops that are an activation on their own. SiLU (and HardSwish in older opsets) are exported as a
# Mul of the input and a gate computed from it, recognized by is_activation.
ACTIVATION_OPS = frozenset(
    {"Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Clip", "HardSwish", "HardSigmoid", "Sigmoid", "Tanh",
     "Mish", "Swish"}
)  # fmt: skip
GATE_OPS = frozenset({"Sigmoid", "HardSigmoid"})  # x * gate(x)
# ONNX ops whose output is a pre-activation branch (what a RepVGG training-form block sums).
BRANCH_OPS = frozenset({"Conv", "BatchNormalization"})


def producers_of(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    """{tensor name: the node that writes it}."""
    return {output: node for node in graph.node for output in node.output}


def consumers_of(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    """{tensor name: the nodes that read it}."""
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    return consumers


def is_activation(node: onnx.NodeProto, producers: dict[str, onnx.NodeProto]) -> bool:
    """Whether ``node`` applies an activation: one of ACTIVATION_OPS, or x * gate(x) (SiLU is exported as
    Mul(x, Sigmoid(x)))."""
    if node.op_type in ACTIVATION_OPS:
        return True
    if node.op_type != "Mul" or len(node.input) != 2:
        return False
    a, b = node.input
    for gate, value in ((a, b), (b, a)):
        gate_node = producers.get(gate)
        if gate_node is not None and gate_node.op_type in GATE_OPS and gate_node.input[0] == value:
            return True
    return False


def count_ops(onnx_model: onnx.ModelProto) -> Counter:
    """Number of nodes per op type in the main graph."""
    return Counter(node.op_type for node in onnx_model.graph.node)


def classify_add_nodes(onnx_model: onnx.ModelProto) -> Counter:
    """Sort the Add nodes by what they sum: {"branch": n, "residual": n, "other": n}.

    branch: an input comes straight from a Conv or BatchNormalization (or from another branch
    sum), i.e. parallel pre-activation branches, which a fused RepVGG graph must not have.
    residual: both inputs are activation outputs (or residual sums), i.e. a shortcut such as the
    C3 bottlenecks'.
    other: arithmetic with constants or shapes (the Detect head's grid decode).
    """
    producers = producers_of(onnx_model.graph)

    def activation_output(tensor: str) -> bool:
        return tensor in producers and is_activation(producers[tensor], producers)

    kinds: Counter = Counter({"branch": 0, "residual": 0, "other": 0})
    branch_outputs: set[str] = set()
    residual_outputs: set[str] = set()  # a chain of bottlenecks adds onto the previous sum
    for node in onnx_model.graph.node:
        if node.op_type != "Add":
            continue
        input_ops = [producers[t].op_type if t in producers else None for t in node.input]
        if any(op in BRANCH_OPS for op in input_ops) or any(t in branch_outputs for t in node.input):
            kinds["branch"] += 1
            branch_outputs.update(node.output)
        elif all(activation_output(t) or t in residual_outputs for t in node.input):
            kinds["residual"] += 1
            residual_outputs.update(node.output)
        else:
            kinds["other"] += 1
    return kinds


def format_op_counts(counts: dict[str, int], add_kinds: dict[str, int]) -> str:
    """One line: 'Conv 60, Mul 57, ..., Add 7 (residual 7, branch 0, other 0), BatchNormalization 0'."""
    parts = []
    for op, n in sorted(counts.items(), key=lambda item: (-item[1], item[0])):
        if op == "Add":
            detail = ", ".join(f"{kind} {add_kinds[kind]}" for kind in ("residual", "branch", "other"))
            parts.append(f"Add {n} ({detail})")
        else:
            parts.append(f"{op} {n}")
    if "BatchNormalization" not in counts:
        parts.append("BatchNormalization 0")
    return ", ".join(parts)


def decode_tail_nodes(onnx_model: onnx.ModelProto) -> list[str]:
    """Names of the head's last convolutions and of every node after them: the nodes from which no
    path leads to another Conv."""
    graph = onnx_model.graph
    consumers = consumers_of(graph)
    feeds_conv: dict[str, bool] = {}
    for node in reversed(graph.node):  # children come first here
        feeds_conv[node.name] = any(
            child.op_type == "Conv" or feeds_conv.get(child.name, False)
            for out in node.output
            for child in consumers.get(out, [])
        )
    return [node.name for node in graph.node if not feeds_conv[node.name]]


def conv_layers(onnx_model: onnx.ModelProto) -> dict[str, list[str]]:
    """{conv name: the nodes of its layer}: every convolution outside the head with the activation that
    follows it (SiLU is a Sigmoid and a Mul of the conv's output), which stay float together."""
    graph = onnx_model.graph
    tail = set(decode_tail_nodes(onnx_model))
    producers, consumers = producers_of(graph), consumers_of(graph)
    layers = {}
    for node in graph.node:
        if node.op_type != "Conv" or node.name in tail:
            continue
        members, outputs, frontier = [node.name], set(node.output), list(node.output)
        while frontier:
            for child in consumers.get(frontier.pop(), []):
                inside = all(name in outputs for name in child.input)
                if inside and child.name not in members and is_activation(child, producers):
                    members.append(child.name)
                    outputs.update(child.output)
                    frontier.extend(child.output)
        layers[node.name] = members
    return layers


def module_of_onnx_node(name: str) -> str:
    """The module path of a node of our ONNX export: "/model.2/bottlenecks/bottlenecks.0/reduce/conv/Conv"
    -> "model.2.bottlenecks.0.reduce.conv" (the exporter names a container's child by its qualified name
    within the container, after the container itself)."""
    parts: list[str] = []
    for scope in name.strip("/").split("/")[:-1]:
        if parts and scope.startswith(f"{parts[-1]}."):
            parts[-1] = scope
        else:
            parts.append(scope)
    return ".".join(parts)
