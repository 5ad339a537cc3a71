"""--dry_run: translate the pipeline into the job a cluster runner receives, without running it.

The translation is the portable job-building path (`PortableRunner.get_proto_pipeline`) that
Dataflow Runner v2, Flink and Spark all consume: the Runner API proto, a Docker SDK environment
carrying the artifacts Beam stages for `--setup_file` / `--requirements_file` (the sdist is built
here, so a broken setup.py shows up now), and the combiner packing and lifting a runner applies.
It needs no network and no cloud client libraries, so it also works where
`apache-beam[gcp]` (which DataflowRunner's own job builder imports) is not installed.
"""

from apache_beam.options import pipeline_options
from apache_beam.portability import common_urns
from apache_beam.portability.api import beam_runner_api_pb2
from apache_beam.runners.portability import portable_runner

# Leaf transforms every portable runner executes (anything else needs runner-specific support).
_PORTABLE_URNS = frozenset(
    urn.urn
    for urn in (
        common_urns.primitives.IMPULSE,
        common_urns.primitives.PAR_DO,
        common_urns.primitives.FLATTEN,
        common_urns.primitives.GROUP_BY_KEY,
        common_urns.primitives.ASSIGN_WINDOWS,
        common_urns.combine_components.COMBINE_PER_KEY_PRECOMBINE,
        common_urns.combine_components.COMBINE_PER_KEY_MERGE_ACCUMULATORS,
        common_urns.combine_components.COMBINE_PER_KEY_EXTRACT_OUTPUTS,
        common_urns.composites.COMBINE_PER_KEY,
        common_urns.composites.RESHUFFLE,
    )
)


class TranslationError(ValueError):
    """The pipeline holds a transform a portable cluster runner cannot execute."""


def translate(pipeline, options: pipeline_options.PipelineOptions):
    """The portable job proto for `pipeline` (the pipeline is not run)."""
    return portable_runner.PortableRunner.get_proto_pipeline(pipeline, options)


def _leaf_urns(proto: beam_runner_api_pb2.Pipeline) -> set[str]:
    return {t.spec.urn for t in proto.components.transforms.values() if not t.subtransforms}


def _tree(proto, transform_id: str, depth: int, max_depth: int) -> list[str]:
    transform = proto.components.transforms[transform_id]
    name = transform.unique_name.rsplit("/", 1)[-1] or "(root)"
    lines = [f"{'  ' * depth}{name}"] if depth else []
    if depth < max_depth:
        for child in transform.subtransforms:
            lines += _tree(proto, child, depth + 1, max_depth)
    return lines


def describe(proto: beam_runner_api_pb2.Pipeline, runner: str) -> str:
    """A readable account of the translated job: environment, size and transform tree.

    Raises:
      TranslationError: a leaf transform has a URN outside the portable set.
    """
    unsupported = _leaf_urns(proto) - _PORTABLE_URNS
    if unsupported:
        raise TranslationError(
            f"Transforms with URNs {sorted(unsupported)} have no portable implementation."
        )
    lines = [f"Dry run for {runner}: translated to a portable job; nothing was run."]
    for env_id, env in sorted(proto.components.environments.items()):
        image = ""
        if env.urn == common_urns.environments.DOCKER.urn:
            image = beam_runner_api_pb2.DockerPayload.FromString(env.payload).container_image
        artifacts = [
            beam_runner_api_pb2.ArtifactStagingToRolePayload.FromString(d.role_payload).staged_name
            for d in env.dependencies
        ]
        lines.append(f"Environment {env_id}: {env.urn} {image}")
        lines.append(f"  staged artifacts: {', '.join(artifacts) or '(none)'}")
    components = proto.components
    lines.append(
        f"{len(components.transforms)} transforms, {len(components.pcollections)} PCollections, "
        f"{len(components.coders)} coders; leaf URNs: {', '.join(sorted(_leaf_urns(proto)))}"
    )
    lines.append("Transforms:")
    for root in proto.root_transform_ids:
        lines += _tree(proto, root, 0, max_depth=2)
    return "\n".join(lines)
