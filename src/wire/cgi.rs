//! What FastCGI and SCGI share: CGI variables in, CGI-style response heads out.

use crate::request::{Head, Request};

/// Builds the routing request from CGI variables (`REQUEST_METHOD`,
/// `REQUEST_URI`, `QUERY_STRING`, `HTTP_LAST_EVENT_ID`, `HTTP_ACCEPT`,
/// `HTTP_AUTHORIZATION`).
/// The path comes from `REQUEST_URI`, else `DOCUMENT_URI`, else
/// `SCRIPT_NAME` + `PATH_INFO` (whatever the web server provides).
pub fn request<'a>(
    params: &[(&'a [u8], &'a [u8])],
    scratch: &'a mut String,
) -> Result<Request<'a>, String> {
    let get = |name: &str| -> Result<Option<&'a str>, String> {
        match params.iter().rev().find(|(k, _)| *k == name.as_bytes()) {
            None => Ok(None),
            Some((_, v)) => std::str::from_utf8(v)
                .map(Some)
                .map_err(|_| format!("CGI variable {name} is not UTF-8")),
        }
    };
    let method = get("REQUEST_METHOD")?.ok_or("REQUEST_METHOD missing")?;
    let (path, uri_query) = match (get("REQUEST_URI")?, get("DOCUMENT_URI")?) {
        (Some(uri), _) => uri.split_once('?').unwrap_or((uri, "")),
        (None, Some(doc)) => (doc, ""),
        (None, None) => {
            scratch.push_str(get("SCRIPT_NAME")?.unwrap_or(""));
            scratch.push_str(get("PATH_INFO")?.unwrap_or(""));
            (scratch.as_str(), "")
        }
    };
    Ok(Request {
        method,
        path,
        query: get("QUERY_STRING")?.unwrap_or(uri_query),
        last_event_id: get("HTTP_LAST_EVENT_ID")?,
        accept: get("HTTP_ACCEPT")?,
        authorization: get("HTTP_AUTHORIZATION")?,
    })
}

/// Appends a CGI response head (`Status:` line, fields, blank line).
pub fn encode_head(head: &Head, out: &mut Vec<u8>) {
    let (code, reason) = head.status.code_reason();
    out.extend_from_slice(format!("Status: {code} {reason}\r\n").as_bytes());
    head.write_fields(out);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::HttpStatus;

    #[test]
    fn maps_cgi_variables() {
        let params: Vec<(&[u8], &[u8])> = vec![
            (b"REQUEST_METHOD", b"GET"),
            (b"REQUEST_URI", b"/comet/alice?transport=poll"),
            (b"QUERY_STRING", b"transport=poll&since=5"),
            (b"HTTP_LAST_EVENT_ID", b"9"),
        ];
        let mut scratch = String::new();
        let r = request(&params, &mut scratch).unwrap();
        assert_eq!(
            (r.method, r.path, r.query, r.last_event_id),
            ("GET", "/comet/alice", "transport=poll&since=5", Some("9"))
        );
    }

    #[test]
    fn falls_back_to_script_name_and_path_info() {
        let params: Vec<(&[u8], &[u8])> = vec![
            (b"REQUEST_METHOD", b"GET"),
            (b"SCRIPT_NAME", b"/comet"),
            (b"PATH_INFO", b"/bob"),
        ];
        let mut scratch = String::new();
        assert_eq!(request(&params, &mut scratch).unwrap().path, "/comet/bob");
        let params: Vec<(&[u8], &[u8])> = vec![(b"REQUEST_URI", b"/x")];
        assert!(
            request(&params, &mut String::new())
                .unwrap_err()
                .contains("REQUEST_METHOD")
        );
        let params: Vec<(&[u8], &[u8])> = vec![(b"REQUEST_METHOD", b"\xff")];
        assert!(request(&params, &mut String::new()).is_err());
    }

    #[test]
    fn cgi_head() {
        let mut out = vec![];
        encode_head(
            &Head::sized(HttpStatus::TooManyRequests, "text/plain", 2),
            &mut out,
        );
        let s = String::from_utf8(out).unwrap();
        assert!(s.starts_with("Status: 429 Too Many Requests\r\nContent-Type: text/plain\r\n"));
        assert!(s.ends_with("Content-Length: 2\r\n\r\n"));
    }
}
