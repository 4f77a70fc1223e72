//! One HTTP/1.x request per connection: parse the head with httparse, answer, close.
//!
//! Probes and scrapers send one small GET at a time, so the endpoint needs no keep-alive, no
//! bodies and no chunking; it closes after each answer (`Connection: close`).

use std::io;

use futures_util::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::Endpoint;

/// The largest request head read (bytes); a larger one is answered with 431.
pub const MAX_REQUEST_HEAD: usize = 8 * 1024;

const METRICS_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// An answer: status, content type and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The HTTP status code.
    pub status: u16,
    /// The `Content-Type`.
    pub content_type: &'static str,
    /// The body (left out on the wire for HEAD).
    pub body: String,
    /// Whether the request was HEAD.
    head: bool,
}

impl Response {
    fn text(status: u16, body: &str) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: format!("{body}\n"),
            head: false,
        }
    }

    /// The response as bytes on the wire.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n",
            self.status,
            reason(self.status),
            self.content_type,
            self.body.len()
        );
        if self.status == 405 {
            out.push_str("Allow: GET, HEAD\r\n");
        }
        out.push_str("\r\n");
        let mut bytes = out.into_bytes();
        if !self.head {
            bytes.extend_from_slice(self.body.as_bytes());
        }
        bytes
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        _ => "Service Unavailable",
    }
}

/// The answer to a complete request head (`GET /health HTTP/1.1\r\n...\r\n\r\n`).
pub fn respond(head: &[u8], endpoint: &dyn Endpoint) -> Response {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    let (method, path) = match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => (req.method.unwrap_or(""), req.path.unwrap_or("")),
        Ok(httparse::Status::Partial) | Err(_) => {
            return Response::text(400, "bad request");
        }
    };
    let is_head = method == "HEAD";
    if method != "GET" && !is_head {
        return Response::text(405, "only GET and HEAD");
    }
    let path = path.split(['?', '#']).next().unwrap_or("");
    let mut response = match path {
        "/health" => {
            let health = endpoint.health();
            Response {
                status: health.status.http_status(),
                content_type: "application/health+json",
                body: health.to_json(),
                head: false,
            }
        }
        "/livez" => probe(endpoint.alive(), "alive"),
        "/readyz" => probe(endpoint.ready(), "ready"),
        "/metrics" => Response {
            status: 200,
            content_type: METRICS_TYPE,
            body: endpoint.metrics(),
            head: false,
        },
        _ => Response::text(404, "not found: try /health, /livez, /readyz or /metrics"),
    };
    response.head = is_head;
    response
}

fn probe(ok: bool, what: &str) -> Response {
    if ok {
        Response::text(200, what)
    } else {
        Response::text(503, &format!("not {what}"))
    }
}

