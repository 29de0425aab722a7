//! The simulator's state machine: a register per key, with write and compare-and-set.
//!
//! Owns: the encoding of client commands in log entries and their effect. Must never: be
//! trusted as input validation for anything but the simulator's own entries.

use std::collections::BTreeMap;

use bytes::{BufMut, Bytes, BytesMut};

/// A command carried by a log entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Command {
    /// Operation id (unique per simulation), to find the proposer's completion.
    pub op_id: u64,
    /// Register.
    pub key: u64,
    /// What to do.
    pub kind: CommandKind,
}

/// Write or compare-and-set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommandKind {
    /// Set the register.
    Write(u64),
    /// Set the register to `new` if it holds `expected`.
    Cas {
        /// Expected current value (`None` = absent).
        expected: Option<u64>,
        /// New value.
        new: u64,
    },
}

impl Command {
    /// Encodes to bytes.
    #[must_use]
    pub fn encode(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(41);
        b.put_u64_le(self.op_id);
        b.put_u64_le(self.key);
        match self.kind {
            CommandKind::Write(v) => {
                b.put_u8(1);
                b.put_u64_le(v);
            }
            CommandKind::Cas { expected, new } => {
                b.put_u8(if expected.is_some() { 2 } else { 3 });
                b.put_u64_le(expected.unwrap_or(0));
                b.put_u64_le(new);
            }
        }
        b.freeze()
    }

    /// Decodes; `None` for anything malformed.
    #[must_use]
    pub fn decode(data: &[u8]) -> Option<Command> {
        let word = |at: usize| -> Option<u64> {
            let bytes: [u8; 8] = data.get(at..at + 8)?.try_into().ok()?;
            Some(u64::from_le_bytes(bytes))
        };
        let op_id = word(0)?;
        let key = word(8)?;
        let kind = match data.get(16)? {
            1 => CommandKind::Write(word(17)?),
            2 => CommandKind::Cas {
                expected: Some(word(17)?),
                new: word(25)?,
            },
            3 => CommandKind::Cas {
                expected: None,
                new: word(25)?,
            },
            _ => return None,
        };
        Some(Command { op_id, key, kind })
    }
}

/// The registers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KvState {
    /// Value per key.
    pub registers: BTreeMap<u64, u64>,
}

impl KvState {
    /// Applies a command; returns whether a compare-and-set swapped (true for writes).
    pub fn apply(&mut self, command: &Command) -> bool {
        match command.kind {
            CommandKind::Write(v) => {
                self.registers.insert(command.key, v);
                true
            }
            CommandKind::Cas { expected, new } => {
                if self.registers.get(&command.key).copied() == expected {
                    self.registers.insert(command.key, new);
                    true
                } else {
                    false
                }
            }
        }
    }

    /// Reads a register.
    #[must_use]
    pub fn get(&self, key: u64) -> Option<u64> {
        self.registers.get(&key).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_round_trips_and_rejects_garbage() {
        for kind in [
            CommandKind::Write(7),
            CommandKind::Cas {
                expected: Some(3),
                new: 4,
            },
            CommandKind::Cas {
                expected: None,
                new: 9,
            },
        ] {
            let c = Command {
                op_id: 11,
                key: 2,
                kind,
            };
            assert_eq!(Command::decode(&c.encode()), Some(c));
        }
        assert_eq!(Command::decode(b"short"), None);
        let mut bad = Command {
            op_id: 1,
            key: 1,
            kind: CommandKind::Write(1),
        }
        .encode()
        .to_vec();
        bad[16] = 9;
        assert_eq!(Command::decode(&bad), None);
    }
}
