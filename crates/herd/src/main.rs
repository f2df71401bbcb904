//! `herd`: the researcher's command line. Runs a module locally in the workers' sandbox, submits
//! batches to a coordinator, follows them, collects results, shows credit, and runs a whole
//! project on this machine with `herd demo`.

mod batch;
mod client;
mod demo;
mod run;
mod sweep;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use herd_sandbox::Limits;

/// Herd: volunteer computing with WebAssembly. Results are accepted only when a quorum of
/// volunteers' machines agree on them bit for bit.
///
/// Exit codes: 0 success; 1 error; 2 module rejected; 3 a waited-for batch has failed units.
#[derive(Parser, Debug)]
#[command(name = "herd", version)]
struct Cli {
    /// The coordinator's HTTP address.
    #[arg(
        long,
        global = true,
        env = "HERD_COORDINATOR",
        default_value = "http://127.0.0.1:8080"
    )]
    coordinator: String,
    /// The researcher token (the coordinator's DATA_DIR/researcher.token).
    #[arg(long, global = true, env = "HERD_TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run one module locally in exactly the sandbox the workers use; print its outcome as JSON.
    Run {
        /// The module (.wasm or .wat).
        module: PathBuf,
        /// File given to the module on stdin.
        #[arg(long)]
        input: Option<PathBuf>,
        /// Seed for random_get.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Fuel budget.
        #[arg(long, default_value_t = Limits::default().fuel)]
        fuel: u64,
        /// Memory limit in MiB.
        #[arg(long, default_value_t = Limits::default().memory_bytes >> 20)]
        memory_mb: u64,
        /// Write what the module printed on stdout to this file.
        #[arg(long)]
        output: Option<PathBuf>,
        /// Instrument and compile the module afresh, without reading or writing the
        /// compiled-module cache ($XDG_CACHE_HOME/herd/compiled, else ~/.cache/herd/compiled).
        #[arg(long)]
        no_cache: bool,
    },
    /// Submit a batch: one work unit per file in the inputs directory.
    Submit {
        /// The module (.wasm or .wat).
        module: PathBuf,
        /// Directory whose files are the units' inputs (one unit each, named after the file).
        #[arg(
            long,
            required_unless_present = "template",
            conflicts_with = "template"
        )]
        inputs: Option<PathBuf>,
        /// A parameter sweep instead of --inputs: the input text, with `{NAME}` where each
        /// swept parameter's value goes.
        #[arg(long, requires = "sweep")]
        template: Option<PathBuf>,
        /// One swept parameter (repeatable): `NAME=a,b,c`, or `NAME=START..END[:STEP]` (END
        /// excluded). One unit per combination, named after its values (`x=1,y=0.5`).
        #[arg(long, requires = "template")]
        sweep: Vec<String>,
        /// Agreeing replicas needed to accept a result.
        #[arg(long, default_value_t = 2)]
        quorum: u32,
        /// Fuel budget per unit.
        #[arg(long)]
        fuel: Option<u64>,
        /// Memory limit per unit in MiB.
        #[arg(long)]
        memory_mb: Option<u64>,
        /// Higher goes first (-100..=100); batches of equal priority share workers fairly.
        #[arg(long, allow_negative_numbers = true)]
        priority: Option<i32>,
        /// Adaptive replication: a host trusted after this many consecutive valid results
        /// (checked against others) may validate a unit alone, except for spot checks.
        #[arg(long)]
        trust_after: Option<u32>,
        /// With --trust-after: the fraction of a trusted host's units still replicated in full.
        #[arg(long, default_value_t = 0.1, requires = "trust_after")]
        spot_check: f64,
        /// At most one replica of a unit per network (an IPv4 /24, an IPv6 /48, as the
        /// coordinator sees the hosts): one person's accounts behind one router cannot agree
        /// on a result alone.
        #[arg(long)]
        distinct_networks: bool,
        /// Follow the batch with a progress bar until every unit is validated or failed.
        #[arg(long)]
        wait: bool,
    },
    /// List your batches and their progress, oldest first.
    Batches {
        /// Print the coordinator's JSON (every page, as one list).
        #[arg(long)]
        json: bool,
    },
    /// Cancel a batch: its open units fail as cancelled and no more replicas are sent.
    Cancel {
        batch: u64,
        /// Print the coordinator's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Accounts: sign up, and (the administrator) hand out and revoke keys, invite.
    Account {
        #[command(subcommand)]
        command: AccountCommand,
    },
    /// Manage researchers (the coordinator's administrator only).
    Researcher {
        #[command(subcommand)]
        command: ResearcherCommand,
    },
    /// Show a batch's progress.
    Status {
        batch: u64,
        /// Print the coordinator's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Download the outputs of a batch's validated units: one file per unit named after its
    /// input (--out DIR), or all of them as one tar archive (--archive FILE). Both resume an
    /// interrupted download when run again.
    Results {
        batch: u64,
        #[arg(long, required_unless_present = "archive", conflicts_with = "archive")]
        out: Option<PathBuf>,
        #[arg(long)]
        archive: Option<PathBuf>,
        /// Print what was written as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Retire a batch: delete its units, replicas and the blobs nothing else uses (credit granted
    /// stays). Download its results first, or pass --archive.
    Retire {
        batch: u64,
        /// Keep the batch's status and validated outputs in the coordinator's DIR/archive.
        #[arg(long)]
        archive: bool,
        /// Print the coordinator's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show credit per volunteer and team.
    Credit {
        /// Print the coordinator's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show every host's record: valid, invalid, error and timed-out replicas, refused reports,
    /// credit.
    Hosts {
        /// Print the coordinator's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run a whole project on this machine: a coordinator, three workers and a Mandelbrot batch.
    Demo {
        /// Where to write the image.
        #[arg(long, default_value = "herd-demo.png")]
        out: PathBuf,
        /// Keep the coordinator's and workers' data and logs in this directory.
        #[arg(long)]
        keep: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
enum AccountCommand {
    /// Create an account; prints its account key, which the coordinator shows only this once
    /// (attach machines with it: herd-worker attach --account-key KEY). Open to anyone or by
    /// invitation, as the project allows; the administrator (--token) may always.
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
    /// Give an account a new key (the administrator): for volunteers from before accounts, or
    /// a key that was lost or stolen. The key it had stops working.
    Key {
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
    /// and prints its API token, shown only this once (a token it had stops working).
    Grant {
        name: String,
        permission: Permission,
        #[arg(long)]
        json: bool,
    },
    /// Withdraw an account's permission (the administrator): with `submit` withdrawn its token
    /// is refused; its batches stay.
    Deny {
        name: String,
        permission: Permission,
        #[arg(long)]
        json: bool,
    },
}

/// What an account may be allowed to do besides computing.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum Permission {
    /// Submit batches (be a researcher).
    Submit,
}

#[derive(Subcommand, Debug)]
enum ResearcherCommand {
    /// Add a researcher; prints their token, which the coordinator shows only this once.
    Add {
        name: String,
        /// Print the coordinator's JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `herd account ...`.
fn account(client: &client::Client, command: &AccountCommand) -> anyhow::Result<ExitCode> {
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
        AccountCommand::Key { name, json } => (client.account_key(name, false)?, *json),
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
    };
    if json {
        println!("{answer}");
        return Ok(ExitCode::SUCCESS);
    }
    let name = answer["name"].as_str().unwrap_or_default();
    match command {
        AccountCommand::Create { .. } | AccountCommand::Key { .. } => {
            println!("{}", answer["account_key"].as_str().unwrap_or_default());
            eprintln!(
                "the account key of {name}: it is not shown again. Attach each machine with \
                 `herd-worker attach --data-dir DIR` (it asks for the key)"
            );
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    match execute(cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("herd: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn execute(cli: Cli) -> anyhow::Result<ExitCode> {
    let client = || client::Client::new(&cli.coordinator, cli.token.clone());
    match &cli.command {
        Command::Run {
            module,
            input,
            seed,
            fuel,
            memory_mb,
            output,
            no_cache,
        } => {
            let limits = Limits {
                fuel: *fuel,
                memory_bytes: memory_mb.saturating_mul(1 << 20),
                ..Limits::default()
            };
            Ok(
                match run::run(
                    module,
                    input.as_deref(),
                    *seed,
                    limits,
                    output.as_deref(),
                    !*no_cache,
                )? {
                    run::RunEnd::Ran => ExitCode::SUCCESS,
                    run::RunEnd::Rejected => ExitCode::from(2),
                },
            )
        }
        Command::Submit {
            module,
            inputs,
            template,
            sweep,
            quorum,
            fuel,
            memory_mb,
            priority,
            trust_after,
            spot_check,
            distinct_networks,
            wait,
        } => {
            let client = client();
            let inputs = match (inputs, template) {
                (Some(dir), _) => batch::read_inputs(dir)?,
                (None, Some(template)) => {
                    let text = std::fs::read_to_string(template).with_context(|| {
                        format!("cannot read the template {}", template.display())
                    })?;
                    sweep::inputs(&text, sweep)?
                }
                (None, None) => anyhow::bail!("give --inputs DIR, or --template FILE with --sweep"),
            };
            let submission = batch::Submission {
                module,
                inputs,
                quorum: Some(*quorum),
                fuel: *fuel,
                memory_mb: *memory_mb,
                priority: *priority,
                adaptive: trust_after.map(|trust_after| client::AdaptiveSpec {
                    trust_after,
                    spot_check: *spot_check,
                }),
                distinct_networks: *distinct_networks,
            };
            let id = match batch::submit(&client, submission, false) {
                Ok(id) => id,
                Err(error)
                    if error
                        .downcast_ref::<herd_sandbox::AdmissionError>()
                        .is_some() =>
                {
                    eprintln!("herd: {error:#}");
                    return Ok(ExitCode::from(2));
                }
                Err(error) => return Err(error),
            };
            println!("{id}");
            if *wait {
                let summary = batch::wait(&client, id, false)?;
                // The failed units, every page of them, for the summary's reasons.
                let failed = summary["failed"].as_u64().unwrap_or(0);
                let status = if failed > 0 {
                    client.batch_status_with(id, Some("failed"))?
                } else {
                    summary
                };
                eprintln!("{}", batch::describe(&status));
                if failed > 0 {
                    return Ok(ExitCode::from(3));
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { batch: id, json } => {
            let status = client().batch_status_with(*id, None)?;
            if *json {
                println!("{status}");
            } else {
                println!("{}", batch::describe(&status));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Batches { json } => {
            let batches = batch::all_batches(&client())?;
            if *json {
                println!("{}", serde_json::Value::Array(batches));
            } else {
                print!("{}", batch::batches_table(&batches));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Cancel { batch: id, json } => {
            let cancelled = client().cancel(*id)?;
            if *json {
                println!("{cancelled}");
            } else {
                println!(
                    "batch {id} cancelled: {} open units will not run",
                    cancelled["cancelled_units"]
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Account { command } => account(&client(), command),
        Command::Researcher {
            command: ResearcherCommand::Add { name, json },
        } => {
            let added = client().add_researcher(name)?;
            if *json {
                println!("{added}");
            } else {
                println!("{}", added["token"].as_str().unwrap_or_default());
                eprintln!(
                    "researcher {name} added; give them this token (HERD_TOKEN or --token): it is not shown again"
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Results {
            batch: id,
            out,
            archive,
            json,
        } => {
            let (what, report) = match (out, archive) {
                (Some(out), _) => {
                    let written = batch::results(&client(), *id, out)?;
                    (
                        format!("{written} outputs in {}", out.display()),
                        serde_json::json!({ "outputs": written, "dir": out }),
                    )
                }
                (None, Some(archive)) => {
                    let size = client().download_archive(*id, archive)?;
                    (
                        format!("{size} bytes in {}", archive.display()),
                        serde_json::json!({ "bytes": size, "archive": archive }),
                    )
                }
                (None, None) => anyhow::bail!("give --out DIR or --archive FILE"),
            };
            if *json {
                println!("{report}");
            } else {
                eprintln!("{what}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Credit { json } => {
            let credit = client().credit()?;
            if *json {
                println!("{credit}");
            } else {
                println!("{}", batch::credit_table(&credit));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Retire {
            batch: id,
            archive,
            json,
        } => {
            let retired = client().retire(*id, *archive)?;
            if *json {
                println!("{retired}");
            } else {
                println!(
                    "batch {id} retired: {} units, {} replicas and {} blobs removed{}",
                    retired["units"],
                    retired["replicas"],
                    retired["blobs_removed"],
                    retired["archive"]
                        .as_str()
                        .map(|path| format!("; archived in {path}"))
                        .unwrap_or_default()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Hosts { json } => {
            let hosts = client().hosts()?;
            if *json {
                println!("{hosts}");
            } else {
                print!("{}", batch::hosts_table(&hosts));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo { out, keep } => {
            demo::demo(out, keep.as_deref()).context("herd demo")?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
