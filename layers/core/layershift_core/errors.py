"""Every domain exception, in one module.

A Python exception's class name becomes the Step Functions error name when a Lambda task raises
it, so the state machine catches these by name. Rename one and the ASL must change with it.
"""


class LayershiftError(Exception):
    """Base of every error layershift raises on purpose."""


class InvalidRequirements(LayershiftError):
    """The pushed requirements file breaks the requirements policy. Nothing is built."""


class InvalidLayerSpec(LayershiftError):
    """layer.toml is malformed or holds a value out of range. Nothing is built."""


class LayerLocked(LayershiftError):
    """Another rollout still holds this layer's lock after this one waited as long as LockWaitSeconds allows."""


class Superseded(LayershiftError):
    """A newer push of the same layer arrived before this rollout took the lock; that one rolls out instead.
    Nothing is built."""


class LockLost(LayershiftError):
    """A forward step found that this rollout no longer holds its layer's lock: it has ended already (a
    redriven execution), or its lock was freed or taken by another rollout. The step changes nothing."""


class UnlockRefused(LayershiftError):
    """`layershift unlock` found the layer unlocked, or held by a rollout whose execution still runs."""


class BuildFailed(LayershiftError):
    """The layer could not be built (resolution, sdist-only package, smoke test, size budget)."""


class SdistOnlyPackage(BuildFailed):
    """A requirement has no wheel for the target runtime and architecture."""


class SizeBudgetExceeded(BuildFailed):
    """The unzipped layer is over Lambda's 250 MB budget."""


class ImportSmokeTestFailed(BuildFailed):
    """A top-level module of the built layer does not import."""


class BinaryCheckFailed(BuildFailed):
    """A shared object of the built layer cannot load on the target runtime: wrong machine type, a needed
    library that neither the layer nor the Lambda base image has, or a glibc/libstdc++ newer than the image's."""


class LayerShareFailed(LayershiftError):
    """A layer version's grants could not be made exactly what layer.toml's [share] says (a grant refused, a
    statement that could not be removed, or a public grant the template does not allow). No function moves."""


class ArtifactMissing(LayershiftError):
    """A build reported success but its layer zip or manifest is not in the artifact bucket."""


class StagedBuildRejected(LayershiftError):
    """A file the build staged is not what the build made: variants.json is not the one whose sha256 the
    build exported, or a file it names does not have the sha256 it lists. Nothing is published."""


class ConcurrentModification(LayershiftError):
    """A function or alias changed under us (RevisionId no longer matches)."""


class TooManyTargetsFailed(LayershiftError):
    """More targets than the spec tolerates (rollout.tolerated_failure_percent) could not be prepared:
    every target rolls back."""


class BatchFailed(LayershiftError):
    """A child execution of a Map Run failed with an error layershift does not raise itself."""


class ControlPlaneSaturated(LayershiftError):
    """A batch got no slot of Lambda's control-plane budget for several passes in a row."""


class CodeDeployCheckFailed(LayershiftError):
    """Whether CodeDeploy manages an alias could not be read; the rollout stops before any change."""


class RolloutUnhealthy(LayershiftError):
    """A gating alarm or the canary analysis says the new layer version is worse."""


class RollbackIncomplete(LayershiftError):
    """Restoring at least one alias failed: an operator must act."""


class InvalidRequest(LayershiftError):
    """The execution input does not describe a pushed layer spec in the artifact bucket."""


class RolloutInconclusive(LayershiftError):
    """Too little traffic for a verdict, the bake extension is used up, and the spec says roll back."""


class RolloutAborted(LayershiftError):
    """An operator ran `layershift abort`."""


class ApprovalRejected(LayershiftError):
    """An operator ran `layershift reject` at the approval before 100%."""


class NothingWaiting(LayershiftError):
    """No rollout of the layer is waiting for that signal."""


class LockFileInvalid(LayershiftError):
    """A lock file (`layershift lock`) is missing, not JSON, of an unknown format, or not a lock document."""


class TemplateUnreadable(LayershiftError):
    """`layershift lock check` was given a template it cannot read as text."""


class LockExportFailed(LayershiftError):
    """The promoted parameters, the registry and the build manifests disagree: no lock file is written."""
