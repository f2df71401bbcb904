//! Credit as a balance: what an account has earned and may spend.
//!
//! An account's balance, in fuel (a credit is [`herd_lifecycle::FUEL_PER_CREDIT`] of it), is the
//! sum of every movement of its credit:
//! - earned: each grant of the `credit` table (a replica of someone's unit, agreed by a quorum),
//!   minus each revocation in `credit_revoked` (a grant later found invalid);
//! - in the `ledger` table: `spent` (a unit of the account's own batch validated, paid at its
//!   bid), `granted` (credit the project gave it), `sent` and `received` (transfers between
//!   accounts, one row on each side).
//!
//! `volunteers.balance` holds that sum, moved in the same transaction as each row, so reading a
//! balance is one row. How far below zero an account may go is its `overdraft` (0 unless the
//! administrator allows more; NULL, no limit, is the administrator's own account, the project's).
//!
//! Architecture Invariant: an account's `balance` is always the sum of its movements; no
//! spending or transfer takes a balance below minus its overdraft. (A revocation may: it takes
//! back credit that was never real.) The store's ledger test checks the first after random
//! sequences of every movement, on both backends.
//!
//! Spending is on the hot path, which reads nothing and writes rows other coordinators write too
//! only as shared statements sent last (see [`Sql::execute_shared`]). So a charge is three such
//! statements on the payer's row, kept in order: one locks the row (PostgreSQL waits there for
//! any other coordinator's charge to commit), one inserts the spending row priced at what the
//! balance still allows (the whole price, or what is left down to the overdraft), and one moves
//! the balance by exactly that row. A unit validated when nothing is left is served free: the
//! row is not written. The live work learns which owners can no longer pay from
//! [`refresh_funding`], run at load and every few seconds.

use std::collections::HashSet;

use serde::Serialize;

use crate::live::Live;
use crate::sql::{Sequence, SharedRow, Sql, args};
use crate::{StoreError, accounts};

/// Bids are in thousandths of a credit per credit of agreed work.
pub const BID_SCALE: u32 = 1000;

/// The highest bid: 1,000 credits per credit of work.
pub const MAX_BID_MILLI: u32 = 1000 * BID_SCALE;

/// The price, in fuel, of a unit whose quorum agreed on `fuel`, at `bid_milli` thousandths of a
/// credit per credit: rounded up, so a bid never buys work below its price.
pub fn price(fuel: u64, bid_milli: u32) -> u64 {
    let price = (u128::from(fuel) * u128::from(bid_milli)).div_ceil(u128::from(BID_SCALE));
    u64::try_from(price)
        .unwrap_or(u64::MAX)
        .min(i64::MAX as u64)
}

/// What the balance still allows to be taken from it, at most `wanted` (fuel): SQL over the
/// columns of the account's `volunteers` row.
fn affordable(wanted: &str) -> String {
    format!(
        "CASE WHEN overdraft IS NULL OR balance + overdraft >= {wanted} THEN {wanted}
              WHEN balance + overdraft > 0 THEN balance + overdraft
              ELSE 0 END"
    )
}

/// Charges `owner` the `price` (fuel) of a unit of its batch, validated now; on the hot path.
/// See the module documentation for how it stays exact with several coordinators.
pub(crate) fn charge(
    tx: &mut dyn Sql,
    owner: u64,
    price: u64,
    (batch_id, unit_id): (u64, u64),
    now_ms: u64,
) -> Result<(), StoreError> {
    if price == 0 {
        return Ok(());
    }
    let row_id = tx.reserve_id(Sequence::Ledger)?;
    let payer = SharedRow("volunteers", owner);
    tx.execute_shared(
        payer,
        "UPDATE volunteers SET balance = balance WHERE id = ?1",
        &args![owner],
    )?;
    tx.execute_shared(
        payer,
        &format!(
            "INSERT INTO ledger (id, account_id, kind, amount, batch_id, unit_id, created_ms)
             SELECT CAST(?1 AS BIGINT), id, 'spent', -({}), CAST(?3 AS BIGINT),
                    CAST(?4 AS BIGINT), CAST(?5 AS BIGINT)
             FROM volunteers WHERE id = ?2 AND ({}) > 0",
            affordable("CAST(?6 AS BIGINT)"),
            affordable("CAST(?6 AS BIGINT)")
        ),
        &args![row_id, owner, batch_id, unit_id, now_ms, price],
    )?;
    tx.execute_shared(
        payer,
        "UPDATE volunteers SET balance = balance
             + COALESCE((SELECT amount FROM ledger WHERE id = ?2), 0)
         WHERE id = ?1",
        &args![owner, row_id],
    )
}

