//! `flotilla kv watch PREFIX [--from TOKEN] [--until-ms N]`: the changes to the keys
//! starting with PREFIX, one JSON object per line per event, until stopped.
//!
//! Each line is `{"type":"put"|"delete","key":..,"value":..,"token":..}` (keys and values
//! in `--encoding`; a delete's value is null); `--from TOKEN` resumes right after the event
//! that carried TOKEN. A fatal error ends the stream with a last line
//! `{"ok":false,"error":KIND,"message":..,"resume_from":TOKEN|null}` and exit 1; Ctrl-C or
//! `--until-ms` end it with exit 0.

use std::io::Write;
use std::time::Duration;

use bytes::Bytes;
use flotilla_kv::client::{ClientOptions, KvClient, WatchEventKind};
use serde_json::{json, Value};

use crate::output::{Encoding, Failure, EXIT_OK};

/// Exit code of a watch ended by an error.
const EXIT_FAILED: i32 = 1;

/// The last line of a watch that failed.
fn failure_line(kind: &str, message: &str, resume_from: Option<&str>) -> Value {
    json!({
        "ok": false,
        "error": kind,
        "message": message,
        "resume_from": resume_from,
    })
}

fn print(line: &Value) {
    let mut out = std::io::stdout().lock();
    // A closed stdout (the reader went away) ends nothing here: Ctrl-C or the limit do.
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Runs the watch; returns the exit code.
pub fn run(
    (endpoints, options, json): (Vec<String>, ClientOptions, bool),
    encoding: Encoding,
    prefix: &str,
    from: Option<String>,
    until_ms: Option<u64>,
) -> i32 {
    let prefix = match encoding.decode("PREFIX", prefix) {
        Ok(prefix) => prefix,
        Err(failure) => return failure.report("kv", json),
    };
    if let Err(e) = flotilla_kv::limits::check_key(&prefix) {
        let failure = Failure::failed("KeyTooLarge", format!("prefix: {e}"));
        return failure.report("kv", json);
    }
    let runtime = match crate::output::client_runtime() {
        Ok(runtime) => runtime,
        Err(failure) => return failure.report("kv", json),
    };
    runtime.block_on(watch(
        (endpoints, options),
        encoding,
        prefix,
        from,
        until_ms,
    ))
}

async fn watch(
    (endpoints, options): (Vec<String>, ClientOptions),
    encoding: Encoding,
    prefix: Bytes,
    from: Option<String>,
    until_ms: Option<u64>,
) -> i32 {
    let fail = |kind: &str, message: &str, resume_from: Option<&str>| {
        print(&failure_line(kind, message, resume_from));
        EXIT_FAILED
    };
    let client = match KvClient::connect(endpoints, options).await {
        Ok(client) => client,
        Err(e) => return fail(&e.kind, &e.message, None),
    };
    let mut watcher = match client.watch(prefix, from.as_deref()).await {
        Ok(watcher) => watcher,
        Err(e) => return fail(&e.kind, &e.message, None),
    };
    let until = async {
        match until_ms {
            Some(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(until);
    loop {
        let next = tokio::select! {
            next = watcher.next() => next,
            () = &mut until => return EXIT_OK,
            _ = tokio::signal::ctrl_c() => return EXIT_OK,
        };
        match next {
            Some(Ok(event)) => {
                let (kind, value) = match event.kind {
                    WatchEventKind::Put => ("put", encoding.json(&event.value)),
                    WatchEventKind::Delete => ("delete", Value::Null),
                };
                print(&json!({
                    "type": kind,
                    "key": encoding.json(&event.key),
                    "value": value,
                    "token": event.token,
                }));
            }
            Some(Err(e)) => return fail(&e.kind, &e.message, e.resume_from.as_deref()),
            None => return fail("Internal", "the watch ended without an error", None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_failure_line_names_the_position_to_resume_from_or_null() {
        let line = failure_line("Compacted", "gone", Some("01ab"));
        assert_eq!(
            line.to_string(),
            r#"{"error":"Compacted","message":"gone","ok":false,"resume_from":"01ab"}"#
        );
        assert_eq!(
            failure_line("Unavailable", "x", None)["resume_from"],
            Value::Null
        );
    }
}
