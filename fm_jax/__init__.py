"""fm_jax: physics-inspired flow matching in JAX.

Time runs from the source (t = 0) to the data (t = 1). Paths live in `fm_jax.paths`; the trainer, sampler,
losses, metrics and models are shared by all of them.
"""

from . import checkpoint as checkpoint
from . import couplings as couplings
from . import data as data
from . import distributed as distributed
from . import hamiltonian as hamiltonian
from . import hsm as hsm
from . import image_metrics as image_metrics
from . import kac as kac
from . import kinetic as kinetic
from . import losses as losses
from . import metrics as metrics
from . import models as models
from . import paths as paths
from . import relativistic as relativistic
from . import sampling as sampling
from . import training as training
from ._checks import checks as checks
from ._checks import checks_enabled as checks_enabled
from .losses import Batch as Batch
from .losses import flow_matching_loss as flow_matching_loss
from .paths.base import PathSample as PathSample
from .sampling import log_likelihood as log_likelihood
from .sampling import sample as sample
from .sampling import sample_edm as sample_edm
from .sampling import sample_from as sample_from
from .training import TrainState as TrainState
from .training import init_train_state as init_train_state
from .training import make_optimizer as make_optimizer
from .training import make_train_step as make_train_step

__version__ = "0.1.0"