/// Checks an amount of credit to move (fuel): more than nothing.
fn check_amount(amount: u64) -> Result<i64, StoreError> {
    match i64::try_from(amount) {
        Ok(amount) if amount > 0 => Ok(amount),
        _ => Err(StoreError::Invalid(format!(
            "an amount of credit must be more than 0 (and less than 2^63 fuel), not {amount} fuel"
        ))),
    }
}

/// Checks a memo: at most 200 printable characters.
fn check_memo(memo: Option<&str>) -> Result<(), StoreError> {
    match memo {
        Some(memo) if memo.len() > 200 || memo.chars().any(char::is_control) => Err(
            StoreError::Invalid("a memo must be at most 200 printable characters".into()),
        ),
        _ => Ok(()),
    }
}

/// The account called `name`, or [`StoreError::Invalid`] naming it.
fn named(tx: &mut dyn Sql, name: &str) -> Result<crate::Account, StoreError> {
    accounts::by_name(tx, name)?
        .ok_or_else(|| StoreError::Invalid(format!("there is no account called `{name}`")))
}

/// The project gives `amount` fuel of credit to the account called `name`.
pub(crate) fn grant(
    tx: &mut dyn Sql,
    name: &str,
    amount: u64,
    memo: Option<&str>,
    now_ms: u64,
) -> Result<LedgerRow, StoreError> {
    let amount = check_amount(amount)?;
    check_memo(memo)?;
    let account = named(tx, name)?;
    let row_id = tx.reserve_id(Sequence::Ledger)?;
    let row = SharedRow("volunteers", account.id);
    tx.execute_shared(
        row,
        "INSERT INTO ledger (id, account_id, kind, amount, memo, created_ms)
         VALUES (?1, ?2, 'granted', ?3, ?4, ?5)",
        &args![row_id, account.id, amount, memo, now_ms],
    )?;
    tx.execute_shared(
        row,
        "UPDATE volunteers SET balance = balance + ?2 WHERE id = ?1",
        &args![account.id, amount],
    )?;
    Ok(LedgerRow {
        kind: Movement::Granted,
        amount,
        time_ms: now_ms,
        batch_id: None,
        unit_id: None,
        counterpart: None,
        memo: memo.map(str::to_owned),
    })
}

/// A transfer written, to be confirmed once committed ([`sent`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transfer {
    /// The sender's `sent` row, which exists once committed exactly when the transfer happened.
    pub row_id: u64,
    pub to: String,
    pub amount: u64,
}

