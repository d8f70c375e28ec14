r"""Neuron specifications a backend builds its framework's neurons from.

``IF`` — integrate-and-fire with soft reset, for ANN-to-SNN conversion:

.. math::  H_t = V_{t-1} + X_t,\quad S_t = [H_t \ge \theta],\quad V_t = H_t - \theta S_t,
           \quad V_0 = v_{init}\,\theta

and the spike is passed on as :math:`\theta S_t` (so the layer's mean output
approximates the ANN activation :math:`\mathrm{clip}(x, 0, \theta)`).

``LIF`` — leaky integrate-and-fire with a surrogate gradient, for direct training
(SpikingJelly's ``decay_input=True`` form; snnTorch's ``Leaky`` is driven so as to
compute the same update):

.. math::  H_t = V_{t-1} + (X_t - (V_{t-1} - V_{reset})) / \tau,\quad S_t = [H_t \ge \theta]

then hard reset :math:`V_t = V_{reset}` where it spiked, or soft reset :math:`V_t = H_t - \theta S_t`.
"""

from __future__ import annotations

from dataclasses import dataclass

from .validation import check_choice, check_number

SURROGATES = ("atan", "sigmoid", "triangle")


@dataclass(frozen=True)
class IF:
    """Integrate-and-fire, soft reset, for conversion.

    Args:
        threshold: fixed threshold for every layer; None (default) takes each layer's
            threshold from its constraint activation, or from calibration data for ReLU.
        v_init: initial membrane as a fraction of the threshold; None takes the
            constraint's (0.5 for QCFS) or 0.5 for calibrated ReLU.
    """

    threshold: float | None = None
    v_init: float | None = None

    def __post_init__(self) -> None:
        if self.threshold is not None:
            object.__setattr__(self, "threshold", check_number("IF threshold", self.threshold, 0.0, low_open=True))
        if self.v_init is not None:
            object.__setattr__(self, "v_init", check_number("IF v_init (a fraction of the threshold)", self.v_init,
                                                            0.0, 1.0))


@dataclass(frozen=True)
class LIF:
    """Leaky integrate-and-fire with a surrogate gradient, for direct training.

    Args:
        tau: membrane time constant (> 1); snnTorch's ``beta = 1 - 1/tau``.
        threshold: firing threshold.
        reset: ``"hard"`` (to ``v_reset``) or ``"soft"`` (subtract the threshold).
        v_reset: reset potential of the hard reset.
        surrogate: ``"atan"``, ``"sigmoid"`` or ``"triangle"`` (same shape and width in
            both frameworks).
        alpha: surrogate sharpness (SpikingJelly's ``alpha``).
        detach_reset: detach the spike in the reset term (no gradient through reset).
    """

    tau: float = 2.0
    threshold: float = 1.0
    reset: str = "hard"
    v_reset: float = 0.0
    surrogate: str = "atan"
    alpha: float = 2.0
    detach_reset: bool = False

    def __post_init__(self) -> None:
        for name, low in (("tau", 1.0), ("threshold", 0.0), ("alpha", 0.0)):
            object.__setattr__(self, name, check_number(f"LIF {name}", getattr(self, name), low, low_open=True))
        object.__setattr__(self, "v_reset", check_number("LIF v_reset", self.v_reset))
        check_choice("reset", self.reset, ("hard", "soft"))
        check_choice("surrogate", self.surrogate, SURROGATES)
        if not isinstance(self.detach_reset, bool):
            raise TypeError(f"LIF detach_reset must be True or False, got {self.detach_reset!r}")

    @property
    def beta(self) -> float:
        """snnTorch's decay, ``1 - 1/tau``."""
        return 1.0 - 1.0 / self.tau
