#!/usr/bin/env python3
"""Turn a DMTD training checkpoint into a DMTD delta file, for the quality-vs-tokens curve.

usage: snapshot_deltas.py CHECKPOINT META_DMTD_FILE OUT [TAU]

The checkpoint (`checkpoint.safetensors` of a `kind = "dmtd"` run) holds the deltas under their file names
(`model.layers.{i}.{proj}.lora_{A,B}.weight`) beside the optimizer's moments; the run's final `dmtd.safetensors`
gives the metadata (base, layout, τ, rank), which is the same at every step. A run stopped by Ctrl-C has no final
file: META_DMTD_FILE may then be the file of a 1-step run of the same config (same base, layout and rank) with
TAU overriding its `mtp_horizon`. Standard library only: a safetensors
file is an 8-byte little-endian header length, a JSON header, then the tensor bytes.
"""
import json
import os
import struct
import sys
import tempfile


def read(path):
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def main():
    ckpt, final, out = sys.argv[1:4]
    header, body = read(ckpt)
    meta = read(final)[0]["__metadata__"]
    if len(sys.argv) > 4:
        meta["mtp_horizon"] = str(int(sys.argv[4]))
    names = sorted(k for k in header if k.startswith("model.layers.") and ".lora_" in k)
    if not names:
        sys.exit(f"{ckpt}: no lora tensors")
    new, chunks, off = {"__metadata__": meta}, [], 0
    for k in names:
        a, b = header[k]["data_offsets"]
        chunks.append(body[a:b])
        new[k] = {"dtype": header[k]["dtype"], "shape": header[k]["shape"], "data_offsets": [off, off + b - a]}
        off += b - a
    h = json.dumps(new, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(out)))
    with os.fdopen(fd, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(chunks))
    os.chmod(tmp, 0o644)
    os.replace(tmp, out)


if __name__ == "__main__":
    main()
