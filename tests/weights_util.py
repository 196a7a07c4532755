"""Helpers shared by the weight-conversion and pretrained-loading tests."""

import torch


def randomize(model: torch.nn.Module) -> torch.nn.Module:
    """Move every weight away from its init (LN=1/0, zero-init BN, tiny cls token) so a
    swapped or dropped tensor shows up in the outputs."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.normal_(0, 0.1)
            elif name.endswith("running_var"):
                b.uniform_(0.5, 1.5)
    return model.eval()
