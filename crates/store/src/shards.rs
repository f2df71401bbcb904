//! The project's live work, partitioned: a unit belongs to shard `unit_id mod SHARDS`, and each
//! shard is decided by one coordinator at a time (the one holding its lease, see
//! `postgres/lease.rs`). A lone coordinator (SQLite, or PostgreSQL with no other coordinator)
//! holds every shard. Pure: no IO.
//!
//! Why by unit id: units of one batch get consecutive ids, so every batch is spread over every
//! shard, and every coordinator holding shards has a share of every batch to hand out.

use std::collections::BTreeSet;

/// Shards the project's units are spread over: many more than coordinators, so a coordinator
/// that goes hands several small pieces to several others.
pub(crate) const SHARDS: u64 = 16;

/// The shard a unit belongs to.
pub(crate) fn shard_of(unit_id: u64) -> u64 {
    unit_id % SHARDS
}

/// The shards one writer decides.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Shards {
    /// `None`: every shard, and no other coordinator shares the database.
    held: Option<BTreeSet<u64>>,
}

impl Shards {
    /// Every shard, for a store no other coordinator shares.
    pub(crate) fn alone() -> Self {
        Self { held: None }
    }

    /// `held` of a database other coordinators share.
    pub(crate) fn shared(held: impl IntoIterator<Item = u64>) -> Self {
        Self {
            held: Some(held.into_iter().filter(|s| *s < SHARDS).collect()),
        }
    }

    /// Whether other coordinators may hold shards of this database (so reports may be
    /// forwarded, and changes to other shards' units must be announced).
    pub(crate) fn is_shared(&self) -> bool {
        self.held.is_some()
    }

    /// Whether this writer decides `unit_id`.
    pub(crate) fn holds_unit(&self, unit_id: u64) -> bool {
        self.holds(shard_of(unit_id))
    }

    /// How many shards these are.
    pub(crate) fn count(&self) -> u64 {
        self.held.as_ref().map_or(SHARDS, |held| held.len() as u64)
    }

    pub(crate) fn holds(&self, shard: u64) -> bool {
        self.held.as_ref().is_none_or(|held| held.contains(&shard))
    }

    /// An SQL condition true for the units (by their id column `column`) of these shards: digits
    /// only, so nothing needs quoting.
    pub(crate) fn sql_condition(&self, column: &str) -> String {
        match &self.held {
            None => "TRUE".to_owned(),
            Some(held) if held.is_empty() => "FALSE".to_owned(),
            Some(held) => format!(
                "({column} % {SHARDS}) IN ({})",
                held.iter()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_unit_is_decided_by_the_holder_of_its_shard_only() {
        let held = Shards::shared([1, 3]);
        assert!(held.holds_unit(1) && held.holds_unit(17) && held.holds_unit(3));
        assert!(!held.holds_unit(2) && !held.holds_unit(16));
        assert!(Shards::alone().holds_unit(2));
        assert_eq!(held.sql_condition("u.id"), "(u.id % 16) IN (1, 3)");
        assert_eq!(Shards::shared([]).sql_condition("u.id"), "FALSE");
        assert_eq!(Shards::alone().sql_condition("u.id"), "TRUE");
        assert!(!Shards::alone().is_shared() && Shards::shared([]).is_shared());
    }
}
