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
    for piece in pieces(rest) {
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

/// The pieces of `path` between separators: `/`, `\`, and `%2F` or `%5C`
/// in any case. Borrowed, not collected: every forward checks its path.
fn pieces(path: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(path);
    std::iter::from_fn(move || {
        let s = rest?;
        let bytes = s.as_bytes();
        for i in 0..bytes.len() {
            let len = separator_len(&bytes[i..]);
            if len > 0 {
                // Separators are ASCII: both ends are on char boundaries.
                rest = Some(&s[i + len..]);
                return Some(&s[..i]);
            }
        }
        rest = None;
        Some(s)
    })
}

/// The length of the separator `bytes` starts with; 0 if none.
fn separator_len(bytes: &[u8]) -> usize {
    match bytes {
        [b'/' | b'\\', ..] => 1,
        [b'%', b'2', l, ..] if l.eq_ignore_ascii_case(&b'f') => 3,
        [b'%', b'5', l, ..] if l.eq_ignore_ascii_case(&b'c') => 3,
        _ => 0,
    }
}

/// `Some(1)` for `.`, `Some(2)` for `..`, with dots as `.` or `%2e` (any
/// case), and with any path parameter after `;` ignored (`..;x`), as
/// servlet containers read it.
fn dot_segment(piece: &str) -> Option<usize> {
    let mut name = piece.split(';').next().unwrap_or(piece).as_bytes();
    let mut dots = 0;
    while !name.is_empty() {
        name = match name {
            [b'.', rest @ ..] => rest,
            [b'%', b'2', e, rest @ ..] if e.eq_ignore_ascii_case(&b'e') => rest,
            _ => return None,
        };
        dots += 1;
    }
    matches!(dots, 1 | 2).then_some(dots)
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
            ("/", "/a/.%2E/../x", false),
            ("/", "/%2e%2e%2fadmin", false),
            ("/", "/a/.../b", true),
            ("/", "/a/%2e%2e%2e/b", true),
            ("/", "/a%2", true),
            ("/", "/a/b%5c", true),
        ] {
            assert_eq!(within(base, path), inside, "{base} {path}");
        }
    }
}