/// Sends `amount` fuel of credit from the account `from_id` to the account called `to`.
///
/// Refused at once ([`StoreError::NotAllowed`], naming the figures) if the sender's balance does
/// not allow it. The rows are written as shared statements, both accounts' rows locked in id
/// order first, and each conditional on the sender's balance at commit: spending committed by
/// another coordinator in between may still turn the transfer down, which [`sent`] then tells.
pub(crate) fn send(
    tx: &mut dyn Sql,
    from_id: u64,
    to: &str,
    amount: u64,
    memo: Option<&str>,
    now_ms: u64,
) -> Result<Transfer, StoreError> {
    let signed = check_amount(amount)?;
    check_memo(memo)?;
    let receiver = named(tx, to)?;
    if receiver.id == from_id {
        return Err(StoreError::Invalid(
            "an account cannot send credit to itself".into(),
        ));
    }
    let (balance, overdraft) = balance_and_overdraft(tx, from_id)?;
    if let Some(overdraft) = overdraft
        && balance.saturating_add(overdraft) < signed
    {
        return Err(StoreError::NotAllowed(format!(
            "the balance is {} credit{}: it does not cover sending {}",
            credit_text(balance),
            if overdraft > 0 {
                format!(" (with an overdraft of {})", credit_text(overdraft))
            } else {
                String::new()
            },
            credit_text(signed)
        )));
    }
    let ids = tx.reserve_ids(Sequence::Ledger, 2)?;
    let (sent_id, received_id) = (ids[0], ids[1]);
    // Both rows locked in id order before anything is decided, as every group locks.
    let (first, last) = (from_id.min(receiver.id), from_id.max(receiver.id));
    let lock = "UPDATE volunteers SET balance = balance WHERE id = ?1";
    tx.execute_shared(SharedRow("volunteers", first), lock, &args![first])?;
    let after_both = SharedRow("volunteers", last);
    tx.execute_shared(after_both, lock, &args![last])?;
    tx.execute_shared(
        after_both,
        "INSERT INTO ledger (id, account_id, kind, amount, counterpart_id, memo, created_ms)
         SELECT CAST(?1 AS BIGINT), id, 'sent', CAST(?3 AS BIGINT), CAST(?4 AS BIGINT),
                CAST(?5 AS TEXT), CAST(?6 AS BIGINT)
         FROM volunteers
         WHERE id = ?2 AND (overdraft IS NULL OR balance + overdraft >= CAST(?7 AS BIGINT))",
        &args![sent_id, from_id, -signed, receiver.id, memo, now_ms, signed],
    )?;
    tx.execute_shared(
        after_both,
        "INSERT INTO ledger (id, account_id, kind, amount, counterpart_id, memo, created_ms)
         SELECT CAST(?1 AS BIGINT), CAST(?2 AS BIGINT), 'received', CAST(?3 AS BIGINT),
                CAST(?4 AS BIGINT), CAST(?5 AS TEXT), CAST(?6 AS BIGINT)
         WHERE EXISTS (SELECT 1 FROM ledger WHERE id = ?7)",
        &args![
            received_id,
            receiver.id,
            signed,
            from_id,
            memo,
            now_ms,
            sent_id
        ],
    )?;
    for (account, amount) in [(from_id, -signed), (receiver.id, signed)] {
        tx.execute_shared(
            after_both,
            "UPDATE volunteers SET balance = balance + ?2
             WHERE id = ?1 AND EXISTS (SELECT 1 FROM ledger WHERE id = ?3)",
            &args![account, amount, sent_id],
        )?;
    }
    Ok(Transfer {
        row_id: sent_id,
        to: receiver.name,
        amount,
    })
}

/// Whether the transfer whose `sent` row is `row_id` happened (read after its commit).
pub(crate) fn sent(tx: &mut dyn Sql, row_id: u64) -> Result<bool, StoreError> {
    Ok(tx
        .query_row(
            "SELECT 1 FROM ledger WHERE id = ?1 AND kind = 'sent'",
            &args![row_id],
        )?
        .is_some())
}

/// Sets how far below zero the account called `name` may go (fuel; `None`: no limit).
pub(crate) fn set_overdraft(
    tx: &mut dyn Sql,
    name: &str,
    overdraft: Option<u64>,
) -> Result<(), StoreError> {
    let account = named(tx, name)?;
    let overdraft = overdraft.map(|o| i64::try_from(o).unwrap_or(i64::MAX));
    tx.execute_shared(
        SharedRow("volunteers", account.id),
        "UPDATE volunteers SET overdraft = ?2 WHERE id = ?1",
        &args![account.id, overdraft],
    )
}

