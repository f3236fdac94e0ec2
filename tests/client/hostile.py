"""Hostile ONNX models for the device tests: external data hidden in every place a tensor can sit."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from onnx import (
    AttributeProto,
    GraphProto,
    ModelProto,
    NodeProto,
    TensorProto,
    TrainingInfoProto,
    helper,
    numpy_helper,
)

SECRET = "secret.bin"  # what a hostile model tries to read, relative to the working directory
SECRET_VALUES = np.array([11.0, 22.0, 33.0, 44.0], dtype=np.float32)


def external_tensor(name: str = "w", location: str = SECRET) -> TensorProto:
    """A float tensor of 4 values whose bytes live in `location` (ONNX external data)."""
    tensor = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=[4])
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "16")):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return tensor


def sparse_external(location: str = SECRET):
    """A sparse tensor whose values are external data."""
    indices = numpy_helper.from_array(np.arange(4, dtype=np.int64), "i")
    return helper.make_sparse_tensor(external_tensor("v", location), indices, [4])


def _model(nodes, initializers=(), sparse=(), opsets=(("", 17),), **extra) -> ModelProto:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
        initializer=list(initializers),
        sparse_initializer=list(sparse),
    )
    imports = [helper.make_opsetid(domain, version) for domain, version in opsets]
    return helper.make_model(graph, opset_imports=imports, **extra)


def _add_constant(**attrs) -> list:
    return [
        helper.make_node("Constant", [], ["c"], **attrs),
        helper.make_node("Add", ["x", "c"], ["y"]),
    ]


def initializer() -> ModelProto:
    return _model([helper.make_node("Add", ["x", "w"], ["y"])], initializers=[external_tensor()])


def sparse_initializer() -> ModelProto:
    return _model([helper.make_node("Add", ["x", "v"], ["y"])], sparse=[sparse_external()])


def constant_value() -> ModelProto:
    return _model(_add_constant(value=external_tensor()))


def constant_sparse_value() -> ModelProto:
    """The reported attack: a Constant node's sparse_value attribute."""
    return _model(_add_constant(sparse_value=sparse_external()))


def _odd_attribute(attribute: AttributeProto) -> ModelProto:
    """A node carrying an attribute of the given kind (onnxruntime never gets to run it)."""
    node = helper.make_node("Add", ["x", "x"], ["y"])
    node.attribute.append(attribute)
    return _model([node])


def tensors_attribute() -> ModelProto:
    return _odd_attribute(helper.make_attribute("t", [external_tensor()]))


def sparse_tensors_attribute() -> ModelProto:
    attribute = AttributeProto(name="s", type=AttributeProto.SPARSE_TENSORS)
    attribute.sparse_tensors.append(sparse_external())
    return _odd_attribute(attribute)


def _if(then: GraphProto, output: str) -> NodeProto:
    """If(cond) whose then-branch is `then` and whose else-branch passes x through."""
    other = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["e"])],
        "else",
        [],
        [helper.make_tensor_value_info("e", TensorProto.FLOAT, [4])],
    )
    return helper.make_node("If", ["cond"], [output], then_branch=then, else_branch=other)


def _constant_graph(name: str = "then") -> GraphProto:
    return helper.make_graph(
        [helper.make_node("Constant", [], ["z"], sparse_value=sparse_external())],
        name,
        [],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [4])],
    )


def nested_subgraph() -> ModelProto:
    """External data two graphs deep: a Constant in an If inside an If's branch."""
    middle = helper.make_graph(
        [_if(_constant_graph(), "m")],
        "middle",
        [],
        [helper.make_tensor_value_info("m", TensorProto.FLOAT, [4])],
    )
    cond = numpy_helper.from_array(np.array(True), "cond")
    return _model([_if(middle, "y")], initializers=[cond])


def graphs_attribute() -> ModelProto:
    return _odd_attribute(helper.make_attribute("gs", [_constant_graph()]))


def local_function() -> ModelProto:
    """A model-local function whose body holds the Constant."""
    function = helper.make_function(
        "fedge.test",
        "AddSecret",
        ["a"],
        ["b"],
        _add_constant(sparse_value=sparse_external())[:1]
        + [helper.make_node("Add", ["a", "c"], ["b"])],
        [helper.make_opsetid("", 17)],
    )
    node = helper.make_node("AddSecret", ["x"], ["y"], domain="fedge.test")
    return _model(
        [node],
        functions=[function],
        opsets=(("", 17), ("fedge.test", 1)),
    )


def function_default_attribute() -> ModelProto:
    """A function attribute's default value (FunctionProto.attribute_proto) holds the tensor."""
    model = local_function()
    function = model.functions[0]
    del function.node[:]
    function.node.extend([helper.make_node("Identity", ["a"], ["b"])])
    function.attribute_proto.append(helper.make_attribute("default", external_tensor()))
    return model


def training_info() -> ModelProto:
    """TrainingInfoProto.initialization, a graph onnxruntime does not run for inference."""
    model = _model([helper.make_node("Identity", ["x"], ["y"])])
    info = TrainingInfoProto()
    info.initialization.CopyFrom(
        helper.make_graph([], "init", [], [], initializer=[external_tensor()])
    )
    model.training_info.append(info)
    return model


