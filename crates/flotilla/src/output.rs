//! The machine-readable contract of `kv` and `admin` (scripts depend on it): with `--json`
//! exactly one JSON object on stdout — `{"ok":true,...}` or
//! `{"ok":false,"error":KIND,"message":TEXT,"indeterminate":BOOL}` — and the exit status
//! 0 ok, 1 certainly not done, 2 usage error, 3 outcome unknown.

use bytes::Bytes;
use flotilla_kv::client::ClientError;
use flotilla_node::grpc::CliError;
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

/// How `kv` reads keys, values and range bounds from its arguments and shows them in its
/// output (`--encoding`).
///
/// `Utf8` takes arguments as their UTF-8 bytes and shows bytes as UTF-8 with invalid
/// sequences replaced by U+FFFD, so what it prints may not be the stored bytes. `Base64`
/// (RFC 4648 standard alphabet, padded, strict) carries any bytes exactly both ways.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    #[default]
    Utf8,
    Base64,
}

impl Encoding {
    /// The bytes an argument stands for; a usage failure names the argument (`what`).
    pub fn decode(self, what: &str, argument: &str) -> Result<Bytes, Failure> {
        match self {
            Encoding::Utf8 => Ok(Bytes::copy_from_slice(argument.as_bytes())),
            Encoding::Base64 => {
                use base64::Engine as _;
                base64::engine::general_purpose::STANDARD
                    .decode(argument)
                    .map(Bytes::from)
                    .map_err(|e| {
                        Failure::usage(format!(
                            "{what} {argument:?} is not valid base64 (--encoding base64: \
                             standard alphabet with padding): {e}"
                        ))
                    })
            }
        }
    }

    /// Bytes as printed text in this encoding.
    pub fn show(self, bytes: &[u8]) -> String {
        match self {
            Encoding::Utf8 => String::from_utf8_lossy(bytes).into_owned(),
            Encoding::Base64 => {
                use base64::Engine as _;
                base64::engine::general_purpose::STANDARD.encode(bytes)
            }
        }
    }

    /// Bytes as a JSON string in this encoding.
    pub fn json(self, bytes: &[u8]) -> Value {
        Value::String(self.show(bytes))
    }
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

/// The failure a CLI-service error makes: its kind, its message, and whether the operation's
/// outcome is unknown.
pub fn cli_failure(error: CliError) -> Failure {
    Failure {
        kind: error.kind().to_string(),
        message: error.to_string(),
        indeterminate: matches!(error, CliError::Unknown(_)),
        usage: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips_every_byte() {
        let all: Vec<u8> = (0..=255u8).collect();
        for length in [0, 1, 2, 3, 4, 255, 256] {
            let bytes = &all[..length.min(all.len())];
            let shown = Encoding::Base64.show(bytes);
            let back = Encoding::Base64.decode("KEY", &shown).unwrap();
            assert_eq!(&back[..], bytes, "length {length}: {shown}");
        }
    }

    #[test]
    fn base64_is_the_standard_padded_alphabet() {
        // RFC 4648 §10 test vectors.
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(Encoding::Base64.show(plain.as_bytes()), encoded);
            assert_eq!(
                &Encoding::Base64.decode("VALUE", encoded).unwrap()[..],
                plain.as_bytes()
            );
        }
        // 0xfb 0xff: `+` and `/`, not the URL-safe `-` and `_`.
        assert_eq!(Encoding::Base64.show(&[0xfb, 0xff]), "+/8=");
    }

    #[test]
    fn bad_base64_is_a_usage_failure_naming_the_argument() {
        for bad in [
            "Zg", "Zg=", "Zm9v!", "-_8=", "Zh==", " Zm9v", "Zm9v\n", "====",
        ] {
            let failure = Encoding::Base64.decode("END", bad).unwrap_err();
            assert!(failure.usage, "{bad:?}");
            assert_eq!(failure.exit_code(), EXIT_USAGE);
            assert!(
                failure
                    .message
                    .starts_with(&format!("END {bad:?} is not valid base64")),
                "{}",
                failure.message
            );
        }
    }

    #[test]
    fn utf8_takes_arguments_as_they_are_and_replaces_invalid_bytes_in_output() {
        assert_eq!(&Encoding::Utf8.decode("KEY", "Zg").unwrap()[..], b"Zg");
        assert_eq!(Encoding::Utf8.show(b"a\xffb"), "a\u{fffd}b");
        assert_eq!(Encoding::Utf8.json(b"x"), Value::String("x".into()));
    }
}
