"""Reading and editing TFLite flatbuffers through the schema's object API (no private converter internals)."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import flatbuffers
import numpy as np
from tensorflow.lite.python import schema_py_generated as schema

WEIGHT_OPS = {"CONV_2D": 1, "DEPTHWISE_CONV_2D": 1, "FULLY_CONNECTED": 1}  # op name -> index of its filter input
NUMPY_TYPES = {
    schema.TensorType.INT8: np.int8,
    schema.TensorType.INT32: np.int32,
    schema.TensorType.FLOAT32: np.float32,
}
OP_NAMES = {value: name for name, value in vars(schema.BuiltinOperator).items() if not name.startswith("_")}


@dataclass(frozen=True)
class WeightTensor:
    """The filter of a CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED operator."""

    op: str
    index: int
    name: str
    values: np.ndarray | None  # None while the tensor is stored sparse
    scales: np.ndarray
    sparse: bool


def load(data: bytes) -> schema.ModelT:
    return schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(data, 0))


def dump(model: schema.ModelT) -> bytes:
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def op_name(model: schema.ModelT, op: schema.OperatorT) -> str:
    code = model.operatorCodes[op.opcodeIndex]
    return OP_NAMES[max(code.builtinCode, code.deprecatedBuiltinCode)]


def weight_tensors(model: schema.ModelT) -> list[WeightTensor]:
    """The filters of all weight operators of the main subgraph, looking through DENSIFY to the stored tensor."""
    graph = model.subgraphs[0]
    producers = {out: op for op in graph.operators for out in op.outputs}
    found = []
    for op in graph.operators:
        name = op_name(model, op)
        if name not in WEIGHT_OPS:
            continue
        index = op.inputs[WEIGHT_OPS[name]]
        while index in producers and op_name(model, producers[index]) in ("DENSIFY", "RESHAPE"):
            index = producers[index].inputs[0]
        tensor = graph.tensors[index]
        sparse = tensor.sparsity is not None
        data = model.buffers[tensor.buffer].data
        values = (
            None
            if sparse or data is None
            else np.frombuffer(bytes(data), NUMPY_TYPES[tensor.type]).reshape(tensor.shape)
        )
        scales = np.asarray(tensor.quantization.scale if tensor.quantization else [], np.float32)
        found.append(WeightTensor(name, index, tensor.name.decode(), values, scales, sparse))
    return found


def count_ops(model: schema.ModelT, name: str) -> int:
    return sum(op_name(model, op) == name for op in model.subgraphs[0].operators)


def detach_densified_int8_weights(model: schema.ModelT) -> list[str]:
    """Put an identity RESHAPE between each int8 DENSIFY and its consumers; returns the tensors it did this for.

    LiteRT's default XNNPACK delegate treats a DENSIFY output as a static weight and fails to prepare int8 ones
    ("failed to delegate FULLY_CONNECTED"); fed through a RESHAPE the weight is dynamic, XNNPACK leaves that operator
    to the builtin kernel, and the file keeps its sparse storage.
    """
    graph = model.subgraphs[0]
    reshape_code = _operator_code(model, schema.BuiltinOperator.RESHAPE)
    detached = []
    for densify in [op for op in graph.operators if op_name(model, op) == "DENSIFY"]:
        dense = densify.outputs[0]
        if graph.tensors[dense].type != schema.TensorType.INT8:
            continue
        copy_tensor = copy.deepcopy(graph.tensors[dense])
        copy_tensor.name = graph.tensors[dense].name + b"/dense"
        graph.tensors.append(copy_tensor)
        detached_index = len(graph.tensors) - 1
        for op in graph.operators:
            op.inputs = [detached_index if i == dense else i for i in op.inputs]
        shape = _constant_tensor(model, np.asarray(copy_tensor.shape, np.int32), copy_tensor.name + b"/shape")
        reshape = schema.OperatorT()
        reshape.opcodeIndex, reshape.inputs, reshape.outputs = reshape_code, [dense, shape], [detached_index]
        graph.operators.insert(graph.operators.index(densify) + 1, reshape)
        detached.append(copy_tensor.name.decode())
    return detached


def _operator_code(model: schema.ModelT, builtin: int) -> int:
    for index, code in enumerate(model.operatorCodes):
        if max(code.builtinCode, code.deprecatedBuiltinCode) == builtin:
            return index
    code = schema.OperatorCodeT()
    code.builtinCode, code.deprecatedBuiltinCode, code.version = builtin, min(builtin, 127), 1
    model.operatorCodes.append(code)
    return len(model.operatorCodes) - 1


def _constant_tensor(model: schema.ModelT, value: np.ndarray, name: bytes) -> int:
    buffer = schema.BufferT()
    buffer.data = value.tobytes()
    model.buffers.append(buffer)
    tensor = schema.TensorT()
    tensor.shape, tensor.type, tensor.buffer, tensor.name = (
        [value.size],
        schema.TensorType.INT32,
        len(model.buffers) - 1,
        name,
    )
    model.subgraphs[0].tensors.append(tensor)
    return len(model.subgraphs[0].tensors) - 1
