"""Packed .ccl artifacts: exact reload, real sizes, sparse storage, integrity."""

import json
import os
from pathlib import Path

import pytest
import torch

import compactcl
from compactcl.compress.quantize import KMeansQuantConfig, LinearQuantConfig, LogQuantConfig, quantize_, quantized_layers
from compactcl.errors import CompactCLError
from compactcl.export.artifact import FORMAT, artifact_breakdown, artifact_nbytes, load_artifact, save_artifact
from compactcl.models import IncrementalNet
from compactcl.models.checkpoint import model_from_state

CONFIGS = [LinearQuantConfig(bits=8), LinearQuantConfig(bits=4, per_channel=False),
           LinearQuantConfig(bits=3, symmetric=False), LogQuantConfig(bits=4), LogQuantConfig(bits=3, per_channel=True),
           KMeansQuantConfig(bits=4), KMeansQuantConfig(bits=2, init="density")]


def _net(backbone="cnn", kw=None, classes=10):
    kw = kw if kw is not None else ({"width": 8} if backbone == "cnn" else {"hidden": [64]})
    net = IncrementalNet(backbone, 1, 8, num_classes=classes, backbone_kwargs=kw)
    net.train()
    net(torch.randn(32, 1, 8, 8))  # non-trivial batch-norm statistics
    return net.eval()


def _header(path):
    """The file's header with its layer table as module -> tensor -> entry (shapes filled in from the spec)."""
    from compactcl.export.artifact import _expand_layers
    from compactcl.models.checkpoint import read_header

    header = read_header(path)
    return {**header, "layers": _expand_layers(header, str(path))}


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"{c.method}{c.bits}")
def test_roundtrip_exact_logits(tmp_path, cfg):
    net = quantize_(_net(), cfg)
    path = tmp_path / "m.ccl"
    n = save_artifact(net, path, meta={"note": "t"})
    assert n == os.stat(path).st_size == artifact_nbytes(net, {"note": "t"})
    loaded = load_artifact(path)
    x = torch.randn(16, 1, 8, 8)
    assert torch.equal(loaded(x), net(x))
    assert set(quantized_layers(loaded)) == set(quantized_layers(net))
    h = _header(path)
    assert h["format"] == FORMAT and h["spec"] == net.spec and h["meta"] == {"note": "t"}
    assert h["layers"]["head"]["weight"]["enc"] == cfg.method and h["layers"]["head"]["weight"]["bits"] == cfg.bits
    assert torch.equal(compactcl.load(path)(x), net(x))  # the top-level loader dispatches on the format
    # saving the reloaded model gives the same bytes
    assert save_artifact(loaded, tmp_path / "again.ccl", meta={"note": "t"}) == n
    assert (tmp_path / "again.ccl").read_bytes() == path.read_bytes()


def test_codes_take_their_bits(tmp_path):
    net = _net("mlp", {"hidden": [256]})  # 64*256 + 256*10 weights
    n_weights = sum(m.weight.numel() for m in (net.backbone.body[1], net.head))
    fp32 = save_artifact(net, tmp_path / "fp32.ccl")
    sizes = {}
    for b in (2, 4, 8):
        q = quantize_(_net("mlp", {"hidden": [256]}), KMeansQuantConfig(bits=b))
        sizes[b] = save_artifact(q, tmp_path / f"{b}.ccl")
        books = [wq.params["codebook"] for wq in quantized_layers(q).values()]
        # codebooks hold fp16 values, at most 2**bits and only the entries some weight uses
        assert all(torch.equal(c.half().float(), c) and c.numel() <= 2 ** b for c in books)
        # what the bit search counts for a layer's codebook bounds what the file holds
        from compactcl.compress.quantize import get_method

        assert all(2 * wq.params["codebook"].numel() <= get_method("kmeans").grid_nbytes(q.get_submodule(n).weight.numel(), b)
                   for n, wq in quantized_layers(q).items())
        assert sum(c.numel() for c in books) == sum(len(torch.unique(q.get_submodule(n).weight))
                                                    for n in quantized_layers(q))
        payload = n_weights * b / 8 + 2 * sum(c.numel() for c in books)  # codes + two fp16 codebooks
        assert payload <= sizes[b] <= payload + 800, (b, sizes[b])  # + fp16 biases (532 B) and the header
    assert fp32 >= 4 * n_weights
    assert sizes[4] < 0.15 * fp32
    # the breakdown: codes are exactly n_weights * 4 bits, and the three parts sum to the file
    net4 = quantize_(_net("mlp", {"hidden": [256]}), KMeansQuantConfig(bits=4))
    parts = artifact_breakdown(net4, {"note": "t"})
    assert parts["codes"] == n_weights * 4 // 8 and parts["tables"] >= 2 * 2 * 16
    assert sum(parts.values()) == artifact_nbytes(net4, {"note": "t"})
    # the header is DEFLATE'd and names no tensor: well under the /2 header's JSON (names and shapes in it)
    save_artifact(net4, tmp_path / "4.ccl", {"note": "t"})
    named = json.dumps(_header(tmp_path / "4.ccl"), separators=(",", ":"))
    assert 12 < parts["header"] < 0.5 * len(named)


