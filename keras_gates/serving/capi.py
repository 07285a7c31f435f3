"""TensorFlow's C API and protos without TensorFlow's Python package.

The `tensorflow` wheel ships ``libtensorflow_cc.so.2``, whose C API
(``TF_LoadSessionFromSavedModel``, ``TF_SessionRun``) runs
``tensorflow::LoadSavedModel``: the loader ``tensorflow_model_server`` calls.
This module drives it with ctypes, reads the protos with message classes built
from the wheel's descriptors, and reads TFRecord files. Standard library and
NumPy only: it runs in the loader child, which never imports ``tensorflow``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

# The numpy dtype of each tensorflow.DataType handled here, by enum name; the
# numbers (TF_DataType in the C API, which uses the same values) are read from
# types.proto by `DataTypes`.
_NUMPY = {
    "DT_FLOAT": np.float32,
    "DT_DOUBLE": np.float64,
    "DT_INT32": np.int32,
    "DT_UINT8": np.uint8,
    "DT_INT16": np.int16,
    "DT_INT8": np.int8,
    "DT_INT64": np.int64,
    "DT_BOOL": np.bool_,
    "DT_HALF": np.float16,
    "DT_UINT16": np.uint16,
    "DT_UINT32": np.uint32,
    "DT_UINT64": np.uint64,
}
# Which TensorProto field holds a dtype's values when not in tensor_content.
_VALUE_FIELD = {
    "DT_FLOAT": "float_val",
    "DT_DOUBLE": "double_val",
    "DT_INT32": "int_val",
    "DT_UINT8": "int_val",
    "DT_INT16": "int_val",
    "DT_INT8": "int_val",
    "DT_INT64": "int64_val",
    "DT_BOOL": "bool_val",
    "DT_HALF": "half_val",
    "DT_UINT16": "int_val",
    "DT_UINT32": "uint32_val",
    "DT_UINT64": "uint64_val",
    "DT_STRING": "string_val",
}


class DataTypes:
    """tensorflow.DataType codes <-> numpy dtypes, from the proto enum."""

    def __init__(self, protos: Protos):
        protos.load("tensorflow.core.framework.types_pb2")
        enum = protos.pool.FindEnumTypeByName("tensorflow.DataType")
        code = {name: enum.values_by_name[name].number for name in _VALUE_FIELD}
        self.string = code["DT_STRING"]
        self.half = code["DT_HALF"]
        self.numpy = {code[name]: np.dtype(dtype) for name, dtype in _NUMPY.items()}
        self.codes = {dtype: number for number, dtype in self.numpy.items()}
        self.integers = {c for c, d in self.numpy.items() if d.kind in "iu"}
        self.field = {code[name]: field for name, field in _VALUE_FIELD.items()}


TSTRING_SIZE = 24  # sizeof(TF_TString)


class Protos:
    """Protobuf classes from the wheel's descriptors, without importing them.

    Each ``*_pb2.py`` in tensorflow / tensorflow_serving carries its file
    descriptor as a bytes literal; reading it with ``ast`` (and its imports,
    to find the dependencies) builds the same message classes in a private
    pool, while ``import tensorflow.core...`` would run tensorflow/__init__.py.
    """

    def __init__(self):
        import ast
        import importlib.util

        from google.protobuf import descriptor_pb2, descriptor_pool

        self._ast = ast
        self._descriptor_pb2 = descriptor_pb2
        self.pool = descriptor_pool.DescriptorPool()
        self.roots = {}
        for package in ("tensorflow", "tensorflow_serving"):
            spec = importlib.util.find_spec(package)  # locates, does not import
            if spec is not None and spec.submodule_search_locations:
                self.roots[package] = Path(list(spec.submodule_search_locations)[0])
        self.loaded: set[str] = set()

    def _load_google(self, module_name: str) -> None:
        import importlib

        if module_name in self.loaded:
            return
        self.loaded.add(module_name)
        module = importlib.import_module(module_name)
        proto = self._descriptor_pb2.FileDescriptorProto()
        module.DESCRIPTOR.CopyToProto(proto)
        for dependency in proto.dependency:
            self._load_google(
                dependency.replace("/", ".").removesuffix(".proto") + "_pb2"
            )
        self.pool.Add(proto)

    def load(self, module_name: str) -> None:
        """Add `module_name` (e.g. tensorflow.core.protobuf.saved_model_pb2)."""
        if module_name in self.loaded:
            return
        if module_name.startswith("google.protobuf."):
            return self._load_google(module_name)
        package, _, rest = module_name.partition(".")
        if package not in self.roots:
            raise ModuleNotFoundError(f"{package} is not installed")
        path = self.roots[package] / (rest.replace(".", "/") + ".py")
        tree = self._ast.parse(path.read_text())
        serialized = None
        for node in self._ast.walk(tree):
            if isinstance(node, self._ast.ImportFrom) and node.module:
                for alias in node.names:
                    if alias.name.endswith("_pb2"):
                        self.load(f"{node.module}.{alias.name}")
            elif (
                isinstance(node, self._ast.Call)
                and getattr(node.func, "attr", "") == "AddSerializedFile"
                and node.args
                and isinstance(node.args[0], self._ast.Constant)
            ):
                serialized = node.args[0].value
        self.loaded.add(module_name)
        if serialized is None:
            raise ValueError(f"no serialized descriptor in {path}")
        proto = self._descriptor_pb2.FileDescriptorProto.FromString(serialized)
        self.pool.Add(proto)

    def message(self, full_name: str):
        from google.protobuf import message_factory

        return message_factory.GetMessageClass(
            self.pool.FindMessageTypeByName(full_name)
        )


class CApi:
    """The TensorFlow C API of the installed wheel, through ctypes."""

    def __init__(self, root: Path, dtypes: DataTypes):
        import ctypes

        self.ct = ctypes
        self.dtypes = dtypes
        flags = os.RTLD_LAZY | os.RTLD_LOCAL
        framework = ctypes.CDLL(str(root / "libtensorflow_framework.so.2"), mode=flags)
        cc = ctypes.CDLL(str(root / "libtensorflow_cc.so.2"), mode=flags)
        self.libs = (cc, framework)

        class Buffer(ctypes.Structure):
            _fields_ = [
                ("data", ctypes.c_void_p),
                ("length", ctypes.c_size_t),
                ("data_deallocator", ctypes.c_void_p),
            ]

        class Output(ctypes.Structure):
            _fields_ = [("oper", ctypes.c_void_p), ("index", ctypes.c_int)]

        self.Buffer, self.Output = Buffer, Output
        vp, sz, i64 = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int64
        self._declare("TF_NewStatus", vp, [])
        self._declare("TF_DeleteStatus", None, [vp])
        self._declare("TF_GetCode", ctypes.c_int, [vp])
        self._declare("TF_Message", ctypes.c_char_p, [vp])
        self._declare("TF_GetAllOpList", ctypes.POINTER(Buffer), [])
        self._declare("TF_DeleteBuffer", None, [ctypes.POINTER(Buffer)])
        self._declare("TF_NewGraph", vp, [])
        self._declare("TF_DeleteGraph", None, [vp])
        self._declare("TF_NewSessionOptions", vp, [])
        self._declare("TF_DeleteSessionOptions", None, [vp])
        self._declare("TF_SetConfig", None, [vp, ctypes.c_char_p, sz, vp])
        self._declare(
            "TF_LoadSessionFromSavedModel",
            vp,
            [vp, vp, ctypes.c_char_p, ctypes.POINTER(ctypes.c_char_p), ctypes.c_int]
            + [vp, vp, vp],
        )
        self._declare("TF_GraphOperationByName", vp, [vp, ctypes.c_char_p])
        self._declare(
            "TF_SessionRun",
            None,
            [vp, vp, ctypes.POINTER(Output), ctypes.POINTER(vp), ctypes.c_int]
            + [ctypes.POINTER(Output), ctypes.POINTER(vp), ctypes.c_int]
            + [vp, ctypes.c_int, vp, vp],
        )
        self._declare("TF_CloseSession", None, [vp, vp])
        self._declare("TF_DeleteSession", None, [vp, vp])
        self._declare(
            "TF_AllocateTensor",
            vp,
            [ctypes.c_int, ctypes.POINTER(i64), ctypes.c_int, sz],
        )
        self._declare("TF_DeleteTensor", None, [vp])
        self._declare("TF_TensorData", vp, [vp])
        self._declare("TF_TensorByteSize", sz, [vp])
        self._declare("TF_TensorType", ctypes.c_int, [vp])
        self._declare("TF_NumDims", ctypes.c_int, [vp])
        self._declare("TF_Dim", i64, [vp, ctypes.c_int])
        self._declare("TF_StringInit", None, [vp])
        self._declare("TF_StringCopy", None, [vp, ctypes.c_char_p, sz])
        self._declare("TF_StringGetDataPointer", vp, [vp])
        self._declare("TF_StringGetSize", sz, [vp])

    def _declare(self, name, restype, argtypes):
        for lib in self.libs:
            function = getattr(lib, name, None)
            if function is not None:
                function.restype = restype
                function.argtypes = argtypes
                setattr(self, name, function)
                return
        raise AttributeError(f"{name} is not exported by the TensorFlow libraries")

    def check(self, status, what: str) -> None:
        if self.TF_GetCode(status) != 0:
            message = self.TF_Message(status).decode(errors="replace")
            raise RuntimeError(f"{what}: {message}")

    def op_list(self) -> bytes:
        """The serialized OpList of every op registered in the libraries."""
        buffer = self.TF_GetAllOpList()
        data = self.ct.string_at(buffer.contents.data, buffer.contents.length)
        self.TF_DeleteBuffer(buffer)
        return data

    def tensor(self, value: np.ndarray):
        ct = self.ct
        dims = (ct.c_int64 * max(value.ndim, 1))(*value.shape)
        if value.dtype.kind in "US":
            items = [
                v.encode() if isinstance(v, str) else bytes(v)
                for v in value.reshape(-1)
            ]
            handle = self.TF_AllocateTensor(
                self.dtypes.string, dims, value.ndim, TSTRING_SIZE * len(items)
            )
            base = self.TF_TensorData(handle)
            for index, item in enumerate(items):
                slot = base + index * TSTRING_SIZE
                self.TF_StringInit(slot)
                self.TF_StringCopy(slot, item, len(item))
            return handle
        codes = self.dtypes.codes
        value = np.ascontiguousarray(value)
        if value.dtype not in codes:
            raise TypeError(f"unsupported input dtype {value.dtype}")
        handle = self.TF_AllocateTensor(
            codes[value.dtype], dims, value.ndim, value.nbytes
        )
        ct.memmove(self.TF_TensorData(handle), value.ctypes.data, value.nbytes)
        return handle

    def array(self, handle) -> np.ndarray:
        ct = self.ct
        shape = tuple(self.TF_Dim(handle, i) for i in range(self.TF_NumDims(handle)))
        dtype = self.TF_TensorType(handle)
        data = self.TF_TensorData(handle)
        if dtype == self.dtypes.string:
            count = int(np.prod(shape, dtype=np.int64))
            items = []
            for index in range(count):
                slot = data + index * TSTRING_SIZE
                items.append(
                    ct.string_at(
                        self.TF_StringGetDataPointer(slot), self.TF_StringGetSize(slot)
                    )
                )
            return np.array(items, dtype=bytes).reshape(shape)
        if dtype not in self.dtypes.numpy:
            raise TypeError(f"unsupported output TF_DataType {dtype}")
        size = self.TF_TensorByteSize(handle)
        raw = ct.string_at(data, size)
        return np.frombuffer(raw, dtype=self.dtypes.numpy[dtype]).reshape(shape).copy()


class Session:
    """A session loaded by tensorflow::LoadSavedModel, and its signatures."""

    def __init__(self, tf: CApi, protos: Protos, export_dir: Path, signatures):
        self.tf = tf
        self.runs = 0  # successful runs, counted by the callers
        self.signatures = signatures
        ct = tf.ct
        status = tf.TF_NewStatus()
        self.status = status
        options = tf.TF_NewSessionOptions()
        protos.load("tensorflow.core.protobuf.config_pb2")
        config = protos.message("tensorflow.ConfigProto")(
            intra_op_parallelism_threads=2, inter_op_parallelism_threads=2
        ).SerializeToString()
        tf.TF_SetConfig(options, config, len(config), status)
        tf.check(status, "TF_SetConfig")
        self.graph = tf.TF_NewGraph()
        tags = (ct.c_char_p * 1)(b"serve")
        self.session = tf.TF_LoadSessionFromSavedModel(
            options, None, str(export_dir).encode(), tags, 1, self.graph, None, status
        )
        tf.TF_DeleteSessionOptions(options)
        tf.check(status, "TF_LoadSessionFromSavedModel")

    def _output(self, tensor_name: str):
        op_name, _, index = tensor_name.partition(":")
        operation = self.tf.TF_GraphOperationByName(self.graph, op_name.encode())
        if not operation:
            raise RuntimeError(f"the graph has no operation {op_name!r}")
        return self.tf.Output(operation, int(index or 0))

    def run(
        self, signature: str, feeds: dict[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        tf, ct = self.tf, self.tf.ct
        if signature not in self.signatures:
            raise RuntimeError(
                f"no signature {signature!r}; the SavedModel has "
                f"{sorted(self.signatures)}"
            )
        definition = self.signatures[signature]
        missing = set(definition.inputs) - set(feeds)
        extra = set(feeds) - set(definition.inputs)
        if missing or extra:
            raise RuntimeError(
                f"signature {signature!r} takes inputs {sorted(definition.inputs)}; "
                f"the request has {sorted(feeds)}"
            )
        input_names = sorted(feeds)
        output_names = sorted(definition.outputs)
        inputs = (tf.Output * len(input_names))(
            *[self._output(definition.inputs[n].name) for n in input_names]
        )
        values = [tf.tensor(np.asarray(feeds[n])) for n in input_names]
        input_values = (ct.c_void_p * len(values))(*values)
        outputs = (tf.Output * len(output_names))(
            *[self._output(definition.outputs[n].name) for n in output_names]
        )
        output_values = (ct.c_void_p * len(output_names))()
        tf.TF_SessionRun(
            self.session,
            None,
            inputs,
            input_values,
            len(values),
            outputs,
            output_values,
            len(output_names),
            None,
            0,
            None,
            self.status,
        )
        for handle in values:
            tf.TF_DeleteTensor(handle)
        tf.check(self.status, f"TF_SessionRun({signature})")
        result = {}
        for name, handle in zip(output_names, output_values):
            result[name] = tf.array(handle)
            tf.TF_DeleteTensor(handle)
        return result

    def close(self) -> None:
        self.tf.TF_CloseSession(self.session, self.status)
        self.tf.TF_DeleteSession(self.session, self.status)
        self.tf.TF_DeleteGraph(self.graph)
        self.tf.TF_DeleteStatus(self.status)


# -- TFRecord and TensorProto, by hand (no tf.io here) ---------------------- #


def _crc32c_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC_TABLE: list[int] = []


def _masked_crc32c(data: bytes) -> int:
    if not _CRC_TABLE:
        _CRC_TABLE.extend(_crc32c_table())
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    crc ^= 0xFFFFFFFF
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def read_tfrecords(path: str | os.PathLike) -> list[bytes]:
    """The records of a TFRecord file, CRCs checked.

    Args:
        path: The file.

    Returns:
        The records' bytes, in order.
    """
    import struct

    data = Path(path).read_bytes()
    records, offset = [], 0
    while offset < len(data):
        if offset + 12 > len(data):
            raise ValueError(f"{path}: truncated record header at byte {offset}")
        header = data[offset : offset + 8]
        (length,) = struct.unpack("<Q", header)
        (length_crc,) = struct.unpack("<I", data[offset + 8 : offset + 12])
        if _masked_crc32c(header) != length_crc:
            raise ValueError(f"{path}: bad length CRC at byte {offset}")
        start = offset + 12
        end = start + length
        if end + 4 > len(data):
            raise ValueError(f"{path}: truncated record at byte {offset}")
        record = data[start:end]
        (record_crc,) = struct.unpack("<I", data[end : end + 4])
        if _masked_crc32c(record) != record_crc:
            raise ValueError(f"{path}: bad data CRC at byte {offset}")
        records.append(record)
        offset = end + 4
    return records


def from_tensor_proto(proto, dtypes: DataTypes) -> np.ndarray:
    """A TensorProto (e.g. of a warmup request) as a NumPy array."""
    shape = tuple(d.size for d in proto.tensor_shape.dim)
    count = int(np.prod(shape, dtype=np.int64))
    if proto.dtype == dtypes.string:
        values = list(proto.string_val)
        dtype = bytes
    else:
        if proto.dtype not in dtypes.numpy:
            raise TypeError(f"unsupported TensorProto dtype {proto.dtype}")
        dtype = dtypes.numpy[proto.dtype]
        if proto.tensor_content:
            return (
                np.frombuffer(proto.tensor_content, dtype=dtype).reshape(shape).copy()
            )
        values = list(getattr(proto, dtypes.field[proto.dtype]))
        if proto.dtype == dtypes.half:  # half_val holds the raw 16 bits
            values = np.array(values, np.uint16).view(np.float16).tolist()
    if len(values) < count:  # TF repeats the last value to fill the shape
        values = values + [values[-1] if values else dtype()] * (count - len(values))
    return np.array(values, dtype=dtype).reshape(shape)
