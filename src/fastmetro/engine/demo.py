"""``fastmetro demo``: the whole pipeline on the free default (Anny), on CPU.

Until every stage exists it degrades to what does: build the demo model and run a forward pass.
"""

from __future__ import annotations

import time

import torch


def _demo_topology():
    """The Anny topology, or (while it is not available) a data-free body-sized stand-in."""
    from fastmetro import topology as topology_module

    try:
        return topology_module.load("anny"), True
    except Exception as error:  # noqa: BLE001 - the demo reports and degrades
        from fastmetro.model.presets import sized_topology

        print(f"[demo] Anny topology not available ({error}); using SMPL-sized stand-in meshes")
        return sized_topology("body"), False


def forward_pass(model_name: str = "FastMETRO-S-R18", image_size: int = 128) -> dict:
    """Build ``model_name`` and run one forward pass on random images; print output shapes."""
    import fastmetro

    topology, _ = _demo_topology()
    torch.manual_seed(0)
    model = fastmetro.create_model(model_name, topology=topology).eval()
    images = torch.randn(2, 3, image_size, image_size)
    start = time.perf_counter()
    with torch.no_grad():
        outputs = model(images)
    print(f"[demo] {model_name} on {topology.name}: forward of {tuple(images.shape)} "
          f"in {time.perf_counter() - start:.2f} s")
    for key, value in outputs.items():
        if isinstance(value, torch.Tensor):
            print(f"  {key:24s} {tuple(value.shape)}")
        elif isinstance(value, tuple):
            print(f"  {key:24s} {[tuple(v.shape) for v in value]}")
    return outputs


def run_demo(args) -> int:
    forward_pass()
    return 0
