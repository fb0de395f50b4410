//! The one request model every gateway maps onto, and the routing rules.
//!
//! HTTP, FastCGI and SCGI carry the same few facts in different shapes: the
//! method, the path, the query, `Last-Event-ID` and `Accept`. Each gateway
//! extracts a [`Request`]; [`route`] turns it into a [`Route`] (which mailbox,
//! which transport, where to resume) or a [`Rejection`]. Response heads are
//! described once ([`Head`]) and rendered by each gateway in its own syntax.

use crate::name;
use crate::wire::transport::Transport;

/// The routing-relevant facts of one client request.
#[derive(Debug, Clone, Copy, Default)]
pub struct Request<'a> {
    /// `GET`, `POST`, ...
    pub method: &'a str,
    /// The URL path (no query); its last segment names the mailbox.
    pub path: &'a str,
    /// The raw query string, without `?`.
    pub query: &'a str,
    /// The `Last-Event-ID` header.
    pub last_event_id: Option<&'a str>,
    /// The `Accept` header (informational: SSE is the default anyway).
    pub accept: Option<&'a str>,
    /// The `Authorization` header (a `Bearer` token opens a mailbox).
    pub authorization: Option<&'a str>,
}

/// Where a valid request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The mailbox to open.
    pub mailbox: String,
    /// How to send messages.
    pub transport: Transport,
    /// Send only messages with a greater id; `None`: everything retained.
    pub resume: Option<u64>,
    /// The access token presented (`?token=`, else `Authorization: Bearer`).
    pub token: Option<String>,
}

/// The HTTP statuses mailboxd answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpStatus {
    /// 200
    Ok,
    /// 400: bad mailbox name, bad query, malformed request.
    BadRequest,
    /// 403: a token is required and was missing, invalid or expired.
    Forbidden,
    /// 404: on the metrics listener, anything but `/metrics`.
    NotFound,
    /// 405: anything but GET.
    MethodNotAllowed,
    /// 429: the mailbox already has `max-subscribers` requests.
    TooManyRequests,
    /// 503: connection or mailbox limit reached, or shutting down.
    ServiceUnavailable,
}

impl HttpStatus {
    /// Code and reason phrase.
    pub fn code_reason(self) -> (u16, &'static str) {
        match self {
            HttpStatus::Ok => (200, "OK"),
            HttpStatus::BadRequest => (400, "Bad Request"),
            HttpStatus::Forbidden => (403, "Forbidden"),
            HttpStatus::NotFound => (404, "Not Found"),
            HttpStatus::MethodNotAllowed => (405, "Method Not Allowed"),
            HttpStatus::TooManyRequests => (429, "Too Many Requests"),
            HttpStatus::ServiceUnavailable => (503, "Service Unavailable"),
        }
    }
}

/// A refused request: the status and a one-line explanation for the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// HttpStatus to answer with.
    pub status: HttpStatus,
    /// Plain-text body.
    pub message: String,
}

impl Rejection {
    /// A rejection with a message.
    pub fn new(status: HttpStatus, message: impl Into<String>) -> Rejection {
        Rejection {
            status,
            message: message.into(),
        }
    }
}

/// Validates a request and decides mailbox, transport and resume point.
///
/// The transport comes from `?transport=`, else from `Accept`, else SSE. The
/// resume point comes from `Last-Event-ID` (a reconnecting `EventSource`
/// sends it, while its URL still carries the page's original query), else
/// `?last_id=`, else `?since=`. Unknown query keys are ignored, so cache
/// busters pass.
pub fn route(req: &Request<'_>) -> Result<Route, Rejection> {
    if req.method != "GET" {
        return Err(Rejection::new(
            HttpStatus::MethodNotAllowed,
            "only GET is supported",
        ));
    }
    let mailbox = req.path.rsplit('/').next().unwrap_or_default();
    if !name::is_valid(mailbox) {
        return Err(Rejection::new(
            HttpStatus::BadRequest,
            "the last path segment must be a mailbox name: 1-128 bytes of A-Z a-z 0-9 . _ ~ -",
        ));
    }
    let mut transport = None;
    let (mut last_id, mut since, mut token) = (None, None, None);
    for pair in req.query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "transport" => {
                transport = Some(match value {
                    "sse" => Transport::Sse,
                    "poll" => Transport::Poll,
                    "stream" => Transport::Stream,
                    _ => {
                        return Err(Rejection::new(
                            HttpStatus::BadRequest,
                            "transport must be sse, poll or stream",
                        ));
                    }
                })
            }
            "last_id" => last_id = Some(parse_id(value, "last_id")?),
            "since" => since = Some(parse_id(value, "since")?),
            "token" => token = Some(value),
            _ => {}
        }
    }
    // `Accept: text/event-stream` asks for SSE, which is also the default, so
    // only the query can choose another transport.
    let transport = transport.unwrap_or(Transport::Sse);
    let header = match req.last_event_id.map(str::trim) {
        Some(v) if !v.is_empty() => Some(parse_id(v, "Last-Event-ID")?),
        _ => None,
    };
    Ok(Route {
        mailbox: mailbox.to_string(),
        transport,
        // Ids start far above 0, so 0 can only mean "from the beginning".
        resume: header.or(last_id).or(since).filter(|&id| id != 0),
        // EventSource cannot set headers, hence the query; tokens are URL-safe.
        token: token
            .or_else(|| {
                req.authorization
                    .and_then(|a| a.trim().strip_prefix("Bearer "))
                    .map(str::trim)
            })
            .map(str::to_string),
    })
}

