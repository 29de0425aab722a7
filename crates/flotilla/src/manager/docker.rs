//! A small client of Docker Engine's HTTP API over its unix socket: JSON answers to `GET`s
//! and the `/events` stream, one JSON object per line. HTTP/1.1 by hand (a request per
//! connection, `Connection: close`; bodies plain or chunked): the four calls the manager
//! makes do not justify an HTTP client stack in the binary.
//!
//! Everything read is bounded: a header block of at most [`HEAD_BYTES_MAX`], a body or an
//! event line of at most [`BODY_BYTES_MAX`]. An answer past a bound, a malformed chunk or a
//! status other than 200 is an error naming what was wrong.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// Most bytes of a response's status line and headers.
const HEAD_BYTES_MAX: usize = 64 * 1024;
/// Most bytes of one answer's body, or of one event line.
const BODY_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Longest a plain request may take (the event stream has no deadline).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Where Docker listens unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/var/run/docker.sock";

/// Docker Engine's API on one unix socket.
#[derive(Clone, Debug)]
pub struct Docker {
    socket: PathBuf,
}

/// A response's head: its status and the headers the reader needs.
#[derive(Debug, PartialEq, Eq)]
struct Head {
    status: u16,
    chunked: bool,
    length: Option<usize>,
}

impl Docker {
    /// The API on `socket` (nothing is connected yet).
    #[must_use]
    pub fn new(socket: &Path) -> Docker {
        Docker {
            socket: socket.to_path_buf(),
        }
    }

    /// The socket's path.
    #[must_use]
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    async fn send(&self, path: &str) -> Result<(BufReader<UnixStream>, Head), String> {
        let mut stream = UnixStream::connect(&self.socket)
            .await
            .map_err(|e| format!("cannot connect to Docker at {}: {e}", self.socket.display()))?;
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: docker\r\nUser-Agent: flotilla-manager\r\nConnection: close\r\n\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("sending GET {path} to Docker: {e}"))?;
        let mut reader = BufReader::new(stream);
        let head = read_head(&mut reader)
            .await
            .map_err(|e| format!("Docker's answer to GET {path}: {e}"))?;
        Ok((reader, head))
    }

    /// `GET path`, its JSON answer. A status other than 200 is an error carrying Docker's
    /// message.
    pub async fn get(&self, path: &str) -> Result<Value, String> {
        let call = async {
            let (mut reader, head) = self.send(path).await?;
            let body = read_body(&mut reader, &head)
                .await
                .map_err(|e| format!("Docker's answer to GET {path}: {e}"))?;
            if head.status != 200 {
                return Err(format!(
                    "Docker answered GET {path} with {}: {}",
                    head.status,
                    docker_message(&body)
                ));
            }
            serde_json::from_slice(&body)
                .map_err(|e| format!("Docker's answer to GET {path} is not JSON: {e}"))
        };
        tokio::time::timeout(REQUEST_TIMEOUT, call)
            .await
            .map_err(|_| format!("Docker did not answer GET {path} within {REQUEST_TIMEOUT:?}"))?
    }

    /// Opens the event stream (`GET /events`, container and volume events, from `since`
    /// when given: seconds since the epoch).
    pub async fn events(&self, since: Option<i64>) -> Result<Events, String> {
        let filters = r#"{"type":["container","volume"]}"#;
        let mut path = format!("/events?filters={}", percent_encode(filters));
        if let Some(since) = since {
            path.push_str(&format!("&since={since}"));
        }
        let (mut reader, head) = tokio::time::timeout(REQUEST_TIMEOUT, self.send(&path))
            .await
            .map_err(|_| {
                format!("Docker did not answer GET /events within {REQUEST_TIMEOUT:?}")
            })??;
        if head.status != 200 {
            let body = read_body(&mut reader, &head).await.unwrap_or_default();
            return Err(format!(
                "Docker answered GET /events with {}: {}",
                head.status,
                docker_message(&body)
            ));
        }
        Ok(Events {
            reader,
            chunked: head.chunked,
            chunk_left: 0,
            line: Vec::new(),
            done: false,
        })
    }
}

/// Docker's event stream: one JSON object per line.
pub struct Events {
    reader: BufReader<UnixStream>,
    chunked: bool,
    /// Bytes left in the current chunk.
    chunk_left: usize,
    line: Vec<u8>,
    done: bool,
}

