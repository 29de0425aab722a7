//! The machine-readable contract of `kv` and `admin` (scripts depend on it): with `--json`
//! exactly one JSON object on stdout — `{"ok":true,...}` or
//! `{"ok":false,"error":KIND,"message":TEXT,"indeterminate":BOOL}` — and the exit status
//! 0 ok, 1 certainly not done, 2 usage error, 3 outcome unknown.

use bytes::Bytes;
use flotilla_kv::client::ClientError;
use serde_json::{json, Map, Value};

/// Success.
pub const EXIT_OK: i32 = 0;
/// The operation certainly did not take effect.
pub const EXIT_FAILED: i32 = 1;
/// Bad command line or config file.
pub const EXIT_USAGE: i32 = 2;
/// The outcome is unknown.
pub const EXIT_UNKNOWN: i32 = 3;

/// A failed command.
#[derive(Debug, Clone)]
pub struct Failure {
    pub kind: String,
    pub message: String,
    pub indeterminate: bool,
    pub usage: bool,
}

impl Failure {
    pub fn usage(message: impl Into<String>) -> Failure {
        Failure {
            kind: "Usage".into(),
            message: message.into(),
            indeterminate: false,
            usage: true,
        }
    }

    pub fn failed(kind: &str, message: impl Into<String>) -> Failure {
        Failure {
            kind: kind.into(),
            message: message.into(),
            indeterminate: false,
            usage: false,
        }
    }

    pub fn exit_code(&self) -> i32 {
        if self.usage {
            EXIT_USAGE
        } else if self.indeterminate {
            EXIT_UNKNOWN
        } else {
            EXIT_FAILED
        }
    }

    pub fn to_json(&self) -> Value {
        json!({
            "ok": false,
            "error": self.kind,
            "message": self.message,
            "indeterminate": self.indeterminate,
        })
    }

    pub fn print_json(&self) {
        println!("{}", self.to_json());
    }

    /// Prints the failure (JSON on stdout, or text on stderr) and returns the exit code.
    pub fn report(&self, command: &str, json: bool) -> i32 {
        if json {
            self.print_json();
        } else if self.indeterminate {
            eprintln!(
                "flotilla {command}: {} ({}): the outcome is unknown, the write may or may not have applied",
                self.message, self.kind
            );
        } else {
            eprintln!("flotilla {command}: {} ({})", self.message, self.kind);
        }
        self.exit_code()
    }
}

impl From<ClientError> for Failure {
    fn from(error: ClientError) -> Failure {
        Failure {
            kind: error.kind,
            message: error.message,
            indeterminate: error.indeterminate,
            usage: false,
        }
    }
}

/// Bytes as JSON text (UTF-8; invalid sequences replaced with U+FFFD).
pub fn text(bytes: &Bytes) -> Value {
    Value::String(String::from_utf8_lossy(bytes).into_owned())
}

/// `{"ok":true, ...fields}`.
pub fn success(fields: Vec<(&str, Value)>) -> Value {
    let mut object = Map::new();
    object.insert("ok".into(), Value::Bool(true));
    for (key, value) in fields {
        object.insert(key.to_string(), value);
    }
    Value::Object(object)
}

/// The small runtime `kv` and `admin` run one operation on.
pub fn client_runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Failure::failed("Internal", format!("cannot start the runtime: {e}")))
}
