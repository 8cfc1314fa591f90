"""The fitter's start: a small network from a predicted Anny mesh to Anny's parameters.

Rotation-free input: a predicted mesh (B, V0, 3) is first put in a canonical frame by a rigid
registration (Kabsch) of the rest body's torso onto its torso (:func:`canonical_frame`); the
network sees the topology's coarsest level (431 vertices) in that frame and predicts the
phenotypes, a residual global rotation and the :data:`~fastmetro.rig.anny_body.FIT_BONES`
rotations (6D, Gram-Schmidt). It is trained on bodies drawn from the synthetic generator's pose
sampler and uniform phenotypes, where the parameters are known (:func:`sample_bodies`,
``benchmarks/rig.py --train``), and shipped as ``weights/anny_fit_init.safetensors``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import roma
import torch
from torch import nn

from fastmetro.data.synthetic.poses import PoseSampler, Skeleton
from fastmetro.errors import FastMetroError
from fastmetro.rig.anny_body import FIT_BONES, AnnyPoser

NUM_PHENOTYPES = 11
INPUT_LEVEL = 2  # the topology's coarsest level: 431 vertices
TORSO_PREFIXES = ("spine", "clavicle", "shoulder", "breast", "pelvis", "root")


class CanonicalFrame:
    """Rigid registration of the rest body's torso (mean phenotype) onto a mesh's torso."""

    def __init__(self, poser: AnnyPoser):
        model = poser.model
        with torch.no_grad():
            phenotypes = torch.full((1, NUM_PHENOTYPES), 0.5, device=poser.device)
            rest = poser.rest(phenotypes)["rest_vertices"][0, poser.label_indices]
        weights = model.vertex_bone_weights[poser.label_indices]
        dominant = model.vertex_bone_indices[poser.label_indices].gather(1, weights.argmax(1, keepdim=True))[:, 0]
        labels = poser.bone_labels
        torso = torch.as_tensor([labels[int(b)].startswith(TORSO_PREFIXES) for b in dominant], device=poser.device)
        self.torso = torch.nonzero(torso)[:, 0]
        self.reference = rest - rest[self.torso].mean(0)  # (V0, 3) Anny frame, torso-centred

    def __call__(self, vertices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, V0, 3) -> (rotation (B, 3, 3), translation (B, 3)) with torso ~ R @ reference + t."""
        source = self.reference[self.torso].expand(len(vertices), -1, -1)
        rotation, translation = roma.rigid_points_registration(source, vertices[:, self.torso])
        return rotation, translation


class AnnyInit(nn.Module):
    """MLP: canonical coarse vertices (B, 431 * 3) -> phenotypes, global residual, bone rotations."""

    def __init__(self, num_inputs: int, hidden: int = 512, num_bones: int = len(FIT_BONES)):
        super().__init__()
        self.num_bones = num_bones
        outputs = NUM_PHENOTYPES + 6 * (num_bones + 1)
        last = nn.Linear(hidden, outputs)
        self.net = nn.Sequential(nn.Linear(num_inputs, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(), last)
        nn.init.zeros_(last.weight)  # start at the mean phenotype and the rest pose
        with torch.no_grad():
            bias = last.bias
            bias.zero_()
            identity_6d = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0, 0.0])  # two columns of I
            bias[NUM_PHENOTYPES:] = identity_6d.repeat(num_bones + 1)

    def forward(self, canonical: torch.Tensor) -> dict[str, torch.Tensor]:
        """canonical (B, 431, 3) metres -> phenotypes (B, 11) in (0, 1), residual (B, 3, 3), rotations (B, N, 3, 3)."""
        out = self.net(canonical.flatten(1))
        phenotypes = torch.sigmoid(out[:, :NUM_PHENOTYPES] * 4.0)  # x4: a 0..1 range from small outputs
        six = out[:, NUM_PHENOTYPES:].reshape(len(out), self.num_bones + 1, 3, 2)
        rotations = roma.special_gramschmidt(six)
        return {"phenotypes": phenotypes, "residual": rotations[:, 0], "rotations": rotations[:, 1:]}


@dataclass
class InitialGuess:
    """Start of a fit (torch, camera frame): phenotypes (B, 11), rotations (B, N, 3, 3), global_rotation (B, 3, 3)."""

    phenotypes: torch.Tensor
    rotations: torch.Tensor
    global_rotation: torch.Tensor


def initial_guess(
    network: AnnyInit | None, frame: CanonicalFrame, input_indices, targets: torch.Tensor
) -> InitialGuess:
    """The network's guess for targets (B, V0, 3); the mean body at rest when ``network`` is None."""
    rotation, translation = frame(targets)
    batch = len(targets)
    if network is None:
        eye = torch.eye(3, device=targets.device)
        return InitialGuess(
            torch.full((batch, NUM_PHENOTYPES), 0.5, device=targets.device),
            eye.repeat(batch, len(FIT_BONES), 1, 1),
            rotation,
        )
    canonical = (targets[:, input_indices] - translation[:, None]) @ rotation  # R^T (x - t), row vectors
    with torch.no_grad():
        out = network(canonical)
    return InitialGuess(out["phenotypes"], out["rotations"], rotation @ out["residual"])


