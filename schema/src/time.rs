//! Journal timestamps (milliseconds since the Unix epoch) as RFC 3339, both
//! ways, through the `time` crate: impossible dates such as `2024-02-31` are
//! refused, and any input text is handled without panicking. Pure: the clock
//! is read elsewhere.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// `1700000000123` → `2023-11-14T22:13:20.123Z` (UTC, always three
/// fraction digits, so the text sorts like the number).
pub fn format_rfc3339_ms(ms: u64) -> String {
    let nanos = i128::from(ms) * 1_000_000;
    match OffsetDateTime::from_unix_timestamp_nanos(nanos) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            t.millisecond()
        ),
        // Beyond year 9999: not a time the journal writes; say so plainly.
        Err(_) => format!("{ms}ms"),
    }
}

/// Parses an RFC 3339 instant (`2023-11-14T22:13:20.123Z`, or with an
/// offset such as `+02:00`) into epoch milliseconds; fractions finer than a
/// millisecond are truncated. `None` for anything else, including instants
/// before 1970.
pub fn parse_rfc3339_ms(text: &str) -> Option<u64> {
    let t = OffsetDateTime::parse(text.trim(), &Rfc3339).ok()?;
    u64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_instants_round_trip() {
        assert_eq!(format_rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            format_rfc3339_ms(1_700_000_000_123),
            "2023-11-14T22:13:20.123Z"
        );
        assert_eq!(
            parse_rfc3339_ms("2023-11-14T22:13:20.123Z"),
            Some(1_700_000_000_123)
        );
        assert_eq!(
            parse_rfc3339_ms("2024-02-29T00:00:00Z"),
            Some(1_709_164_800_000)
        );
        assert_eq!(
            parse_rfc3339_ms("2023-11-15T00:13:20.123+02:00"),
            Some(1_700_000_000_123)
        );
    }

    #[test]
    fn impossible_or_malformed_instants_are_refused() {
        for bad in [
            "2024-02-31T00:00:00Z",
            "2023-02-29T00:00:00Z",
            "2024-13-01T00:00:00Z",
            "2024-01-01T24:00:00Z",
            "2024-01-01T00:00:00",
            "1969-12-31T23:59:59Z",
            "2024-01-01T00:00:00.éZ",
            "2024-01-01T00:00:00.1٣Z",
            "yesterday",
            "",
        ] {
            assert_eq!(parse_rfc3339_ms(bad), None, "{bad}");
        }
    }

    proptest::proptest! {
        #[test]
        fn format_then_parse_is_identity(ms in 0u64..8_000_000_000_000) {
            proptest::prop_assert_eq!(parse_rfc3339_ms(&format_rfc3339_ms(ms)), Some(ms));
        }

        #[test]
        fn parse_never_panics(text in "\\PC{0,40}") {
            let _ = parse_rfc3339_ms(&text);
        }
    }
}
