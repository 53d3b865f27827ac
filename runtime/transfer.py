"""Host↔device copies that never wait for the GPU.

With overlap scheduling the host prepares step N+1 while the GPU still runs step N. A plain
`torch.tensor(values, device="cuda")` or `.tolist()` would block the host until everything queued so
far has run, silently serialising the two. These helpers queue the copy behind the queued work
instead: host→device from pageable memory is staged at once, device→host lands in pinned memory and
is read only after its event completes.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch


def to_device(values: Sequence, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A host sequence as a tensor on `device`, without a device synchronisation."""
    host = torch.tensor(values, dtype=dtype)
    if device.type == "cpu":
        return host
    return host.to(device, non_blocking=True)


class HostCopy:
    """Device tensors copied to the host behind the work already queued on the current stream.

    `wait()` blocks until those copies (and only the work queued before them) are done, then returns
    the host tensors. On the CPU the tensors are returned as they are.
    """

    def __init__(self, tensors: Sequence[Optional[torch.Tensor]]):
        self._event: Optional[torch.cuda.Event] = None
        if not any(t is not None and t.is_cuda for t in tensors):
            self._host = list(tensors)
            return
        self._host = []
        for t in tensors:
            if t is None or not t.is_cuda:
                self._host.append(t)
                continue
            host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
            host.copy_(t, non_blocking=True)
            self._host.append(host)
        self._event = torch.cuda.Event()
        self._event.record()

    def wait(self) -> list[Optional[torch.Tensor]]:
        if self._event is not None:
            self._event.synchronize()
            self._event = None
        return self._host