def sample_bodies(poser: AnnyPoser, count: int, seed: int, batch: int = 64) -> dict[str, torch.Tensor]:
    """``count`` random bodies: phenotypes, FIT_BONES rotations, a random global rotation, label vertices.

    Poses come from the synthetic generator's :class:`PoseSampler` (its root lean folded into the
    global rotation, which is uniform over all rotations); phenotypes are uniform in [0, 1].
    """
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        rest = poser.rest(torch.full((1, NUM_PHENOTYPES), 0.5, device=poser.device))
    skeleton = Skeleton.from_parents(
        poser.bone_labels, rest["rest_bone_heads"][0].cpu().numpy(), list(poser.model.bone_parents)
    )
    sampler = PoseSampler(skeleton)
    root = poser.bone_labels.index("root")
    fit = poser.fit_indices.cpu().numpy()
    chunks: dict[str, list[torch.Tensor]] = {"phenotypes": [], "rotations": [], "global_rotation": [], "vertices": []}
    for start in range(0, count, batch):
        size = min(batch, count - start)
        poses = np.stack([sampler.sample(rng) for _ in range(size)])[:, :, :3, :3]
        lean = torch.as_tensor(poses[:, root], dtype=torch.float32)
        global_rotation = roma.random_rotmat(size, device=poser.device) @ lean.to(poser.device)
        phenotypes = torch.as_tensor(
            rng.uniform(0, 1, (size, NUM_PHENOTYPES)), dtype=torch.float32, device=poser.device
        )
        rotations = torch.as_tensor(poses[:, fit], dtype=torch.float32, device=poser.device)
        with torch.no_grad():
            posed = poser(phenotypes, rotations, global_rotation, torch.zeros(size, 3, device=poser.device))
        for key, value in zip(chunks, (phenotypes, rotations, global_rotation, posed.label_vertices)):
            chunks[key].append(value)
    return {key: torch.cat(values) for key, values in chunks.items()}


def load_init(path, num_inputs: int) -> AnnyInit:
    """The shipped (or a given) initialiser's weights (safetensors)."""
    from safetensors.torch import load_file

    try:
        state = load_file(str(path))
    except (OSError, ValueError) as error:
        raise FastMetroError(f"{path}: cannot read the Anny fit initialiser ({error})") from None
    hidden = state["net.0.weight"].shape[0]
    network = AnnyInit(num_inputs, hidden)
    try:
        network.load_state_dict({key: value.float() for key, value in state.items()})
    except RuntimeError as error:
        raise FastMetroError(f"{path}: not an Anny fit initialiser for this topology ({error})") from None
    return network.eval()


def train_init(
    poser: AnnyPoser,
    input_indices: torch.Tensor,
    bodies: dict[str, torch.Tensor],
    epochs: int = 40,
    batch: int = 256,
    noise_m: float = 0.02,
    seed: int = 0,
    log=print,
) -> AnnyInit:
    """Train an :class:`AnnyInit` on :func:`sample_bodies` output (parameter losses, noisy inputs).

    Inputs get Gaussian vertex noise of a per-sample sigma uniform in [0, ``noise_m``] metres
    (predicted meshes are not exact bodies). Loss: squared Frobenius error of every rotation
    (bones and the global residual) plus the phenotypes' squared error.
    """
    generator = torch.Generator().manual_seed(seed)
    frame = CanonicalFrame(poser)
    vertices = bodies["vertices"]
    network = AnnyInit(3 * len(input_indices)).to(vertices.device)
    optimiser = torch.optim.AdamW(network.parameters(), lr=1e-3, weight_decay=1e-4)
    steps_per_epoch = max(len(vertices) // batch, 1)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, 1e-3, total_steps=epochs * steps_per_epoch)
    for epoch in range(epochs):
        order = torch.randperm(len(vertices), generator=generator)
        total = 0.0
        for step in range(steps_per_epoch):
            rows = order[step * batch : (step + 1) * batch]
            sigma = torch.rand(len(rows), 1, 1, generator=generator) * noise_m
            noisy = vertices[rows] + sigma * torch.randn(vertices[rows].shape, generator=generator)
            with torch.no_grad():
                rotation, translation = frame(noisy)
                canonical = (noisy[:, input_indices] - translation[:, None]) @ rotation
                residual_target = rotation.transpose(1, 2) @ bodies["global_rotation"][rows]
            out = network(canonical)
            loss = (
                (out["rotations"] - bodies["rotations"][rows]).square().sum((-1, -2)).mean()
                + (out["residual"] - residual_target).square().sum((-1, -2)).mean()
                + (out["phenotypes"] - bodies["phenotypes"][rows]).square().sum(-1).mean()
            )
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            total += float(loss)
        if epoch % 5 == 4 or epoch == epochs - 1:
            log(f"epoch {epoch + 1}/{epochs}: loss {total / steps_per_epoch:.4f}")
    return network.eval()
