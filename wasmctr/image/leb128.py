"""Unsigned LEB128, the variable-length integers of both the wasm binary format and protobuf (varint)."""


def encode_unsigned(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)
