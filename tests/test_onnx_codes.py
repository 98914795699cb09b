"""The compressed ONNX: weight codes decoded in the graph by ops ONNX Runtime folds at load.

Each registered quantization method's in-graph decode is checked bit-exact against its own
``decode`` (every bit width, per tensor / per channel, dense / pruned); a quantized net's
compressed ONNX is checked against PyTorch, its size against the dense graph, its optimized
graph for leftover decode ops, and its metadata.
"""

import json

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from compactcl.compress.quantize import config_for, get_method, list_methods, quantize_
from compactcl.compress.quantize.onnx_graph import OPSET, DecodeGraph
from compactcl.compress.quantize.state import quantized_layers
from compactcl.errors import CompactCLError
from compactcl.export.compressed import (check_against, deploy_metadata, export_compressed_onnx, export_dense_onnx,
                                         read_metadata)
from compactcl.models import IncrementalNet

ort = pytest.importorskip("onnxruntime")

DECODE_OPS = {"BitShift", "BitwiseAnd", "Gather", "GatherElements", "ReduceSum", "Cast", "Split", "Where", "Slice"}


def _run_decode(weights: dict[str, tuple[object, torch.Tensor]]) -> dict[str, np.ndarray]:
    """A graph with no input whose outputs are the in-graph decodes of ``weights`` (name -> (wq, w))."""
    g = DecodeGraph()
    outs = {name: wq.quant_method.onnx_weight_decode(wq, w, g) for name, (wq, w) in weights.items()}
    nodes, inits = g.finish()
    outputs = []
    for name, out in outs.items():
        nodes.append(helper.make_node("Identity", [out], [name]))
        outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(weights[name][1].shape)))
    model = helper.make_model(helper.make_graph(nodes, "g", [], outputs, inits),
                              opset_imports=[helper.make_opsetid("", OPSET)])
    onnx.checker.check_model(model)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip(outs, sess.run(None, {})))


def _cases():
    for name in list_methods():
        method = get_method(name)
        for bits in range(method.min_bits, 9):
            yield name, bits, {}
        for opt in method.options:  # per_channel / symmetric variants
            if opt == "per_channel":
                yield name, 3, {"per_channel": not method.make_config(3).per_channel}
            if opt == "symmetric":
                yield name, 5, {"symmetric": False}


@pytest.mark.parametrize("pruned", [False, True], ids=["dense", "pruned"])
def test_every_method_decodes_bit_exact_in_onnx_runtime(pruned):
    """Every method, every bit width it supports, in one graph: ORT's decode == the method's decode."""
    gen = torch.Generator().manual_seed(0)
    weights, want = {}, {}
    for i, (name, bits, kw) in enumerate(_cases()):
        w = torch.randn(6, 5, 3, 3, generator=gen) * (0.1 + i % 3)
        if pruned:
            w[torch.rand(w.shape, generator=gen) < 0.5] = 0.0
        cfg = config_for(name, bits, **kw)
        wq = get_method(name).fit(w, cfg, bits)
        deq = wq.decode(wq.encode(w), w != 0)  # the weights quantize_ leaves in the model
        key = f"w{i}_{name}_{bits}"
        weights[key], want[key] = (wq, deq), deq.numpy()
    got = _run_decode(weights)
    for key in want:
        assert got[key].shape == want[key].shape and got[key].dtype == np.float32, key
        assert np.array_equal(got[key], want[key]), key  # bit-exact, zeros included


def test_packed_codes_are_the_real_size():
    """4-bit codes take half a byte each in the file: 1000 codes -> 500 bytes of uint8 initializer."""
    g = DecodeGraph()
    codes = np.arange(1000) % 16
    g.codes(codes, 4)
    _, inits = g.finish()
    u8 = [t for t in inits if t.data_type == TensorProto.UINT8 and t.dims[0] > 8]
    assert [int(np.prod(t.dims)) for t in u8] == [500]


@pytest.fixture(scope="module")
def quantized_net():
    torch.manual_seed(0)
    net = IncrementalNet("cnn", 1, 8, 10, backbone_kwargs={"width": 8}).eval()
    with torch.no_grad():  # non-trivial batch-norm statistics, so the BN path is exercised
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    quantize_(net, config_for("kmeans", 4, layer_bits={"head": 8, "backbone.body.0.0": 2}))
    return net