fn balance_and_overdraft(tx: &mut dyn Sql, id: u64) -> Result<(i64, Option<i64>), StoreError> {
    let row = tx.query_one(
        "SELECT balance, overdraft FROM volunteers WHERE id = ?1",
        &args![id],
    )?;
    Ok((row.int(0)?, row.opt_int(1)?))
}

/// A non-negative decimal as people write it ("2", "0.5", "1.25"), in units of
/// 10^-`decimals`: no sign, no exponent, at most `decimals` digits after the point.
fn parse_decimal(text: &str, decimals: u32, what: &str) -> Result<u128, String> {
    let text = text.trim();
    let (whole, part) = text.split_once('.').unwrap_or((text, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() && part.is_empty()
        || !digits(whole)
        || !digits(part)
        || whole.len() > 20
        || part.len() > decimals as usize
    {
        return Err(format!(
            "{what} `{}` must be a number such as 2 or 0.5, with at most {decimals} decimals",
            text.escape_debug()
        ));
    }
    let scale = 10u128.pow(decimals);
    let whole: u128 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| what.to_string())?
    };
    let part: u128 = if part.is_empty() {
        0
    } else {
        part.parse::<u128>().map_err(|_| what.to_string())?
            * 10u128.pow(decimals - part.len() as u32)
    };
    Ok(whole * scale + part)
}

/// An amount of credit as people write it ("2", "0.5"), in fuel; at most 9 decimals (a credit
/// is 10^9 fuel) and less than 2^63 fuel.
pub fn parse_credit(text: &str) -> Result<u64, String> {
    let fuel = parse_decimal(text, 9, "an amount of credit")?;
    u64::try_from(fuel)
        .ok()
        .filter(|fuel| *fuel <= i64::MAX as u64)
        .ok_or_else(|| format!("{text} credit is more than this project can count"))
}

/// A bid as people write it: credits per credit of agreed work ("1", "1.5"), at most 3
/// decimals and at most [`MAX_BID_MILLI`]; in thousandths.
pub fn parse_bid(text: &str) -> Result<u32, String> {
    let milli = parse_decimal(text, 3, "a bid")?;
    u32::try_from(milli)
        .ok()
        .filter(|milli| *milli <= MAX_BID_MILLI)
        .ok_or_else(|| {
            format!(
                "a bid of {text} is over the most, {}",
                MAX_BID_MILLI / BID_SCALE
            )
        })
}

/// Fuel as credit, for messages: up to 9 decimals, trailing zeros dropped.
pub fn credit_text(fuel: i64) -> String {
    let per = herd_lifecycle::FUEL_PER_CREDIT as i64;
    let sign = if fuel < 0 { "-" } else { "" };
    let fuel = fuel.unsigned_abs();
    let (whole, part) = (fuel / per as u64, fuel % per as u64);
    if part == 0 {
        format!("{sign}{whole}")
    } else {
        let decimals = format!("{part:09}");
        format!("{sign}{whole}.{}", decimals.trim_end_matches('0'))
    }
}

/// Marks, in the live work, the owners of paying batches who can pay no more (their balance is
/// at minus their overdraft), and clears those who can again. At load, and every few seconds.
pub(crate) fn refresh_funding(tx: &mut dyn Sql, live: &mut Live) -> Result<usize, StoreError> {
    let owners: HashSet<u64> = live
        .batches
        .values()
        .filter(|b| b.pricing.bid_milli > 0)
        .map(|b| b.owner)
        .collect();
    let mut unfunded = HashSet::new();
    let list: Vec<String> = owners.iter().map(u64::to_string).collect();
    for chunk in list.chunks(500) {
        let rows = tx.query(
            &format!(
                "SELECT id FROM volunteers WHERE id IN ({})
                   AND overdraft IS NOT NULL AND balance + overdraft <= 0",
                chunk.join(", ")
            ),
            &[],
        )?;
        for row in rows {
            unfunded.insert(row.u64(0)?);
        }
    }
    let changed = unfunded.symmetric_difference(&live.unfunded).count();
    live.unfunded = unfunded;
    Ok(changed)
}