def test_sparse_weights_stored_compactly(tmp_path):
    def pruned():
        net = _net("mlp", {"hidden": [256]})
        with torch.no_grad():
            for m in (net.backbone.body[1], net.head):
                thr = m.weight.abs().flatten().kthvalue(int(0.9 * m.weight.numel())).values
                m.weight[m.weight.abs() <= thr] = 0  # 90% zeros
        return net
    dense = _net("mlp", {"hidden": [256]})
    x = torch.randn(8, 1, 8, 8)
    for cfg in (None, LinearQuantConfig(bits=8), KMeansQuantConfig(bits=4), LogQuantConfig(bits=4)):
        a, b = pruned(), dense
        if cfg is not None:
            a, b = quantize_(a, cfg), quantize_(_net("mlp", {"hidden": [256]}), cfg)
        sa = save_artifact(a, tmp_path / "sparse.ccl")
        sb = save_artifact(b, tmp_path / "dense.ccl")
        assert sa < 0.45 * sb, (cfg, sa, sb)  # relative indices + 10% of the codes vs all codes
        loaded = load_artifact(tmp_path / "sparse.ccl")
        assert torch.equal(loaded(x), a(x))
        assert int((loaded.backbone.body[1].weight == 0).sum()) == int((a.backbone.body[1].weight == 0).sum())
        entry = _header(tmp_path / "sparse.ccl")["layers"]["backbone.body.1"]["weight"]
        assert entry.get("sparse") == 2 and entry["ib"] > 1  # relative indices, not a bitmask, at 10% density


def test_fp32_model_packs_exactly_and_half_option(tmp_path):
    net = _net()
    n = save_artifact(net, tmp_path / "f.ccl")
    x = torch.randn(4, 1, 8, 8)
    assert torch.equal(load_artifact(tmp_path / "f.ccl")(x), net(x))
    h = save_artifact(net, tmp_path / "h.ccl", half=True)
    assert h < 0.56 * n
    assert torch.allclose(load_artifact(tmp_path / "h.ccl")(x), net(x), atol=1e-2)


def test_structurally_pruned_layers_reload(tmp_path):
    small = _net("mlp", {"hidden": [24]})
    net = model_from_state(_net("mlp", {"hidden": [64]}).spec, small.state_dict())  # spec says 64, weights 24
    assert net.backbone.body[1].out_features == 24
    quantize_(net, LogQuantConfig(bits=4))
    save_artifact(net, tmp_path / "p.ccl")
    loaded = load_artifact(tmp_path / "p.ccl")
    x = torch.randn(4, 1, 8, 8)
    assert loaded.backbone.body[1].out_features == 24 and torch.equal(loaded(x), net(x))
    # the header keeps the shapes the spec does not give (the pruned layer and the next), nothing else
    from compactcl.models.checkpoint import read_header

    h = read_header(tmp_path / "p.ccl")
    assert "keys" not in h and [e["shape"] for e in h["layers"] if "shape" in e] == [[24, 64], [24], [10, 24]]


def test_the_header_names_no_tensor_the_spec_builds(tmp_path):
    """Names come from the spec's model (meta device), in its order, whatever order the model holds its
    tensors in (k-means QAT re-registers a weight after its bias)."""
    from compactcl.models.checkpoint import read_header

    net = quantize_(_net(), KMeansQuantConfig(bits=4))
    weight = net.head.weight
    del net.head.weight
    net.head.register_parameter("weight", weight)  # now after head.bias in the state dict
    assert list(net.state_dict())[-1] == "head.weight"
    save_artifact(net, tmp_path / "m.ccl")
    h = read_header(tmp_path / "m.ccl")
    assert "keys" not in h and not any("shape" in e for e in h["layers"])
    assert len(h["layers"]) == len(net.state_dict())
    x = torch.randn(4, 1, 8, 8)
    assert torch.equal(load_artifact(tmp_path / "m.ccl")(x), net(x))
    # (a user's module, not built on the meta device: tests/test_external_model.py)