def test_compressed_onnx_matches_pytorch_and_is_small(quantized_net, tmp_path):
    net = quantized_net
    x = torch.randn(64, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    y = torch.zeros(64, dtype=torch.long)
    nbytes = export_compressed_onnx(net, tmp_path / "c.onnx", (1, 8, 8))
    dense = export_dense_onnx(net, tmp_path / "d.onnx", (1, 8, 8))
    assert nbytes == (tmp_path / "c.onnx").stat().st_size and nbytes < dense / 2
    res = check_against(tmp_path / "c.onnx", net, x, y)
    assert res["agreement"] == 1.0 and res["max_abs_logit_diff"] < 1e-4
    # the weights are stored as packed codes, not floats: no float initializer as big as a conv weight
    graph = onnx.load(str(tmp_path / "c.onnx")).graph
    floats = [t for t in graph.initializer if t.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16)]
    biggest = max((int(np.prod(t.dims)) for t in floats if t.data_type == TensorProto.FLOAT), default=0)
    # the 8-bit head's codebook, nothing weight-sized; and only the entries its weights use, not all 256
    used = len(torch.unique(net.get_submodule("head").weight))
    assert used < 256 and biggest <= used
    # codebooks are fp16 values (fitted so): they travel in the one fp16 blob with biases and batch norm
    half = sum(int(np.prod(t.dims)) for t in floats if t.data_type == TensorProto.FLOAT16)
    books = sum(wq.params["codebook"].numel() for wq in quantized_layers(net).values())
    assert half >= books + net.head.bias.numel()
    assert set(quantized_layers(net))  # the net really is quantized


def test_onnx_graph_overhead_stays_small(quantized_net, tmp_path):
    """What the file spends beyond the packed codes and the fp16 values (codebooks, biases, batch
    norm: the data the .ccl holds too) — ops, names, shapes, framing — on this fixed 3-width net.
    Measured 1,841 B (2,661 B before one-character names, shift+mask unpack, the int8 shapes blob,
    inferred/default attributes dropped); a budget counts every byte, so a regression fails here."""
    nbytes = export_compressed_onnx(quantized_net, tmp_path / "c.onnx", (1, 8, 8))
    graph = onnx.load(str(tmp_path / "c.onnx")).graph
    codes = sum(len(t.raw_data) for t in graph.initializer if t.data_type == TensorProto.UINT8 and np.prod(t.dims) > 8)
    halves = sum(len(t.raw_data) for t in graph.initializer if t.data_type == TensorProto.FLOAT16)
    packed = sum(quantized_net.get_submodule(name).weight.numel() * wq.bits // 8
                 for name, wq in quantized_layers(quantized_net).items())
    assert codes >= packed  # the blobs really are the codes (a width's blob pads to whole bytes)
    assert nbytes - codes - halves <= 1_900, (nbytes, codes, halves)


def test_onnx_runtime_folds_the_decode_at_load(quantized_net, tmp_path):
    """What ORT runs after load (its optimized graph, basic level) holds no decode op."""
    export_compressed_onnx(quantized_net, tmp_path / "c.onnx", (1, 8, 8))
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(str(tmp_path / "c.onnx"), so, providers=["CPUExecutionProvider"])
    ops = {n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node}
    assert ops and not ops & DECODE_OPS, ops
    assert "Conv" in ops and "BatchNormalization" not in ops  # BN fused into the decoded conv weights


def test_metadata_round_trips_and_is_required(quantized_net, tmp_path):
    src = tmp_path / "deployed.ccl"
    src.write_bytes(b"artifact bytes")
    meta = {"stream": {"class_names": [f"c{i}" for i in range(10)], "normalization": {"mean": 0.3, "std": 0.2}},
            "task": 2, "classes": [7, 3, 1], "recipe": "r"}
    props = deploy_metadata(meta, (1, 8, 8), src)
    export_compressed_onnx(quantized_net, tmp_path / "c.onnx", (1, 8, 8), props)
    md = read_metadata(tmp_path / "c.onnx")
    assert md["class_names"] == ["c7", "c3", "c1"] and md["class_ids"] == [7, 3, 1]
    assert md["input_channels"] == 1 and md["input_size"] == 8 and md["input_layout"] == "NCHW"
    assert md["normalization"] == {"mean": [0.3], "std": [0.2]} and md["task"] == "2" and md["recipe"] == "r"
    import hashlib

    assert md["source_sha256"] == hashlib.sha256(b"artifact bytes").hexdigest()
    export_dense_onnx(quantized_net, tmp_path / "plain.onnx", (1, 8, 8))
    with pytest.raises(CompactCLError, match=r"plain\.onnx.*without compactcl metadata"):
        read_metadata(tmp_path / "plain.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(CompactCLError, match=r"junk\.onnx.*not an ONNX model"):
        read_metadata(tmp_path / "junk.onnx")
    assert json.loads(props["class_names"]) == ["c7", "c3", "c1"]
