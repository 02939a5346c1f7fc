//! Name validation and size parsing.
//!
//! Names follow Kubernetes: a DNS-1123 label is 1–63 characters of `a-z`,
//! `0-9` and `-`, starting and ending with an alphanumeric. A volume name is
//! either a label (`v1`) or `<app>/<pvc>` where both parts are labels.

use crate::ApiError;

pub const MAX_LABEL_LEN: usize = 63;

/// Checks a DNS-1123 label; `what` names the field in the error.
pub fn check_label(what: &str, name: &str) -> Result<(), ApiError> {
    let problem = if name.is_empty() {
        Some("must not be empty".to_owned())
    } else if name.len() > MAX_LABEL_LEN {
        Some(format!("must be at most {MAX_LABEL_LEN} characters"))
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        Some("may contain only lowercase letters, digits and '-'".to_owned())
    } else if name.starts_with('-') || name.ends_with('-') {
        Some("must start and end with a letter or digit".to_owned())
    } else {
        None
    };
    match problem {
        None => Ok(()),
        Some(problem) => Err(ApiError::invalid(format!(
            "{what} {name:?} is not a valid name: it {problem}"
        ))
        .with_details(serde_json::json!({ "field": what, "value": name }))),
    }
}

/// Checks a volume name: `label` or `label/label`.
pub fn check_volume_name(name: &str) -> Result<(), ApiError> {
    match name.split_once('/') {
        None => check_label("volume", name),
        Some((app, pvc)) => {
            check_label("app", app)?;
            check_label("volume", pvc)
        }
    }
}

/// Parses a size: a plain byte count (`1048576`) or a number with a binary
/// unit (`512K`, `1G`, `10Gi`, `1T`). `G` and `Gi` both mean 2^30.
pub fn parse_size(text: &str) -> Result<u64, ApiError> {
    let bad = || {
        ApiError::invalid(format!(
            "size {text:?} is not a size like 10G, 512Mi or 1048576"
        ))
    };
    let text = text.trim();
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(digits_end);
    let number: u64 = digits.parse().map_err(|_| bad())?;
    let shift = match unit
        .trim_end_matches(['i', 'B'])
        .to_ascii_uppercase()
        .as_str()
    {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        "P" => 50,
        _ => return Err(bad()),
    };
    number.checked_mul(1u64 << shift).ok_or_else(bad)
}

/// Formats bytes with a binary unit, for people: `1.0 GiB`.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_follow_dns_1123() {
        assert!(check_label("volume", "v1").is_ok());
        assert!(check_label("volume", "data-db-0").is_ok());
        for bad in ["", "V1", "-a", "a-", "a_b", "a.b", &"a".repeat(64)] {
            assert!(
                check_label("volume", bad).is_err(),
                "{bad:?} should be refused"
            );
        }
        assert!(check_volume_name("shop/data-db-0").is_ok());
        assert!(check_volume_name("shop/").is_err());
        assert!(check_volume_name("a/b/c").is_err());
    }

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_size("1G").unwrap(), 1 << 30);
        assert_eq!(parse_size("10Gi").unwrap(), 10 << 30);
        assert_eq!(parse_size("512M").unwrap(), 512 << 20);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("1TiB").unwrap(), 1 << 40);
        assert!(parse_size("ten").is_err());
        assert!(parse_size("1X").is_err());
        assert!(parse_size("99999999999P").is_err());
        assert_eq!(format_size(1 << 30), "1.0 GiB");
    }
}
