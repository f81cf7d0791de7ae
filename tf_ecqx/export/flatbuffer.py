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


def _sparse_bytes(model: schema.ModelT, tensor: schema.TensorT) -> int:
    """Stored bytes of a sparse tensor: its values plus the CSR index and segment arrays."""
    total = len(model.buffers[tensor.buffer].data)
    for dim in tensor.sparsity.dimMetadata:
        for vector in (dim.arraySegments, dim.arrayIndices):
            if vector is not None:
                total += np.asarray(vector.values).nbytes
    return total


def densify_unprofitable(sparse: schema.ModelT, dense: schema.ModelT) -> list[str]:
    """Store densely every sparse filter whose CSR encoding is not smaller than its dense bytes; returns their names.

    CSR stores a 16-bit index per nonzero int8 value, so it only pays above about two-thirds sparsity; the converter
    sparsifies from lower sparsity on. The dense values come from the dense conversion of the same model (filters are
    matched by operator order and shape), and the DENSIFY operator in front of such a filter is removed.
    """
    graph = sparse.subgraphs[0]
    sparse_filters, dense_filters = weight_tensors(sparse), weight_tensors(dense)
    if [(f.op, f.scales.size) for f in sparse_filters] != [(f.op, f.scales.size) for f in dense_filters]:
        raise ValueError("the sparse and dense conversions have different weight operators")
    densified = []
    for sparse_filter, dense_filter in zip(sparse_filters, dense_filters):
        tensor = graph.tensors[sparse_filter.index]
        if not sparse_filter.sparse or _sparse_bytes(sparse, tensor) < dense_filter.values.nbytes:
            continue
        tensor.sparsity = None
        sparse.buffers[tensor.buffer].data = dense_filter.values.tobytes()
        for densify in [op for op in graph.operators if op_name(sparse, op) == "DENSIFY"]:
            if densify.inputs[0] == sparse_filter.index:
                for op in graph.operators:
                    op.inputs = [sparse_filter.index if i == densify.outputs[0] else i for i in op.inputs]
                graph.operators.remove(densify)
        densified.append(sparse_filter.name)
    return densified


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
