"""Kafka records -> frames -> trades, tickers, gaps and quarantine rows, as Spark expressions.

The rules are those of `sources/coinbase/codec.py` (which the embedded engine runs), written
as Spark SQL so decoding stays in the JVM and scales with the cluster: one explicit JSON
schema, the same checks in the same order, the same quarantine reasons where Spark can tell
them (a mistyped field gets a generic reason; msgspec's exact wording is not available here).

Our own frame kinds get schemas of their own, parsed only for frames of that type: a REST
backfill page (`rest_trades`, whose trades go down the same path as streamed matches) and a
gap record (`gap`, for bronze.gaps), both written by `sources/backfill.py`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from pyspark.sql import Column, DataFrame, Row
from pyspark.sql import functions as F
from pyspark.sql import types as T

from crypto_sentinel.config import PRODUCT_RE
from crypto_sentinel.lake import tables as LT
from crypto_sentinel.model import SCALE
from crypto_sentinel.sources.coinbase.codec import (
    GAP_KINDS,
    GAP_OUTCOMES,
    MAX_INTEGER_DIGITS,
    MAX_SKEW_SECONDS,
)

CORRUPT = "_corrupt"
_S, _L = T.StringType(), T.LongType()

#: Every field any Coinbase message type uses. Integers are LongType so a string or float in
#: their place marks the record corrupt (msgspec rejects those too); amounts stay strings.
FRAME_SCHEMA = T.StructType(
    [T.StructField(name, kind) for name, kind in [
        ("type", _S), ("product_id", _S), ("trade_id", _L), ("sequence", _L), ("side", _S),
        ("size", _S), ("price", _S), ("time", _S), ("maker_order_id", _S),
        ("taker_order_id", _S), ("last_trade_id", _L), ("best_bid", _S), ("best_ask", _S),
        ("best_bid_size", _S), ("best_ask_size", _S), ("open_24h", _S), ("high_24h", _S),
        ("low_24h", _S), ("volume_24h", _S), ("volume_30d", _S), ("last_size", _S),
        ("message", _S), ("reason", _S), ("channels", T.ArrayType(_S)), (CORRUPT, _S),
    ]]
)  # fmt: skip

#: One trade of a REST page (GET /products/{id}/trades), and the page as our backfill wraps it.
REST_TRADE_FIELDS = ("trade_id", "side", "size", "price", "time")
REST_SCHEMA = T.StructType(
    [
        T.StructField("product_id", _S),
        T.StructField(
            "trades",
            T.ArrayType(
                T.StructType(
                    [T.StructField(n, _L if n == "trade_id" else _S) for n in REST_TRADE_FIELDS]
                )
            ),
        ),
        T.StructField(CORRUPT, _S),
    ]
)
#: A gap record (sources/backfill.py); the missing ids are required but may be null.
GAP_SCHEMA = T.StructType(
    [T.StructField(name, kind) for name, kind in [
        ("product_id", _S), ("kind", _S), ("detected_at", _S), ("first_missing_id", _L),
        ("last_missing_id", _L), ("missing", _L), ("backfilled", _L), ("outcome", _S),
        (CORRUPT, _S),
    ]]
)  # fmt: skip
GAP_NULLABLE = ("first_missing_id", "last_missing_id")

KNOWN_TYPES = (
    "match", "last_match", "ticker", "heartbeat", "subscriptions", "error", "rest_trades", "gap"
)  # fmt: skip
REQUIRED = {
    "match": ("trade_id", "side", "size", "price", "product_id", "time"),
    "last_match": ("trade_id", "side", "size", "price", "product_id", "time"),
    "ticker": ("product_id", "sequence", "price", "time"),
    "heartbeat": ("product_id", "last_trade_id", "sequence", "time"),
}
TICKER_AMOUNTS = (
    "best_bid", "best_ask", "best_bid_size", "best_ask_size", "last_size",
    "open_24h", "high_24h", "low_24h", "volume_24h", "volume_30d",
)  # fmt: skip
_TIME_RE = r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})?$"
_PLAIN = r"^[0-9]+(\.[0-9]+)?$"


def _header(name: str) -> Column:
    """A Kafka header's value as text (the first one with that key), or null."""
    found = F.filter("headers", lambda h: h["key"] == F.lit(name))
    return F.when(F.size(found) > 0, found[0]["value"].cast("string"))