fn parse_id(value: &str, what: &str) -> Result<u64, Rejection> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Rejection::new(
            HttpStatus::BadRequest,
            format!("{what} must be a message id"),
        ));
    }
    value
        .parse()
        .map_err(|_| Rejection::new(HttpStatus::BadRequest, format!("{what} is out of range")))
}

/// A response head, independent of the gateway that renders it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    /// The status.
    pub status: HttpStatus,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// `Content-Length`; `None` for a stream that ends when the response ends.
    pub content_length: Option<usize>,
}

impl Head {
    /// The head of a streaming (SSE or raw stream) response.
    pub fn stream(transport: Transport) -> Head {
        Head {
            status: HttpStatus::Ok,
            content_type: transport.content_type(),
            content_length: None,
        }
    }

    /// The head of a complete body.
    pub fn sized(status: HttpStatus, content_type: &'static str, len: usize) -> Head {
        Head {
            status,
            content_type,
            content_length: Some(len),
        }
    }

    /// Appends the header lines common to every gateway (each ending in CRLF).
    /// No caching anywhere, and `X-Accel-Buffering: no` so that nginx passes
    /// each message through at once even where buffering is on.
    pub fn write_fields(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"Content-Type: ");
        out.extend_from_slice(self.content_type.as_bytes());
        out.extend_from_slice(b"\r\nCache-Control: no-cache\r\nX-Accel-Buffering: no\r\n");
        if let Some(len) = self.content_length {
            out.extend_from_slice(format!("Content-Length: {len}\r\n").as_bytes());
        }
        if self.status == HttpStatus::MethodNotAllowed {
            out.extend_from_slice(b"Allow: GET\r\n");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(path: &'static str, query: &'static str) -> Request<'static> {
        Request {
            method: "GET",
            path,
            query,
            ..Request::default()
        }
    }

    #[test]
    fn mailbox_is_last_segment() {
        let r = route(&get("/comet/chat/alice", "")).unwrap();
        assert_eq!(
            r,
            Route {
                mailbox: "alice".into(),
                transport: Transport::Sse,
                resume: None,
                token: None,
            }
        );
        assert_eq!(route(&get("/alice", "")).unwrap().mailbox, "alice");
        for bad in ["/comet/", "/", "", "/comet/a%20b", "/comet/a b"] {
            assert_eq!(
                route(&get(bad, "")).unwrap_err().status,
                HttpStatus::BadRequest,
                "{bad}"
            );
        }
    }

    #[test]
    fn transport_and_resume_selection() {
        assert_eq!(route(&get("/m", "since=0")).unwrap().resume, None);
        let r = route(&get("/m", "transport=poll&since=5&_=123")).unwrap();
        assert_eq!((r.transport, r.resume), (Transport::Poll, Some(5)));
        assert_eq!(
            route(&get("/m", "transport=stream")).unwrap().transport,
            Transport::Stream
        );
        assert_eq!(
            route(&get("/m", "transport=ws")).unwrap_err().status,
            HttpStatus::BadRequest
        );
        assert_eq!(
            route(&get("/m", "since=-1")).unwrap_err().status,
            HttpStatus::BadRequest
        );
        assert_eq!(
            route(&get("/m", "since=99999999999999999999"))
                .unwrap_err()
                .status,
            HttpStatus::BadRequest
        );
        let mut req = get("/m", "last_id=3&since=2");
        assert_eq!(route(&req).unwrap().resume, Some(3));
        req.last_event_id = Some("10");
        req.accept = Some("text/event-stream");
        let r = route(&req).unwrap();
        assert_eq!((r.transport, r.resume), (Transport::Sse, Some(10)));
        req.last_event_id = Some("ten");
        assert_eq!(route(&req).unwrap_err().status, HttpStatus::BadRequest);
    }

    #[test]
    fn token_from_query_or_bearer_header() {
        assert_eq!(
            route(&get("/m", "token=v1.5.x")).unwrap().token.as_deref(),
            Some("v1.5.x")
        );
        let mut req = get("/m", "");
        req.authorization = Some("Bearer v1.6.y ");
        assert_eq!(route(&req).unwrap().token.as_deref(), Some("v1.6.y"));
        req.authorization = Some("Basic dXNlcjpwYXNz");
        assert_eq!(route(&req).unwrap().token, None);
        req.query = "token=v1.7.z";
        req.authorization = Some("Bearer v1.6.y");
        assert_eq!(
            route(&req).unwrap().token.as_deref(),
            Some("v1.7.z"),
            "query wins"
        );
    }

    #[test]
    fn only_get() {
        let req = Request {
            method: "POST",
            path: "/m",
            ..Request::default()
        };
        assert_eq!(
            route(&req).unwrap_err().status,
            HttpStatus::MethodNotAllowed
        );
    }

    #[test]
    fn head_fields() {
        let mut out = vec![];
        Head::sized(HttpStatus::MethodNotAllowed, "text/plain", 3).write_fields(&mut out);
        let s = String::from_utf8(out).unwrap();
        assert!(s.contains("Content-Length: 3\r\n") && s.contains("Allow: GET\r\n"));
    }
}
