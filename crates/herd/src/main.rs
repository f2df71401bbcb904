//! `herd`: the researcher's command line. Runs a module locally in the workers' sandbox, submits
//! batches to a coordinator, follows them, collects results, shows credit, and runs a whole
//! project on this machine with `herd demo`.

mod account;
mod batch;
mod client;
mod demo;
mod run;
use herd::sweep;

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
        /// Pay for the batch from your account's balance to be served before free batches: PRICE
        /// credits per credit of work its quorum agrees on, taken as each unit is validated
        /// (the higher bid goes first). Without it the batch is in the free tier.
        #[arg(long, value_name = "PRICE", conflicts_with = "spend_priority")]
        bid: Option<String>,
        /// Every quorum needs an agreeing replica from a seasoned host, one with at least N valid
        /// results behind it (in any batch): fresh accounts cannot validate anything alone.
        #[arg(long, value_name = "N")]
        seasoned_after: Option<u32>,
        /// How long each replica may take before it is given to another volunteer (default one
        /// day; from 1s to 30d): `90s`, `20m`, `6h`, `2d`, or plain seconds.
        #[arg(long, value_name = "TIME", value_parser = batch::parse_deadline)]
        deadline: Option<u64>,
        /// The same as --bid 1: pay exactly the agreed fuel of each validated unit.
        #[arg(long)]
        spend_priority: bool,
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
    /// Your account's credit (with your API token): balance, earned, spent, and the latest
    /// movements. Subcommands sign up, show another account's totals, and (the administrator)
    /// hand out keys and tokens, invite, grant permissions and set overdrafts.
    Account {
        #[command(subcommand)]
        command: Option<account::AccountCommand>,
        /// The latest movements to list.
        #[arg(long, default_value_t = 10)]
        recent: u32,
        /// Print the coordinator's JSON.
        #[arg(long)]
        json: bool,
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
    /// Show credit per volunteer and team; `send` moves your credit to another account, `grant`
    /// (the administrator) gives an account credit.
    Credit {
        #[command(subcommand)]
        command: Option<account::CreditCommand>,
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
enum ResearcherCommand {
    /// Add a researcher; prints their token, which the coordinator shows only this once.
    Add {
        name: String,
        /// Print the coordinator's JSON.
        #[arg(long)]
        json: bool,
    },
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
            bid,
            seasoned_after,
            deadline,
            spend_priority,
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
                seasoned_after: *seasoned_after,
                deadline_secs: *deadline,
                bid: bid
                    .clone()
                    .or_else(|| spend_priority.then(|| "1".to_string())),
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
        Command::Account {
            command,
            recent,
            json,
        } => account::account(&client(), command.as_ref(), *recent, *json),
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
        Command::Credit {
            command: Some(command),
            json,
        } => account::credit_command(&client(), command, *json),
        Command::Credit {
            command: None,
            json,
        } => {
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
