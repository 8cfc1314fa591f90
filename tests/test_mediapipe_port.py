"""MediaPipe's .tflite networks run in PyTorch (fastmetro.mediapipe.graph) against LiteRT.

LiteRT (ai-edge-litert, its default XNNPACK kernels) is the reference: each network gets a batch
of real photos and synthetic images in one torch call, and LiteRT sees them one by one.

Tolerance: the brief's 1e-4, or three times LiteRT's own float32 noise where that is larger. The
outputs reach |x| ~ 2000 (segmentation logits; a float32 step there is 1.2e-4), and LiteRT's
XNNPACK and built-in kernels differ from each other by up to ~3 on them (the segmentation head's
large weights magnify the rounding of its ReLU6 features), while both are as far from a float64
run of the same graph as this port is. ``noise`` measures that disagreement on the same images.
"""

from __future__ import annotations

import flatbuffers
import numpy as np
import pytest
import skimage.data
import skimage.transform
import tflite
import torch
import torch.nn.functional as F
from ai_edge_litert.interpreter import Interpreter, OpResolverType

from fastmetro.errors import FastMetroError
from fastmetro.mediapipe import ops
from fastmetro.mediapipe.assets import asset_path
from fastmetro.mediapipe.graph import TFLiteNet

ATOL = 1e-4
# name -> how many of the test images it sees (the heavy network: two, to stay fast).
NETWORKS = {
    "pose_detection": 5,
    "pose_landmark_lite": 5,
    "pose_landmark_full": 5,
    "pose_landmark_heavy": 2,
    "palm_detection_lite": 5,
    "palm_detection_full": 5,
    "hand_landmark_lite": 5,
    "hand_landmark_full": 5,
}


@pytest.fixture(scope="module")
def nets():
    cache = {}

    def load(name: str) -> TFLiteNet:
        if name not in cache:
            cache[name] = TFLiteNet.from_file(asset_path(name))
        return cache[name]

    return load


def sample_images(size: tuple[int, int], count: int, signed: bool) -> np.ndarray:
    """(count, H, W, 3) float32: astronaut, noise, coffee, chelsea, a smooth gradient (in that
    order, so a short batch has a photo and noise), in [0, 1] or, ``signed``, [-1, 1]."""
    h, w = size
    photos = [
        skimage.transform.resize(f(), size, anti_aliasing=True)
        for f in (skimage.data.astronaut, skimage.data.coffee, skimage.data.chelsea)
    ]
    noise = np.random.default_rng(0).random((h, w, 3))
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    gradient = np.stack([y, x, 1 - (x + y) / 2], axis=-1)
    images = np.stack([photos[0], noise, photos[1], photos[2], gradient][:count]).astype(np.float32)
    return images * 2 - 1 if signed else images


def litert(path, images: np.ndarray, kernels=OpResolverType.AUTO) -> dict[str, np.ndarray]:
    """LiteRT's outputs {name: (N, ...)} for images (N, H, W, 3), run one image at a time."""
    interpreter = Interpreter(model_path=str(path), experimental_op_resolver_type=kernels)
    interpreter.allocate_tensors()
    (image_input,) = interpreter.get_input_details()
    results = []
    for image in images:
        interpreter.set_tensor(image_input["index"], image[None])
        interpreter.invoke()
        results.append({o["name"]: interpreter.get_tensor(o["index"]).copy() for o in interpreter.get_output_details()})
    return {name: np.concatenate([r[name] for r in results]) for name in results[0]}


