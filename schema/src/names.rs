//! Name validation and size parsing.
//!
//! Names follow Kubernetes: a DNS-1123 label is 1–63 characters of `a-z`,
//! `0-9` and `-`, starting and ending with an alphanumeric. A volume name is
//! either a label (`v1`) or `<app>/<pvc>` where both parts are labels.
//!
//! One size syntax for every size: [`parse_quantity`], Kubernetes' resource
//! quantity, where `G` is 10^9 and `Gi` 2^30. PVC sizes, topology
//! capacities and the CLI's `--size` (`volume create`) all go through it, so
//! a manifest that Kubernetes accepts means the same bytes here, and a size
//! means the same bytes whether a person or a manifest wrote it.
//!
//! [`SLICE_BYTES`] is the control plane's slice (placement's unit);
//! [`slices_of`] is how many a volume of a size has. The block engine's own
//! `cairn_blocks::SLICE_BYTES` must equal it (a compile-time assert in
//! `cairn-actors`, the crate that sees both, checks it).

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

/// Bytes in a slice: the unit a volume is placed in (a volume of `n`
/// bytes has [`slices_of`]`(n)` slices, the last one maybe partial). 1 GiB.
pub const SLICE_BYTES: u64 = 1 << 30;

/// The number of slices a volume of `size_bytes` spans.
pub const fn slices_of(size_bytes: u64) -> u64 {
    size_bytes.div_ceil(SLICE_BYTES)
}

/// Largest number of significant digits [`parse_quantity`] reads; more than
/// that cannot be a byte count that fits in 64 bits anyway.
const MAX_QUANTITY_DIGITS: usize = 30;

