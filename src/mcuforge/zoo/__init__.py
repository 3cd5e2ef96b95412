"""The model zoo: name -> architecture, default data set, task, input shape.

    from mcuforge import zoo
    spec = zoo.get("sinc_kws")
    summary = zoo.train("sinc_kws", preset="small", out="out/sinc_kws")   # or `mcuforge train`
    int8 = zoo.deploy_and_evaluate("out/sinc_kws")                          # quantize, C, int8 metrics

Each entry trains with ``mcuforge train MODEL [--data NAME]`` and writes a directory
ready for ``mcuforge deploy DIR/model.pt2 --calib DIR/calib.npy``.

| model          | task           | default data       | input (per sample)  |
|----------------|----------------|--------------------|---------------------|
| sinc_kws       | classification | keywords           | 1 x 16000 raw audio |
| ds_cnn         | classification | keywords (MFCC)    | 1 x 49 x 10         |
| resnet8        | classification | shapes             | 3 x 32 x 32         |
| fc_autoencoder | autoencoder    | machine_sound      | 640                 |
| ecg_cnn        | classification | ecg                | 1 x 256             |
| motor_tcn      | regression     | motor_temperature  | 8 x 64              |
| digits_cnn     | classification | digits             | 1 x 8 x 8           |
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..errors import DatasetError, McuforgeError

TASKS = ("classification", "regression", "autoencoder")


class ZooError(McuforgeError):
    """An unknown model, or a model and data set that do not go together."""


@dataclass
class ModelSpec:
    name: str
    description: str
    task: str
    data: str                      # default data set
    input_shape: tuple[int, ...]   # per sample, on the default data set
    build: Callable                # build(input_shape, n_out) -> nn.Module
    features: str = "raw"          # raw | mfcc | audio1d: how data-set inputs become model inputs
    data_kinds: tuple[str, ...] = ()  # data sets it accepts (besides the default)
    lr: float = 3e-3
    batch: int = 64
    epochs: dict = field(default_factory=lambda: {"tiny": 1, "small": 15, "full": 40})
    weight_decay: float = 0.0


def _n_out(ds, task: str) -> int:
    if task == "classification":
        return len(ds.meta.get("classes") or np.unique(ds.y))
    if task == "regression":
        return int(ds.y.shape[1]) if ds.y.ndim > 1 else 1
    return int(np.prod(ds.x.shape[1:]))


def _build_sinc(shape, n_out):
    from .models import SincKWS

    return SincKWS(n_classes=n_out)


def _build_dscnn(shape, n_out):
    from .models import DSCNN

    return DSCNN(n_classes=n_out, in_shape=tuple(shape))


def _build_resnet8(shape, n_out):
    from .models import ResNet8

    return ResNet8(n_classes=n_out, in_channels=shape[0])


def _build_ae(shape, n_out):
    from .models import FCAutoencoder

    return FCAutoencoder(dim=int(np.prod(shape)))


def _build_ecg(shape, n_out):
    from .models import ECGCNN

    return ECGCNN(n_classes=n_out, in_channels=shape[0])


def _build_motor(shape, n_out):
    from .models import MotorTCN

    return MotorTCN(n_out=n_out, in_channels=shape[0], window=shape[1])


def _build_digits(shape, n_out):
    from ..demo import digits_cnn

    return digits_cnn()


MODELS: dict[str, ModelSpec] = {s.name: s for s in [
    ModelSpec("sinc_kws", "SincConv KWS on raw 16 kHz audio: 40 learnable band-pass filters, log compression, "
              "five grouped DS-conv blocks of 162 channels (~62k parameters)", "classification", "keywords",
              (1, 16000), _build_sinc, features="audio1d", data_kinds=("keywords", "speech_commands"), lr=5e-3,
              batch=32, epochs={"tiny": 1, "small": 12, "full": 30}),
    ModelSpec("ds_cnn", "DS-CNN (MLPerf Tiny KWS) on 49x10 MFCCs", "classification", "keywords", (1, 49, 10),
              _build_dscnn, features="mfcc", data_kinds=("keywords", "speech_commands"), lr=3e-3,
              epochs={"tiny": 1, "small": 30, "full": 40}),
    ModelSpec("resnet8", "ResNet-8 (MLPerf Tiny image classification), 32x32 images", "classification", "shapes",
              (3, 32, 32), _build_resnet8, data_kinds=("shapes", "cifar10", "mnist", "digits"),
              epochs={"tiny": 1, "small": 10, "full": 40}),
    ModelSpec("fc_autoencoder", "FC autoencoder (MLPerf Tiny anomaly detection), 640-128x4-8-128x4-640",
              "autoencoder", "machine_sound", (640,), _build_ae, data_kinds=("machine_sound",), lr=1e-3,
              batch=128, epochs={"tiny": 1, "small": 30, "full": 60}),
    ModelSpec("ecg_cnn", "1-D CNN for ECG rhythm windows", "classification", "ecg", (1, 256), _build_ecg,
              data_kinds=("ecg", "mitbih"), epochs={"tiny": 1, "small": 30, "full": 40}),
    ModelSpec("motor_tcn", "temporal-conv regressor: motor signals -> winding and magnet temperature",
              "regression", "motor_temperature", (8, 64), _build_motor, data_kinds=("motor_temperature", "motor_csv"),
              lr=2e-3, epochs={"tiny": 1, "small": 30, "full": 60}),
    ModelSpec("digits_cnn", "the demo's small CNN on sklearn digits", "classification", "digits", (1, 8, 8),
              _build_digits, data_kinds=("digits",), epochs={"tiny": 1, "small": 20, "full": 40}),
]}


def names() -> list[str]:
    return list(MODELS)


def get(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise ZooError(f"unknown model '{name}' (zoo: {', '.join(MODELS)})") from None


def model_inputs(spec: ModelSpec, x: np.ndarray) -> np.ndarray:
    """Data-set inputs -> the model's inputs (features computed on the host)."""
    if spec.features == "audio1d":
        return np.ascontiguousarray(x.reshape(len(x), 1, -1), np.float32)
    if spec.features == "mfcc":
        from ..data.audio import mfcc

        if x.ndim != 2:
            raise ZooError(f"model '{spec.name}' computes MFCCs from 1-D audio clips (N, samples); "
                           f"got inputs of shape {x.shape}")
        return mfcc(x)[:, None].astype(np.float32)
    return np.ascontiguousarray(x, np.float32)


def check_data(spec: ModelSpec, data: str) -> None:
    from .. import data as datasets

    if data not in datasets.names():
        raise DatasetError(f"unknown data set '{data}' (available: {', '.join(datasets.names())})")
    if data != spec.data and data not in spec.data_kinds:
        raise ZooError(f"model '{spec.name}' does not train on '{data}' "
                       f"(it takes: {', '.join(dict.fromkeys((spec.data,) + spec.data_kinds))})")


from .trainer import deploy_and_evaluate, fit, train  # noqa: E402

__all__ = ["MODELS", "ModelSpec", "ZooError", "get", "names", "train", "fit", "deploy_and_evaluate",
           "model_inputs"]
