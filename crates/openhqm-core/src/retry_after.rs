//! `Retry-After` (RFC 9110 §10.2.3), read alike by the forwarder and the
//! callback dispatcher.

use std::time::{Duration, SystemTime};

/// Parses `Retry-After`: delay-seconds, or an HTTP-date (a date in the past
/// means "now"). Anything else is ignored.
#[must_use]
pub fn parse(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_or_a_date() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777);
        assert_eq!(parse(" 7 ", now), Some(Duration::from_secs(7)));
        // 784111777 is Sun, 06 Nov 1994 08:49:37 GMT.
        let later = "Sun, 06 Nov 1994 08:49:43 GMT";
        assert_eq!(parse(later, now), Some(Duration::from_secs(6)));
        let earlier = "Sun, 06 Nov 1994 08:49:00 GMT";
        assert_eq!(parse(earlier, now), Some(Duration::ZERO));
        assert_eq!(parse("soon", now), None);
        assert_eq!(parse("-1", now), None);
    }
}
