"""Export of ECQx models: integer TFLite files (`to_tflite`) and the entropy-coded bitstream of the kernel codes."""

from tf_ecqx.export.bitstream import encode, load_into, save
from tf_ecqx.export.container import BitstreamError, DecodedLayer, decode, encode_layers
from tf_ecqx.export.tflite import ExportResult, to_tflite
from tf_ecqx.export.verification import ExportError, KernelCheck

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
