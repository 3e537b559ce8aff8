//! HTTP delivery of one SOAP message: ureq over rustls (ring provider), bounded in time and size.
//!
//! Pure Rust, no pgrx, so it can run on any thread. A delivery either ends in an acknowledgement
//! or in a reason, written for the `last_error` column, that says what went wrong. Redirects are
//! never followed: a listener that moved must be redefined, not guessed at.

use std::time::Duration;

use crate::deliver::tls::{Identity, Roots};
use crate::wire::soap::{self, Answer};

/// Limits of one exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// The whole exchange: connect, TLS, send, wait and read (a listener that answers a byte at
    /// a time is cut off at it too).
    pub timeout: Duration,
    /// Opening the connection (TCP), within `timeout`: a black-holed host fails fast.
    pub connect_timeout: Duration,
    /// Bodies longer than this are a failure, not an allocation.
    pub max_response_bytes: u64,
}

/// Why a delivery failed: the reason for `last_error`, and how long the listener asked to be
/// left alone (`Retry-After` on a 429 or 503), if it did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub reason: String,
    pub retry_after: Option<Duration>,
}

impl From<String> for Failure {
    fn from(reason: String) -> Failure {
        Failure {
            reason,
            retry_after: None,
        }
    }
}

/// A keep-alive HTTP client, reused for every delivery of a worker.
pub struct Client {
    agent: ureq::Agent,
    limits: Limits,
    /// Why HTTPS cannot be verified (no usable roots), if so.
    roots_problem: Option<String>,
}

impl Client {
    /// Builds the client: server certificates are verified against `roots` (chain and host
    /// name); `identity`, if any, is presented to servers that ask for a client certificate.
    /// Call it in the process that uses it (never before fork).
    pub fn new(limits: Limits, roots: &Roots, identity: Option<&Identity>) -> Client {
        let mut tls = ureq::tls::TlsConfig::builder();
        if let Ok(roots) = roots {
            tls = tls.root_certs(ureq::tls::RootCerts::Specific(roots.clone()));
        } else {
            tls = tls.root_certs(ureq::tls::RootCerts::Specific(Default::default()));
        }
        if let Some((identity, key)) = identity.and_then(|i| i.key().map(|key| (i, key))) {
            tls = tls.client_cert(Some(ureq::tls::ClientCert::new_with_certs(
                &identity.chain,
                key,
            )));
        }
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(limits.timeout))
            .timeout_connect(Some(limits.connect_timeout.min(limits.timeout)))
            .max_redirects(0)
            .http_status_as_error(false)
            .user_agent(concat!("outbound_msg/", env!("CARGO_PKG_VERSION")))
            .tls_config(tls.build())
            .build()
            .into();
        Client {
            agent,
            limits,
            roots_problem: roots.as_ref().err().cloned(),
        }
    }

    /// Posts `body` to `url` as a SOAP 1.1 request. `Ok` means the listener acknowledged every
    /// notification in it; `Err` carries the failure reason.
    pub fn deliver(&self, url: &str, body: &str) -> Result<(), Failure> {
        if let Some(problem) = &self.roots_problem {
            if url
                .get(..8)
                .is_some_and(|scheme| scheme.eq_ignore_ascii_case("https://"))
            {
                return Err(format!("TLS error: {problem}").into());
            }
        }
        // Credentials in the URL become HTTP Basic authentication; ureq never sees them.
        let (url, authorization) = split_credentials(url);
        let mut request = self
            .agent
            .post(url.as_ref())
            .header("Content-Type", "text/xml; charset=utf-8")
            .header("SOAPAction", "\"\"");
        if let Some(authorization) = authorization {
            request = request.header("Authorization", authorization);
        }
        let mut response = request.send(body).map_err(|err| self.describe(&err))?;
        let status = response.status();
        if status.is_redirection() {
            return Err(format!("HTTP {}: redirects are not followed", status.as_u16()).into());
        }
        let retry_after = matches!(status.as_u16(), 429 | 503)
            .then(|| response.headers().get("retry-after"))
            .flatten()
            .and_then(|value| value.to_str().ok())
            .and_then(|value| retry_after(value, std::time::SystemTime::now()));
        let bytes = response
            .body_mut()
            .with_config()
            .limit(self.limits.max_response_bytes)
            .read_to_vec()
            .map_err(|err| self.describe(&err))?;
        let answer = soap::parse_answer(&bytes);
        if !status.is_success() {
            let reason = status.canonical_reason().unwrap_or("");
            let reason = match answer {
                Answer::Fault(text) => format!("HTTP {}: SOAP fault: {text}", status.as_u16()),
                _ => format!("HTTP {} {reason}", status.as_u16())
                    .trim_end()
                    .to_string(),
            };
            return Err(Failure {
                reason,
                retry_after,
            });
        }
        match answer.failure_reason() {
            None => Ok(()),
            Some(reason) => Err(reason.into()),
        }
    }

    /// A failure reason for a transport error. It names the failure, never the URL, so that
    /// credentials in an endpoint cannot leak into `last_error`.
    fn describe(&self, err: &ureq::Error) -> String {
        match err {
            ureq::Error::Timeout(ureq::Timeout::Connect) => format!(
                "connection error: not connected within {} ms",
                self.limits
                    .connect_timeout
                    .min(self.limits.timeout)
                    .as_millis()
            ),
            ureq::Error::Timeout(_) => {
                format!("no answer within {} ms", self.limits.timeout.as_millis())
            }
            ureq::Error::BodyExceedsLimit(limit) => {
                format!("response body larger than {limit} bytes")
            }
            ureq::Error::HostNotFound => "connection error: host not found".to_string(),
            ureq::Error::ConnectionFailed => "connection error: connection failed".to_string(),
            ureq::Error::Io(io) => {
                match io.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) {
                    Some(tls) => format!("TLS error: {tls}"),
                    None => format!("connection error: {io}"),
                }
            }
            ureq::Error::Rustls(tls) => format!("TLS error: {tls}"),
            ureq::Error::Tls(tls) => format!("TLS error: {tls}"),
            ureq::Error::BadUri(_) => "invalid endpoint URL".to_string(),
            ureq::Error::Protocol(protocol) => format!("HTTP protocol error: {protocol}"),
            other => format!("HTTP error: {other}"),
        }
    }
}