def frames(records: DataFrame, topic_prefix: str) -> DataFrame:
    """Kafka rows -> the RawFrame columns the embedded consumer builds (bus/kafka.py)."""
    recv_seq = _header("recv_seq")
    recv_ns = _header("recv_ns")
    return records.select(
        F.expr(f"substring(topic, {len(topic_prefix) + 1})").alias("exchange"),
        F.coalesce(
            _header("conn_id"), F.concat(F.lit("kafka-"), F.col("partition").cast("string"))
        ).alias("conn_id"),
        F.coalesce(recv_seq.try_cast("long"), F.col("offset")).alias("recv_seq"),
        F.coalesce(recv_ns.try_cast("long"), F.unix_millis(F.col("timestamp")) * 1_000_000).alias(
            "recv_ns"
        ),
        F.col("value").cast("string").alias("text"),
        F.col("partition"),
        F.col("offset"),
    )


def _quote(col: Column) -> Column:
    return F.concat(F.lit("'"), col, F.lit("'"))


def _amount_error(m: Column, name: str, allow_zero: bool) -> Column:
    """Null when the decimal text is acceptable, else the codec's reason (_check_amount)."""
    text = m[name]
    whole = F.regexp_extract(text, r"^([^.]*)", 1)
    frac = F.regexp_extract(text, r"^[^.]*\.(.*)$", 1)
    zero = F.regexp_replace(text, r"[0.]", "") == ""
    not_plain = F.concat(F.lit(f"{name} is not a plain non-negative decimal: "), _quote(text))
    if not allow_zero:
        negative = F.concat(F.lit(f"{name} must be > 0, got "), text)
        not_plain = F.when(text.startswith("-"), negative).otherwise(not_plain)
    too_precise = F.concat(F.lit(f"{name} has more than {SCALE} decimal places: "), text)
    too_large = F.concat(F.lit(f"{name} is absurdly large: "), text)
    checks = (
        F.when(~text.rlike(_PLAIN), not_plain)
        .when(F.length(frac) > SCALE, too_precise)
        .when(F.length(F.regexp_replace(whole, "^0+", "")) > MAX_INTEGER_DIGITS, too_large)
    )
    if not allow_zero:
        checks = checks.when(zero, F.concat(F.lit(f"{name} must be > 0, got "), text))
    return F.when(text.isNotNull(), checks)


def _event_time(m: Column) -> Column:
    """Exchange time in UTC, rounded to microseconds as msgspec does."""
    return _timestamp(m["time"])


def _timestamp(text: Column) -> Column:
    """An RFC 3339 time as msgspec reads it: UTC, rounded to microseconds."""
    ts = F.try_to_timestamp(text)
    seventh = F.regexp_extract(text, r"\.\d{6}(\d)", 1)
    return F.when(seventh >= F.lit("5"), ts + F.expr("INTERVAL 1 MICROSECOND")).otherwise(ts)


def _bad_time(text: Column) -> Column:
    """True when msgspec would not read the text as a datetime."""
    return ~text.rlike(_TIME_RE) | F.try_to_timestamp(text).isNull()


def _iso(ts: Column) -> Column:
    """datetime.isoformat() of a UTC time (microseconds only when non-zero)."""
    micros = F.unix_micros(ts) % 1_000_000
    frac = F.when(micros != 0, F.concat(F.lit("."), F.lpad(micros.cast("string"), 6, "0")))
    return F.concat(
        F.date_format(ts, "yyyy-MM-dd'T'HH:mm:ss"), F.coalesce(frac, F.lit("")), F.lit("+00:00")
    )