def test_corruption_and_off_grid_weights_fail_loudly(tmp_path):
    net = quantize_(_net(), LinearQuantConfig(bits=4))
    path = tmp_path / "m.ccl"
    save_artifact(net, path)
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    (tmp_path / "bad.ccl").write_bytes(bytes(data))
    with pytest.raises(CompactCLError, match="checksum"):
        load_artifact(tmp_path / "bad.ccl")
    (tmp_path / "cut.ccl").write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(CompactCLError, match="checksum mismatch.*truncated"):
        load_artifact(tmp_path / "cut.ccl")
    with torch.no_grad():
        net.head.weight.add_(1e-3)
    with pytest.raises(CompactCLError, match="grid"):
        save_artifact(net, tmp_path / "off.ccl")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.ccl", "cut.ccl", "m.ccl"]  # no temp files left


def test_empty_head_packs(tmp_path):
    net = _net(classes=0)
    save_artifact(quantize_(net, LinearQuantConfig(bits=8)), tmp_path / "e.ccl")
    assert load_artifact(tmp_path / "e.ccl").num_classes == 0


def test_der_net_roundtrip(tmp_path):
    from compactcl.models import DERNet

    net = DERNet("mlp", 1, 8, backbone_kwargs={"hidden": [16]})
    net.grow(2)
    net.grow(2)
    net.end_task()
    net.eval()
    quantize_(net, KMeansQuantConfig(bits=3))
    save_artifact(net, tmp_path / "der.ccl")
    loaded = load_artifact(tmp_path / "der.ccl")
    x = torch.randn(4, 1, 8, 8)
    assert loaded.spec == net.spec and torch.equal(loaded(x), net(x))


def _rewrite_header(path, edit):
    """Same data, header changed by ``edit`` (valid JSON: the kind of damage a parser cannot see); a
    compact (/3) file keeps its old digest, a safetensors file its old sha256 unless ``edit`` sets one."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from compactcl.utils.frame import DIGEST_BYTES, MAGIC, pack_frame, read_frame

    raw = Path(path).read_bytes()
    if raw.startswith(MAGIC):
        header, data = read_frame(raw, str(path))
        edit(header)
        new = pack_frame(header, data)
        Path(path).write_bytes(raw[: len(MAGIC) + DIGEST_BYTES] + new[len(MAGIC) + DIGEST_BYTES:])
        return
    with safe_open(str(path), framework="pt") as f:
        header = json.loads(f.metadata()["compactcl"])
    edit(header)
    save_file(load_file(str(path)), str(path), metadata={"compactcl": json.dumps(header)})


def _first_small_int(header):
    """A small integer tensor stored in the header itself (batch norm's num_batches_tracked)."""
    return next(e for e in header["layers"] if isinstance(e, dict) and "int" in e)


def test_the_checksum_covers_the_header(tmp_path):
    from compactcl.models import load_checkpoint, save_checkpoint

    net = quantize_(_net(), KMeansQuantConfig(bits=4))
    art, ckpt = tmp_path / "m.ccl", tmp_path / "m.safetensors"
    save_artifact(net, art)
    save_checkpoint(_net(), ckpt, {"task": 1})
    # a value held in the header changed: the file still parses and decodes, into a different model
    _rewrite_header(art, lambda h: _first_small_int(h).update(int=[7]))
    with pytest.raises(CompactCLError, match="checksum mismatch"):
        load_artifact(art)
    _rewrite_header(ckpt, lambda h: h["meta"].update(task=2))
    with pytest.raises(CompactCLError, match="checksum mismatch"):
        load_checkpoint(ckpt)


V2 = Path(__file__).parent / "data" / "artifact_v2"


@pytest.mark.parametrize("name", ["kmeans", "linear"])
def test_format_2_files_still_load(name):
    """Files of format /2 (safetensors, names and shapes in the JSON header, fp32 codebooks and scales), as
    users hold them: written by compactcl before /3 (a width-4 CNN, 80% of one conv's weights pruned,
    k-means 3 bits with an 8-bit head / affine linear 4 bits) next to the same model as a checkpoint."""
    from compactcl.models import load_checkpoint
    from compactcl.models.checkpoint import read_header

    path = V2 / f"{name}.ccl"
    assert read_header(path)["format"] == "compactcl.artifact/2"
    reference = load_checkpoint(V2 / f"{name}.safetensors")
    loaded = compactcl.load(path)
    for key, t in reference.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], t), key
    assert set(quantized_layers(loaded)) == {f"backbone.body.{i}.0" for i in (0, 1, 3, 4)} | {"head"}
    assert read_header(path)["layers"]["backbone.body.1.0"]["weight"].get("sparse")  # the pruned layer
    x = torch.randn(8, 1, 8, 8)
    assert torch.equal(loaded(x), reference(x))
    assert read_header(path)["meta"]["class_names"] == ["a", "b", "c", "d"]