/// Reads one request from `stream`, writes the answer and returns; a runtime spawns this per
/// accepted connection (bounding it with a timeout of its own against slow peers).
pub async fn serve_connection<S>(mut stream: S, endpoint: &dyn Endpoint) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; MAX_REQUEST_HEAD];
    let mut filled = 0;
    let response = loop {
        let Some(dst) = buf.get_mut(filled..).filter(|d| !d.is_empty()) else {
            break Response::text(431, "request head too large");
        };
        let n = stream.read(dst).await?;
        if n == 0 {
            return Ok(()); // closed before a whole request: nothing to answer
        }
        filled += n;
        let head = buf.get(..filled).unwrap_or_default();
        let mut headers = [httparse::EMPTY_HEADER; 32];
        match httparse::Request::new(&mut headers).parse(head) {
            Ok(httparse::Status::Partial) => continue,
            Ok(httparse::Status::Complete(_)) | Err(_) => break respond(head, endpoint),
        }
    };
    stream.write_all(&response.to_bytes()).await?;
    stream.flush().await?;
    stream.close().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Check, Health, Status};
    use futures_util::io::Cursor;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    struct Fixed(Status, bool);
    impl Endpoint for Fixed {
        fn health(&self) -> Health {
            let mut h = Health::new(Status::Pass);
            h.check("x:y", Check::new(self.0, 1));
            h
        }
        fn metrics(&self) -> String {
            "# TYPE up gauge\nup 1\n# EOF\n".into()
        }
        fn alive(&self) -> bool {
            true
        }
        fn ready(&self) -> bool {
            self.1
        }
    }

    fn get(path: &str, e: &dyn Endpoint) -> Response {
        respond(
            format!("GET {path} HTTP/1.1\r\nHost: h\r\n\r\n").as_bytes(),
            e,
        )
    }

    #[test]
    fn routes_and_statuses() {
        let up = Fixed(Status::Pass, true);
        let down = Fixed(Status::Fail, false);
        assert_eq!(get("/health", &up).status, 200);
        assert_eq!(get("/health", &up).content_type, "application/health+json");
        assert_eq!(
            get("/health?verbose=1", &Fixed(Status::Warn, true)).status,
            200
        );
        assert_eq!(get("/health", &down).status, 503);
        assert_eq!(get("/livez", &down).status, 200);
        assert_eq!(get("/readyz", &up).status, 200);
        assert_eq!(get("/readyz", &down).status, 503);
        assert_eq!(get("/metrics", &up).body, up.metrics());
        assert_eq!(get("/nope", &up).status, 404);
        let post = respond(b"POST /health HTTP/1.1\r\n\r\n", &up);
        assert_eq!(post.status, 405);
        assert!(String::from_utf8_lossy(&post.to_bytes()).contains("Allow: GET, HEAD\r\n"));
        assert_eq!(respond(b"\x00\x01garbage\r\n\r\n", &up).status, 400);
    }

    #[test]
    fn head_has_the_length_but_no_body() {
        let up = Fixed(Status::Pass, true);
        let r = respond(b"HEAD /livez HTTP/1.1\r\n\r\n", &up);
        let wire = String::from_utf8(r.to_bytes()).expect("utf-8");
        assert!(wire.contains("Content-Length: 6\r\n"), "{wire}");
        assert!(wire.ends_with("\r\n\r\n"), "{wire}");
    }

    /// A stream that hands out its input a few bytes at a time and records what is written.
    struct Trickle {
        input: Cursor<Vec<u8>>,
        output: Vec<u8>,
        step: usize,
    }
    impl AsyncRead for Trickle {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut [u8],
        ) -> Poll<io::Result<usize>> {
            let step = self.step.min(buf.len());
            Pin::new(&mut self.input).poll_read(cx, &mut buf[..step])
        }
    }
    impl AsyncWrite for Trickle {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.output.extend_from_slice(buf);
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn serve(input: Vec<u8>, step: usize) -> String {
        let mut s = Trickle {
            input: Cursor::new(input),
            output: Vec::new(),
            step,
        };
        futures_executor::block_on(serve_connection(&mut s, &Fixed(Status::Pass, true)))
            .expect("serve");
        String::from_utf8(s.output).expect("utf-8")
    }

    #[test]
    fn a_request_split_over_many_reads_is_answered_once() {
        let out = serve(b"GET /readyz HTTP/1.1\r\nHost: h\r\n\r\n".to_vec(), 3);
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
        assert!(out.ends_with("\r\n\r\nready\n"), "{out}");
        assert_eq!(out.matches("HTTP/1.1").count(), 1);
    }

    #[test]
    fn oversized_and_truncated_requests() {
        let mut big = b"GET /health HTTP/1.1\r\nX: ".to_vec();
        big.resize(MAX_REQUEST_HEAD + 100, b'a');
        assert!(serve(big, 4096).starts_with("HTTP/1.1 431 "));
        assert_eq!(
            serve(b"GET /hea".to_vec(), 4),
            "",
            "no answer to half a request"
        );
    }
}
