"""The attention-matching schedule: which layers take the source's attention at which edit
step, and which attention record each step reads."""

from __future__ import annotations

from dataclasses import dataclass

from i2vedit.attention.layers import SPATIAL, TEMPORAL, AttentionLayer, is_high_resolution


def step_boundary(fraction: float, num_steps: int) -> int:
    """The first step past a schedule fraction: the float product truncated, ``int(x * N)``,
    as the reference computes every boundary (``int(0.5 * 25) == 12``, ``int(0.58 * 50) == 28``
    since the product is 28.999...). A window "for steps before x" is ``step < int(x * N)``."""
    return int(fraction * num_steps)


@dataclass(frozen=True)
class MatchingSchedule:
    """When attention matching acts during an edit of ``num_steps`` steps (N).

    The paper's rule, with every boundary computed as the reference does, ``int(x * N)``
    (:func:`step_boundary`), and a window "for the steps before x" meaning ``t < int(x * N)``:

    - spatial layers (the masked copy of the source's attention) match while
      ``t < int(spatial * N)`` (``spatial_self_replace_steps``);
    - temporal layers match while ``t < int(temporal * N)`` (``temporal_self_replace_steps``)
      and the temporal window ``beta = [beta1, beta2]`` (``temporal_step_thr``) lets them:
      before ``int(beta1 * N)`` every temporal layer takes the source's probabilities, from
      ``int(beta2 * N)`` on none does, and in between only the low-resolution ones do (the
      high-resolution layers, :func:`i2vedit.attention.layers.is_high_resolution`, keep their
      own attention);
    - edit step ``t``, at sigma_t, reads the record the inversion made at sigma_{t+1}
      (``pairing="reference"``: record index ``N-1-t``) or at sigma_t itself (``"exact"``:
      index ``N-t``).

    For example N = 25, beta = (0.5, 0.8): all temporal layers for steps 0-11, the
    low-resolution ones for steps 12-19, none for steps 20-24.
    """

    num_steps: int
    beta: tuple[float, float] = (0.5, 0.8)
    spatial: float = 1.0  #: fraction of steps with spatial matching
    temporal: float = 1.0  #: fraction of steps with temporal matching
    pairing: str = "reference"  #: which record a step reads: ``reference`` or ``exact``

    @property
    def spatial_end(self) -> int:
        """The first step without spatial matching."""
        return step_boundary(self.spatial, self.num_steps)

    @property
    def temporal_end(self) -> int:
        """The first step without temporal matching (whatever ``beta`` says)."""
        return step_boundary(self.temporal, self.num_steps)

    @property
    def beta_steps(self) -> tuple[int, int]:
        """``(int(beta1 * N), int(beta2 * N))``: the first step at which only the
        low-resolution temporal layers take the source, and the first at which none does."""
        beta1, beta2 = self.beta
        return step_boundary(beta1, self.num_steps), step_boundary(beta2, self.num_steps)

    def takes_source(self, layer: AttentionLayer, step: int) -> bool:
        """The temporal window alone: whether temporal ``layer`` takes the source's
        probabilities at ``step`` by ``beta`` (all layers, the low-resolution ones, none)."""
        all_until, none_from = self.beta_steps
        if step < all_until:
            return True
        if step >= none_from:
            return False
        return not is_high_resolution(layer)

    def kind_active(self, kind: str, step: int) -> bool:
        """Whether layers of ``kind`` (spatial or temporal) match at all at ``step``: the
        ``*_self_replace_steps`` fraction alone."""
        return step < (self.spatial_end if kind == SPATIAL else self.temporal_end)

    def matches(self, layer: AttentionLayer, step: int) -> bool:
        """Whether ``layer`` takes the source's attention at edit step ``step``."""
        if not self.kind_active(layer.kind, step):
            return False
        return layer.kind == SPATIAL or self.takes_source(layer, step)

    def reads_records(self, step: int) -> bool:
        """Whether any layer matches at ``step`` (so its record is needed at all): a spatial
        step, or a temporal one before ``int(beta2 * N)`` (the middle phase always has a
        low-resolution layer: the mid block's)."""
        return step < self.num_steps and (
            self.kind_active(SPATIAL, step)
            or (self.kind_active(TEMPORAL, step) and step < self.beta_steps[1])
        )

    def record_index(self, step: int) -> int:
        """The record edit step ``step`` reads (the index in the inversion's sigma sequence):
        ``N-1-t`` with the reference's pairing, ``N-t`` with the exact one."""
        n = self.num_steps
        return n - 1 - step if self.pairing == "reference" else n - step


def temporal_uses_source(
    layer: AttentionLayer, step: int, num_steps: int, beta: tuple[float, float]
) -> bool:
    """The temporal schedule ``[beta1, beta2]`` alone (:meth:`MatchingSchedule.takes_source`):
    before step ``int(beta1*N)`` every temporal layer takes the source's probabilities, from
    ``int(beta2*N)`` on none does, and in between only the low-resolution layers do."""
    return MatchingSchedule(num_steps, tuple(beta)).takes_source(layer, step)
