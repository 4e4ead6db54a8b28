"""Write a safetensors file's float32 tensors as a PyTorch zip-format .pth (torch.save, >= 1.6).

Stdlib only: no torch. The pickle names torch's rebuild function and storage class through
stand-in modules, exactly as torch.save records them, so torch.load and graft both read it.
Usage: python3 safetensors_to_zip_pth.py IN.safetensors OUT.pth
"""
import collections
import io
import json
import pickle
import struct
import sys
import types
import zipfile


def _install_fake_torch() -> tuple:
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*args):  # only its name is pickled
        raise NotImplementedError

    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2

    class FloatStorage:
        pass

    FloatStorage.__module__ = "torch"
    FloatStorage.__qualname__ = "FloatStorage"
    torch.FloatStorage = FloatStorage
    torch._utils = utils
    sys.modules["torch"] = torch
    sys.modules["torch._utils"] = utils
    return _rebuild_tensor_v2, FloatStorage


REBUILD, FLOAT_STORAGE = _install_fake_torch()


class StorageRef:
    def __init__(self, key: str, numel: int):
        self.key = key
        self.numel = numel


class TensorRef:
    def __init__(self, storage: StorageRef, shape: list):
        self.storage = storage
        self.shape = tuple(shape)

    def __reduce__(self):
        stride = []
        acc = 1
        for dim in reversed(self.shape):
            stride.insert(0, acc)
            acc *= dim
        return (REBUILD, (self.storage, 0, self.shape, tuple(stride), False, collections.OrderedDict()))


class TorchPickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, StorageRef):
            return ("storage", FLOAT_STORAGE, obj.key, "cpu", obj.numel)
        return None


def main(src: str, dst: str) -> None:
    with open(src, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        data = f.read()
    state = collections.OrderedDict()
    blobs = {}
    for i, (name, info) in enumerate(sorted(header.items())):
        if name == "__metadata__" or info["dtype"] != "F32":
            continue
        begin, end = info["data_offsets"]
        key = str(i)
        blobs[key] = data[begin:end]
        state[name] = TensorRef(StorageRef(key, (end - begin) // 4), info["shape"])
    buf = io.BytesIO()
    TorchPickler(buf, protocol=2).dump(state)
    with zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", buf.getvalue())
        z.writestr("archive/byteorder", "little")
        for key, blob in blobs.items():
            z.writestr(f"archive/data/{key}", blob)
        z.writestr("archive/version", "3\n")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