LOCATIONS: dict[str, Callable[[], ModelProto]] = {
    "initializer": initializer,
    "sparse_initializer": sparse_initializer,
    "constant_value": constant_value,
    "constant_sparse_value": constant_sparse_value,
    "tensors_attribute": tensors_attribute,
    "sparse_tensors_attribute": sparse_tensors_attribute,
    "nested_subgraph": nested_subgraph,
    "graphs_attribute": graphs_attribute,
    "local_function": local_function,
    "function_default_attribute": function_default_attribute,
    "training_info": training_info,
}


def deep_graph(depth: int) -> bytes:
    """A model whose If nodes nest `depth` graphs deep, as raw bytes (no onnx recursion limit)."""
    graph = helper.make_graph([], "leaf", [], []).SerializeToString()
    for _ in range(depth):
        attribute = _field(1, b"then_branch") + _field(6, graph) + _varint_field(20, 5)
        node = _field(5, attribute) + _field(4, b"If")
        graph = _field(1, node)
    return _varint_field(1, 8) + _field(7, graph)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _varint_field(number: int, value: int) -> bytes:
    return _varint(number << 3) + _varint(value)


def _contract_model(nodes, initializers=()) -> ModelProto:
    """A graph with the device contract's names: input (N, 1, 8, 8) -> probabilities, label."""
    graph = helper.make_graph(
        nodes,
        "contract",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, None),
            helper.make_tensor_value_info("label", TensorProto.INT64, None),
        ],
        initializer=list(initializers),
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def slow_model() -> bytes:
    """Signs and verifies fine, then loops 10**12 times on its first run."""
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("Add", ["v_in", "one"], ["v_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_in", TensorProto.FLOAT, [1]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_out", TensorProto.FLOAT, [1]),
        ],
    )
    constants = [
        numpy_helper.from_array(np.array(10**12, dtype=np.int64), "trips"),
        numpy_helper.from_array(np.array(True), "cond"),
        numpy_helper.from_array(np.zeros(1, np.float32), "v0"),
        numpy_helper.from_array(np.ones(1, np.float32), "one"),
    ]
    nodes = [
        helper.make_node("Loop", ["trips", "cond", "v0"], ["probabilities"], body=body),
        helper.make_node("Cast", ["probabilities"], ["label"], to=TensorProto.INT64),
    ]
    return _contract_model(nodes, constants).SerializeToString()


def memory_hog_model() -> bytes:
    """Asks for a 64 GiB tensor on its first run."""
    shape = numpy_helper.from_array(np.array([1 << 34], dtype=np.int64), "shape")
    nodes = [
        helper.make_node("ConstantOfShape", ["shape"], ["probabilities"]),
        helper.make_node("Cast", ["probabilities"], ["label"], to=TensorProto.INT64),
    ]
    return _contract_model(nodes, [shape]).SerializeToString()


def _input_bomb(make_waste: list[NodeProto], waste: str, initializers: list) -> bytes:
    """A well-behaved digits-shaped classifier on small inputs that also computes `waste` from
    k * max|input| (k is the initializer "k"): cheap on zeros, ruinous on large values."""
    constants = [
        numpy_helper.from_array(np.array([-1, 64], dtype=np.int64), "flat_shape"),
        numpy_helper.from_array(np.array([0], dtype=np.int64), "start"),
        numpy_helper.from_array(np.array([10], dtype=np.int64), "end"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axes"),
        numpy_helper.from_array(np.zeros(1, np.float32), "zero"),
        *initializers,
    ]
    nodes = [
        helper.make_node("Abs", ["input"], ["magnitude"]),
        helper.make_node("ReduceMax", ["magnitude"], ["largest"], keepdims=0),
        helper.make_node("Mul", ["largest", "k"], ["amount"]),
        helper.make_node("Cast", ["amount"], ["count"], to=TensorProto.INT64),
        *make_waste,
        helper.make_node("Mul", [waste, "zero"], ["nothing"]),
        helper.make_node("Reshape", ["input", "flat_shape"], ["flat"]),
        helper.make_node("Slice", ["flat", "start", "end", "axes"], ["first10"]),
        helper.make_node("Add", ["first10", "nothing"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        helper.make_node("ArgMax", ["logits"], ["label"], axis=1, keepdims=0),
    ]
    return _contract_model(nodes, constants).SerializeToString()


def input_loop_model(k: float = 1e7) -> bytes:
    """Loops k * max|input| times: nothing on zeros, about forever on an input of 100."""
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("Add", ["v_in", "one"], ["v_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_in", TensorProto.FLOAT, [1]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_out", TensorProto.FLOAT, [1]),
        ],
    )
    constants = [
        numpy_helper.from_array(np.array(k, dtype=np.float32), "k"),
        numpy_helper.from_array(np.array(True), "cond"),
        numpy_helper.from_array(np.zeros(1, np.float32), "v0"),
        numpy_helper.from_array(np.ones(1, np.float32), "one"),
    ]
    loop = helper.make_node("Loop", ["count", "cond", "v0"], ["looped"], body=body)
    return _input_bomb([loop], "looped", constants)


def input_memory_model(k: float = 2e5) -> bytes:
    """Fills k * max|input| floats: nothing on zeros, ~100 MB on an input of 128."""
    nodes = [
        helper.make_node("Reshape", ["count", "one_dim"], ["size"]),
        helper.make_node("ConstantOfShape", ["size"], ["filled"]),
        helper.make_node("ReduceSum", ["filled"], ["total"], keepdims=1),
    ]
    constants = [
        numpy_helper.from_array(np.array(k, dtype=np.float32), "k"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "one_dim"),
    ]
    return _input_bomb(nodes, "total", constants)