/// One kind of movement of an account's credit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Movement {
    /// A replica it computed, agreed by a quorum.
    Earned,
    /// An earned grant taken back: the replica was later outvoted.
    Revoked,
    /// A unit of its own batch, validated and paid at the batch's bid.
    Spent,
    /// Credit the project gave it.
    Granted,
    Sent,
    Received,
}

impl Movement {
    fn parse(kind: &str) -> Result<Self, StoreError> {
        Ok(match kind {
            "earned" => Self::Earned,
            "revoked" => Self::Revoked,
            "spent" => Self::Spent,
            "granted" => Self::Granted,
            "sent" => Self::Sent,
            "received" => Self::Received,
            other => {
                return Err(StoreError::Corrupt(format!(
                    "a ledger row of unknown kind `{other}`"
                )));
            }
        })
    }
}

/// One movement of an account's credit; `amount` is in fuel, negative for what left it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LedgerRow {
    pub kind: Movement,
    pub amount: i64,
    pub time_ms: u64,
    pub batch_id: Option<u64>,
    pub unit_id: Option<u64>,
    /// The other account of a transfer.
    pub counterpart: Option<String>,
    pub memo: Option<String>,
}

/// An account's credit: its balance, the totals of each movement (fuel, each as a positive
/// number), and its latest movements, newest first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Statement {
    pub account: String,
    pub balance: i64,
    /// How far below zero it may go; `None`: no limit (the project's own account).
    pub overdraft: Option<i64>,
    pub earned: i64,
    pub revoked: i64,
    pub spent: i64,
    pub granted: i64,
    pub sent: i64,
    pub received: i64,
    pub recent: Vec<LedgerRow>,
}

impl Statement {
    /// The balance its movements add up to (what `balance` always equals).
    pub fn sum_of_movements(&self) -> i64 {
        self.earned - self.revoked - self.spent + self.granted - self.sent + self.received
    }
}

