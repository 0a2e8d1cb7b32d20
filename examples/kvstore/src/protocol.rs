//! The line protocol: one request per line, one reply per line.
//!
//! ```text
//! SET key value   ->  OK <seq>            seq: the store's write sequence after this write
//! GET key         ->  VAL value | NIL
//! PING            ->  PONG
//! STATS           ->  STATS keys=N seq=N bytes=N
//! anything wrong  ->  ERR message
//! ```
//!
//! Commands are case-insensitive. A line ends with `\n` (a `\r` before it is ignored) and is at
//! most [`MAX_LINE`] bytes. A key is printable ASCII without spaces; a value is the rest of the
//! line after the key and one space, printable ASCII with spaces allowed. Limits are those of
//! the state file ([`crate::store::MAX_KEY`], [`crate::store::MAX_VALUE`]).

use thiserror::Error;

use crate::store::{self, StoreError};

/// Longest request line, without its newline.
pub const MAX_LINE: usize = 512;

/// Errors in a request or a reply line.
#[derive(Debug, Error)]
pub enum ProtocolError {
    /// The line is empty.
    #[error("empty request")]
    Empty,
    /// The command word is not known.
    #[error("unknown command '{command}'")]
    Unknown {
        /// The command word, cut to 32 printable bytes.
        command: String,
    },
    /// An argument is missing.
    #[error("{command}: missing {field}")]
    Missing {
        /// The command.
        command: &'static str,
        /// The missing argument.
        field: &'static str,
    },
    /// There is more on the line than the command takes.
    #[error("{command}: unexpected argument after the {after}")]
    Extra {
        /// The command.
        command: &'static str,
        /// The last argument it takes.
        after: &'static str,
    },
    /// The line is longer than [`MAX_LINE`].
    #[error("line: longer than {MAX_LINE} bytes")]
    LineTooLong,
    /// A key or a value is out of bounds.
    #[error(transparent)]
    Field(#[from] StoreError),
    /// A reply line that is not one of the replies.
    #[error("malformed reply '{line}'")]
    BadReply {
        /// The line, cut to 64 printable bytes.
        line: String,
    },
}

/// A parsed request; borrows the line.
#[derive(Debug, PartialEq, Eq)]
pub enum Request<'a> {
    /// `SET key value`
    Set {
        /// The key.
        key: &'a [u8],
        /// The value.
        value: &'a [u8],
    },
    /// `GET key`
    Get {
        /// The key.
        key: &'a [u8],
    },
    /// `PING`
    Ping,
    /// `STATS`
    Stats,
}

/// A reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// `OK <seq>`
    Ok {
        /// The write's sequence number.
        seq: u64,
    },
    /// `VAL value`
    Val(Vec<u8>),
    /// `NIL`
    Nil,
    /// `PONG`
    Pong,
    /// `STATS keys=N seq=N bytes=N`
    Stats {
        /// Live keys.
        keys: u64,
        /// Write sequence.
        seq: u64,
        /// Bytes of live keys and values.
        bytes: u64,
    },
    /// `ERR message`
    Err(String),
}

fn printable(bytes: &[u8], max: usize) -> String {
    bytes
        .iter()
        .take(max)
        .map(|&b| {
            if b == b' ' || b.is_ascii_graphic() {
                b as char
            } else {
                '?'
            }
        })
        .collect()
}

fn split_word(s: &[u8]) -> (&[u8], Option<&[u8]>) {
    match s.iter().position(|&b| b == b' ') {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    }
}

