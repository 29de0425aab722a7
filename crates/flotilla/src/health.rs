//! `flotilla health`: asks one store whether it is ready (`GET /ready` on its address) and
//! exits 0 when it is, 1 when it is not or does not answer: Docker's `HEALTHCHECK` in the
//! image runs it. Plain HTTP/1.1 over TCP (a store serving TLS answers its probes to
//! Kubernetes' `httpGet` with `scheme: HTTPS`, not to this command).

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use clap::Args;
use serde_json::json;

use crate::config::FileConfig;
use crate::output::{Failure, EXIT_FAILED, EXIT_OK};

/// Where `--endpoint` is read from when not given (the image's HEALTHCHECK runs `flotilla
/// health` with no flags: a container whose store listens elsewhere than the default sets it).
const ENDPOINT_ENV: &str = "FLOTILLA_HEALTH_ENDPOINT";
/// The endpoint when neither the flag nor the variable names one: the image's default
/// `--addr` port on loopback.
const DEFAULT_ENDPOINT: &str = "127.0.0.1:7100";
/// Most bytes of an answer read (a readiness answer is one line).
const ANSWER_BYTES_MAX: u64 = 64 * 1024;

#[derive(Args, Debug)]
pub struct HealthArgs {
    /// The store to ask (HOST:PORT, its `--addr`) [default: $FLOTILLA_HEALTH_ENDPOINT, else
    /// 127.0.0.1:7100]
    #[arg(long)]
    endpoint: Option<String>,
    /// `ready` (`GET /ready`: in a cluster, every hosted region knows a leader) or `live`
    /// (`GET /live`: the process serves)
    #[arg(long, default_value = "ready")]
    check: String,
    /// Longest the check may take
    #[arg(long, default_value_t = 3000)]
    timeout_ms: u64,
    /// Print exactly one JSON object on stdout
    #[arg(long)]
    json: bool,
}

pub fn run(args: HealthArgs, _file: &FileConfig) -> i32 {
    let path = match args.check.as_str() {
        "ready" => "/ready",
        "live" => "/live",
        other => {
            return Failure::usage(format!("--check {other:?}: expected `ready` or `live`"))
                .report("health", args.json)
        }
    };
    if args.timeout_ms == 0 {
        return Failure::usage("--timeout-ms must be at least 1").report("health", args.json);
    }
    let timeout = Duration::from_millis(args.timeout_ms);
    let endpoint = args
        .endpoint
        .clone()
        .or_else(|| std::env::var(ENDPOINT_ENV).ok().filter(|e| !e.is_empty()))
        .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string());
    match get(&endpoint, path, timeout) {
        Ok((200, body)) => {
            if args.json {
                println!(
                    "{}",
                    json!({"ok": true, "check": args.check, "message": body.trim()})
                );
            } else {
                println!("{}", body.trim());
            }
            EXIT_OK
        }
        Ok((status, body)) => {
            if args.json {
                println!(
                    "{}",
                    json!({"ok": false, "error": "NotReady", "check": args.check,
                           "status": status, "message": body.trim(), "indeterminate": false})
                );
            } else {
                eprintln!(
                    "flotilla health: {endpoint} answered {status}: {}",
                    body.trim()
                );
            }
            EXIT_FAILED
        }
        Err(why) => Failure::failed("Unavailable", why).report("health", args.json),
    }
}

/// `GET path` on `endpoint` over HTTP/1.1: the status code and the body.
pub(crate) fn get(endpoint: &str, path: &str, timeout: Duration) -> Result<(u16, String), String> {
    let address = endpoint
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {endpoint}: {e}"))?
        .next()
        .ok_or_else(|| format!("{endpoint} resolves to no address"))?;
    let mut stream = TcpStream::connect_timeout(&address, timeout)
        .map_err(|e| format!("cannot connect to {endpoint}: {e}"))?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(|e| format!("cannot set a timeout on the connection to {endpoint}: {e}"))?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {endpoint}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("cannot send to {endpoint}: {e}"))?;
    let mut answer = Vec::new();
    stream
        .take(ANSWER_BYTES_MAX)
        .read_to_end(&mut answer)
        .map_err(|e| format!("no answer from {endpoint} within {timeout:?}: {e}"))?;
    parse_answer(&answer).ok_or_else(|| {
        format!(
            "{endpoint} answered something that is not HTTP/1.1: {:?}",
            String::from_utf8_lossy(&answer[..answer.len().min(80)])
        )
    })
}

/// The status code and body of an HTTP/1.1 answer (a body sent in chunks is joined).
fn parse_answer(answer: &[u8]) -> Option<(u16, String)> {
    let text = String::from_utf8_lossy(answer);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status_line = head.lines().next()?;
    let mut words = status_line.split_whitespace();
    if !words.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let status: u16 = words.next()?.parse().ok()?;
    let chunked = head.lines().any(|line| {
        let lower = line.to_ascii_lowercase();
        lower.starts_with("transfer-encoding:") && lower.contains("chunked")
    });
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_string()
    };
    Some((status, body))
}

/// The body of a chunked transfer.
fn dechunk(mut rest: &str) -> Option<String> {
    let mut body = String::new();
    loop {
        let (size, after) = rest.split_once("\r\n")?;
        let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        if size == 0 {
            return Some(body);
        }
        body.push_str(after.get(..size)?);
        rest = after.get(size..)?.strip_prefix("\r\n")?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_parsed_plain_or_chunked_and_garbage_is_not() {
        let plain = b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nready\n";
        assert_eq!(parse_answer(plain), Some((200, "ready\n".into())));
        let chunked = b"HTTP/1.1 503 Service Unavailable\r\ntransfer-encoding: chunked\r\n\r\n4\r\nnot \r\n5\r\nready\r\n0\r\n\r\n";
        assert_eq!(parse_answer(chunked), Some((503, "not ready".into())));
        assert_eq!(parse_answer(b"SSH-2.0-OpenSSH\r\n\r\n"), None);
        assert_eq!(parse_answer(b"HTTP/1.1 abc\r\n\r\n"), None);
        assert_eq!(
            parse_answer(b"HTTP/1.1 200 OK\r\n"),
            None,
            "no end of headers"
        );
        let broken = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n";
        assert_eq!(parse_answer(broken), None);
    }
}
