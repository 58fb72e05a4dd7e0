//! Paths a caller chooses below a configured base path.
//!
//! A forward appends the caller's path to the endpoint's, and the endpoint's
//! credentials go with it: the caller may pick a resource below the base
//! path, never climb out to another one. Shared by the forwarder (on the
//! joined URL) and the sidecar ingress (on the request path, refused with 400
//! before anything is queued).

/// Whether `path` is `base` or below it once its dot segments are walked:
/// `.` and `..`, written as such or with `%2e`, and with `\`, `%2F` and `%5C`
/// taken as separators too, since a server may decode an encoded separator
/// before it resolves dot segments (`..%2F..%2Fadmin`). An encoded slash
/// inside a name (`group%2Fproject`) stays a name.
#[must_use]
pub fn within(base: &str, path: &str) -> bool {
    let base = base.trim_end_matches('/');
    let Some(rest) = path.strip_prefix(base) else {
        return false;
    };
    if !(rest.is_empty() || rest.starts_with('/')) {
        return false;
    }
    let mut depth = 0usize;
    for piece in rest.split('/').flat_map(split_encoded_separators) {
        match dot_segment(piece) {
            Some(2) => match depth.checked_sub(1) {
                Some(d) => depth = d,
                None => return false,
            },
            // Empty pieces add no depth: a server may merge `//`.
            Some(_) => {}
            None if piece.is_empty() => {}
            None => depth += 1,
        }
    }
    true
}

/// A segment's pieces between encoded separators (`%2F`, `%5C`, any case)
/// and backslashes.
fn split_encoded_separators(segment: &str) -> Vec<&str> {
    let bytes = segment.as_bytes();
    let mut pieces = Vec::new();
    let (mut start, mut i) = (0, 0);
    while i < bytes.len() {
        let sep = match bytes[i] {
            b'\\' => 1,
            b'%' if bytes.len() >= i + 3
                && (bytes[i + 1..i + 3].eq_ignore_ascii_case(b"2f")
                    || bytes[i + 1..i + 3].eq_ignore_ascii_case(b"5c")) =>
            {
                3
            }
            _ => 0,
        };
        if sep == 0 {
            i += 1;
        } else {
            pieces.push(&segment[start..i]);
            i += sep;
            start = i;
        }
    }
    pieces.push(&segment[start..]);
    pieces
}

/// `Some(1)` for `.`, `Some(2)` for `..`, with dots as `.` or `%2e`, and
/// with any path parameter after `;` ignored (`..;x`), as servlet
/// containers read it.
fn dot_segment(piece: &str) -> Option<usize> {
    let piece = piece.split(';').next().unwrap_or(piece);
    let decoded = piece.to_ascii_lowercase().replace("%2e", ".");
    match decoded.as_str() {
        "." => Some(1),
        ".." => Some(2),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::within;

    #[test]
    fn only_a_climb_out_of_the_base_is_refused() {
        for (base, path, inside) in [
            ("/api", "/api/orders/7", true),
            ("/api/", "/api", true),
            ("/api", "/apiv2/x", false),
            ("/api", "/other", false),
            ("/", "/a/../b", true),
            ("/", "/../admin", false),
            ("/", "/a/%2e%2e/%2E%2E/x", false),
            ("/", "/..%2F..%2Fadmin", false),
            ("/", "/a%5C..%5C..%5Cb", false),
            ("/", "/a\\..\\..\\b", false),
            ("/", "/group%2Fproject/issues", true),
            ("/", "/a%2F..%2Fb", true),
            ("/", "/..;/admin", false),
            ("/", "/a/..;jsessionid=1/..;/b", false),
            ("/", "/a;v=1/b", true),
            ("/", "//x/./y", true),
            ("", "/x", true),
        ] {
            assert_eq!(within(base, path), inside, "{base} {path}");
        }
    }
}
