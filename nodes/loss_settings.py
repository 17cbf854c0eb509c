"""The PSLD_LOSS payload: a psld PSLDLoss plus the projection override chosen on PSLD_GluingLoss."""
from __future__ import annotations

import dataclasses

from ..psld.losses import TASKS as REFERENCE_TASKS
from ..psld.losses import PSLDLoss, reference_loss
from .operator_factory import PROJECTIONS, OperatorSpec

PROJECTION_CHOICES = ("operator", *PROJECTIONS)  # "operator" = keep the operator's own mode


@dataclasses.dataclass(frozen=True)
class LossSettings:
    """loss: the PSLD objective's weights and options; projection: None keeps the operator's projection mode,
    "paper" or "exact" replaces it for this loss (the operator itself is never changed)."""

    loss: PSLDLoss
    projection: str | None = None

    def __post_init__(self):
        if not isinstance(self.loss, PSLDLoss):
            raise ValueError(f"loss={self.loss!r} is not allowed: loss must be a psld.losses.PSLDLoss.")
        if self.projection is not None and self.projection not in PROJECTIONS:
            raise ValueError(f"projection={self.projection!r} is not allowed: projection must be None or one of "
                             f"{PROJECTIONS}.")

    def apply_to(self, spec: OperatorSpec) -> OperatorSpec:
        """The operator spec to use with this loss (a new spec when the projection is overridden)."""
        return spec if self.projection is None else spec.with_projection(self.projection)


def resolve_loss(settings: LossSettings | None, spec: OperatorSpec) -> tuple[PSLDLoss, OperatorSpec]:
    """What a sampler uses: the given loss and projection, or, when no loss is connected, the reference weights for
    the operator's task (PSLDLoss() defaults for tasks without reference weights)."""
    if settings is None:
        loss = reference_loss(spec.task) if spec.task in REFERENCE_TASKS else PSLDLoss()
        return loss, spec
    return settings.loss, settings.apply_to(spec)
