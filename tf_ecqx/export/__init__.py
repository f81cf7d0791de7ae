"""Export of ECQx models: integer TFLite files (`to_tflite`) and the entropy-coded bitstream of the kernel codes."""

from tf_ecqx.export.bitstream import BitstreamError, DecodedLayer, decode, encode, encode_layers, load_into, save
from tf_ecqx.export.tflite import ExportError, ExportResult, KernelCheck, to_tflite

__all__ = [
    "BitstreamError",
    "DecodedLayer",
    "ExportError",
    "ExportResult",
    "KernelCheck",
    "decode",
    "encode",
    "encode_layers",
    "load_into",
    "save",
    "to_tflite",
]
