//! The one SQL interface both backends implement, so the store's logic (the hot path, the
//! researchers' and dashboards' reads, the statistics) is written once and runs unchanged on
//! SQLite and on PostgreSQL.
//!
//! Statements use SQL both engines read the same way: `?N` parameters (PostgreSQL's backend turns
//! them into `$N`), `ON CONFLICT ... DO NOTHING`, `CAST(SUM(...) AS BIGINT)` where PostgreSQL
//! would answer `numeric`, `CASE` instead of boolean sums, 0/1 integers for flags. Values cross
//! the seam as [`Value`]s and rows come back as owned [`Row`]s.
//!
//! Writes whose result nobody reads go through [`Sql::execute`], which a backend may send later:
//! PostgreSQL's pipelines them and sends them all at once, before the next query and before the
//! commit, so a group of operations costs one round trip, not one per statement. Ids are
//! reserved ahead ([`Sql::reserve_ids`]) for the same reason: an insert never waits to learn its
//! row's id.

use crate::StoreError;

/// A value bound to a parameter or read from a column.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Value {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

impl From<i64> for Value {
    fn from(value: i64) -> Self {
        Self::Int(value)
    }
}

impl From<u64> for Value {
    /// Ids, times and fuel are `u64` in Herd and `BIGINT` in the database; values past `i64::MAX`
    /// (none occur) saturate rather than wrap.
    fn from(value: u64) -> Self {
        Self::Int(i64::try_from(value).unwrap_or(i64::MAX))
    }
}

impl From<u32> for Value {
    fn from(value: u32) -> Self {
        Self::Int(i64::from(value))
    }
}

impl From<i32> for Value {
    fn from(value: i32) -> Self {
        Self::Int(i64::from(value))
    }
}

impl From<usize> for Value {
    fn from(value: usize) -> Self {
        Self::from(value as u64)
    }
}

impl From<bool> for Value {
    fn from(value: bool) -> Self {
        Self::Int(i64::from(value))
    }
}

impl From<f64> for Value {
    fn from(value: f64) -> Self {
        Self::Real(value)
    }
}

impl From<&str> for Value {
    fn from(value: &str) -> Self {
        Self::Text(value.to_owned())
    }
}

impl From<String> for Value {
    fn from(value: String) -> Self {
        Self::Text(value)
    }
}

impl From<&String> for Value {
    fn from(value: &String) -> Self {
        Self::Text(value.clone())
    }
}

impl From<&[u8]> for Value {
    fn from(value: &[u8]) -> Self {
        Self::Blob(value.to_vec())
    }
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(value: Option<T>) -> Self {
        value.map_or(Self::Null, Into::into)
    }
}

/// Parameters for a statement: `args![a, b, c]` converts each into a [`Value`].
macro_rules! args {
    ($($value:expr),* $(,)?) => {
        [$($crate::sql::Value::from($value)),*]
    };
}
pub(crate) use args;

/// One row of a query's answer, its columns in the order selected.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Row(pub(crate) Vec<Value>);

impl Row {
    fn column(&self, index: usize) -> Result<&Value, StoreError> {
        self.0
            .get(index)
            .ok_or_else(|| StoreError::Corrupt(format!("a row has no column {index}")))
    }

    fn mismatch(&self, index: usize, wanted: &str) -> StoreError {
        StoreError::Corrupt(format!(
            "column {index} holds {:?}, not {wanted}",
            self.0.get(index)
        ))
    }

    pub(crate) fn opt_int(&self, index: usize) -> Result<Option<i64>, StoreError> {
        match self.column(index)? {
            Value::Null => Ok(None),
            Value::Int(value) => Ok(Some(*value)),
            _ => Err(self.mismatch(index, "an integer")),
        }
    }

    pub(crate) fn int(&self, index: usize) -> Result<i64, StoreError> {
        self.opt_int(index)?
            .ok_or_else(|| self.mismatch(index, "an integer"))
    }

    /// A count, id, time or amount of fuel (never negative; a negative one reads as 0).
    pub(crate) fn u64(&self, index: usize) -> Result<u64, StoreError> {
        Ok(u64::try_from(self.int(index)?).unwrap_or(0))
    }

    pub(crate) fn opt_u64(&self, index: usize) -> Result<Option<u64>, StoreError> {
        Ok(self
            .opt_int(index)?
            .map(|value| u64::try_from(value).unwrap_or(0)))
    }

    pub(crate) fn u32(&self, index: usize) -> Result<u32, StoreError> {
        u32::try_from(self.int(index)?).map_err(|_| self.mismatch(index, "a 32-bit count"))
    }

    pub(crate) fn opt_u32(&self, index: usize) -> Result<Option<u32>, StoreError> {
        self.opt_int(index)?
            .map(|value| u32::try_from(value).map_err(|_| self.mismatch(index, "a 32-bit count")))
            .transpose()
    }

