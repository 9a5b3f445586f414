//! The system's wall clock as this project reads and writes it: milliseconds since the Unix
//! epoch, and UTC text. For displays, ages, log records and file stamps; what apply decides on
//! is the leader's stamped time (`crate::master::Proposer::now_ms`), never this.

use std::time::{SystemTime, UNIX_EPOCH};

use time::OffsetDateTime;

/// Milliseconds since the Unix epoch (0 if the clock reads before it).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
        })
}

/// The UTC moment `ms` after the epoch, if the calendar can name it (year ≤ 9999).
pub fn utc(ms: u64) -> Option<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()
}

/// RFC 3339 in UTC with milliseconds, as log records carry it: `2026-11-26T05:00:00.123Z`.
/// Past year 9999 the raw count is written instead.
pub fn rfc3339_ms(ms: u64) -> String {
    match utc(ms) {
        Some(at) => format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            at.year(),
            u8::from(at.month()),
            at.day(),
            at.hour(),
            at.minute(),
            at.second(),
            at.millisecond()
        ),
        None => format!("{ms} ms after the Unix epoch"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_timestamps_are_rfc3339_utc_with_milliseconds() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(1_795_669_200_123), "2026-11-26T05:00:00.123Z");
        assert_eq!(rfc3339_ms(951_782_400_009), "2000-02-29T00:00:00.009Z");
        assert_eq!(rfc3339_ms(253_402_300_799_999), "9999-12-31T23:59:59.999Z");
        assert_eq!(
            rfc3339_ms(253_402_300_800_000),
            "253402300800000 ms after the Unix epoch"
        );
    }

    #[test]
    fn now_is_after_this_code_was_written() {
        assert!(now_ms() > 1_795_669_200_000);
    }
}