def _decode_error(m: Column, text: Column, rest: Column, gap: Column) -> Column:
    """What msgspec would refuse: not JSON, no string type, unknown type, missing fields
    (`rest` and `gap` are the frame parsed with the schema of those two kinds)."""
    kind = m["type"]
    ends_as_object = text.rlike(r"\}[ \t\r\n]*$")  # Spark ignores text after the object
    error = F.when(
        m.isNull() | (m[CORRUPT].isNotNull() & kind.isNull()) | ~ends_as_object,
        F.lit("invalid JSON"),
    )
    error = error.when(kind.isNull(), F.lit("not a message object with a string 'type'"))
    error = error.when(
        ~kind.isin(*KNOWN_TYPES), F.concat(F.lit("unknown message type "), _quote(kind))
    )
    for name, fields in REQUIRED.items():
        for field in fields:
            error = error.when(
                (kind == name) & m[field].isNull() & m[CORRUPT].isNull(),
                F.lit(f"bad {name} message: Object missing required field `{field}`"),
            )
    typed = ("match", "last_match", "ticker", "heartbeat", "subscriptions")
    error = error.when(
        kind.isin(*typed) & m[CORRUPT].isNotNull(),
        F.concat(F.lit("bad "), kind, F.lit(" message: a field has the wrong JSON type")),
    )
    error = error.when(
        kind.isin(*REQUIRED) & _bad_time(m["time"]),
        F.concat(F.lit("bad "), kind, F.lit(" message: Invalid RFC3339 encoded datetime")),
    )
    return _gap_decode_error(_rest_decode_error(error, kind, rest), kind, gap, text)


def _rest_decode_error(error: Column, kind: Column, rest: Column) -> Column:
    page = kind == "rest_trades"
    bad = "bad rest_trades message: "
    error = error.when(
        page & rest[CORRUPT].isNotNull(), F.lit(bad + "a field has the wrong JSON type")
    )
    for field in ("product_id", "trades"):
        error = error.when(
            page & rest[field].isNull(), F.lit(f"{bad}Object missing required field `{field}`")
        )
    trades = rest["trades"]
    error = error.when(
        page & F.exists(trades, lambda t: t.isNull()), F.lit(bad + "Expected `object`, got `null`")
    )
    for field in REST_TRADE_FIELDS:
        error = error.when(
            page & F.exists(trades, _lacks(field)),
            F.lit(f"{bad}Object missing required field `{field}`"),
        )
    return error.when(
        page & F.exists(trades, lambda t: _bad_time(t["time"])),
        F.lit(bad + "Invalid RFC3339 encoded datetime"),
    )


def _lacks(field: str) -> Callable[[Column], Column]:
    return lambda item: item[field].isNull()


def _gap_decode_error(error: Column, kind: Column, gap: Column, text: Column) -> Column:
    record = kind == "gap"
    bad = "bad gap message: "
    error = error.when(
        record & gap[CORRUPT].isNotNull(), F.lit(bad + "a field has the wrong JSON type")
    )
    keys = F.json_object_keys(text)
    for field in GAP_SCHEMA.names[:-1]:
        absent = ~F.array_contains(keys, field) if field in GAP_NULLABLE else gap[field].isNull()
        error = error.when(record & absent, F.lit(f"{bad}Object missing required field `{field}`"))
    return error.when(
        record & _bad_time(gap["detected_at"]), F.lit(bad + "Invalid RFC3339 encoded datetime")
    )


def _time_error(m: Column, recv_ns: Column) -> Column:
    ts = _event_time(m)
    skew = F.unix_micros(ts) - F.expr("recv_ns div 1000") > int(MAX_SKEW_SECONDS * 1_000_000)
    return F.when(
        ~m["time"].rlike(r"([Zz]|[+-]\d{2}:\d{2})$"),
        F.lit("time has no timezone (expected UTC with Z)"),
    ).when(skew, F.concat(F.lit("time "), _iso(ts), F.lit(" is far in the future of its receipt")))


def _product_error(m: Column) -> Column:
    return F.when(
        ~m["product_id"].rlike(PRODUCT_RE.pattern),
        F.concat(F.lit("invalid product_id "), _quote(m["product_id"])),
    )


