"""Small in-memory stand-ins for the trainer tests: a learnable dataset and a tiny model config."""

from __future__ import annotations

import math

import numpy as np
import torch

from fastmetro.engine.config import ExperimentConfig, load_config

# A FastMETRO-S with a ResNet-18 and narrow transformers: seconds per step on a CPU core.
TINY_MODEL_OVERRIDES = {
    "model_dims": [64, 32],
    "feedforward_dims": [128, 64],
    "num_heads": 4,
    "dropout": 0.0,
}


class TemplateDataset(torch.utils.data.Dataset):
    """Posed copies of the topology's template whose pose is written into the image.

    Sample i: the template rotated about the vertical axis by angle a_i and scaled by s_i; the
    image holds smooth patterns whose amplitude encodes (a_i, s_i), so a network can learn the
    mapping. All ground truth is available (has_* = 1) unless ``has`` says otherwise.
    """

    def __init__(self, topology, size: int = 8, image_size: int = 64, seed: int = 0, has=(1.0, 1.0, 1.0)):
        rng = np.random.default_rng(seed)
        self.topology = topology
        self.image_size = image_size
        self.angles = rng.uniform(-math.pi / 2, math.pi / 2, size)
        self.scales = rng.uniform(0.8, 1.2, size)
        self.has = has
        self.template = np.asarray(topology.template, dtype=np.float64)
        self.regressor = np.asarray(topology.joint_regressor, dtype=np.float64)
        self.root_regressor = np.asarray(topology.root_regressor, dtype=np.float64)

    def __len__(self):
        return len(self.angles)

    def __getitem__(self, index):
        angle, scale = self.angles[index], self.scales[index]
        c, s = math.cos(angle), math.sin(angle)
        rotation = np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
        vertices = scale * self.template @ rotation.T
        vertices = vertices - self.root_regressor @ vertices
        joints = self.regressor @ vertices
        joints = joints - joints[list(self.topology.root_joints)].mean(axis=0)
        joints_2d = np.concatenate([joints[:, :2], np.ones((len(joints), 1))], axis=1)
        grid = np.linspace(-1, 1, self.image_size)
        yy, xx = np.meshgrid(grid, grid, indexing="ij")
        image = np.stack([np.sin(3 * xx) * angle, np.cos(2 * yy) * (scale - 1) * 5, xx * yy * angle * scale])
        has_2d, has_3d, has_vertices = self.has
        return {
            "image": torch.tensor(image, dtype=torch.float32),
            "joints_2d": torch.tensor(joints_2d, dtype=torch.float32),
            "joints_3d": torch.tensor(np.concatenate([joints, np.ones((len(joints), 1))], axis=1), dtype=torch.float32),
            "vertices": torch.tensor(vertices, dtype=torch.float32),
            "has_joints_2d": torch.tensor(has_2d),
            "has_joints_3d": torch.tensor(has_3d),
            "has_vertices": torch.tensor(has_vertices),
            "key": f"sample{index}",
        }


def tiny_config(output_dir, steps=4, batch_size=2, extra=()) -> ExperimentConfig:
    overrides = [
        "model.name=FastMETRO-S-R18",
        f"model.overrides={TINY_MODEL_OVERRIDES}",
        f"train.output_dir={output_dir}",
        f"train.steps={steps}",
        f"data.batch_size={batch_size}",
        "data.val_batch_size=4",
        "data.num_workers=0",
        "data.image_size=64",
        "train.progress=false",
        "train.tensorboard=false",
        "train.seed=3",
        *extra,
    ]
    return load_config(None, overrides)


def build_tiny_model(config: ExperimentConfig, topology):
    from fastmetro.engine.train import model_for_training

    return model_for_training(config, topology)


def state_vector(model) -> torch.Tensor:
    return torch.cat(
        [value.detach().flatten().double() for value in model.state_dict().values() if value.is_floating_point()]
    )