/// The statement of the account called `name`, with its `recent` latest movements; `None` if
/// there is no such account.
pub(crate) fn statement(
    tx: &mut dyn Sql,
    name: &str,
    recent: u32,
) -> Result<Option<Statement>, StoreError> {
    let Some(account) = accounts::by_name(tx, name)? else {
        return Ok(None);
    };
    let id = account.id;
    let (balance, overdraft) = balance_and_overdraft(tx, id)?;
    let totals = tx.query_one(
        "SELECT
            CAST((SELECT COALESCE(SUM(fuel), 0) FROM credit WHERE volunteer_id = ?1) AS BIGINT),
            CAST((SELECT COALESCE(SUM(fuel), 0) FROM credit_revoked WHERE volunteer_id = ?1)
                 AS BIGINT),
            CAST((SELECT COALESCE(SUM(-amount), 0) FROM ledger
                  WHERE account_id = ?1 AND kind = 'spent') AS BIGINT),
            CAST((SELECT COALESCE(SUM(amount), 0) FROM ledger
                  WHERE account_id = ?1 AND kind = 'granted') AS BIGINT),
            CAST((SELECT COALESCE(SUM(-amount), 0) FROM ledger
                  WHERE account_id = ?1 AND kind = 'sent') AS BIGINT),
            CAST((SELECT COALESCE(SUM(amount), 0) FROM ledger
                  WHERE account_id = ?1 AND kind = 'received') AS BIGINT)",
        &args![id],
    )?;
    // The latest of each source, then the latest of those.
    let rows = tx.query(
        "SELECT kind, amount, time_ms, batch_id, unit_id, counterpart, memo, seq FROM (
             SELECT * FROM (
                 SELECT 'earned' AS kind, c.fuel AS amount, c.granted_ms AS time_ms,
                        u.batch_id AS batch_id, r.unit_id AS unit_id,
                        CAST(NULL AS TEXT) AS counterpart, CAST(NULL AS TEXT) AS memo,
                        c.id AS seq
                 FROM credit c LEFT JOIN replicas r ON r.id = c.replica_id
                      LEFT JOIN units u ON u.id = r.unit_id
                 WHERE c.volunteer_id = ?1 ORDER BY c.id DESC LIMIT ?2) earned
             UNION ALL SELECT * FROM (
                 SELECT 'revoked', -x.fuel, x.revoked_ms, u.batch_id, r.unit_id,
                        CAST(NULL AS TEXT), CAST(NULL AS TEXT), x.id
                 FROM credit_revoked x LEFT JOIN replicas r ON r.id = x.replica_id
                      LEFT JOIN units u ON u.id = r.unit_id
                 WHERE x.volunteer_id = ?1 ORDER BY x.id DESC LIMIT ?2) revoked
             UNION ALL SELECT * FROM (
                 SELECT l.kind, l.amount, l.created_ms, l.batch_id, l.unit_id, o.name, l.memo,
                        l.id
                 FROM ledger l LEFT JOIN volunteers o ON o.id = l.counterpart_id
                 WHERE l.account_id = ?1 ORDER BY l.id DESC LIMIT ?2) moved
         ) movements ORDER BY time_ms DESC, seq DESC LIMIT ?2",
        &args![id, recent],
    )?;
    let recent = rows
        .iter()
        .map(|row| {
            Ok(LedgerRow {
                kind: Movement::parse(&row.text(0)?)?,
                amount: row.int(1)?,
                time_ms: row.u64(2)?,
                batch_id: row.opt_u64(3)?,
                unit_id: row.opt_u64(4)?,
                counterpart: row.opt_text(5)?,
                memo: row.opt_text(6)?,
            })
        })
        .collect::<Result<_, StoreError>>()?;
    Ok(Some(Statement {
        account: account.name,
        balance,
        overdraft,
        earned: totals.int(0)?,
        revoked: totals.int(1)?,
        spent: totals.int(2)?,
        granted: totals.int(3)?,
        sent: totals.int(4)?,
        received: totals.int(5)?,
        recent,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_and_bids_parse_as_people_write_them_and_print_back_the_same() {
        assert_eq!(parse_credit("2"), Ok(2_000_000_000));
        assert_eq!(parse_credit("0.5"), Ok(500_000_000));
        assert_eq!(parse_credit(".25"), Ok(250_000_000));
        assert_eq!(parse_credit("1.000000001"), Ok(1_000_000_001));
        for bad in ["", ".", "-1", "1e3", "1.0000000001", "two", "1,5", "+1"] {
            assert!(parse_credit(bad).is_err(), "{bad:?}");
        }
        assert!(parse_credit("9223372037").is_err(), "past 2^63 fuel");
        assert_eq!(credit_text(1_500_000_000), "1.5");
        assert_eq!(credit_text(-2_000_000_000), "-2");
        assert_eq!(credit_text(1), "0.000000001");
        assert_eq!(parse_bid("1.5"), Ok(1500));
        assert_eq!(parse_bid("0"), Ok(0));
        assert!(parse_bid("1.0005").is_err());
        assert!(parse_bid("1000.001").is_err());
    }

    #[test]
    fn a_price_is_the_agreed_fuel_at_the_bid_rounded_up_and_never_overflows() {
        assert_eq!(price(3_000_000_000, 1000), 3_000_000_000);
        assert_eq!(price(3, 1500), 5);
        assert_eq!(price(1, 1), 1);
        assert_eq!(price(0, 2000), 0);
        assert_eq!(price(u64::MAX, MAX_BID_MILLI), i64::MAX as u64);
    }
}
