"""Errors of the lake that end a process, kept apart from the writer so that the CLI can name
them without importing deltalake."""


class LakeWriteFailed(RuntimeError):
    """A batch that could not be committed after its retries. The engine stops on it; what
    bronze holds of the batch is derived again at the next start, and over Kafka the offsets
    after the lake's position are read again."""
