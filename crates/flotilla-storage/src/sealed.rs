//! Small text files sealed with a checksum: a body of lines closed by a `crc32c <hex>` line
//! (the data directory's `store.meta`, the address book), replaced atomically.
//!
//! Owns: the seal's format and the atomic, durable replacement (temp file, fsync, rename,
//! directory fsync). Must never: hand back a body whose checksum does not match, or leave a
//! half-written file in place of a good one.

use std::io::Write as _;
use std::path::Path;

/// `body` (lines, each ending in `\n`) followed by its `crc32c <hex>` line.
#[must_use]
pub fn seal(body: &str) -> String {
    let crc = crc32c::crc32c(body.as_bytes());
    format!("{body}crc32c {crc:08x}\n")
}

/// The body of a sealed `text`, checked; errors name `path` and say what is wrong (`what`
/// names the kind of file for a text too short to be one).
pub fn unseal<'a>(text: &'a str, path: &Path, what: &str) -> Result<&'a str, String> {
    let bad = |why: String| format!("{}: {why}", path.display());
    let body_end = text
        .trim_end_matches('\n')
        .rfind('\n')
        .map(|i| i + 1)
        .ok_or_else(|| bad(format!("too short to be {what}")))?;
    let (body, crc_line) = text.split_at(body_end);
    let stored = crc_line
        .trim_end()
        .strip_prefix("crc32c ")
        .and_then(|h| u32::from_str_radix(h, 16).ok())
        .ok_or_else(|| bad("last line is not `crc32c <hex>`".into()))?;
    let actual = crc32c::crc32c(body.as_bytes());
    if stored != actual {
        return Err(bad(format!(
            "checksum mismatch (stored {stored:08x}, computed {actual:08x}): the file is damaged"
        )));
    }
    Ok(body)
}

/// Replaces `path` with `text` atomically and durably (its directory is created if missing).
pub fn write_atomically(path: &Path, text: &str) -> Result<(), String> {
    let mut temp = path.as_os_str().to_owned();
    temp.push(".tmp");
    let temp = std::path::PathBuf::from(temp);
    let write = || -> std::io::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut file = std::fs::File::create(&temp)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&temp, path)?;
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    };
    write().map_err(|e| format!("cannot write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_body_comes_back_and_any_change_is_refused() {
        let text = seal("one\ntwo\n");
        let path = Path::new("f");
        assert_eq!(unseal(&text, path, "a file"), Ok("one\ntwo\n"));
        let error = unseal(&text.replace("two", "tw0"), path, "a file").unwrap_err();
        assert!(error.contains("checksum mismatch"), "{error}");
        assert!(unseal("", path, "a file")
            .unwrap_err()
            .contains("too short"));
        assert!(unseal("one\ncrc32c zz\n", path, "a file").is_err());
    }
}
