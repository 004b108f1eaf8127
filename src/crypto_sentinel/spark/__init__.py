"""The Spark engine: a Structured Streaming job writing the embedded engine's Delta tables.

`job` (spark-submit entry), `decode` (frames -> records as Spark columns), `sink`
(foreachBatch, exactly-once Delta writes), `ops` (jars, spark-submit, standalone cluster),
`cli` (the `sentinel spark` verbs). Needs the `spark` extra: pip install -e '.[spark]'.
"""
