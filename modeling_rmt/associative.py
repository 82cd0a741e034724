"""Associative memory (ARMT) for the memory wrappers; docs/design.md (associative memory) gives the equations.

Rodkin, Kuratov, Bulatov, Burtsev, "Associative Recurrent Memory Transformer" (2024), section 2, eqs. 1-4. Every
layer l of the backbone keeps a key-value memory A_l (H x F) and a normaliser z_l (F), F = 6 * d_mem, both zero
before the first segment. The layer's outputs m_i at the memory positions of a segment write into it by the delta
rule; every token of the next segments reads y = A phi(W_Q x) / (z^T phi(W_Q x) + eps) and enters the layer as
x + y. The state of a sample is A and z of every layer: its size does not depend on the length of the input.

The memory is attached to the backbone's layers with forward hooks, so the backbone's own weights and their
names are untouched. The hooks act only inside `AssociativeMemory.segment(...)`; the state is passed in and
returned, never kept between segments, which is what truncated BPTT and segment checkpointing need.
"""
import contextlib
import functools

import torch
import torch.nn.functional as F
from torch import nn

DPFP_NU = 3  # DPFP-3: 2 * 3 = 6 features per key dimension
EPS = 1e-5


def associative_parameters(model):
    """The parameters of every associative memory inside `model` (its projections, which start from scratch)."""
    return [p for module in model.modules() if isinstance(module, AssociativeMemory) for p in module.parameters()]


def dpfp(x, nu=DPFP_NU):
    """Deterministic parameter-free projection (Schlag et al. 2021): (..., d) -> (..., 2 * nu * d), all >= 0."""
    x = torch.cat([F.relu(x), F.relu(-x)], dim=-1)  # (..., 2d)
    rolled = torch.cat([x.roll(shifts=shift, dims=-1) for shift in range(1, nu + 1)], dim=-1)
    return torch.cat([x] * nu, dim=-1) * rolled


def read_memory(A, z, features):
    """A phi / (z^T phi + eps): (B, H, F), (B, F), (B, T, F) -> (B, T, H); zero while the memory is empty."""
    numerator = torch.einsum("bhf,btf->bth", A, features)
    denominator = torch.einsum("bf,btf->bt", z, features)[..., None] + EPS
    return numerator / denominator


def write_memory(A, z, keys, values, beta):
    """One delta-rule write of m associations (eqs. 3-4).

    Args:
        A: (B, H, F) memory; z: (B, F) normaliser.
        keys: (B, m, F) key features phi(k_i); values: (B, m, H) v_i; beta: (B, m) write strengths in (0, 1).

    Returns:
        (A', z'): A + sum_i beta_i (v_i - vbar_i) phi(k_i)^T, with vbar_i what A held under k_i (0 while empty),
        and z + sum_i gamma_i phi(k_i), with gamma_i = 1 - z^T phi(k_i) / ||phi(k_i)||^2 in [0, 1], the share of
        the key not yet in z, carrying no gradient.
    """
    previous = read_memory(A, z, keys)  # (B, m, H)
    A = A + torch.einsum("bm,bmh,bmf->bhf", beta, values - previous, keys)
    seen = torch.einsum("bf,bmf->bm", z, keys) / (keys.pow(2).sum(dim=-1) + EPS)
    gamma = (1 - seen).clamp(0, 1).detach()  # (B, m)
    return A, z + torch.einsum("bm,bmf->bf", gamma, keys)


def backbone_layers(backbone):
    """The backbone's list of transformer blocks: the outermost nn.ModuleList of config.num_hidden_layers modules.

    Raises:
        ValueError: the backbone has no such list, naming its class and what is expected.
    """
    n_layers = getattr(getattr(backbone, "config", None), "num_hidden_layers", None)
    for module in backbone.modules():
        if isinstance(module, nn.ModuleList) and len(module) == n_layers:
            return module
    raise ValueError(f"backbone {type(backbone).__name__} cannot take an associative memory: expected a Hugging Face "
                     f"model with config.num_hidden_layers (got {n_layers!r}) blocks in one nn.ModuleList")


