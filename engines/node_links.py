"""A node's links: its storage NIC and its compute NIC, each a FIFO queue of transfers.

Pure: no I/O, no clock, in the style of `engine_core`. A driver adds a transfer, asks for the next
step (which transfer runs and for how long), lets that much time pass in its own clock and reports
the step finished. One transfer runs at a time at the link's full bandwidth: the same completion
time for the last byte as fair sharing, and the queue ahead of a new read (`queued_bytes`, the
paper's `read_q`) is what the scheduler compares between the two sides.

Times are modelled seconds for modelled bytes (`EngineModel.kv_bytes`): the simulated worker moves
scaled-down real bytes alongside, the virtual-clock simulator moves none.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from engines.engine_model import NodeSpec


@dataclass(slots=True)
class Transfer:
    tid: str
    nbytes: float
    """Modelled bytes."""


@dataclass(frozen=True, slots=True)
class TransferStep:
    transfer: Transfer
    duration_s: float


@dataclass(slots=True)
class LinkQueue:
    name: str
    bytes_per_s: float
    max_waiting: int = 4096
    waiting: deque[Transfer] = field(default_factory=deque)
    running: Transfer | None = None
    moved_bytes: float = 0.0
    """Modelled bytes of every finished transfer (a counter)."""
    _waiting_bytes: float = 0.0

    def __post_init__(self) -> None:
        if self.bytes_per_s <= 0:
            raise ValueError(f"link {self.name!r} needs a positive bandwidth")

    def add(self, transfer: Transfer) -> bool:
        """Queue a transfer; False when the queue is full (the caller gives up on it)."""
        if len(self.waiting) >= self.max_waiting:
            return False
        self.waiting.append(transfer)
        self._waiting_bytes += transfer.nbytes
        return True

    def abort(self, tid: str) -> bool:
        for t in self.waiting:
            if t.tid == tid:
                self.waiting.remove(t)
                self._waiting_bytes -= t.nbytes
                return True
        return False

    def next_step(self) -> TransferStep | None:
        if self.running is not None or not self.waiting:
            return None
        transfer = self.waiting.popleft()
        self._waiting_bytes = (
            max(self._waiting_bytes - transfer.nbytes, 0.0) if self.waiting else 0.0
        )
        self.running = transfer
        return TransferStep(transfer, self.seconds(transfer.nbytes))

    def finish_step(self, step: TransferStep) -> None:
        if self.running is step.transfer:
            self.running = None
            self.moved_bytes += step.transfer.nbytes

    def seconds(self, nbytes: float) -> float:
        return nbytes / self.bytes_per_s

    @property
    def queued_bytes(self) -> float:
        """Modelled bytes not yet moved: waiting plus the running transfer."""
        running = self.running.nbytes if self.running is not None else 0.0
        return running + self._waiting_bytes

    @property
    def num_queued(self) -> int:
        return len(self.waiting) + (self.running is not None)


@dataclass(slots=True)
class NodeLinks:
    """The two links of one node that KV crosses.

    `snic` carries reads from the storage tier into the node; `cnic` carries KV arriving from
    another node over the compute network (decode-side reads handed to the prefill, and the
    prefill's KV handed to the decode): transfers queue on the receiving node's compute NIC.
    """

    snic: LinkQueue
    cnic: LinkQueue

    @classmethod
    def of(cls, node: NodeSpec) -> NodeLinks:
        return cls(
            LinkQueue("snic", node.snic_bytes_per_s), LinkQueue("cnic", node.cnic_bytes_per_s)
        )

    @property
    def read_q_bytes(self) -> float:
        return self.snic.queued_bytes
