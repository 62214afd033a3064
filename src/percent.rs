//! Percent-decoding of URL parts (room names in paths, query parameters):
//! shared by the driver's routing and `auth`, below both.

use std::borrow::Cow;

/// The value of `name` in a query string, percent-decoded (`+` is a space).
/// `Some(None)` when present but not valid percent-encoded UTF-8.
pub fn query_param(query: Option<&str>, name: &str) -> Option<Option<String>> {
    let query = query?;
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| percent_decode(&v.replace('+', " ")).map(Cow::into_owned))
    })
}

/// Decode `%XX` escapes; `None` if an escape is broken or the result is not UTF-8.
pub fn percent_decode(s: &str) -> Option<Cow<'_, str>> {
    if !s.contains('%') {
        return Some(Cow::Borrowed(s));
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok().map(Cow::Owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_params_are_decoded() {
        assert_eq!(
            query_param(Some("a=1&user=al%20ice"), "user"),
            Some(Some("al ice".into()))
        );
        assert_eq!(
            query_param(Some("user=a+b"), "user"),
            Some(Some("a b".into()))
        );
        assert_eq!(query_param(Some("user=%ff"), "user"), Some(None));
        assert_eq!(query_param(Some("x=1"), "user"), None);
        assert_eq!(query_param(None, "user"), None);
    }
}
