"""Reading and editing TFLite flatbuffers through the schema's object API (no private converter internals)."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import flatbuffers
import numpy as np
from tensorflow.lite.python import schema_py_generated as schema

# op name -> index of its filter input
WEIGHT_OPS = {"CONV_2D": 1, "DEPTHWISE_CONV_2D": 1, "FULLY_CONNECTED": 1, "TRANSPOSE_CONV": 1}
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


def pack_int4(values: np.ndarray) -> bytes:
    """Pack integers in [-8, 7] two per byte, LiteRT's INT4 layout: element 2i in the low nibble of byte i, element
    2i + 1 in the high nibble (two's complement nibbles; an odd count leaves the last high nibble zero)."""
    flat = np.asarray(values).reshape(-1)
    if flat.size and (flat.min() < -8 or flat.max() > 7):
        raise ValueError(f"INT4 holds values in [-8, 7]; got [{flat.min()}, {flat.max()}].")
    nibbles = flat.astype(np.int8).view(np.uint8) & 0x0F
    if nibbles.size % 2:
        nibbles = np.append(nibbles, np.uint8(0))
    return (nibbles[0::2] | (nibbles[1::2] << 4)).astype(np.uint8).tobytes()


def unpack_int4(data: bytes, shape: list[int] | tuple[int, ...]) -> np.ndarray:
    """The int8 values of a packed INT4 buffer (the inverse of pack_int4)."""
    count = int(np.prod(shape))
    packed = np.frombuffer(bytes(data), np.uint8)
    if packed.size != (count + 1) // 2:
        raise ValueError(f"An INT4 tensor of shape {list(shape)} has {(count + 1) // 2} bytes, not {packed.size}.")
    nibbles = np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(-1)[:count].astype(np.int8)
    return np.where(nibbles > 7, nibbles - 16, nibbles).astype(np.int8).reshape(shape)


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
        if sparse or data is None:
            values = None
        elif tensor.type == schema.TensorType.INT4:
            values = unpack_int4(data, tensor.shape)
        else:
            values = np.frombuffer(bytes(data), NUMPY_TYPES[tensor.type]).reshape(tensor.shape)
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
    sparsifies from lower sparsity on.
    """
    tensors = sparse.subgraphs[0].tensors
    return _densify(sparse, dense, lambda index, values: _sparse_bytes(sparse, tensors[index]) >= values.nbytes)


def densify_read_in_place(sparse: schema.ModelT, dense: schema.ModelT) -> list[str]:
    """Store densely every sparse filter an operator reads as it is stored, without a DENSIFY in front; returns their
    names. LiteRT's sparse int8 FULLY_CONNECTED kernel, which reads them so, gave other outputs than its dense kernel
    (a 10x8 filter of 34 % zeros)."""
    graph = sparse.subgraphs[0]
    densified_inputs = {op.inputs[0] for op in graph.operators if op_name(sparse, op) == "DENSIFY"}
    return _densify(sparse, dense, lambda index, values: index not in densified_inputs)


def _densify(sparse: schema.ModelT, dense: schema.ModelT, wanted: Callable[[int, np.ndarray], bool]) -> list[str]:
    """Store densely every sparse filter for which wanted(its tensor index, its dense values) holds; returns their
    names. The dense values come from the dense conversion of the same model (filters are matched by operator order
    and shape), and the DENSIFY operator in front of such a filter is removed."""
    graph = sparse.subgraphs[0]
    sparse_filters, dense_filters = weight_tensors(sparse), weight_tensors(dense)
    if [(f.op, f.scales.size) for f in sparse_filters] != [(f.op, f.scales.size) for f in dense_filters]:
        raise ValueError("the sparse and dense conversions have different weight operators")
    densified = []
    for sparse_filter, dense_filter in zip(sparse_filters, dense_filters):
        tensor = graph.tensors[sparse_filter.index]
        if not sparse_filter.sparse or not wanted(sparse_filter.index, dense_filter.values):
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


# LiteRT's operator versions for an int8 input with an INT4 filter (tflite/tools/versioning/op_version.cc), and the
# runtime version that introduced them (runtime_version.cc)
INT4_OP_VERSIONS = {"CONV_2D": 7, "DEPTHWISE_CONV_2D": 7, "FULLY_CONNECTED": 10}
INT4_MIN_RUNTIME = "2.11.0"


@dataclass(frozen=True)
class PackedFilter:
    """An int8 filter that pack_int4_filters stored as packed INT4."""

    op: str
    tensor: str
    int8_bytes: int
    int4_bytes: int


def int4_candidates(model: schema.ModelT) -> list[WeightTensor]:
    """The filters that can be stored as INT4 without changing a value: dense int8 constants in [-8, 7] with zero
    points 0, fed directly as the filter of a CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED with an int8 input, and
    read by no other operator."""
    graph = model.subgraphs[0]
    readers: dict[int, int] = {}
    for op in graph.operators:
        for index in op.inputs:
            readers[int(index)] = readers.get(int(index), 0) + 1
    weights = {weight.index: weight for weight in weight_tensors(model)}
    found = []
    for op in graph.operators:
        name = op_name(model, op)
        if name not in INT4_OP_VERSIONS or int(op.inputs[WEIGHT_OPS[name]]) not in weights:
            continue
        weight = weights[int(op.inputs[WEIGHT_OPS[name]])]
        tensor = graph.tensors[weight.index]
        zero_points = tensor.quantization.zeroPoint if tensor.quantization is not None else None
        if (
            readers[weight.index] == 1
            and graph.tensors[op.inputs[0]].type == schema.TensorType.INT8
            and tensor.type == schema.TensorType.INT8
            and weight.values is not None
            and weight.scales.size > 0
            and (zero_points is None or not np.any(np.asarray(zero_points)))
            and weight.values.min(initial=0) >= -8
            and weight.values.max(initial=0) <= 7
        ):
            found.append(weight)
    return found


def pack_int4_filters(model: schema.ModelT, tensors: Iterable[str] | None = None) -> list[PackedFilter]:
    """Store int4_candidates filters (those named in `tensors`, default all) as packed INT4; returns what it packed.

    Shape, scales and zero points stay; the buffer holds two values per byte (pack_int4). Each operator that now reads
    an INT4 filter gets the version LiteRT assigns to int8 x int4 (INT4_OP_VERSIONS), through its own operator code
    where operators of the same kind keep int8 filters, and the model's min_runtime_version becomes at least 2.11.0.
    """
    graph = model.subgraphs[0]
    wanted = None if tensors is None else set(tensors)
    candidates = {w.index: w for w in int4_candidates(model) if wanted is None or w.name in wanted}
    packed = []
    for op in graph.operators:
        name = op_name(model, op)
        if name not in INT4_OP_VERSIONS or int(op.inputs[WEIGHT_OPS[name]]) not in candidates:
            continue
        weight = candidates.pop(int(op.inputs[WEIGHT_OPS[name]]))
        tensor = graph.tensors[weight.index]
        data = pack_int4(weight.values)
        if sum(t.buffer == tensor.buffer for t in graph.tensors) > 1:  # a shared buffer gets its own copy
            model.buffers.append(schema.BufferT())
            tensor.buffer = len(model.buffers) - 1
        model.buffers[tensor.buffer].data, tensor.type = data, schema.TensorType.INT4
        code = model.operatorCodes[op.opcodeIndex]
        op.opcodeIndex = _operator_code(
            model, max(code.builtinCode, code.deprecatedBuiltinCode), max(code.version, INT4_OP_VERSIONS[name])
        )
        packed.append(PackedFilter(name, weight.name, weight.values.nbytes, len(data)))
    if packed:
        _raise_min_runtime_version(model, INT4_MIN_RUNTIME)
    return packed


def _raise_min_runtime_version(model: schema.ModelT, version: str) -> None:
    """Set the converter's min_runtime_version metadata to `version` if it names an older runtime."""
    for metadata in model.metadata or []:
        if metadata.name != b"min_runtime_version":
            continue
        buffer = model.buffers[metadata.buffer]
        old = bytes(buffer.data).rstrip(b"\0").decode(errors="replace")
        parts = old.split(".")
        if not all(part.isdigit() for part in parts) or tuple(map(int, parts)) < tuple(map(int, version.split("."))):
            buffer.data = version.encode().ljust(max(len(buffer.data), len(version)), b"\0")


def _operator_code(model: schema.ModelT, builtin: int, version: int | None = None) -> int:
    """The index of an operator code for `builtin` (of exactly `version` if given), appended if there is none."""
    for index, code in enumerate(model.operatorCodes):
        if max(code.builtinCode, code.deprecatedBuiltinCode) == builtin and version in (None, code.version):
            return index
    code = schema.OperatorCodeT()
    code.builtinCode, code.deprecatedBuiltinCode, code.version = builtin, min(builtin, 127), version or 1
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