/// Parses one request line (without its `\n`).
pub fn parse(line: &[u8]) -> Result<Request<'_>, ProtocolError> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.len() > MAX_LINE {
        return Err(ProtocolError::LineTooLong);
    }
    if line.is_empty() {
        return Err(ProtocolError::Empty);
    }
    let (command, rest) = split_word(line);
    if command.eq_ignore_ascii_case(b"SET") {
        let (key, value) = split_word(rest.ok_or(ProtocolError::Missing {
            command: "SET",
            field: "key",
        })?);
        let value = value.ok_or(ProtocolError::Missing {
            command: "SET",
            field: "value",
        })?;
        store::check_key(key)?;
        store::check_value(value)?;
        Ok(Request::Set { key, value })
    } else if command.eq_ignore_ascii_case(b"GET") {
        let (key, extra) = split_word(rest.ok_or(ProtocolError::Missing {
            command: "GET",
            field: "key",
        })?);
        if extra.is_some() {
            return Err(ProtocolError::Extra {
                command: "GET",
                after: "key",
            });
        }
        store::check_key(key)?;
        Ok(Request::Get { key })
    } else if command.eq_ignore_ascii_case(b"PING") || command.eq_ignore_ascii_case(b"STATS") {
        let (request, name) = if command.eq_ignore_ascii_case(b"PING") {
            (Request::Ping, "PING")
        } else {
            (Request::Stats, "STATS")
        };
        if rest.is_some() {
            return Err(ProtocolError::Extra {
                command: name,
                after: "command",
            });
        }
        Ok(request)
    } else {
        Err(ProtocolError::Unknown {
            command: printable(command, 32),
        })
    }
}