impl Events {
    /// The next event, or `None` when Docker closed the stream.
    pub async fn next(&mut self) -> Result<Option<Value>, String> {
        loop {
            if let Some(end) = self.line.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.line.drain(..=end).collect();
                let text = &line[..line.len() - 1];
                if text.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return serde_json::from_slice(text)
                    .map(Some)
                    .map_err(|e| format!("a Docker event is not JSON: {e}"));
            }
            if self.done {
                return Ok(None);
            }
            if self.line.len() > BODY_BYTES_MAX {
                return Err(format!(
                    "a Docker event is longer than {BODY_BYTES_MAX} bytes"
                ));
            }
            self.fill().await?;
        }
    }

    /// Reads more of the stream into `line` (sets `done` at its end).
    async fn fill(&mut self) -> Result<(), String> {
        if !self.chunked {
            let mut buffer = [0u8; 8192];
            let n = self
                .reader
                .read(&mut buffer)
                .await
                .map_err(|e| format!("reading Docker's events: {e}"))?;
            if n == 0 {
                self.done = true;
            }
            self.line.extend_from_slice(&buffer[..n]);
            return Ok(());
        }
        if self.chunk_left == 0 {
            let size = read_chunk_size(&mut self.reader).await?;
            if size == 0 {
                self.done = true;
                return Ok(());
            }
            self.chunk_left = size;
        }
        let want = self.chunk_left.min(8192);
        let mut buffer = vec![0u8; want];
        self.reader
            .read_exact(&mut buffer)
            .await
            .map_err(|e| format!("reading Docker's events: {e}"))?;
        self.line.extend_from_slice(&buffer);
        self.chunk_left -= want;
        if self.chunk_left == 0 {
            expect_crlf(&mut self.reader).await?;
        }
        Ok(())
    }
}

/// The message of Docker's error body (`{"message": ...}`), or the body as text.
fn docker_message(body: &[u8]) -> String {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_string())
}

async fn read_head<R: AsyncBufReadExt + Unpin>(reader: &mut R) -> Result<Head, String> {
    let mut total = 0usize;
    let mut status_line = String::new();
    total += read_line(reader, &mut status_line, HEAD_BYTES_MAX).await?;
    let status = parse_status(&status_line)?;
    let mut head = Head {
        status,
        chunked: false,
        length: None,
    };
    loop {
        let mut line = String::new();
        total += read_line(
            reader,
            &mut line,
            HEAD_BYTES_MAX - total.min(HEAD_BYTES_MAX),
        )
        .await?;
        if total > HEAD_BYTES_MAX {
            return Err(format!("headers longer than {HEAD_BYTES_MAX} bytes"));
        }
        let line = line.trim_end();
        if line.is_empty() {
            return Ok(head);
        }
        let Some((name, value)) = line.split_once(':') else {
            return Err(format!("a header line without a colon: {line:?}"));
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "transfer-encoding" => head.chunked = value.eq_ignore_ascii_case("chunked"),
            "content-length" => {
                head.length = Some(
                    value
                        .parse()
                        .map_err(|_| format!("Content-Length {value:?} is not a number"))?,
                );
            }
            _ => {}
        }
    }
}

fn parse_status(line: &str) -> Result<u16, String> {
    let mut words = line.split_whitespace();
    match (words.next(), words.next().map(str::parse::<u16>)) {
        (Some(version), Some(Ok(status))) if version.starts_with("HTTP/1.") => Ok(status),
        _ => Err(format!(
            "not an HTTP/1.x status line: {:?}",
            line.trim_end()
        )),
    }
}

/// Reads one line (through `\n`) of at most `max` bytes into `into`; answers its length.
async fn read_line<R: AsyncBufReadExt + Unpin>(
    reader: &mut R,
    into: &mut String,
    max: usize,
) -> Result<usize, String> {
    let mut bytes = Vec::new();
    let mut limited = reader.take(max as u64 + 1);
    let n = limited
        .read_until(b'\n', &mut bytes)
        .await
        .map_err(|e| format!("reading: {e}"))?;
    if n == 0 {
        return Err("the connection closed mid-answer".into());
    }
    if n > max || bytes.last() != Some(&b'\n') {
        return Err(format!("a line longer than {max} bytes, or cut short"));
    }
    *into = String::from_utf8(bytes).map_err(|_| "a header line is not UTF-8".to_string())?;
    Ok(n)
}

async fn read_chunk_size<R: AsyncBufReadExt + Unpin>(reader: &mut R) -> Result<usize, String> {
    let mut line = String::new();
    read_line(reader, &mut line, 1024).await?;
    let digits = line.trim_end().split(';').next().unwrap_or_default().trim();
    let size = usize::from_str_radix(digits, 16)
        .map_err(|_| format!("a chunk size {digits:?} is not hexadecimal"))?;
    if size > BODY_BYTES_MAX {
        return Err(format!(
            "a chunk of {size} bytes is longer than {BODY_BYTES_MAX}"
        ));
    }
    Ok(size)
}

async fn expect_crlf<R: AsyncBufReadExt + Unpin>(reader: &mut R) -> Result<(), String> {
    let mut end = [0u8; 2];
    reader
        .read_exact(&mut end)
        .await
        .map_err(|e| format!("reading a chunk's end: {e}"))?;
    if &end != b"\r\n" {
        return Err("a chunk does not end with CRLF".into());
    }
    Ok(())
}

