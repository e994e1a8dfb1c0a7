"""The from-scratch baseline: a small CNN trained on CIFAR-10, Fashion-MNIST or class folders.

Two recipes:

- ``seed``: the classic TensorFlow tutorial CNN, exactly (Conv2D 32-3x3 relu, MaxPool 2,
  Conv2D 64-3x3 relu, MaxPool 2, Conv2D 64-3x3 relu, Flatten, Dense 64 relu, Dense softmax;
  122,570 parameters at 32x32x3 with 10 classes), pixels scaled to 0..1, Adam 1e-3, batch 32,
  10 epochs, constant learning rate.
- ``fast``: tuned for a 2-core CPU: the seed's layout with batch norm after the second and
  third convolutions and dropout around the hidden layer, pixels scaled to -1..1, batch 128,
  AdamW (weight decay 1e-4) at 3e-3 with a short linear warm-up then cosine decay to zero,
  5 epochs. No augmentation: random flips cost time and lost accuracy at 5 epochs.

Training reads top to bottom in `train_baseline`: tf.data pipelines from uint8 arrays, build
the core model, compile, fit while an `EpochClock` records when each epoch ended and its
test accuracy. `build_serving_model` wraps the core for predict: raw uint8 RGB images of any
size -> resize (antialiased bilinear) -> grayscale for grayscale datasets -> core ->
probabilities. Grayscale datasets (Fashion-MNIST) are fed RGB photos converted to luma
inside the graph (ITU-R 601: 0.299 R + 0.587 G + 0.114 B, Pillow's "L"), so every bundle
takes the same 3-channel input.

Modules: `recipes` (the two recipes and `BaselineConfig`), `model` (the CNNs and the serving
wrapper), `data` (CIFAR-10, Fashion-MNIST and class folders as in-memory arrays; the file
formats themselves are read by `detcrop.data.readers`), `training` (`train_baseline` and
`run_baseline`, which writes a run folder with reports and a bundle).

Example::

    from detcrop.classify.baseline.data import load_dataset
    from detcrop.classify.baseline.model import build_serving_model
    from detcrop.classify.baseline.recipes import BaselineConfig
    from detcrop.classify.baseline.training import train_baseline
    from detcrop.data.config import build_config

    data = load_dataset("fashion-mnist")
    result = train_baseline(data, build_config(BaselineConfig, {"recipe": "fast"}))
    serving = build_serving_model(result.model, data.image_shape)
"""