def test_format_1_files_still_load(tmp_path):
    # Format /1 (session 1) digested the tensors only; those files must keep loading.
    import shutil

    from safetensors.torch import load_file

    from compactcl.models import load_checkpoint
    from compactcl.models.checkpoint import tensor_digest

    path = tmp_path / "old.ccl"
    shutil.copy(V2 / "kmeans.ccl", path)

    def as_format_1(h):
        h["format"] = "compactcl.artifact/1"
        h["sha256"] = tensor_digest(load_file(str(path)))

    _rewrite_header(path, as_format_1)
    x = torch.randn(4, 1, 8, 8)
    assert torch.equal(compactcl.load(path)(x), load_checkpoint(V2 / "kmeans.safetensors")(x))


def test_meta_with_integer_keys_verifies_after_a_round_trip(tmp_path):
    # JSON turns int keys into strings, which sort differently ("10" < "2"): the digest is of what is read back
    from compactcl.models import load_checkpoint, save_checkpoint

    from compactcl.models.checkpoint import read_header

    meta = {"names": {i: f"class {i}" for i in range(12)}, "mixed": {True: 1, "b": 2}}
    as_json = {"names": {str(i): f"class {i}" for i in range(12)}, "mixed": {"true": 1, "b": 2}}
    x = torch.randn(3, 1, 8, 8)
    net = _net().eval()
    save_checkpoint(net, tmp_path / "m.safetensors", meta)
    assert torch.equal(load_checkpoint(tmp_path / "m.safetensors")(x), net(x))  # the digest verified
    assert read_header(tmp_path / "m.safetensors")["meta"] == as_json
    q = quantize_(_net(), KMeansQuantConfig(bits=4)).eval()
    save_artifact(q, tmp_path / "m.ccl", meta)
    assert torch.equal(load_artifact(tmp_path / "m.ccl")(x), q(x))
    assert read_header(tmp_path / "m.ccl")["meta"] == as_json


def test_a_format_2_checkpoint_without_its_digest_is_refused(tmp_path):
    from compactcl.models import load_checkpoint, save_checkpoint

    path = tmp_path / "m.safetensors"
    save_checkpoint(_net(), path)
    _rewrite_header(path, lambda h: h.pop("sha256"))
    with pytest.raises(CompactCLError, match="checksum"):
        load_checkpoint(path)


def test_kmeans_codebook_keeps_the_used_entries_and_the_reserved_zero(tmp_path):
    """A few pruned weights (rare zeros) reserve a code for exact 0; trimming unused centroids re-indexes it."""
    net = _net()
    with torch.no_grad():
        net.head.weight[0, :3] = 0  # 3 of 160 weights: a reserved zero code, not a sparse mask
    quantize_(net, KMeansQuantConfig(bits=8))
    wq = quantized_layers(net)["head"]
    book, zc = wq.params["codebook"], wq.options["zero_code"]
    assert zc is not None and book[zc] == 0 and book.numel() == len(torch.unique(net.head.weight)) <= 158
    save_artifact(net, tmp_path / "z.ccl")
    loaded = load_artifact(tmp_path / "z.ccl")
    assert torch.equal(loaded.head.weight, net.head.weight) and torch.equal(loaded.head.weight[0, :3], torch.zeros(3))
    assert quantized_layers(loaded)["head"].options["zero_code"] == zc


def test_a_crafted_layer_table_is_refused_before_any_model_is_built(tmp_path):
    """DEFLATE makes layer entries nearly free: 40,000 of them and an MLP spec of 20,000 hidden layers fit in
    ~1 KB; the table's length is checked before the spec's model is built (it once took GBs)."""
    from bounds import Clock

    from compactcl.errors import CompactCLError
    from compactcl.export.artifact import FORMAT, MAX_LAYER_ENTRIES, load_artifact
    from compactcl.utils.frame import pack_frame

    n = MAX_LAYER_ENTRIES
    spec = {"kind": "single", "backbone": "mlp", "backbone_kwargs": {"hidden": [1] * n}, "in_channels": 1,
            "input_size": 8, "num_classes": 2}
    path = tmp_path / "bomb.ccl"
    path.write_bytes(pack_frame({"format": FORMAT, "spec": spec, "meta": {}, "n": [0, 0, 0],
                                 "layers": [{}] * (2 * n + 4)}, b""))
    assert path.stat().st_size < 4096
    clock = Clock()
    with pytest.raises(CompactCLError, match="over the limit"):
        load_artifact(path)
    assert clock.within(2.0), clock
