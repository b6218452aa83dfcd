"""Model integrity: a sha256 over an ONNX model's graph and weights, the contract excluded.

The exporter stores the hash in the contract (`model_sha256`), and the contract lives inside
the model's metadata, so the hash cannot cover the metadata: it covers every top-level field
of the serialised ModelProto except `metadata_props` (field 14), in file order, as raw bytes.
That takes no onnx or protobuf package, only the wire format (tag varint, then a payload
whose length the wire type gives), so the controller PC verifies a model with what it has.

A flipped byte anywhere in the graph or an initializer changes the hash; so does any change
to the opset, IR version, producer or doc string. Adding, removing or editing metadata does
not (the contract itself is checked against its sidecar and parsed separately).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

METADATA_PROPS_FIELD = 14
_WIRE_VARINT, _WIRE_FIXED64, _WIRE_LENGTH, _WIRE_FIXED32 = 0, 1, 2, 5


class ModelFormatError(ValueError):
    """The bytes are not a protobuf message this reader can walk."""


def _varint(data: bytes | memoryview, offset: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if offset >= len(data):
            raise ModelFormatError("truncated varint")
        byte = data[offset]
        offset += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, offset
        shift += 7
        if shift > 63:
            raise ModelFormatError("varint longer than 10 bytes")


def model_sha256(model_bytes: bytes) -> str:
    """Hex sha256 of a serialised ONNX model without its metadata_props (see module doc)."""
    data = memoryview(model_bytes)
    digest = hashlib.sha256()
    offset = 0
    while offset < len(data):
        field_start = offset
        tag, offset = _varint(data, offset)
        field_number, wire_type = tag >> 3, tag & 7
        if field_number == 0:
            raise ModelFormatError(f"field number 0 at byte {field_start}")
        if wire_type == _WIRE_VARINT:
            _, offset = _varint(data, offset)
        elif wire_type == _WIRE_FIXED64:
            offset += 8
        elif wire_type == _WIRE_FIXED32:
            offset += 4
        elif wire_type == _WIRE_LENGTH:
            length, offset = _varint(data, offset)
            offset += length
        else:
            raise ModelFormatError(f"wire type {wire_type} at byte {field_start}")
        if offset > len(data):
            raise ModelFormatError(f"field {field_number} at byte {field_start} runs past the end")
        if field_number != METADATA_PROPS_FIELD:
            digest.update(data[field_start:offset])
    return digest.hexdigest()


def file_sha256(model_path: str | Path) -> str:
    return model_sha256(Path(model_path).read_bytes())