def _trade_error(m: Column, recv_ns: Column) -> Column:
    return F.coalesce(_product_error(m), _trade_checks(m, recv_ns))


def _trade_checks(m: Column, recv_ns: Column) -> Column:
    """The codec's `_check_trade`, for a streamed match and for one trade of a REST page."""
    return F.coalesce(
        F.when(
            ~m["side"].isin("buy", "sell"),
            F.concat(F.lit("side must be 'buy' or 'sell', got "), _quote(m["side"])),
        ),
        F.when(
            m["trade_id"] <= 0,
            F.concat(F.lit("trade_id must be positive, got "), m["trade_id"].cast("string")),
        ),
        _amount_error(m, "price", allow_zero=False),
        _amount_error(m, "size", allow_zero=False),
        _time_error(m, recv_ns),
    )


def _rest_error(rest: Column, recv_ns: Column) -> Column:
    """The first unusable trade condemns the whole page (the codec raises on it)."""
    reasons = F.transform(
        rest["trades"],
        lambda t: F.concat(
            F.lit("trade "),
            t["trade_id"].cast("string"),
            F.lit(" of the REST page: "),
            _trade_checks(t, recv_ns),
        ),
    )
    return F.coalesce(_product_error(rest), F.get(F.filter(reasons, lambda r: r.isNotNull()), 0))


def _gap_error(gap: Column) -> Column:
    kind, outcome = gap["kind"], gap["outcome"]
    return F.coalesce(
        _product_error(gap),
        F.when(
            ~kind.isin(*GAP_KINDS) | ~outcome.isin(*GAP_OUTCOMES),
            F.concat(
                F.lit("bad gap record: kind "), _quote(kind), F.lit(", outcome "), _quote(outcome)
            ),
        ),
    )


def _ticker_error(m: Column, recv_ns: Column) -> Column:
    return F.coalesce(
        _product_error(m),
        _amount_error(m, "price", allow_zero=False),
        *(_amount_error(m, name, allow_zero=True) for name in TICKER_AMOUNTS),
        _time_error(m, recv_ns),
    )


def parse(frames_df: DataFrame) -> DataFrame:
    """Frames plus `m` (the parsed message; `rest` and `gap` for those kinds), `kind` and
    `reason` (null when usable)."""
    m, rest, gap, reason = _parse_columns()
    parsed = frames_df.select("*", m.alias("m"))
    parsed = parsed.select("*", rest.alias("rest"), gap.alias("gap"))
    return parsed.withColumn("kind", F.col("m.type")).withColumn("reason", reason)


@functools.cache
def _parse_columns() -> tuple[Column, Column, Column, Column]:
    """The decoding expressions, built once per process (a few thousand JVM calls), not once
    per micro-batch; they refer to columns by name only."""
    options = {"columnNameOfCorruptRecord": CORRUPT}
    m, kind, recv_ns = F.col("m"), F.col("m.type"), F.col("recv_ns")
    parsed_m = F.from_json("text", FRAME_SCHEMA, options)
    parsed_rest = F.when(kind == "rest_trades", F.from_json("text", REST_SCHEMA, options))
    parsed_gap = F.when(kind == "gap", F.from_json("text", GAP_SCHEMA, options))
    rest, gap = F.col("rest"), F.col("gap")
    exchange_error = F.trim(
        F.concat(
            F.lit("exchange error: "),
            F.coalesce(m["message"], F.lit("")),
            F.lit(" "),
            F.coalesce(m["reason"], F.lit("")),
        )
    )
    reason = F.coalesce(
        _decode_error(m, F.col("text"), rest, gap),
        F.when(kind.isin("match", "last_match"), _trade_error(m, recv_ns))
        .when(kind == "ticker", _ticker_error(m, recv_ns))
        .when(kind == "heartbeat", _product_error(m))
        .when(kind == "rest_trades", _rest_error(rest, recv_ns))
        .when(kind == "gap", _gap_error(gap))
        .when(kind == "error", exchange_error),
    )
    return parsed_m, parsed_rest, parsed_gap, reason


