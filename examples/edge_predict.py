"""Run a compactcl deployed.onnx on a device: numpy + onnxruntime + Pillow, no torch, no compactcl.

    python examples/edge_predict.py RUN/final/deployed.onnx image.png [more.png ...]

Everything needed is in the ONNX file's metadata: input channels and size, per-channel
normalization (x = (pixel / 255 - mean) / std) and the class names in output order.
"""

import json
import sys

import numpy as np
import onnxruntime as ort
from PIL import Image


def load(path):
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    meta = sess.get_modelmeta().custom_metadata_map
    if "class_names" not in meta:
        sys.exit(f"{path}: no compactcl metadata (class_names); export it with `compactcl run`")
    return sess, meta


def preprocess(image_path, meta):
    channels, size = int(meta["input_channels"]), int(meta["input_size"])
    norm = json.loads(meta["normalization"])
    img = Image.open(image_path).convert("L" if channels == 1 else "RGB")
    if img.size != (size, size):
        img = img.resize((size, size), Image.BILINEAR)
    x = np.asarray(img, dtype=np.float32).reshape(size, size, channels).transpose(2, 0, 1) / 255.0  # (C, H, W)
    mean = np.array(norm["mean"], np.float32)[:, None, None]
    std = np.array(norm["std"], np.float32)[:, None, None]
    return (x - mean) / std


def predict(onnx_path, image_paths):
    """[(image, class name, probability)] for each image."""
    sess, meta = load(onnx_path)
    names = json.loads(meta["class_names"])
    x = np.stack([preprocess(p, meta) for p in image_paths]).astype(np.float32)  # (N, C, H, W)
    logits = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    return [(path, names[int(i)], float(p[k, i])) for k, (path, i) in enumerate(zip(image_paths, p.argmax(1)))]


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    for path, name, prob in predict(sys.argv[1], sys.argv[2:]):
        print(f"{path}\t{name}\t{prob:.3f}")