def compare(net: TFLiteNet, path, images: np.ndarray, device: str = "cpu") -> dict[str, float]:
    """{output name: max |torch - LiteRT|}, asserting each is within tolerance (see module doc)."""
    with torch.no_grad():
        outputs = net(torch.from_numpy(images).to(device))
    reference = litert(path, images)
    builtin = litert(path, images, OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    errors = {}
    for name, output in zip(net.output_names, outputs):
        got, want = output.cpu().numpy(), reference[name]
        assert got.shape == want.shape, (name, got.shape, want.shape)
        errors[name] = float(np.abs(got - want).max())
        noise = float(np.abs(builtin[name] - want).max())
        assert errors[name] <= max(ATOL, 3 * noise), (name, errors[name], noise)
    return errors


@pytest.mark.parametrize("name", NETWORKS)
def test_matches_litert(nets, name):
    net = nets(name)
    images = sample_images(net.input_size, NETWORKS[name], signed=name == "pose_detection")
    compare(net, net.path, images)


def test_shapes_and_names(nets):
    net = nets("pose_landmark_lite")
    assert net.input_size == (256, 256)
    assert net.output_names == ("Identity", "Identity_1", "Identity_2", "Identity_3", "Identity_4")
    outputs = net(torch.zeros(3, 256, 256, 3))
    assert [tuple(o.shape) for o in outputs] == [(3, 195), (3, 1), (3, 256, 256, 1), (3, 64, 64, 39), (3, 117)]
    assert nets("pose_detection").input_size == (224, 224)
    assert nets("palm_detection_lite").input_size == (192, 192)


def test_features_are_nchw(nets):
    net = nets("pose_landmark_lite")
    shapes = net.feature_shapes()
    assert shapes["Identity_3"] == (1, 39, 64, 64)
    assert all(len(shape) == 4 and shape[0] == 1 for shape in shapes.values())
    names = [name for name, shape in shapes.items() if shape[2] == 8][-1:] + ["Identity_3"]
    images = torch.from_numpy(sample_images(net.input_size, 2, signed=False))
    with torch.no_grad():
        plain = net(images)
        outputs, features = net(images, features=names)
    for a, b in zip(plain, outputs):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for name in names:
        assert tuple(features[name].shape) == (2,) + shapes[name][1:]
    # The heat maps as a feature: the NHWC output's NCHW view.
    torch.testing.assert_close(features["Identity_3"], outputs[3].permute(0, 3, 1, 2))
    with pytest.raises(FastMetroError, match="no activation tensor named 'nope'"):
        net(images, features=["nope"])
    with pytest.raises(FastMetroError, match=r"expected images of shape \(B, 256, 256, 3\)"):
        net(images.permute(0, 3, 1, 2))


def test_skipped_outputs_are_not_computed(nets, monkeypatch):
    """skip=: the other outputs as before, exactly; the ops only the skipped ones need do not run."""
    net = nets("pose_landmark_lite")
    images = torch.from_numpy(sample_images(net.input_size, 2, signed=False))
    calls = []
    for layer in net.layers:
        monkeypatch.setattr(layer, "forward", lambda *xs, _f=layer.forward: calls.append(1) or _f(*xs))
    with torch.no_grad():
        full = net(images)
        every = len(calls)
        calls.clear()
        some = net(images, skip=(2, 3))  # the segmentation mask and the heat maps
    folded = sum(isinstance(layer, ops.Pad) for layer in net.layers)  # absorbed by their convs
    assert some[2] is None and some[3] is None and every == len(net.layers) - folded
    for position in (0, 1, 4):
        torch.testing.assert_close(some[position], full[position], rtol=0, atol=0)
    assert len(calls) < 0.9 * every, (len(calls), every)


@pytest.mark.parametrize("name", ["pose_detection", "pose_landmark_full"])
def test_spatial_pads_fold_into_convs(nets, name, monkeypatch):
    """Every PAD of these networks pads H and W with zeros before VALID convs: the convs pad
    themselves and no PAD runs (test_matches_litert checks the numbers), unless its tensor is
    asked for as a feature, which is then the padded map."""
    net = nets(name)
    pads = [(step, layer) for step, layer in enumerate(net.layers) if isinstance(layer, ops.Pad)]
    assert pads
    runs = []
    for _, layer in pads:
        monkeypatch.setattr(layer, "forward", lambda x, _f=layer.forward: runs.append(1) or _f(x))
    images = torch.from_numpy(sample_images(net.input_size, 1, signed=name == "pose_detection"))
    with torch.no_grad():
        net(images)
        assert not runs
        step, layer = pads[0]
        name_of = {index: name for name, index in net._names.items()}
        source, padded = name_of[net._wiring[step][0][0]], name_of[net._wiring[step][1]]
        _, maps = net(images, features=[source, padded])
    assert len(runs) == 1
    left, right, top, bottom = layer.spatial
    assert left + right + top + bottom > 0
    torch.testing.assert_close(maps[padded], F.pad(maps[source], layer.pad), rtol=0, atol=0)


def test_trainable():
    """Weights are parameters: state_dict round trip and gradients through the whole graph."""
    net = TFLiteNet.from_file(asset_path("hand_landmark_lite")).train()
    state = net.state_dict()
    assert state and all(v.dtype == torch.float32 for v in state.values())
    assert sum(p.numel() for p in net.parameters()) > 100_000
    images = torch.from_numpy(sample_images(net.input_size, 2, signed=False))
    landmarks = net(images)[0]
    landmarks.square().mean().backward()
    first = net.layers[0].conv.weight
    assert first.grad is not None and torch.isfinite(first.grad).all()
    assert first.grad.abs().sum() > 0
    copy = TFLiteNet.from_file(asset_path("hand_landmark_lite"))
    copy.load_state_dict(state)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_litert(monkeypatch):
    # TF32 convolutions (cuDNN's default on Ampere and later) round inputs to 10 mantissa bits.
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    for name in ("pose_detection", "pose_landmark_full", "hand_landmark_full"):
        net = TFLiteNet.from_file(asset_path(name)).to("cuda")
        images = sample_images(net.input_size, 3, signed=name == "pose_detection")
        compare(net, net.path, images, device="cuda")


def tiny_tflite(op: int, subgraphs: int = 1) -> bytes:
    """A minimal .tflite file: ``subgraphs`` copies of (1, 4, 4, 3) -> one builtin ``op`` -> out."""
    b = flatbuffers.Builder(1024)

    def vector(start, items, prepend):
        start(b, len(items))
        for item in reversed(items):
            prepend(item)
        return b.EndVector()

    def tensor(name):
        name, shape = b.CreateString(name), vector(tflite.TensorStartShapeVector, [1, 4, 4, 3], b.PrependInt32)
        tflite.TensorStart(b)
        tflite.TensorAddShape(b, shape)
        tflite.TensorAddName(b, name)
        tflite.TensorAddBuffer(b, 0)
        return tflite.TensorEnd(b)

    graphs = []
    for _ in range(subgraphs):
        tensors = vector(tflite.SubGraphStartTensorsVector, [tensor("in"), tensor("out")], b.PrependUOffsetTRelative)
        ins = vector(tflite.OperatorStartInputsVector, [0], b.PrependInt32)
        outs = vector(tflite.OperatorStartOutputsVector, [1], b.PrependInt32)
        tflite.OperatorStart(b)
        tflite.OperatorAddInputs(b, ins)
        tflite.OperatorAddOutputs(b, outs)
        operators = vector(tflite.SubGraphStartOperatorsVector, [tflite.OperatorEnd(b)], b.PrependUOffsetTRelative)
        graph_in = vector(tflite.SubGraphStartInputsVector, [0], b.PrependInt32)
        graph_out = vector(tflite.SubGraphStartOutputsVector, [1], b.PrependInt32)
        tflite.SubGraphStart(b)
        tflite.SubGraphAddTensors(b, tensors)
        tflite.SubGraphAddOperators(b, operators)
        tflite.SubGraphAddInputs(b, graph_in)
        tflite.SubGraphAddOutputs(b, graph_out)
        graphs.append(tflite.SubGraphEnd(b))
    tflite.OperatorCodeStart(b)
    tflite.OperatorCodeAddBuiltinCode(b, op)
    tflite.OperatorCodeAddDeprecatedBuiltinCode(b, min(op, 127))
    tflite.OperatorCodeAddVersion(b, 1)
    codes = vector(tflite.ModelStartOperatorCodesVector, [tflite.OperatorCodeEnd(b)], b.PrependUOffsetTRelative)
    subgraph_vector = vector(tflite.ModelStartSubgraphsVector, graphs, b.PrependUOffsetTRelative)
    tflite.BufferStart(b)
    buffers = vector(tflite.ModelStartBuffersVector, [tflite.BufferEnd(b)], b.PrependUOffsetTRelative)
    tflite.ModelStart(b)
    tflite.ModelAddVersion(b, 3)
    tflite.ModelAddOperatorCodes(b, codes)
    tflite.ModelAddSubgraphs(b, subgraph_vector)
    tflite.ModelAddBuffers(b, buffers)
    b.Finish(tflite.ModelEnd(b), file_identifier=b"TFL3")
    return bytes(b.Output())


def test_tiny_graph_matches_litert(tmp_path):
    path = tmp_path / "logistic.tflite"
    path.write_bytes(tiny_tflite(tflite.BuiltinOperator.LOGISTIC))
    net = TFLiteNet.from_file(path)
    assert net.input_size == (4, 4) and net.output_names == ("out",)
    images = np.random.default_rng(1).normal(size=(3, 4, 4, 3)).astype(np.float32) * 4
    errors = compare(net, path, images)
    assert errors["out"] <= 1e-6


@pytest.mark.parametrize(
    "content, problem",
    [
        (b"", "not a TFLite flatbuffer"),
        (b"this is not a model at all", "not a TFLite flatbuffer"),
        ("truncated", "truncated or corrupt TFLite file"),
        ("softmax", "uses the TFLite op SOFTMAX, which fastmetro does not support"),
        ("two subgraphs", "2 subgraphs; only single-subgraph networks are supported"),
    ],
)
def test_bad_files_one_line_errors(tmp_path, content, problem):
    if content == "truncated":
        content = asset_path("hand_landmark_lite").read_bytes()[:5000]
    elif content == "softmax":
        content = tiny_tflite(tflite.BuiltinOperator.SOFTMAX)
    elif content == "two subgraphs":
        content = tiny_tflite(tflite.BuiltinOperator.LOGISTIC, subgraphs=2)
    path = tmp_path / "bad.tflite"
    path.write_bytes(content)
    with pytest.raises(FastMetroError) as error:
        TFLiteNet.from_file(path)
    message = str(error.value)
    assert "\n" not in message and str(path) in message and problem in message


def test_missing_file_one_line_error(tmp_path):
    with pytest.raises(FastMetroError, match="cannot read the TFLite file"):
        TFLiteNet.from_file(tmp_path / "absent.tflite")