async fn read_body<R: AsyncBufReadExt + Unpin>(
    reader: &mut R,
    head: &Head,
) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    if head.chunked {
        loop {
            let size = read_chunk_size(reader).await?;
            if size == 0 {
                return Ok(body);
            }
            if body.len() + size > BODY_BYTES_MAX {
                return Err(format!("a body longer than {BODY_BYTES_MAX} bytes"));
            }
            let start = body.len();
            body.resize(start + size, 0);
            reader
                .read_exact(&mut body[start..])
                .await
                .map_err(|e| format!("reading a chunk: {e}"))?;
            expect_crlf(reader).await?;
        }
    }
    match head.length {
        Some(length) if length > BODY_BYTES_MAX => Err(format!(
            "a body of {length} bytes is longer than {BODY_BYTES_MAX}"
        )),
        Some(length) => {
            body.resize(length, 0);
            reader
                .read_exact(&mut body)
                .await
                .map_err(|e| format!("reading the body: {e}"))?;
            Ok(body)
        }
        None => {
            reader
                .take(BODY_BYTES_MAX as u64 + 1)
                .read_to_end(&mut body)
                .await
                .map_err(|e| format!("reading the body: {e}"))?;
            if body.len() > BODY_BYTES_MAX {
                return Err(format!("a body longer than {BODY_BYTES_MAX} bytes"));
            }
            Ok(body)
        }
    }
}

/// `text` with every byte but unreserved ones percent-encoded (a query parameter).
pub(crate) fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn head_of(text: &str) -> Result<Head, String> {
        let mut reader = BufReader::new(text.as_bytes());
        read_head(&mut reader).await
    }

    #[tokio::test]
    async fn heads_are_parsed_and_bad_ones_named() {
        let head = head_of("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX: y\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(
            head,
            Head {
                status: 200,
                chunked: true,
                length: None
            }
        );
        let head = head_of("HTTP/1.0 404 Not Found\r\nContent-Length: 12\r\n\r\n")
            .await
            .unwrap();
        assert_eq!((head.status, head.length), (404, Some(12)));
        let bad = head_of("SSH-2.0-x\r\n\r\n").await.unwrap_err();
        assert!(bad.contains("status line"), "{bad}");
        let bad = head_of("HTTP/1.1 200 OK\r\nno colon here\r\n\r\n")
            .await
            .unwrap_err();
        assert!(bad.contains("colon"), "{bad}");
        let bad = head_of("HTTP/1.1 200 OK\r\nContent-Length: ten\r\n\r\n")
            .await
            .unwrap_err();
        assert!(bad.contains("Content-Length"), "{bad}");
        let bad = head_of("HTTP/1.1 200 OK\r\nX: y").await.unwrap_err();
        assert!(bad.contains("cut short") || bad.contains("closed"), "{bad}");
    }

    #[tokio::test]
    async fn chunked_and_sized_bodies_are_read_and_bad_chunks_refused() {
        let chunked = Head {
            status: 200,
            chunked: true,
            length: None,
        };
        let mut reader = BufReader::new(&b"3\r\n{\"a\r\n4\r\n\":1}\r\n0\r\n\r\n"[..]);
        assert_eq!(
            read_body(&mut reader, &chunked).await.unwrap(),
            b"{\"a\":1}"
        );
        let mut reader = BufReader::new(&b"zz\r\nabc\r\n"[..]);
        assert!(read_body(&mut reader, &chunked)
            .await
            .unwrap_err()
            .contains("hexadecimal"));
        let mut reader = BufReader::new(&b"3\r\nabcXY0\r\n\r\n"[..]);
        assert!(read_body(&mut reader, &chunked)
            .await
            .unwrap_err()
            .contains("CRLF"));
        let mut reader = BufReader::new(&b"ffffffffff\r\n"[..]);
        assert!(read_body(&mut reader, &chunked)
            .await
            .unwrap_err()
            .contains("longer"));
        let sized = Head {
            status: 200,
            chunked: false,
            length: Some(2),
        };
        let mut reader = BufReader::new(&b"[]trailing"[..]);
        assert_eq!(read_body(&mut reader, &sized).await.unwrap(), b"[]");
    }

    #[test]
    fn queries_are_percent_encoded() {
        assert_eq!(
            percent_encode(r#"{"type":["volume"]}"#),
            "%7B%22type%22%3A%5B%22volume%22%5D%7D"
        );
    }

    #[test]
    fn docker_errors_carry_their_message() {
        assert_eq!(
            docker_message(br#"{"message":"no such container"}"#),
            "no such container"
        );
        assert_eq!(docker_message(b"plain text\n"), "plain text");
    }
}
