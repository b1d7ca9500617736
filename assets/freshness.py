"""Which partitions a `traitflow run` must materialize: those that are missing or stale, followed
down the whole chain.

Dagster's stale status (from code versions and data versions) marks only the direct child of a
change: after a trait file is edited, `responses` of that trait is STALE but its `vetting`,
`vectors`, … still read FRESH until `responses` is re-materialized. The runner re-runs partition
by partition in graph order, so a partition also needs work when any partition it reads from is
going to be re-run in this invocation.
"""

from dataclasses import dataclass, field

import dagster as dg
from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus
from dagster._core.definitions.events import AssetKeyPartitionKey
from dagster._core.loader import LoadingContext


class _Loading(LoadingContext):
    """The batch-loading scope Dagster's stale-status resolver needs (one per `traitflow run`)."""

    def __init__(self, instance: dg.DagsterInstance):
        self._instance = instance
        self._loaders: dict = {}

    @property
    def instance(self) -> dg.DagsterInstance:
        return self._instance

    @property
    def loaders(self) -> dict:
        return self._loaders


@dataclass
class Freshness:
    """Statuses read once, before anything runs; `scheduled` grows as the runner plans each stage."""

    defs: dg.Definitions
    instance: dg.DagsterInstance
    scheduled: set[AssetKeyPartitionKey] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.graph = self.defs.resolve_asset_graph()
        self.resolver = CachingStaleStatusResolver(self.instance, self.graph, _Loading(self.instance))

    def reason(self, key: dg.AssetKey, partition: str | None) -> str | None:
        """Why this partition must run (an upstream re-runs, missing, or stale), or None when fresh."""
        # Cheapest first: a partition whose upstream re-runs must run whatever its own status, and
        # asking Dagster for a status costs several queries of the instance.
        for parent in self.graph.get_parents_partitions(key, partition).parent_partitions:
            if parent in self.scheduled:
                return f"upstream {parent.asset_key.path[-1]} re-runs"
        status = self.resolver.get_status(key, partition)
        if status == StaleStatus.MISSING:
            return "missing"
        if status == StaleStatus.STALE:
            causes = self.resolver.get_stale_causes(key, partition)
            return f"stale ({causes[0].reason})" if causes else "stale"
        return None

    def schedule(self, key: dg.AssetKey, partition: str | None) -> None:
        self.scheduled.add(AssetKeyPartitionKey(key, partition))