class LayerMemory(nn.Module):
    """The projections of one layer's associative memory: W_Q, W_K (H -> d_mem), W_V (H -> H), W_beta (H -> 1)."""

    def __init__(self, hidden_size, d_mem):
        super().__init__()
        self.query = nn.Linear(hidden_size, d_mem, bias=False)
        self.key = nn.Linear(hidden_size, d_mem, bias=False)
        self.value = nn.Linear(hidden_size, hidden_size, bias=False)
        nn.init.zeros_(self.value.weight)  # an untrained memory writes 0: the backbone starts as it was trained
        self.beta = nn.Linear(hidden_size, 1)

    def read(self, hidden, A, z):
        """(B, T, H) hidden states -> (B, T, H) what they read from A (B, H, F), z (B, F)."""
        features = dpfp(self.query(hidden.to(self.query.weight.dtype))).float()
        return read_memory(A, z, features)

    def write(self, memory_outputs, A, z):
        """Write the layer's (B, m, H) outputs at the memory positions into A, z; returns (A', z')."""
        x = memory_outputs.to(self.key.weight.dtype)
        keys = dpfp(self.key(x)).float()
        beta = torch.sigmoid(self.beta(x)).float()[..., 0]
        return write_memory(A, z, keys, self.value(x).float(), beta)


class SegmentState:
    """The state a segment reads, (A_1..A_L, z_1..z_L) with A_l: (B, H, F) and z_l: (B, F), and what each layer
    writes during its pass."""

    def __init__(self, state, write_positions):
        n_layers = len(state) // 2
        self.A, self.z = state[:n_layers], state[n_layers:]
        self.write_positions = write_positions
        self.written = [None] * n_layers

    def new_state(self):
        """(A_1..A_L, z_1..z_L) after the segment's writes."""
        if any(layer is None for layer in self.written):
            raise RuntimeError("the backbone's forward pass did not run every layer: the associative memory "
                               "expects each block to run once per segment")
        return tuple(A for A, _ in self.written) + tuple(z for _, z in self.written)


class AssociativeMemory(nn.Module):
    """Associative memories of every layer of a backbone, attached to its blocks by forward hooks.

    Args:
        backbone: a Hugging Face model; its blocks (`backbone_layers`) read before and write after their pass.
        d_mem: size of keys and queries before DPFP (the paper: 64).
    """

    def __init__(self, backbone, d_mem):
        super().__init__()
        layers = backbone_layers(backbone)
        hidden_size = backbone.get_input_embeddings().embedding_dim
        self.hidden_size, self.n_features = hidden_size, 2 * DPFP_NU * d_mem
        self.layers = nn.ModuleList(LayerMemory(hidden_size, d_mem) for _ in layers)
        self._segment = None  # the SegmentState of the forward pass in progress; None: the hooks do nothing
        for index, layer in enumerate(layers):
            layer.register_forward_pre_hook(functools.partial(self._read, index), with_kwargs=True)
            layer.register_forward_hook(functools.partial(self._write, index))

    def initial_state(self, batch_size, device):
        """(A_1..A_L, z_1..z_L): (B, H, F) and (B, F) zeros, float32 whatever the precision of the backbone; kept
        per layer (no stacking copy per segment), each a broadcast view of one zero row (no memory per sample)."""
        A = torch.zeros(1, self.hidden_size, self.n_features, device=device).expand(batch_size, -1, -1)
        z = torch.zeros(1, self.n_features, device=device).expand(batch_size, -1)
        return (A,) * len(self.layers) + (z,) * len(self.layers)

    @property
    def current(self):
        """The SegmentState of the backbone pass in progress (None outside one): a forward hook on the backbone
        reads the state that pass wrote with `current.new_state()`."""
        return self._segment

    @contextlib.contextmanager
    def segment(self, state, write_positions=None):
        """Within this context every block of the backbone reads from `state`, and, with `write_positions` (a
        slice of the segment's positions), writes its outputs there into the memory.

        Yields:
            the SegmentState; its `new_state()` after the backbone's pass is the state for the next segment.
        """
        if self._segment is not None:
            raise RuntimeError("associative memory: a segment is already in progress")
        self._segment = SegmentState(state, write_positions)
        try:
            yield self._segment
        finally:
            self._segment = None

    def _read(self, index, layer, args, kwargs):
        """Forward pre-hook of block `index`: x -> x + y, y read from this layer's memory."""
        segment = self._segment
        if segment is None:
            return None
        hidden = args[0] if args else kwargs["hidden_states"]  # (B, T, H)
        with torch.autocast(hidden.device.type, enabled=False):  # the state accumulates in float32
            read = self.layers[index].read(hidden, segment.A[index], segment.z[index])
        hidden = hidden + read.to(hidden.dtype)
        if args:
            return (hidden, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": hidden}

    def _write(self, index, layer, args, output):
        """Forward hook of block `index`: write its outputs at the memory positions into this layer's memory."""
        segment = self._segment
        if segment is None or segment.write_positions is None:
            return
        hidden = output[0] if isinstance(output, tuple) else output  # (B, T, H)
        with torch.autocast(hidden.device.type, enabled=False):
            segment.written[index] = self.layers[index].write(hidden[:, segment.write_positions],
                                                              segment.A[index], segment.z[index])
