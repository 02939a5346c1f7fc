//! Bounds on YAML text from outside, checked before a YAML parser sees it.
//!
//! The YAML parser under `serde_yaml_ng` takes time quadratic in the depth of
//! nested flow collections after a key (`a: [[[[…`: 100 KB took 26 s in a
//! release build, on the gateway's behalf of every tenant). Kubernetes
//! manifests and workflow definitions never nest deeply, and `serde_yaml_ng`
//! refuses more than 128 levels anyway, after parsing. So the depth of
//! `[`/`{` nesting is counted first, in one linear pass, and text deeper
//! than [`MAX_FLOW_DEPTH`] is refused before it is parsed.
//!
//! The count skips quoted scalars and comments on a line; brackets inside
//! block scalars (`|`, `>`) are counted, so a block scalar with many
//! unclosed brackets is refused too (a false refusal, never a slow parse).

use crate::ApiError;

/// Deepest flow-collection nesting accepted.
pub const MAX_FLOW_DEPTH: usize = 128;

/// Refuses YAML whose flow collections nest deeper than [`MAX_FLOW_DEPTH`].
pub fn check_nesting(what: &str, text: &str) -> Result<(), ApiError> {
    let mut depth: usize = 0;
    let mut quote: Option<u8> = None;
    let mut previous = b'\n';
    let mut in_comment = false;
    for &byte in text.as_bytes() {
        if byte == b'\n' {
            // Quoted scalars may span lines; comments end here.
            in_comment = false;
            previous = byte;
            continue;
        }
        if in_comment {
            continue;
        }
        match quote {
            Some(q) => {
                if byte == q {
                    quote = None;
                }
            }
            None => match byte {
                b'#' if previous.is_ascii_whitespace() => in_comment = true,
                b'"' | b'\''
                    if matches!(previous, b' ' | b'\t' | b'\n' | b'[' | b'{' | b',' | b':') =>
                {
                    quote = Some(byte)
                }
                b'[' | b'{' => {
                    depth += 1;
                    if depth > MAX_FLOW_DEPTH {
                        return Err(ApiError::invalid(format!(
                            "{what} nests [ or {{ more than {MAX_FLOW_DEPTH} deep"
                        )));
                    }
                }
                b']' | b'}' => depth = depth.saturating_sub(1),
                _ => {}
            },
        }
        previous = byte;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deep_flow_nesting_is_refused_before_parsing() {
        let deep = format!("a: {}", "[".repeat(100_000));
        let e = check_nesting("manifest", &deep).unwrap_err();
        assert!(e.message.contains("more than 128 deep"), "{}", e.message);
        let deep_maps = format!("a: {}", "{".repeat(MAX_FLOW_DEPTH + 1));
        assert!(check_nesting("manifest", &deep_maps).is_err());
    }

    #[test]
    fn ordinary_yaml_passes() {
        let ok = format!(
            "a: {}{}\nb: \"[[[[\"\nc: '{{{{{{'\n# [[[[[[[[\nd: [1, [2, {{e: 3}}]]\n",
            "[".repeat(MAX_FLOW_DEPTH),
            "]".repeat(MAX_FLOW_DEPTH)
        );
        check_nesting("manifest", &ok).unwrap();
        let many_balanced = "x: [1]\n".repeat(10_000);
        check_nesting("manifest", &many_balanced).unwrap();
        // Brackets in quotes and comments do not count.
        let quoted = format!("x: \"{}\"\n# {}\n", "[".repeat(500), "{".repeat(500));
        check_nesting("manifest", &quoted).unwrap();
    }
}
