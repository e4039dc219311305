"""What a training step holds in memory, found on the summary's dry run (the meta device: sizes
without memory, so it costs nothing):

- `SavedForBackward`: the bytes autograd saves for the backward pass (saved-tensor hooks);
- `LiveTensors`: every tensor the step's ops make, alive from its op until its last reference
  goes, so the most alive at once over forward and backward is the step's peak.

Both leave out the parameters, buffers and inputs (the summary's Params and Input lines), and count
a storage once however many views or saves share it.
"""
from __future__ import annotations

import weakref
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class SavedForBackward:
    """Bytes autograd saves for the backward pass, counted with `saved_tensors_hooks` while the model
    runs: every saved tensor's storage once (a view and its base, or a tensor saved by two ops, are
    one storage), leaving out the parameters and buffers (the Params line) and the inputs (the
    Input line). On the meta device the storages have sizes but no memory, so nothing is allocated.

        with SavedForBackward(module, inputs) as saved:
            ...run the forward...
        saved.bytes
    """

    def __init__(self, module: nn.Module, inputs: tuple[torch.Tensor, ...] = ()):
        self._excluded = {_storage_key(tensor) for tensor in (*module.parameters(), *module.buffers(), *inputs)}
        self._sizes: dict[int, int] = {}
        self._kept: list[torch.Tensor] = []  # keeps each storage alive, so no other can take its key
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda tensor: tensor)

    @property
    def bytes(self) -> int:
        return sum(self._sizes.values())

    def exclude(self, tensor: torch.Tensor) -> None:
        """Leave `tensor`'s storage out of the count (an input made after the hooks were set)."""
        self._excluded.add(_storage_key(tensor))

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        key = _storage_key(tensor)
        if key not in self._excluded and key not in self._sizes:
            self._sizes[key] = tensor.untyped_storage().nbytes()
            self._kept.append(tensor)
        return tensor

    def __enter__(self) -> "SavedForBackward":
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._hooks.__exit__(*exc_info)
        self._kept.clear()


def _storage_key(tensor: torch.Tensor) -> int:
    return tensor.untyped_storage()._cdata  # the StorageImpl's address: shared by every view of it


class LiveTensors(TorchDispatchMode):
    """A dispatch mode that follows every storage the ops make: its bytes count from the op that made
    it until the last tensor viewing it is gone (a weakref finalizer; autograd keeps a saved tensor's
    Python object alive as long as it holds the tensor). `peak` is the most alive at once.

        live = LiveTensors(module)
        with live:
            ...forward, loss.backward()...
        live.peak
    """

    def __init__(self, module: nn.Module):
        super().__init__()
        self._existing = {_storage_key(tensor) for tensor in (*module.parameters(), *module.buffers())}
        self._storages: dict[int, list] = {}  # storage key -> [bytes, ids of the live tensors on it]
        self.live = self.peak = 0

    def exclude(self, tensor: torch.Tensor) -> None:
        """`tensor` (an input) is counted elsewhere: neither it nor a view of it is followed."""
        key = _storage_key(tensor)
        self._existing.add(key)
        entry = self._storages.pop(key, None)
        if entry is not None:  # made under this mode before it was known to be an input
            self.live -= entry[0]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        for value in tree_flatten(result)[0]:
            if isinstance(value, torch.Tensor):
                self._follow(value)
        return result

    def _follow(self, tensor: torch.Tensor) -> None:
        key = _storage_key(tensor)
        if key in self._existing:
            return  # a view of a weight or an input
        entry = self._storages.get(key)
        if entry is None:
            entry = self._storages[key] = [tensor.untyped_storage().nbytes(), set()]
            self.live += entry[0]
            self.peak = max(self.peak, self.live)
        if id(tensor) not in entry[1]:
            entry[1].add(id(tensor))
            weakref.finalize(tensor, self._release, key, id(tensor))

    def _release(self, key: int, tensor_id: int) -> None:
        entry = self._storages.get(key)
        if entry is not None:
            entry[1].discard(tensor_id)
            if not entry[1]:
                self.live -= entry[0]
                del self._storages[key]


def backward_of_mean(outputs: list[Any]) -> bool:
    """Backward from the mean of the floating outputs (a loss's shape of work), after emptying
    `outputs` so the outputs themselves are freed as a training loop frees them; False when nothing
    needs gradients or the ops have no backward on this device."""
    floats = [value for value in tree_flatten(outputs)[0]
              if isinstance(value, torch.Tensor) and value.is_floating_point() and value.requires_grad]
    outputs.clear()
    if not floats:
        return False
    loss = sum(value.float().mean() for value in floats)
    floats.clear()
    try:
        loss.backward()
    except (RuntimeError, NotImplementedError):
        return False
    return True
