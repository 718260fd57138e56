//! Time as the exchange stores and sends it: microseconds since the Unix epoch in records and
//! audit entries, protobuf `Timestamp`s on the wire.

/// The current time in microseconds since the Unix epoch, the store's time unit.
pub(crate) fn now_micros() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(now.as_micros()).unwrap_or(i64::MAX)
}

/// A protobuf timestamp from microseconds since the Unix epoch.
pub(crate) fn timestamp(micros: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: micros.div_euclid(1_000_000),
        nanos: (micros.rem_euclid(1_000_000) * 1_000) as i32,
    }
}
