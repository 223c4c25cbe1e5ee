"""A model version as plain files, so a scoring worker never imports MLflow, scikit-learn or
pandas (issue 17: those imports were ~250 MB of the 448 MB resident per worker).

To load a version, the worker runs :mod:`.export` in a child interpreter: the child downloads
the version through MLflow, loads the pipeline, runs the canary batch (:func:`serving.scoring
.prepare`) and, for a model the compiled-trees predictor serves, writes the flat tree arrays
(``trees.npz``) and the version's facts with the pipeline's canary scores (``model.json``) to
``state_dir/model_files/``, where every worker of the state directory finds them (one child per
version, whichever worker asks first; a rollback reads them again). The worker reads them
with numpy only (:mod:`.reader`) and checks its own kernel against the pipeline's canary
scores, as :func:`~serving.scoring.prepare` does in process. The child's memory goes back to the OS when it exits. A version the compiled trees do
not serve (categorical columns, another estimator, a behavioral schema) is loaded in the worker
as before. :mod:`.alias` reads the ``champion`` alias without the MLflow client.
"""

from serving.model_files.alias import AliasLookup
from serving.model_files.reader import ModelFiles, load_version, prepare_any

__all__ = ["AliasLookup", "ModelFiles", "load_version", "prepare_any"]
