"""Probability paths: the protocol and one module per family."""

from .affine import VE as VE
from .affine import VP as VP
from .affine import AbstractSchedule as AbstractSchedule
from .affine import AffinePath as AffinePath
from .affine import CondOT as CondOT
from .affine import Cosine as Cosine
from .affine import Polynomial as Polynomial
from .affine import gaussian_marginal_velocity as gaussian_marginal_velocity
from .affine import schedule_transform as schedule_transform
from .base import AbstractFirstOrderPath as AbstractFirstOrderPath
from .base import AbstractInterpolantPath as AbstractInterpolantPath
from .base import AbstractPath as AbstractPath
from .base import PathSample as PathSample
from .base import interpolant_velocity as interpolant_velocity
from .hamiltonian import ApplyForce as ApplyForce
from .hamiltonian import CoupledZeroForceHGFPath as CoupledZeroForceHGFPath
from .hamiltonian import ForceFieldHGFPath as ForceFieldHGFPath
from .hamiltonian import OscillationHGFPath as OscillationHGFPath
from .hamiltonian import ReflectingBoxHGFPath as ReflectingBoxHGFPath
from .hamiltonian import ZeroForceHGFPath as ZeroForceHGFPath
from .relativistic import ForcePath as ForcePath
from .relativistic import NewtonianSecondOrderPath as NewtonianSecondOrderPath
from .relativistic import PhaseState as PhaseState