/// How long a `Retry-After` value asks to wait: delay-seconds, or an HTTP date (RFC 9110).
fn retry_after(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let date = httpdate::parse_http_date(value).ok()?;
    Some(date.duration_since(now).unwrap_or(Duration::ZERO))
}

/// The URL without `user:password@`, and the `Authorization: Basic` value they make
/// (percent-decoded, as browsers and curl do).
fn split_credentials(url: &str) -> (std::borrow::Cow<'_, str>, Option<String>) {
    use base64::Engine;
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return (url.into(), None);
    };
    let authority_len = url[scheme_end..]
        .find(['/', '?', '#'])
        .unwrap_or(url.len() - scheme_end);
    let authority = &url[scheme_end..scheme_end + authority_len];
    let Some(at) = authority.rfind('@') else {
        return (url.into(), None);
    };
    let userinfo = percent_decode(&authority[..at]);
    let stripped = format!("{}{}", &url[..scheme_end], &url[scheme_end + at + 1..]);
    let token = base64::engine::general_purpose::STANDARD.encode(userinfo);
    (stripped.into(), Some(format!("Basic {token}")))
}

fn percent_decode(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(high), Some(low)) => {
                out.push((high * 16 + low) as u8);
                i += 3;
            }
            (byte, _, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::thread;

    /// A one-shot HTTP server on loopback answering `response` verbatim; returns its URL.
    fn serve_once(response: impl Into<String>) -> String {
        let response: String = response.into();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/listener", listener.local_addr().unwrap());
        thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            // Read the head and the announced body before answering.
            loop {
                let n = stream.read(&mut buf).unwrap();
                request.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&request);
                if let Some(head_end) = text.find("\r\n\r\n") {
                    let length: usize = text
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse().unwrap())
                        })
                        .unwrap_or(0);
                    if request.len() >= head_end + 4 + length {
                        break;
                    }
                }
            }
            stream.write_all(response.as_bytes()).unwrap();
        });
        url
    }

    fn client() -> Client {
        Client::new(
            Limits {
                timeout: Duration::from_secs(5),
                connect_timeout: Duration::from_secs(5),
                max_response_bytes: 1024,
            },
            &Err("no roots in unit tests".to_string()),
            None,
        )
    }

    #[test]
    fn credentials_become_basic_authentication() {
        let (url, auth) = split_credentials("https://svc:p%40ss@erp.example:8443/soap?x=1");
        assert_eq!(url, "https://erp.example:8443/soap?x=1");
        assert_eq!(auth.unwrap(), "Basic c3ZjOnBAc3M="); // svc:p@ss
        let (url, auth) = split_credentials("http://erp.example/a@b");
        assert_eq!(url, "http://erp.example/a@b");
        assert!(auth.is_none());
    }

    #[test]
    fn redirect_is_a_failure() {
        let url = serve_once(
            "HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:1/\r\nContent-Length: 0\r\n\r\n",
        );
        assert_eq!(
            client().deliver(&url, "<x/>").unwrap_err().reason,
            "HTTP 302: redirects are not followed"
        );
    }

    #[test]
    fn server_error_names_its_status() {
        let url = serve_once("HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbusy");
        assert_eq!(
            client().deliver(&url, "<x/>").unwrap_err(),
            Failure {
                reason: "HTTP 503 Service Unavailable".to_string(),
                retry_after: None
            }
        );
    }

    #[test]
    fn retry_after_of_a_429_or_503_is_kept() {
        let url = serve_once(
            "HTTP/1.1 429 Too Many Requests\r\nRetry-After: 120\r\nContent-Length: 0\r\n\r\n",
        );
        let failure = client().deliver(&url, "<x/>").unwrap_err();
        assert_eq!(failure.retry_after, Some(Duration::from_secs(120)));
        let url = serve_once(
            "HTTP/1.1 500 Internal Server Error\r\nRetry-After: 120\r\nContent-Length: 0\r\n\r\n",
        );
        assert_eq!(
            client().deliver(&url, "<x/>").unwrap_err().retry_after,
            None
        );
        let now = std::time::UNIX_EPOCH + Duration::from_secs(784_111_777);
        assert_eq!(
            retry_after("Sun, 06 Nov 1994 08:50:37 GMT", now),
            Some(Duration::from_secs(60))
        );
        assert_eq!(retry_after("soon", now), None);
    }

    #[test]
    fn a_listener_that_drips_is_cut_off_at_the_timeout() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n");
            for _ in 0..1000 {
                if stream.write_all(b"x").is_err() {
                    return;
                }
                thread::sleep(Duration::from_millis(100));
            }
        });
        let client = Client::new(
            Limits {
                timeout: Duration::from_secs(1),
                connect_timeout: Duration::from_secs(1),
                max_response_bytes: 1 << 20,
            },
            &Err("no roots in unit tests".to_string()),
            None,
        );
        let started = std::time::Instant::now();
        let failure = client.deliver(&url, "<x/>").unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(5), "{failure:?}");
        assert!(
            failure.reason.starts_with("no answer within 1000 ms"),
            "{failure:?}"
        );
    }

    #[test]
    fn oversized_body_is_a_failure() {
        let url = serve_once(format!(
            "HTTP/1.1 200 OK\r\nContent-Length: 2000\r\n\r\n{}",
            "x".repeat(2000)
        ));
        let reason = client().deliver(&url, "<x/>").unwrap_err().reason;
        assert!(
            reason.starts_with("response body larger than 1024 bytes"),
            "{reason}"
        );
    }

    #[test]
    fn refused_connection_is_a_connection_error() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        drop(listener);
        let reason = client().deliver(&url, "<x/>").unwrap_err().reason;
        assert!(reason.starts_with("connection error"), "{reason}");
    }
}
