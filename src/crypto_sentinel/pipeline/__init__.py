"""The roles of a sentinel process - ingest (sources -> bus), process (bus -> engine ->
lake) and the API - and the supervisor that starts the ones a command needs and stops them
in order (`supervisor.Pipeline`, also importable as `crypto_sentinel.runtime.Pipeline`)."""
