//! Room names: which of the relay's independent maps an op, a connection or a grant belongs to.
//!
//! A connection picks its room with `?room=NAME`; without it, it is in the default room, which is
//! exactly upstream's single map. A name is 1 to [`MAX_LEN`] bytes of `A-Z a-z 0-9 - _ . :`, and
//! does not start with `_`: names starting with `_` are the relay's (`_` itself names the default
//! room wherever a name must be written out: grants, logs, the command line). Plain Rust.

use std::{fmt, sync::Arc};

/// Longest room name, in bytes.
pub const MAX_LEN: usize = 128;

/// How the default room is written where a name is needed.
pub const DEFAULT_NAME: &str = "_";

/// A room: the default one, or a named one. Cheap to clone; ordered with the default room first.
#[derive(Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Room(Option<Arc<str>>);

/// A name that is not a room's (empty, too long, a character outside the set, or reserved).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad room name: 1 to 128 bytes of A-Z a-z 0-9 - _ . :, not starting with _")]
pub struct BadRoom;

impl Room {
    /// The default room: upstream's one map.
    pub const DEFAULT: Room = Room(None);

    /// The room a client names (`?room=`).
    ///
    /// # Errors
    /// [`BadRoom`] for a name outside the documented set, the reserved ones included.
    pub fn parse(name: &str) -> Result<Room, BadRoom> {
        if is_valid(name) { Ok(Room(Some(Arc::from(name)))) } else { Err(BadRoom) }
    }

    /// Like [`Room::parse`], but `_` names the default room (command line, grants, logs).
    ///
    /// # Errors
    /// [`BadRoom`] for anything else that is not a valid name.
    pub fn from_written(name: &str) -> Result<Room, BadRoom> {
        if name == DEFAULT_NAME { Ok(Room::DEFAULT) } else { Room::parse(name) }
    }

    /// The name, `None` for the default room.
    pub fn name(&self) -> Option<&str> {
        self.0.as_deref()
    }

    /// Whether this is the default room.
    pub fn is_default(&self) -> bool {
        self.0.is_none()
    }

    /// The name as written out: `_` for the default room.
    pub fn written(&self) -> &str {
        self.name().unwrap_or(DEFAULT_NAME)
    }
}

/// Whether `name` is a valid name of a named room.
pub fn is_valid(name: &str) -> bool {
    (1..=MAX_LEN).contains(&name.len())
        && !name.starts_with('_')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
}

impl fmt::Display for Room {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.written())
    }
}

impl fmt::Debug for Room {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Room({})", self.written())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for good in ["a", "board-42", "A.b:c_d-e", &"x".repeat(MAX_LEN)] {
            assert_eq!(Room::parse(good).unwrap().name(), Some(good));
        }
        for bad in ["", "_", "_x", "a b", "a/b", "a*", "é", "a\0", &"x".repeat(MAX_LEN + 1)] {
            assert_eq!(Room::parse(bad), Err(BadRoom), "{bad:?}");
        }
        assert_eq!(Room::from_written("_"), Ok(Room::DEFAULT));
        assert_eq!(Room::from_written("b").unwrap().written(), "b");
        assert_eq!(Room::DEFAULT.to_string(), "_");
        assert!(Room::DEFAULT < Room::parse("a").unwrap());
    }
}
