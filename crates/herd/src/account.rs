//! `herd account` and `herd credit send|grant`: accounts and the credit they hold. With no
//! subcommand, `herd account` shows the statement of the account whose API token the command
//! carries; the subcommands sign up, show another account's public totals, and (the
//! administrator) hand out keys and tokens, invite, grant permissions, credit and overdrafts.

use std::process::ExitCode;

use clap::Subcommand;
use serde_json::Value;

use crate::client::Client;

#[derive(Subcommand, Debug)]
pub(crate) enum AccountCommand {
    /// Create an account; prints its account key and then its API token, which the coordinator
    /// shows only this once. The key attaches machines (herd-worker attach); the token speaks
    /// for the account's credit (HERD_TOKEN). Open to anyone or by invitation, as the project
    /// allows; the administrator (--token) may always.
    Create {
        name: String,
        #[arg(long)]
        team: Option<String>,
        /// The invitation code the project sent you.
        #[arg(long)]
        invitation: Option<String>,
        /// Print the coordinator's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show an account's credit totals (public): balance, earned, spent, granted, moved.
    Show {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Give an account a new key (the administrator): for volunteers from before accounts, or
    /// a key that was lost or stolen. The key it had stops working.
    Key {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Give an account a new API token (the administrator): for accounts from before tokens,
    /// or a token that was lost. The token it had stops working, for submitting too.
    Token {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Revoke an account's key (the administrator): its machines stop (exit 3).
    Revoke {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Make an invitation code, good for one sign-up (the administrator).
    Invite {
        #[arg(long)]
        json: bool,
    },
    /// Grant an account a permission (the administrator): `submit` lets it submit batches,
    /// and prints its new API token, shown only this once (the token it had stops working).
    Grant {
        name: String,
        permission: Permission,
        #[arg(long)]
        json: bool,
    },
    /// Withdraw an account's permission (the administrator): with `submit` withdrawn its token
    /// no longer submits (it still speaks for the account's credit); its batches stay.
    Deny {
        name: String,
        permission: Permission,
        #[arg(long)]
        json: bool,
    },
    /// Let an account go below zero by up to AMOUNT credits (the administrator), or `none` for
    /// no limit; 0 (every account's to begin with) allows no overdraft.
    Overdraft {
        name: String,
        amount: String,
        #[arg(long)]
        json: bool,
    },
}

/// What an account may be allowed to do besides computing.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub(crate) enum Permission {
    /// Submit batches (be a researcher).
    Submit,
}

#[derive(Subcommand, Debug)]
pub(crate) enum CreditCommand {
    /// Send AMOUNT credits (such as 2 or 0.5) from your account (the one your --token is) to
    /// the account NAME; refused if your balance, with any overdraft the project allows, does
    /// not cover it.
    Send {
        name: String,
        amount: String,
        #[arg(long)]
        memo: Option<String>,
    },
    /// Give the account NAME AMOUNT credits (the administrator): a research group's allowance.
    Grant {
        name: String,
        amount: String,
        #[arg(long)]
        memo: Option<String>,
    },
}

/// Fuel as credit: exact, up to 9 decimals, trailing zeros dropped.
fn credit(fuel: &Value, per: u64) -> String {
    let Some(fuel) = fuel.as_i64() else {
        return "?".into();
    };
    let per = per.max(1);
    let sign = if fuel < 0 { "-" } else { "" };
    let fuel = fuel.unsigned_abs();
    let (whole, part) = (fuel / per, fuel % per);
    let digits = per.ilog10() as usize;
    if part == 0 || 10u64.pow(digits as u32) != per {
        return format!("{sign}{whole}");
    }
    let part = format!("{part:0digits$}");
    format!("{sign}{whole}.{}", part.trim_end_matches('0'))
}

/// An account's totals (and, in the holder's statement, its overdraft and latest movements)
/// for humans.
pub(crate) fn statement_text(statement: &Value) -> String {
    let per = statement["fuel_per_credit"]
        .as_u64()
        .unwrap_or(1_000_000_000);
    let mut text = format!(
        "{}: balance {} credit\n",
        statement["account"].as_str().unwrap_or("?"),
        credit(&statement["balance"], per)
    );
    for (label, field) in [
        ("earned", "earned"),
        ("revoked", "revoked"),
        ("spent", "spent"),
        ("granted", "granted"),
        ("sent", "sent"),
        ("received", "received"),
    ] {
        text.push_str(&format!(
            "  {label:<9} {:>18}\n",
            credit(&statement[field], per)
        ));
    }
    match &statement["overdraft"] {
        Value::Null if statement.get("overdraft").is_some() => {
            text.push_str("  overdraft      no limit (the project's own account)\n");
        }
        Value::Null => {}
        overdraft => text.push_str(&format!("  overdraft {:>18}\n", credit(overdraft, per))),
    }
    let recent = statement["recent"].as_array().cloned().unwrap_or_default();
    if !recent.is_empty() {
        text.push_str(&format!(
            "\n{:<10} {:>18} {:>15}  {}\n",
            "movement", "credit", "time (ms)", "of"
        ));
    }
    for row in recent {
        let of = match (row["batch_id"].as_u64(), row["counterpart"].as_str()) {
            (_, Some(other)) => other.to_string(),
            (Some(batch), None) => format!("batch {batch}"),
            (None, None) => String::new(),
        };
        let memo = row["memo"]
            .as_str()
            .map(|m| format!(" ({m})"))
            .unwrap_or_default();
        text.push_str(&format!(
            "{:<10} {:>18} {:>15}  {of}{memo}\n",
            row["kind"].as_str().unwrap_or("?"),
            credit(&row["amount"], per),
            row["time_ms"],
        ));
    }
    text.push_str("(amounts in credit: 1 credit = 10^9 fuel agreed by a quorum)");
    text
}

/// `herd account [SUBCOMMAND]`.
pub(crate) fn account(
    client: &Client,
    command: Option<&AccountCommand>,
    recent: u32,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let Some(command) = command else {
        let statement = client.statement(recent)?;
        if json {
            println!("{statement}");
        } else {
            println!("{}", statement_text(&statement));
        }
        return Ok(ExitCode::SUCCESS);
    };
    let (answer, json) = match command {
        AccountCommand::Create {
            name,
            team,
            invitation,
            json,
        } => (
            client.create_account(name, team.as_deref(), invitation.as_deref())?,
            *json,
        ),
        AccountCommand::Show { name, json } => (client.account_totals(name)?, *json),
        AccountCommand::Key { name, json } => (client.account_key(name, false)?, *json),
        AccountCommand::Token { name, json } => (client.account_token(name)?, *json),
        AccountCommand::Revoke { name, json } => (client.account_key(name, true)?, *json),
        AccountCommand::Invite { json } => (client.invite()?, *json),
        AccountCommand::Grant {
            name,
            permission: Permission::Submit,
            json,
        } => (client.submit_permission(name, false)?, *json),
        AccountCommand::Deny {
            name,
            permission: Permission::Submit,
            json,
        } => (client.submit_permission(name, true)?, *json),
        AccountCommand::Overdraft { name, amount, json } => {
            let amount = (amount != "none").then_some(amount.as_str());
            (client.set_overdraft(name, amount)?, *json)
        }
    };
    if json {
        println!("{answer}");
        return Ok(ExitCode::SUCCESS);
    }
    let name = answer["name"].as_str().unwrap_or_default();
    match command {
        AccountCommand::Create { .. } => {
            println!("{}", answer["account_key"].as_str().unwrap_or_default());
            println!("{}", answer["token"].as_str().unwrap_or_default());
            eprintln!(
                "{name}'s account key (first line) and API token (second), not shown again. \
                 Attach each machine with the key (`herd-worker attach --data-dir DIR`); the \
                 token (HERD_TOKEN or --token) shows and sends the account's credit"
            );
        }
        AccountCommand::Key { .. } => {
            println!("{}", answer["account_key"].as_str().unwrap_or_default());
            eprintln!(
                "the account key of {name}: it is not shown again. Attach each machine with \
                 `herd-worker attach --data-dir DIR` (it asks for the key)"
            );
        }
        AccountCommand::Token { .. } => {
            println!("{}", answer["token"].as_str().unwrap_or_default());
            eprintln!("the API token of {name} (HERD_TOKEN or --token): it is not shown again");
        }
        AccountCommand::Show { .. } | AccountCommand::Overdraft { .. } => {
            println!("{}", statement_text(&answer));
        }
        AccountCommand::Revoke { .. } => {
            println!("{name}: key revoked; its machines stop at their next request");
        }
        AccountCommand::Grant { .. } => {
            println!("{}", answer["token"].as_str().unwrap_or_default());
            eprintln!(
                "{name} may submit batches with this token (HERD_TOKEN or --token): it is not \
                 shown again"
            );
        }
        AccountCommand::Deny { .. } => {
            println!("{name} may no longer submit batches; its batches stay");
        }
        AccountCommand::Invite { .. } => {
            println!("{}", answer["invitation"].as_str().unwrap_or_default());
            eprintln!(
                "an invitation good for one sign-up: herd account create NAME --invitation CODE"
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `herd credit send|grant`.
pub(crate) fn credit_command(
    client: &Client,
    command: &CreditCommand,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let answer = match command {
        CreditCommand::Send { name, amount, memo } => {
            client.send_credit(name, amount, memo.as_deref())?
        }
        CreditCommand::Grant { name, amount, memo } => {
            client.grant_credit(name, amount, memo.as_deref())?
        }
    };
    if json {
        println!("{answer}");
        return Ok(ExitCode::SUCCESS);
    }
    let per = answer["fuel_per_credit"].as_u64().unwrap_or(1_000_000_000);
    match command {
        CreditCommand::Send { .. } => println!(
            "sent {} credit to {}; your balance is {} credit",
            credit(&answer["amount"], per),
            answer["to"].as_str().unwrap_or("?"),
            credit(&answer["balance"], per)
        ),
        CreditCommand::Grant { .. } => println!("{}", statement_text(&answer)),
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_statement_reads_in_exact_credit_with_its_movements_newest_first() {
        let statement = serde_json::json!({
            "account": "ada", "fuel_per_credit": 1_000_000_000u64,
            "balance": 2_500_000_000i64, "earned": 6_000_000_000i64, "revoked": 0,
            "spent": 3_000_000_001i64, "granted": 0, "sent": 500_000_000, "received": 0,
            "overdraft": 0,
            "recent": [
                {"kind": "sent", "amount": -500_000_000, "time_ms": 9, "batch_id": null,
                 "unit_id": null, "counterpart": "lab", "memo": "pool"},
                {"kind": "spent", "amount": -3_000_000_001i64, "time_ms": 8, "batch_id": 4,
                 "unit_id": 7, "counterpart": null, "memo": null},
            ],
        });
        let text = statement_text(&statement);
        assert!(text.starts_with("ada: balance 2.5 credit\n"), "{text}");
        assert!(text.contains("  spent            3.000000001\n"), "{text}");
        assert!(text.contains("sent                     -0.5"), "{text}");
        assert!(text.contains("lab (pool)"), "{text}");
        assert!(text.contains("batch 4"), "{text}");
        let (_, movements) = text.split_once("\nmovement").expect("a movements table");
        let order: Vec<&str> = movements.lines().skip(1).take(2).collect();
        assert!(
            order[0].starts_with("sent") && order[1].starts_with("spent"),
            "{movements}"
        );
        let public = serde_json::json!({"account": "bob", "balance": -1_000_000_000i64});
        assert!(statement_text(&public).starts_with("bob: balance -1 credit"));
        assert!(!statement_text(&public).contains("overdraft"));
    }
}
