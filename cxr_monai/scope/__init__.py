"""The intended-population concern of the pneumonia classifier, in one package: one scope check used by the
bundle's inference/evaluation/commissioning, the MONAI Deploy app and the MONAI Label app.

* :mod:`~cxr_monai.scope.rules`: the intended use, the header rules, the lung-field rule, :class:`ScopeDecision`.
* :mod:`~cxr_monai.scope.gate`: the image check (:class:`ScopeGate`) and its file (save/load).
* :mod:`~cxr_monai.scope.view`: the gate's decisions on the bundle's classifier batches, each on the gate's own
  view of its film (:class:`ScopeCheck`, :func:`load_scope_check`).
* :mod:`~cxr_monai.scope.network`: the gate's network (:class:`ScopeNet`, :class:`ScopeGateModule`).
* :mod:`~cxr_monai.scope.negatives`: procedural non-radiographs and bedside-like adults (training negatives).
* :mod:`~cxr_monai.scope.training`: training, calibration and the check report (``configs/scope_train.json``);
  imported on its own (``cxr_monai.scope.training``), it needs the data and transforms of the training.
"""

from .rules import *  # noqa: F401,F403
from .gate import *  # noqa: F401,F403
from .view import *  # noqa: F401,F403
from .network import *  # noqa: F401,F403
from .negatives import *  # noqa: F401,F403
