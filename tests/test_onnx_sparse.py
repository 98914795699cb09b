"""Sparse weight codes in the compressed ONNX: per tensor the smaller of dense or sparse codes,
rebuilt in the graph by ops ONNX Runtime folds at load.

Checked on real files: a pruned + quantized net's ONNX predicts as its ``.ccl`` does, the sparse
form is chosen where it is smaller (byte counts of the files written in each form) and not where
it is not, and ORT's optimized graph holds none of the rebuild ops.
"""

import numpy as np
import onnx
import pytest
import torch

from compactcl.compress.prune import finalize_, magnitude_prune_
from compactcl.compress.quantize import config_for, quantize_
from compactcl.export.artifact import load_artifact, save_artifact
from compactcl.export.compressed import check_against, export_compressed_onnx
from compactcl.export.onnx_sparse import SPARSE_MODES, SparseCodesGraph, padded_gaps, sparse_cost_bits
from compactcl.models import IncrementalNet

ort = pytest.importorskip("onnxruntime")

REBUILD_OPS = {"ScatterElements", "CumSum", "Expand"}


@pytest.mark.parametrize("idx_bits", [1, 2, 3, 8])
def test_padded_gaps_list_the_positions(idx_bits):
    rng = np.random.default_rng(idx_bits)
    positions = np.sort(rng.choice(5000, 300, replace=False))
    gaps, real = padded_gaps(positions, idx_bits)
    assert gaps.min() >= 0 and gaps.max() < 2 ** idx_bits
    where = np.cumsum(gaps)
    assert np.array_equal(where[real], positions)  # real entries land on the positions ...
    assert len(np.unique(where)) == len(where)  # ... fillers on distinct positions between them
    assert not np.isin(where[~real], positions).any()
    assert sparse_cost_bits(positions, 4, idx_bits) == len(gaps) * (idx_bits + 4)


def _pruned_net(ratio: float, method: str = "kmeans", bits: int = 4, width: int = 16) -> IncrementalNet:
    torch.manual_seed(0)
    net = IncrementalNet("cnn", 1, 8, 10, backbone_kwargs={"width": width}).eval()
    if ratio:
        magnitude_prune_(net, ratio, scope="layer")
        finalize_(net)
    quantize_(net, config_for(method, bits))
    return net.eval()


def _sizes(net, tmp_path) -> dict[str, int]:
    sizes = {}
    for mode in SPARSE_MODES:
        sizes[mode] = export_compressed_onnx(net, tmp_path / f"{mode}.onnx", (1, 8, 8), sparse=mode)
        assert sizes[mode] == (tmp_path / f"{mode}.onnx").stat().st_size
    return sizes


@pytest.mark.parametrize("method", ["kmeans", "linear", "log"])
def test_pruned_onnx_predicts_as_the_ccl_and_is_smaller(method, tmp_path):
    """90% pruned per layer: sparse codes chosen, a smaller file, the .ccl's predictions exactly."""
    net = _pruned_net(0.9, method)
    save_artifact(net, tmp_path / "m.ccl")
    ccl = load_artifact(tmp_path / "m.ccl")
    sizes = _sizes(net, tmp_path)
    assert sizes["auto"] < sizes["never"] * 0.8, sizes
    assert sizes["auto"] <= sizes["always"], sizes
    x = torch.randn(128, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    for mode in SPARSE_MODES:
        res = check_against(tmp_path / f"{mode}.onnx", ccl, x, torch.zeros(128, dtype=torch.long))
        assert res["agreement"] == 1.0 and res["max_abs_logit_diff"] < 1e-4, (mode, res)
    ops = {n.op_type for n in onnx.load(str(tmp_path / "auto.onnx")).graph.node}
    assert REBUILD_OPS <= ops


def test_dense_weights_stay_dense(tmp_path):
    """No pruning: no tensor is sparse, the file is byte for byte the dense-only one."""
    net = _pruned_net(0.0)
    sizes = _sizes(net, tmp_path)
    assert sizes["auto"] == sizes["never"] < sizes["always"]
    assert (tmp_path / "auto.onnx").read_bytes() == (tmp_path / "never.onnx").read_bytes()


@pytest.mark.parametrize("ratio", [0.3, 0.5, 0.7, 0.8, 0.95])
def test_the_choice_is_never_worse_than_either_form(ratio, tmp_path):
    """Per tensor: the file is no bigger than all-dense or all-sparse (the estimate errs by < 100 B)."""
    sizes = _sizes(_pruned_net(ratio, width=32), tmp_path)
    assert sizes["auto"] <= min(sizes["never"], sizes["always"]) + 100, sizes


def test_per_tensor_choice(tmp_path):
    """One layer pruned hard, the others dense: exactly that layer's codes are sparse."""
    torch.manual_seed(0)
    net = IncrementalNet("cnn", 1, 8, 10, backbone_kwargs={"width": 32}).eval()
    magnitude_prune_(net, {"backbone.body.4.0": 0.95})
    finalize_(net)
    quantize_(net, config_for("linear", 4))
    sizes = _sizes(net, tmp_path)
    graph = onnx.load(str(tmp_path / "auto.onnx")).graph
    assert sum(n.op_type == "ScatterElements" for n in graph.node) == 1
    assert sizes["auto"] < min(sizes["never"], sizes["always"]), sizes


def test_onnx_runtime_folds_the_sparse_rebuild(tmp_path):
    export_compressed_onnx(_pruned_net(0.9), tmp_path / "c.onnx", (1, 8, 8), sparse="always")
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(str(tmp_path / "c.onnx"), so, providers=["CPUExecutionProvider"])
    ops = {n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node}
    assert "Conv" in ops and not ops & (REBUILD_OPS | {"BitShift", "Gather"}), ops


def test_a_layer_pruned_away_is_one_expand():
    g = SparseCodesGraph(sparse="auto")
    g.codes(np.full(1000, 3), 4, (10, 100))
    nodes, _ = g.finish()
    assert [n.op_type for n in nodes] == ["Expand", "Reshape"]
    with pytest.raises(ValueError, match="sparse must be one of"):
        SparseCodesGraph(sparse="sometimes")


def test_mask_and_codes_share_their_positions(tmp_path):
    """k-means keeps common zeros with a mask: mask and codes are rebuilt from one position stream
    (one CumSum for two ScatterElements), a smaller file than storing each on its own."""
    net = _pruned_net(0.9, "kmeans")
    sizes = _sizes(net, tmp_path)
    ops = [n.op_type for n in onnx.load(str(tmp_path / "auto.onnx")).graph.node]
    assert ops.count("ScatterElements") == 2 * ops.count("CumSum") > 0
    assert sizes["auto"] < sizes["never"] * 0.6, sizes