    pub(crate) fn i32(&self, index: usize) -> Result<i32, StoreError> {
        i32::try_from(self.int(index)?).map_err(|_| self.mismatch(index, "a 32-bit integer"))
    }

    pub(crate) fn bool(&self, index: usize) -> Result<bool, StoreError> {
        Ok(self.int(index)? != 0)
    }

    pub(crate) fn real(&self, index: usize) -> Result<f64, StoreError> {
        match self.column(index)? {
            Value::Real(value) => Ok(*value),
            Value::Int(value) => Ok(*value as f64),
            _ => Err(self.mismatch(index, "a number")),
        }
    }

    pub(crate) fn opt_text(&self, index: usize) -> Result<Option<String>, StoreError> {
        match self.column(index)? {
            Value::Null => Ok(None),
            Value::Text(value) => Ok(Some(value.clone())),
            _ => Err(self.mismatch(index, "text")),
        }
    }

    pub(crate) fn text(&self, index: usize) -> Result<String, StoreError> {
        self.opt_text(index)?
            .ok_or_else(|| self.mismatch(index, "text"))
    }

    pub(crate) fn blob(&self, index: usize) -> Result<Vec<u8>, StoreError> {
        match self.column(index)? {
            Value::Blob(value) => Ok(value.clone()),
            _ => Err(self.mismatch(index, "bytes")),
        }
    }
}

/// The tables whose ids the store hands out itself (never reused: see schema 6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Sequence {
    Batches,
    Units,
    Replicas,
    Ledger,
}

impl Sequence {
    pub(crate) fn table(self) -> &'static str {
        match self {
            Self::Batches => "batches",
            Self::Units => "units",
            Self::Replicas => "replicas",
            Self::Ledger => "ledger",
        }
    }
}

/// A row several coordinators write: a table's name and the row's id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct SharedRow(pub(crate) &'static str, pub(crate) u64);

/// A change to units that other coordinators of a shared database must learn of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WorkChange {
    /// Units were added or reopened, possibly in shards others hold: they load them again.
    Added,
    /// Units of any shard are about to be closed or removed (a batch cancelled or retired):
    /// every other coordinator's group in flight finishes first, none begins until this one
    /// commits, and each loads its live work again.
    Barrier,
}

/// A connection inside the current group's transaction.
pub(crate) trait Sql {
    /// Runs a statement whose answer nobody reads. A backend may hold it and send it with the
    /// next query or the commit, in order; an error it raises then fails the whole group.
    fn execute(&mut self, sql: &str, params: &[Value]) -> Result<(), StoreError>;

    /// Runs a statement changing one row that other coordinators' groups change too (a
    /// volunteer's or a host's counters), written relative to what the row holds. A backend
    /// shared by several writers sends these last in the group, sorted by row, so two groups
    /// always lock shared rows in one order and never deadlock; statements on one row keep
    /// their order.
    fn execute_shared(
        &mut self,
        _row: SharedRow,
        sql: &str,
        params: &[Value],
    ) -> Result<(), StoreError> {
        self.execute(sql, params)
    }

    /// Tells the database's other coordinators that units changed (see [`WorkChange`]).
    /// Nothing to do for a database no other coordinator shares.
    fn announce(&mut self, _change: WorkChange) -> Result<(), StoreError> {
        Ok(())
    }

    /// Runs a statement now and says how many rows it changed.
    fn execute_count(&mut self, sql: &str, params: &[Value]) -> Result<u64, StoreError>;

    /// Runs a query now (after every statement held so far) and returns its rows.
    fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>, StoreError>;

    /// Reserves `n` new ids of `sequence`, each above every id it ever gave (committed or
    /// not). Rows are then inserted with them, so an insert never waits for its id.
    fn reserve_ids(&mut self, sequence: Sequence, n: usize) -> Result<Vec<u64>, StoreError>;

    /// The one row a query answers, or `None`.
    fn query_row(&mut self, sql: &str, params: &[Value]) -> Result<Option<Row>, StoreError> {
        Ok(self.query(sql, params)?.into_iter().next())
    }

    /// The one row a query must answer.
    fn query_one(&mut self, sql: &str, params: &[Value]) -> Result<Row, StoreError> {
        self.query_row(sql, params)?
            .ok_or_else(|| StoreError::Corrupt(format!("no row for: {sql}")))
    }

    /// A single number a query answers.
    fn number(&mut self, sql: &str, params: &[Value]) -> Result<u64, StoreError> {
        self.query_one(sql, params)?.u64(0)
    }

    /// One id of `sequence`.
    fn reserve_id(&mut self, sequence: Sequence) -> Result<u64, StoreError> {
        self.reserve_ids(sequence, 1)?
            .pop()
            .ok_or_else(|| StoreError::Corrupt(format!("no {} id reserved", sequence.table())))
    }
}