impl Reply {
    /// Appends the reply and its newline to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Self::Ok { seq } => out.extend_from_slice(format!("OK {seq}").as_bytes()),
            Self::Val(value) => {
                out.extend_from_slice(b"VAL ");
                out.extend_from_slice(value);
            }
            Self::Nil => out.extend_from_slice(b"NIL"),
            Self::Pong => out.extend_from_slice(b"PONG"),
            Self::Stats { keys, seq, bytes } => out
                .extend_from_slice(format!("STATS keys={keys} seq={seq} bytes={bytes}").as_bytes()),
            Self::Err(message) => {
                out.extend_from_slice(b"ERR ");
                out.extend_from_slice(printable(message.as_bytes(), 256).as_bytes());
            }
        }
        out.push(b'\n');
    }

    /// Parses a reply line (without its `\n`); the client side of [`Reply::encode`].
    pub fn parse(line: &str) -> Result<Self, ProtocolError> {
        let bad = || ProtocolError::BadReply {
            line: printable(line.as_bytes(), 64),
        };
        let (word, rest) = line
            .split_once(' ')
            .map_or((line, None), |(w, r)| (w, Some(r)));
        match (word, rest) {
            ("OK", Some(seq)) => seq.parse().map(|seq| Self::Ok { seq }).map_err(|_| bad()),
            ("VAL", Some(value)) => Ok(Self::Val(value.as_bytes().to_vec())),
            ("NIL", None) => Ok(Self::Nil),
            ("PONG", None) => Ok(Self::Pong),
            ("ERR", Some(message)) => Ok(Self::Err(message.to_owned())),
            ("STATS", Some(fields)) => {
                let mut values = [None; 3];
                for field in fields.split(' ') {
                    let (name, value) = field.split_once('=').ok_or_else(bad)?;
                    let slot = ["keys", "seq", "bytes"]
                        .iter()
                        .position(|n| *n == name)
                        .ok_or_else(bad)?;
                    values[slot] = Some(value.parse::<u64>().map_err(|_| bad())?);
                }
                match values {
                    [Some(keys), Some(seq), Some(bytes)] => Ok(Self::Stats { keys, seq, bytes }),
                    _ => Err(bad()),
                }
            }
            _ => Err(bad()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{MAX_KEY, MAX_VALUE};

    #[test]
    fn requests() {
        let key64 = format!("GET {}", "k".repeat(MAX_KEY));
        let cases: Vec<(&[u8], Result<Request<'_>, &str>)> = vec![
            (b"PING", Ok(Request::Ping)),
            (b"ping\r", Ok(Request::Ping)),
            (b"STATS", Ok(Request::Stats)),
            (b"GET a", Ok(Request::Get { key: b"a" })),
            (
                key64.as_bytes(),
                Ok(Request::Get {
                    key: &key64.as_bytes()[4..],
                }),
            ),
            (
                b"SET a b c",
                Ok(Request::Set {
                    key: b"a",
                    value: b"b c",
                }),
            ),
            (
                b"set k-000001 v\r",
                Ok(Request::Set {
                    key: b"k-000001",
                    value: b"v",
                }),
            ),
            (b"", Err("empty request")),
            (b"\r", Err("empty request")),
            (b"FLUSHALL", Err("unknown command 'FLUSHALL'")),
            (b"\x00\x01", Err("unknown command '??'")),
            (b"SET", Err("SET: missing key")),
            (b"SET k", Err("SET: missing value")),
            (b"SET k ", Err("value: empty")),
            (b"SET  v", Err("key: empty")),
            (b"SET k v\x07", Err("value: byte 1 is not printable ASCII")),
            (b"GET", Err("GET: missing key")),
            (b"GET a b", Err("GET: unexpected argument after the key")),
            (
                b"PING now",
                Err("PING: unexpected argument after the command"),
            ),
            (
                b"STATS x",
                Err("STATS: unexpected argument after the command"),
            ),
        ];
        for (line, want) in cases {
            let got = parse(line).map_err(|e| e.to_string());
            match want {
                Ok(request) => assert_eq!(got.as_ref(), Ok(&request), "{line:?}"),
                Err(message) => assert_eq!(got.unwrap_err(), message, "{line:?}"),
            }
        }
    }

    #[test]
    fn oversize_is_an_error_naming_the_field() {
        let key = "k".repeat(MAX_KEY + 1);
        let line = format!("SET {key} v");
        assert_eq!(
            parse(line.as_bytes()).unwrap_err().to_string(),
            "key: 65 bytes, the limit is 64"
        );
        let line = format!("GET {key}");
        assert!(parse(line.as_bytes()).is_err());
        let line = format!("SET k {}", "v".repeat(MAX_VALUE + 1));
        assert_eq!(
            parse(line.as_bytes()).unwrap_err().to_string(),
            "value: 201 bytes, the limit is 200"
        );
        let line = vec![b'x'; MAX_LINE + 1];
        assert_eq!(
            parse(&line).unwrap_err().to_string(),
            "line: longer than 512 bytes"
        );
        // The longest valid SET fits in a line.
        let line = format!("SET {} {}", "k".repeat(MAX_KEY), "v".repeat(MAX_VALUE));
        assert!(line.len() <= MAX_LINE);
        assert!(parse(line.as_bytes()).is_ok());
    }

    #[test]
    fn replies_round_trip() {
        let replies = [
            Reply::Ok { seq: 42 },
            Reply::Val(b"a value with spaces".to_vec()),
            Reply::Nil,
            Reply::Pong,
            Reply::Stats {
                keys: 3,
                seq: 9,
                bytes: 120,
            },
            Reply::Err("store full: 90 keys".into()),
        ];
        for reply in replies {
            let mut line = Vec::new();
            reply.encode(&mut line);
            assert_eq!(line.pop(), Some(b'\n'));
            assert!(!line.contains(&b'\n'));
            let text = String::from_utf8(line).unwrap();
            assert_eq!(Reply::parse(&text).unwrap(), reply, "{text}");
        }
        let mut line = Vec::new();
        Reply::Stats {
            keys: 1,
            seq: 2,
            bytes: 3,
        }
        .encode(&mut line);
        assert_eq!(line, b"STATS keys=1 seq=2 bytes=3\n");
        for bad in [
            "",
            "OK",
            "OK x",
            "NIL x",
            "STATS keys=1",
            "STATS a=1 seq=2 bytes=3",
            "HELLO",
        ] {
            assert!(Reply::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn error_replies_stay_on_one_line() {
        let mut line = Vec::new();
        Reply::Err("two\nlines".into()).encode(&mut line);
        assert_eq!(line, b"ERR two?lines\n");
    }
}
