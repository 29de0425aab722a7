//! `--config FILE`: a TOML file that sets any flag. Keys are the flags' names without the
//! dashes (`addr`, `data-dir`, `peers`, `endpoints`, `timeout-ms`, ...). Unknown keys and
//! values of the wrong type are refused with the key named.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Every flag a config file may set.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileConfig {
    // server
    pub addr: Option<String>,
    pub advertise_addr: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub peers: Option<Vec<String>>,
    pub regions: Option<u32>,
    pub engine: Option<String>,
    pub tick_ms: Option<u64>,
    pub election_timeout_ms: Option<u64>,
    pub snapshot_interval_s: Option<u64>,
    pub log: Option<String>,
    pub worker_threads: Option<usize>,
    pub quota_bytes: Option<u64>,
    pub watch_retention_ms: Option<u64>,
    pub pd_replicas: Option<u32>,
    pub label: Option<Vec<String>>,
    pub max_replicas: Option<u32>,
    pub max_store_down_time: Option<String>,
    pub pd_heartbeat_ms: Option<u64>,
    // kv, admin
    pub endpoints: Option<Vec<String>>,
    pub json: Option<bool>,
    pub timeout_ms: Option<u64>,
    // kv
    pub encoding: Option<crate::output::Encoding>,
    // everyone
    pub tls_ca: Option<PathBuf>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
}

impl FileConfig {
    /// Reads and parses `path`.
    pub fn load(path: &Path) -> Result<FileConfig, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("--config {}: cannot read it: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| format!("--config {}: {e}", path.display()))
    }
}

/// The TLS configuration from `--tls-ca`, `--tls-cert`, `--tls-key` (all three or none).
pub fn tls(
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
) -> Result<Option<flotilla_node::grpc::TlsConfig>, String> {
    match (ca, cert, key) {
        (None, None, None) => Ok(None),
        (Some(ca), Some(cert), Some(key)) => {
            flotilla_node::grpc::TlsConfig::from_pem_files(&ca, &cert, &key)
                .map(Some)
                .map_err(|e| format!("TLS: {e}"))
        }
        _ => Err("TLS needs all of --tls-ca, --tls-cert and --tls-key".into()),
    }
}

/// A comma-separated list flag, trimmed, without empty items.
pub fn list(items: Vec<String>) -> Vec<String> {
    items
        .iter()
        .flat_map(|s| s.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_known_keys_and_refuses_unknown_ones() {
        let config: FileConfig = toml::from_str(
            "addr = \"127.0.0.1:1\"\ndata-dir = \"/tmp/x\"\npeers = [\"a:1\", \"b:2\"]\n",
        )
        .unwrap();
        assert_eq!(config.addr.as_deref(), Some("127.0.0.1:1"));
        assert_eq!(config.peers.unwrap().len(), 2);
        let error = toml::from_str::<FileConfig>("adr = \"x\"")
            .unwrap_err()
            .to_string();
        assert!(error.contains("adr"), "{error}");
        let error = toml::from_str::<FileConfig>("regions = \"three\"")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("regions") || error.contains("integer"),
            "{error}"
        );
    }

    #[test]
    fn the_kv_encoding_can_be_set_in_the_file() {
        let config: FileConfig = toml::from_str("encoding = \"base64\"\n").unwrap();
        assert_eq!(config.encoding, Some(crate::output::Encoding::Base64));
        let error = toml::from_str::<FileConfig>("encoding = \"hex\"")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("hex") || error.contains("variant"),
            "{error}"
        );
    }
}