def summary(parsed: DataFrame) -> list[Row]:
    """One row per kind (trade, ticker, gap, rejected, other) and product (exchange,
    product_id; null but for trades and tickers): count (of trades for "trade"), dates, and
    the range of event times (unix micros) and ids (trade_id, ticker sequence), to decide
    which rows can be new and to prune reads. A REST page counts as its trades; an empty one
    as "other"."""
    m, rest = F.col("m"), F.col("rest")
    kind = (
        F.when(F.col("reason").isNotNull(), "rejected")
        .when(F.col("kind").isin("match", "last_match"), "trade")
        .when((F.col("kind") == "rest_trades") & (F.size(rest["trades"]) > 0), "trade")
        .when(F.col("kind") == "ticker", "ticker")
        .when(F.col("kind") == "gap", "gap")
        .otherwise("other")
    )
    keyed = kind.isin("trade", "ticker")
    product = F.when(keyed, F.coalesce(rest["product_id"], m["product_id"]))

    def event(time: Column, ident: Column) -> Column:
        return F.struct(time.alias("time"), ident.alias("id"))

    events = (
        F.when(kind == "ticker", F.array(event(_event_time(m), m["sequence"])))
        .when(
            (kind == "trade") & (F.col("kind") == "rest_trades"),
            F.transform(rest["trades"], lambda t: event(_event_time(t), t["trade_id"])),
        )
        .when(kind == "trade", F.array(event(_event_time(m), m["trade_id"])))
    )
    exploded = parsed.select(
        kind.alias("kind"),
        F.when(keyed, F.col("exchange")).alias("exchange"),
        product.alias("product_id"),
        F.explode_outer(events).alias("e"),
    )
    event_time, ident = F.col("e.time"), F.col("e.id")
    return (
        exploded.groupBy("kind", "exchange", "product_id")
        .agg(
            F.count("*").alias("n"),
            F.collect_set(F.to_date(event_time)).alias("dates"),
            F.unix_micros(F.min(event_time)).alias("first_us"),
            F.unix_micros(F.max(event_time)).alias("last_us"),
            F.min(ident).alias("first_id"),
            F.max(ident).alias("last_id"),
        )
        .collect()
    )


def _recv_time(recv_ns: Column) -> Column:
    return F.timestamp_micros(F.expr("recv_ns div 1000"))


def _price(col: Column, spec: LT.TableSpec, name: str) -> Column:
    typ = spec.schema.field(name).type
    return col.cast(T.DecimalType(typ.precision, typ.scale))


def trades(parsed: DataFrame) -> DataFrame:
    """Valid matches and the trades of valid REST pages as silver.trades rows, in Kafka
    order (`_partition`, `_offset`, then `_pos` inside a page); `side` is the taker's
    (Coinbase sends the maker's, on the matches channel and in REST alike)."""
    return _streamed_trades(parsed).unionByName(_rest_trades(parsed))


def _streamed_trades(parsed: DataFrame) -> DataFrame:
    m = F.col("m")
    time = _event_time(m)
    rows = parsed.where(F.col("reason").isNull() & F.col("kind").isin("match", "last_match"))
    return rows.select(
        F.col("exchange"),
        m["product_id"].alias("product_id"),
        m["trade_id"].alias("trade_id"),
        _price(m["price"], LT.TRADES, "price").alias("price"),
        _price(m["size"], LT.TRADES, "size").alias("size"),
        F.when(m["side"] == "buy", "sell").otherwise("buy").alias("side"),
        time.alias("time"),
        _recv_time(F.col("recv_ns")).alias("recv_time"),
        m["sequence"].alias("sequence"),
        m["maker_order_id"].alias("maker_order_id"),
        m["taker_order_id"].alias("taker_order_id"),
        F.col("conn_id"),
        F.to_date(time).alias("date"),
        m["product_id"].alias("venue_symbol"),
        F.col("partition").alias("_partition"),
        F.col("offset").alias("_offset"),
        F.lit(0).alias("_pos"),
    )


