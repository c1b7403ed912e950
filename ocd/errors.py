"""The errors that name a problem with the user's input. Every refusal of a
stage is one of these (raised by the module that finds it, which re-exports
it), and `ocd` prints it in one line with exit code 2. They live apart from
what raises them so that the command line can catch them without importing
torch, scikit-learn or Zarr first."""


class ParamsError(ValueError):
    """params.yaml is malformed; the message names the offending key."""


class DataError(ValueError):
    """A dataset cannot be loaded; the message names the problem."""


class ModelError(ValueError):
    """A model cannot be built or cut as asked; the message says why."""


class ScoreError(ValueError):
    """A layer cannot be scored (non-finite losses); the message names the layer."""


class StoreError(ValueError):
    """A store cannot be used as asked; the message says why."""


class CheckpointError(ValueError):
    """A checkpoint cannot be read safely or is not one of ours; the message says why."""


class InputError(ValueError):
    """New inputs cannot be read or do not fit the model (``ocd predict``); the message says why."""


USER_ERRORS = (ParamsError, DataError, ModelError, ScoreError, StoreError, CheckpointError, InputError)