/// Parses a Kubernetes resource quantity as a byte count: a decimal number
/// (`40`, `1.5`, `+2`) followed by a binary suffix (`Ki Mi Gi Ti Pi Ei`), a
/// decimal suffix (`k M G T P E`) or a decimal exponent (`1e3`, `5E-1`), or
/// nothing. As in Kubernetes, a fraction of a byte rounds up (`1.5` is 2) and
/// `G` means 10^9, not 2^30. Negative values, milli (`m`) and anything that
/// does not fit in a `u64` are refused.
pub fn parse_quantity(text: &str) -> Result<u64, ApiError> {
    let bad = |why: &str| {
        ApiError::invalid(format!(
            "quantity {text:?} is not a byte count like 40Gi, 500Mi, 10G or 1073741824: {why}"
        ))
        .with_details(serde_json::json!({ "field": "quantity", "value": text }))
    };
    let body = text.trim();
    let body = body.strip_prefix('+').unwrap_or(body);
    if body.starts_with('-') {
        return Err(bad("it is negative"));
    }
    let number_end = body
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(body.len());
    let (number, suffix) = body.split_at(number_end);
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() {
        return Err(bad("it has no number"));
    }
    if fraction.contains('.') {
        return Err(bad("it has two decimal points"));
    }
    // The value is digits × 10^exp10 × 2^exp2.
    let digits = format!("{whole}{fraction}");
    let digits = digits.trim_start_matches('0');
    if digits.len() > MAX_QUANTITY_DIGITS {
        return Err(bad("it is too large"));
    }
    let mantissa: u128 = if digits.is_empty() {
        0
    } else {
        digits.parse().map_err(|_| bad("the number is malformed"))?
    };
    let mut exp10: i64 = -(fraction.len() as i64);
    let mut exp2: u32 = 0;
    match suffix {
        "" => {}
        "Ki" => exp2 = 10,
        "Mi" => exp2 = 20,
        "Gi" => exp2 = 30,
        "Ti" => exp2 = 40,
        "Pi" => exp2 = 50,
        "Ei" => exp2 = 60,
        "k" => exp10 += 3,
        "M" => exp10 += 6,
        "G" => exp10 += 9,
        "T" => exp10 += 12,
        "P" => exp10 += 15,
        "E" => exp10 += 18,
        "m" => return Err(bad("milli (m) is not a whole number of bytes")),
        _ => match suffix
            .strip_prefix(['e', 'E'])
            .map(|e| e.strip_prefix('+').unwrap_or(e))
        {
            Some(exponent)
                if !exponent.is_empty()
                    && exponent.len() <= 4
                    && exponent
                        .strip_prefix('-')
                        .unwrap_or(exponent)
                        .bytes()
                        .all(|b| b.is_ascii_digit()) =>
            {
                exp10 += exponent
                    .parse::<i64>()
                    .map_err(|_| bad("the exponent is malformed"))?;
            }
            _ => {
                return Err(bad(
                    "the unit must be one of Ki Mi Gi Ti Pi Ei k M G T P E or an exponent like e3",
                ));
            }
        },
    }
    let too_large = || bad("it does not fit in 64 bits");
    let scaled = mantissa.checked_shl(exp2).filter(|v| v >> exp2 == mantissa);
    let scaled = scaled.ok_or_else(too_large)?;
    let bytes = if mantissa == 0 {
        0
    } else if exp10 >= 0 {
        let power = u32::try_from(exp10)
            .ok()
            .and_then(|e| 10u128.checked_pow(e))
            .ok_or_else(too_large)?;
        scaled.checked_mul(power).ok_or_else(too_large)?
    } else {
        match u32::try_from(-exp10)
            .ok()
            .and_then(|e| 10u128.checked_pow(e))
        {
            Some(power) => scaled.div_ceil(power),
            // Smaller than a byte, but not zero: one byte, as Kubernetes rounds up.
            None => 1,
        }
    };
    u64::try_from(bytes).map_err(|_| too_large())
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
    fn slices_round_up() {
        assert_eq!(slices_of(0), 0);
        assert_eq!(slices_of(1), 1);
        assert_eq!(slices_of(SLICE_BYTES), 1);
        assert_eq!(slices_of(SLICE_BYTES + 1), 2);
        assert_eq!(format_size(1 << 30), "1.0 GiB");
    }

    #[test]
    fn quantities_follow_kubernetes() {
        let cases: &[(&str, u64)] = &[
            ("40Gi", 40 << 30),
            ("500Mi", 500 << 20),
            ("1Ti", 1 << 40),
            ("64Ki", 64 << 10),
            ("2Pi", 2 << 50),
            ("1Ei", 1 << 60),
            ("10G", 10_000_000_000),
            ("1k", 1000),
            ("3M", 3_000_000),
            ("2T", 2_000_000_000_000),
            ("1P", 1_000_000_000_000_000),
            ("1E", 1_000_000_000_000_000_000),
            ("1.5Gi", 3 << 29),
            ("0.5Ki", 512),
            (".5Ki", 512),
            ("1.", 1),
            ("1073741824", 1 << 30),
            ("+7", 7),
            (" 8Gi ", 8 << 30),
            ("0", 0),
            ("0Gi", 0),
            ("1e3", 1000),
            ("1E3", 1000),
            ("1e+3", 1000),
            ("25e-1", 3),
            ("1.5", 2),
            ("0.001", 1),
            ("1e-999", 1),
            ("0.1Ki", 103),
        ];
        for (text, want) in cases {
            assert_eq!(parse_quantity(text).unwrap(), *want, "{text:?}");
        }
        assert_eq!(parse_quantity("18446744073709551615").unwrap(), u64::MAX);
        for bad in [
            "",
            "Gi",
            "-1Gi",
            "1X",
            "1K",
            "1gi",
            "10 Gi",
            "1.2.3",
            "1m",
            "16Ei",
            "18446744073709551616",
            "1e",
            "1e1000",
            "1e3Gi",
            "99999999999999999999999999999999",
            "0x10",
            "1,5Gi",
        ] {
            let err = parse_quantity(bad).expect_err(bad);
            assert!(err.message.contains(&format!("{bad:?}")), "{err}");
        }
    }

    proptest::proptest! {
        #[test]
        fn quantity_never_panics(text in "\\PC{0,24}") {
            let _ = parse_quantity(&text);
        }

        #[test]
        fn quantity_units_scale(n in 0u64..1 << 20, frac in 0u64..10) {
            proptest::prop_assert_eq!(parse_quantity(&format!("{n}Gi")).unwrap(), n << 30);
            proptest::prop_assert_eq!(parse_quantity(&format!("{n}G")).unwrap(), n * 1_000_000_000);
            proptest::prop_assert_eq!(parse_quantity(&format!("{n}.{frac}Ki")).unwrap(), (n * 10240 + frac * 1024).div_ceil(10));
            proptest::prop_assert_eq!(parse_quantity(&n.to_string()).unwrap(), n);
        }
    }
}