def _rest_trades(parsed: DataFrame) -> DataFrame:
    """The codec's `_rest_trade`: no sequence or order ids; receipt and conn_id of the page."""
    rows = parsed.where(F.col("reason").isNull() & (F.col("kind") == "rest_trades")).select(
        "exchange",
        "conn_id",
        "recv_ns",
        "partition",
        "offset",
        F.col("rest.product_id").alias("product_id"),
        F.posexplode("rest.trades").alias("_pos", "t"),
    )
    t = F.col("t")
    time = _event_time(t)
    return rows.select(
        F.col("exchange"),
        F.col("product_id"),
        t["trade_id"].alias("trade_id"),
        _price(t["price"], LT.TRADES, "price").alias("price"),
        _price(t["size"], LT.TRADES, "size").alias("size"),
        F.when(t["side"] == "buy", "sell").otherwise("buy").alias("side"),
        time.alias("time"),
        _recv_time(F.col("recv_ns")).alias("recv_time"),
        F.lit(None).cast(_L).alias("sequence"),
        F.lit(None).cast(_S).alias("maker_order_id"),
        F.lit(None).cast(_S).alias("taker_order_id"),
        F.col("conn_id"),
        F.to_date(time).alias("date"),
        F.col("product_id").alias("venue_symbol"),
        F.col("partition").alias("_partition"),
        F.col("offset").alias("_offset"),
        F.col("_pos").cast("int").alias("_pos"),
    )


def tickers(parsed: DataFrame) -> DataFrame:
    m = F.col("m")
    time = _event_time(m)
    rows = parsed.where(F.col("reason").isNull() & (F.col("kind") == "ticker"))
    amounts = [
        _price(m[name], LT.TICKERS, name).alias(name) for name in ("price", *TICKER_AMOUNTS[:4])
    ]
    stats = [
        _price(m[name], LT.TICKERS, name).alias(name)
        for name in ("open_24h", "high_24h", "low_24h", "volume_24h", "volume_30d")
    ]
    return rows.select(
        F.col("exchange"),
        m["product_id"].alias("product_id"),
        m["sequence"].alias("sequence"),
        *amounts,
        *stats,
        m["side"].alias("side"),
        _price(m["last_size"], LT.TICKERS, "last_size").alias("last_size"),
        m["trade_id"].alias("trade_id"),
        time.alias("time"),
        _recv_time(F.col("recv_ns")).alias("recv_time"),
        F.to_date(time).alias("date"),
        F.col("partition").alias("_partition"),
        F.col("offset").alias("_offset"),
        F.lit(0).alias("_pos"),
    )


def gaps(parsed: DataFrame) -> DataFrame:
    """Valid gap records as bronze.gaps rows (lake/writer.py `gaps_table`): partitioned by
    the date of detection; receipt and conn_id are the frame's."""
    g = F.col("gap")
    detected = _timestamp(g["detected_at"])
    rows = parsed.where(F.col("reason").isNull() & (F.col("kind") == "gap"))
    return rows.select(
        F.col("exchange"),
        g["product_id"].alias("product_id"),
        g["kind"].alias("kind"),
        detected.alias("detected_at"),
        *(g[n].alias(n) for n in ("first_missing_id", "last_missing_id", "missing", "backfilled")),
        g["outcome"].alias("outcome"),
        _recv_time(F.col("recv_ns")).alias("recv_time"),
        F.col("conn_id"),
        F.to_date(detected).alias("date"),
    )


def quarantine(parsed: DataFrame) -> DataFrame:
    recv = _recv_time(F.col("recv_ns"))
    return parsed.where(F.col("reason").isNotNull()).select(
        F.col("exchange").alias("source"),
        "conn_id",
        "recv_seq",
        recv.alias("recv_time"),
        F.col("text").alias("frame"),
        "reason",
        F.to_date(recv).alias("date"),
    )


def bronze(frames_df: DataFrame) -> DataFrame:
    recv = _recv_time(F.col("recv_ns"))
    return frames_df.select(
        F.col("exchange").alias("source"),
        "conn_id",
        "recv_seq",
        recv.alias("recv_time"),
        F.col("text").alias("frame"),
        F.to_date(recv).alias("date"),
    )
