//! The child-process protocol shared by the cross-process tests (`process.rs`) and the
//! `cluster_bench` example (which includes this file with `#[path]`): a parent re-executes
//! its own binary as a server, reads the one line the child prints once it serves, and
//! talks to it over a line protocol on a control port.
//!
//! - A child runs in its own process group (a Ctrl-C reaches only the parent) and dies with
//!   its parent: [`ChildProcess`] SIGKILLs it on drop, and [`watch_stdin`] tells the child
//!   when its stdin closes (the parent died, however it died).
//! - [`spawn`] waits for the line that contains the ready marker, draining the child's
//!   stdout so it never blocks on a full pipe, and explains a child that died before it was
//!   ready with its last lines of output.
//! - [`serve_lines`] answers one request line with one answer line; [`ask`] sends one.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::future::Future;
use std::io::{BufRead, Read as _};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt as _;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// Lines of a child's stdout kept to explain a child that died before it was ready.
const OUTPUT_TAIL_LINES: usize = 20;

/// The watchdog: the parent holds our stdin, so it closes when the parent exits, however
/// it died. Answers then; if the child has not exited 10 s later, exits it.
pub fn watch_stdin() -> tokio::sync::oneshot::Receiver<()> {
    let (closed_tx, closed_rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let mut sink = [0u8; 64];
        let mut stdin = std::io::stdin();
        while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
        let _ = closed_tx.send(());
        std::thread::sleep(Duration::from_secs(10));
        std::process::exit(1);
    });
    closed_rx
}

/// Accepts control connections until accepting fails, answering each on its own task:
/// one request line (at most `request_line_max` bytes) in, one answer line out, `err WHY`
/// for a failed request.
pub async fn serve_lines<S, F, Fut>(
    control: TcpListener,
    state: Arc<S>,
    request_line_max: u64,
    answer: F,
) -> Result<(), String>
where
    S: Send + Sync + 'static,
    F: Fn(String, Arc<S>) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<String, String>> + Send + 'static,
{
    loop {
        let (stream, _) = control
            .accept()
            .await
            .map_err(|e| format!("accepting a control connection: {e}"))?;
        tokio::spawn(serve_connection(
            stream,
            state.clone(),
            request_line_max,
            answer.clone(),
        ));
    }
}

/// Answers one control connection, one line per request, until it closes.
async fn serve_connection<S, F, Fut>(
    stream: TcpStream,
    state: Arc<S>,
    request_line_max: u64,
    answer: F,
) where
    F: Fn(String, Arc<S>) -> Fut,
    Fut: Future<Output = Result<String, String>>,
{
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    loop {
        let mut line = String::new();
        let reply = match (&mut read)
            .take(request_line_max)
            .read_line(&mut line)
            .await
        {
            Ok(0) => return,
            Ok(_) if !line.ends_with('\n') => "err request line too long".to_string(),
            Ok(_) => answer(line.trim().to_string(), state.clone())
                .await
                .unwrap_or_else(|why| format!("err {why}")),
            Err(e) => format!("err unreadable request: {e}"),
        };
        if write
            .write_all(format!("{reply}\n").as_bytes())
            .await
            .is_err()
        {
            return;
        }
    }
}

/// A running child. Dropping it SIGKILLs it.
pub struct ChildProcess {
    process: Child,
    /// Held open: the child exits when it closes.
    _stdin: ChildStdin,
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// Starts `command` (stdin and stdout piped, its own process group) and waits up to `wait`
/// for a stdout line containing `ready`; returns the child and that line from `ready` on
/// (libtest may print a test's name before it on the same line).
pub async fn spawn(
    mut command: Command,
    ready: &'static str,
    wait: Duration,
) -> Result<(ChildProcess, String), String> {
    let mut process = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot start a child process: {e}"))?;
    let (Some(stdin), Some(stdout)) = (process.stdin.take(), process.stdout.take()) else {
        let _ = process.kill();
        let _ = process.wait();
        return Err("a child's stdin or stdout is not piped".into());
    };
    // Owned from here: an early return below kills the child.
    let child = ChildProcess {
        process,
        _stdin: stdin,
    };
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let mut ready_tx = Some(ready_tx);
        let mut tail = VecDeque::new();
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            match (line.find(ready), ready_tx.take()) {
                (Some(at), Some(tx)) => {
                    let _ = tx.send(Ok(line[at..].to_string()));
                }
                (_, tx) => {
                    if tx.is_some() {
                        if tail.len() == OUTPUT_TAIL_LINES {
                            tail.pop_front();
                        }
                        tail.push_back(line);
                    }
                    ready_tx = tx;
                }
            }
        }
        if let Some(tx) = ready_tx {
            let tail: Vec<String> = tail.into_iter().collect();
            let _ = tx.send(Err(format!(
                "the child exited before it was ready; its last output:\n{}",
                tail.join("\n")
            )));
        }
    });
    let line = tokio::time::timeout(wait, ready_rx)
        .await
        .map_err(|_| format!("no child ready within {wait:?}"))?
        .map_err(|_| "the child's output reader stopped".to_string())??;
    Ok((child, line))
}

/// The value of `key=VALUE` in a line of space-separated fields.
pub fn field<'a>(line: &'a str, key: &str) -> Result<&'a str, String> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key).and_then(|w| w.strip_prefix('=')))
        .ok_or_else(|| format!("no {key} in {line:?}"))
}

/// Why a control request failed.
#[derive(Debug)]
pub enum AskError {
    /// Never reached the child (no connection): safe to send elsewhere.
    NotSent(String),
    /// Sent, but no whole answer came back: its effect is unknown.
    Lost(String),
}

impl std::fmt::Display for AskError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AskError::NotSent(why) => write!(f, "not sent: {why}"),
            AskError::Lost(why) => write!(f, "answer lost: {why}"),
        }
    }
}

/// One request over a fresh connection to a child's control port: its answer line
/// (at most `answer_line_max` bytes, newline removed), each step bounded by `wait`.
pub async fn ask(
    control: SocketAddr,
    request: &str,
    answer_line_max: u64,
    wait: Duration,
) -> Result<String, AskError> {
    let mut stream = match tokio::time::timeout(wait, TcpStream::connect(control)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return Err(AskError::NotSent(format!("connect {control}: {e}"))),
        Err(_) => return Err(AskError::NotSent(format!("connect {control}: timed out"))),
    };
    if let Err(e) = stream.write_all(format!("{request}\n").as_bytes()).await {
        return Err(AskError::Lost(format!("send to {control}: {e}")));
    }
    let mut reader = BufReader::new(stream).take(answer_line_max);
    let mut line = String::new();
    match tokio::time::timeout(wait, reader.read_line(&mut line)).await {
        Ok(Ok(_)) if line.ends_with('\n') => Ok(line.trim_end().to_string()),
        Ok(Ok(_)) => Err(AskError::Lost(format!(
            "{control} closed without an answer"
        ))),
        Ok(Err(e)) => Err(AskError::Lost(format!("read from {control}: {e}"))),
        Err(_) => Err(AskError::Lost(format!(
            "no answer from {control} within {wait:?}"
        ))),
    }
}
